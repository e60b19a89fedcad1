import pytest
import torch

from apet_ray.delta import DeltaSpec, attach, load_deltas, save_deltas, spec_of
from apet_ray.errors import UserError
from support import tiny_classifier, tiny_seq2seq


def perturb(model):
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)


@pytest.mark.parametrize("spec", [
    DeltaSpec.pet("lora"), DeltaSpec.pet("prompt"), DeltaSpec.pet("bitfit"), DeltaSpec.pet("adapter"),
    DeltaSpec.apet("add-weight", "discrete", budget=900), DeltaSpec.apet("plugin", "adjacent", match="lora"),
], ids=lambda s: s.label)
def test_save_then_load_into_a_fresh_model_reproduces_outputs(spec, batch, tmp_path):
    model = tiny_classifier()
    attach(model, spec)
    perturb(model)
    path = save_deltas(model, tmp_path / "d.safetensors")
    fresh = tiny_classifier()
    attach(fresh, DeltaSpec.from_json(spec.to_json()))
    load_deltas(fresh, path)
    with torch.no_grad():
        assert torch.equal(fresh(**batch)["logits"], model(**batch)["logits"])
    assert spec_of(path) == spec
    assert not list(tmp_path.glob(".*tmp"))  # atomic write leaves no temp file


def test_loading_restores_the_saved_masks_even_from_another_seed(batch, tmp_path):
    model = tiny_classifier()
    attach(model, DeltaSpec.apet("add-weight", "discrete", budget=500, seed=1))
    perturb(model)
    path = save_deltas(model, tmp_path / "d.safetensors")
    other = tiny_classifier()
    attach(other, DeltaSpec.apet("add-weight", "discrete", budget=500, seed=2))
    load_deltas(other, path)
    with torch.no_grad():
        assert torch.equal(other(**batch)["logits"], model(**batch)["logits"])


def test_checkpoint_holds_only_deltas(tmp_path):
    model = tiny_classifier()
    attach(model, DeltaSpec.apet("add-weight", "discrete", budget=500))
    size = save_deltas(model, tmp_path / "d.safetensors").stat().st_size
    assert size < 500 * 8 + 66 * 4 + 4096  # fp32 values + int32 indices + head + header


def test_damaged_indices_are_refused_before_anything_is_copied(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    model = tiny_classifier()
    attach(model, DeltaSpec.apet("add-weight", "discrete", budget=500, seed=1))
    path = save_deltas(model, tmp_path / "d.safetensors")
    tensors = load_file(str(path))
    key = next(k for k in tensors if k.endswith(".indices"))
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    for broken in (tensors[key].flip(0), tensors[key] + 10**6):
        save_file({**tensors, key: broken}, str(tmp_path / "bad.safetensors"), metadata=meta)
        before = {n: p.clone() for n, p in model.state_dict().items()}
        with pytest.raises(UserError, match="damaged"):
            load_deltas(model, tmp_path / "bad.safetensors")
        assert all(torch.equal(before[n], p) for n, p in model.state_dict().items())


@pytest.mark.parametrize("other", [
    lambda: (tiny_classifier(), DeltaSpec.pet("adapter")),  # other keys
    lambda: (tiny_classifier(), DeltaSpec.apet("add-weight", "discrete", budget=501)),  # other shapes
    lambda: (tiny_seq2seq(), DeltaSpec.pet("lora")),  # other model
])
def test_a_checkpoint_that_does_not_fit_is_refused_whole(other, tmp_path):
    model = tiny_classifier()
    attach(model, DeltaSpec.apet("add-weight", "discrete", budget=500))
    path = save_deltas(model, tmp_path / "d.safetensors")
    target, spec = other()
    attach(target, spec)
    before = {n: p.clone() for n, p in target.state_dict().items()}
    with pytest.raises(UserError, match="does not fit"):
        load_deltas(target, path)
    assert all(torch.equal(before[n], p) for n, p in target.state_dict().items())


def test_corrupt_and_foreign_files_are_refused(tmp_path):
    model = tiny_classifier()
    attach(model, DeltaSpec.pet("lora"))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(UserError, match="not a readable safetensors"):
        load_deltas(model, bad)
    from safetensors.torch import save_file
    save_file({"x": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(UserError, match="not an apet-ray delta"):
        load_deltas(model, tmp_path / "foreign.safetensors")
    with pytest.raises(UserError, match="no delta checkpoint"):
        load_deltas(model, tmp_path / "missing.safetensors")
