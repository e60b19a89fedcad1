"""Task files: a YAML/JSON description of a user's task, read and checked before anything runs."""

from pathlib import Path

import pytest

from apet_ray.errors import UserError
from apet_ray.tasks import custom_task, load_examples, read_task_file

ROWS = [("the invoice is wrong", "billing"), ("app crashes on start", "tech"), ("need a quote", "sales")] * 10


def write(tmp_path: Path, yaml: str, rows=ROWS) -> Path:
    lines = ["message,team", *[f'"{m}",{t}' for m, t in rows]]
    (tmp_path / "tickets.csv").write_text("\n".join(lines) + "\n")
    path = tmp_path / "tickets.yaml"
    path.write_text(yaml)
    return path


GOOD = "name: tickets\ntrain: tickets.csv\ntext_columns: [message]\nlabel_column: team\ntype: classification\n"


def test_a_three_class_task_file_becomes_a_task_with_its_own_name_and_labels(tmp_path):
    name, kwargs = read_task_file(write(tmp_path, GOOD + "label_words: [money, bug, deal]\nmax_input_len: 32\n"))
    task = custom_task(**kwargs, name=name)
    assert task.name == "tickets" and task.type == "sa" and task.num_labels == 3
    assert task.label_values == ("billing", "sales", "tech") and task.label_words == ("money", "bug", "deal")
    assert task.max_input_len == 32 and task.random_guess == pytest.approx(1 / 3)
    train, held_out = load_examples(task, "train"), load_examples(task, "eval")
    assert len(train) + len(held_out) == 30 and {e.label for e in train} == {0, 1, 2}


@pytest.mark.parametrize("yaml,rows,message", [
    (GOOD.replace("tickets.csv", "missing.csv"), ROWS, "data file not found"),
    (GOOD.replace("label_column: team", "label_column: queue"), ROWS, "queue"),
    (GOOD + "metric: bleu\n", ROWS, "unknown metric"),
    (GOOD + "colour: red\n", ROWS, "unknown key"),
    (GOOD + "label_words: [a, b]\n", ROWS, "2 label words for 3 labels"),
    (GOOD + "max_input_len: -4\n", ROWS, "max_input_len"),
    (GOOD.replace("type: classification", "type: poetry"), ROWS, "unknown task type"),
    ("train: tickets.csv\nlabel_column: team\n", ROWS, "needs 'text_columns'"),
    (GOOD, [("only one team", "billing")] * 5, "at least two distinct values"),
    ("- just\n- a list\n", ROWS, "a mapping of keys"),
    ("name: [unclosed\n", ROWS, "not valid YAML"),
])
def test_bad_task_files_are_refused_in_one_line(tmp_path, yaml, rows, message):
    with pytest.raises(UserError, match=message) as info:
        name, kwargs = read_task_file(write(tmp_path, yaml, rows))
        custom_task(**kwargs, name=name)
    assert "\n" not in str(info.value)


def test_an_empty_split_is_refused(tmp_path):
    (tmp_path / "dev.csv").write_text("message,team\n")
    with pytest.raises(UserError, match="empty|no rows"):
        name, kwargs = read_task_file(write(tmp_path, GOOD + "eval: dev.csv\n"))
        custom_task(**kwargs, name=name)
