"""Low and high parameter thresholds (E4, Fig. 7), as plain functions.

Given one method's budget sweep on one model and task (trials with ``delta_params`` and
``score``, several seeds per budget):

- low threshold  = the smallest ``delta_params`` whose mean score over seeds exceeds
  ``random guess + margin`` (the paper's definition, §5.3); the *strict* low threshold uses
  the larger of random guessing and the eval split's majority class instead;
- high threshold = the smallest ``delta_params`` whose mean score over seeds is at least
  ``ft_score - tol``, where ``ft_score`` is the mean score of the ``method == "ft"``
  trials of the same model and task.

Margin, tolerance and baseline are defined once, in ``apet_ray/thresholds.py``.

A count tried at several learning rates scores its best one. Either is ``None`` when no
budget in the sweep reaches it. A threshold equal to the smallest budget tried is only an
upper bound on the true one, and one not reached only a lower bound: the table says which
(``*_bound``). Each seed's own threshold is listed too, with an interval over seeds:
the exact range for up to ``EXACT_SEEDS`` seeds, else a bootstrap percentile interval.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from apet_ray.thresholds import HIGH_TOL, LOW_MARGIN, beats_baseline, reaches_ft

__all__ = ["HIGH_TOL", "LOW_MARGIN", "ft_scores", "high_threshold", "interval", "low_threshold", "mean_by_budget",
           "seed_thresholds", "threshold_table"]


def best_by_budget_and_seed(points: pd.DataFrame, score: str = "score") -> pd.Series:
    """Score per (``delta_params``, seed): a count tried at several learning rates (an lr
    ladder) is scored by its best one, so the threshold measures the count, not the lr."""
    keys = ["delta_params", "seed"] if "seed" in points.columns else ["delta_params"]
    return points.groupby(keys)[score].max()


def mean_by_budget(points: pd.DataFrame, score: str = "score") -> pd.Series:
    """Mean score per ``delta_params``, ascending; each seed counts once (at its best lr)."""
    if points.empty:
        return pd.Series(dtype=float)
    per_seed = best_by_budget_and_seed(points, score)
    if per_seed.index.nlevels == 1:
        return per_seed.sort_index()
    return per_seed.groupby(level=0).mean().sort_index()


def low_threshold(
    points: pd.DataFrame, baseline: float, margin: float = LOW_MARGIN, score: str = "score"
) -> int | None:
    """Smallest budget whose mean score exceeds ``baseline + margin``; None if none does."""
    means = mean_by_budget(points, score)
    above = means[[beats_baseline(m, baseline, margin) for m in means]]
    return int(above.index[0]) if len(above) else None


def high_threshold(
    points: pd.DataFrame, ft_score: float | None, tol: float = HIGH_TOL, score: str = "score"
) -> int | None:
    """Smallest budget whose mean score is ≥ ``ft_score - tol``; None if none does or no FT."""
    if ft_score is None or pd.isna(ft_score):
        return None
    means = mean_by_budget(points, score)
    reached = means[[reaches_ft(m, ft_score, tol) for m in means]]
    return int(reached.index[0]) if len(reached) else None


def ft_scores(trials: pd.DataFrame, score: str = "score") -> dict[tuple[str, str], float]:
    """(model, task) -> FT score: mean over seeds of ``method == "ft"`` trials.

    Where a model and task has no FT trial, the trials' own ``ft_score`` column (a reference
    value recorded by the runner) is used if set.
    """
    out: dict[tuple[str, str], float] = {}
    if "ft_score" in trials.columns:
        ref = trials.dropna(subset=["ft_score"]).groupby(["model", "task"])["ft_score"].mean()
        out.update({key: float(v) for key, v in ref.items()})
    ft = trials[trials["method"] == "ft"]
    if not ft.empty:
        measured = ft.groupby(["model", "task", "seed"])[score].mean().groupby(level=[0, 1]).mean()
        out.update({key: float(v) for key, v in measured.items()})
    return out


# the bound a threshold is: the first passing count; at the sweep's smallest count only an
# upper bound; none passing: above the largest count
VALUE, AT_MOST, NOT_REACHED = "value", "at most", "not reached"
EXACT_SEEDS = 5  # up to this many seeds the interval is their range; above, a bootstrap
BOOTSTRAP = (2000, 0.90, 0)  # resamples, coverage, seed of the resampling


def bound(threshold: int | None, budgets: list[int]) -> str:
    if threshold is None:
        return NOT_REACHED
    return AT_MOST if threshold == budgets[0] else VALUE


def seed_thresholds(points: pd.DataFrame, passes, score: str = "score") -> dict[int, int | None]:
    """Each seed's own threshold: its smallest count (at its best lr) that ``passes``."""
    per_seed = best_by_budget_and_seed(points, score)
    if per_seed.index.nlevels == 1:
        return {}
    out = {}
    for seed, scores in per_seed.groupby(level="seed"):
        scores = scores.droplevel("seed").sort_index()
        out[int(seed)] = next((int(c) for c, v in scores.items() if passes(v)), None)
    return out


