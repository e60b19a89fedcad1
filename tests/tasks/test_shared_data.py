"""Every task in the project's offline data pack (../shared/data) loads.

That folder exists beside the project on development machines only; elsewhere these
tests skip. APET_SHARED_DATA points at another copy.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from apet_ray.tasks import TASKS, load_examples, split_file, to_text

SHARED_DATA = Path(os.environ.get("APET_SHARED_DATA", Path(__file__).parents[2] / "../shared/data")).resolve()

CASES = [(name, split) for name in TASKS for split in ("train", "eval")]


@pytest.mark.parametrize("name, split", CASES)
def test_shared_split_loads(name, split):
    if not SHARED_DATA.is_dir():
        pytest.skip(f"no shared data folder at {SHARED_DATA}")
    task = TASKS[name]
    if split_file(task, split, SHARED_DATA) is None:
        pytest.skip(f"the data pack has no {split} split for {name} (see its MANIFEST.md)")
    examples = load_examples(task, split, data_dir=SHARED_DATA)
    assert len(examples) > 200
    for example in examples[:50]:
        assert len(example.inputs) == len(task.text_columns)
        source, target = to_text(task, example)
        assert source.startswith(name + " ") and target
    if task.is_classification:
        assert {e.label for e in examples} == set(range(task.num_labels))
    else:
        assert all(e.targets for e in examples)


def test_pack_has_the_expected_tasks():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"no shared data folder at {SHARED_DATA}")
    present = {n for n in TASKS if split_file(TASKS[n], "eval", SHARED_DATA) is not None}
    assert present >= {"sst2", "rte", "mrpc", "rotten_tomatoes", "imdb", "samsum", "qqp", "nq_open", "mnli", "qnli"}
