"""Loading from a data directory: file formats, splits, limits and every user mistake."""

from __future__ import annotations

import json

import datasets
import pandas as pd
import pytest

from apet_ray.errors import UserError
from apet_ray.tasks import get_task, load_examples, split_file


def _write(path, rows, fmt):
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows)
    if fmt == "parquet":
        frame.to_parquet(path)
    elif fmt == "csv":
        frame.to_csv(path, index=False)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


RTE_ROWS = [{"sentence1": f"premise {i}", "sentence2": f"hypothesis {i}", "label": i % 2, "idx": i}
            for i in range(40)]


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_each_file_format(tmp_path, fmt):
    _write(tmp_path / "rte" / f"train.{fmt}", RTE_ROWS, fmt)
    examples = load_examples("rte", "train", data_dir=tmp_path)
    assert len(examples) == 40
    assert examples[3].inputs == ("premise 3", "hypothesis 3")
    assert examples[3].label == 1 and examples[3].targets is None


def test_eval_uses_the_hub_split_name_then_validation(tmp_path):
    rows = [{"premise": "p", "hypothesis": "h", "label": 2}]
    _write(tmp_path / "mnli" / "validation.parquet", rows, "parquet")
    assert load_examples("mnli", "eval", data_dir=tmp_path)[0].label == 2
    _write(tmp_path / "mnli" / "validation_matched.parquet", [{**rows[0], "label": 0}], "parquet")
    assert load_examples(get_task("mnli"), "eval", data_dir=tmp_path)[0].label == 0
    assert split_file(get_task("mnli"), "eval", tmp_path).name == "validation_matched.parquet"


def test_qa_answer_lists_from_parquet_jsonl_and_csv(tmp_path):
    rows = [{"question": "who wrote hamlet", "answer": ["William Shakespeare", "Shakespeare"]},
            {"question": "capital of france", "answer": ["Paris"]}]
    _write(tmp_path / "a" / "nq_open" / "train.parquet", rows, "parquet")
    _write(tmp_path / "b" / "nq_open" / "train.jsonl", rows, "jsonl")
    # in a csv the list is written as JSON text
    _write(tmp_path / "c" / "nq_open" / "train.csv",
           [{**r, "answer": json.dumps(r["answer"])} for r in rows], "csv")
    for folder in "abc":
        examples = load_examples("nq_open", "train", data_dir=tmp_path / folder)
        assert examples[0].targets == ("William Shakespeare", "Shakespeare")
        assert examples[1].targets == ("Paris",) and examples[1].label is None


def test_summaries(tmp_path):
    rows = [{"id": "1", "dialogue": "A: hi\r\nB: hello", "summary": "They greet."},
            {"id": "2", "dialogue": "", "summary": "Nothing was said."}]
    _write(tmp_path / "samsum" / "validation.parquet", rows, "parquet")
    examples = load_examples("samsum", "eval", data_dir=tmp_path)
    assert examples[0].targets == ("They greet.",)
    assert examples[1].inputs == ("",)  # an empty dialogue is kept, as on the hub


def test_label_words_are_accepted_in_place_of_ids(tmp_path):
    rows = [{"sentence": "good", "label": "positive"}, {"sentence": "bad", "label": "Negative"},
            {"sentence": "ok", "label": 1}]
    _write(tmp_path / "sst2" / "train.jsonl", rows, "jsonl")
    assert [e.label for e in load_examples("sst2", "train", data_dir=tmp_path)] == [1, 0, 1]


def test_limit_is_a_seeded_nested_subset(tmp_path):
    _write(tmp_path / "rte" / "train.parquet", RTE_ROWS, "parquet")
    first = load_examples("rte", "train", data_dir=tmp_path, limit=10, seed=0)
    again = load_examples("rte", "train", data_dir=tmp_path, limit=10, seed=0)
    other = load_examples("rte", "train", data_dir=tmp_path, limit=10, seed=1)
    larger = load_examples("rte", "train", data_dir=tmp_path, limit=20, seed=0)
    assert first == again and len(first) == 10
    assert first != other
    assert set(first) <= set(larger)
    ids = [int(e.inputs[0].split()[1]) for e in first]
    assert ids == sorted(ids)  # file order is kept
    assert len(load_examples("rte", "train", data_dir=tmp_path, limit=1000)) == 40


def test_missing_file_names_the_path(tmp_path):
    (tmp_path / "rte").mkdir()
    with pytest.raises(UserError, match=r"no train split for rte: looked for .*rte/train\.\{parquet,csv,jsonl\}"):
        load_examples("rte", "train", data_dir=tmp_path)
    with pytest.raises(UserError, match=r"validation_matched,validation"):
        load_examples("mnli", "eval", data_dir=tmp_path)
    with pytest.raises(UserError, match="data directory not found: .*nowhere"):
        load_examples("rte", "train", data_dir=tmp_path / "nowhere")


