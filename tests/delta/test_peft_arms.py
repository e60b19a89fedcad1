"""Any peft method as a study arm: names, exact counts, parity with apet-ray's LoRA, APET
matched to a peft arm, checkpoints, refusals, and the study's dry run."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

peft = pytest.importorskip("peft")

from apet_ray.delta import (DeltaSpec, attach, count_backbone, count_deltas, load_state, peft_names,  # noqa: E402
                            split_methods, trainable_state_dict)
from apet_ray.delta.layers import DeltaLinear  # noqa: E402
from apet_ray.errors import UserError  # noqa: E402
from apet_ray.models import build_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PEFT_LORA = "peft:lora?r=8&lora_alpha=16"  # apet-ray's LoRA settings: r 8, alpha 16, query and value


def tiny(device="cpu"):
    return build_model("tiny-bert", num_labels=2, device=device)[0]


def test_names_split_and_parse():
    assert split_methods("lora,peft:ia3,peft:lora?r=16&target_modules=query,value,bitfit") == [
        "lora", "peft:ia3", "peft:lora?r=16&target_modules=query,value", "bitfit"]
    spec = DeltaSpec.pet("peft:LoraConfig?target_modules=query, value&r=16")
    assert (spec.method, spec.op, spec.options) == ("peft:lora", "peft", "r=16&target_modules=query,value")
    assert spec.arm == "peft:lora?r=16&target_modules=query,value"
    assert DeltaSpec.from_json(spec.to_json()) == spec
    assert "options" not in json.loads(DeltaSpec.pet("lora").to_json())  # old specs (and trial ids) unchanged
    assert peft_names.options_dict("a=1&b=0.5&c=true&d=x,y&e=none") == dict(a=1, b=0.5, c=True, d=["x", "y"], e=None)
    assert spec.label == "peft LORA (r=16, target_modules=query,value)"


def test_lora_arm_count_and_first_steps_match_apet_lora(batch):
    """peft LoRA as an arm trains what apet-ray's LoRA trains, and -- given the same weights --
    gives the same loss at the first step and after an AdamW step."""
    ours, theirs = tiny(), tiny()
    attach(ours, DeltaSpec.pet("lora"))
    attach(theirs, DeltaSpec.pet(PEFT_LORA))
    assert count_deltas(theirs) == count_deltas(ours) == 2048
    assert count_backbone(theirs) == count_backbone(ours)
    reference = peft.get_peft_model(tiny().backbone, peft.LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"]))
    assert count_deltas(theirs) == sum(p.numel() for p in reference.parameters() if p.requires_grad)

    g = torch.Generator().manual_seed(0)
    peft_layers = {n.removeprefix("backbone."): m for n, m in theirs.named_modules() if hasattr(m, "lora_A")}
    our_layers = {n.removeprefix("backbone."): m for n, m in ours.named_modules() if isinstance(m, DeltaLinear)}
    assert set(peft_layers) == set(our_layers)
    with torch.no_grad():
        for name, layer in peft_layers.items():
            A, B = (torch.randn(layer.lora_A["default"].weight.shape, generator=g) * 0.1,
                    torch.randn(layer.lora_B["default"].weight.shape, generator=g) * 0.1)
            layer.lora_A["default"].weight.copy_(A)
            layer.lora_B["default"].weight.copy_(B)
            our_layers[name].lowrank.A.values.copy_(A.flatten())
            our_layers[name].lowrank.B.values.copy_(B.flatten())
    inputs = {**batch, "labels": torch.tensor([0, 1, 1])}
    losses = []
    for model in (ours, theirs):
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        first = model(**inputs)["loss"]
        first.backward()
        opt.step()
        with torch.no_grad():
            losses.append((float(first.detach()), float(model(**inputs)["loss"])))
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)
    assert losses[0][0] != pytest.approx(losses[0][1], abs=1e-4)  # the step did move the loss


@pytest.mark.parametrize("arm, count", [("peft:ia3", 256), (PEFT_LORA, 2048), ("peft:loha", 4096),
                                        ("peft:vera", 1152), ("peft:ln_tuning", 256)])
def test_arm_counts_are_exact_on_meta_and_cpu(arm, count):
    counts = []
    for device in ("meta", "cpu"):
        model = tiny(device)
        attach(model, DeltaSpec.pet(arm))
        counts.append(count_deltas(model))
    assert counts == [count, count]


@pytest.mark.parametrize("op, arm", [("add", "peft:ia3"), ("concat", PEFT_LORA), ("add-weight", "peft:loha")])
def test_apet_matches_a_peft_arm(op, arm):
    exact = tiny("meta")
    attach(exact, DeltaSpec.pet(arm))
    for device in ("meta", "cpu"):
        model = tiny(device)
        plan = attach(model, DeltaSpec.apet(op, "discrete", match=arm))
        assert plan.requested == count_deltas(model) == count_deltas(exact)
    assert DeltaSpec.apet(op, "discrete", match=arm).match == DeltaSpec.pet(arm).arm  # stored in canonical form


def test_apet_match_spellings_are_one_spec():
    assert DeltaSpec.apet("concat", "discrete", match="peft:LoRA?r=8&lora_alpha=16") == \
        DeltaSpec.apet("concat", "discrete", match="peft:lora?lora_alpha=16&r=8")


def test_t5_lora_arm_counts_as_apet_lora():
    ours, theirs = build_model("tiny-t5", device="meta")[0], build_model("tiny-t5", device="meta")[0]
    attach(ours, DeltaSpec.pet("lora"))
    attach(theirs, DeltaSpec.pet(PEFT_LORA))
    assert count_deltas(theirs) == count_deltas(ours) > 0


def test_checkpoint_of_a_peft_arm_round_trips(batch):
    model = tiny()
    attach(model, DeltaSpec.pet("peft:ia3", seed=3))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1)
    state = {k: v.detach().clone() for k, v in trainable_state_dict(model).items()}
    assert any(".ia3_l." in k for k in state)
    fresh = tiny()
    attach(fresh, DeltaSpec.pet("peft:ia3", seed=3))
    load_state(fresh, state)
    with torch.no_grad():
        assert torch.equal(model(**batch)["logits"], fresh(**batch)["logits"])


@pytest.mark.parametrize("arm, says", [
    ("peft:prompt_tuning", "prompt-learning"), ("peft:prefix_tuning", "prompt-learning"),
    ("peft:adalora", "update_and_allocate"), ("peft:poly", "task ids"), ("peft:nope", "unknown peft method"),
    ("peft:trainable_tokens", "trains nothing"), ("peft:shadow", "PeftModel.forward"),
    ("peft:lora?nope=1", "has no option nope"), ("peft:lora?r", "key=value"),
    ("peft:lora?target_modules=nothing_here", "cannot be applied"),
])
def test_refusals_are_one_line(arm, says):
    with pytest.raises(UserError, match=says) as info:
        attach(tiny("meta"), DeltaSpec.pet(arm))
    assert "\n" not in str(info.value)


def test_without_peft_a_peft_arm_is_refused(monkeypatch):
    monkeypatch.setattr(peft_names, "peft_available", lambda: False)
    with pytest.raises(UserError, match=r"install apet-ray\[peft\]"):
        DeltaSpec.pet("peft:ia3")


def test_train_writes_rows_and_deltas(tmp_path, batch):
    from apet_ray.cli import main
    from apet_ray.delta import load_deltas
    import pandas as pd

    out = tmp_path / "run"
    assert main(["train", "--model", "tiny-bert", "--task", "sst2", "--data-dir", str(ROOT / "tests/fixtures/data"),
                 "--method", "peft:ia3", "--workers", "0", "--max-steps", "2", "--eval-every", "1", "--batch-size", "4",
                 "--eval-limit", "8", "--precision", "fp32", "--out", str(out)]) == 0
    row = pd.read_parquet(out / "trials").iloc[0]
    assert (row.method, row.delta_params, row.trainable_params) == ("peft:ia3", 256, 256 + 66)
    model = tiny()
    attach(model, DeltaSpec.pet("peft:ia3"))
    load_deltas(model, out / "deltas.safetensors")  # names and shapes fit a fresh arm
    assert not all(bool((p == 1).all()) for n, p in model.named_parameters() if "ia3_l" in n)  # trained


def test_structure_ablation_dry_run_lists_the_peft_arm():
    result = subprocess.run(
        [sys.executable, "experiments/structure_ablation.py", "--models", "tiny-bert", "--tasks", "sst2",
         "--data-dir", "tests/fixtures/data", "--methods", "lora,peft:ia3", "--apet-match", "lora,peft:ia3",
         "--dry-run", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    arm = [r for r in rows if r["method"] == "peft:ia3"]
    assert [(r["label"], r["delta_params"]) for r in arm] == [("peft IA3", 256)]
    matched = [r for r in rows if r["match"] == "peft:ia3"]
    assert [(r["op"], r["delta_params"]) for r in matched] == [("add", 256), ("add", 256)]
