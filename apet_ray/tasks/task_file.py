"""Task files: a small YAML (or JSON) that describes a task of your own, usable wherever a
task name is (``--tasks sst2,my_task.yaml`` in every study, ``apet-ray train --task``)::

    name: support_tickets          # the task's name in tables and figures (default: the file's stem)
    train: tickets/train.csv       # csv, tsv, parquet or jsonl; paths relative to this file
    eval: tickets/dev.csv          # optional: else 10 % of train, the same rows every time
    text_columns: [subject, body]  # one or two input columns
    label_column: team             # classification (any number of classes) ...
    # target_column: reply         # ... or generation
    type: classification           # sa, nli, pi, qa, sum, classification or generation
    metric: accuracy               # optional: accuracy, f1 or rougeL (default: the type's)
    label_words: [billing, tech, sales]  # optional: what T5 emits, one per label in sorted order
    max_input_len: 128             # optional, tokens
    max_target_len: 64             # optional, generation tokens

Everything is checked when the file is read (``task_from_file``), before any Ray job.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from apet_ray.config_files import read_mapping
from apet_ray.errors import UserError
from apet_ray.paths import check_input

SUFFIXES = (".yaml", ".yml", ".json")
_TYPES = {"classification": None, "generation": "sum"}  # None: sa for one text column, nli for two
_KEYS = ("name", "train", "eval", "text_columns", "label_column", "target_column", "type", "metric",
         "label_words", "max_input_len", "max_target_len")


def is_task_file(name: str) -> bool:
    return Path(name).suffix.lower() in SUFFIXES


def read_task_file(path: str | Path) -> tuple[str, dict]:
    """(the task's name, the keyword arguments of ``tasks.custom_task``) of a task file."""
    check_input(path, "task file", folder=False)  # empty, a symlink loop, unreadable: before resolve() trips on it
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise UserError(f"task file not found: {path}")
    data = _parse(path)
    unknown = sorted(set(data) - set(_KEYS))
    if unknown:
        raise UserError(f"{path}: unknown key(s) {', '.join(unknown)} (known: {', '.join(_KEYS)})")
    for key in ("train", "text_columns"):
        if key not in data:
            raise UserError(f"{path}: needs {key!r}")
    columns = data["text_columns"]
    if isinstance(columns, str):
        columns = [columns]
    if not isinstance(columns, list) or not columns or not all(isinstance(c, str) and c for c in columns):
        raise UserError(f"{path}: text_columns must be a list of column names, got {data['text_columns']!r}")
    task_type = str(data.get("type", "")).lower() or None
    if task_type in _TYPES:
        task_type = _TYPES[task_type]
    kwargs = dict(
        path=str(_relative_to(path, data["train"], "train")),
        eval_path=str(_relative_to(path, data["eval"], "eval")) if data.get("eval") else None,
        text_columns=tuple(columns), label_column=data.get("label_column"), target_column=data.get("target_column"),
        task_type=task_type, metric=data.get("metric"), label_words=_words(path, data.get("label_words")),
        max_input_len=_length(path, data, "max_input_len"), max_gen_len=_length(path, data, "max_target_len"),
    )
    name = str(data.get("name") or path.name.split(".")[0])
    return name, kwargs


def with_overrides(task, metric: str | None, label_words: tuple[str, ...] | None, max_input_len: int | None,
                   max_gen_len: int | None):
    """``task`` with a task file's optional settings applied (and checked by ``Task`` itself)."""
    changes = {}
    if metric:
        changes["metric"] = metric
    if label_words:
        if len(label_words) != task.num_labels:
            raise UserError(f"task {task.name!r}: {len(label_words)} label words for {task.num_labels} labels "
                            f"({', '.join(task.label_values)})")
        changes["label_words"] = tuple(label_words)
    if max_input_len:
        changes["max_input_len"] = max_input_len
    if max_gen_len:
        changes["max_gen_len"] = max_gen_len
    return replace(task, **changes) if changes else task


def _parse(path: Path) -> dict:
    # bounded: size, text, expanded anchors, duplicate keys
    data = read_mapping(path, "task file", f"a mapping of keys ({', '.join(_KEYS)})")
    if not data:
        raise UserError(f"{path}: a task file is a mapping of keys ({', '.join(_KEYS)})")
    return data


def _relative_to(task_file: Path, value: object, key: str) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{task_file}: {key!r} must be a file path")
    path = task_file.parent / Path(value).expanduser()
    check_input(path, f"{task_file}: {key}", folder=False)
    return path.resolve()


def _words(task_file: Path, value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(w, (str, int)) for w in value):
        raise UserError(f"{task_file}: label_words must be a list of words, got {value!r}")
    return tuple(str(w) for w in value)


def _length(task_file: Path, data: dict, key: str) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 100_000:
        raise UserError(f"{task_file}: {key} must be a whole number of tokens from 1 to 100000, got {value!r}")
    return value
