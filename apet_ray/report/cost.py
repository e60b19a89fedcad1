"""The cost picture practitioners pick a method by: per model and task, every method a point
of score against what it costs -- trainable parameters, training time per 1,000 tokens,
peak memory -- with the Pareto front (no other point both cheaper and better) drawn.
From the trials table alone; a study of one count per method gives one point per method.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from apet_ray.report.data import ReportData, human
from apet_ray.report.plotting import Skip, label_colors, ordered_labels, panel_grid, panel_metric_label, save_figure, suptitle

# (column of the per-method table, axis label): every cost is "lower is better"
COSTS = (("delta_params", "trainable parameters (log scale)"),
         ("s_per_kilotoken", "training time per 1,000 tokens (s)"),
         ("peak_memory_mb", "peak memory (MB)"))


def pareto_front(points: pd.DataFrame, cost: str, score: str = "score") -> pd.DataFrame:
    """The points no other point beats on both: cheaper-or-equal and better (ascending cost)."""
    ordered = points.sort_values([cost, score], ascending=[True, False])
    best, keep = float("-inf"), []
    for index, row in ordered.iterrows():
        if row[score] > best:
            keep.append(index)
            best = row[score]
    return ordered.loc[keep]


def method_points(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per (task, model, label): mean score and costs over seeds."""
    frame = trials.assign(s_per_kilotoken=1000.0 / trials["tokens_per_s"].where(trials["tokens_per_s"] > 0))
    keys = ["task", "model", "total_params", "label", "method_rank"] if "method_rank" in frame else [
        "task", "model", "total_params", "label"]
    return (frame.groupby(keys, dropna=False)
            .agg(score=("score", "mean"), delta_params=("delta_params", "mean"),
                 s_per_kilotoken=("s_per_kilotoken", "mean"), peak_memory_mb=("peak_memory_mb", "mean"),
                 metric=("metric", "first"))
            .reset_index())


def fig_cost(data: ReportData, out_dir: Path) -> list[Path]:
    """Score against parameters, time and memory per method, the Pareto front of each."""
    points = method_points(data.trials)
    panels = list(points.groupby(["task", "model"]))
    if not panels or all(len(group) < 2 for _, group in panels):
        raise Skip("needs 2 or more methods on one model and task")
    labels = ordered_labels(points)
    colors = label_colors(labels)
    fig, axes = panel_grid(len(panels) * len(COSTS), max_cols=len(COSTS))
    for row, ((task, model), group) in enumerate(panels):
        for col, (cost, axis_label) in enumerate(COSTS):
            ax = axes[row * len(COSTS) + col]
            known = group.dropna(subset=[cost])
            for point in known.itertuples():
                ax.scatter(getattr(point, cost), 100 * point.score, color=colors[point.label], label=point.label, s=30)
            front = pareto_front(known, cost)
            ax.step(front[cost], 100 * front["score"], where="post", color="k", linewidth=1, alpha=0.6,
                    label="Pareto front")
            if cost == "delta_params":
                ax.set_xscale("log")
            ax.set_xlabel(axis_label)
            ax.set_ylabel(panel_metric_label(group))
            ax.set_title(f"{task} · {model} ({human(group['total_params'].iloc[0])})", fontsize=9)
            ax.grid(alpha=0.3)
        handles, names = axes[row * len(COSTS)].get_legend_handles_labels()
        axes[row * len(COSTS) + len(COSTS) - 1].legend(handles, names, fontsize=6, loc="lower right")
    suptitle(fig, "Cost — score against trainable parameters, training time and peak memory per method "
                  "(mean over seeds); the line is the Pareto front")
    return save_figure(fig, out_dir, "fig_cost")
