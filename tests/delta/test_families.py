"""The suite BERT and T5 have, on the decoder-only families (tiny random configs): exact
counts, peft LoRA parity, AdamW isolation, save/load, and a live gradient on every counted
entry."""

import dataclasses

import pytest
import torch

from apet_ray.delta import DeltaSpec, attach, count_deltas, load_deltas, save_deltas
from apet_ray.delta.architectures import family_of
from apet_ray.delta.masked import MaskedTensor
from apet_ray.errors import UserError
from support import DECODERS, same_lora_weights, tiny_decoder

FAMILIES = sorted(DECODERS)
KV = {"llama": 16, "qwen2": 16, "opt": 32}  # key/value width: grouped heads (2 of 4) or full
Q_BIAS = {"llama": 0, "qwen2": 32 + 16 + 16, "opt": 32 * 4 + 48 + 32}  # biases each layer already has


def closed_form(family: str, method: str) -> int:
    d, ff, kv, layers = 32, 48, KV[family], 2
    if method == "lora":
        return layers * (8 * (d + d) + 8 * (d + kv))
    if method == "adapter":
        return layers * 2 * (2 * d * 24 + 24 + d)
    if method == "prompt":
        return 100 * d
    if method == "bitfit":  # a bias on every linear layer of the blocks (added where missing), and norm biases
        linears = d + 2 * kv + d + (2 * ff if family != "opt" else ff) + d
        norms = 2 * d if family == "opt" else 0
        return layers * (linears + norms) + (d if family == "opt" else 0)
    raise AssertionError(method)


def batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 120, (3, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[2, 5:] = 0
    labels = torch.randint(3, 120, (3, 2), generator=g)
    labels[1, 1] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", ["lora", "adapter", "prompt", "bitfit"])
def test_pet_counts_match_closed_form(family, method):
    model = tiny_decoder(family)
    assert family_of(model.backbone).kind == "causal"
    plan = attach(model, DeltaSpec.pet(method))
    assert plan.count == count_deltas(model) == closed_form(family, method)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("op", ["add", "concat", "plugin"])
@pytest.mark.parametrize("distribution", ["adjacent", "discrete"])
def test_apet_matches_every_method_exactly(family, op, distribution):
    for method in ("lora", "bitfit") + (("adapter",) if op != "concat" else ()):  # q, v at rank 16 hold less
        model = tiny_decoder(family)
        attach(model, DeltaSpec.apet(op, distribution, match=method, seed=2))
        assert count_deltas(model) == closed_form(family, method), method


PEFT_TARGETS = {"llama": r".*self_attn\.(q|v)_proj", "qwen2": r".*self_attn\.(q|v)_proj", "opt": r".*self_attn\.(q|v)_proj"}


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_matches_peft(family):
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    ref = peft.get_peft_model(DECODERS[family]().eval(),
                              peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=PEFT_TARGETS[family]))
    ours = tiny_decoder(family)
    attach(ours, DeltaSpec.pet("lora"))
    assert count_deltas(ours) == sum(p.numel() for p in ref.parameters() if p.requires_grad)
    same_lora_weights(ref, ours, prefix="backbone.")
    with torch.no_grad():
        ids = batch()["input_ids"]
        expected = ref(input_ids=ids).logits
        got = ours.backbone(input_ids=ids).logits
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, DECODERS[family]()(input_ids=ids).logits, atol=1e-3)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("op", ["add", "concat", "plugin"])
def test_adamw_moves_only_the_masked_values_and_every_counted_entry_trains(family, op):
    model = tiny_decoder(family).train()
    # GELU in the plugin: a ReLU unit can be off for the whole batch, dead by data (test_plan)
    attach(model, dataclasses.replace(DeltaSpec.apet(op, "adjacent", budget=700, seed=3), activation="gelu"))
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    masks = {n: m for n, m in model.named_modules() if isinstance(m, MaskedTensor)}
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():  # a non-zero state: zero-initialised sides pass no gradient at the start
        for m in masks.values():
            m.values.copy_(0.05 * torch.randn(m.values.shape, generator=g))
    model(**batch())["loss"].backward()
    for n, m in masks.items():
        assert m.values.grad is not None and bool((m.values.grad != 0).all()), n  # no dead budget
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.5)
    opt.step()
    for n, p in model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, frozen[n]), n


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("spec", [DeltaSpec.pet("lora"), DeltaSpec.pet("prompt"), DeltaSpec.pet("bitfit"),
                                  DeltaSpec.apet("add", "discrete", budget=900)], ids=lambda s: s.label)
def test_save_then_load_reproduces_outputs(family, spec, tmp_path):
    model = tiny_decoder(family)
    attach(model, spec)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(7)) * 0.1)
    path = save_deltas(model, tmp_path / "d.safetensors")
    fresh = tiny_decoder(family)
    attach(fresh, DeltaSpec.from_json(spec.to_json()))
    load_deltas(fresh, path)
    with torch.no_grad():
        assert torch.equal(fresh(**batch())["logits"], model(**batch())["logits"])


def test_an_unknown_architecture_is_refused_in_one_line():
    from transformers import GPT2Config, GPT2LMHeadModel

    from apet_ray.models import CausalLM

    model = CausalLM(GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=4, vocab_size=120)))
    with pytest.raises(UserError, match="model type 'gpt2' is not supported") as info:
        attach(model, DeltaSpec.pet("lora"))
    assert "\n" not in str(info.value)


# ---- MPNet (all-mpnet-base-v2's architecture): BERT-shaped, other names, no token types -----

def tiny_mpnet():
    from transformers import MPNetConfig, MPNetModel

    from apet_ray.models import EncoderClassifier

    torch.manual_seed(0)
    backbone = MPNetModel(MPNetConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=48, max_position_embeddings=256, hidden_dropout_prob=0.0,
                                      attention_probs_dropout_prob=0.0), add_pooling_layer=False).eval()
    return EncoderClassifier(backbone, num_labels=3).eval()


@pytest.mark.parametrize("method,count", [
    ("lora", 2 * 2 * 8 * (32 + 32)), ("adapter", 2 * 2 * (2 * 32 * 24 + 24 + 32)), ("prompt", 100 * 32),
    ("bitfit", 2 * (4 * 32 + 32 + 2 * 32) + 32),  # the paper's: all biases but the FFN's first layer
    ("bitfit_all", 2 * (4 * 32 + 48 + 32 + 2 * 32) + 32),
])
def test_mpnet_counts_and_trains(method, count):
    model = tiny_mpnet().train()
    attach(model, DeltaSpec.pet(method))
    assert count_deltas(model) == count
    ids = batch()["input_ids"]
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.tensor([0, 1, 2]))
    out["loss"].backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_mpnet_lora_matches_peft():
    peft = pytest.importorskip("peft")
    ref = peft.get_peft_model(tiny_mpnet().backbone, peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                                                     target_modules=r".*attention\.attn\.(q|v)"))
    ours = tiny_mpnet()
    attach(ours, DeltaSpec.pet("lora"))
    assert count_deltas(ours) == sum(p.numel() for p in ref.parameters() if p.requires_grad)
