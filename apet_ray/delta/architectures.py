"""Where things are in each model family: one table per family, nothing else knows names.

A *family* (``Family``: BERT, T5, Llama, GPT-2, ...) is one table of module names; its
*kind* (``Kind``: bert, t5, causal) is how apet-ray uses the model -- the wrapper, the data
layout and the scoring. Several families share a kind (MPNet and DeBERTa are ``bert``).
A *role* names a position inside a transformer block ("query", "ffn_out", ...).
Specs speak in roles; this module turns a role into the concrete modules of a model.
Adding a family means adding one ``Family`` entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from apet_ray.errors import UserError

# role -> path of the module inside one block; a callable when it depends on the block
RolePaths = dict[str, Callable[[nn.Module, str], list[str]]]


def _at(*paths: str) -> Callable[[nn.Module, str], list[str]]:
    def find(block: nn.Module, stack: str) -> list[str]:
        return [p for p in paths if has_module(block, p)]

    return find


def has_module(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
        return True
    except AttributeError:
        return False


def _t5_ffn(*names: str) -> Callable[[nn.Module, str], list[str]]:
    # T5's feed-forward sub-layer is the last one: layer.1 in the encoder, layer.2 in the
    # decoder (after cross-attention). Gated variants (t5-v1_1) have wi_0/wi_1, not wi.
    def find(block: nn.Module, stack: str) -> list[str]:
        last = len(block.layer) - 1
        return [f"layer.{last}.DenseReluDense.{n}" for n in names if has_module(block, f"layer.{last}.DenseReluDense.{n}")]

    return find


def _decoder_only(*paths: str) -> Callable[[nn.Module, str], list[str]]:
    def find(block: nn.Module, stack: str) -> list[str]:
        return [p for p in paths if stack == "decoder" and has_module(block, p)]

    return find


class Kind:
    """How a model is used: the one place the three kinds are spelled. Plain strings, written
    as they are into the trials table's ``family`` column (docs/schema.md)."""

    BERT = "bert"  # an encoder + a classifier head (models.EncoderClassifier): classification only
    T5 = "t5"  # encoder-decoder, text-to-text (models.Seq2SeqLM)
    CAUSAL = "causal"  # decoder-only, text-to-text: the target continues the source (models.CausalLM)


KINDS = (Kind.BERT, Kind.T5, Kind.CAUSAL)


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    kind: str  # a Kind
    stacks: tuple[str, ...]  # paths of the ModuleLists of blocks
    roles: RolePaths
    input_embeddings: str  # the token embedding a prompt is prepended to
    norms_outside_blocks: tuple[str, ...] = ()
    # roles that are linear layers of a block (used by "linear" and by "biases")
    linear_roles: tuple[str, ...] = field(default=())
    # The paper's BitFit ("paper_biases", paper.md §2 / Table 2): the roles whose linear biases it
    # trains, linear layers outside the blocks it adds a bias to, and parameter tables it trains
    # whole. Norm biases, where a norm has one, are always in.
    bitfit_roles: tuple[str, ...] = ()
    bitfit_linears: tuple[str, ...] = ()
    bitfit_tables: tuple[str, ...] = ()
    # attention modules BitFit gives a new zero-initialised relative-position table
    # (layers.CrossPositionBias), and the rows of a bitfit_linears bias when fewer than the
    # layer's outputs (the rest stay without one), from the backbone's config
    bitfit_new_tables: Callable[[nn.Module], list[str]] | None = None
    bitfit_linear_rows: Callable[[object], int | None] | None = None
    # fused attention: the output rows of the one q/k/v layer that are the key's, from the
    # config (an APET add leaves them out at "outputs": softmax ignores a vector there)
    fused_key_rows: Callable[[object], list[int]] | None = None
    # model type -> rows at the start of the position table that no token uses (RoBERTa-style
    # encoders reserve padding_idx + 1 = 2): the input may use max_position_embeddings - this
    position_offsets: dict[str, int] = field(default_factory=dict)


