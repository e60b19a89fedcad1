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


def sweep_table(points: dict[int, list[float]], lr: dict[int, list[float]] | None = None, **extra) -> pd.DataFrame:
    base = {"task": "mrpc", "model": "m", "family": "BERT", "total_params": 10**6, "random_guess": 0.5,
            "baseline": 0.684, "method": "apet", "label": "APET-Discrete (add)", **extra}
    rows = [{**base, "delta_params": b, "seed": s, "score": v, "lr": (lr or {}).get(b, [1e-3] * len(vs))[s]}
            for b, vs in points.items() for s, v in enumerate(vs)]
    rows += [{**base, "method": "ft", "label": "FT", "delta_params": 10**6, "seed": s, "score": 0.85, "lr": 3e-5}
             for s in (0, 1)]
    return pd.DataFrame(rows)


def test_two_seeds_that_disagree_give_an_interval_covering_both() -> None:
    # seed 0 beats chance + 5 points from 1,000 on, seed 1 only from 10,000; FT 0.85, tol 0.01
    table = threshold_table(sweep_table({100: [0.50, 0.50], 1000: [0.60, 0.52], 10000: [0.84, 0.58],
                                         100000: [0.85, 0.85]}))
    row = table.iloc[0]
    assert row["low_seeds"] == "1000;10000" and (row["low_lo"], row["low_hi"]) == (1000, 10000)
    assert row["low_lo"] <= row["low_threshold"] <= row["low_hi"] and row["low_bound"] == "value"
    assert row["high_seeds"] == "10000;100000" and (row["high_lo"], row["high_hi"]) == (10000, 100000)
    assert row["n_seeds"] == 2


def test_a_threshold_at_the_grids_edge_is_a_bound_not_a_value() -> None:
    table = threshold_table(sweep_table({100: [0.60, 0.62], 1000: [0.66, 0.70], 10000: [0.75, 0.76]}))
    row = table.iloc[0]
    assert (row["low_threshold"], row["low_bound"]) == (100, "at most")  # already above chance at the smallest count
    assert pd.isna(row["high_threshold"]) and row["high_bound"] == "not reached"  # FT 0.85 never within 0.01
    assert row["high_seeds"] == ">max;>max" and pd.isna(row["high_lo"]) and pd.isna(row["high_hi"])


def test_the_low_threshold_beats_random_guessing_and_the_strict_one_the_majority_class() -> None:
    # MRPC: chance 50 %, majority class 68.4 %: 0.60 beats chance + 5 but not the majority
    table = threshold_table(sweep_table({100: [0.50, 0.50], 1000: [0.60, 0.60], 10000: [0.80, 0.80]}))
    row = table.iloc[0]
    assert (row["low_threshold"], row["low_threshold_strict"]) == (1000, 10000)


def test_a_count_tried_at_several_lrs_is_scored_by_its_best_and_the_winning_lr_is_named() -> None:
    rows = sweep_table({100: [0.50], 1000: [0.52], 10000: [0.84]})
    rows = pd.concat([rows, sweep_table({1000: [0.61], 10000: [0.70]}, lr={1000: [1e-2], 10000: [1e-2]})
                      .query("method != 'ft'")])
    row = threshold_table(rows).iloc[0]
    assert row["low_threshold"] == 1000 and row["lr_at_low"] == 1e-2  # the 1e-2 run beat chance there
    assert row["high_threshold"] == 10000 and row["lr_at_high"] == 1e-3


def test_past_a_few_seeds_the_interval_is_a_bootstrap_of_the_median() -> None:
    from apet_ray.report.thresholds import interval

    lo, hi = interval([100, 100, 1000, 1000, 1000, 1000, 10000])
    assert 100 <= lo <= 1000 <= hi <= 10000
    assert interval([100, None]) == (100, None)  # a seed that never passed: above the sweep
