"""--dry-run: every study resolves its trials without starting Ray, and the cluster command
each script documents runs the paper's setting (batch 32, full splits, the task's input
length, the paper's learning rates)."""

import importlib.util
import json
import re
from pathlib import Path

import pandas as pd
import pytest
import ray

from apet_ray.tasks import TASKS

ROOT = Path(__file__).resolve().parents[2]
STUDIES = ("pet_scaling", "structure_ablation", "convergence", "param_ablation", "transfer")


def script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def documented_cluster_command(module) -> list[str]:
    """The paper-scale command in the script's docstring, as argv (its grid: configs/<study>/paper.yaml)."""
    text = module.__doc__.replace("\\\n", " ")
    line = next(line for line in text.splitlines() if "--address" in line)
    return line.split(".py", 1)[1].split("#")[0].split()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """Two rows per split, with the hub's column names, for every task."""
    root = tmp_path_factory.mktemp("data")
    for name, task in TASKS.items():
        rows = {column: [f"{column} one", f"{column} two"] for column in task.text_columns}
        if task.is_classification:
            rows[task.label_column] = [0, 1]
        else:
            rows[task.target_column] = [["an answer"], ["another"]] if task.type == "qa" else ["a summary", "another"]
        (root / name).mkdir()
        for split in ("train", task.eval_split):
            pd.DataFrame(rows).to_parquet(root / name / f"{split}.parquet")
    return root


def dry_run(name: str, argv: list[str], capsys) -> list[dict]:
    capsys.readouterr()
    script(name).run(argv + ["--dry-run", "--json"])
    out = capsys.readouterr().out
    return json.loads(out[out.index("["): out.rindex("]") + 1])


@pytest.mark.parametrize("name", STUDIES)
def test_the_documented_cluster_command_runs_the_paper_setting(name, data_dir, capsys, tmp_path):
    argv = documented_cluster_command(script(name))
    assert "--profile" in argv and argv[argv.index("--profile") + 1] == "paper"
    argv += ["--models", "tiny-t5"]  # the hub is not reachable here; same family
    if name == "param_ablation":
        argv += ["--max-count", "10000"]  # what the tiny model holds
    rows = dry_run(name, argv + ["--data-dir", str(data_dir), "--results", str(tmp_path)], capsys)
    assert rows and not ray.is_initialized()
    searches = [row for row in rows if "search" in row]  # E4: one row per threshold search after its FT trials
    rows = [row for row in rows if "search" not in row]
    assert bool(searches) == (name == "param_ablation")
    assert all(len(s["grid"]) >= 8 * 2 for s in searches)  # 8 counts per decade (Fig. 7)
    for row in rows:
        task = TASKS[row["task"]]
        assert row["batch_size"] == 32 and row["train_limit"] is None and row["eval_limit"] is None, row
        assert row["max_input_len"] == task.max_input_len
        prompt = row["method"] == "prompt" or (row["op"] == "concat" and row["match"] == "prompt")
        assert row["lr"] == (5e-5 if row["task"] == "rte" or row["method"] == "ft" else 3e-2 if prompt else 3e-4), row
        assert row["seed"] in (0, 1, 2) and row["max_steps"] >= 5000 and row["delta_params"] > 0
    assert {r["seed"] for r in rows} == {0, 1, 2}
    if name == "transfer":  # the paper's Fig. 9 is APET-Adjacent and APET-Discrete
        assert {r["distribution"] for r in rows} == {"adjacent", "discrete"}


