"""The paper's figures (3, 5, 6, 7, 9), drawn from the results tables alone.

Each ``figN_*`` function takes the prepared ``ReportData`` and an output folder, writes
``<name>.png`` and ``<name>.svg`` and returns their paths, or raises ``Skip`` with the
reason when the results hold no data for it (drawing helpers: ``plotting``). Scores are
drawn in percent.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from apet_ray.delta.methods import label_of, order_of
from apet_ray.report.cost import fig_cost
from apet_ray.report.data import ReportData, human, pet_default, seed_stats, structure_frame, transfer_matrix
from apet_ray.report.plotting import (Skip, label_colors, ordered_labels, panel_grid, panel_metric_label, save_figure,
                                      suptitle, task_sort_key)
from apet_ray.report.thresholds import best_by_budget_and_seed, mean_by_budget, threshold_table


BASELINE_LABEL = "baseline (chance or majority class)"


def draw_baselines(ax, trials: pd.DataFrame, model: str, task: str) -> None:
    """The baseline and FT of one model and task as horizontal lines (when known)."""
    at = trials[(trials["model"] == model) & (trials["task"] == task)]
    if len(at):
        ax.axhline(100 * float(at["baseline"].mean()), color="0.4", linestyle=":", label=BASELINE_LABEL)
    ft = at[at["method"] == "ft"]
    if len(ft):
        ax.axhline(100 * float(ft["score"].mean()), color="k", linestyle="--", linewidth=1, label="FT")


# ---------------------------------------------------------------- Fig. 3


def task_average(stats: pd.DataFrame) -> list[tuple[tuple[str, str], pd.DataFrame]]:
    """The paper's view of Fig. 3: per model kind (the ``family`` column), the mean over tasks
    of each task's seed mean.

    Only tasks that have every (model, method) point of their kind are averaged, so each
    point of a line stands on the same tasks; a kind needs two such tasks.
    """
    panels = []
    for kind, group in stats.groupby("family", sort=True):
        points = group[["model", "label"]].drop_duplicates()
        complete = [task for task, g in group.groupby("task")
                    if len(g[["model", "label"]].drop_duplicates()) == len(points)]
        if len(complete) < 2:
            continue
        keys = ["model", "total_params", "method", "method_rank", "label"]
        mean = group[group["task"].isin(complete)].groupby(keys, sort=False)["mean"].mean().reset_index()
        mean["std"] = float("nan")  # spread over tasks is not noise: no error bars
        metrics = sorted(set(group["metric"]))
        mean["metric"] = metrics[0] if len(metrics) == 1 else ""  # mixed metrics: "score (%)"
        panels.append(((f"mean of {len(complete)} tasks", kind), mean))
    return panels


def fig3_scaling(data: ReportData, out_dir: Path) -> list[Path]:
    """Score vs backbone size per PET method, FT dashed: first the paper's panel per kind
    (mean over tasks), then one panel per task and kind."""
    pet = pet_default(data.trials)
    if pet.empty or not (pet["method"] != "ft").any():
        raise Skip("no PET trials at their default configuration (requested_params null)")
    stats = seed_stats(pet, ["task", "family", "model", "total_params", "method", "method_rank", "label", "metric"])
    panels = []
    for key, group in stats.groupby(["task", "family"], sort=True):
        sizes = group[group["method"] != "ft"].groupby("label")["total_params"].nunique()
        if len(sizes) and sizes.max() >= 2:
            panels.append((key, group))
    if not panels:
        raise Skip("needs one PET method on at least 2 model sizes of the same task")
    panels.sort(key=lambda kv: (task_sort_key(kv[0][0], data), kv[0]))
    with_sizes = {key for key, _ in panels}
    panels = task_average(stats[[key in with_sizes for key in zip(stats["task"], stats["family"])]]) + panels
    colors = label_colors(ordered_labels(stats[stats["method"] != "ft"]))
    fig, axes = panel_grid(len(panels))
    for ax, ((task, kind), group) in zip(axes, panels):
        for label in ordered_labels(group[group["method"] != "ft"]):
            line = group[group["label"] == label].sort_values("total_params")
            ax.errorbar(
                line["total_params"], 100 * line["mean"], yerr=100 * line["std"].fillna(0),
                marker="o", capsize=3, color=colors[label], label=label,
            )  # fmt: skip
        ft = group[group["method"] == "ft"].sort_values("total_params")
        if not ft.empty:
            ax.plot(ft["total_params"], 100 * ft["mean"], "k--", marker="s", label="FT")
        if task in set(data.trials["task"]):  # a task's panel (not the mean over tasks): its baseline per size
            at = data.trials[(data.trials["task"] == task) & (data.trials["family"] == kind)]
            base = at.groupby("total_params")["baseline"].mean().sort_index()
            ax.plot(base.index, 100 * base.values, color="0.4", linestyle=":", label=BASELINE_LABEL)
        sizes = group.drop_duplicates("total_params").sort_values("total_params")
        ax.set_xscale("log")
        ax.set_xticks(
            sizes["total_params"].tolist(),
            labels=[f"{human(n)}\n{m.split('/')[-1][:16]}" for n, m in zip(sizes["total_params"], sizes["model"])],
            fontsize=7,
        )
        ax.minorticks_off()
        ax.set_xlabel("backbone parameters (log scale)")
        ax.set_ylabel(panel_metric_label(group))
        ax.set_title(f"{task} ({kind})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    suptitle(fig, "Fig. 3 — PET methods vs model scale (per task: mean ± std over seeds; "
                "\"mean of N tasks\": the paper's per-family average)")
    return save_figure(fig, out_dir, "fig3_scaling")


# ---------------------------------------------------------------- Fig. 5


def fig5_structure(data: ReportData, out_dir: Path) -> list[Path]:
    """Grouped bars: PET vs APET-Adjacent vs APET-Discrete at equal count, per task and model."""
    frame = structure_frame(data)
    if frame.empty:
        raise Skip("needs APET trials that match a PET method's count (column match)")
    keys = ["task", "family", "total_params", "model", "metric", "group", "structure"]
    stats = seed_stats(frame, keys + ["delta_params"])
    # one bar per structure and group: average over budgets if a structure has several
    stats = stats.groupby(keys, as_index=False).agg(
        mean=("mean", "mean"), std=("std", "mean"), delta=("delta_params", "mean")
    )
    structures = ["PET"] + sorted(set(stats["structure"]) - {"PET"})
    colors = dict(zip(structures, ["0.55"] + [f"C{i}" for i in range(10)]))
    # only panels with APET bars: a PET-only panel compares nothing
    with_apet = stats[stats["structure"] != "PET"][["task", "model"]].drop_duplicates()
    stats = stats.merge(with_apet, on=["task", "model"])
    panels = sorted(
        stats.groupby(["task", "family", "total_params", "model"]), key=lambda kv: (task_sort_key(kv[0][0], data), kv[0])
    )
    fig, axes = panel_grid(len(panels))
    for ax, ((task, _kind, _size, model), group) in zip(axes, panels):
        groups = sorted(set(group["group"]), key=order_of)
        present = [s for s in structures if s in set(group["structure"])]
        width = 0.8 / len(present)
        for j, structure in enumerate(present):
            bars = group[group["structure"] == structure].set_index("group").reindex(groups)
            x = np.arange(len(groups)) + (j - (len(present) - 1) / 2) * width
            ax.bar(
                x, 100 * bars["mean"], width, yerr=100 * bars["std"].fillna(0), capsize=2,
                color=colors[structure], label=structure,
            )  # fmt: skip
        deltas = group.groupby("group")["delta"].mean()
        ax.set_xticks(range(len(groups)), labels=[f"={label_of(g)}\n{human(deltas[g])}" for g in groups])
        draw_baselines(ax, data.trials, model, task)
        # bars start near the lowest score or baseline, not at 0: the differences are the point
        at = data.trials[(data.trials["model"] == model) & (data.trials["task"] == task)]
        low = min(float((100 * (group["mean"] - group["std"].fillna(0))).min()), 100 * float(at["baseline"].min()))
        ax.set_ylim(bottom=max(0.0, 5 * math.floor((low - 5) / 5)))
        ax.set_xlabel("matched PET method and its trainable-parameter count")
        ax.set_ylabel(panel_metric_label(group))
        ax.set_title(f"{task} · {model}")
        ax.grid(axis="y", alpha=0.3)
    handles = [Patch(color=colors[s], label=s) for s in structures]
    handles += [Line2D([], [], color="0.4", linestyle=":", label=BASELINE_LABEL),
                Line2D([], [], color="k", linestyle="--", linewidth=1, label="FT")]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 2))
    suptitle(fig, "Fig. 5 — module structure at equal parameter count (mean ± std over seeds; y axis cut)")
    return save_figure(fig, out_dir, "fig5_structure")


# ---------------------------------------------------------------- Fig. 6


MAX_CONVERGENCE_PAIRS = 3  # per panel; more Adjacent/Discrete pairs make the panel unreadable


def _convergence_pairs(group: pd.DataFrame) -> list[tuple[str, str, int]]:
    """(op, match, delta) configs with curves of both distributions, longest curves first."""
    sized = group.groupby(["op", "match", "delta_params", "distribution"]).size().unstack("distribution")
    if not {"adjacent", "discrete"} <= set(sized.columns):
        return []
    sized = sized.dropna(subset=["adjacent", "discrete"])
    points = (sized["adjacent"] + sized["discrete"]).rename("n").reset_index()
    points = points.sort_values(["n", "delta_params"], ascending=[False, False])
    return [(r.op, r.match, int(r.delta_params)) for r in points.itertuples(index=False)]


def fig6_convergence(data: ReportData, out_dir: Path) -> list[Path]:
    """Score vs step, mean over seeds: APET-Adjacent (solid) vs APET-Discrete (dashed) at equal count.

    One panel per task and model; at most ``MAX_CONVERGENCE_PAIRS`` configs (op, match,
    count) per panel, those with the most evaluation points. Vertical lines: mean steps
    to converge of each line.
    """
    curves = data.curves[data.curves["method"] == "apet"]
    if curves.empty:
        raise Skip("no training curves of APET trials")
    panels = []
    for key, group in curves.groupby(["task", "total_params", "model"], sort=True, dropna=False):
        pairs = _convergence_pairs(group)
        if pairs:
            panels.append((key, group, pairs))
    if not panels:
        raise Skip("needs curves of APET-Adjacent and APET-Discrete trials with the same op, match and count")
    panels.sort(key=lambda p: (task_sort_key(p[0][0], data), p[0]))
    trials = data.trials.set_index("trial_id")
    style = {"adjacent": "-", "discrete": "--"}
    fig, axes = panel_grid(len(panels))
    for ax, ((task, _size, model), group, pairs) in zip(axes, panels):
        handles = []
        for i, (op, match, delta) in enumerate(pairs[:MAX_CONVERGENCE_PAIRS]):
            color = f"C{i}"
            name = f"{op or '?'}{', =' + label_of(match) if match else ''} · {human(delta)} params"
            handles.append(Patch(color=color, label=name))
            for dist in ("adjacent", "discrete"):
                rows = group[(group["op"] == op) & (group["match"] == match)
                             & (group["delta_params"] == delta) & (group["distribution"] == dist)]  # fmt: skip
                mean = rows.groupby(["step", "seed"])["score"].mean().groupby(level=0).mean().sort_index()
                ax.plot(mean.index, 100 * mean.values, style[dist], color=color)
                ids = [t for t in rows["trial_id"].unique() if t in trials.index]
                steps = trials.loc[ids, "steps_to_converge"].dropna() if ids else pd.Series(dtype=float)
                if len(steps):
                    ax.axvline(float(steps.mean()), color=color, linestyle=style[dist], linewidth=0.9, alpha=0.6)
        handles += [
            Line2D([], [], color="k", linestyle="-", label="APET-Adjacent"),
            Line2D([], [], color="k", linestyle="--", label="APET-Discrete"),
            Line2D([], [], color="k", linewidth=0.9, alpha=0.6, label="thin vertical: steps to converge"),
        ]
        if len(pairs) > MAX_CONVERGENCE_PAIRS:
            handles.append(Patch(color="none", label=f"({len(pairs) - MAX_CONVERGENCE_PAIRS} more configs not drawn)"))
        ax.legend(handles=handles, fontsize=7, loc="lower right")
        ax.set_xlabel("training step")
        ax.set_ylabel(panel_metric_label(group))
        ax.set_title(f"{task} · {model}")
        ax.grid(alpha=0.3)
    suptitle(fig, "Fig. 6 — convergence of APET-Adjacent vs APET-Discrete at equal count (mean over seeds)")
    return save_figure(fig, out_dir, "fig6_convergence")


# ---------------------------------------------------------------- Fig. 7


def fig7_params(data: ReportData, out_dir: Path) -> list[Path]:
    """Score vs delta count per method; random-guess and FT lines; thresholds marked."""
    table = threshold_table(data.trials, data.margin, data.tol)
    lines = table[table["n_budgets"] >= 2]
    if lines.empty:
        raise Skip("needs a method trained at 2 or more budgets on one model and task")
    trials = data.trials
    panels = sorted(
        lines.groupby(["task", "family", "total_params", "model"]), key=lambda kv: (task_sort_key(kv[0][0], data), kv[0])
    )
    labels = ordered_labels(trials[trials["label"].isin(set(lines["label"]))])
    colors = label_colors(labels)
    fig, axes = panel_grid(len(panels))
    for ax, ((task, _kind, _size, model), group) in zip(axes, panels):
        panel_trials = trials[(trials["task"] == task) & (trials["model"] == model)]
        for row in group.set_index("label").loc[[lb for lb in labels if lb in set(group["label"])]].itertuples():
            points = panel_trials[panel_trials["label"] == row.Index]
            mean = mean_by_budget(points)
            std = best_by_budget_and_seed(points).groupby(level=0).std().reindex(mean.index)
            color = colors[row.Index]
            ax.errorbar(mean.index, 100 * mean.values, yerr=100 * std.fillna(0).values, marker="o",
                        markersize=4, capsize=2, color=color, label=row.Index)  # fmt: skip
            for lo, hi in ((row.low_lo, row.low_hi), (row.high_lo, row.high_hi)):
                if not pd.isna(lo) and (pd.isna(hi) or hi > lo):  # seeds disagree: their interval as a band
                    ax.axvspan(lo, mean.index.max() if pd.isna(hi) else hi, color=color, alpha=0.08, linewidth=0)
            for threshold, marker in ((row.low_threshold, "v"), (row.high_threshold, "^")):
                if not pd.isna(threshold):
                    ax.plot([threshold], [100 * mean[threshold]], marker=marker, markersize=12,
                            markerfacecolor="none", markeredgecolor=color, markeredgewidth=2, linestyle="")  # fmt: skip
        chance = float(group["random_guess"].mean())
        ax.axhline(100 * chance, color="0.6", linestyle="-.", label="random guess")
        ax.axhline(100 * (chance + data.margin), color="tab:red", linewidth=0.8, alpha=0.6,
                   label=f"low bar: random guess + {100 * data.margin:g}")
        ax.axhline(100 * float(group["baseline"].mean()), color="0.4", linestyle=":", label=BASELINE_LABEL)
        ft = group["ft_score"].dropna()
        if len(ft):
            ax.axhline(100 * float(ft.iloc[0]), color="k", linestyle="--", label="FT")
            ax.axhline(100 * (float(ft.iloc[0]) - data.tol), color="tab:green", linewidth=0.8, alpha=0.6,
                       label=f"high bar: FT − {100 * data.tol:g}")
        handles, _ = ax.get_legend_handles_labels()
        handles += [
            Line2D([], [], marker="v", markersize=9, markerfacecolor="none", markeredgecolor="k", linestyle="",
                   label=f"low threshold (> random guess + {100 * data.margin:g})"),
            Line2D([], [], marker="^", markersize=9, markerfacecolor="none", markeredgecolor="k", linestyle="",
                   label=f"high threshold (≥ FT − {100 * data.tol:g})"),
        ]  # fmt: skip
        ax.legend(handles=handles, fontsize=7, loc="lower right")
        ax.set_xscale("log")
        ax.set_xlabel("trainable delta parameters (log scale)")
        ax.set_ylabel(panel_metric_label(panel_trials))
        ax.set_title(f"{task} · {model} ({human(group['total_params'].iloc[0])})")
        ax.grid(alpha=0.3)
    suptitle(fig, "Fig. 7 — score vs number of trainable parameters (mean ± std over seeds; bands: thresholds' "
                  "range over seeds)")
    return save_figure(fig, out_dir, "fig7_params")


# ---------------------------------------------------------------- Fig. 9


def _task_order(tasks: set[str], data: ReportData) -> list[str]:
    return sorted(tasks, key=lambda t: task_sort_key(t, data))


def fig9_transfer(data: ReportData, out_dir: Path) -> list[Path]:
    """Heatmap of relative transfer (transfer score / in-task score), source rows x target columns."""
    transfer = data.transfer.dropna(subset=["relative_value"])
    if transfer.empty:
        raise Skip("no transfer rows with a known in-task score")
    sizes = data.trials.drop_duplicates("model").set_index("model")["total_params"]
    transfer = transfer.assign(size=transfer["model"].map(sizes).fillna(0))
    panels = list(transfer.groupby(["size", "model", "label"], sort=True))
    n_sources = max(g["source_task"].nunique() for _, g in panels)
    n_targets = max(g["target_task"].nunique() for _, g in panels)
    fig, axes = panel_grid(len(panels), width=0.6 * n_targets + 3.4, height=0.5 * n_sources + 2.4, max_cols=2)
    vmax = max(100.0, 100 * float(transfer["relative_value"].max()))
    for ax, ((_size, model, label), group) in zip(axes, panels):
        matrix = transfer_matrix(group)
        sources = _task_order(set(matrix.index), data)
        targets = _task_order(set(matrix.columns), data)
        matrix = 100 * matrix.reindex(index=sources, columns=targets)
        image = ax.imshow(matrix.values, cmap="viridis", vmin=0, vmax=vmax, aspect="auto")
        for i in range(len(sources)):
            for j in range(len(targets)):
                value = matrix.values[i, j]
                if not np.isnan(value):
                    ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=8,
                            color="white" if value < 0.6 * vmax else "black")  # fmt: skip
        tick = [f"{t} [{data.task_types.get(t) or '?'}]" for t in targets]
        ax.set_xticks(range(len(targets)), labels=tick, rotation=40, ha="right", fontsize=8)
        ax.set_yticks(range(len(sources)), labels=[f"{t} [{data.task_types.get(t) or '?'}]" for t in sources],
                      fontsize=8)  # fmt: skip
        ax.set_xlabel("target task [type]")
        ax.set_ylabel("source task (trained on) [type]")
        ax.set_title(f"{model} · {label}")
        fig.colorbar(image, ax=ax, label="relative transfer (% of in-task score)")
    suptitle(fig, "Fig. 9 — zero-shot transfer relative to in-task score (mean over seeds)")
    return save_figure(fig, out_dir, "fig9_transfer")


FIGURES: dict[str, Callable[[ReportData, Path], list[Path]]] = {
    "fig3_scaling": fig3_scaling,
    "fig5_structure": fig5_structure,
    "fig6_convergence": fig6_convergence,
    "fig7_params": fig7_params,
    "fig9_transfer": fig9_transfer,
    "fig_cost": fig_cost,
}
