"""``apet-ray export``: a LoRA run as a peft adapter that peft loads with the same outputs,
and every delta linear in the weights merged into a plain HF model with the same outputs."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM

from apet_ray.cli import main
from apet_ray.delta import DeltaSpec, attach, save_deltas
from apet_ray.models import build_model
from apet_ray.run import TrainConfig
from support import saved_model

KINDS = {"tiny-bert": AutoModel, "tiny-t5": AutoModelForSeq2SeqLM, "tiny-llama": AutoModelForCausalLM}


def fake_run(folder, model_name, spec, seed=0):
    """An `apet-ray train --out` folder whose deltas are random (a trained LoRA's B is not zero)."""
    model, _ = build_model(model_name, num_labels=2, seed=seed)
    attach(model, spec)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    cfg = TrainConfig(model=model_name, task="sst2", spec=spec, seed=seed)
    folder.mkdir(parents=True)
    save_deltas(model, folder / "deltas.safetensors")
    (folder / "run.json").write_text(json.dumps({"trial_id": "t", "record": {"config": cfg.to_dict()}}))
    return model.eval()


def inputs(decoder=False):
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(2, 1000, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[2, 6:] = 0
    out = {"input_ids": ids, "attention_mask": mask}
    if decoder:
        out["decoder_input_ids"] = ids[:, :4]
    return out


def backbone_out(backbone, x):
    out = backbone(**x)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") and out.last_hidden_state is not None \
        and not hasattr(out, "logits") else out.logits


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-t5", "tiny-llama"])
def test_lora_exports_as_a_peft_adapter(tmp_path, name):
    peft = pytest.importorskip("peft")
    ours = fake_run(tmp_path / "run", name, DeltaSpec.pet("lora"))
    assert main(["export", str(tmp_path / "run"), "--format", "peft", str(tmp_path / "adapter")]) == 0
    assert {p.name for p in (tmp_path / "adapter").iterdir()} == {"adapter_config.json", "adapter_model.safetensors"}
    base = build_model(name, num_labels=2)[0].backbone  # the same backbone, as the run built it
    loaded = peft.PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    x = inputs(decoder=name == "tiny-t5")
    with torch.no_grad():
        expected, got = backbone_out(ours.backbone, x), backbone_out(loaded, x)
        plain = backbone_out(build_model(name, num_labels=2)[0].backbone, x)
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(plain, expected, atol=1e-3)  # the deltas did act


@pytest.mark.parametrize("spec, says", [
    (DeltaSpec.apet("concat", "discrete", match="lora"), "sparse"),
    (DeltaSpec.pet("adapter"), "bottleneck"),
    (DeltaSpec.pet("prompt"), "prompt"),
    (DeltaSpec.pet("bitfit"), "--merge"),
    (DeltaSpec.pet("ft"), "--merge"),
])
def test_what_peft_cannot_express_is_refused(tmp_path, capsys, spec, says):
    fake_run(tmp_path / "run", "tiny-bert", spec)
    assert main(["export", str(tmp_path / "run"), "--format", "peft", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and "\n" not in err and not (tmp_path / "out").exists()


MERGEABLE = [DeltaSpec.pet("ft"), DeltaSpec.pet("bitfit"), DeltaSpec.pet("bitfit_all"), DeltaSpec.pet("lora"),
             DeltaSpec.apet("add-weight", "discrete", match="lora"), DeltaSpec.apet("add", "adjacent", match="bitfit"),
             DeltaSpec.apet("concat", "discrete", match="lora"), DeltaSpec.apet("add-weight", "adjacent", budget=500)]


@pytest.mark.parametrize("spec", MERGEABLE, ids=lambda s: s.label)
def test_merged_bert_equals_the_delta_model(tmp_path, spec):
    ours = fake_run(tmp_path / "run", "tiny-bert", spec)
    assert main(["export", str(tmp_path / "run"), "--merge", str(tmp_path / "merged")]) == 0
    merged = AutoModel.from_pretrained(tmp_path / "merged").eval()  # no apet-ray involved
    head = load_file(tmp_path / "merged" / "classifier.safetensors")
    x = inputs()
    with torch.no_grad():
        hidden = merged(**x).last_hidden_state
        weights = x["attention_mask"].unsqueeze(-1).float()
        logits = ((hidden * weights).sum(1) / weights.sum(1)) @ head["weight"].T + head["bias"]
        assert torch.allclose(hidden, ours.backbone(**x).last_hidden_state, atol=1e-4, rtol=1e-4)
        assert torch.allclose(logits, ours(**x)["logits"], atol=1e-4, rtol=1e-4)
        plain = build_model("tiny-bert", num_labels=2)[0].backbone(**x).last_hidden_state
    assert not torch.allclose(hidden, plain, atol=1e-3)


@pytest.mark.parametrize("name, spec", [
    ("tiny-t5", DeltaSpec.pet("lora")), ("tiny-t5", DeltaSpec.pet("ft")),
    ("tiny-t5", DeltaSpec.apet("add-weight", "discrete", match="lora")),
    ("tiny-llama", DeltaSpec.pet("lora")), ("tiny-llama", DeltaSpec.apet("add-weight", "discrete", match="lora")),
], ids=str)
def test_merged_text_to_text_equals_the_delta_model(tmp_path, name, spec):
    ours = fake_run(tmp_path / "run", name, spec)
    assert main(["export", str(tmp_path / "run"), "--merge", str(tmp_path / "merged")]) == 0
    merged = KINDS[name].from_pretrained(tmp_path / "merged").eval()
    x = inputs(decoder=name == "tiny-t5")
    with torch.no_grad():
        assert torch.allclose(merged(**x).logits, ours.backbone(**x).logits, atol=1e-4, rtol=1e-4)


def test_merged_gpt2_is_back_in_conv1d_layout(tmp_path):
    folder = saved_model("gpt2", tmp_path / "gpt2")
    ours = fake_run(tmp_path / "run", str(folder), DeltaSpec.pet("lora"))
    assert main(["export", str(tmp_path / "run"), "--merge", str(tmp_path / "merged")]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    x = inputs()
    with torch.no_grad():
        assert torch.allclose(merged(**x).logits, ours.backbone(**x).logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name, spec, says", [
    ("tiny-bert", DeltaSpec.pet("prompt"), "soft prompt"),
    ("tiny-bert", DeltaSpec.pet("adapter"), "bottleneck"),
    ("tiny-bert", DeltaSpec.apet("plugin", "discrete", match="adapter"), "bottleneck"),
    ("tiny-t5", DeltaSpec.pet("bitfit"), "no bias"),
    ("tiny-llama", DeltaSpec.apet("add", "discrete", budget=100), "not mergeable"),
], ids=str)
def test_not_mergeable_is_one_line(tmp_path, capsys, name, spec, says):
    fake_run(tmp_path / "run", name, spec)
    assert main(["export", str(tmp_path / "run"), "--merge", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "not mergeable" in err and says in err and "\n" not in err and not (tmp_path / "out").exists()


def test_export_refuses_a_folder_that_is_no_run(tmp_path, capsys):
    assert main(["export", str(tmp_path), "--merge", str(tmp_path / "out")]) == 2
    assert "run.json" in capsys.readouterr().err


def test_a_peft_arm_exports_as_peft_s_own_adapter(tmp_path):
    peft = pytest.importorskip("peft")
    ours = fake_run(tmp_path / "run", "tiny-bert", DeltaSpec.pet("peft:ia3"))
    assert main(["export", str(tmp_path / "run"), "--format", "peft", str(tmp_path / "adapter")]) == 0
    loaded = peft.PeftModel.from_pretrained(build_model("tiny-bert", num_labels=2)[0].backbone,
                                            str(tmp_path / "adapter")).eval()
    x = inputs()
    with torch.no_grad():
        assert torch.allclose(loaded(**x).last_hidden_state, ours.backbone(**x).last_hidden_state, atol=1e-5)


def test_a_peft_arm_is_not_merged_here(tmp_path, capsys):
    pytest.importorskip("peft")
    fake_run(tmp_path / "run", "tiny-bert", DeltaSpec.pet("peft:ia3"))
    assert main(["export", str(tmp_path / "run"), "--merge", str(tmp_path / "out")]) == 2
    assert "merge_and_unload" in capsys.readouterr().err