# every linear layer of a block with separate q, k and v (fused ones: _FUSED_LINEAR)
_LINEAR = ("query", "key", "value", "attn_out", "ffn_in", "ffn_out")
# "the bias terms in the self-attention and layer norm layers": BertAttention (q, k, v and its
# output dense + LayerNorm) and BertOutput (the FFN's output dense + LayerNorm) -- every bias
# but the FFN's first layer. Gives Table 2's 0.05 / 0.06 / 0.05 % on BERT small/base/large.
_PAPER_BITFIT = ("query", "key", "value", "attn_out", "ffn_out")

BERT = Family(
    name="bert",
    model_types=("bert", "roberta", "xlm-roberta", "electra"),
    kind=Kind.BERT,
    stacks=("encoder.layer",),
    roles={
        "query": _at("attention.self.query"),
        "key": _at("attention.self.key"),
        "value": _at("attention.self.value"),
        "attn_out": _at("attention.output.dense"),
        "ffn_in": _at("intermediate.dense"),
        "ffn_out": _at("output.dense"),
        "norm": _at("attention.output.LayerNorm", "output.LayerNorm"),
    },
    input_embeddings="embeddings.word_embeddings",
    norms_outside_blocks=("embeddings.LayerNorm",),
    linear_roles=_LINEAR,
    bitfit_roles=_PAPER_BITFIT,
    position_offsets={"roberta": 2, "xlm-roberta": 2},
)

# config vocab_size -> the tokenizer's length, where the release resized the LM head to it
T5_TOKENIZER_ROWS = {32128: 32100}

T5 = Family(
    name="t5",
    model_types=("t5", "mt5", "umt5"),
    kind=Kind.T5,
    stacks=("encoder.block", "decoder.block"),
    roles={
        "query": _at("layer.0.SelfAttention.q"),
        "key": _at("layer.0.SelfAttention.k"),
        "value": _at("layer.0.SelfAttention.v"),
        "attn_out": _at("layer.0.SelfAttention.o"),
        "cross_query": _decoder_only("layer.1.EncDecAttention.q"),
        "cross_key": _decoder_only("layer.1.EncDecAttention.k"),
        "cross_value": _decoder_only("layer.1.EncDecAttention.v"),
        "cross_out": _decoder_only("layer.1.EncDecAttention.o"),
        "ffn_in": _t5_ffn("wi", "wi_0", "wi_1"),
        "ffn_out": _t5_ffn("wo"),
        "norm": lambda block, stack: [f"layer.{i}.layer_norm" for i in range(len(block.layer))],
    },
    input_embeddings="encoder.embed_tokens",  # encoder input only, as in the paper
    norms_outside_blocks=("encoder.final_layer_norm", "decoder.final_layer_norm"),
    linear_roles=(
        "query", "key", "value", "attn_out",
        "cross_query", "cross_key", "cross_value", "cross_out",
        "ffn_in", "ffn_out",
    ),
    # The release (PET_Scaling's modeling_t5.py) gives every Linear a zero bias, the LM head's
    # included, and trains every parameter whose name holds "bias": the relative-position tables too.
    bitfit_roles=(
        "query", "key", "value", "attn_out",
        "cross_query", "cross_key", "cross_value", "cross_out",
        "ffn_in", "ffn_out",
    ),
    bitfit_linears=("lm_head",),
    bitfit_tables=(
        "encoder.block.0.layer.0.SelfAttention.relative_attention_bias",
        "decoder.block.0.layer.0.SelfAttention.relative_attention_bias",
    ),
    # ... and its decoder cross-attentions all have a table (has_relative_attention_bias=True),
    bitfit_new_tables=lambda backbone: [f"decoder.block.{i}.layer.1.EncDecAttention"
                                        for i in range(len(backbone.decoder.block))],
    # and resize_token_embeddings(len(tokenizer)) makes the LM head, so its bias, 32,100 rows:
    # T5's 32,000 pieces + 100 sentinels, not the config's 32,128 (padded to a multiple of 128)
    bitfit_linear_rows=lambda config: T5_TOKENIZER_ROWS.get(getattr(config, "vocab_size", None)),
)