def test_the_smoke_profile_is_the_embedded_default_and_flags_override_it(capsys, tmp_path):
    data = str(ROOT / "tests" / "fixtures" / "data")
    base = ["--models", "tiny-bert", "--tasks", "sst2", "--data-dir", data, "--results", str(tmp_path)]
    smoke = dry_run("structure_ablation", base, capsys)
    assert len(smoke) == 11 and {(r["batch_size"], r["max_input_len"], r["train_limit"]) for r in smoke} == {(16, 64, None)}
    paper = dry_run("structure_ablation", base + ["--profile", "paper", "--batch-size", "8", "--seeds", "4"], capsys)
    assert {(r["batch_size"], r["max_input_len"], r["train_limit"], r["seed"]) for r in paper} == {(8, 128, None, 4)}
    # matched APET trials are planned at exactly their PET method's count
    by_label = {r["label"]: r["delta_params"] for r in paper}
    assert by_label["APET-Discrete (concat, =LoRA)"] == by_label["LoRA"]
    capsys.readouterr()
    script("structure_ablation").run(base + ["--dry-run"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 12 and re.search(r"11 trials \(dry run", lines[-1])


T5 = {"google/t5-v1_1-small", "google/t5-v1_1-base", "google/t5-v1_1-xxl"}
BERT = {"google/bert_uncased_L-4_H-512_A-8", "bert-base-uncased", "bert-large-uncased"}
ALL_TASKS = set(TASKS)  # the paper's 11
CLASSIFICATION = {name for name, task in TASKS.items() if task.is_classification}  # BERT's 8
PAPER_GRIDS = {  # (models, tasks) blocks of the paper's figures and Table 2
    "pet_scaling": [(T5, ALL_TASKS), (BERT, CLASSIFICATION)],  # Fig. 3: two series, all tasks
    "structure_ablation": [(T5, ALL_TASKS), (BERT, CLASSIFICATION)],  # Fig. 5 / Table 2
    "convergence": [({"google/t5-v1_1-small", "google/t5-v1_1-xxl"}, {"sst2", "rte", "mrpc"})],  # Fig. 6
    "param_ablation": [({"google/t5-v1_1-small", "google/t5-v1_1-xxl"}, {"sst2", "mrpc"}),
                       ({"google/bert_uncased_L-4_H-512_A-8", "bert-large-uncased"}, {"sst2", "mrpc"})],  # Fig. 7
    "transfer": [({"google/t5-v1_1-small", "google/t5-v1_1-xxl"}, CLASSIFICATION),
                 ({"google/bert_uncased_L-4_H-512_A-8", "bert-large-uncased"}, CLASSIFICATION)],  # Fig. 9
}


@pytest.mark.parametrize("name", STUDIES)
def test_each_paper_profile_file_holds_the_papers_grid_and_training_setting(name):
    import argparse

    import yaml

    from apet_ray.study.cli import _grid, model_tasks

    path = ROOT / "experiments" / "configs" / name / "paper.yaml"
    assert script(name).PAPER == path
    data = yaml.safe_load(path.read_text())
    args = argparse.Namespace(grid=_grid(data["grid"], str(path)), models=None, tasks=None, given=set())
    expected = {(m, t) for models, tasks in PAPER_GRIDS[name] for m in models for t in tasks}
    assert set(model_tasks(args)) == expected
    assert (data["seeds"], data["batch_size"], data["lr"], data["train_limit"]) == ([0, 1, 2], 32, None, None)
    assert (data["ft_lr"], data["weight_decay"], data["schedule"]) == (5e-5, 0.0, "linear")  # the release's Trainer
    if name == "param_ablation":  # Fig. 7 resolves its thresholds: >= 8 counts per decade
        assert data["per_decade"] >= 8


def test_a_models_flag_replaces_the_models_of_every_paper_grid_block():
    import argparse

    from apet_ray.study.cli import model_tasks

    args = argparse.Namespace(grid=[("t5-a,t5-b", "sst2,samsum"), ("bert-a", "sst2,rte")], models="mine", tasks="x",
                              given={"models"})
    assert model_tasks(args) == [("mine", "sst2"), ("mine", "samsum"), ("mine", "rte")]
    args.given = set()
    assert model_tasks(args)[:2] == [("t5-a", "sst2"), ("t5-a", "samsum")] and len(model_tasks(args)) == 6


@pytest.mark.parametrize("name", STUDIES)
def test_every_study_takes_score_final_or_best_for_its_report(name):
    from apet_ray.study import parse, study_arguments, study_config

    module = script(name)
    args = parse(study_arguments("t", module.DEFAULTS, module.PAPER), ["--score", "best"])
    assert study_config(args, name).score == "best"
    assert study_config(parse(study_arguments("t", module.DEFAULTS, module.PAPER), []), name).score == "final"


def test_the_paper_profile_starts_adapters_as_the_release_does():
    from apet_ray.study import parse, study_arguments, trial_config
    from apet_ray.delta import DeltaSpec

    module = script("structure_ablation")
    for argv, init in (([], "kaiming"), (["--profile", "paper"], "release")):
        parser = study_arguments("t", module.DEFAULTS, module.PAPER)
        for flag in ("--methods", "--apet-match", "--distributions"):  # the script's own flags, in its paper.yaml
            parser.add_argument(flag)
        args = parse(parser, argv + ["--models", "tiny-bert"])
        assert trial_config(args, "tiny-bert", "sst2", 0, spec=DeltaSpec.pet("adapter")).spec.plugin_init == init
        assert trial_config(args, "tiny-bert", "sst2", 0, spec=DeltaSpec.pet("lora")).spec.plugin_init == "kaiming"
