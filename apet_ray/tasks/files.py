"""Reading local data files (parquet, csv, tsv, jsonl) into DataFrames.

Every failure a user can cause -- a missing or unreadable file, an unknown extension, an
empty file -- becomes a one-line ``UserError`` that names the file.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd

from apet_ray.errors import UserError
from apet_ray.paths import check_input

# the order in which a data directory is searched for a split file
FILE_FORMATS = ("parquet", "csv", "jsonl")
_READABLE = (".parquet", ".pq", ".csv", ".tsv", ".jsonl", ".json")


# a data file is read whole: past this (decoded, for parquet; on disk, for text files) the
# read itself would be the problem -- a 7.7 KB zstd parquet can decode to gigabytes
MAX_DATA_BYTES = 2**30


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a whole data file; columns keep their names, text stays text. At most
    ``MAX_DATA_BYTES`` of data, checked before reading."""
    path = Path(path)
    check_input(path, "data file", folder=False)  # empty, a symlink loop, unreadable, a folder
    if not path.is_file():
        raise UserError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in _READABLE:
        raise UserError(f"{path}: unsupported file type {suffix or '(none)'} (use {', '.join(_READABLE)})")
    size = _data_bytes(path, suffix)
    if size > MAX_DATA_BYTES:
        raise UserError(f"{path}: {size / 2**30:.1f} GiB of data once read, more than the {MAX_DATA_BYTES / 2**30:.0f} GiB "
                        "a data file may hold: split it, or pass --train-limit on a smaller file")
    try:
        if suffix in (".parquet", ".pq"):
            return _read_parquet(path)
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
    expanded = table.nbytes
    for name in table.column_names:  # the text columns, and any the file itself stores as a dictionary
        for chunk in table.column(name).chunks:
            if pa.types.is_dictionary(chunk.type) and len(chunk):
                lengths = pc.binary_length(chunk.dictionary)
                expanded += int(pc.sum(pc.take(lengths, chunk.indices)).as_py() or 0)
    if expanded > MAX_DATA_BYTES:
        raise UserError(f"{path}: {expanded / 2**30:.1f} GiB of text once read, more than the "
                        f"{MAX_DATA_BYTES / 2**30:.0f} GiB a data file may hold: split it")
    return table.cast(pa.schema([table.schema.field(n).with_type(schema.field(n).type) for n in table.column_names],
                                metadata=schema.metadata)).to_pandas()


def _data_bytes(path: Path, suffix: str) -> int:
    """What reading ``path`` would hold in memory: a parquet file's uncompressed size from its
    footer (no data read), a text file's size on disk."""
    if suffix not in (".parquet", ".pq"):
        return path.stat().st_size
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(path).metadata
    except Exception as exc:  # not parquet at all: the read below says so in its own words
        raise UserError(f"{path}: cannot read it as parquet: {one_line(exc)}") from None
    return sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))


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