# MPNet (all-mpnet-base-v2): BERT-shaped blocks under other names, no token types.
MPNET = Family(
    name="mpnet",
    model_types=("mpnet",),
    kind=Kind.BERT,
    stacks=("encoder.layer",),
    roles={
        "query": _at("attention.attn.q"),
        "key": _at("attention.attn.k"),
        "value": _at("attention.attn.v"),
        "attn_out": _at("attention.attn.o"),
        "ffn_in": _at("intermediate.dense"),
        "ffn_out": _at("output.dense"),
        "norm": _at("attention.LayerNorm", "output.LayerNorm"),
    },
    input_embeddings="embeddings.word_embeddings",
    norms_outside_blocks=("embeddings.LayerNorm",),
    linear_roles=_LINEAR,
    bitfit_roles=_PAPER_BITFIT,  # as BERT's
    position_offsets={"mpnet": 2},  # RoBERTa-style positions
)

# DistilBERT: BERT's blocks, six of them, under shorter names; no token types.
DISTILBERT = Family(
    name="distilbert",
    model_types=("distilbert",),
    kind=Kind.BERT,
    stacks=("transformer.layer",),
    roles={
        "query": _at("attention.q_lin"),
        "key": _at("attention.k_lin"),
        "value": _at("attention.v_lin"),
        "attn_out": _at("attention.out_lin"),
        "ffn_in": _at("ffn.lin1"),
        "ffn_out": _at("ffn.lin2"),
        "norm": _at("sa_layer_norm", "output_layer_norm"),
    },
    input_embeddings="embeddings.word_embeddings",
    norms_outside_blocks=("embeddings.LayerNorm",),
    linear_roles=_LINEAR,
    bitfit_roles=_PAPER_BITFIT,  # as BERT's
)

# DeBERTa-v2 and v3 (one model type): BERT's layout with *_proj names; the relative-position
# table and its LayerNorm sit in the encoder, outside the blocks. The position projections of
# un-shared attention keys (share_att_key=False) are not a role: the paper's positions are
# the content projections.
DEBERTA_V2 = Family(
    name="deberta-v2",
    model_types=("deberta-v2",),
    kind=Kind.BERT,
    stacks=("encoder.layer",),
    roles={
        "query": _at("attention.self.query_proj"),
        "key": _at("attention.self.key_proj"),
        "value": _at("attention.self.value_proj"),
        "attn_out": _at("attention.output.dense"),
        "ffn_in": _at("intermediate.dense"),
        "ffn_out": _at("output.dense"),
        "norm": _at("attention.output.LayerNorm", "output.LayerNorm"),
    },
    input_embeddings="embeddings.word_embeddings",
    norms_outside_blocks=("embeddings.LayerNorm", "encoder.LayerNorm"),
    linear_roles=_LINEAR,
    bitfit_roles=_PAPER_BITFIT,  # as BERT's
)

# Llama-style decoders (Llama, Qwen2/3, Mistral): q/k/v/o, a gated FFN, RMS norms.
LLAMA = Family(
    name="llama",
    model_types=("llama", "qwen2", "qwen3", "mistral"),
    kind=Kind.CAUSAL,
    stacks=("model.layers",),
    roles={
        "query": _at("self_attn.q_proj"),
        "key": _at("self_attn.k_proj"),
        "value": _at("self_attn.v_proj"),
        "attn_out": _at("self_attn.o_proj"),
        "ffn_in": _at("mlp.gate_proj", "mlp.up_proj"),
        "ffn_out": _at("mlp.down_proj"),
        "norm": _at("input_layernorm", "post_attention_layernorm"),
    },
    input_embeddings="model.embed_tokens",
    norms_outside_blocks=("model.norm",),
    linear_roles=_LINEAR,
    # as the release does for T5: a zero bias on every linear layer of the blocks (not on the
    # LM head: a vocabulary-sized bias would outweigh everything else, 150k values on Qwen2)
    bitfit_roles=_LINEAR,
)

