"""Metrics against hand-worked SQuAD examples and the rouge_score package itself."""

from __future__ import annotations

import pytest
from rouge_score import rouge_scorer

from apet_ray.tasks import Example, get_task, mean_f1, normalize_answer, qa_f1, rouge_l, score, token_f1
from apet_ray.tasks.metrics import accuracy


@pytest.mark.parametrize("raw, normalised", [
    ("The Beatles", "beatles"),
    ("  a  Tale of Two   Cities!", "tale of two cities"),
    ("U.S.A.", "usa"),
    ("An apple, the pear; a plum.", "apple pear plum"),
    ("Theatre anthem", "theatre anthem"),  # articles only as whole words
    ("", ""),
])
def test_normalize_answer(raw, normalised):
    assert normalize_answer(raw) == normalised


def test_token_f1_hand_worked():
    # pred "the big red dog" -> big red dog (3); gold "a red dog barked" -> red dog barked (3)
    # overlap 2: precision 2/3, recall 2/3, F1 2/3
    assert token_f1("the big red dog", "a red dog barked") == pytest.approx(2 / 3)
    # pred "paris paris" (2), gold "paris" (1): overlap min(2,1)=1, P=1/2, R=1, F1=2/3
    assert token_f1("paris paris", "Paris") == pytest.approx(2 / 3)
    assert token_f1("The Eiffel Tower.", "eiffel tower") == 1.0
    assert token_f1("London", "Paris") == 0.0
    assert token_f1("", "") == 1.0
    assert token_f1("the", "Paris") == 0.0  # normalises to nothing


def test_qa_f1_takes_the_best_gold():
    golds = ("14 December 1972 UTC", "December 1972")
    # vs second gold: exact -> 1.0
    assert qa_f1("december 1972", golds) == 1.0
    # "1972": vs gold 1 P=1 R=1/4 -> 0.4; vs gold 2 P=1 R=1/2 -> 2/3
    assert qa_f1("1972", golds) == pytest.approx(2 / 3)
    assert mean_f1(["1972", "nope"], [golds, ("yes",)]) == pytest.approx(1 / 3)


def test_rouge_l_matches_rouge_score():
    preds = ["the cat sat on the mat", "police killed the gunman", "", "Amanda baked cookies"]
    refs = ["a cat was sitting on the mat", "the gunman was shot dead by police", "nothing here",
            "Amanda baked cookies and will bring Jerry some tomorrow."]
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    expected = sum(scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(preds, refs)) / len(refs)
    assert rouge_l(preds, refs) == pytest.approx(expected)
    assert 0.0 < rouge_l(preds, refs) < 1.0
    assert rouge_l(["same words here"], ["same words here"]) == pytest.approx(1.0)


def test_accuracy_counts_invalid_generations_as_wrong():
    assert accuracy([1, -1, 0, 1], [1, 1, 0, 1]) == 0.75


def test_score_dispatches_on_the_task():
    sst2 = get_task("sst2")
    examples = [Example(inputs=("x",), label=1), Example(inputs=("y",), label=0)]
    assert score(sst2, [1, -1], examples) == 0.5
    assert score(sst2, [1, 0], [1, 0]) == 1.0

    nq = get_task("nq_open")
    qa_examples = [Example(inputs=("q",), targets=("Paris", "City of Paris"))]
    assert score(nq, ["the city of paris"], qa_examples) == 1.0
    assert score(nq, ["paris"], ["Paris"]) == 1.0  # a bare string is one gold answer

    samsum = get_task("samsum")
    sum_examples = [Example(inputs=("d",), targets=("Amanda baked cookies.",))]
    assert score(samsum, ["Amanda baked cookies."], sum_examples) == pytest.approx(1.0)
    assert score(samsum, ["x"], ["Amanda baked cookies."]) == 0.0


def test_score_refuses_mismatched_lengths():
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        score(get_task("rte"), [0, 1], [0])
    with pytest.raises(ValueError, match="nothing to score"):
        score(get_task("rte"), [], [])
