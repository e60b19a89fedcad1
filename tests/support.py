"""Test helpers: tiny random-initialised BERT and T5 models (mechanics only), the shared data."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from transformers import (BertConfig, BertModel, BloomConfig, BloomForCausalLM, DebertaV2Config, DebertaV2Model,
                          DistilBertConfig, DistilBertModel, GPT2Config, GPT2LMHeadModel, LlamaConfig,
                          LlamaForCausalLM, OPTConfig, OPTForCausalLM, Qwen2Config, Qwen2ForCausalLM, T5Config,
                          T5ForConditionalGeneration)

from apet_ray.models import TINY, CausalLM, EncoderClassifier, Seq2SeqLM, minilm_path

SHARED = Path(os.environ.get("APET_SHARED", Path(__file__).resolve().parents[1] / ".." / "shared")).resolve()


def bert_config(**kw) -> BertConfig:
    base = dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                max_position_embeddings=256, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertConfig(**{**base, **kw})


def t5_config(**kw) -> T5Config:
    base = dict(vocab_size=120, d_model=32, d_kv=8, num_heads=4, d_ff=48, num_layers=2, num_decoder_layers=2,
                feed_forward_proj="gated-gelu", dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    return T5Config(**{**base, **kw})


# decoder-only families: d=32, d_ff=48, 2 layers, 4 heads (2 key/value heads where grouped)
_DECODER = dict(vocab_size=120, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
DECODERS = {
    "llama": lambda: LlamaForCausalLM(LlamaConfig(**_DECODER, num_key_value_heads=2)),
    "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(**_DECODER, num_key_value_heads=2)),
    "opt": lambda: OPTForCausalLM(OPTConfig(vocab_size=120, hidden_size=32, ffn_dim=48, word_embed_proj_dim=32,
                                            num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=256,
                                            pad_token_id=0, bos_token_id=1, eos_token_id=2, dropout=0.0,
                                            attention_dropout=0.0, tie_word_embeddings=False,
                                            activation_function="gelu")),  # ReLU units die by data (test_plan)
    # fused q/k/v: GPT-2 in Conv1D layers with a tied head, BLOOM with ALiBi and no position table
    "gpt2": lambda: _gpt2(vocab_size=120, n_inner=48, n_positions=256, bos_token_id=1, eos_token_id=2),
    "bloom": lambda: _bloom(vocab_size=120, bos_token_id=1, eos_token_id=2),
}


def _gpt2(**kw) -> GPT2LMHeadModel:
    return GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, pad_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0,
                                      attn_pdrop=0.0, **kw))


def _bloom(**kw) -> BloomForCausalLM:
    return BloomForCausalLM(BloomConfig(hidden_size=32, n_layer=2, n_head=4, pad_token_id=0, hidden_dropout=0.0,
                                        attention_dropout=0.0, **kw))


# The same tiny architectures with the MiniLM tokenizer's vocabulary, for runs through
# apet-ray's loader (saved_model): DistilBERT, DeBERTa-v2, GPT-2 and BLOOM beside the presets.
_SAVABLE = {
    "bert": lambda: BertModel(TINY["tiny-bert"](), add_pooling_layer=False),
    "t5": lambda: T5ForConditionalGeneration(TINY["tiny-t5"]()),
    "llama": lambda: LlamaForCausalLM(TINY["tiny-llama"]()),
    "distilbert": lambda: DistilBertModel(DistilBertConfig(vocab_size=30522, dim=32, hidden_dim=64, n_layers=2, n_heads=4,
                                                           dropout=0.0, attention_dropout=0.0)),
    "deberta-v2": lambda: DebertaV2Model(DebertaV2Config(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                                                         num_attention_heads=4, intermediate_size=64, relative_attention=True,
                                                         pos_att_type=["p2c", "c2p"], norm_rel_ebd="layer_norm",
                                                         position_biased_input=False, position_buckets=16, type_vocab_size=0,
                                                         hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)),
    "gpt2": lambda: _gpt2(vocab_size=30522, n_inner=64, n_positions=512, bos_token_id=101, eos_token_id=102),
    "bloom": lambda: _bloom(vocab_size=30522, bos_token_id=101, eos_token_id=102),
}


def saved_model(kind: str, folder: Path) -> Path:
    """A tiny random model saved as a real model folder: safetensors weights, the MiniLM tokenizer."""
    torch.manual_seed(0)
    _SAVABLE[kind]().save_pretrained(folder)
    for f in minilm_path().iterdir():
        if f.is_file() and "token" in f.name or f.name == "vocab.txt":
            shutil.copy(f, folder / f.name)
    return folder


def tiny_decoder(family: str, seed: int = 0) -> CausalLM:
    torch.manual_seed(seed)
    return CausalLM(DECODERS[family]().eval()).eval()


def tiny_bert(seed: int = 0) -> BertModel:
    torch.manual_seed(seed)
    return BertModel(bert_config(), add_pooling_layer=False).eval()


def tiny_t5(seed: int = 0) -> T5ForConditionalGeneration:
    torch.manual_seed(seed)
    return T5ForConditionalGeneration(t5_config()).eval()


def tiny_classifier(seed: int = 0) -> EncoderClassifier:
    model = EncoderClassifier(tiny_bert(seed), num_labels=2)
    torch.manual_seed(seed)
    model.head[1].reset_parameters()
    return model.eval()


def tiny_seq2seq(seed: int = 0) -> Seq2SeqLM:
    return Seq2SeqLM(tiny_t5(seed)).eval()


def same_lora_weights(peft_model, ours, prefix: str = "") -> None:
    """Give a peft LoRA model and ours the same non-zero LoRA weights (B starts at zero,
    which would prove nothing), layer by layer; ``prefix`` is stripped from our names."""
    from apet_ray.delta.layers import DeltaLinear

    g = torch.Generator().manual_seed(0)
    theirs = {n: m for n, m in peft_model.base_model.model.named_modules() if hasattr(m, "lora_A")}
    mine = {n.removeprefix(prefix): m for n, m in ours.named_modules() if isinstance(m, DeltaLinear)}
    assert set(theirs) == set(mine)
    with torch.no_grad():
        for name, layer in theirs.items():
            A = torch.randn(layer.lora_A["default"].weight.shape, generator=g) * 0.1
            B = torch.randn(layer.lora_B["default"].weight.shape, generator=g) * 0.1
            layer.lora_A["default"].weight.copy_(A)
            layer.lora_B["default"].weight.copy_(B)
            mine[name].lowrank.A.values.copy_(A.flatten())
            mine[name].lowrank.B.values.copy_(B.flatten())


def shared_or_skip(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is not on this machine")
    return path
