"""Drawing helpers shared by the figures: panel grids, titles, saving PNG + SVG, colours,
the paper's ordering of labels and tasks. Built on ``matplotlib.figure.Figure`` directly
(rendered by Agg for PNG), which never touches pyplot's global backend or state."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from apet_ray.atomic import replacing
from apet_ray.report.data import TASK_TYPE_ORDER, ReportData, metric_label


class Skip(Exception):
    """The results hold no data for this figure; the message says what is missing."""


def panel_grid(n: int, width: float = 4.6, height: float = 3.6, max_cols: int = 3) -> tuple[Figure, list[Axes]]:
    cols = min(n, max_cols)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(width * cols, height * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def suptitle(fig, text: str) -> None:
    """A suptitle wrapped to the figure's width (single-panel figures are narrow)."""
    import textwrap

    chars = max(30, int(fig.get_figwidth() * 9))  # about 9 characters per inch at the default size
    fig.suptitle(textwrap.fill(text, chars))


def save_figure(fig: Figure, out_dir: Path, name: str) -> list[Path]:
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.svg"]
    # each file whole or not at all (atomic.replacing), like every other output
    with replacing(paths[0]) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")  # keep legends placed outside the axes
    # the constrained layout was solved while drawing the PNG; freeze it rather than solve it
    # again for the SVG (layout is about half the drawing time)
    fig.set_layout_engine("none")
    # text stays text in the SVG (editable, searchable) instead of becoming glyph outlines
    with matplotlib.rc_context({"svg.fonttype": "none"}), replacing(paths[1]) as tmp:
        fig.savefig(tmp, format="svg", bbox_inches="tight")
    return paths


def label_colors(labels: list[str]) -> dict[str, str]:
    """A colour per label: matplotlib's 10-colour cycle, or tab20 past 10 labels (the embedded
    structure ablation has 11), so no two labels of one figure share a colour up to 20."""
    if len(labels) <= 10:
        return {label: f"C{i}" for i, label in enumerate(labels)}
    palette = matplotlib.colormaps["tab20"]
    return {label: matplotlib.colors.to_hex(palette(i % 20)) for i, label in enumerate(labels)}


def ordered_labels(df: pd.DataFrame) -> list[str]:
    """Labels in the paper's method order (PET methods, then APET variants)."""
    order = df.drop_duplicates("label").sort_values(["method_rank", "label"]) if "method_rank" in df else df
    return list(dict.fromkeys(order["label"]))


def task_sort_key(task: str, data: ReportData) -> tuple[int, str, str]:
    """Sort key putting tasks in the paper's type order (SA, NLI, PI, QA, SUM)."""
    task_type = data.task_types.get(task, "")
    return (TASK_TYPE_ORDER.get(task_type, len(TASK_TYPE_ORDER)), task_type, task)


def panel_metric_label(df: pd.DataFrame) -> str:
    metrics = sorted(set(df["metric"]) - {""})
    return metric_label(metrics[0]) if len(metrics) == 1 else "score (%)"
