"""Reading local data files (parquet, csv, tsv, jsonl) into DataFrames.

Every failure a user can cause -- a missing or unreadable file, an unknown extension, an
empty file -- becomes a one-line ``UserError`` that names the file.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd

from apet_ray.errors import UserError

# the order in which a data directory is searched for a split file
FILE_FORMATS = ("parquet", "csv", "jsonl")
_READABLE = (".parquet", ".pq", ".csv", ".tsv", ".jsonl", ".json")


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a whole data file; columns keep their names, text stays text."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in _READABLE:
        raise UserError(f"{path}: unsupported file type {suffix or '(none)'} (use {', '.join(_READABLE)})")
    try:
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if suffix in (".csv", ".tsv"):
            # Only an empty cell is missing: the default would also read the words "NA",
            # "null" or "None" inside a text column as missing values.
            # GLUE-style .tsv files are written without quoting, so quotes are text there.
            tsv = suffix == ".tsv"
            return pd.read_csv(path, sep="\t" if tsv else ",", keep_default_na=False, na_values=[""],
                               quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL)
        # JSON lines (.json is accepted when it is JSON lines too). dtype=False: pandas would
        # otherwise turn date-looking or numeric-looking text into other types.
        return pd.read_json(path, lines=True, dtype=False)
    except pd.errors.EmptyDataError:
        raise UserError(f"{path}: the file is empty") from None
    except Exception as exc:  # pyarrow, csv and json parsers raise many unrelated types
        raise UserError(f"{path}: cannot read it as {suffix[1:]}: {one_line(exc)}") from None


def require_columns(frame: pd.DataFrame, columns: list[str] | tuple[str, ...], where: str) -> None:
    """Refuse a table that lacks any of ``columns``, naming it and the columns present."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        present = ", ".join(map(str, frame.columns)) or "none"
        noun = "column" if len(missing) == 1 else "columns"
        raise UserError(f"{where}: no {noun} {', '.join(map(repr, missing))} (columns present: {present})")


def one_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
