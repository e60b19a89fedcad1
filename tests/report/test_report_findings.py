"""Verdicts on the paper's four findings: supported, not supported, not enough data."""

from __future__ import annotations

from pathlib import Path

from report_synth import MODELS, build_study, put, trial_row

from apet_ray.report.data import prepare
from apet_ray.report.findings import (
    NOT_ENOUGH,
    NOT_SUPPORTED,
    SUPPORTED,
    finding1,
    finding4,
    judge,
    to_markdown,
)
from apet_ray.results import read_results


def _data(results_dir: Path):
    results, problems = read_results(results_dir)
    assert problems == []
    return prepare(results)


def test_all_supported_on_a_study_built_to_support_them(study_dir: Path) -> None:
    findings = judge(_data(study_dir))
    assert [f.verdict for f in findings] == [SUPPORTED] * 4
    text = to_markdown(findings)
    assert "bert-small (28.8M) worst gap to FT 16.0" in text  # the numbers behind the verdict
    assert "Rule:" in text


def test_one_model_size_is_not_enough_data_for_any_finding(tmp_path: Path) -> None:
    findings = judge(_data(build_study(tmp_path, models=("bert-small",), seeds=(0,))))
    assert [f.verdict for f in findings] == [NOT_ENOUGH] * 4
    assert to_markdown(findings).count(f"**{NOT_ENOUGH}**") == 4


def test_no_10b_model_means_the_reach_ft_part_is_not_judged(tmp_path: Path) -> None:
    finding = finding1(_data(build_study(tmp_path, models=("bert-small", "bert-large"), seeds=(0,))))
    gap, reach = finding.parts
    assert gap.verdict == SUPPORTED
    assert reach.verdict == NOT_ENOUGH
    assert finding.verdict == NOT_ENOUGH


def test_pet_without_ft_is_not_enough_for_finding1(tmp_path: Path) -> None:
    for model in ("bert-small", "bert-large"):
        put(tmp_path, trial_row(f"{model}-lora", model=model, total_params=MODELS[model]))
    assert finding1(_data(tmp_path)).verdict == NOT_ENOUGH


def test_gaps_growing_with_scale_is_not_supported(tmp_path: Path) -> None:
    for model, ft, lora, prompt in (("bert-small", 0.80, 0.79, 0.78), ("bert-xxl", 0.90, 0.70, 0.60)):
        size = {"model": model, "total_params": MODELS[model]}
        put(tmp_path, trial_row(f"{model}-ft", **size, method="ft", delta_params=MODELS[model], final_score=ft))
        put(tmp_path, trial_row(f"{model}-lora", **size, final_score=lora))
        put(tmp_path, trial_row(f"{model}-prompt", **size, method="prompt", delta_params=76_800, final_score=prompt))
    finding = finding1(_data(tmp_path))
    assert finding.verdict == NOT_SUPPORTED
    assert "does not hold" in finding.parts[0].evidence[0]


def test_transfer_better_across_types_is_not_supported(tmp_path: Path) -> None:
    for model in ("bert-small", "bert-large"):
        rows = [
            {"study": "e5", "model": model, "method": "lora", "seed": 0, "source_task": "sst2",
             "target_task": target, "score": score, "in_task_score": 0.8}
            for target, score in (("imdb", 0.4), ("rte", 0.7), ("mrpc", 0.7))
        ]  # fmt: skip
        put(tmp_path, trial_row(f"{model}-src", model=model, total_params=MODELS[model]), transfer=rows)
    finding = finding4(_data(tmp_path))
    assert finding.verdict == NOT_SUPPORTED
    assert "within-type 50.0% over 1 pairs, cross-type 87.5% over 2 pairs" in finding.parts[0].evidence[0]


def test_trials_at_the_majority_class_give_not_enough_data_never_a_verdict(tmp_path: Path) -> None:
    # every trial of a full synthetic study sat at the majority class (58 %): nothing learned,
    # so no finding may be judged from it -- and the report must say which trials
    import pyarrow as pa
    import pyarrow.parquet as pq

    build_study(tmp_path)
    for path in (tmp_path / "trials").glob("*.parquet"):
        table = pq.read_table(path)
        for column in ("final_score", "best_score", "majority"):
            table = table.set_column(table.schema.get_field_index(column), column,
                                     pa.array([0.58] * table.num_rows, pa.float64()))
        pq.write_table(table, path)
    data = _data(tmp_path)
    assert not data.trials["learned"].any()
    findings = judge(data)
    assert [f.verdict for f in findings] == [NOT_ENOUGH] * 4
    text = to_markdown(findings)
    assert "did not learn" in text and "LoRA (bert-small, sst2, seed 0)" in text
    assert any("did not learn" in note for note in data.notes)


