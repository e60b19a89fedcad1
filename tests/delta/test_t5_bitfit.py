"""T5 BitFit as the release counts it: every decoder cross-attention gets a relative-position
table (zero-initialised, each used by its own layer), and the LM-head bias covers the
tokenizer's 32,100 rows, not the config's 32,128."""

import json

import torch

from apet_ray.cli import main
from apet_ray.delta import DeltaSpec, attach, count_deltas, load_deltas, save_deltas
from apet_ray.delta.layers import CrossPositionBias, DeltaLinear
from apet_ray.models import Seq2SeqLM
from support import shared_or_skip, t5_config, tiny_seq2seq
from transformers import T5ForConditionalGeneration


def _batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2, 120, (3, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[2, 5:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.randint(2, 120, (3, 4), generator=g)}


def test_tiny_t5_bitfit_trains_a_table_in_every_cross_attention():
    model, batch = tiny_seq2seq(), _batch()
    with torch.no_grad():
        before = model(**batch)["logits"]
    plan = attach(model, DeltaSpec.pet("bitfit"))
    tables = [m for m in model.modules() if isinstance(m, CrossPositionBias)]
    assert len(tables) == 2 and all(t.relative_attention_bias.shape == (32, 4) for t in tables)
    assert [p.path for p in plan.placements if p.kind == "table"] == [
        f"backbone.decoder.block.{i}.layer.1.EncDecAttention" for i in range(2)]
    with torch.no_grad():
        assert torch.allclose(model(**batch)["logits"], before, rtol=0, atol=1e-5)  # zero tables: unchanged
    model(**batch)["loss"].backward()
    # each layer adds its own table (HF would use only the first and hand its bias on)
    for t in tables:
        grad = t.relative_attention_bias.values.grad
        assert grad is not None and grad.abs().sum() > 0


def test_a_cross_table_shifts_its_own_layer_only_and_survives_save_and_load(tmp_path):
    model, batch = tiny_seq2seq(), _batch()
    attach(model, DeltaSpec.pet("bitfit"))
    second = [m for m in model.modules() if isinstance(m, CrossPositionBias)][1]
    with torch.no_grad():
        second.relative_attention_bias.values.normal_(generator=torch.Generator().manual_seed(0))
        moved = model(**batch)["logits"]
    path = save_deltas(model, tmp_path / "d.safetensors")
    other = tiny_seq2seq()
    attach(other, DeltaSpec.pet("bitfit"))
    load_deltas(other, path)
    with torch.no_grad():
        assert torch.equal(other(**batch)["logits"], moved)
        # greedy generation runs through the same tables
        assert other.generate(batch["input_ids"], batch["attention_mask"], 3).shape == (3, 3)


def test_the_lm_head_bias_covers_the_tokenizer_s_rows_on_t5_s_standard_vocabulary():
    config = t5_config(vocab_size=32128, d_model=8, d_kv=2, num_heads=2, d_ff=8, num_layers=1, num_decoder_layers=1)
    with torch.device("meta"):
        model = Seq2SeqLM(T5ForConditionalGeneration(config))
    plan = attach(model, DeltaSpec.pet("bitfit"))
    head = next(p for p in plan.placements if p.path == "backbone.lm_head")
    assert [s.shape for s in head.slots] == [(32100,)]
    # the padded rows get no bias: real logits there are what the frozen head gives
    real = Seq2SeqLM(T5ForConditionalGeneration(config)).eval()
    attach(real, DeltaSpec.pet("bitfit"))
    layer = real.backbone.lm_head
    assert isinstance(layer, DeltaLinear)
    with torch.no_grad():
        layer.bias_delta.values.fill_(1.0)
        x = torch.randn(2, 8)
        y = layer(x) - layer.base(x)
    assert torch.allclose(y[:, :32100], torch.ones(2, 32100)) and not y[:, 32100:].any()
    assert count_deltas(real) == plan.count


def test_t5_v1_1_xxl_bitfit_counts_as_the_release(capsys):
    cfg = shared_or_skip("configs", "t5-v1_1-xxl")
    assert main(["params", "--model", str(cfg), "--method", "bitfit", "--json"]) == 0
    # 2,395,520 before: + 24 cross-attention tables x 32 buckets x 64 heads, - 28 LM-head rows
    assert json.loads(capsys.readouterr().out)["trainable_params"] == 2_395_520 + 24 * 32 * 64 - 28 == 2_444_644
