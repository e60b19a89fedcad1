"""The results tables: their Parquet schema, an atomic writer and a tolerant reader.

Layout of a results folder (one file per finished trial per table)::

    RESULTS_DIR/trials/<trial_id>.parquet     one row: the trial's config and outcome
    RESULTS_DIR/curves/<trial_id>.parquet     one row per evaluation during training
    RESULTS_DIR/transfer/<trial_id>.parquet   one row per source->target evaluation (E5 only)

Every file is written to a temporary file in the same folder, fsynced and moved into
place with ``os.replace``, so a crash leaves either the old file or the new one, never a
torn one, and rewriting a trial replaces its rows instead of duplicating them. The
trials file is written last: its presence marks the trial as complete.

Scores (``final_score``, ``best_score``, ``random_guess``, ``ft_score``, curve and transfer
scores) are fractions in [0, 1] -- accuracy 0.91, not 91 -- and checked on write.
The column-by-column description lives in docs/schema.md.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from apet_ray.delta import spec
from apet_ray.errors import UserError

SCHEMA_VERSION = "1"

_STR, _INT, _FLOAT = pa.string(), pa.int64(), pa.float64()


def _f(name: str, type_: pa.DataType, nullable: bool = False) -> pa.Field:
    return pa.field(name, type_, nullable=nullable)


TRIALS_SCHEMA = pa.schema(
    [
        _f("trial_id", _STR),
        _f("study", _STR),
        _f("model", _STR),
        _f("total_params", _INT),
        _f("task", _STR),
        _f("task_type", _STR),
        _f("method", _STR),
        _f("op", _STR, True),
        _f("distribution", _STR, True),
        _f("match", _STR, True),
        _f("requested_params", _INT, True),
        _f("trainable_params", _INT),
        _f("delta_params", _INT),
        _f("ratio", _FLOAT),
        _f("seed", _INT),
        _f("lr", _FLOAT),
        _f("batch_size", _INT),
        _f("max_steps", _INT),
        _f("metric", _STR),
        _f("random_guess", _FLOAT),
        _f("final_score", _FLOAT),
        _f("best_score", _FLOAT),
        _f("ft_score", _FLOAT, True),
        _f("steps_to_converge", _INT, True),
        _f("steps_run", _INT),
        _f("wall_time_s", _FLOAT),
        _f("status", _STR),
        _f("code_version", _STR),
        _f("hparams", _STR),
    ]
)

CURVES_SCHEMA = pa.schema(
    [
        _f("trial_id", _STR),
        _f("study", _STR),
        _f("model", _STR),
        _f("task", _STR),
        _f("method", _STR),
        _f("op", _STR, True),
        _f("distribution", _STR, True),
        _f("seed", _INT),
        _f("delta_params", _INT),
        _f("step", _INT),
        _f("score", _FLOAT),
        _f("loss", _FLOAT),
        _f("tokens_per_s", _FLOAT),
        _f("elapsed_s", _FLOAT),
    ]
)

TRANSFER_SCHEMA = pa.schema(
    [
        _f("trial_id", _STR),
        _f("study", _STR),
        _f("model", _STR),
        _f("method", _STR),
        _f("op", _STR, True),
        _f("distribution", _STR, True),
        _f("seed", _INT),
        _f("source_task", _STR),
        _f("target_task", _STR),
        _f("score", _FLOAT),
        _f("in_task_score", _FLOAT, True),
        _f("relative", _FLOAT, True),
    ]
)

# table name -> schema, in the order files are written (trials last: it marks completion)
SCHEMAS: dict[str, pa.Schema] = {
    "curves": CURVES_SCHEMA,
    "transfer": TRANSFER_SCHEMA,
    "trials": TRIALS_SCHEMA,
}
TABLES = ("trials", "curves", "transfer")

# closed vocabularies; a typo here would silently drop a trial from every figure
METHODS = spec.METHODS
PET_METHODS = tuple(m for m in spec.PET_METHODS if m != "ft")  # what an APET trial can match
OPS = spec.OPS
DISTRIBUTIONS = tuple(d for d in spec.DISTRIBUTIONS if d != "full")  # PET rows leave it empty
METRICS = ("accuracy", "f1", "rougeL")
STATUSES = ("finished", "early_stopped", "error")
_CHOICES: dict[str, tuple[str, ...]] = {
    "method": METHODS,
    "op": OPS,
    "distribution": DISTRIBUTIONS,
    "match": PET_METHODS,
    "metric": METRICS,
    "status": STATUSES,
}
# scores are fractions; a 0-100 value is the most likely silent mistake, so refuse it
_FRACTION_COLUMNS = ("random_guess", "final_score", "best_score", "ft_score", "score", "in_task_score")

_TRIAL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+-]{0,199}$")


@dataclass
class Results:
    """All readable rows of a results folder, one DataFrame per table."""

    trials: pd.DataFrame
    curves: pd.DataFrame
    transfer: pd.DataFrame
    files: dict[str, int] = field(default_factory=dict)  # table -> files loaded


# ---------------------------------------------------------------- validation


def _check_value(table: str, i: int, f: pa.Field, value: object) -> object:
    where = f"{table} row {i}, column {f.name!r}"
    missing = value is None or value is pd.NA or value is pd.NaT
    if missing or (isinstance(value, float) and math.isnan(value) and not pa.types.is_floating(f.type)):
        if not f.nullable:
            raise ValueError(f"{where}: null in a non-nullable column")
        return None
    if pa.types.is_string(f.type):
        if not isinstance(value, str):
            raise ValueError(f"{where}: expected str, got {type(value).__name__}")
        if f.name == "hparams":
            try:
                json.loads(value)
            except ValueError as exc:
                raise ValueError(f"{where}: not valid JSON ({exc})") from None
        choices = _CHOICES.get(f.name)
        if choices and value not in choices:
            raise ValueError(f"{where}: {value!r} is not one of {', '.join(choices)}")
        return value
    if isinstance(value, bool):  # bool is an int subclass; never what a count means
        raise ValueError(f"{where}: expected a number, got bool")
    if pa.types.is_integer(f.type):
        if isinstance(value, numbers.Integral):
            return int(value)
        if isinstance(value, numbers.Real) and float(value).is_integer():
            return int(value)
        raise ValueError(f"{where}: expected an integer, got {value!r}")
    if not isinstance(value, numbers.Real):
        raise ValueError(f"{where}: expected a number, got {type(value).__name__}")
    value = float(value)
    if f.name in _FRACTION_COLUMNS and not math.isnan(value) and not 0.0 <= value <= 1.0:
        raise ValueError(f"{where}: {value} is outside [0, 1] (scores are fractions, not percent)")
    return value


def _to_table(table: str, trial_id: str, rows: Iterable[Mapping[str, object]]) -> pa.Table:
    """Validate ``rows`` against the table's schema and build an Arrow table.

    Non-nullable columns must be present; nullable ones may be omitted (stored as null).
    Unknown keys are refused so that a misspelt column never turns into a silent null.
    ``trial_id`` is filled in when a row omits it and must match when given.
    """
    schema = SCHEMAS[table]
    names = set(schema.names)
    columns: dict[str, list[object]] = {name: [] for name in schema.names}
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ValueError(f"{table} row {i}: expected a mapping, got {type(row).__name__}")
        unknown = sorted(set(row) - names)
        if unknown:
            raise ValueError(f"{table} row {i}: unknown column(s) {', '.join(unknown)}")
        row = dict(row)
        row.setdefault("trial_id", trial_id)
        if row["trial_id"] != trial_id:
            raise ValueError(f"{table} row {i}: trial_id {row['trial_id']!r} != {trial_id!r}")
        for f in schema:
            if f.name not in row:
                if not f.nullable:
                    raise ValueError(f"{table} row {i}: missing column {f.name!r}")
                row[f.name] = None
            columns[f.name].append(_check_value(table, i, f, row[f.name]))
    if table == "trials":
        for i, (delta, total, ratio) in enumerate(
            zip(columns["delta_params"], columns["total_params"], columns["ratio"])
        ):
            if total and not math.isclose(ratio, delta / total, rel_tol=1e-6, abs_tol=1e-12):
                raise ValueError(f"trials row {i}: ratio {ratio} != delta_params/total_params = {delta / total}")
    arrays = [pa.array(columns[f.name], type=f.type) for f in schema]
    return pa.Table.from_arrays(arrays, schema=_with_metadata(schema, table))


def _with_metadata(schema: pa.Schema, table: str) -> pa.Schema:
    return schema.with_metadata({"apet_ray.table": table, "apet_ray.schema_version": SCHEMA_VERSION})


# ---------------------------------------------------------------- writing


def _atomic_write(table: pa.Table, path: Path) -> None:
    """Write ``table`` to ``path`` so that readers see the old file or the new one, whole."""
    # the temp file starts with '.' and ends in '.tmp': the reader's '*.parquet' glob skips it
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            pq.write_table(table, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    # makes the rename itself durable; not possible on every platform, and harmless to skip
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_trial(
    results_dir: str | os.PathLike[str],
    trial_id: str,
    trials_rows: Mapping[str, object] | Sequence[Mapping[str, object]],
    curves_rows: Iterable[Mapping[str, object]],
    transfer_rows: Iterable[Mapping[str, object]] = (),
) -> dict[str, Path]:
    """Validate and atomically write one finished trial's rows; return the files written.

    ``trials_rows`` is the trial's single row (a mapping, or a sequence holding one).
    ``curves`` is always written, even with no evaluations, so that a missing curves file
    means something went wrong. ``transfer`` is written only when there are rows; an older
    transfer file of the same trial is removed otherwise, so a rewrite fully replaces it.
    All rows are validated before anything is written: a bad row leaves the folder as it was.
    Raises ``ValueError`` naming the offending row and column.
    """
    if not isinstance(trial_id, str) or not _TRIAL_ID.match(trial_id):
        raise ValueError(
            f"trial_id {trial_id!r} must be 1-200 characters of letters, digits and ._=+- (it becomes a file name)"
        )
    if isinstance(trials_rows, Mapping):
        trials_rows = [trials_rows]
    trials_rows = list(trials_rows)
    if len(trials_rows) != 1:
        raise ValueError(f"trials: expected exactly one row per trial, got {len(trials_rows)}")
    tables = {
        "curves": _to_table("curves", trial_id, curves_rows),
        "transfer": _to_table("transfer", trial_id, transfer_rows),
        "trials": _to_table("trials", trial_id, trials_rows),
    }
    root = Path(results_dir)
    written: dict[str, Path] = {}
    for name in SCHEMAS:  # trials last
        path = root / name / f"{trial_id}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        if name == "transfer" and tables[name].num_rows == 0:
            path.unlink(missing_ok=True)
            continue
        _atomic_write(tables[name], path)
        written[name] = path
    return written


# ---------------------------------------------------------------- reading


def _read_one(path: Path, table: str) -> pa.Table:
    """Read one file and conform it to the schema; raise ValueError on anything off."""
    schema = SCHEMAS[table]
    data = pq.read_table(path)
    missing = [name for name in schema.names if name not in data.column_names]
    if missing:
        raise ValueError(f"missing column(s) {', '.join(missing)}")
    # extra columns (a newer writer) are dropped; types are cast so files concatenate
    data = data.select(schema.names)
    return data.cast(pa.schema([f.with_nullable(True) for f in schema]))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def read_results(results_dir: str | os.PathLike[str]) -> tuple[Results, list[str]]:
    """Load every readable file of a results folder.

    Returns the tables as pandas DataFrames and a list of problems, one line per file that
    could not be used (unreadable, corrupt, missing columns) or that is missing (a trial
    with no curves file, curves/transfer with no trials row). Bad files are skipped; the
    rest still loads. A folder that does not exist raises ``UserError``.
    """
    root = Path(results_dir)
    if not root.is_dir():
        raise UserError(f"results folder {str(root)!r} does not exist")
    problems: list[str] = []
    frames: dict[str, pd.DataFrame] = {}
    ids: dict[str, set[str]] = {}
    files: dict[str, int] = {}
    for table in TABLES:
        schema = SCHEMAS[table]
        parts: list[pa.Table] = []
        ids[table] = set()
        for path in sorted((root / table).glob("*.parquet")):
            try:
                parts.append(_read_one(path, table))
            except Exception as exc:  # any failure is about this one file; report it, go on
                problems.append(f"{table}/{path.name}: unreadable ({_first_line(exc)})")
                continue
            ids[table].add(path.stem)
        files[table] = len(parts)
        nullable = pa.schema([f.with_nullable(True) for f in schema])
        combined = pa.concat_tables(parts) if parts else nullable.empty_table()
        frames[table] = combined.to_pandas()
    # cross-check: curves are always written with the trial; trials are written last
    present = {t: {p.stem for p in (root / t).glob("*.parquet")} for t in TABLES}
    for trial_id in sorted(ids["trials"] - present["curves"]):
        problems.append(f"curves/{trial_id}.parquet: missing (trials/{trial_id}.parquet exists)")
    for table in ("curves", "transfer"):
        for trial_id in sorted(ids[table] - present["trials"]):
            problems.append(
                f"trials/{trial_id}.parquet: missing ({table}/{trial_id}.parquet exists; "
                "trial unfinished or its row lost)"
            )
    results = Results(frames["trials"], frames["curves"], frames["transfer"], files)
    return results, problems


def count_files(results_dir: str | os.PathLike[str]) -> int:
    """Number of ``*.parquet`` files in the three table folders (readable or not)."""
    root = Path(results_dir)
    return sum(len(list((root / t).glob("*.parquet"))) for t in TABLES)


def rows_from_run(summary: Mapping, config: Mapping, study: str, trial_id: str, status: str,
                  code_version: str) -> tuple[dict, list[dict]]:
    """The trials row and curves rows of one training run.

    ``summary`` is what ``apet_ray.train.train`` returns; ``config`` its config as a dict
    (``train.config_to_dict``). PET methods at the paper's setting leave op, distribution
    and requested_params empty: they are described by the method alone.
    """
    spec = json.loads(config["spec"])
    is_apet = spec["method"] == "apet"
    history = summary["history"]
    common = {
        "study": study,
        "model": summary["model"],
        "method": spec["method"],
        "op": spec["op"] if is_apet else None,
        "distribution": spec["distribution"] if is_apet else None,
        "seed": int(config["seed"]),
    }
    trial = {
        **common,
        "trial_id": trial_id,
        "total_params": int(summary["total_params"]),
        "task": summary["task"],
        "task_type": summary["task_type"].upper(),  # SA, NLI, PI, QA, SUM as in the paper and the report
        "match": spec["match"] if is_apet else None,
        "requested_params": summary["requested_params"] if is_apet else None,
        "trainable_params": int(summary["trainable_params"]),
        "delta_params": int(summary["delta_params"]),
        "ratio": summary["delta_params"] / summary["total_params"],
        "lr": float(summary["lr"]),
        "batch_size": int(config["batch_size"]),
        "max_steps": int(config["max_steps"]),
        "metric": summary["metric"],
        "random_guess": float(summary["random_guess"]),
        "final_score": float(summary["final_score"]),
        "best_score": float(summary["best_score"]),
        "steps_to_converge": summary["steps_to_converge"],
        "steps_run": int(summary["steps_run"]),
        "wall_time_s": float(summary["wall_time_s"]),
        "status": status,
        "code_version": code_version,
        "hparams": json.dumps(dict(config), sort_keys=True, default=str),
    }
    curves = [
        {**{k: v for k, v in common.items()}, "task": summary["task"], "delta_params": int(summary["delta_params"]),
         "step": int(h["step"]), "score": float(h["score"]), "loss": float(h["loss"]),
         "tokens_per_s": float(h["tokens_per_s"]), "elapsed_s": float(h["elapsed_s"])}
        for h in history
    ]
    return trial, curves
