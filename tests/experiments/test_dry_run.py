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
    """The paper-scale command in the script's docstring, as argv."""
    text = module.__doc__.replace("\\\n", " ")
    line = next(line for line in text.splitlines() if "--address" in line)
    return line.split(".py", 1)[1].split()


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
    argv[argv.index("--models") + 1] = "tiny-t5"  # the hub is not reachable here; same family
    if "--max-count" in argv:
        argv[argv.index("--max-count") + 1] = "10000"  # what the tiny model holds
    rows = dry_run(name, argv + ["--data-dir", str(data_dir), "--results", str(tmp_path)], capsys)
    assert rows and not ray.is_initialized()
    for row in rows:
        task = TASKS[row["task"]]
        assert row["batch_size"] == 32 and row["train_limit"] is None and row["eval_limit"] is None, row
        assert row["max_input_len"] == task.max_input_len
        prompt = row["method"] == "prompt" or (row["op"] == "concat" and row["match"] == "prompt")
        assert row["lr"] == (5e-5 if row["task"] == "rte" else 3e-2 if prompt else 3e-4), row
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
