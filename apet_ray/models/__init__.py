"""Backbones: a Hugging Face name, a local folder, the packaged offline model, or a tiny
random-initialised preset -- wrapped for the ways the paper uses a model, one wrapper per
kind (``delta.architectures.Kind``):

- ``EncoderClassifier`` (kind bert: BERT-like encoders, MPNet, DistilBERT, DeBERTa; SA, NLI,
  PI): mean-pooled encoder states -> a linear head (``encoder``).
- ``Seq2SeqLM`` (kind t5): text-to-text; labels are words, generation is scored by the
  task's metric (``seq2seq``).
- ``CausalLM`` (kind causal, decoder-only: Llama, Qwen2, Mistral, OPT, GPT-2, BLOOM):
  text-to-text as T5 is, the target continuing the source (``causal``).

All keep the Hugging Face model as ``.backbone`` and hold an optional ``.prompt`` that
the delta engine fills for prompt tuning (soft tokens before the input embeddings).
Names resolve and models build in ``loading``; the packaged models and tiny presets are
in ``offline``.
"""

from apet_ray.models.causal import CausalLM
from apet_ray.models.encoder import EncoderClassifier
from apet_ray.models.loading import ModelInfo, build_model, check_run_tokenizer, load_config, load_tokenizer, resolve
from apet_ray.models.offline import (DEFAULT_MODEL, MINILM_NAMES, MINILM_PACKAGE, MINILM_SHA256, MPNET_NAMES,
                                     MPNET_PARTS, MPNET_SHA256, SMOLLM2_NAMES, TINY, minilm_path, mpnet_path,
                                     smollm2_path)
from apet_ray.models.seq2seq import Seq2SeqLM

__all__ = [
    "EncoderClassifier", "Seq2SeqLM", "CausalLM", "ModelInfo",
    "resolve", "load_config", "load_tokenizer", "check_run_tokenizer", "build_model",
    "DEFAULT_MODEL", "TINY", "MINILM_NAMES", "MINILM_PACKAGE", "MINILM_SHA256", "minilm_path",
    "MPNET_NAMES", "MPNET_PARTS", "MPNET_SHA256", "mpnet_path", "SMOLLM2_NAMES", "smollm2_path",
]