# OPT (the release's vendored decoder): LayerNorms with biases, fc1/fc2.
OPT = Family(
    name="opt",
    model_types=("opt",),
    kind=Kind.CAUSAL,
    stacks=("model.decoder.layers",),
    roles={
        "query": _at("self_attn.q_proj"),
        "key": _at("self_attn.k_proj"),
        "value": _at("self_attn.v_proj"),
        "attn_out": _at("self_attn.out_proj"),
        "ffn_in": _at("fc1"),
        "ffn_out": _at("fc2"),
        "norm": _at("self_attn_layer_norm", "final_layer_norm"),
    },
    input_embeddings="model.decoder.embed_tokens",
    norms_outside_blocks=("model.decoder.final_layer_norm",),
    linear_roles=_LINEAR,
    bitfit_roles=_LINEAR,  # the release's OPT BitFit: every "bias" (OPT's head has none)
)

# Fused attention: one layer computes q, k and v together, so "query", "key" and "value"
# (and "qkv") are that one layer, and LoRA on q and v is LoRA on the fused projection --
# what peft targets on these models (c_attn, query_key_value).
_FUSED_LINEAR = ("qkv", "attn_out", "ffn_in", "ffn_out")


def _fused(path: str) -> dict[str, Callable[[nn.Module, str], list[str]]]:
    return {role: _at(path) for role in ("qkv", "query", "key", "value")}


# GPT-2: Conv1D layers (a Linear with its weight stored transposed; models.CausalLM turns
# them into nn.Linear at wrap time), learned positions, biases everywhere, a tied head.
GPT2 = Family(
    name="gpt2",
    model_types=("gpt2",),
    kind=Kind.CAUSAL,
    stacks=("transformer.h",),
    roles={
        **_fused("attn.c_attn"),
        "attn_out": _at("attn.c_proj"),
        "ffn_in": _at("mlp.c_fc"),
        "ffn_out": _at("mlp.c_proj"),
        "norm": _at("ln_1", "ln_2"),
    },
    input_embeddings="transformer.wte",
    norms_outside_blocks=("transformer.ln_f",),
    linear_roles=_FUSED_LINEAR,
    bitfit_roles=_FUSED_LINEAR,
    fused_key_rows=lambda config: list(range(config.n_embd, 2 * config.n_embd)),  # split into q, k, v
)


def _bloom_key_rows(hidden: int, heads: int) -> list[int]:
    """BLOOM's fused output is (heads, 3, head_dim): q, k, v of each head in turn."""
    dim = hidden // heads
    return [h * 3 * dim + dim + j for h in range(heads) for j in range(dim)]


# BLOOM (the release's other vendored decoder): fused query_key_value, ALiBi (no position
# table), a LayerNorm right after the embeddings.
BLOOM = Family(
    name="bloom",
    model_types=("bloom",),
    kind=Kind.CAUSAL,
    stacks=("transformer.h",),
    roles={
        **_fused("self_attention.query_key_value"),
        "attn_out": _at("self_attention.dense"),
        "ffn_in": _at("mlp.dense_h_to_4h"),
        "ffn_out": _at("mlp.dense_4h_to_h"),
        "norm": _at("input_layernorm", "post_attention_layernorm"),
    },
    input_embeddings="transformer.word_embeddings",
    norms_outside_blocks=("transformer.word_embeddings_layernorm", "transformer.ln_f"),
    linear_roles=_FUSED_LINEAR,
    bitfit_roles=_FUSED_LINEAR,
    fused_key_rows=lambda config: _bloom_key_rows(config.hidden_size, config.n_head),
)

