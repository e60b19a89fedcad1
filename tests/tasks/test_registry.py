"""The task table: the 11 tasks of SPEC §5 with the lengths and labels of SPEC §4."""

from __future__ import annotations

import argparse
import json

import pytest

from apet_ray.commands import tasks as tasks_command
from apet_ray.errors import UserError
from apet_ray.tasks import TASKS, Task, get_task, task_names

PAPER_TASKS = ["sst2", "imdb", "rotten_tomatoes", "mnli", "qnli", "rte", "mrpc", "qqp",
               "nq_open", "samsum", "multi_news"]


def test_the_eleven_tasks_in_paper_order():
    assert task_names() == PAPER_TASKS


@pytest.mark.parametrize("name", PAPER_TASKS)
def test_lengths_metric_and_chance_follow_the_type(name):
    task = get_task(name)
    expected_metric = {"sa": "accuracy", "nli": "accuracy", "pi": "accuracy", "qa": "f1", "sum": "rougeL"}
    assert task.metric == expected_metric[task.type]
    assert task.max_input_len == (128 if task.type == "sa" else 256)
    if task.is_classification:
        assert task.max_gen_len == 1
        assert task.random_guess == pytest.approx(1 / task.num_labels)
        assert len(task.unified_label) == task.num_labels
        assert task.label_column == "label" and task.target_column is None
    else:
        assert task.random_guess == 0.0
        assert task.num_labels == 0 and task.unified_label == ()
        assert task.target_column is not None
    assert 1 <= len(task.text_columns) <= 2
    assert task.hub_path


def test_generation_lengths():
    assert get_task("samsum").max_gen_len == 128
    assert get_task("multi_news").max_gen_len == 64
    assert get_task("nq_open").max_gen_len == 32


def test_label_words_in_hub_order_and_unified_labels():
    assert get_task("sst2").label_words == ("negative", "positive")
    assert get_task("rte").label_words == ("entailment", "not_entailment")
    assert get_task("rte").unified_label == (1, 0)
    mnli = get_task("mnli")
    assert mnli.num_labels == 3 and mnli.random_guess == pytest.approx(1 / 3)
    assert [mnli.to_unified(i) for i in range(3)] == [1, None, 0]
    assert get_task("mrpc").unified_label == (0, 1)
    assert get_task("qqp").label_words == ("not_duplicate", "duplicate")
    assert get_task("nq_open").to_unified(0) is None


def test_hub_columns_and_splits():
    assert get_task("mnli").eval_split == "validation_matched"
    assert get_task("mnli").text_columns == ("premise", "hypothesis")
    assert get_task("qnli").text_columns == ("question", "sentence")
    assert get_task("imdb").eval_split == "test"
    assert (get_task("nq_open").text_columns, get_task("nq_open").target_column) == (("question",), "answer")
    assert (get_task("samsum").text_columns, get_task("samsum").target_column) == (("dialogue",), "summary")
    assert (get_task("multi_news").text_columns, get_task("multi_news").target_column) == (("document",), "summary")


def test_lookup_is_forgiving_about_case_and_dashes():
    assert get_task("SST2") is TASKS["sst2"]
    assert get_task("nq-open") is TASKS["nq_open"]


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(UserError, match=r"unknown task 'sst3'.*rotten_tomatoes.*multi_news"):
        get_task("sst3")


def test_tasks_are_hashable():
    assert len({get_task("rte"), get_task("rte"), get_task("sst2")}) == 2


def test_inconsistent_task_is_refused():
    with pytest.raises(UserError, match="'weird'"):
        Task(name="weird", type="sa", text_columns=("text",), label_column="label", label_words=("yes",))
    with pytest.raises(UserError, match="unknown type 'ner'"):
        Task(name="tagger", type="ner", text_columns=("text",), label_column="label", label_words=("a", "b"))


def _run(argv, capsys):
    parser = argparse.ArgumentParser()
    tasks_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    return capsys.readouterr().out


def test_tasks_command_table(capsys):
    out = _run(["tasks"], capsys)
    lines = out.strip().splitlines()
    assert lines[0].split()[:3] == ["name", "type", "metric"]
    assert len(lines) == 2 + 11
    mnli = next(line for line in lines if line.startswith("mnli"))
    assert "0.333" in mnli and "nyu-mll/glue:mnli" in mnli


def test_tasks_command_json(capsys):
    rows = json.loads(_run(["tasks", "--json"], capsys))
    assert [r["name"] for r in rows] == PAPER_TASKS
    samsum = rows[PAPER_TASKS.index("samsum")]
    assert samsum["max_gen_len"] == 128 and samsum["random_guess"] == 0.0


def test_tasks_command_data_dir(tmp_path, capsys):
    (tmp_path / "rte").mkdir()
    (tmp_path / "rte" / "validation.csv").write_text("sentence1,sentence2,label\na,b,0\n")
    rows = json.loads(_run(["tasks", "--json", "--data-dir", str(tmp_path)], capsys))
    assert rows[PAPER_TASKS.index("rte")]["local_files"] == {"eval": "validation.csv"}
    parser = argparse.ArgumentParser()
    tasks_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["tasks", "--data-dir", str(tmp_path / "nowhere")])
    with pytest.raises(UserError, match="nowhere"):
        args.func(args)


def test_the_unified_view_trains_every_task_in_one_label_vocabulary():
    from apet_ray.tasks.registry import Example

    rte = get_task("rte").unified_view()  # GLUE's RTE: 0 = entailment, which is unified 1
    assert rte.label_words == ("0", "1") and get_task("rte").unified_ids() == (1, 0)
    relabelled = get_task("rte").relabel_unified([Example(inputs=("a", "b"), label=0)])
    assert relabelled[0].label == 1 and rte.to_unified(1) == 1
    mnli = get_task("mnli")  # neutral has no binary meaning: it keeps a third word of its own
    assert mnli.unified_view().label_words == ("0", "1", "2") and mnli.unified_ids() == (1, 2, 0)
    with pytest.raises(UserError, match="no unified negative/positive labels"):
        get_task("samsum").unified_view()