def interval(values: list[int | None]) -> tuple[float | None, float | None]:
    """Over seeds: (lowest, highest) threshold, or a bootstrap percentile interval of their
    median (on log counts) past ``EXACT_SEEDS`` seeds. A seed that never passes counts as
    infinity: the upper end is then None (above the sweep)."""
    if not values:
        return None, None
    logs = np.array([np.inf if v is None else np.log10(v) for v in values])
    if len(values) <= EXACT_SEEDS:
        lo, hi = logs.min(), logs.max()
    else:
        n, coverage, seed = BOOTSTRAP
        rng = np.random.default_rng(seed)
        medians = np.median(rng.choice(logs, size=(n, len(logs)), replace=True), axis=1)
        lo, hi = np.quantile(medians, [(1 - coverage) / 2, (1 + coverage) / 2], method="lower")
    return (None if np.isinf(lo) else float(round(10 ** lo))), (None if np.isinf(hi) else float(round(10 ** hi)))


def lr_at(points: pd.DataFrame, count: int | None, score: str = "score") -> float | None:
    """The learning rate that won at ``count`` (most often over seeds), when an lr was recorded."""
    if count is None or "lr" not in points.columns:
        return None
    at = points[points["delta_params"] == count]
    keys = ["seed"] if "seed" in at.columns else []
    winners = at.loc[at.groupby(keys)[score].idxmax()] if keys else at.loc[[at[score].idxmax()]]
    return float(winners["lr"].mode().iloc[0])


THRESHOLD_COLUMNS = [
    "task", "model", "family", "total_params", "label", "method", "n_budgets", "min_budget",
    "max_budget", "n_seeds", "random_guess", "baseline", "ft_score",
    "low_threshold", "low_bound", "low_seeds", "low_lo", "low_hi", "lr_at_low",
    "low_threshold_strict", "low_strict_bound",
    "high_threshold", "high_bound", "high_seeds", "high_lo", "high_hi", "lr_at_high",
]  # fmt: skip


def threshold_table(
    trials: pd.DataFrame, margin: float = LOW_MARGIN, tol: float = HIGH_TOL, score: str = "score"
) -> pd.DataFrame:
    """Low and high thresholds of every (task, model, method label) line except FT.

    ``low_threshold`` beats random guessing (the paper's definition); ``low_threshold_strict``
    beats the ``baseline`` column (chance or the majority class, the larger). Per-seed
    thresholds (``*_seeds``, ``;``-separated, ``>max`` where a seed never passed) and their
    interval (``*_lo``, ``*_hi``; an empty ``*_hi`` is above the sweep) beside each. Expects
    the prepared trials (``label`` and ``family`` columns, see ``report.data``).
    """
    rows = []
    # the high threshold needs an FT reference that learned: FT at its baseline is no target
    ft = ft_scores(trials[trials["learned"]] if "learned" in trials else trials, score)
    for (task, model, label), group in trials[trials["method"] != "ft"].groupby(["task", "model", "label"]):
        budgets = sorted(int(b) for b in group["delta_params"].unique())
        ft_score = ft.get((model, task))
        random_guess = float(group["random_guess"].mean())
        base = float(group["baseline"].mean()) if "baseline" in group else random_guess
        low = low_threshold(group, random_guess, margin, score)
        strict = low_threshold(group, base, margin, score)
        high = high_threshold(group, ft_score, tol, score)
        low_seeds = seed_thresholds(group, lambda v: beats_baseline(v, random_guess, margin), score)
        high_seeds = (seed_thresholds(group, lambda v: reaches_ft(v, ft_score, tol), score)
                      if ft_score is not None and not pd.isna(ft_score) else {})
        row = {"task": task, "model": model, "family": group["family"].iloc[0],
               "total_params": int(group["total_params"].iloc[0]), "label": label, "method": group["method"].iloc[0],
               "n_budgets": len(budgets), "min_budget": budgets[0], "max_budget": budgets[-1],
               "n_seeds": group["seed"].nunique() if "seed" in group else 1,
               "random_guess": random_guess, "baseline": base, "ft_score": ft_score,
               "low_threshold_strict": strict, "low_strict_bound": bound(strict, budgets)}
        for name, value, seeds in (("low", low, low_seeds), ("high", high, high_seeds)):
            lo, hi = interval(list(seeds.values()))
            row.update({f"{name}_threshold": value, f"{name}_bound": bound(value, budgets),
                        f"{name}_seeds": ";".join(">max" if v is None else str(v) for _, v in sorted(seeds.items())),
                        f"{name}_lo": lo, f"{name}_hi": hi, f"lr_at_{name}": lr_at(group, value, score)})
        rows.append(row)
    table = pd.DataFrame(rows, columns=THRESHOLD_COLUMNS)
    # keep the thresholds as nullable integers: a float 7.9e3 would print as 7900.0
    for col in ("low_threshold", "low_threshold_strict", "high_threshold", "low_lo", "low_hi", "high_lo", "high_hi"):
        table[col] = table[col].astype("Int64")
    return table