FAMILIES = (BERT, MPNET, DISTILBERT, DEBERTA_V2, T5, LLAMA, OPT, GPT2, BLOOM)

# Roles that are not a module inside blocks but a group the engine expands itself.
GROUP_ROLES = {
    "linear": "every linear layer of every block (attention, cross-attention, feed-forward)",
    "biases": "every bias term of linear layers (added, zero-initialised, where missing) and of norms that have one",
    "paper_biases": "the bias terms the paper's BitFit trains (BERT: all but the FFN's first layer; "
                    "T5: every linear layer's incl. the LM head over the tokenizer's rows, the relative-position "
                    "tables and one new table per decoder cross-attention, as the release)",
    "outputs": "the paper's Add (Eq. 14): a vector on every layer output where one can train -- each linear "
               "layer's (the LM head's included, over BitFit's rows; under an APET mask not the key projections', "
               "nor the key rows of a fused q/k/v layer), each norm's (its bias, or one added where it has none), "
               "and the relative-position tables BitFit trains: at least what BitFit trains, less its key biases",
    "embeddings": "the input token embeddings (a prompt is prepended here)",
    "all": "every parameter of the backbone (full fine-tuning)",
    "any": "whole backbone tensors at random, half where the matched method sits, the last one masked "
           "to the exact budget (add-weight; delta/anywhere.py)",
}


def family_for_model_type(model_type: str | None) -> Family:
    """The family of a Hugging Face ``config.model_type``; anything else is refused in one line."""
    for fam in FAMILIES:
        if model_type in fam.model_types:
            return fam
    known = ", ".join(t for f in FAMILIES for t in f.model_types)
    raise UserError(f"model type {model_type!r} is not supported (supported: {known})")


def position_offset(model_type: str | None) -> int:
    """The position rows a model type reserves (its family's ``position_offsets``); 0 when
    it reserves none or no family covers it."""
    return next((f.position_offsets.get(model_type, 0) for f in FAMILIES if model_type in f.model_types), 0)


def family_of(backbone: nn.Module) -> Family:
    return family_for_model_type(getattr(getattr(backbone, "config", None), "model_type", None))


def known_roles(fam: Family) -> list[str]:
    return sorted(set(fam.roles) | set(GROUP_ROLES))


_LOADED_AS = {Kind.BERT: "AutoModel", Kind.T5: "T5ForConditionalGeneration", Kind.CAUSAL: "AutoModelForCausalLM"}


def blocks(backbone: nn.Module, fam: Family) -> list[tuple[str, str, nn.Module]]:
    """(stack name, block path, block) for every transformer block, in order."""
    out = []
    for stack_path in fam.stacks:
        if not has_module(backbone, stack_path):  # e.g. a bare GPT2Model, not the LM apet-ray builds
            raise UserError(f"this {fam.name} model has no {stack_path}: apet-ray expects {_LOADED_AS[fam.kind]}'s layout")
        stack = backbone.get_submodule(stack_path)
        stack_name = stack_path.split(".")[0]
        for i, block in enumerate(stack):
            out.append((stack_name, f"{stack_path}.{i}", block))
    return out


def modules_for_role(backbone: nn.Module, fam: Family, role: str) -> list[str]:
    """Full paths (relative to the backbone) of the modules that play ``role``."""
    if role == "linear":
        return [p for r in fam.linear_roles for p in modules_for_role(backbone, fam, r)]
    if role not in fam.roles:
        raise UserError(f"unknown position {role!r} for {fam.name} models (known: {', '.join(known_roles(fam))})")
    paths = []
    for stack, block_path, block in blocks(backbone, fam):
        paths += [f"{block_path}.{p}" for p in fam.roles[role](block, stack)]
    return paths
