"""Relative transfer: a transfer score over the target's in-task score on the same label set."""

from __future__ import annotations

from pathlib import Path

import pytest
from report_synth import put, trial_row

from apet_ray.report.data import prepare
from apet_ray.results import read_results


def _row(source: str, target: str, score: float) -> dict[str, object]:
    return {"study": "e5", "model": "bert-small", "method": "lora", "op": None, "distribution": None, "seed": 0,
            "source_task": source, "target_task": target, "score": score, "in_task_score": None, "relative": None}


def _relative(results_dir: Path) -> dict[tuple[str, str], float]:
    results, problems = read_results(results_dir)
    assert problems == []
    data = prepare(results)
    return {(r.source_task, r.target_task): r.relative_value for r in data.transfer.itertuples()}


def test_relative_transfer_divides_by_the_targets_unified_self_transfer(tmp_path: Path) -> None:
    # mnli in-task: 0.60 on its three labels, 0.80 through the unified two; sst2 -> mnli scores 0.64
    put(tmp_path, trial_row("sst2", task="sst2", final_score=0.90),
        transfer=[_row("sst2", "mnli", 0.64), _row("sst2", "sst2", 0.90)])
    put(tmp_path, trial_row("mnli", task="mnli", task_type="NLI", final_score=0.60),
        transfer=[_row("mnli", "mnli", 0.80), _row("mnli", "sst2", 0.45)])
    relative = _relative(tmp_path)
    assert relative["sst2", "mnli"] == pytest.approx(0.64 / 0.80)  # not 0.64 / 0.60
    assert relative["mnli", "sst2"] == pytest.approx(0.45 / 0.90)
    assert relative["mnli", "mnli"] == pytest.approx(1.0)


def test_without_a_self_transfer_row_the_trials_score_is_used_and_noted(tmp_path: Path) -> None:
    put(tmp_path, trial_row("sst2", task="sst2", final_score=0.90), transfer=[_row("sst2", "rte", 0.55)])
    put(tmp_path, trial_row("rte", task="rte", task_type="NLI", final_score=0.50))
    results, _ = read_results(tmp_path)
    data = prepare(results)
    assert data.transfer["relative_value"].tolist() == [pytest.approx(0.55 / 0.50)]
    assert any("own label set" in note for note in data.notes)


def test_lr_search_trials_stay_out_of_the_report_and_their_cost_is_noted(tmp_path: Path) -> None:
    put(tmp_path, trial_row("chosen", final_score=0.80, lr=3e-3))
    put(tmp_path, trial_row("probe-1", final_score=0.55, lr=1e-4, status="search", steps_run=20, wall_time_s=30.0))
    put(tmp_path, trial_row("probe-2", final_score=0.80, lr=3e-3, status="search", steps_run=40, wall_time_s=60.0))
    results, _ = read_results(tmp_path)
    data = prepare(results)
    assert data.trials["trial_id"].tolist() == ["chosen"]
    assert any("2 learning-rate search trial(s)" in n and "60 training steps" in n and "1.5 min" in n for n in data.notes)
