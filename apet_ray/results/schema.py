"""The results tables' schema: columns, closed vocabularies and the checks every row
passes before it is written (docs/schema.md describes each column).

Scores (``final_score``, ``best_score``, ``random_guess``, ``ft_score``, curve and transfer
scores) are fractions in [0, 1] -- accuracy 0.91, not 91 -- and checked on write.
"""

from __future__ import annotations

import json
import math
import numbers
import re
from collections.abc import Callable, Iterable, Mapping

import pandas as pd
import pyarrow as pa

from apet_ray.delta import DISTRIBUTIONS as SPEC_DISTRIBUTIONS
from apet_ray.delta import OPS, matchable_methods, method_names
from apet_ray.delta.peft_names import is_peft
from apet_ray.delta.architectures import KINDS

SCHEMA_VERSION = "3"  # 2: trials gained family, majority, peak_memory_mb, tokens_per_s, checkpoint_bytes;
# 3: provenance -- versions (JSON), device, precision, workers, strategy

_STR, _INT, _FLOAT = pa.string(), pa.int64(), pa.float64()


def _f(name: str, type_: pa.DataType, nullable: bool = False) -> pa.Field:
    return pa.field(name, type_, nullable=nullable)


TRIALS_SCHEMA = pa.schema(
    [
        _f("trial_id", _STR),
        _f("study", _STR),
        _f("model", _STR),
        _f("family", _STR, True),  # the model's kind: bert | t5 | causal (null in schema-1 files)
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
        _f("majority", _FLOAT, True),  # the eval split's majority-class rate (classification)
        _f("final_score", _FLOAT),
        _f("best_score", _FLOAT),
        _f("ft_score", _FLOAT, True),
        _f("steps_to_converge", _INT, True),
        _f("steps_run", _INT),
        _f("wall_time_s", _FLOAT),
        _f("tokens_per_s", _FLOAT, True),
        _f("peak_memory_mb", _FLOAT, True),
        _f("checkpoint_bytes", _INT, True),
        _f("status", _STR),
        _f("code_version", _STR),
        _f("hparams", _STR),
        _f("versions", _STR, True),  # JSON: apet-ray, commit, python, torch, transformers, ray, peft, ... (schema 3)
        _f("device", _STR, True),  # GPU name or CPU model of rank 0
        _f("precision", _STR, True),  # fp32 | bf16, as it ran
        _f("workers", _INT, True),  # Ray Train workers (0: the trial's own process)
        _f("strategy", _STR, True),  # none | ddp | fsdp
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

# Columns added after schema 1: a file without them still reads (as nulls).
ADDED_COLUMNS = {"trials": ("family", "majority", "tokens_per_s", "peak_memory_mb", "checkpoint_bytes",
                              "versions", "device", "precision", "workers", "strategy")}

# closed vocabularies; a typo here would silently drop a trial from every figure. Methods
# come from the registry when a row is checked, so a newly registered method is accepted.
DISTRIBUTIONS = tuple(d for d in SPEC_DISTRIBUTIONS if d != "full")  # PET rows leave it empty
METRICS = ("accuracy", "f1", "rougeL")
STATUSES = ("finished", "early_stopped", "decided", "search", "error")
_CHOICES: dict[str, Callable[[], tuple[str, ...]]] = {
    "method": method_names,
    "op": lambda: OPS,
    "distribution": lambda: DISTRIBUTIONS,
    "match": matchable_methods,
    "metric": lambda: METRICS,
    "status": lambda: STATUSES,
    "family": lambda: KINDS,  # the column keeps its schema-2 name; it holds the kind
}
# scores are fractions; a 0-100 value is the most likely silent mistake, so refuse it
FRACTION_COLUMNS = ("random_guess", "majority", "final_score", "best_score", "ft_score", "score", "in_task_score")

TRIAL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+-]{0,199}$")


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
        choices = _CHOICES[f.name]() if f.name in _CHOICES else None
        peft_arm = f.name in ("method", "match") and is_peft(value)  # peft:<type>, any peft method
        if choices and value not in choices and not peft_arm:
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
    if f.name in FRACTION_COLUMNS and not math.isnan(value) and not 0.0 <= value <= 1.0:
        raise ValueError(f"{where}: {value} is outside [0, 1] (scores are fractions, not percent)")
    return value


def to_table(table: str, trial_id: str, rows: Iterable[Mapping[str, object]]) -> pa.Table:
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


