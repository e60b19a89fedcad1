"""The results tables: schema validation, atomic writes, tolerant reads."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from apet_ray.errors import UserError
from apet_ray.results import (
    CURVES_SCHEMA,
    TRANSFER_SCHEMA,
    TRIALS_SCHEMA,
    read_results,
    write_trial,
)


def trial(trial_id: str = "t1", **fields: object) -> dict[str, object]:
    row: dict[str, object] = {
        "trial_id": trial_id, "study": "e1", "model": "bert-small", "total_params": 1_000_000,
        "task": "sst2", "task_type": "SA", "method": "apet", "op": "add", "distribution": "discrete",
        "match": "lora", "requested_params": 8_000, "trainable_params": 9_538, "delta_params": 8_000,
        "ratio": 0.008, "seed": 0, "lr": 3e-4, "batch_size": 32, "max_steps": 100, "metric": "accuracy",
        "random_guess": 0.5, "final_score": 0.8, "best_score": 0.81, "ft_score": None,
        "steps_to_converge": 60, "steps_run": 100, "wall_time_s": 3.0, "status": "finished",
        "code_version": "abc123", "hparams": '{"lr": 0.0003}',
    }  # fmt: skip
    row.update(fields)
    return row


def curve(step: int, score: float = 0.7) -> dict[str, object]:
    return {
        "study": "e1", "model": "bert-small", "task": "sst2", "method": "apet", "op": "add",
        "distribution": "discrete", "seed": 0, "delta_params": 8_000, "step": step, "score": score,
        "loss": 0.5, "tokens_per_s": 1000.0, "elapsed_s": step / 10,
    }  # fmt: skip


def transfer(target: str, score: float = 0.6) -> dict[str, object]:
    return {
        "study": "e5", "model": "bert-small", "method": "apet", "op": "add", "distribution": "discrete",
        "seed": 0, "source_task": "sst2", "target_task": target, "score": score,
        "in_task_score": 0.8, "relative": score / 0.8,
    }  # fmt: skip


def test_schema_and_docs_agree() -> None:
    doc = (Path(__file__).parents[1] / "docs" / "schema.md").read_text(encoding="utf-8")
    for schema in (TRIALS_SCHEMA, CURVES_SCHEMA, TRANSFER_SCHEMA):
        for field in schema:
            assert re.search(rf"^\| {field.name} \|", doc, re.M), f"docs/schema.md lacks column {field.name}"


def test_write_then_read_round_trip(tmp_path: Path) -> None:
    written = write_trial(tmp_path, "t1", trial(), [curve(10), curve(20, 0.75)], [transfer("imdb")])
    assert sorted(written) == ["curves", "transfer", "trials"]
    results, problems = read_results(tmp_path)
    assert problems == []
    assert len(results.trials) == 1 and len(results.curves) == 2 and len(results.transfer) == 1
    row = results.trials.iloc[0]
    assert row["delta_params"] == 8_000 and row["final_score"] == pytest.approx(0.8)
    assert pd.isna(row["ft_score"])
    assert list(results.curves["trial_id"]) == ["t1", "t1"]  # filled in from the argument
    assert list(results.trials.columns) == TRIALS_SCHEMA.names
    meta = pq.read_schema(tmp_path / "trials" / "t1.parquet").metadata
    assert meta[b"apet_ray.table"] == b"trials"


def test_rewrite_replaces_rows_and_leaves_no_temp_files(tmp_path: Path) -> None:
    write_trial(tmp_path, "t1", trial(), [curve(10), curve(20)], [transfer("imdb"), transfer("rte")])
    write_trial(tmp_path, "t1", trial(final_score=0.9), [curve(10)])  # no transfer this time
    results, problems = read_results(tmp_path)
    assert problems == []
    assert len(results.trials) == 1 and results.trials["final_score"].iloc[0] == pytest.approx(0.9)
    assert len(results.curves) == 1
    assert len(results.transfer) == 0  # the stale transfer file is gone
    leftovers = [p.name for p in tmp_path.rglob("*") if p.is_file() and not p.name.endswith(".parquet")]
    assert leftovers == []


def test_missing_column_is_named(tmp_path: Path) -> None:
    row = trial()
    del row["delta_params"]
    with pytest.raises(ValueError, match="delta_params"):
        write_trial(tmp_path, "t1", row, [])
    bad_curve = curve(10)
    del bad_curve["step"]
    with pytest.raises(ValueError, match="curves row 0.*'step'"):
        write_trial(tmp_path, "t1", trial(), [bad_curve])
    assert not list(tmp_path.rglob("*.parquet"))  # validation happens before any write


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"delta_parms": 3}, "unknown column"),
        ({"method": "LoRA"}, "not one of"),
        ({"final_score": 80.0}, "outside"),
        ({"seed": 1.5}, "integer"),
        ({"seed": True}, "bool"),
        ({"model": None}, "non-nullable"),
        ({"ratio": 0.5}, "ratio"),
        ({"trial_id": "other"}, "trial_id"),
        ({"hparams": "lr=3e-4"}, "JSON"),
    ],
)
def test_bad_values_are_refused(tmp_path: Path, fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        write_trial(tmp_path, "t1", trial(**fields), [])


def test_nullable_columns_may_be_omitted(tmp_path: Path) -> None:
    row = trial(method="lora")
    for name in ("op", "distribution", "match", "requested_params", "ft_score", "steps_to_converge"):
        del row[name]
    write_trial(tmp_path, "t1", row, [])
    results, _ = read_results(tmp_path)
    assert results.trials[["op", "match", "steps_to_converge"]].isna().all().all()


def test_bad_trial_id(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="trial_id"):
        write_trial(tmp_path, "../escape", trial("../escape"), [])


def test_corrupt_and_missing_files_are_named_and_skipped(tmp_path: Path) -> None:
    write_trial(tmp_path, "good", trial("good"), [curve(10)])
    write_trial(tmp_path, "bad", trial("bad"), [curve(10)])
    write_trial(tmp_path, "orphan", trial("orphan"), [curve(10)])
    (tmp_path / "trials" / "bad.parquet").write_bytes(b"not a parquet file at all")
    (tmp_path / "trials" / "orphan.parquet").unlink()  # curves without a trials row
    (tmp_path / "curves" / "good.parquet").unlink()  # trials row without its curves
    pq.write_table(pq.read_table(tmp_path / "curves" / "bad.parquet").drop_columns(["score"]),
                   tmp_path / "curves" / "bad.parquet")  # fmt: skip
    results, problems = read_results(tmp_path)
    assert list(results.trials["trial_id"]) == ["good"]
    text = "\n".join(problems)
    assert "trials/bad.parquet: unreadable" in text
    assert "curves/bad.parquet: unreadable (ValueError: missing column(s) score)" in text
    assert "curves/good.parquet: missing" in text
    assert "trials/orphan.parquet: missing" in text
    assert len(problems) == 4


def test_nonexistent_folder_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        read_results(tmp_path / "nope")


def test_empty_folder_reads_as_empty_tables(tmp_path: Path) -> None:
    results, problems = read_results(tmp_path)
    assert problems == [] and results.trials.empty
    assert list(results.curves.columns) == CURVES_SCHEMA.names


def _write_two(tmp_path: Path) -> None:
    write_trial(tmp_path, "t1", trial("t1"), [curve(10)])
    write_trial(tmp_path, "t2", trial("t2", seed=1), [curve(10), curve(20)])


def test_readable_by_pandas(tmp_path: Path) -> None:
    _write_two(tmp_path)
    trials = pd.read_parquet(tmp_path / "trials")
    assert sorted(trials["trial_id"]) == ["t1", "t2"]
    assert len(pd.read_parquet(tmp_path / "curves")) == 3


def test_readable_by_duckdb(tmp_path: Path) -> None:
    duckdb = pytest.importorskip("duckdb")
    _write_two(tmp_path)
    n = duckdb.sql(f"SELECT count(*) FROM '{tmp_path}/curves/*.parquet'").fetchall()[0][0]
    assert n == 3


def test_readable_by_polars(tmp_path: Path) -> None:
    polars = pytest.importorskip("polars")
    _write_two(tmp_path)
    frame = polars.read_parquet(str(tmp_path / "trials" / "*.parquet"))
    assert frame.height == 2 and frame["delta_params"].dtype == polars.Int64


def test_a_resume_counts_only_the_trials_files_that_read_and_sets_the_others_aside(tmp_path: Path, capsys) -> None:
    from apet_ray.results import recorded_trials

    for name in ("good", "torn", "garbage"):
        write_trial(tmp_path, name, trial(name), [curve(10)])
    torn = tmp_path / "trials" / "torn.parquet"
    torn.write_bytes(torn.read_bytes()[: len(torn.read_bytes()) // 2])  # a write cut off midway
    (tmp_path / "trials" / "garbage.parquet").write_bytes(b"PAR1 and then nothing")
    assert recorded_trials(tmp_path) == {"good"}
    aside = tmp_path / "trials" / ".unreadable"
    assert sorted(p.name for p in aside.iterdir()) == ["garbage.parquet", "torn.parquet"]
    assert "torn.parquet is unreadable" in capsys.readouterr().out
    assert recorded_trials(tmp_path) == {"good"} and read_results(tmp_path)[0].trials.trial_id.tolist() == ["good"]


def test_provenance_columns_are_written_and_older_and_newer_files_still_read(tmp_path: Path) -> None:
    import json

    import pyarrow as pa

    write_trial(tmp_path, "new", trial("new", versions=json.dumps({"torch": "2.13.0", "commit": "abc"}), device="AMD EPYC",
                                     precision="fp32", workers=0, strategy="none"), [curve(10)])
    write_trial(tmp_path, "old", trial("old"), [curve(10)])
    old = pq.read_table(tmp_path / "trials" / "old.parquet")
    old = old.drop_columns(["versions", "device", "precision", "workers", "strategy"])  # a schema-2 file
    pq.write_table(old.replace_schema_metadata({b"apet_ray.table": b"trials", b"apet_ray.schema_version": b"2"}),
                   tmp_path / "trials" / "old.parquet")
    write_trial(tmp_path, "future", trial("future"), [curve(10)])
    future = pq.read_table(tmp_path / "trials" / "future.parquet")
    future = future.append_column("carbon_g", pa.array([1.5]))
    pq.write_table(future.replace_schema_metadata({b"apet_ray.table": b"trials", b"apet_ray.schema_version": b"9"}),
                   tmp_path / "trials" / "future.parquet")
    results, problems = read_results(tmp_path)
    rows = results.trials.set_index("trial_id")
    assert rows.loc["new", "device"] == "AMD EPYC" and json.loads(rows.loc["new", "versions"])["torch"] == "2.13.0"
    assert pd.isna(rows.loc["old", "device"]) and len(rows) == 3
    assert any("schema version 9, newer than this reader's 3" in p for p in problems)


def _rewrite(path: Path, **values: object) -> None:
    """Set columns of a written file the way another tool (or an older writer) might have."""
    import pyarrow as pa

    table = pq.read_table(path)
    for name, value in values.items():
        i = table.column_names.index(name)
        table = table.set_column(i, name, pa.array([value] * table.num_rows, table.schema.field(name).type))
    pq.write_table(table, path)


def test_rows_the_writer_would_refuse_are_named_counted_and_left_out(tmp_path: Path) -> None:
    for name in ("good", "pct1", "pct2", "odd", "both"):
        write_trial(tmp_path, name, trial(name), [curve(10), curve(20)])
    _rewrite(tmp_path / "trials" / "pct1.parquet", final_score=95.0)  # percent where fractions go
    _rewrite(tmp_path / "trials" / "pct2.parquet", best_score=81.5)
    _rewrite(tmp_path / "trials" / "odd.parquet", status="done")  # not a status of the schema
    _rewrite(tmp_path / "trials" / "both.parquet", final_score=-0.2, status="running")
    _rewrite(tmp_path / "curves" / "good.parquet", score=70.0)
    results, problems = read_results(tmp_path)
    assert results.trials.trial_id.tolist() == ["good"]  # the report is still built from the rest
    assert set(results.curves.trial_id) == set()  # good's curves are percent too; the others' trials left out
    lines = "\n".join(problems)
    assert len(problems) == 4, problems  # one line per kind of problem, not per file
    # one line per kind: both files of the final_score problem named together
    assert "trials: 2 row(s) in 2 file(s) (both.parquet, pct1.parquet) with final_score outside [0, 1]: percent, " \
           "where the schema stores fractions? (e.g. " in lines
    assert "trials: 1 row(s) in 1 file(s) (pct2.parquet) with best_score outside [0, 1]" in lines
    assert "trials: 2 row(s) in 2 file(s) (both.parquet, odd.parquet) with a status apet-ray does not know" in lines
    assert "curves: 2 row(s) in 1 file(s) (good.parquet) with score outside [0, 1]" in lines
    assert all(p.endswith("left out of the report") for p in problems if "outside" in p or "status" in p)
