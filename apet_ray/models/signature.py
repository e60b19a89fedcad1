"""What a model class's methods accept: model classes differ (DistilBERT has no token
types, BLOOM no position ids, DeBERTa-v2 no pooler to leave out)."""

from __future__ import annotations

import inspect


def accepts(function, argument: str) -> bool:
    """Whether ``function`` takes ``argument`` by name."""
    return argument in inspect.signature(function).parameters
