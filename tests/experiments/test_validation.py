"""Malformed study configs are refused in one line before Ray starts."""

import importlib.util
import os
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
    ("param_ablation", TINY + ["--structures", "add"], "op-distribution pairs"),
    ("param_ablation", TINY + ["--min-count", "0"], "min-count"),
    ("param_ablation", TINY + ["--margin", "nan"], "--margin is a score difference"),
    ("param_ablation", TINY + ["--tol", "inf"], "--tol is a score difference"),
    ("param_ablation", TINY + ["--per-decade", "100000000"], "more than 1000 grid counts"),
    ("param_ablation", TINY + ["--lrs", "1e-3,-1"], "--lrs needs distinct learning rates"),
    ("param_ablation", TINY + ["--tune-lr", "4"], "--tune-lr and --lrs both choose"),  # the default has a ladder
    ("structure_ablation", TINY + ["--lr", "inf"], "lr must be positive and finite"),
    ("structure_ablation", TINY + ["--weight-decay", "-0.1"], "weight_decay must be a finite number"),
    ("structure_ablation", TINY + ["--schedule", "cosine"], "unknown schedule"),
    ("structure_ablation", TINY + ["--grad-accum", "0"], "grad_accum must be a positive"),
    # ranges and types of the run options
    ("structure_ablation", TINY + ["--lr", "-1"], "lr must be positive"),
    ("structure_ablation", TINY + ["--lr", "nan"], "lr must be positive"),
    ("structure_ablation", TINY + ["--ft-lr", "0"], "lr must be positive"),
    ("structure_ablation", TINY + ["--prompt-lr", "-0.1"], "prompt_lr must be positive"),
    ("structure_ablation", with_flag(TINY, "--eval-every", "0"), "eval_every"),
    ("structure_ablation", TINY + ["--eval-limit", "0"], "eval_limit"),
    ("structure_ablation", TINY + ["--train-limit", "-3"], "train_limit"),
    ("structure_ablation", TINY + ["--max-input-len", "0"], "max_input_len"),
    ("structure_ablation", TINY + ["--max-input-len", "100000"], "positions, but the model has 512"),
    ("pet_scaling", TINY + ["--methods", "prompt", "--max-input-len", "450"], "100 soft-prompt tokens"),
    ("structure_ablation", TINY + ["--seeds", "99999999999999999999"], "seed must be a whole number from 0"),
    ("structure_ablation", TINY + ["--seeds", "-1"], "seed must be a whole number from 0"),
    ("structure_ablation", TINY + ["--precision", "fp8"], "unknown precision"),
    ("structure_ablation", TINY + ["--data-source", "ftp"], "unknown data source"),
    ("structure_ablation", TINY + ["--workers", "0", "--strategy", "fsdp"], "give --workers 1 or more"),
    ("structure_ablation", TINY + ["--workers", "2", "--batch-size", "1"], "cannot be split over 2 workers"),
    ("structure_ablation", TINY + ["--max-concurrent", "0"], "--max-concurrent must be 1 or more"),
    ("structure_ablation", TINY + ["--tune-lr", "1"], "at least 2 trials"),
    ("structure_ablation", TINY + ["--json"], "--json only applies with --dry-run"),
    ("structure_ablation", TINY + ["--resume"], "nothing to resume"),
    ("structure_ablation", TINY + ["--apet-match", "dora"], "unknown method"),
    ("structure_ablation", with_flag(TINY, "--models", ","), "empty list"),
    ("convergence", with_flag(TINY, "--tasks", "sst2,sst3"), "unknown task"),
    ("transfer", TINY + ["--methods", "zzz"], "unknown method"),
]


