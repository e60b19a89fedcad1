"""The results tables: their Parquet schema (``schema``), an atomic writer and a tolerant
reader (``store``), and the one function that turns a run record into rows (``rows``).
The column-by-column description lives in docs/schema.md."""

from apet_ray.results.rows import TrialRows, rows_from_record
from apet_ray.results.schema import (CURVES_SCHEMA, DISTRIBUTIONS, METRICS, SCHEMA_VERSION, SCHEMAS,
                                     STATUSES, TABLES, TRANSFER_SCHEMA, TRIALS_SCHEMA)
from apet_ray.results.store import Results, count_files, read_results, recorded_trials, trial_ids, write_trial

__all__ = [
    "CURVES_SCHEMA", "DISTRIBUTIONS", "METRICS", "SCHEMA_VERSION", "SCHEMAS", "STATUSES", "TABLES",
    "TRANSFER_SCHEMA", "TRIALS_SCHEMA", "Results", "TrialRows", "count_files", "read_results", "rows_from_record",
    "recorded_trials", "trial_ids", "write_trial",
]
