"""From a model name to a wrapped model: ``resolve`` says where a name points (a preset,
the packaged model, a local folder or the hub), ``load_config`` / ``load_tokenizer`` read
it, and ``build_model`` builds the wrapper its kind calls for -- from the config alone on
the meta device (a count), else with its weights."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from torch import nn
from transformers import (AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig,
                          T5ForConditionalGeneration)

from apet_ray.delta.architectures import Kind, family_for_model_type
from apet_ray.errors import UserError
from apet_ray.hub import hub_reachable
from apet_ray.models.causal import CausalLM
from apet_ray.models.encoder import EncoderClassifier
from apet_ray.models.folder import check_model_folder, check_tokenizer
from apet_ray.models.offline import (MINILM_NAMES, MPNET_NAMES, SMOLLM2_NAMES, TINY, minilm_path, mpnet_path,
                                     smollm2_path, verified)
from apet_ray.models.seq2seq import Seq2SeqLM
from apet_ray.models.signature import accepts
from apet_ray.models.streaming import WeightSource, parameters_on_meta, weight_files

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    kind: str  # how the model is used: a delta.architectures.Kind (bert | t5 | causal)
    pretrained: bool
    source: str  # preset | packaged | local | hub


def resolve(name: str) -> tuple[str | Path, ModelInfo]:
    """Where a model name points: a preset, the packaged model, a local folder or the hub."""
    if name in TINY:
        return name, ModelInfo(name, family_for_model_type(TINY[name]().model_type).kind, pretrained=False, source="preset")
    if name in MINILM_NAMES:
        return minilm_path(), ModelInfo("all-MiniLM-L6-v2", Kind.BERT, pretrained=True, source="packaged")
    if name in MPNET_NAMES:
        return mpnet_path(), ModelInfo("all-mpnet-base-v2", Kind.BERT, pretrained=True, source="packaged")
    if name in SMOLLM2_NAMES:
        return smollm2_path(), ModelInfo("SmolLM2-135M-Instruct", Kind.CAUSAL, pretrained=True, source="packaged")
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"{path} has no config.json: not a model folder")
        check_model_folder(path)  # config, tokenizer and weight files are what they claim, or one line
        kind = family_for_model_type(AutoConfig.from_pretrained(path).model_type).kind
        has_weights = any(path.glob("*.safetensors")) or any(path.glob("*.bin"))
        return path, ModelInfo(str(path), kind, pretrained=has_weights, source="local")
    if path.suffix or name.startswith((".", "/")):
        raise UserError(f"model path {name} does not exist")
    return name, ModelInfo(name, "?", pretrained=True, source="hub")  # the kind is known once load_config reads it


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


def check_run_tokenizer(name: str) -> None:
    """A run's tokenizer is there and is the model's (local folders; presets, the packaged
    models and the hub bring their own)."""
    where, info = resolve(name)
    if info.source == "local":
        check_tokenizer(Path(where))


def load_tokenizer(name: str):
    where, info = resolve(name)
    if info.source == "preset":
        where = verified(minilm_path())
    try:
        return AutoTokenizer.from_pretrained(where, **_hub_kwargs(info))
    except OSError as exc:
        raise UserError(f"cannot load the tokenizer of {name!r} ({str(exc).splitlines()[0]})") from None


def build_model(name: str, num_labels: int | None = None, device: str | torch.device = "cpu", seed: int = 0) -> tuple[nn.Module, ModelInfo]:
    """The wrapped model. ``device="meta"`` builds from the config alone (for counting).
    ``device="stream"``: the backbone's parameters stay on the meta device and
    ``model.apet_weights`` (a ``streaming.WeightSource``) says where each one is in the
    folder's safetensors files, for every FSDP rank to read its own slices; the rest (buffers,
    a classifier head, deltas attached later) is built for real, exactly as on the CPU. A
    model that cannot stream (no local safetensors folder, names or shapes the files do not
    match) is built on the CPU as usual, without ``apet_weights``.

    Kind bert: a classifier with ``num_labels`` outputs; kinds t5 and causal (decoder-only):
    text-to-text (``num_labels`` is not used).
    """
    config, info = load_config(name)
    if info.kind == Kind.BERT and not num_labels:
        raise UserError("BERT-family models are used for classification only (SA, NLI, PI), as in the paper")
    meta = str(device) == "meta"
    stream = str(device) == "stream" and info.pretrained and info.source in ("local", "packaged")
    device = "cpu" if str(device) == "stream" else device
    where, _ = resolve(name)
    if info.source == "packaged":
        where = verified(where)
    if stream:
        model = _streamed(config, info, where, num_labels, seed)
        if model is not None:
            return model, info
    torch.manual_seed(seed)  # random presets and the classifier head are seeded
    with torch.device("meta" if meta else "cpu"):
        if info.kind == Kind.BERT:
            no_pooler = _without_pooler(config)
            if meta or not info.pretrained:
                backbone = AutoModel.from_config(config, **no_pooler)
            else:
                backbone = _pretrained(AutoModel, where, name, info, **no_pooler)
        elif info.kind == Kind.T5:
            if meta or not info.pretrained:
                backbone = _untie_head(T5ForConditionalGeneration(config), where)
            else:
                backbone = _pretrained(T5ForConditionalGeneration, where, name, info)
        else:
            if meta or not info.pretrained:
                backbone = AutoModelForCausalLM.from_config(config)
            else:
                backbone = _pretrained(AutoModelForCausalLM, where, name, info)
        model = _wrapped(backbone, info.kind, num_labels)
    if not meta:
        model.to(device)
    if not info.pretrained and not meta:
        log.warning("%s is randomly initialised (untrained): use it for tests and smoke runs only", name)
    return model, info


def _wrapped(backbone: nn.Module, kind: str, num_labels: int | None) -> nn.Module:
    if kind == Kind.BERT:
        return EncoderClassifier(backbone, num_labels)
    return Seq2SeqLM(backbone) if kind == Kind.T5 else CausalLM(backbone)


def _streamed(config: PretrainedConfig, info: ModelInfo, where: Path, num_labels: int | None,
              seed: int) -> nn.Module | None:
    """The model with its backbone's parameters on meta and their file sources, or None."""
    torch.manual_seed(seed)  # the same head as a loaded build: building on meta draws no numbers
    with torch.device("cpu"), parameters_on_meta():
        if info.kind == Kind.BERT:
            backbone = AutoModel.from_config(config, **_without_pooler(config))
        elif info.kind == Kind.T5:
            backbone = T5ForConditionalGeneration(config)
        else:
            backbone = AutoModelForCausalLM.from_config(config)
    if getattr(backbone.config, "tie_word_embeddings", False) and hasattr(backbone, "tie_weights"):
        backbone.tie_weights()
    if info.kind == Kind.T5:  # after tying: transformers 5's T5 config says tied even for t5-v1_1
        backbone = _untie_head(backbone, where)
    source = WeightSource.of(backbone, Path(where))
    if source is None:
        return None
    with torch.device("cpu"):
        model = _wrapped(backbone, info.kind, num_labels)
    if any(p.is_meta for p in model.parameters() if id(p) not in source.keys):
        return None  # a converted layer (GPT-2's Conv1D) left the file's layout: load it whole
    model.apet_weights = source
    return model


def _without_pooler(config: PretrainedConfig) -> dict:
    """The classifier pools the hidden states itself: BERT-style encoders are built without
    their pooler (DistilBERT and DeBERTa-v2 have none to leave out)."""
    cls = AutoModel._model_mapping[type(config)]
    return {"add_pooling_layer": False} if accepts(cls.__init__, "add_pooling_layer") else {}


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
    files = weight_files(Path(where))
    if files is not None:
        return "lm_head.weight" in files
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
