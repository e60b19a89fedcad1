"""T5's text-to-text view of every task (SPEC §4: labels are words).

The source names the task and each input column, as T5's own GLUE preprocessing does:

    sst2 sentence: a gripping film        -> positive
    rte sentence1: ... sentence2: ...     -> not_entailment
    nq_open question: who wrote hamlet    -> William Shakespeare
    samsum dialogue: ...                  -> <the summary>

Generated text maps back to a label id with ``parse_label``; anything that is not exactly
one of the label words is -1, which scores as wrong (an untrained T5 sits at 0, SPEC §5).
"""

from __future__ import annotations

from apet_ray.tasks.registry import Example, Task


def to_text(task: Task, example: Example) -> tuple[str, str]:
    """(source, target) strings for T5.

    The target is the label word for classification, the first gold answer for QA (every
    gold answer still counts when scoring) and the summary for SUM.
    """
    if len(example.inputs) != len(task.text_columns):
        raise ValueError(f"{task.name}: expected {len(task.text_columns)} inputs, got {len(example.inputs)}")
    fields = " ".join(f"{column}: {text.strip()}" for column, text in zip(task.text_columns, example.inputs))
    source = f"{task.name} {fields}"
    if task.is_classification:
        if example.label is None:
            raise ValueError(f"{task.name}: a classification example without a label")
        return source, task.label_words[example.label]
    if not example.targets:
        raise ValueError(f"{task.name}: a generation example without targets")
    return source, example.targets[0]


def parse_label(task: Task, generated: str) -> int:
    """The label id whose word T5 generated (after strip + lowercase), else -1."""
    if not task.is_classification:
        raise ValueError(f"{task.name} is a {task.type} task: it has no labels to parse")
    word = generated.strip().lower()
    for label, label_word in enumerate(task.label_words):
        if word == label_word.strip().lower():
            return label
    return -1


def decode_prediction(task: Task, generated: str) -> int | str:
    """What ``metrics.score`` expects for one generation: a label id, or the stripped text."""
    return parse_label(task, generated) if task.is_classification else generated.strip()
