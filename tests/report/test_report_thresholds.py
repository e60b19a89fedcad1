"""Low and high thresholds on hand-made budget sweeps."""

from __future__ import annotations

import pandas as pd
import pytest

from apet_ray.report.thresholds import (
    ft_scores,
    high_threshold,
    low_threshold,
    mean_by_budget,
    threshold_table,
)


def sweep(points: dict[int, list[float]]) -> pd.DataFrame:
    """budget -> one score per seed."""
    rows = [
        {"delta_params": budget, "seed": seed, "score": score}
        for budget, scores in points.items()
        for seed, score in enumerate(scores)
    ]
    return pd.DataFrame(rows)


SWEEP = sweep(
    {
        100: [0.50, 0.52],  # mean 0.51: not above 0.5 + 0.05
        400: [0.54, 0.58],  # mean 0.56: first above random guess + margin -> low threshold
        1600: [0.70, 0.74],  # mean 0.72
        6400: [0.79, 0.79],  # mean 0.79: >= 0.80 - 0.01 -> high threshold
        25600: [0.81, 0.81],
    }
)


def test_mean_by_budget_is_sorted_means() -> None:
    means = mean_by_budget(SWEEP.sample(frac=1.0, random_state=0))
    assert list(means.index) == [100, 400, 1600, 6400, 25600]
    assert means[400] == pytest.approx(0.56)


def test_low_threshold() -> None:
    assert low_threshold(SWEEP, baseline=0.5) == 400
    assert low_threshold(SWEEP, baseline=0.5, margin=0.25) == 6400  # 0.72 is not above 0.75
    assert low_threshold(SWEEP, baseline=0.0) == 100
    assert low_threshold(SWEEP, baseline=0.9) is None


def test_low_threshold_is_strictly_above_and_uses_the_mean_over_seeds() -> None:
    # one seed at 0.70 would pass, but the mean 0.55 is not *above* 0.5 + 0.05
    exact = sweep({100: [0.40, 0.70], 200: [0.60, 0.62]})
    assert low_threshold(exact, baseline=0.5) == 200


def test_high_threshold() -> None:
    assert high_threshold(SWEEP, ft_score=0.80) == 6400
    assert high_threshold(SWEEP, ft_score=0.80, tol=0.09) == 1600
    assert high_threshold(SWEEP, ft_score=0.95) is None
    assert high_threshold(SWEEP, ft_score=None) is None


def test_thresholds_take_the_smallest_budget_even_if_a_larger_one_dips() -> None:
    bumpy = sweep({100: [0.60], 400: [0.52], 1600: [0.80]})
    assert low_threshold(bumpy, baseline=0.5) == 100
    assert high_threshold(bumpy, ft_score=0.80) == 1600


def test_threshold_table_uses_ft_trials_of_the_same_model_and_task() -> None:
    base = {"task": "sst2", "model": "m", "family": "BERT", "total_params": 10**6, "random_guess": 0.5}
    rows = [{**base, "method": "apet", "label": "APET-Discrete (add)", **r} for r in SWEEP.to_dict("records")]
    rows += [{**base, "method": "ft", "label": "FT", "delta_params": 10**6, "seed": s, "score": v}
             for s, v in enumerate((0.79, 0.81))]  # fmt: skip
    rows += [{**base, "model": "other", "method": "ft", "label": "FT", "delta_params": 10**6, "seed": 0,
              "score": 0.99}]  # fmt: skip
    trials = pd.DataFrame(rows)
    assert ft_scores(trials)[("m", "sst2")] == pytest.approx(0.80)
    table = threshold_table(trials)
    assert list(table["label"]) == ["APET-Discrete (add)"]  # FT is the reference, not a line
    row = table.iloc[0]
    assert (row["low_threshold"], row["high_threshold"], row["n_budgets"]) == (400, 6400, 5)
    assert row["ft_score"] == pytest.approx(0.80)
