"""The Table-2-style results table: task x model x method, mean ± std over seeds.

One row per (task, model, method label, realised delta count). Scores are shown in
percent; the ratio is delta_params / total_params in percent. The std is the sample
standard deviation (ddof=1) over seeds, blank with a single seed.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from apet_ray.atomic import write_text
from apet_ray.delta.methods import order_of
from apet_ray.report.data import TASK_TYPE_ORDER, ReportData, seed_stats

_KEYS = ["task_type", "task", "metric", "model", "total_params", "family", "method", "label", "delta_params"]

CSV_COLUMNS = [
    "task_type", "task", "metric", "model", "total_params", "method", "method_label",
    "delta_params", "ratio_pct", "score_mean_pct", "score_std_pct", "n_seeds",
]  # fmt: skip


def results_table(data: ReportData) -> pd.DataFrame:
    """The table as numbers (columns ``CSV_COLUMNS``), sorted as the paper orders it."""
    trials = data.trials
    if trials.empty:
        return pd.DataFrame(columns=CSV_COLUMNS)
    stats = pd.concat([seed_stats(trials, _KEYS), _baseline_rows(trials)], ignore_index=True)
    stats["ratio_pct"] = 100.0 * stats["delta_params"] / stats["total_params"]
    stats["score_mean_pct"] = 100.0 * stats["mean"]
    stats["score_std_pct"] = 100.0 * stats["std"]
    stats["method_label"] = stats["label"]
    stats["_type"] = stats["task_type"].map(TASK_TYPE_ORDER).fillna(len(TASK_TYPE_ORDER))
    stats["_method"] = [-1 if m == BASELINE else order_of(m) for m in stats["method"]]
    stats = stats.sort_values(
        ["_type", "task_type", "task", "family", "total_params", "model", "_method", "label", "delta_params"]
    )
    return stats[CSV_COLUMNS].reset_index(drop=True)


BASELINE = "baseline"


def _baseline_rows(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per task and model: what a model that learned nothing scores (the larger of
    random guessing and the majority class), so every score reads against it."""
    keys = [k for k in _KEYS if k not in ("method", "label", "delta_params")]
    rows = trials.groupby(keys, dropna=False)["baseline"].mean().rename("mean").reset_index()
    return rows.assign(method=BASELINE, label="Baseline (chance or majority class)", delta_params=0,
                       std=float("nan"), n_seeds=1)


def _fmt_count(n: float) -> str:
    return f"{int(n):,}"


def _fmt_ratio(pct: float) -> str:
    return f"{pct:.3g}%"


def _fmt_score(mean: float, std: float) -> str:
    return f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f} ± {std:.2f}"


def _display_rows(table: pd.DataFrame) -> list[list[str]]:
    return [
        [
            r.task,
            r.model,
            r.method_label,
            _fmt_count(r.delta_params),
            _fmt_ratio(r.ratio_pct),
            _fmt_score(r.score_mean_pct, r.score_std_pct),
            str(int(r.n_seeds)),
        ]
        for r in table.itertuples(index=False)
    ]


HEADER = ["Task", "Model", "Method", "Δ params", "Ratio", "Score (%)", "Seeds"]


def to_markdown(table: pd.DataFrame, score_column: str) -> str:
    lines = [
        "# Results table",
        "",
        f"Mean ± sample std over seeds of `{score_column}` (in %), per task, model and method. "
        "Δ params is the realised trainable delta count; Ratio = Δ params / backbone parameters.",
        "",
    ]
    if table.empty:
        return "\n".join(lines + ["_No usable trials._", ""])
    lines.append("| " + " | ".join(HEADER) + " |")
    lines.append("|" + "|".join(["---", "---", "---", "---:", "---:", "---:", "---:"]) + "|")
    for row in _display_rows(table):
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    return "\n".join(lines) + "\n"


_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}"}  # fmt: skip


def _tex(text: str) -> str:
    text = "".join(_TEX_ESCAPES.get(ch, ch) for ch in text)
    return text.replace("±", r"$\pm$").replace("Δ", r"$\Delta$")


def to_latex(table: pd.DataFrame, score_column: str) -> str:
    """A booktabs tabular (needs ``\\usepackage{booktabs}``)."""
    lines = [
        f"% mean $\\pm$ sample std over seeds of {_tex(score_column)} (in \\%)",
        r"\begin{tabular}{lllrrrr}",
        r"\toprule",
        " & ".join(_tex(h) for h in HEADER) + r" \\",
        r"\midrule",
    ]
    for row in _display_rows(table):
        lines.append(" & ".join(_tex(cell) for cell in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", ""]
    return "\n".join(lines)


def write_tables(data: ReportData, out_dir: Path) -> tuple[pd.DataFrame, list[Path]]:
    """Write table.md, table.csv and table.tex; return the numeric table and the paths."""
    table = results_table(data)
    paths = [out_dir / "table.md", out_dir / "table.csv", out_dir / "table.tex"]
    write_text(paths[0], to_markdown(table, data.score_column))
    write_text(paths[1], table.to_csv(index=False))
    write_text(paths[2], to_latex(table, data.score_column))
    return table, paths
