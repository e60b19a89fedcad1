"""The paper's two parameter thresholds (E4, Fig. 7) and "did not learn", defined once.

Scores are fractions. The *baseline* of a classification trial is the larger of random
guessing and the eval split's majority-class rate: on a split that is 58 % positive, a
model that always says "positive" beats random guessing by 8 points without learning
anything, so beating chance alone proves nothing.

- low threshold: the fewest trainable parameters whose score exceeds baseline + LOW_MARGIN;
- high threshold: the fewest whose score is at least FT - HIGH_TOL;
- a trial *did not learn* when its score is not above baseline + LEARN_MARGIN.

The threshold search (``search.py``), the report's threshold table and Fig. 7
(``report/thresholds.py``) and the findings all use these.
"""

from __future__ import annotations

import math

LOW_MARGIN = 0.05  # above the baseline by 5 points
HIGH_TOL = 0.01  # within 1 point of full fine-tuning
LEARN_MARGIN = 0.02  # a trial within 2 points of its baseline learned nothing we can judge


def baseline(random_guess: float, majority: float | None) -> float:
    """What a model that learned nothing scores: chance, or always the most common label."""
    if majority is None or (isinstance(majority, float) and math.isnan(majority)):
        return random_guess
    return max(random_guess, majority)


def beats_baseline(score: float, base: float, margin: float = LOW_MARGIN) -> bool:
    return score > base + margin


def reaches_ft(score: float, ft_score: float, tol: float = HIGH_TOL) -> bool:
    return score >= ft_score - tol


def learned(score: float, base: float) -> bool:
    return score > base + LEARN_MARGIN
