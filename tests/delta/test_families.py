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
FUSED = {"gpt2", "bloom"}  # one q/k/v layer (32 -> 96): LoRA on q and v is LoRA on it, as peft's default
FF = {"bloom": 128}  # BLOOM's FFN is 4 x hidden; the others are configured to 48
NORM_BIASES_OUTSIDE = {"opt": 1, "gpt2": 1, "bloom": 2}  # final LayerNorm (BLOOM: and the embeddings')


def closed_form(family: str, method: str) -> int:
    d, ff, layers = 32, FF.get(family, 48), 2
    fused = family in FUSED
    if method == "lora":
        return layers * 8 * (d + 3 * d) if fused else layers * (8 * (d + d) + 8 * (d + KV[family]))
    if method == "adapter":
        return layers * 2 * (2 * d * 24 + 24 + d)
    if method == "prompt":
        return 100 * d
    if method == "bitfit":  # a bias on every linear layer of the blocks (added where missing), and norm biases
        qkv = 3 * d if fused else d + 2 * KV[family]
        ffn_in = 2 * ff if family in ("llama", "qwen2") else ff  # gated FFNs have two input layers
        norms = 0 if family in ("llama", "qwen2") else 2 * d  # RMS norms have no bias
        return layers * (qkv + d + ffn_in + d + norms) + NORM_BIASES_OUTSIDE.get(family, 0) * d
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
@pytest.mark.parametrize("op", ["add-weight", "concat", "plugin"])
@pytest.mark.parametrize("distribution", ["adjacent", "discrete"])
def test_apet_matches_every_method_exactly(family, op, distribution):
    for method in ("lora", "bitfit") + (("adapter",) if op != "concat" else ()):  # q, v at rank 16 hold less
        model = tiny_decoder(family)
        attach(model, DeltaSpec.apet(op, distribution, match=method, seed=2))
        assert count_deltas(model) == closed_form(family, method), method


PEFT_TARGETS = {"llama": r".*self_attn\.(q|v)_proj", "qwen2": r".*self_attn\.(q|v)_proj", "opt": r".*self_attn\.(q|v)_proj",
                "gpt2": r".*attn\.c_attn", "bloom": r".*self_attention\.query_key_value"}


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


def test_an_unknown_architecture_is_refused_in_one_line():
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from apet_ray.models import CausalLM

    model = CausalLM(GPTNeoXForCausalLM(GPTNeoXConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                                      intermediate_size=48, vocab_size=120)))
    with pytest.raises(UserError, match="model type 'gpt_neox' is not supported") as info:
        attach(model, DeltaSpec.pet("lora"))
    assert "\n" not in str(info.value)


# ---- encoders beyond BERT: MPNet (all-mpnet-base-v2's architecture), DistilBERT, DeBERTa-v2/v3 -------

def _mpnet():
    from transformers import MPNetConfig, MPNetModel

    return MPNetModel(MPNetConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=48, max_position_embeddings=256, hidden_dropout_prob=0.0,
                                  attention_probs_dropout_prob=0.0), add_pooling_layer=False)


def _distilbert():
    from transformers import DistilBertConfig, DistilBertModel

    return DistilBertModel(DistilBertConfig(vocab_size=120, dim=32, hidden_dim=48, n_layers=2, n_heads=4,
                                            max_position_embeddings=256, dropout=0.0, attention_dropout=0.0))


def _deberta_v3():  # v3's settings: relative attention both ways, a LayerNorm on the table, no token types
    from transformers import DebertaV2Config, DebertaV2Model

    return DebertaV2Model(DebertaV2Config(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                          intermediate_size=48, max_position_embeddings=256, hidden_dropout_prob=0.0,
                                          attention_probs_dropout_prob=0.0, relative_attention=True,
                                          pos_att_type=["p2c", "c2p"], norm_rel_ebd="layer_norm",
                                          position_biased_input=False, position_buckets=16, type_vocab_size=0))


ENCODERS = {"mpnet": _mpnet, "distilbert": _distilbert, "deberta-v2": _deberta_v3}
ENCODER_LORA = {"mpnet": r".*attention\.attn\.(q|v)", "distilbert": r".*attention\.(q|v)_lin",
                "deberta-v2": r".*attention\.self\.(query|value)_proj"}
NORMS_OUTSIDE = {"deberta-v2": 2}  # the embeddings' LayerNorm, and DeBERTa's on its relative table


def tiny_encoder(family: str, seed: int = 0):
    from apet_ray.models import EncoderClassifier

    torch.manual_seed(seed)
    return EncoderClassifier(ENCODERS[family]().eval(), num_labels=3).eval()


def encoder_count(family: str, method: str) -> int:
    d, ff, layers, outside = 32, 48, 2, NORMS_OUTSIDE.get(family, 1) * 32
    return {"lora": layers * 2 * 8 * (d + d), "adapter": layers * 2 * (2 * d * 24 + 24 + d), "prompt": 100 * d,
            # the paper's BitFit: every bias but the FFN's first layer's, and the norms'
            "bitfit": layers * (4 * d + d + 2 * d) + outside,
            "bitfit_all": layers * (4 * d + ff + d + 2 * d) + outside}[method]


