"""APET-Add matched to BitFit (the paper's E2): add's default positions ("outputs": every layer
output where a vector can train) hold more than BitFit's count on every family, so a Discrete or
Adjacent mask of exactly BitFit's count is a real subset, and only the counted entries train."""

import dataclasses
import json

import pytest
import torch

from apet_ray.cli import main as cli
from apet_ray.delta import DeltaSpec, attach, count_deltas, make_plan
from apet_ray.delta.architectures import family_of
from apet_ray.delta.layers import DeltaLinear
from apet_ray.delta.masked import MaskedTensor
from support import DECODERS, shared_or_skip, tiny_classifier, tiny_decoder, tiny_seq2seq
from test_families import ENCODERS, batch as decoder_batch, encoder_batch, tiny_encoder

# family -> (model, a batch with labels); the models are the ones test_attach / test_families count
MODELS = {
    "bert": lambda: tiny_classifier(),
    "t5": lambda: tiny_seq2seq(),
    **{f: (lambda f=f: tiny_decoder(f)) for f in DECODERS},
    **{f: (lambda f=f: tiny_encoder(f)) for f in ENCODERS},
}


def _batch(family):
    if family in DECODERS:
        return decoder_batch()
    if family == "t5":
        b = decoder_batch()
        return {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"], "labels": b["labels"]}
    b = encoder_batch()
    return {**b, "labels": b["labels"] % 2} if family == "bert" else b


def _bitfit(family):
    return make_plan(MODELS[family](), DeltaSpec.pet("bitfit")).count


# add's capacity at its defaults on the tiny models (d 32, FFN 48, 2 layers), and BitFit's count
CAPACITY = {
    "bert": (512, 480),  # every linear output but the keys' (the FFN's first layer BitFit leaves out) + norms
    "t5": (2104, 1912),  # + the LM head's 120, 12 RMS norms x 32, BitFit's four 32 x 4 tables
    "llama": (696, 448), "qwen2": (696, 448),  # + the LM head's 120 and 5 RMS norms x 32, less 2 x 16 key rows
    "opt": (632, 576),  # + the LM head's 120, less 2 x 32 key outputs
    "gpt2": (632, 576), "bloom": (824, 768),  # fused q/k/v: its q and v rows, not its key rows; + the LM head
    "mpnet": (512, 480), "distilbert": (512, 480), "deberta-v2": (544, 512),
}


def test_every_tiny_family_is_covered():
    assert set(CAPACITY) == set(MODELS)


@pytest.mark.parametrize("family", sorted(MODELS))
def test_add_at_its_defaults_holds_more_than_bitfit(family):
    capacity = make_plan(MODELS[family](), DeltaSpec.apet("add", "discrete", budget=1)).capacity
    assert (capacity, _bitfit(family)) == CAPACITY[family]
    assert capacity > _bitfit(family)


@pytest.mark.parametrize("family", sorted(MODELS))
@pytest.mark.parametrize("distribution", ["discrete", "adjacent"])
def test_apet_add_matched_to_bitfit_is_exactly_bitfit_s_count_and_only_it_trains(family, distribution):
    model = MODELS[family]().train()
    expected = _bitfit(family)
    plan = attach(model, DeltaSpec.apet("add", distribution, match="bitfit", seed=3))
    assert plan.count == plan.requested == count_deltas(model) == expected
    masked = [m for m in model.modules() if isinstance(m, MaskedTensor)]
    assert sum(m.k for m in masked) == expected
    assert any(not m.is_full for m in masked)  # a real mask, not BitFit again
    head = getattr(model, "head", None)
    head_ids = {id(p) for p in head.parameters()} if isinstance(head, torch.nn.Module) else set()
    trainable = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    assert {id(p) for p in trainable} == {id(m.values) for m in masked}  # nothing else trains
    model(**_batch(family))["loss"].backward()
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
    assert all(m.values.grad is not None for m in masked)
    # every counted entry moves, but a T5 position table's far buckets (no pair of 7 tokens is that far apart)
    tables = {id(m) for n, m in model.named_modules() if "relative_attention_bias" in n}
    still = sum(int((m.values.grad == 0).sum()) for m in masked if id(m) not in tables)
    assert still == 0


@pytest.mark.parametrize("family", ["gpt2", "bloom"])
def test_a_fused_layer_s_key_rows_are_the_ones_left_out(family):
    """The layout in Family.fused_key_rows is right: on a full vector over the fused q/k/v
    output those rows, and only those, get no gradient."""
    model = tiny_decoder(family).train()
    attach(model, dataclasses.replace(DeltaSpec.pet("bitfit"), positions=("qkv",)))  # a full vector there
    model(**decoder_batch())["loss"].backward()
    keys = family_of(model.backbone).fused_key_rows(model.backbone.config)
    layers = [m for m in model.modules() if isinstance(m, DeltaLinear) and m.bias_delta is not None]
    assert len(layers) == 2 and all(m.bias_rows is None for m in layers)
    for layer in layers:
        grad = layer.bias_delta.values.grad
        dead = torch.zeros_like(grad, dtype=torch.bool)
        dead[keys] = True
        assert float(grad[dead].abs().max()) < 1e-6 * float(grad.abs().max())
        assert bool((grad[~dead] != 0).all())
    # under an APET mask at add's defaults the fused layers keep only their q and v rows
    plan = make_plan(tiny_decoder(family), DeltaSpec.apet("add", "discrete", budget=100))
    fused = [p for p in plan.placements if p.out_rows is not None]
    assert len(fused) == 2 and all(set(p.out_rows).isdisjoint(keys) and len(p.out_rows) == 64 for p in fused)


def test_a_vector_on_an_rms_norm_moves_its_output_by_that_vector():
    model = tiny_seq2seq()
    attach(model, DeltaSpec.apet("add", "discrete", budget=2000, seed=1))
    norm = model.backbone.encoder.final_layer_norm
    assert norm.bias_delta is not None and norm.weight is norm.base.weight
    with torch.no_grad():
        norm.bias_delta.values.copy_(torch.arange(1.0, norm.bias_delta.k + 1))
    x = torch.randn(2, 3, 32)
    assert torch.allclose(norm(x) - norm.base(x), norm.bias_delta().expand(2, 3, -1))


@pytest.mark.parametrize("config,family", [("t5-v1_1-base", "t5"), ("bert-base-uncased", "bert")])
def test_apet_add_matched_to_bitfit_on_real_configs(config, family, capsys):
    cfg = str(shared_or_skip("configs", config))
    assert cli(["params", "--model", cfg, "--method", "bitfit", "--json"]) == 0
    bitfit = json.loads(capsys.readouterr().out)["trainable_params"]
    for distribution in ("discrete", "adjacent"):
        assert cli(["params", "--model", cfg, "--method", "apet", "--op", "add", "--distribution", distribution,
                    "--match", "bitfit", "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert (out["trainable_params"], out["positions"]) == (bitfit, ["outputs"])
    assert bitfit == {"t5": 264_804, "bert": 65_280}[family]


def test_apet_add_matched_to_bitfit_on_minilm():
    """The structure-ablation study's model, on the meta device from its packaged config."""
    from apet_ray.models import build_model

    for distribution in ("discrete", "adjacent"):
        model, _ = build_model("minilm", num_labels=2, device="meta")
        plan = attach(model, DeltaSpec.apet("add", distribution, match="bitfit"))
        assert (plan.count, plan.capacity, count_deltas(model)) == (16_512, 23_424, 16_512)