def files(tmp_path: Path) -> dict[str, str]:
    """Bad files of every kind a user can hand over."""
    (tmp_path / "small.csv").write_text('text,label\n"good",1\n"bad",0\n"fine",1\n"poor",0\n')
    (tmp_path / "wrong_columns.yaml").write_text("name: t\ntrain: small.csv\ntext_columns: [review]\nlabel_column: label\n")
    (tmp_path / "no_split.yaml").write_text("name: t\ntrain: missing.csv\ntext_columns: [text]\nlabel_column: label\n")
    (tmp_path / "bad_key.yaml").write_text("name: t\ntrain: small.csv\ntext_columns: [text]\nlabel_column: label\ncolour: red\n")
    (tmp_path / "not_yaml.yaml").write_text("name: [unclosed\n")
    (tmp_path / "corrupt.parquet").write_bytes(b"PAR1 not really")
    (tmp_path / "a_file").write_text("")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    (tmp_path / "bomb.yaml").write_text("a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi")))
    (tmp_path / "twice.yaml").write_text("max_steps: 5\nmax_steps: 6\n")
    return {name: str(tmp_path / name) for name in ("small.csv", "wrong_columns.yaml", "no_split.yaml", "bad_key.yaml",
                                                    "not_yaml.yaml", "corrupt.parquet", "a_file", "list.yaml")}


FILE_CASES = [  # (script, flag, file, message)
    ("structure_ablation", "--tasks", "wrong_columns.yaml", "no column 'review'"),
    ("structure_ablation", "--tasks", "no_split.yaml", "missing.csv"),
    ("structure_ablation", "--tasks", "bad_key.yaml", "colour"),
    ("structure_ablation", "--tasks", "not_yaml.yaml", "not valid YAML"),
    ("structure_ablation", "--tasks", "missing.yaml", "not found"),
    ("structure_ablation", "--config", "list.yaml", "is a mapping of option: value pairs, not a list"),
    ("structure_ablation", "--config", "not_yaml.yaml", "not valid YAML"),
    ("structure_ablation", "--results", "a_file", "is a file, not a folder"),
    ("structure_ablation", "--config", "bomb.yaml", "expands to more than"),
    ("structure_ablation", "--tasks", "bomb.yaml", "expands to more than"),
    ("param_ablation", "--config", "twice.yaml", "key 'max_steps' is given twice"),
]


@pytest.mark.parametrize("name,flag,file,message", FILE_CASES, ids=[f"{n}:{f}:{m}" for n, f, _, m in FILE_CASES])
def test_bad_files_are_refused_in_one_line_before_ray(name, flag, file, message, tmp_path):
    paths = files(tmp_path)
    argv = TINY + [flag, paths.get(file, str(tmp_path / file))]
    if flag != "--results":
        argv += ["--results", str(tmp_path / "results")]
    with pytest.raises(UserError) as info:
        script(name).run(argv)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert not ray.is_initialized()


TRAIN = ["train", "--model", "tiny-bert", "--task", "sst2", "--data-dir", DATA, "--max-steps", "2", "--eval-every", "1",
         "--workers", "0"]
TRAIN_CASES = [  # `apet-ray train`: (extra flags, message); {f} names the bad files
    (["--method", "zzz"], "unknown method"),
    (["--op", "glue"], "only apply to --method apet"),
    (["--method", "apet", "--budget", "-5"], "budget must be positive"),
    (["--method", "apet", "--budget", "1000000000000"], "larger than the capacity"),
    (["--method", "apet", "--op", "concat", "--size", "10000000", "--budget", "100"], "size 10,000,000 is larger"),
    (["--method", "apet", "--op", "plugin", "--density", "2", "--budget", "100"], "density"),
    (["--method", "apet", "--positions", "elbow", "--budget", "100"], "unknown position 'elbow'"),
    (["--method", "apet"], "needs --budget N or --match METHOD"),
    (["--seed", "99999999999999999999"], "seed must be a whole number from 0"),
    (["--method", "prompt", "--max-input-len", "600"], "positions, but the model has 512"),
    (["--transfer-to", "nope"], "unknown task 'nope'"),
    (["--max-failures", "-1"], "--max-failures must be 0 or more"),
    (["--batch-size", "-1"], "batch_size must be a positive whole number"),
    (["--out", "{f}/a_file"], "is a file, not a folder"),
    (["--train-file", "{f}/corrupt.parquet", "--text-columns", "text", "--label-column", "label"], "cannot read it"),
    (["--train-file", "{f}/small.csv", "--text-columns", "review", "--label-column", "label"], "no column 'review'"),
    (["--train-file", "{f}/small.csv"], "a label column (classification) or a target column"),
    (["--train-file", "{f}/small.csv", "--text-columns", "text", "--label-column", "label", "--task", "sst2"],
     "is a built-in task"),
    (["--task", "{f}/wrong_columns.yaml"], "no column 'review'"),
    (["--resume", "--workers", "1"], "nothing to resume"),
]


