"""The Table-2-style table: means and stds over seeds, ratios, labels, files."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
from report_synth import MODELS, put, trial_row

from apet_ray.report.data import method_label, prepare
from apet_ray.report.tables import results_table, write_tables
from apet_ray.results import read_results


def _table(results_dir: Path, score: str = "final", baseline: bool = False) -> pd.DataFrame:
    results, problems = read_results(results_dir)
    assert problems == []
    table = results_table(prepare(results, score))
    return table if baseline else table[table["method"] != "baseline"].reset_index(drop=True)


def test_each_task_and_model_opens_with_its_baseline_row(tmp_path: Path) -> None:
    # the baseline: the larger of random guessing (0.5) and the majority class (0.58)
    put(tmp_path, trial_row("lora-0", final_score=0.80, majority=0.58))
    put(tmp_path, trial_row("lora-1", seed=1, final_score=0.82, majority=0.58))
    put(tmp_path, trial_row("big", model="bert-base", total_params=MODELS["bert-base"], final_score=0.9))
    table = _table(tmp_path, baseline=True)
    rows = table[table["method"] == "baseline"]
    assert list(rows["model"]) == ["bert-small", "bert-base"]  # by size
    assert rows["score_mean_pct"].tolist() == pytest.approx([58.0, 50.0])  # no majority recorded: chance
    assert list(table["method"]) == ["baseline", "lora", "baseline", "lora"]


def test_mean_std_and_ratio_over_seeds(tmp_path: Path) -> None:
    for seed, score in enumerate((0.80, 0.84, 0.86)):
        put(tmp_path, trial_row(f"lora-{seed}", seed=seed, final_score=score, best_score=0.9))
    put(tmp_path, trial_row("ft-0", method="ft", delta_params=MODELS["bert-small"], final_score=0.9))
    table = _table(tmp_path)
    lora = table[table["method"] == "lora"].iloc[0]
    assert lora["score_mean_pct"] == pytest.approx(83.3333333)
    assert lora["score_std_pct"] == pytest.approx(pd.Series([80.0, 84.0, 86.0]).std())  # ddof=1
    assert lora["n_seeds"] == 3
    assert lora["ratio_pct"] == pytest.approx(100 * 294_912 / MODELS["bert-small"])
    ft = table[table["method"] == "ft"].iloc[0]
    assert ft["ratio_pct"] == pytest.approx(100.0) and ft["n_seeds"] == 1 and math.isnan(ft["score_std_pct"])
    assert list(table["method"]) == ["ft", "lora"]  # FT first, as the paper's tables
    best = _table(tmp_path, score="best")
    assert best[best["method"] == "lora"]["score_mean_pct"].iloc[0] == pytest.approx(90.0)


def test_repeated_seed_counts_once_and_errors_are_left_out(tmp_path: Path) -> None:
    put(tmp_path, trial_row("a", seed=0, final_score=0.70, study="e1"))
    put(tmp_path, trial_row("b", seed=0, final_score=0.80, study="e4"))  # same config and seed again
    put(tmp_path, trial_row("c", seed=1, final_score=0.90))
    put(tmp_path, trial_row("d", seed=2, final_score=0.10, status="error"))
    lora = _table(tmp_path).iloc[0]
    assert lora["n_seeds"] == 2
    assert lora["score_mean_pct"] == pytest.approx((75.0 + 90.0) / 2)


def test_rows_split_by_method_label_and_budget(tmp_path: Path) -> None:
    apet = {"method": "apet", "op": "add", "requested_params": 1000, "delta_params": 1000}
    put(tmp_path, trial_row("adj", **apet, distribution="adjacent"))
    put(tmp_path, trial_row("dis", **apet, distribution="discrete"))
    put(tmp_path, trial_row("dis-lora", **{**apet, "delta_params": 294_912, "requested_params": 294_912},
                            distribution="discrete", match="lora"))  # fmt: skip
    table = _table(tmp_path)
    assert list(table["method_label"]) == [
        "APET-Adjacent (add)", "APET-Discrete (add)", "APET-Discrete (add, =LoRA)",
    ]  # fmt: skip


def test_method_labels() -> None:
    assert method_label("lora") == "LoRA"
    assert method_label("ft", None, None, None) == "FT"
    assert method_label("apet", "plugin", "adjacent", "adapter") == "APET-Adjacent (plugin, =Adapter)"
    assert method_label("apet", "concat", float("nan"), None) == "APET (concat)"


def test_written_files(tmp_path: Path) -> None:
    results_dir, out = tmp_path / "r", tmp_path / "out"
    out.mkdir()
    for seed, score in enumerate((0.80, 0.84)):
        put(results_dir, trial_row(f"lora-{seed}", task="mrpc", task_type="PI", seed=seed, final_score=score))
    results, _ = read_results(results_dir)
    _, paths = write_tables(prepare(results), out)
    assert [p.name for p in paths] == ["table.md", "table.csv", "table.tex"]
    md = paths[0].read_text(encoding="utf-8")
    assert "| mrpc | bert-small | LoRA | 294,912 | 1.03% | 82.00 ± 2.83 | 2 |" in md
    tex = paths[2].read_text(encoding="utf-8")
    assert r"82.00 $\pm$ 2.83" in tex and r"1.03\%" in tex and r"\begin{tabular}" in tex
    csv = pd.read_csv(paths[1])
    assert csv[csv["method"] == "lora"]["score_mean_pct"].iloc[0] == pytest.approx(82.0)
