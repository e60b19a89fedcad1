"""Bring your own task: a local csv / tsv / parquet / jsonl file with named columns.

    task = custom_task("reviews.csv", text_columns=("review",), label_column="stars")
    train = load_examples(task, "train")     # 90 % of the rows
    held_out = load_examples(task, "eval")   # the other 10 %, the same ones every time

Classification labels may be ints or strings: their sorted distinct values become the ids
0..n-1, and their string forms the words T5 is taught to emit. Naming ``target_column``
instead makes it a generation task (summarisation by default, or ``task_type="qa"``).
"""

from __future__ import annotations

import math
import random
import re
from pathlib import Path

from apet_ray.errors import UserError
from apet_ray.tasks.files import read_table, require_columns
from apet_ray.tasks.registry import CLASSIFICATION_TYPES, TASK_TYPES, Task
from apet_ray.tasks.task_file import with_overrides

# A label column with more distinct values than this is almost surely a text or id column
# named by mistake; a generation task (target_column) is the way to learn free text.
MAX_CUSTOM_LABELS = 100

# Label words that carry the unified binary meaning used for zero-shot transfer (E5), so a
# custom task labelled e.g. negative/positive or no/yes joins the transfer matrix.
_UNIFIED_WORDS = {
    "negative": 0, "positive": 1, "neg": 0, "pos": 1,
    "not_entailment": 0, "entailment": 1, "contradiction": 0,
    "not_equivalent": 0, "equivalent": 1, "not_duplicate": 0, "duplicate": 1,
    "false": 0, "true": 1, "no": 0, "yes": 1,
}


def label_key(value: object) -> str | None:
    """The string form of a raw label value; None for a missing one.

    Integral floats print as ints: a csv int column with one empty cell is read as
    float (4.0), and must still match the label "4".
    """
    if value is None:
        return None
    if isinstance(value, float):
        if math.isnan(value):
            return None
        return str(int(value)) if value.is_integer() else repr(value)
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy scalars
        return label_key(value.item())
    text = str(value).strip()
    return text or None


def holdout_indices(n: int, eval_fraction: float = 0.1, seed: int = 0) -> tuple[list[int], list[int]]:
    """Split row positions 0..n-1 into (train, eval), each in file order.

    A shuffle seeded with ``seed`` picks round(n * eval_fraction) rows (at least one) for
    eval: the same file and seed always give the same split.
    """
    if not 0.0 < eval_fraction < 1.0:
        raise UserError(f"eval fraction must be between 0 and 1, got {eval_fraction}")
    if n < 2:
        raise UserError(f"cannot split {n} row(s) into train and eval: give a larger file or a separate eval file")
    n_eval = min(n - 1, max(1, round(n * eval_fraction)))
    order = list(range(n))
    random.Random(seed).shuffle(order)
    held_out = set(order[:n_eval])
    return [i for i in range(n) if i not in held_out], sorted(held_out)


def custom_task(
    path: str | Path,
    text_columns: str | tuple[str, ...] | list[str] = ("text",),
    label_column: str | None = None,
    target_column: str | None = None,
    task_type: str | None = None,
    name: str | None = None,
    eval_path: str | Path | None = None,
    eval_fraction: float = 0.1,
    split_seed: int = 0,
    metric: str | None = None,
    label_words: tuple[str, ...] | None = None,
    max_input_len: int | None = None,
    max_gen_len: int | None = None,
) -> Task:
    """A ``Task`` over the user's own file(s), usable everywhere a built-in task is.

    Exactly one of ``label_column`` (classification) and ``target_column`` (generation)
    must be given. Without ``eval_path``, ``eval_fraction`` of the rows of ``path`` are
    held out for evaluation (see ``holdout_indices``). The type defaults to ``sa`` for one
    text column, ``nli`` for two, and ``sum`` for generation; it sets the metric and the
    maximum lengths (paper.md §4-5) unless ``metric``, ``max_input_len`` or ``max_gen_len`` say
    otherwise; ``label_words`` replace the label values as the words T5 emits (a task file's
    settings, see ``tasks.task_file``).
    """
    if isinstance(text_columns, str):
        text_columns = (text_columns,)
    text_columns = tuple(text_columns)
    if not text_columns:
        raise UserError("a custom task needs at least one text column")
    if (label_column is None) == (target_column is None):
        raise UserError("a custom task needs either a label column (classification) "
                        "or a target column (generation), not both")
    if task_type is None:
        if target_column is not None:
            task_type = "sum"
        else:
            task_type = "sa" if len(text_columns) == 1 else "nli"
    task_type = task_type.lower()
    if task_type not in TASK_TYPES:
        raise UserError(f"unknown task type {task_type!r} (known: {', '.join(TASK_TYPES)})")
    if (task_type in CLASSIFICATION_TYPES) != (label_column is not None):
        needs = "a label column" if task_type in CLASSIFICATION_TYPES else "a target column"
        raise UserError(f"task type {task_type!r} needs {needs}")

    files = [Path(path)] + ([Path(eval_path)] if eval_path is not None else [])
    wanted = list(text_columns) + [label_column or target_column]
    frames = []
    for file in files:
        frame = read_table(file)
        require_columns(frame, wanted, str(file))
        if frame.empty:
            raise UserError(f"{file}: the file has no rows")
        frames.append(frame)
    if eval_path is None:
        holdout_indices(len(frames[0]), eval_fraction, split_seed)  # refuse a bad fraction now

    task_name = name or _name_from_path(files[0])
    common = dict(
        name=task_name, type=task_type, text_columns=text_columns, label_column=label_column,
        target_column=target_column, train_file=str(files[0]),
        eval_file=str(files[1]) if eval_path is not None else None,
        eval_fraction=eval_fraction, split_seed=split_seed,
    )
    if label_column is None:
        return with_overrides(Task(**common), metric, None, max_input_len, max_gen_len)
    values = _distinct_labels([f[label_column].tolist() for f in frames], label_column, files)
    unified = tuple(_UNIFIED_WORDS.get(v.lower()) for v in values)
    if len(values) != 2 or None in unified or len(set(unified)) != 2:
        unified = (None,) * len(values)  # only a clean binary pair carries the unified meaning
    task = Task(**common, label_words=values, label_values=values, unified_label=unified)
    return with_overrides(task, metric, label_words, max_input_len, max_gen_len)


def _distinct_labels(columns: list[list[object]], label_column: str, files: list[Path]) -> tuple[str, ...]:
    keys = {label_key(v) for column in columns for v in column}
    keys.discard(None)
    where = " + ".join(map(str, files))
    if len(keys) < 2:
        raise UserError(f"{where}: label column {label_column!r} needs at least two distinct values, "
                        f"found {sorted(keys)}")
    if len(keys) > MAX_CUSTOM_LABELS:
        raise UserError(
            f"{where}: label column {label_column!r} has {len(keys)} distinct values; "
            f"for free text name it as the target column instead"
        )
    # numbers sort as numbers (stars 1..10, not 1, 10, 2); anything else as text
    if all(re.fullmatch(r"-?\d+", k) for k in keys):
        return tuple(sorted(keys, key=int))
    return tuple(sorted(keys))


def _name_from_path(path: Path) -> str:
    # the name prefixes every T5 input ("reviews review: ..."), so keep it a plain word
    stem = path.name.split(".")[0]
    return re.sub(r"[^a-z0-9_]+", "_", stem.lower()).strip("_") or "custom"