def test_missing_column_names_it_and_the_present_ones(tmp_path):
    rows = [{"text_a": "x", "sentence2": "y", "label": 0}]
    path = _write(tmp_path / "rte" / "train.csv", rows, "csv")
    expected = rf"{path}: no column 'sentence1' \(columns present: text_a, sentence2, label\)"
    with pytest.raises(UserError, match=expected):
        load_examples("rte", "train", data_dir=tmp_path)


def test_empty_split_is_refused(tmp_path):
    path = tmp_path / "rte" / "train.parquet"
    path.parent.mkdir()
    pd.DataFrame({"sentence1": pd.Series([], dtype=str), "sentence2": pd.Series([], dtype=str),
                  "label": pd.Series([], dtype=int)}).to_parquet(path)
    with pytest.raises(UserError, match="train.parquet: the split is empty"):
        load_examples("rte", "train", data_dir=tmp_path)
    (tmp_path / "rte" / "train.parquet").unlink()
    (tmp_path / "rte" / "train.csv").write_text("")
    with pytest.raises(UserError, match="train.csv: the file is empty"):
        load_examples("rte", "train", data_dir=tmp_path)


def test_labels_out_of_range_are_named(tmp_path):
    rows = [{"sentence1": "a", "sentence2": "b", "label": v} for v in (0, 1, 2, -1, 7)]
    _write(tmp_path / "rte" / "validation.parquet", rows, "parquet")
    with pytest.raises(UserError, match=r"label column 'label' has values outside ids 0\.\.1 .*: -1, 2, 7 \(-1 marks"):
        load_examples("rte", "eval", data_dir=tmp_path)


def test_missing_labels_and_targets_are_refused(tmp_path):
    (tmp_path / "sst2").mkdir()
    (tmp_path / "sst2" / "train.csv").write_text("sentence,label\ngood,1\nbad,\n")
    with pytest.raises(UserError, match="1 row\\(s\\) have no value in label column 'label'"):
        load_examples("sst2", "train", data_dir=tmp_path)
    (tmp_path / "samsum").mkdir()
    (tmp_path / "samsum" / "train.csv").write_text("dialogue,summary\nA: hi,\n")
    with pytest.raises(UserError, match="no value in target column 'summary'"):
        load_examples("samsum", "train", data_dir=tmp_path)


