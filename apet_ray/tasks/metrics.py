"""The paper's three metrics (paper.md §5), all on a 0-1 scale.

- accuracy for SA, NLI and PI; a prediction of -1 (T5 generated something that is not a
  label word) is simply wrong;
- SQuAD-style token F1 for NQ-Open, max over the gold answers;
- ROUGE-L F-measure for SAMSum and Multi-News, from the ``rouge_score`` package with
  Porter stemming, averaged over examples.
"""

from __future__ import annotations

import collections
import functools
import re
import string
from collections.abc import Sequence

from apet_ray.tasks.registry import Example, Task

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)


def accuracy(predictions: Sequence[int], references: Sequence[int]) -> float:
    _check_lengths(predictions, references)
    return sum(int(p) == int(r) for p, r in zip(predictions, references)) / len(references)


def normalize_answer(text: str) -> str:
    """SQuAD's answer normalisation: lowercase, drop punctuation and a/an/the, squeeze spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def token_f1(prediction: str, gold: str) -> float:
    """Token-overlap F1 of two answers after ``normalize_answer``.

    When either side normalises to nothing the score is 1 if both do and 0 otherwise
    (SQuAD 2.0's rule; SQuAD 1.1 gave 0 even for two empty answers).
    """
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(pred_tokens)
    recall = overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def qa_f1(prediction: str, golds: Sequence[str]) -> float:
    """The best ``token_f1`` of ``prediction`` against any of the gold answers."""
    if isinstance(golds, str):
        golds = (golds,)
    if not golds:
        raise ValueError("a QA example needs at least one gold answer")
    return max(token_f1(prediction, gold) for gold in golds)


def mean_f1(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    _check_lengths(predictions, references)
    return sum(qa_f1(p, golds) for p, golds in zip(predictions, references)) / len(references)


@functools.lru_cache(maxsize=1)
def _rouge_scorer():
    # built once: the scorer sets up its tokenizer and stemmer on construction
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> float:
    """Mean ROUGE-L F-measure; a reference given as several texts scores its best match."""
    _check_lengths(predictions, references)
    scorer = _rouge_scorer()
    total = 0.0
    for prediction, reference in zip(predictions, references):
        if isinstance(reference, str):
            total += scorer.score(reference, prediction)["rougeL"].fmeasure
        else:
            total += scorer.score_multi(list(reference), prediction)["rougeL"].fmeasure
    return total / len(references)


def score(task: Task, predictions: Sequence, references: Sequence) -> float:
    """The task's metric, 0-1.

    ``predictions``: label ids (-1 for an invalid generation) for classification, generated
    strings for QA and SUM. ``references``: the ``Example``s themselves, or label ids /
    lists of gold answers / reference summaries.
    """
    refs = [_reference(task, r) for r in references]
    if task.metric == "accuracy":
        return accuracy(predictions, refs)
    if task.metric == "f1":
        return mean_f1(predictions, refs)
    return rouge_l(predictions, refs)


def _reference(task: Task, ref: object):
    if isinstance(ref, Example):
        if task.is_classification:
            if ref.label is None:
                raise ValueError(f"{task.name}: a classification example without a label")
            return ref.label
        if not ref.targets:
            raise ValueError(f"{task.name}: a generation example without targets")
        return ref.targets if task.type == "qa" else ref.targets[0]
    if task.type == "qa" and isinstance(ref, str):
        return (ref,)
    return ref


def _check_lengths(predictions: Sequence, references: Sequence) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not references:
        raise ValueError("nothing to score: no references")
