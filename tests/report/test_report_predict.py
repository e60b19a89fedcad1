"""apet-ray predict: thresholds of a size not measured, from a log-log line over the sizes that were."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from report_synth import MODELS, put, trial_row

from apet_ray.cli import main
from apet_ray.report.data import prepare
from apet_ray.report.predict import predict
from apet_ray.report.thresholds import threshold_table
from apet_ray.results import read_results

BUDGETS = (100, 1000, 10_000, 100_000)


def sweep(root: Path, model: str, scores: tuple[float, ...], seeds=(0,), ft: float = 0.90) -> None:
    base = {"model": model, "total_params": MODELS[model], "family": "bert"}
    for seed in seeds:
        put(root, trial_row(f"{model}-ft-{seed}", **base, method="ft", delta_params=MODELS[model], seed=seed,
                            final_score=ft))
        for budget, score in zip(BUDGETS, scores):
            put(root, trial_row(f"{model}-{budget}-{seed}", **base, method="apet", op="add", distribution="discrete",
                                requested_params=budget, delta_params=budget, seed=seed,
                                final_score=score + 0.001 * seed))


def table(root: Path):
    return threshold_table(prepare(read_results(root)[0]).trials)


def test_two_sizes_give_the_line_through_them(tmp_path):
    # high threshold 100,000 on bert-small, 1,000 on bert-large: bert-base lies on the line between
    sweep(tmp_path, "bert-small", (0.50, 0.60, 0.80, 0.90))
    sweep(tmp_path, "bert-large", (0.50, 0.90, 0.90, 0.90))
    high = next(p for p in predict(table(tmp_path), MODELS["bert-base"]) if p.threshold == "high")
    slope = (math.log10(1000) - math.log10(100_000)) / (math.log10(MODELS["bert-large"]) - math.log10(MODELS["bert-small"]))
    expected = 10 ** (5 + slope * (math.log10(MODELS["bert-base"]) - math.log10(MODELS["bert-small"])))
    assert high.value == pytest.approx(expected) and high.lo <= high.value <= high.hi
    assert "2 sizes" in high.basis and [s["model"] for s in high.sizes] == ["bert-small", "bert-large"]


def test_three_sizes_are_a_least_squares_fit_with_an_interval(tmp_path):
    sweep(tmp_path, "bert-small", (0.50, 0.60, 0.80, 0.90))
    sweep(tmp_path, "bert-base", (0.50, 0.60, 0.90, 0.90))
    sweep(tmp_path, "bert-large", (0.50, 0.90, 0.90, 0.90))
    high = next(p for p in predict(table(tmp_path), 1e9) if p.threshold == "high")
    assert "least-squares fit over 3 sizes" in high.basis and high.lo < high.value < high.hi
    assert high.value < 1000 and "extrapolation" not in high.note  # the fall goes on past bert-large


def test_one_size_needs_a_slope_and_a_bound_is_left_out(tmp_path):
    sweep(tmp_path, "bert-small", (0.60, 0.70, 0.80, 0.90))  # low threshold at the smallest count: a bound
    low, high = predict(table(tmp_path), MODELS["bert-large"])
    assert low.value is None and "a bound only" in low.note
    assert high.value is None and "needs 2 or more sizes" in high.note
    high = predict(table(tmp_path), MODELS["bert-large"], {"high": -1.0})[1]
    assert high.value == pytest.approx(100_000 * MODELS["bert-small"] / MODELS["bert-large"])


def test_the_command_prints_json_and_refuses_a_folder_without_sweeps(tmp_path, capsys):
    sweep(tmp_path, "bert-small", (0.50, 0.60, 0.80, 0.90), seeds=(0, 1))
    sweep(tmp_path, "bert-large", (0.50, 0.90, 0.90, 0.90), seeds=(0, 1))
    assert main(["predict", str(tmp_path), "--params", "109M", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["threshold"] for r in rows} == {"low", "high"} and all(r["params"] == 109e6 for r in rows)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["predict", str(empty), "--params", "1e8"]) == 2
    assert "no budget sweep" in capsys.readouterr().err
