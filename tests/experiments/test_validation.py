"""Malformed study configs are refused in one line before Ray starts."""

import importlib.util
from pathlib import Path

import pytest
import ray

from apet_ray.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
DATA = str(ROOT / "tests" / "fixtures" / "data")
TINY = ["--models", "tiny-bert", "--tasks", "sst2", "--data-dir", DATA, "--max-steps", "2", "--eval-every", "1",
        "--no-report"]


def script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def with_flag(argv, flag, value):
    out = list(argv)
    if flag in out:
        out[out.index(flag) + 1] = value
    else:
        out += [flag, value]
    return out


CASES = [
    ("structure_ablation", with_flag(TINY, "--models", "no-such/model-xyz"), "cannot load model"),
    ("structure_ablation", with_flag(TINY, "--models", "./missing-folder"), "does not exist"),
    ("structure_ablation", with_flag(TINY, "--tasks", "sst3"), "unknown task"),
    ("structure_ablation", TINY + ["--methods", "dora"], "unknown method"),
    ("structure_ablation", TINY + ["--distributions", "sideways"], "unknown distribution"),
    ("structure_ablation", with_flag(TINY, "--data-dir", "/no/such/dir"), "not found"),
    ("structure_ablation", with_flag(TINY, "--max-steps", "0"), "max_steps"),
    ("structure_ablation", TINY + ["--batch-size", "0"], "batch_size"),
    ("structure_ablation", TINY + ["--strategy", "zero3"], "unknown strategy"),
    ("structure_ablation", TINY + ["--workers", "-1"], "workers must be 0"),
    ("structure_ablation", TINY + ["--seeds", "one,two"], "seeds must be whole numbers"),
    ("structure_ablation", TINY + ["--address", "127.0.0.1:1"], "cannot reach a Ray cluster"),
    ("structure_ablation", TINY + ["--config", "/no/such.yaml"], "not found"),
    ("structure_ablation", with_flag(TINY, "--tasks", "samsum"), "classification only"),
    ("pet_scaling", TINY + ["--methods", "lora,nope"], "unknown method"),
    ("convergence", TINY + ["--match", "dora"], "cannot match unknown method"),
    ("convergence", TINY + ["--ops", "glue"], "unknown op"),
    ("transfer", with_flag(TINY, "--tasks", "sst2,samsum"), "classification tasks on both sides"),
    ("param_ablation", TINY + ["--min-count", "100", "--max-count", "10"], "min-count"),
    ("param_ablation", TINY + ["--max-count", "10000000000"], "larger than"),
    ("param_ablation", TINY + ["--structures", "add-sideways"], "unknown distribution"),
]


@pytest.mark.parametrize("name,argv,message", CASES, ids=[f"{n}:{m}" for n, _, m in CASES])
def test_malformed_config_is_refused_in_one_line_before_ray(name, argv, message, tmp_path):
    argv = argv + ["--results", str(tmp_path / "results")]
    with pytest.raises(UserError) as info:
        script(name).run(argv)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert not ray.is_initialized()
    assert not (tmp_path / "results" / "trials").exists()


def test_bad_yaml_options_are_refused(tmp_path):
    cfg = tmp_path / "study.yaml"
    cfg.write_text("models: [tiny-bert]\nbogus_option: 3\n")
    with pytest.raises(UserError, match="unknown option"):
        script("structure_ablation").run(TINY + ["--config", str(cfg), "--results", str(tmp_path / "r")])
    assert not ray.is_initialized()


def test_trials_with_different_worker_counts_are_refused(tmp_path):
    from apet_ray.study import StudyConfig, validate
    from apet_ray.run import TrainConfig

    trials = [TrainConfig(model="tiny-bert", task="sst2", data_dir=DATA, workers=w) for w in (0, 1)]
    with pytest.raises(UserError, match="same number of workers"):
        validate(StudyConfig(study="mixed", results=str(tmp_path)), trials)


def test_resume_with_other_flags_is_refused(tmp_path):
    import json

    results = tmp_path / "results"
    (results / "ray" / "structure_ablation").mkdir(parents=True)
    (results / "structure_ablation.study.json").write_text(json.dumps({"trials": ["structure_ablation-old-trial"]}))
    with pytest.raises(UserError, match="needs the flags of the interrupted study"):
        script("structure_ablation").run(TINY + ["--resume", "--results", str(results)])
    assert not ray.is_initialized()


def test_trial_ids_are_safe_file_names_whatever_the_model_folder_is_called(tmp_path):
    from apet_ray.results.schema import TRIAL_ID
    from apet_ray.run import TrainConfig
    from apet_ray.study import trial_id

    odd = tmp_path / ("my modèle ✓ " + "x" * 160)
    ids = [trial_id(TrainConfig(model=str(odd), task="sst2", seed=s), "structure_ablation") for s in (0, 1)]
    assert all(TRIAL_ID.match(i) for i in ids) and ids[0] != ids[1]
    assert trial_id(TrainConfig(model="minilm", task="rotten_tomatoes"), "e2").startswith("e2-minilm-rotten_tomatoes-lora-s0-")


def test_abbreviated_flags_are_refused_not_silently_overridden(capsys):
    # "--model" used to parse as --models and then lose to the profile's default
    with pytest.raises(SystemExit):
        script("pet_scaling").run(["--model", "tiny-bert", "--dry-run"])
    assert "unrecognized arguments: --model" in capsys.readouterr().err  # one line, no usage block


def test_yaml_values_are_typed_like_flags(tmp_path):
    from apet_ray.study.cli import parse

    parser = script("structure_ablation")
    cfg = tmp_path / "study.yaml"
    cfg.write_text("lr: 1e-3\nft_lr: 3e-5\nmax_steps: 7\nseeds: [0, 1]\n")  # YAML reads 1e-3 as a string
    argv = TINY + ["--config", str(cfg)]
    import argparse  # noqa: F401 (the script builds its own parser)

    from apet_ray.study import study_arguments

    args = parse(study_arguments("t", parser.DEFAULTS, parser.PAPER_PROFILE), argv)
    assert (args.lr, args.ft_lr, args.max_steps, args.seeds) == (1e-3, 3e-5, 2, "0,1")  # the flag --max-steps 2 wins
    cfg.write_text("lr: fast\n")
    with pytest.raises(UserError, match="lr: 'fast' is not a float"):
        parse(study_arguments("t", parser.DEFAULTS), TINY + ["--config", str(cfg)])


@pytest.mark.parametrize("argv", [["--max-steps", "many"], ["--no-such-flag"], ["--seeds"]])
def test_a_bad_flag_is_one_line_with_a_pointer_to_help(argv, capsys):
    with pytest.raises(SystemExit) as info:
        script("structure_ablation").run(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(err) == 1 and err[0].endswith("--help)")
