"""T5's text-to-text view of every task (paper.md §4: labels are words).

The source names the task and each input column, as T5's own GLUE preprocessing does:

    sst2 sentence: a gripping film        -> positive
    rte sentence1: ... sentence2: ...     -> not_entailment
    nq_open question: who wrote hamlet    -> William Shakespeare
    samsum dialogue: ...                  -> <the summary>

A generation maps back to a label id with ``decode_generated``; anything that is not exactly
one of the label words is -1, which scores as wrong (an untrained T5 sits at 0, paper.md §5).
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


def label_token_ids(task: Task, tokenizer) -> list[list[int]]:
    """Each label word as the content token ids (no special tokens) a model must generate."""
    special = set(tokenizer.all_special_ids)
    return [[t for t in tokenizer(word)["input_ids"] if t not in special] for word in task.label_words]


def decode_generated(task: Task, ids: list[int], tokenizer, label_ids: list[list[int]] | None = None) -> int | str:
    """One generation as ``metrics.score`` expects it: for classification the label id whose
    word's token ids were generated exactly, up to the end-of-sequence token (-1 for
    anything else, which scores as wrong); for generation the stripped text.

    Labels are compared as token ids, not decoded text: decoding can add or drop spaces
    (WordPiece joins sub-words), token ids cannot. Pass ``label_ids`` (``label_token_ids``)
    to skip re-tokenising the label words for every generation.
    """
    if not task.is_classification:
        return tokenizer.decode(ids, skip_special_tokens=True).strip()
    label_ids = label_ids if label_ids is not None else label_token_ids(task, tokenizer)
    special = set(tokenizer.all_special_ids)
    content = []
    for t in ids:
        if t == tokenizer.eos_token_id or (t == tokenizer.sep_token_id and tokenizer.eos_token_id is None):
            break
        if t not in special:
            content.append(t)
    return label_ids.index(content) if content in label_ids else -1