@pytest.mark.parametrize("extra,message", TRAIN_CASES, ids=[m for _, m in TRAIN_CASES])
def test_train_refuses_bad_input_in_one_line(extra, message, tmp_path, capsys):
    from apet_ray.cli import main

    files(tmp_path)
    argv = TRAIN + [a.replace("{f}", str(tmp_path)) for a in extra]
    if "--out" not in extra:
        argv += ["--out", str(tmp_path / "out")]
    if "--task" in extra or "--train-file" in extra:  # the case's own task replaces the default one
        i = argv.index("--task")
        del argv[i:i + 2]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not ray.is_initialized()
    assert not (tmp_path / "out" / "trials").exists()


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
    for damaged in ("{not json", '{"trials": "x"}', "[]", ""):  # a study record that is not one: one line
        (results / "structure_ablation.study.json").write_text(damaged)
        with pytest.raises(UserError, match="is not a study record"):
            script("structure_ablation").run(TINY + ["--resume", "--results", str(results)])


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

    args = parse(study_arguments("t", parser.DEFAULTS, parser.PAPER), argv)
    assert (args.lr, args.ft_lr, args.max_steps, args.seeds) == (1e-3, 3e-5, 2, "0,1")  # the flag --max-steps 2 wins
    cfg.write_text("lr: fast\n")
    with pytest.raises(UserError, match="lr: 'fast' is not a float"):
        parse(study_arguments("t", parser.DEFAULTS), TINY + ["--config", str(cfg)])


@pytest.mark.parametrize("argv", [["--max-steps", "many"], ["--no-such-flag"], ["--seeds"], ["--profile", "huge"],
                                  ["--lr", "fast"], ["--workers", "two"]])
