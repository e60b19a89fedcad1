"""Writing and reading a results folder: one Parquet file per trial per table.

Layout (one file per finished trial per table)::

    RESULTS_DIR/trials/<trial_id>.parquet     one row: the trial's config and outcome
    RESULTS_DIR/curves/<trial_id>.parquet     one row per evaluation during training
    RESULTS_DIR/transfer/<trial_id>.parquet   one row per source->target evaluation (E5 only)

Every file is written to a temporary file in the same folder, fsynced and moved into
place with ``os.replace``, so a crash leaves either the old file or the new one, never a
torn one, and rewriting a trial replaces its rows instead of duplicating them. The
trials file is written last: its presence marks the trial as complete.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from apet_ray.atomic import make_folder, refused_as_output_error, replacing
from apet_ray.errors import UserError
from apet_ray.results.schema import (ADDED_COLUMNS, FRACTION_COLUMNS, SCHEMA_VERSION, SCHEMAS, STATUSES, TABLES, TRIAL_ID,
                                     to_table)


@dataclass
class Results:
    """All readable rows of a results folder, one DataFrame per table."""

    trials: pd.DataFrame
    curves: pd.DataFrame
    transfer: pd.DataFrame
    files: dict[str, int] = field(default_factory=dict)  # table -> files loaded


# ---------------------------------------------------------------- writing


def _atomic_write(table: pa.Table, path: Path) -> None:
    """Write ``table`` to ``path`` so that readers see the old file or the new one, whole."""
    # the temp file starts with '.' and ends in '.tmp': the reader's '*.parquet' glob skips it
    with replacing(path) as tmp:
        pq.write_table(table, tmp)


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
    Raises ``ValueError`` naming the offending row and column, and ``errors.OutputError``
    (one line: the path and the errno) when the disk refuses a write.
    """
    if not isinstance(trial_id, str) or not TRIAL_ID.match(trial_id):
        raise ValueError(
            f"trial_id {trial_id!r} must be 1-200 characters of letters, digits and ._=+- (it becomes a file name)"
        )
    if isinstance(trials_rows, Mapping):
        trials_rows = [trials_rows]
    trials_rows = list(trials_rows)
    if len(trials_rows) != 1:
        raise ValueError(f"trials: expected exactly one row per trial, got {len(trials_rows)}")
    tables = {
        "curves": to_table("curves", trial_id, curves_rows),
        "transfer": to_table("transfer", trial_id, transfer_rows),
        "trials": to_table("trials", trial_id, trials_rows),
    }
    root = Path(results_dir)
    written: dict[str, Path] = {}
    for name in SCHEMAS:  # trials last
        path = root / name / f"{trial_id}.parquet"
        make_folder(path.parent)  # a disk that refuses: atomic.OutputError, one line
        if name == "transfer" and tables[name].num_rows == 0:
            with refused_as_output_error(path):
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
    added = ADDED_COLUMNS.get(table, ())
    missing = [name for name in schema.names if name not in data.column_names and name not in added]
    if missing:
        raise ValueError(f"missing column(s) {', '.join(missing)}")
    for name in added:  # an older file: the columns it predates read as nulls
        if name not in data.column_names:
            data = data.append_column(name, pa.nulls(data.num_rows, schema.field(name).type))
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
    with no curves file, curves/transfer with no trials row), and one line per kind of
    implausible row (``_implausible``: a score outside [0, 1] -- percent where the schema
    stores fractions -- or a status the schema does not know), naming the files and the
    count; such rows are left out (a trial's curves and transfer rows with its trials row).
    Bad files are skipped; the rest still loads. A folder that does not exist raises
    ``UserError``.
    """
    root = Path(results_dir)
    if not root.is_dir():
        raise UserError(f"results folder {str(root)!r} does not exist")
    problems: list[str] = []
    newer: set[str] = set()
    frames: dict[str, pd.DataFrame] = {}
    ids: dict[str, set[str]] = {}
    files: dict[str, int] = {}
    implausible: dict[tuple[str, str], dict] = {}  # (table, what) -> rows, files, an example
    left_out: set[str] = set()  # trials whose trials row was left out: their other rows go too
    for table in TABLES:
        schema = SCHEMAS[table]
        parts: list[pa.Table] = []
        ids[table] = set()
        for path in sorted((root / table).glob("*.parquet")):
            try:
                part = _read_one(path, table)
            except Exception as exc:  # any failure is about this one file; report it, go on
                problems.append(f"{table}/{path.name}: unreadable ({_first_line(exc)})")
                continue
            part = _leave_out(part, table, path.name, left_out, implausible)
            parts.append(part)
            ids[table].add(path.stem)
            version = _version(path)
            if version and version.isdigit() and int(version) > int(SCHEMA_VERSION):
                newer.add(version)
        files[table] = len(parts)
        nullable = pa.schema([f.with_nullable(True) for f in schema])
        combined = pa.concat_tables(parts) if parts else nullable.empty_table()
        frames[table] = combined.to_pandas()
    # cross-check: curves are always written with the trial; trials are written last
    present = {t: trial_ids(root, t) for t in TABLES}
    for trial_id in sorted(ids["trials"] - present["curves"]):
        problems.append(f"curves/{trial_id}.parquet: missing (trials/{trial_id}.parquet exists)")
    for table in ("curves", "transfer"):
        for trial_id in sorted(ids[table] - present["trials"]):
            problems.append(
                f"trials/{trial_id}.parquet: missing ({table}/{trial_id}.parquet exists; "
                "trial unfinished or its row lost)"
            )
    for (table, what), seen in implausible.items():
        names = sorted(seen["files"])
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        hint = ": percent, where the schema stores fractions?" if seen["percent"] else ""
        problems.append(f"{table}: {seen['rows']} row(s) in {len(names)} file(s) ({shown}) {what}{hint} "
                        f"(e.g. {seen['example']}): left out of the report")
    if newer:
        problems.append(f"files of schema version {', '.join(sorted(newer))}, newer than this reader's "
                        f"{SCHEMA_VERSION}: read for the columns it knows (update apet-ray to see the rest)")
    results = Results(frames["trials"], frames["curves"], frames["transfer"], files)
    return results, problems


def _implausible(part: pa.Table, table: str) -> list[tuple[str, pa.Array, object, bool]]:
    """(what is wrong, a row mask, an example value, whether it looks like percent) for each kind of row the writer would have
    refused but a file holds anyway (another tool wrote it, or an older apet-ray): a score
    outside [0, 1] and, in trials, a status outside the schema's."""
    import pyarrow.compute as pc

    found = []
    for name in FRACTION_COLUMNS:
        if name not in part.column_names:
            continue
        values = part.column(name)
        bad = pc.fill_null(pc.or_(pc.less(values, 0.0), pc.greater(values, 1.0)), False)
        if pc.any(bad).as_py():
            wrong = pc.filter(values, bad)
            percent = pc.any(pc.and_(pc.greater(wrong, 1.0), pc.less_equal(wrong, 100.0))).as_py()
            found.append((f"with {name} outside [0, 1]", bad, wrong[0].as_py(), bool(percent)))
    if table == "trials":
        status = part.column("status")
        bad = pc.invert(pc.fill_null(pc.is_in(status, value_set=pa.array(STATUSES)), True))
        if pc.any(bad).as_py():
            found.append((f"with a status apet-ray does not know (known: {', '.join(STATUSES)})", bad,
                          repr(pc.filter(status, bad)[0].as_py()), False))
    return found


def _leave_out(part: pa.Table, table: str, file: str, left_out: set[str], implausible: dict) -> pa.Table:
    """``part`` without its implausible rows (recorded in ``implausible``) and without the rows
    of trials already left out; a trials row left out adds its trial to ``left_out``."""
    import pyarrow.compute as pc

    keep = pc.invert(pc.is_in(part.column("trial_id"), value_set=pa.array(sorted(left_out), pa.string())))
    for what, bad, example, percent in _implausible(part, table):
        seen = implausible.setdefault((table, what), {"rows": 0, "files": set(), "example": example, "percent": False})
        seen["rows"] += int(pc.sum(bad).as_py())
        seen["percent"] |= percent
        seen["files"].add(file)
        keep = pc.and_(keep, pc.invert(bad))
    if table == "trials":
        left_out.update(pc.filter(part.column("trial_id"), pc.invert(keep)).to_pylist())
    return part.filter(keep)


def _version(path: Path) -> str | None:
    meta = pq.read_schema(path).metadata or {}
    value = meta.get(b"apet_ray.schema_version")
    return value.decode() if value else None


def trial_ids(results_dir: str | os.PathLike[str], table: str = "trials") -> set[str]:
    """Trial ids with a file in ``table`` (readable or not): for ``trials``, the trials that
    are recorded, finished or stopped, and never run again."""
    return {p.stem for p in (Path(results_dir) / table).glob("*.parquet")}


UNREADABLE = ".unreadable"  # beside the table's files: recorded files that cannot be read, kept aside


def recorded_trials(results_dir: str | os.PathLike[str]) -> set[str]:
    """The trials a resume must not run again: those whose trials file reads. A file that
    does not (torn, corrupt, another schema) is moved aside into ``trials/.unreadable/`` --
    kept for a look, no longer counted -- so its trial runs again."""
    folder = Path(results_dir) / "trials"
    done = set()
    for path in sorted(folder.glob("*.parquet")):
        try:
            if _read_one(path, "trials").num_rows == 1:
                done.add(path.stem)
                continue
            problem = "not one row"
        except Exception as exc:  # any failure is about this one file
            problem = _first_line(exc)
        aside = folder / UNREADABLE
        aside.mkdir(exist_ok=True)
        os.replace(path, aside / path.name)
        print(f"[apet-ray] trials/{path.name} is unreadable ({problem}): moved to trials/{UNREADABLE}/, its trial "
              "runs again", flush=True)
    return done


def count_files(results_dir: str | os.PathLike[str]) -> int:
    """Number of ``*.parquet`` files in the three table folders (readable or not)."""
    root = Path(results_dir)
    return sum(len(list((root / t).glob("*.parquet"))) for t in TABLES)