def encoder_batch():
    ids = batch()["input_ids"]
    return {"input_ids": ids, "attention_mask": batch()["attention_mask"], "labels": torch.tensor([0, 1, 2])}


@pytest.mark.parametrize("family", sorted(ENCODERS))
@pytest.mark.parametrize("method", ["lora", "adapter", "prompt", "bitfit", "bitfit_all"])
def test_encoder_counts_and_trains(family, method):
    model = tiny_encoder(family).train()
    assert family_of(model.backbone).kind == "bert"
    plan = attach(model, DeltaSpec.pet(method))
    assert plan.count == count_deltas(model) == encoder_count(family, method)
    model(**encoder_batch())["loss"].backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("family", sorted(ENCODERS))
@pytest.mark.parametrize("op", ["add-weight", "concat", "plugin"])
@pytest.mark.parametrize("distribution", ["adjacent", "discrete"])
def test_encoder_apet_matches_every_method_exactly(family, op, distribution):
    for method in ("lora", "bitfit") + (("adapter",) if op != "concat" else ()):
        model = tiny_encoder(family)
        attach(model, DeltaSpec.apet(op, distribution, match=method, seed=2))
        assert count_deltas(model) == encoder_count(family, method), method


@pytest.mark.parametrize("family", sorted(ENCODERS))
def test_encoder_lora_matches_peft(family):
    peft = pytest.importorskip("peft")
    ref = peft.get_peft_model(tiny_encoder(family).backbone,
                              peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=ENCODER_LORA[family]))
    ours = tiny_encoder(family)
    attach(ours, DeltaSpec.pet("lora"))
    assert count_deltas(ours) == sum(p.numel() for p in ref.parameters() if p.requires_grad)
    same_lora_weights(ref, ours, prefix="backbone.")
    ids, mask = encoder_batch()["input_ids"], encoder_batch()["attention_mask"]
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask).last_hidden_state
        got = ours.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
        plain = tiny_encoder(family).backbone(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, plain, atol=1e-3)  # the LoRA weights did something


# ---- every family, encoders and decoders alike: AdamW isolation and save/load ----------------

def _model_and_batch(family: str):
    return (tiny_encoder(family), encoder_batch()) if family in ENCODERS else (tiny_decoder(family), batch())


@pytest.mark.parametrize("family", FAMILIES + sorted(ENCODERS))
@pytest.mark.parametrize("op", ["add-weight", "concat", "plugin"])
def test_adamw_moves_only_the_masked_values_and_every_counted_entry_trains(family, op):
    model, inputs = _model_and_batch(family)
    model.train()
    # GELU in the plugin: a ReLU unit can be off for the whole batch, dead by data (test_plan)
    attach(model, dataclasses.replace(DeltaSpec.apet(op, "adjacent", budget=700, seed=3), activation="gelu"))
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    masks = {n: m for n, m in model.named_modules() if isinstance(m, MaskedTensor)}
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():  # a non-zero state: zero-initialised sides pass no gradient at the start
        for m in masks.values():
            m.values.copy_(0.05 * torch.randn(m.values.shape, generator=g))
    model(**inputs)["loss"].backward()
    for n, m in masks.items():
        assert m.values.grad is not None and bool((m.values.grad != 0).all()), n  # no dead budget
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.5)
    opt.step()
    for n, p in model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, frozen[n]), n


@pytest.mark.parametrize("family", FAMILIES + sorted(ENCODERS))
@pytest.mark.parametrize("spec", [DeltaSpec.pet("lora"), DeltaSpec.pet("prompt"), DeltaSpec.pet("bitfit"),
                                  DeltaSpec.apet("add-weight", "discrete", budget=900)], ids=lambda s: s.label)
def test_save_then_load_reproduces_outputs(family, spec, tmp_path):
    model, inputs = _model_and_batch(family)
    attach(model, spec)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(7)) * 0.1)
    path = save_deltas(model, tmp_path / "d.safetensors")
    fresh, _ = _model_and_batch(family)
    attach(fresh, DeltaSpec.from_json(spec.to_json()))
    load_deltas(fresh, path)
    with torch.no_grad():
        assert torch.equal(fresh(**inputs)["logits"], model(**inputs)["logits"])


# ---- `apet-ray params` on each family's config folder (the meta-device path a run plans on) ----

def _params(capsys, folder, *argv) -> int:
    import json

    from apet_ray.cli import main

    code = main(["params", "--model", str(folder), *argv, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)["trainable_params"]


@pytest.mark.parametrize("family", sorted(ENCODERS) + FAMILIES)
def test_params_on_a_config_folder_gives_the_exact_counts(family, capsys, tmp_path):
    encoder = family in ENCODERS
    (ENCODERS[family]() if encoder else DECODERS[family]()).config.save_pretrained(tmp_path)
    expected = encoder_count if encoder else closed_form
    for method in ("prompt", "bitfit", "lora", "adapter"):
        assert _params(capsys, tmp_path, "--method", method) == expected(family, method), method
    for op in ("add-weight", "concat", "plugin"):
        for distribution in ("adjacent", "discrete"):
            got = _params(capsys, tmp_path, "--method", "apet", "--op", op, "--distribution", distribution, "--match", "lora")
            assert got == expected(family, "lora"), (op, distribution)
