"""A local model folder is checked for what it claims before anything runs on it: one line for
a config that does not parse or holds impossible sizes, a missing or foreign tokenizer, weight
files that are torn, lie in their header, or belong to another model."""

import json
import shutil
import struct

import pytest
from support import saved_model

from apet_ray.errors import UserError
from apet_ray.models import build_model
from apet_ray.run import TrainConfig, check_config

DATA = str(__import__("pathlib").Path(__file__).resolve().parents[1] / "fixtures" / "data")


def run_check(folder):
    return check_config(TrainConfig(model=str(folder), task="sst2", data_dir=DATA, workers=0, max_steps=2,
                                    eval_every=1, batch_size=2))


@pytest.fixture
def model_folder(tmp_path):
    return saved_model("bert", tmp_path / "model")


def test_a_whole_folder_passes(model_folder):
    assert run_check(model_folder).delta_params > 0


def refused(folder, message):
    with pytest.raises(UserError, match=message) as info:
        run_check(folder)
    assert "\n" not in str(info.value)


def test_without_a_tokenizer_a_run_is_refused_but_counting_works(model_folder):
    for f in model_folder.iterdir():
        if "token" in f.name or f.name == "vocab.txt":
            f.unlink()
    refused(model_folder, "has no tokenizer")
    build_model(str(model_folder), num_labels=2, device="meta")  # apet-ray params needs none


def test_a_tokenizer_of_another_vocabulary_is_refused(model_folder):
    for f in model_folder.iterdir():
        if "token" in f.name:
            f.unlink()
    (model_folder / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n")  # five tokens
    refused(model_folder, "tokenizer knows 5 tokens of the model's 30,522")


@pytest.mark.parametrize("damage, message", [
    ("truncate", "not a whole safetensors file"),
    ("lying_header", "not a whole safetensors file"),
    ("other_model", "weights missing or of another model"),
])
def test_weight_files_that_are_not_what_they_claim_are_refused(model_folder, damage, message):
    weights = model_folder / "model.safetensors"
    data = weights.read_bytes()
    if damage == "truncate":
        weights.write_bytes(data[: len(data) // 2])
    elif damage == "lying_header":  # one tensor said to be twice its size: the offsets no longer fit
        n = struct.unpack("<Q", data[:8])[0]
        header = json.loads(data[8:8 + n])
        key = next(k for k in header if k != "__metadata__")
        header[key]["shape"] = [2 * header[key]["shape"][0], *header[key]["shape"][1:]]
        text = json.dumps(header).encode()
        text += b" " * ((8 - len(text) % 8) % 8)
        weights.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + n:])
    else:
        from safetensors.torch import save_file
        import torch

        save_file({"embeddings.word_embeddings.weight": torch.zeros(10, 32)}, str(weights), metadata={"format": "pt"})
    refused(model_folder, message)


@pytest.mark.parametrize("config, message", [
    ("", "is not valid JSON"),
    ("{not json", "is not valid JSON"),
    ('{"hidden_size": 32}', "no model_type"),
    ("bad_sizes", "num_hidden_layers = -3 is not a size"),
    ("huge", "num_hidden_layers = 1000000000 is not a size"),
])
def test_a_config_that_does_not_parse_or_cannot_be_a_model_is_refused(model_folder, config, message):
    path = model_folder / "config.json"
    if config in ("bad_sizes", "huge"):
        raw = json.loads(path.read_text())
        raw["num_hidden_layers"] = -3 if config == "bad_sizes" else 10**9
        config = json.dumps(raw)
    path.write_text(config)
    refused(model_folder, message)
    with pytest.raises(UserError, match=message):  # counting refuses it too, before building
        build_model(str(model_folder), num_labels=2, device="meta")


def test_a_folder_of_only_a_config_counts(tmp_path, model_folder):
    only = tmp_path / "config_only"
    only.mkdir()
    shutil.copy(model_folder / "config.json", only / "config.json")
    model, _ = build_model(str(only), num_labels=2, device="meta")
    assert sum(p.numel() for p in model.parameters()) > 0
