"""The cost figure: every method a point of score against its costs, the Pareto front drawn."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from report_synth import put, trial_row

from apet_ray.report.cost import method_points, pareto_front
from apet_ray.report.data import prepare
from apet_ray.report.figures import fig_cost
from apet_ray.results import read_results


def test_the_pareto_front_keeps_only_points_no_other_beats_on_both():
    points = pd.DataFrame({"label": list("abcde"), "cost": [1, 2, 3, 4, 5], "score": [0.5, 0.7, 0.6, 0.8, 0.8]})
    assert list(pareto_front(points, "cost")["label"]) == ["a", "b", "d"]  # c is beaten by b, e by d


def test_the_cost_figure_draws_one_point_per_method_from_the_trials_table(tmp_path: Path):
    for i, (method, params, score, speed, memory) in enumerate([("ft", 10**6, 0.80, 1000.0, 3000.0),
                                                                  ("lora", 7000, 0.79, 4000.0, 1500.0),
                                                                  ("bitfit", 1600, 0.70, 5000.0, 1400.0)]):
        put(tmp_path, trial_row(f"t{i}", method=method, delta_params=params, final_score=score, tokens_per_s=speed,
                                peak_memory_mb=memory))
    data = prepare(read_results(tmp_path)[0])
    points = method_points(data.trials)
    assert len(points) == 3 and points.set_index("label").loc["LoRA", "s_per_kilotoken"] == 0.25
    paths = fig_cost(data, tmp_path)
    assert [p.name for p in paths] == ["fig_cost.png", "fig_cost.svg"] and all(p.stat().st_size > 0 for p in paths)
