"""Bring your own task: a local file with the user's column names."""

from __future__ import annotations

import pandas as pd
import pytest

from apet_ray.errors import UserError
from apet_ray.models import load_tokenizer
from apet_ray.tasks import custom_task, decode_generated, holdout_indices, load_examples, score, to_text


@pytest.fixture
def reviews_csv(tmp_path):
    rows = [{"review": f"review number {i}", "stars": 1 + i % 5} for i in range(50)]
    # 10 is numerically largest: must sort after 5, not after 1
    rows.append({"review": "a perfect ten", "stars": 10})
    path = tmp_path / "My Reviews.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_csv_with_review_and_stars(reviews_csv):
    task = custom_task(reviews_csv, text_columns=("review",), label_column="stars")
    assert task.name == "my_reviews" and task.type == "sa" and task.metric == "accuracy"
    assert task.label_words == ("1", "2", "3", "4", "5", "10")
    assert task.random_guess == pytest.approx(1 / 6) and task.max_input_len == 128
    train = load_examples(task, "train")
    held_out = load_examples(task, "eval")
    assert (len(train), len(held_out)) == (46, 5)
    assert not set(train) & set(held_out)
    assert load_examples(task, "eval") == held_out  # deterministic
    example = train[0]
    source, target = to_text(task, example)
    assert source.startswith("my_reviews review: review number")
    tokenizer = load_tokenizer("minilm")
    assert decode_generated(task, tokenizer(target)["input_ids"][1:], tokenizer) == example.label
    assert score(task, [e.label for e in held_out], held_out) == 1.0
    assert len(load_examples(task, "train", limit=5, seed=3)) == 5


def test_string_labels_get_unified_meaning(tmp_path):
    path = tmp_path / "mail.jsonl"
    pd.DataFrame({"body": ["buy now", "hi mum", "cheap pills", "see you"],
                  "sentiment": ["Negative", "positive", "Negative", "positive"]}).to_json(
        path, orient="records", lines=True)
    task = custom_task(path, text_columns="body", label_column="sentiment", name="mail", eval_fraction=0.25)
    assert task.label_words == ("Negative", "positive")
    assert task.unified_label == (0, 1)
    assert [e.label for e in load_examples(task, "train") + load_examples(task, "eval")].count(0) == 2


def test_separate_eval_file_and_generation(tmp_path):
    train = tmp_path / "train.parquet"
    held_out = tmp_path / "dev.parquet"
    pd.DataFrame({"article": ["long text one", "long text two"], "tldr": ["one", "two"]}).to_parquet(train)
    pd.DataFrame({"article": ["long text three"], "tldr": ["three"]}).to_parquet(held_out)
    task = custom_task(train, text_columns=("article",), target_column="tldr", eval_path=held_out)
    assert (task.type, task.metric, task.max_gen_len, task.random_guess) == ("sum", "rougeL", 128, 0.0)
    assert [e.targets for e in load_examples(task, "eval")] == [("three",)]
    assert len(load_examples(task, "train")) == 2
    qa = custom_task(train, text_columns="article", target_column="tldr", task_type="qa")
    assert qa.metric == "f1"


def test_missing_column_is_refused(reviews_csv):
    with pytest.raises(UserError, match=r"My Reviews.csv: no column 'rating' \(columns present: review, stars\)"):
        custom_task(reviews_csv, text_columns=("review",), label_column="rating")
    with pytest.raises(UserError, match="no column 'body'"):
        custom_task(reviews_csv, text_columns=("body",), label_column="stars")


def test_other_mistakes_are_one_line(tmp_path, reviews_csv):
    with pytest.raises(UserError, match="data file not found: .*missing.csv"):
        custom_task(tmp_path / "missing.csv", text_columns=("review",), label_column="stars")
    with pytest.raises(UserError, match="either a label column .* or a target column"):
        custom_task(reviews_csv, text_columns=("review",))
    with pytest.raises(UserError, match="unknown task type 'ner'"):
        custom_task(reviews_csv, text_columns=("review",), label_column="stars", task_type="ner")
    with pytest.raises(UserError, match="task type 'sum' needs a target column"):
        custom_task(reviews_csv, text_columns=("review",), label_column="stars", task_type="sum")
    many = tmp_path / "many.csv"
    pd.DataFrame({"review": [f"text {i}" for i in range(150)], "stars": [i % 5 for i in range(150)]}).to_csv(many)
    with pytest.raises(UserError, match="label column 'review' has 150 distinct values"):
        custom_task(many, text_columns=("stars",), label_column="review")
    with pytest.raises(UserError, match="eval fraction must be between 0 and 1"):
        custom_task(reviews_csv, text_columns=("review",), label_column="stars", eval_fraction=1.5)
    odd = tmp_path / "data.xlsx"
    odd.write_text("x")
    with pytest.raises(UserError, match="data.xlsx: unsupported file type .xlsx"):
        custom_task(odd, text_columns=("review",), label_column="stars")
    one = tmp_path / "one.csv"
    one.write_text("review,stars\ngood,5\nfine,5\n")
    with pytest.raises(UserError, match="'stars' needs at least two distinct values"):
        custom_task(one, text_columns=("review",), label_column="stars")
    task = custom_task(reviews_csv, text_columns=("review",), label_column="stars")
    with pytest.raises(UserError, match="reads its own files"):
        load_examples(task, "train", data_dir=tmp_path)


def test_holdout_indices():
    train, held_out = holdout_indices(100, 0.1, seed=0)
    assert len(held_out) == 10 and len(train) == 90
    assert sorted(train + held_out) == list(range(100))
    assert holdout_indices(100, 0.1, seed=0) == (train, held_out)
    assert holdout_indices(100, 0.1, seed=1)[1] != held_out
    assert len(holdout_indices(3, 0.1)[1]) == 1  # at least one eval row
    with pytest.raises(UserError, match="cannot split 1 row"):
        holdout_indices(1)


def test_a_target_of_nested_brackets_is_text_not_a_recursion_error():
    from apet_ray.tasks.loading import _answers

    deep = "[" * 100_000 + "]" * 100_000  # json.loads recurses once per bracket
    assert _answers(deep) == (deep,)
    assert _answers('["Paris", "paris"]') == ("Paris", "paris")
