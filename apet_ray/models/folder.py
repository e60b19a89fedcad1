"""A local model folder checked for what it claims before anything trains on it.

A folder is a model when its ``config.json`` parses into sizes a model can have and every
weight file is whole (its header describes exactly the bytes that follow) and holds about
the parameters the config implies; a run also needs a tokenizer beside it that covers the
model's vocabulary (without one, it would train on a handful of ``[UNK]`` tokens and exit 0). Each
failure is one line naming the file; nothing is unpickled (``*.bin`` weights are not read).
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path

from apet_ray.errors import UserError

# sizes past these are not a model that fits anywhere: refused before building even on meta
SIZE_LIMITS = {"num_hidden_layers": 1_000, "num_layers": 1_000, "n_layer": 1_000, "num_decoder_layers": 1_000,
               "hidden_size": 100_000, "d_model": 100_000, "n_embd": 100_000, "intermediate_size": 1_000_000,
               "d_ff": 1_000_000, "vocab_size": 10_000_000, "num_attention_heads": 10_000, "num_heads": 10_000}
MAX_CONFIG_BYTES = 1_000_000
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "spiece.model", "vocab.json", "sentencepiece.bpe.model",
                   "tokenizer.model")
VOCAB_COVERED = 0.9  # the tokenizer knows at least this share of the embedding rows
WEIGHTS_COVERED = 0.9  # the weight files hold at least this share of the config's parameters


def check_model_folder(path: Path) -> None:
    """Refuse, in one line, a folder whose config or weight files are not what they claim
    (a folder of only ``config.json`` is fine: it counts parameters). Cached per folder state."""
    _check(path, _state(path))


def check_tokenizer(path: Path) -> None:
    """Refuse a folder a run cannot tokenise for: no tokenizer, or one that knows fewer than
    ``VOCAB_COVERED`` of the model's embedding rows (another model's)."""
    _check_tokenizer(path, _state(path))


def _state(path: Path) -> tuple:
    files = sorted(p for p in path.iterdir() if p.is_file())
    return tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files)


@lru_cache(maxsize=32)
def _check(path: Path, _state: tuple) -> None:
    _check_weights(path, _config(path, _config_dict(path)))


@lru_cache(maxsize=32)
def _check_tokenizer(path: Path, _state: tuple) -> None:
    vocab = getattr(_config(path, _config_dict(path)), "vocab_size", None)
    known = _tokenizer_size(path)
    if vocab and known < VOCAB_COVERED * vocab:
        raise UserError(f"{path}: its tokenizer knows {known:,} tokens of the model's {vocab:,}: not this "
                        "model's tokenizer")


def _config_dict(path: Path) -> dict:
    file = path / "config.json"
    if file.stat().st_size > MAX_CONFIG_BYTES:
        raise UserError(f"{file}: {file.stat().st_size:,} bytes is not a model config")
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise UserError(f"{file} is not valid JSON ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    if not isinstance(raw, dict) or "model_type" not in raw:
        raise UserError(f"{file} is not a model config (no model_type)")
    for key, limit in SIZE_LIMITS.items():
        value = raw.get(key)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= limit:
            raise UserError(f"{file}: {key} = {value!r} is not a size a model can have (a whole number from 1 to {limit:,})")
    return raw


def _config(path: Path, raw: dict):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path)
    except Exception as exc:  # transformers raises ValueError, KeyError, TypeError... for a bad config
        raise UserError(f"{path / 'config.json'}: transformers cannot read it as a {raw.get('model_type')!r} config "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None


def _tokenizer_size(path: Path) -> int:
    from transformers import AutoTokenizer

    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise UserError(f"{path} has no tokenizer ({', '.join(TOKENIZER_FILES)}): put the model's tokenizer files "
                        "beside config.json (tokenizer.save_pretrained)")
    try:
        return len(AutoTokenizer.from_pretrained(path))
    except Exception as exc:  # a broken tokenizer file raises whatever its parser raises
        raise UserError(f"{path}: its tokenizer does not load ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''})") from None


def _check_weights(path: Path, config) -> None:
    from safetensors import safe_open

    files = sorted(path.glob("*.safetensors"))
    if not files:
        return  # no safetensors weights: the model builds from its config (untrained) or from *.bin
    held = 0
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as f:  # the header must describe the bytes exactly
                held += sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
        except Exception as exc:  # truncated, a header that lies, not safetensors: several types
            raise UserError(f"{file}: not a whole safetensors file ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else 'unreadable'})") from None
    expected = _parameters(config)
    if expected and held < WEIGHTS_COVERED * expected:
        raise UserError(f"{path}: its weight files hold {held:,} values, the config describes {expected:,} "
                        "parameters: weights missing or of another model")


def _parameters(config) -> int:
    """The model's parameter count from its config, built on the meta device (no memory)."""
    import torch
    from transformers import AutoModel

    try:
        with torch.device("meta"):
            model = AutoModel.from_config(config)
    except Exception:  # a family AutoModel cannot build here: the count check is skipped
        return 0
    return sum(p.numel() for p in model.parameters())
