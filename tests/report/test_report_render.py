"""make_report and `apet-ray report` end to end, on hand-made results."""

from __future__ import annotations

from pathlib import Path

import pytest
from report_synth import MODELS, put, trial_row

from apet_ray.cli import main
from apet_ray.errors import UserError
from apet_ray.report import make_report
from apet_ray.report.figures import FIGURES

AXIS_LABELS = {
    "fig3_scaling": ["backbone parameters (log scale)", "accuracy (%)", "FT"],
    "fig5_structure": ["matched PET method and its trainable-parameter count", "APET-Discrete (add)"],
    "fig6_convergence": ["training step", "steps to converge", "APET-Adjacent"],
    "fig7_params": ["trainable delta parameters (log scale)", "baseline (chance or majority class)", "low threshold"],
    "fig9_transfer": ["target task [type]", "source task (trained on) [type]", "relative transfer"],
    "fig_cost": ["trainable parameters (log scale)", "training time per 1,000 tokens (s)", "peak memory (MB)", "Pareto front"],
}


@pytest.fixture(scope="module")
def full_report(study_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    return make_report(study_dir, tmp_path_factory.mktemp("report"))


def test_every_figure_drawn_with_labelled_axes(full_report) -> None:
    assert full_report.skipped == {}
    assert sorted(full_report.figures) == sorted(FIGURES)
    for name, paths in full_report.figures.items():
        assert [p.suffix for p in paths] == [".png", ".svg"]
        assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        svg = paths[1].read_text(encoding="utf-8")
        for text in AXIS_LABELS[name]:
            assert text in svg, f"{name}: no {text!r}"


def test_index_links_everything(full_report) -> None:
    index = full_report.index.read_text(encoding="utf-8")
    for name in ("table.md", "table.csv", "table.tex", "findings.md", "fig3_scaling.png", "fig9_transfer.svg"):
        assert f"({name})" in index
        assert (full_report.out_dir / name).is_file()
    assert "None: every result file was read." in index
    assert index.count("**supported**") == 4


def _small_study(root: Path) -> Path:
    """LoRA and FT on two sizes of one task: enough for Fig. 3 only."""
    for model in ("bert-small", "bert-large"):
        for seed in (0, 1):
            size = {"model": model, "total_params": MODELS[model], "seed": seed}
            put(root, trial_row(f"{model}-lora-{seed}", **size, final_score=0.7 + 0.01 * seed), curves=False)
            put(root, trial_row(f"{model}-ft-{seed}", **size, method="ft", delta_params=MODELS[model],
                                final_score=0.85), curves=False)  # fmt: skip
    return root


def test_corrupt_file_is_named_and_the_report_still_renders(tmp_path: Path) -> None:
    results = _small_study(tmp_path / "results")
    (results / "trials" / "broken.parquet").write_bytes(b"\x00garbage, not parquet\xff" * 10)
    (results / "curves" / "bert-small-ft-0.parquet").unlink()
    summary = make_report(results, tmp_path / "out")
    assert any(p.startswith("trials/broken.parquet: unreadable") for p in summary.problems)
    assert any(p.startswith("curves/bert-small-ft-0.parquet: missing") for p in summary.problems)
    index = summary.index.read_text(encoding="utf-8")
    assert "trials/broken.parquet: unreadable" in index
    assert "curves/bert-small-ft-0.parquet: missing" in index
    assert summary.n_trials == 8
    assert list(summary.figures) == ["fig3_scaling", "fig_cost"]  # the cost picture needs only the trials table
    # the other figures are listed with the reason they were not drawn
    assert set(summary.skipped) == set(FIGURES) - {"fig3_scaling", "fig_cost"}
    assert "fig9_transfer: no transfer rows" in index
    assert (tmp_path / "out" / "table.md").is_file() and (tmp_path / "out" / "findings.md").is_file()


def test_empty_or_missing_results_folder_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        make_report(tmp_path / "nope", tmp_path / "out")
    (tmp_path / "empty" / "trials").mkdir(parents=True)
    with pytest.raises(UserError, match="no results"):
        make_report(tmp_path / "empty", tmp_path / "out")


def test_cli_prints_paths_and_verdicts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = _small_study(tmp_path / "results")
    out = tmp_path / "report"
    assert main(["report", str(results), "--out", str(out), "--score", "best"]) == 0
    printed = capsys.readouterr().out
    assert f"report: {out / 'report.md'}" in printed
    assert "figure fig3_scaling:" in printed and "figure fig5_structure: not drawn" in printed
    for n in (1, 2, 3, 4):
        assert f"finding {n}: not enough data" in printed


def test_cli_user_error_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("apet-ray report: error:") and "\n" not in err


def test_fig3_opens_with_the_papers_mean_over_tasks(tmp_path: Path) -> None:
    from report_synth import build_study

    summary = make_report(build_study(tmp_path / "results", tasks=("sst2", "rte")), tmp_path / "out")
    svg = summary.figures["fig3_scaling"][1].read_text(encoding="utf-8")
    assert svg.index("mean of 2 tasks (BERT)") < svg.index("sst2 (BERT)")


def test_fig3_task_average_stands_on_the_tasks_every_point_has() -> None:
    import pandas as pd

    from apet_ray.report.figures import task_average

    rows = []
    for task, models in (("sst2", ("s", "l")), ("rte", ("s", "l")), ("mrpc", ("s",))):
        for model in models:
            for label in ("LoRA", "FT"):
                rows.append({"task": task, "family": "bert", "model": model, "total_params": len(model),
                             "method": label.lower(), "method_rank": 0, "label": label, "metric": "accuracy",
                             "mean": {"sst2": 0.9, "rte": 0.7, "mrpc": 0.1}[task]})
    [((title, kind), mean)] = task_average(pd.DataFrame(rows))
    assert (title, kind) == ("mean of 2 tasks", "bert")  # mrpc lacks the large model
    assert len(mean) == 4 and (mean["mean"].round(6) == 0.8).all()
    # one complete task is not an average
    assert task_average(pd.DataFrame([r for r in rows if r["task"] != "rte"])) == []


def test_scores_on_the_percent_scale_or_an_unknown_status_are_one_problem_line_each(tmp_path: Path, capsys) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    results = _small_study(tmp_path / "results")
    for name, column, value in (("bert-small-lora-0", "final_score", 70.0), ("bert-small-lora-1", "final_score", 71.0),
                                ("bert-large-lora-0", "status", "completed")):
        path = results / "trials" / f"{name}.parquet"
        table = pq.read_table(path)
        i = table.column_names.index(column)
        pq.write_table(table.set_column(i, column, pa.array([value], table.schema.field(column).type)), path)
    out = tmp_path / "report"
    assert main(["report", str(results), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    problems = [line for line in printed if line.startswith("problem: ")]
    assert len(problems) == 2, problems
    text = "\n".join(problems)
    assert "2 row(s) in 2 file(s) (bert-small-lora-0.parquet, bert-small-lora-1.parquet) with final_score outside " \
           "[0, 1]: percent" in text
    assert "1 row(s) in 1 file(s) (bert-large-lora-0.parquet) with a status apet-ray does not know" in text
    assert any(line.startswith("report: ") and "(5 trials)" in line for line in printed)  # the rest is reported
    index = (out / "report.md").read_text(encoding="utf-8")
    assert "with final_score outside [0, 1]" in index and (out / "table.csv").is_file()