def test_a_high_threshold_never_reached_counts_as_above_the_sweep(tmp_path: Path) -> None:
    # the small model reaches FT at 1,000 parameters; the large one never does within 10,000:
    # that is evidence against "the high threshold falls", not a missing value
    from apet_ray.report.findings import finding3

    for model, scores, ft in (("bert-small", (0.62, 0.90, 0.90), 0.90), ("bert-large", (0.62, 0.70, 0.80), 0.95)):
        base = {"model": model, "total_params": MODELS[model]}
        put(tmp_path, trial_row(f"{model}-ft", **base, method="ft", delta_params=MODELS[model], final_score=ft))
        for budget, score in zip((100, 1000, 10_000), scores):
            put(tmp_path, trial_row(f"{model}-{budget}", **base, method="apet", op="add", distribution="discrete",
                                    requested_params=budget, delta_params=budget, final_score=score))
    high = finding3(_data(tmp_path)).parts[0]
    assert high.verdict == NOT_SUPPORTED
    assert any("1,000 on bert-small" in e and "above 10,000 on bert-large" in e for e in high.evidence)


def test_no_usable_trial_still_gives_a_report(tmp_path: Path) -> None:
    put(tmp_path, trial_row("broken", status="error", final_score=float("nan"), best_score=float("nan")))
    findings = judge(_data(tmp_path))
    assert [f.verdict for f in findings] == [NOT_ENOUGH] * 4


def test_finding3_judges_the_high_threshold_on_the_mean_over_tasks_and_the_low_one_across_tasks(tmp_path: Path) -> None:
    # sst2: the high threshold falls 10,000 -> 100; rte: it rises 1,000 -> 10,000. The geometric
    # mean over the two tasks falls (3,162 -> 1,000): supported on the mean, rte listed as not holding
    from apet_ray.report.findings import SUPPORTED, finding3

    curves = {("bert-small", "sst2"): (0.62, 0.70, 0.90), ("bert-large", "sst2"): (0.90, 0.90, 0.90),
              ("bert-small", "rte"): (0.62, 0.90, 0.90), ("bert-large", "rte"): (0.62, 0.70, 0.90)}
    for (model, task), scores in curves.items():
        base = {"model": model, "task": task, "total_params": MODELS[model]}
        put(tmp_path, trial_row(f"{model}-{task}-ft", **base, method="ft", delta_params=MODELS[model], final_score=0.90))
        for budget, score in zip((100, 1000, 10_000), scores):
            put(tmp_path, trial_row(f"{model}-{task}-{budget}", **base, method="apet", op="add", distribution="discrete",
                                    requested_params=budget, delta_params=budget, final_score=score))
    high, _, same = finding3(_data(tmp_path)).parts
    assert high.verdict == SUPPORTED
    assert any("mean over 2 task(s)" in e and "holds" in e for e in high.evidence)
    assert any(e.strip().startswith("rte:") and "does not hold" in e for e in high.evidence)
    # low thresholds (chance 0.5 + 5 points): 100 on every task of both models -> the same, across tasks
    assert same.verdict == SUPPORTED and any("on 2 task(s)" in e for e in same.evidence)


def test_finding1_judges_the_gaps_on_the_mean_over_tasks_with_each_task_listed(tmp_path: Path) -> None:
    # sst2: the worst gap to FT closes (10 -> 0 points); rte: it widens a little (2 -> 4 points).
    # On the mean over the two tasks the gap shrinks (6 -> 2) and the spread too: supported
    from apet_ray.report.findings import SUPPORTED, finding1

    scores = {("bert-small", "sst2"): (0.90, 0.80, 0.85), ("bert-large", "sst2"): (0.92, 0.92, 0.92),
              ("bert-small", "rte"): (0.70, 0.68, 0.70), ("bert-large", "rte"): (0.74, 0.70, 0.74)}
    for (model, task), (ft, bitfit, lora) in scores.items():
        base = {"model": model, "task": task, "total_params": MODELS[model], "task_type": "SA" if task == "sst2" else "NLI"}
        for method, score in (("ft", ft), ("bitfit", bitfit), ("lora", lora)):
            put(tmp_path, trial_row(f"{model}-{task}-{method}", **base, method=method, final_score=score))
    gap = finding1(_data(tmp_path)).parts[0]
    assert gap.verdict == SUPPORTED
    assert any("mean over 2 task(s)" in e and "holds" in e for e in gap.evidence)
    assert any(e.strip().startswith("rte") and "does not hold" in e for e in gap.evidence)
