"""Reading local data files (parquet, csv, tsv, jsonl) into DataFrames.

Every failure a user can cause -- a missing or unreadable file, an unknown extension, an
empty file -- becomes a one-line ``UserError`` that names the file.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pandas as pd

from apet_ray.errors import UserError
from apet_ray.paths import check_input

# the order in which a data directory is searched for a split file
FILE_FORMATS = ("parquet", "csv", "jsonl")
_READABLE = (".parquet", ".pq", ".csv", ".tsv", ".jsonl", ".json")


# A data file is read whole (a 7.7 KB zstd parquet can decode to gigabytes), so what reading
# it will take is estimated before it is read -- from the parquet footer (and, for text stored
# as a dictionary, the expanded lengths), or a text file's size and line count -- and refused
# past what keeps the checking process under MEMORY_CAP_MB. The factors are measured peaks
# (benchmarks/input_memory.py): pyarrow's decoding, pandas' column and the Python strings of
# the examples each hold the text once; every row costs Python objects of its own.
MEMORY_CAP_MB = 1024  # the stated cap on a process that checks (or reads) a data file; APET_RAY_MEMORY_CAP_MB
PROCESS_MB = 512  # that process before any data (measured 448-475 MB: Python, torch, transformers)
BYTES_FACTOR = {"parquet": 5, "csv": 7, "jsonl": 11}  # peak bytes per byte of text
ROW_BYTES = 350  # peak bytes per row


def memory_cap_mb() -> int:
    value = os.environ.get("APET_RAY_MEMORY_CAP_MB", str(MEMORY_CAP_MB))
    try:
        cap = int(value)
    except ValueError:
        raise UserError(f"APET_RAY_MEMORY_CAP_MB must be a whole number of MB, not {value!r}") from None
    if cap <= PROCESS_MB:
        raise UserError(f"APET_RAY_MEMORY_CAP_MB {cap} leaves nothing for data: the process alone takes ~{PROCESS_MB} MB")
    return cap


def check_read_cost(path: Path, kind: str, text_bytes: int, rows: int) -> None:
    """Refuse, in one line, a file whose reading would take the process past the memory cap."""
    cap = memory_cap_mb()
    budget = (cap - PROCESS_MB) * 2**20
    need = BYTES_FACTOR[kind] * text_bytes + ROW_BYTES * rows
    if need > budget:
        raise UserError(f"{path}: reading it would take about {need / 2**20:,.0f} MB ({text_bytes / 2**20:,.0f} MB of "
                        f"data, {rows:,} rows), more than the {budget / 2**20:,.0f} MB a data file may use under the "
                        f"{cap:,} MB memory cap: split it, or raise APET_RAY_MEMORY_CAP_MB on a larger machine")


def _kind(suffix: str) -> str:
    return "parquet" if suffix in (".parquet", ".pq") else "csv" if suffix in (".csv", ".tsv") else "jsonl"


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a whole data file; columns keep their names, text stays text. What reading it
    takes is checked first (``check_read_cost``: the memory cap)."""
    path = Path(path)
    check_input(path, "data file", folder=False)  # empty, a symlink loop, unreadable, a folder
    if not path.is_file():
        raise UserError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in _READABLE:
        raise UserError(f"{path}: unsupported file type {suffix or '(none)'} (use {', '.join(_READABLE)})")
    check_read_cost(path, _kind(suffix), *_data_bytes(path, suffix))
    try:
        if suffix in (".parquet", ".pq"):
            try:
                return _read_parquet(path)
            finally:  # Arrow's pool keeps what it freed: hand it back before the next file is read
                import pyarrow as pa

                pa.default_memory_pool().release_unused()
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
    except UserError:
        raise
    except Exception as exc:  # pyarrow, csv and json parsers raise many unrelated types
        raise UserError(f"{path}: cannot read it as {suffix[1:]}: {one_line(exc)}") from None


def _read_parquet(path: Path) -> pd.DataFrame:
    """A parquet file, its text columns read dictionary-encoded first: a few distinct long
    strings repeated over many rows are tiny on disk and in arrow, and only expand when
    pandas makes them Python strings -- so their expanded size is summed (from the
    dictionary's lengths, without expanding) and checked before that happens."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    schema = pq.read_schema(path)
    text = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
    table = pq.read_table(path, read_dictionary=text)
    expanded = 0
    for name in table.column_names:  # the text columns, and any the file itself stores as a dictionary
        for chunk in table.column(name).chunks:
            if pa.types.is_dictionary(chunk.type) and len(chunk):  # as it will be once expanded, not as it is
                lengths = pc.binary_length(chunk.dictionary)
                expanded += int(pc.sum(pc.take(lengths, chunk.indices)).as_py() or 0) + 8 * len(chunk)
            else:
                expanded += chunk.nbytes
    check_read_cost(path, "parquet", expanded, table.num_rows)  # the dictionaries' text, as pandas will hold it
    return table.cast(pa.schema([table.schema.field(n).with_type(schema.field(n).type) for n in table.column_names],
                                metadata=schema.metadata)).to_pandas()


def _data_bytes(path: Path, suffix: str) -> tuple[int, int]:
    """(bytes, rows) reading ``path`` would decode: a parquet file's uncompressed size and row
    count from its footer (no data read); a text file's size and its lines (an upper bound on
    its rows), counted a megabyte at a time."""
    if suffix not in (".parquet", ".pq"):
        lines = 0
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(2**20), b""):
                lines += chunk.count(b"\n")
        return path.stat().st_size, lines
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(path).metadata
    except Exception as exc:  # not parquet at all: the read below says so in its own words
        raise UserError(f"{path}: cannot read it as parquet: {one_line(exc)}") from None
    return sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups)), meta.num_rows


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