def test_a_bad_flag_is_one_line_with_a_pointer_to_help(argv, capsys):
    with pytest.raises(SystemExit) as info:
        script("structure_ablation").run(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(err) == 1 and err[0].endswith("--help)")


def test_train_takes_the_out_folder_lock_and_a_finished_run_resumes_to_nothing(tmp_path, capsys):
    import subprocess
    import sys

    from apet_ray.cli import main
    from apet_ray.results import read_results

    out = tmp_path / "out"
    argv = TRAIN + ["--workers", "0", "--max-steps", "2", "--eval-every", "2", "--out", str(out)]
    out.mkdir()
    hold = "import sys, time\nfrom apet_ray.atomic import owning\nwith owning(sys.argv[1], 'a study'):\n" \
           "    print('held', flush=True)\n    time.sleep(60)\n"
    holder = subprocess.Popen([sys.executable, "-c", hold, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(argv) == 2
        assert "is in use by a study" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv + ["--resume"]) == 0  # finished: nothing to resume, no second row
    assert "nothing to resume" in capsys.readouterr().out
    assert len(read_results(out)[0].trials) == 1


# ---- a disk that refuses after the start (issue 27, item 8) -----------------------------------


def _refuse_writes_under(monkeypatch, folder_name: str, code: int):
    """Every Parquet write into a ``folder_name`` folder fails the way a full (or read-only)
    disk fails it: inside the atomic writer, after the temp file was made."""
    import errno  # noqa: F401
    import os

    import pyarrow.parquet as pq

    real = pq.write_table

    def write_table(table, where, *args, **kwargs):
        if Path(str(where)).parent.name == folder_name:
            raise OSError(code, os.strerror(code), str(where))
        return real(table, where, *args, **kwargs)

    monkeypatch.setattr(pq, "write_table", write_table)
    return real


@pytest.mark.parametrize("code, name", [(28, "ENOSPC"), (30, "EROFS")])
def test_train_on_a_disk_that_refuses_is_one_line_and_resume_finishes_it(tmp_path, capsys, monkeypatch, code, name):
    import pyarrow.parquet as pq

    from apet_ray.cli import main
    from apet_ray.results import read_results

    out = tmp_path / "out"
    argv = TRAIN + ["--max-steps", "2", "--eval-every", "2", "--out", str(out)]
    real = _refuse_writes_under(monkeypatch, "trials", code)
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"cannot write {out}/trials/train-" in err[0] and f"({name})" in err[0], err
    assert "--resume" in err[0]
    assert not (out / "run.json").exists() and not list((out / "trials").glob("*.parquet"))
    assert not [f for f in out.rglob(".*.tmp")]
    monkeypatch.setattr(pq, "write_table", real)  # space is back
    assert main(argv + ["--resume"]) == 0
    assert len(read_results(out)[0].trials) == 1 and (out / "run.json").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_train_into_a_folder_made_read_only_after_the_check_is_one_line(tmp_path, capsys):
    from apet_ray.cli import main

    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints").chmod(0o555)  # --out itself passes the check; its checkpoints folder refuses
    try:
        assert main(TRAIN + ["--out", str(out)]) == 1
    finally:
        (out / "checkpoints").chmod(0o755)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Permission denied (EACCES)" in err[0] and "checkpoints" in err[0], err


def test_report_on_a_disk_that_refuses_is_one_line_and_nothing_half_written(tmp_path, capsys, monkeypatch):
    import errno
    import os

    from apet_ray.atomic import write_text
    from apet_ray.cli import main
    from apet_ray.results import write_trial
    from test_results import curve, trial

    write_trial(tmp_path / "results", "t1", trial("t1"), [curve(10)])
    out = tmp_path / "report"
    out.mkdir()
    write_text(out / "table.csv", "an older table\n")
    real = os.replace

    def replace(a, b):  # the disk fills up at the first file the report puts in place
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(a))

    monkeypatch.setattr(os, "replace", replace)
    assert main(["report", str(tmp_path / "results"), "--out", str(out)]) == 1
    monkeypatch.setattr(os, "replace", real)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot write" in err[0] and "(ENOSPC)" in err[0] and "report again" in err[0], err
    assert (out / "table.csv").read_text() == "an older table\n"  # the old file, whole
    assert not [f for f in out.iterdir() if f.name.endswith(".tmp")]


# ---- paths that cannot be used (issue 27, item 9): refused before Ray starts, in one line ----


def hostile_paths(tmp_path: Path) -> dict[str, str]:
    """Symlink loops, a file on the way, a dangling symlink: every kind of path that is not one."""
    (tmp_path / "loop").symlink_to(tmp_path / "loop")  # a link to itself
    (tmp_path / "ping").symlink_to(tmp_path / "pong")  # two links to each other
    (tmp_path / "pong").symlink_to(tmp_path / "ping")
    (tmp_path / "loop.yaml").symlink_to(tmp_path / "loop.yaml")
    (tmp_path / "loop.csv").symlink_to(tmp_path / "loop.csv")
    (tmp_path / "a_file").write_text("")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    return {name: str(tmp_path / name) for name in ("loop", "ping", "loop.yaml", "loop.csv", "a_file", "dangling")}


PATH_CASES = [  # (flag, path under tmp_path, message)
    ("--results", "loop", "--results {t}/loop: symlink loop"),
    ("--results", "loop/results", "symlink loop"),
    ("--results", "ping", "symlink loop"),
    ("--results", "a_file/results", "a_file is a file, not a folder"),
    ("--results", "dangling", "is a symlink to a missing target"),
    ("--data-dir", "loop", "--data-dir {t}/loop: symlink loop"),
    ("--data-dir", "a_file", "is a file, not a folder"),
    ("--tasks", "loop.yaml", "task file {t}/loop.yaml: symlink loop"),
    ("--models", "ping", "model {t}/ping: symlink loop"),
    ("--config", "loop.yaml", "config file {t}/loop.yaml: symlink loop"),
]


@pytest.mark.parametrize("flag,where,message", PATH_CASES, ids=[f"{f}:{w}" for f, w, _ in PATH_CASES])
def test_unusable_paths_are_refused_in_one_line_before_ray(flag, where, message, tmp_path):
    hostile_paths(tmp_path)
    argv = with_flag(TINY, flag, str(tmp_path / where))
    if flag != "--results":
        argv += ["--results", str(tmp_path / "results")]
    with pytest.raises(UserError) as info:
        script("structure_ablation").run(argv)  # not a dry run: the folder checks all apply
    assert message.format(t=tmp_path) in str(info.value) and "\n" not in str(info.value), str(info.value)
    assert not ray.is_initialized() and not (tmp_path / "results").exists()


TRAIN_PATH_CASES = [
    (["--out", "{t}/loop"], "--out {t}/loop: symlink loop"),
    (["--out", "{t}/ping/run"], "symlink loop"),
    (["--out", "{t}/a_file/run"], "is a file, not a folder"),
    (["--data-dir", "{t}/pong"], "--data-dir {t}/pong: symlink loop"),
    (["--train-file", "{t}/loop.csv", "--label-column", "label"], "data file {t}/loop.csv: symlink loop"),
    (["--task", "{t}/loop.yaml"], "task file {t}/loop.yaml: symlink loop"),
    (["--model", "{t}/loop"], "model {t}/loop: symlink loop"),
]


@pytest.mark.parametrize("extra,message", TRAIN_PATH_CASES, ids=[m for _, m in TRAIN_PATH_CASES])
def test_train_refuses_unusable_paths_in_one_line(extra, message, tmp_path, capsys):
    from apet_ray.cli import main

    hostile_paths(tmp_path)
    argv = TRAIN + [a.format(t=tmp_path) for a in extra]
    if "--out" not in extra:
        argv += ["--out", str(tmp_path / "out")]
    if "--task" in extra or "--train-file" in extra:
        i = argv.index("--task")
        del argv[i:i + 2]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message.format(t=tmp_path) in err[0], err
    assert not ray.is_initialized() and not (tmp_path / "out").exists()


def _read_only_disk(monkeypatch):
    """A folder the kernel will not create files in, also for root: the probe's create fails
    with EROFS, as on a read-only mount."""
    import errno
    import tempfile

    def mkstemp(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), kwargs.get("dir"))

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