def test_corrupt_file_is_named(tmp_path):
    (tmp_path / "rte").mkdir()
    (tmp_path / "rte" / "train.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(UserError, match="train.parquet: cannot read it as parquet"):
        load_examples("rte", "train", data_dir=tmp_path)


def test_bad_arguments():
    with pytest.raises(UserError, match="unknown split 'dev'"):
        load_examples("rte", "dev", data_dir=".")
    with pytest.raises(UserError, match="unknown data source 'ftp'"):
        load_examples("rte", source="ftp")
    with pytest.raises(UserError, match="limit must be a positive"):
        load_examples("rte", data_dir=".", limit=0)
    with pytest.raises(UserError, match="unknown task 'rtee'"):
        load_examples("rtee")
    with pytest.raises(UserError, match="packaged data exists only for rotten_tomatoes, not sst2"):
        load_examples("sst2", source="packaged")


def test_hub_failure_tells_the_user_about_data_dir(monkeypatch):
    # offline mode makes the hub fail at once instead of after ~20 s of retries
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    try:
        examples = load_examples("multi_news", "eval", source="hub", limit=2)
    except UserError as exc:
        message = str(exc)
        assert "\n" not in message
        assert "could not load multi_news from the Hugging Face hub (alexfabbri/multi_news" in message
        assert "--data-dir DIR holding multi_news/validation.parquet" in message
    else:  # a machine with the dataset in its hub cache
        assert len(examples) == 2 and examples[0].targets


def test_a_small_parquet_that_decodes_huge_is_refused_before_it_is_expanded(tmp_path, monkeypatch):
    # a few distinct long strings repeated over many rows: kilobytes on disk, far more once read
    import pyarrow as pa
    import pyarrow.parquet as pq

    from apet_ray.tasks import files

    monkeypatch.setenv("APET_RAY_MEMORY_CAP_MB", str(files.PROCESS_MB + 40))  # 40 MB for data
    rows = 5_000
    text = pa.DictionaryArray.from_arrays(pa.array([0] * rows, pa.int32()), pa.array(["x" * 8000]))
    pq.write_table(pa.table({"sentence": text, "label": pa.array([0] * rows)}), tmp_path / "train.parquet",
                   compression="zstd")
    assert (tmp_path / "train.parquet").stat().st_size < 100_000
    with pytest.raises(UserError, match=r"reading it would take about \d+ MB \(38 MB of data, 5,000 rows\), more "
                                         r"than the 40 MB a data file may use under the 552 MB memory cap"):
        files.read_table(tmp_path / "train.parquet")


# ---- text cells that are not text (issue 27, item 10): refused, or left out of training -------


@pytest.mark.parametrize("fmt, cell, message", [
    ("parquet", "good\x00bad", "2 row(s) of column 'sentence2' hold NUL characters"),
    ("jsonl", "\x00", "2 row(s) of column 'sentence2' hold NUL characters"),
    ("parquet", b"\x89PNG\r\n\x1a\n\x00\x00", "40 row(s) of column 'sentence2' hold bytes, not text"),  # a binary column
    ("parquet", "\x01\x02\x03\x04 \x05\x06\x07\x08", "2 row(s) of column 'sentence2' are mostly control characters"),
])
def test_text_cells_that_are_not_text_are_refused_with_the_column_and_row_count(tmp_path, fmt, cell, message):
    rows = [dict(r) for r in RTE_ROWS]
    for i in (5, 9):
        rows[i]["sentence2"] = cell
    if isinstance(cell, bytes):
        for r in rows:
            r["sentence2"] = r["sentence2"] if isinstance(r["sentence2"], bytes) else r["sentence2"].encode()
    _write(tmp_path / "rte" / f"train.{fmt}", rows, fmt)
    with pytest.raises(UserError) as info:
        load_examples("rte", "train", data_dir=tmp_path)
    text = str(info.value)
    assert message in text and "(first: row " in text and f"train.{fmt}" in text and "\n" not in text, text


def test_text_with_a_few_tabs_newlines_and_accents_is_text(tmp_path):
    rows = [dict(r, sentence1=f"l\u00e9gende {i}\tcol\r\nnext line \u2603") for r in RTE_ROWS for i in [r["idx"]]]
    _write(tmp_path / "rte" / "train.parquet", rows, "parquet")
    assert len(load_examples("rte", "train", data_dir=tmp_path)) == 40


def test_rows_with_an_empty_text_are_left_out_of_training_with_one_warning(tmp_path, caplog):
    rows = [dict(r) for r in RTE_ROWS]
    rows[3]["sentence1"] = ""
    rows[7]["sentence2"] = "   "
    rows[8]["sentence2"] = None
    for split in ("train", "validation"):
        _write(tmp_path / "rte" / f"{split}.csv", rows, "csv")
    with caplog.at_level("WARNING"):
        train = load_examples("rte", "train", data_dir=tmp_path)
        load_examples("rte", "train", data_dir=tmp_path)  # validation loads a split per trial: said once
    assert len(train) == 37 and all(e.inputs[0].strip() and e.inputs[1].strip() for e in train)
    warned = [r.getMessage() for r in caplog.records if "empty text" in r.getMessage()]
    assert len(warned) == 1 and "3 of 40 row(s)" in warned[0] and "'sentence1', 'sentence2'" in warned[0]
    assert len(load_examples("rte", "eval", data_dir=tmp_path)) == 40  # eval keeps them: scored as the hub's split
    for r in rows:
        r["sentence1"] = ""
    _write(tmp_path / "rte" / "train.csv", rows, "csv")
    with pytest.raises(UserError, match="every row has an empty text in columns 'sentence1', 'sentence2'"):
        load_examples("rte", "train", data_dir=tmp_path)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_text_file_too_long_or_with_too_many_lines_is_refused_before_it_is_parsed(tmp_path, monkeypatch, fmt):
    from apet_ray.tasks import files

    monkeypatch.setenv("APET_RAY_MEMORY_CAP_MB", str(files.PROCESS_MB + 4))  # 4 MB for data
    one_line = [{"sentence": "a" * 2_000_000, "label": 1}, {"sentence": "b", "label": 0}]
    _write(tmp_path / "long" / f"train.{fmt}", one_line, fmt)
    with pytest.raises(UserError, match=r"reading it would take about \d+ MB \(2 MB of data, [23] rows\), more than "
                                         r"the 4 MB a data file may use"):
        files.read_table(tmp_path / "long" / f"train.{fmt}")
    many = [{"sentence": "a", "label": i % 2} for i in range(20_000)]  # 0.3 MB, but 20,000 rows of Python objects
    _write(tmp_path / "many" / f"train.{fmt}", many, fmt)
    with pytest.raises(UserError, match=r"20,00\d rows\), more than the 4 MB"):
        files.read_table(tmp_path / "many" / f"train.{fmt}")
    monkeypatch.setenv("APET_RAY_MEMORY_CAP_MB", "lots")
    with pytest.raises(UserError, match="APET_RAY_MEMORY_CAP_MB must be a whole number of MB"):
        files.read_table(tmp_path / "many" / f"train.{fmt}")
