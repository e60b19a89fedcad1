"""T5 text-to-text: sources name the task and columns; label words round-trip."""

from __future__ import annotations

import pytest

from apet_ray.models import load_tokenizer
from apet_ray.tasks import TASKS, Example, decode_generated, get_task, to_text

CLASSIFICATION = [name for name, task in TASKS.items() if task.is_classification]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("minilm")


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text)["input_ids"][1:]  # as generated: no leading [CLS], ends in [SEP] (eos)


def _example(task, label):
    return Example(inputs=tuple(f"text {i}" for i in range(len(task.text_columns))), label=label)


@pytest.mark.parametrize("name", CLASSIFICATION)
def test_round_trip_every_label(name, tokenizer):
    task = get_task(name)
    for label in range(task.num_labels):
        source, target = to_text(task, _example(task, label))
        assert source.startswith(f"{name} {task.text_columns[0]}: text 0")
        assert decode_generated(task, _ids(tokenizer, target), tokenizer) == label
        assert decode_generated(task, _ids(tokenizer, f"  {target.upper()}\n"), tokenizer) == label  # uncased vocabulary
        assert decode_generated(task, _ids(tokenizer, target) + _ids(tokenizer, "junk after eos"), tokenizer) == label


@pytest.mark.parametrize("name", CLASSIFICATION)
def test_anything_else_is_invalid(name, tokenizer):
    task = get_task(name)
    for junk in ["", "maybe", task.label_words[0] + "s", " ".join(task.label_words), "<pad>"]:
        assert decode_generated(task, _ids(tokenizer, junk), tokenizer) == -1


def test_sources_and_targets():
    assert to_text(get_task("sst2"), Example(inputs=("a gripping film ",), label=1)) == (
        "sst2 sentence: a gripping film", "positive")
    assert to_text(get_task("rte"), Example(inputs=("A man sleeps.", "Someone rests."), label=0)) == (
        "rte sentence1: A man sleeps. sentence2: Someone rests.", "entailment")
    assert to_text(get_task("mnli"), Example(inputs=("p", "h"), label=1)) == (
        "mnli premise: p hypothesis: h", "neutral")
    assert to_text(get_task("nq_open"), Example(inputs=("who wrote hamlet",),
                                                  targets=("William Shakespeare", "Shakespeare"))) == (
        "nq_open question: who wrote hamlet", "William Shakespeare")
    assert to_text(get_task("samsum"), Example(inputs=("A: hi\r\nB: hello",), targets=("They greet.",))) == (
        "samsum dialogue: A: hi\r\nB: hello", "They greet.")


def test_generation_predictions_are_stripped_text(tokenizer):
    assert decode_generated(get_task("nq_open"), _ids(tokenizer, " Paris \n"), tokenizer) == "paris"


def test_wrong_number_of_inputs_is_a_bug():
    with pytest.raises(ValueError, match="expected 2 inputs"):
        to_text(get_task("rte"), Example(inputs=("only one",), label=0))