def test_an_output_folder_on_a_read_only_disk_is_refused_before_ray(tmp_path, monkeypatch, capsys):
    from apet_ray.cli import main

    _read_only_disk(monkeypatch)
    with pytest.raises(UserError, match=r"--results .*/results: not writable .*Read-only file system \(EROFS\)"):
        script("structure_ablation").run(TINY + ["--results", str(tmp_path / "results")])
    assert main(TRAIN + ["--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--out" in err[0] and "not writable" in err[0] and "(EROFS)" in err[0], err
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "report")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not writable" in err[0], err
    assert not ray.is_initialized() and not [p.name for p in tmp_path.iterdir()]
    # a dry run needs no folder: it still checks everything else
    script("structure_ablation").run(TINY + ["--results", str(tmp_path / "results"), "--dry-run"])


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
@pytest.mark.parametrize("inside", ["", "new/results"])
def test_an_output_folder_without_write_permission_is_refused_before_ray(tmp_path, capsys, inside):
    from apet_ray.cli import main

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(UserError, match=r"--results .*: not writable.*Permission denied \(EACCES\)"):
            script("structure_ablation").run(TINY + ["--results", str(locked / inside)])
        assert main(TRAIN + ["--out", str(locked / inside)]) == 2
        assert "not writable" in capsys.readouterr().err
        unreadable = tmp_path / "data"
        unreadable.mkdir(mode=0o000)
        with pytest.raises(UserError, match="--data-dir .*: not readable"):
            script("structure_ablation").run(with_flag(TINY, "--data-dir", str(unreadable)) +
                                             ["--results", str(tmp_path / "r")])
    finally:
        locked.chmod(0o755)
        (tmp_path / "data").chmod(0o755) if (tmp_path / "data").exists() else None
    assert not ray.is_initialized()


def test_report_refuses_unusable_paths_in_one_line(tmp_path, capsys):
    from apet_ray.cli import main

    hostile_paths(tmp_path)
    for argv, message in ((["report", str(tmp_path / "loop")], "RESULTS_DIR {t}/loop: symlink loop"),
                          (["report", str(tmp_path), "--out", str(tmp_path / "ping")], "--out {t}/ping: symlink loop"),
                          (["report", str(tmp_path), "--out", str(tmp_path / "a_file")], "is a file, not a folder")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message.format(t=tmp_path) in err[0], err


# ---- silent accepts that are refusals now (issue 27, item 10) ---------------------------------


@pytest.mark.parametrize("argv", [["--results", ""], ["--data-dir", ""], ["--config", " "], ["--results="]])
def test_an_empty_path_is_refused_in_one_line(argv, capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        script("structure_ablation").run(TINY + argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(err) == 1 and "an empty path" in err[0], err
    cfg = tmp_path / "study.yaml"
    cfg.write_text("data_dir: ''\n")  # the same value from a config file
    with pytest.raises(UserError, match="data_dir: '' is an empty path"):
        script("structure_ablation").run(TINY + ["--config", str(cfg), "--results", str(tmp_path / "r")])
    assert not ray.is_initialized()


@pytest.mark.parametrize("flag", ["--out", "--data-dir", "--task", "--train-file", "--model"])
def test_train_refuses_an_empty_path_instead_of_its_default(flag, tmp_path, capsys, monkeypatch):
    from apet_ray.cli import main

    monkeypatch.chdir(tmp_path)  # `--out ''` used to mean the current folder
    with pytest.raises(SystemExit) as info:
        main(TRAIN + ["--out", str(tmp_path / "out"), flag, ""])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(err) == 1 and f"argument {flag}: '' is an empty path" in err[0], err
    assert not list(tmp_path.iterdir())


def test_three_text_columns_on_an_encoder_are_refused_not_cut_to_one(tmp_path, capsys):
    from apet_ray.cli import main
    from apet_ray.run import TrainConfig, check_config

    rows = "".join(f"subject {i},body {i},sign {i},{i % 2}\n" for i in range(20))
    (tmp_path / "three.csv").write_text("subject,body,signature,label\n" + rows)
    three = ["--train-file", str(tmp_path / "three.csv"), "--text-columns", "subject,body,signature",
             "--label-column", "label"]
    argv = TRAIN + three + ["--out", str(tmp_path / "out")]
    del argv[argv.index("--task"):argv.index("--task") + 2]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "3 text columns (subject, body, signature)" in err[0] and "one text or a pair" in err[0]
    (tmp_path / "three.yaml").write_text("train: three.csv\ntext_columns: [subject, body, signature]\nlabel_column: label\n")
    with pytest.raises(UserError, match="3 text columns"):
        script("structure_ablation").run(with_flag(TINY, "--tasks", str(tmp_path / "three.yaml")) +
                                         ["--results", str(tmp_path / "r")])
    # T5 reads every column, each named: accepted
    custom = dict(path=str(tmp_path / "three.csv"), text_columns=("subject", "body", "signature"), label_column="label")
    plan = check_config(TrainConfig(model="tiny-t5", task="three", custom=custom, data_dir=None, workers=0))
    assert plan.task == "three"


def test_text_cells_that_are_not_text_stop_train_in_one_line(tmp_path, capsys):
    from apet_ray.cli import main

    rows = "".join(f"text {i},{i % 2}\n" for i in range(20))
    (tmp_path / "nul.csv").write_text("text,label\n" + rows + "bad\x00cell,1\n")
    argv = TRAIN + ["--train-file", str(tmp_path / "nul.csv"), "--label-column", "label", "--out", str(tmp_path / "o")]
    del argv[argv.index("--task"):argv.index("--task") + 2]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "1 row(s) of column 'text' hold NUL characters" in err[0], err
