"""Low and high parameter thresholds (E4, Fig. 7), as plain functions.

Given one method's budget sweep on one model and task (trials with ``delta_params`` and
``score``, several seeds per budget):

- low threshold  = the smallest ``delta_params`` whose mean score over seeds exceeds
  ``baseline + margin`` (the baseline: the larger of random guessing and the eval split's
  majority class);
- high threshold = the smallest ``delta_params`` whose mean score over seeds is at least
  ``ft_score - tol``, where ``ft_score`` is the mean score of the ``method == "ft"``
  trials of the same model and task.

Margin, tolerance and baseline are defined once, in ``apet_ray/thresholds.py``.

Either is ``None`` when no budget in the sweep reaches it. Note that a threshold equal to
the smallest budget tried is only an upper bound on the true one.
"""

from __future__ import annotations

import pandas as pd

from apet_ray.thresholds import HIGH_TOL, LOW_MARGIN, beats_baseline, reaches_ft

__all__ = ["HIGH_TOL", "LOW_MARGIN", "ft_scores", "high_threshold", "low_threshold", "mean_by_budget", "threshold_table"]


def mean_by_budget(points: pd.DataFrame, score: str = "score") -> pd.Series:
    """Mean score per ``delta_params``, ascending; each seed counts once when seeds are given."""
    if points.empty:
        return pd.Series(dtype=float)
    if "seed" in points.columns:
        per_seed = points.groupby(["delta_params", "seed"])[score].mean()
        return per_seed.groupby(level=0).mean().sort_index()
    return points.groupby("delta_params")[score].mean().sort_index()


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


THRESHOLD_COLUMNS = [
    "task", "model", "family", "total_params", "label", "method", "n_budgets", "min_budget",
    "max_budget", "random_guess", "baseline", "ft_score", "low_threshold", "high_threshold",
]  # fmt: skip


def threshold_table(
    trials: pd.DataFrame, margin: float = LOW_MARGIN, tol: float = HIGH_TOL, score: str = "score"
) -> pd.DataFrame:
    """Low and high thresholds of every (task, model, method label) line except FT.

    Expects the prepared trials (``label`` and ``family`` columns, see ``report.data``).
    """
    rows = []
    # the high threshold needs an FT reference that learned: FT at its baseline is no target
    ft = ft_scores(trials[trials["learned"]] if "learned" in trials else trials, score)
    for (task, model, label), group in trials[trials["method"] != "ft"].groupby(["task", "model", "label"]):
        budgets = sorted(group["delta_params"].unique())
        ft_score = ft.get((model, task))
        random_guess = float(group["random_guess"].mean())
        base = float(group["baseline"].mean()) if "baseline" in group else random_guess
        rows.append(
            {
                "task": task,
                "model": model,
                "family": group["family"].iloc[0],
                "total_params": int(group["total_params"].iloc[0]),
                "label": label,
                "method": group["method"].iloc[0],
                "n_budgets": len(budgets),
                "min_budget": int(budgets[0]),
                "max_budget": int(budgets[-1]),
                "random_guess": random_guess,
                "baseline": base,
                "ft_score": ft_score,
                "low_threshold": low_threshold(group, base, margin, score),
                "high_threshold": high_threshold(group, ft_score, tol, score),
            }
        )
    table = pd.DataFrame(rows, columns=THRESHOLD_COLUMNS)
    # keep the thresholds as nullable integers: a float 7.9e3 would print as 7900.0
    for col in ("low_threshold", "high_threshold"):
        table[col] = table[col].astype("Int64")
    return table
