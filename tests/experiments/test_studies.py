"""Studies end to end on a tiny model: Tune runs Train trials, Parquet comes out, and a
study whose driver is SIGKILLed resumes without rerunning or duplicating trials."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]
ROOT = Path(__file__).resolve().parents[2]
DATA = str(ROOT / "tests" / "fixtures" / "data")
TINY = ["--models", "tiny-bert", "--tasks", "sst2", "--data-dir", DATA, "--eval-every", "2", "--batch-size", "8",
        "--eval-limit", "16", "--train-limit", "64", "--methods", "lora", "--no-report"]


def study(results, *extra, wait=True):
    cmd = [sys.executable, str(ROOT / "experiments" / "structure_ablation.py"), *TINY, "--results", str(results), *extra]
    env = {**os.environ, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}
    if wait:
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)


def trials(results) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in sorted((Path(results) / "trials").glob("*.parquet"))])


def curves(results) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in (Path(results) / "curves").glob("*.parquet")])


@pytest.fixture(scope="module")
def train_path(tmp_path_factory) -> Path:
    """The tiny structure ablation, every trial a one-worker Ray Train run."""
    results = tmp_path_factory.mktemp("train-path")
    done = study(results, "--max-steps", "4", "--workers", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    return results


def test_structure_ablation_writes_equal_counts_per_group(train_path):
    table = trials(train_path)
    assert len(table) == 4 and set(table.status) == {"finished"}
    lora = table[table.method == "lora"].delta_params.item()
    apet = table[table.method == "apet"]
    assert sorted(apet.distribution) == ["adjacent", "discrete"]
    assert (apet.delta_params == lora).all() and (apet.requested_params == lora).all()
    assert sorted(curves(train_path).step.unique()) == [2, 4]


def test_trials_training_in_their_own_process_give_the_same_numbers(train_path, tmp_path):
    done = study(tmp_path, "--max-steps", "4", "--workers", "0")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "each in its own process" in done.stdout
    key = ["method", "op", "distribution", "step"]
    ours = curves(tmp_path).fillna("-").sort_values(key).reset_index(drop=True)
    ray_train = curves(train_path).fillna("-").sort_values(key).reset_index(drop=True)
    assert len(ours) == 8 and ours[key].equals(ray_train[key])
    # same seed, same masks, same data order: the same losses and scores, to the bit
    assert ours.loss.tolist() == ray_train.loss.tolist() and ours.score.tolist() == ray_train.score.tolist()


# one trial at a time, long enough that a kill lands between a trial's checkpoints (4 each)
LONG = ["--max-steps", "400", "--eval-every", "100", "--workers", "0", "--methods", "lora", "--distributions", "adjacent",
        "--max-concurrent", "1"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    results = tmp_path_factory.mktemp("uninterrupted")
    done = study(results, *LONG)
    assert done.returncode == 0, done.stderr[-3000:]
    return results


def same_curves(results: Path, reference: Path) -> None:
    """Every step once, and the losses and scores of the uninterrupted run, to the bit."""
    key = ["method", "op", "distribution", "step"]
    again = curves(results).fillna("-").sort_values(key).reset_index(drop=True)
    expected = curves(reference).fillna("-").sort_values(key).reset_index(drop=True)
    assert len(trials(results)) == 3 and again[key].equals(expected[key])
    assert again.loss.tolist() == expected.loss.tolist() and again.score.tolist() == expected.score.tolist()


def test_killed_driver_resumes_from_apet_rays_own_state_without_unpickling(uninterrupted, tmp_path):
    proc = study(tmp_path, *LONG, wait=False)
    deadline = time.time() + 400
    while time.time() < deadline:  # a trial recorded, and the next one past its first checkpoint
        midway = [d for d in (tmp_path / "ray").glob("structure_ablation/*")
                  if list(d.glob("checkpoint_*")) and not (d / "checkpoint_000003").exists()]
        if list((tmp_path / "trials").glob("*.parquet")) and midway:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started
    proc.wait()
    first = {p.name: p.stat().st_mtime for p in (tmp_path / "trials").glob("*.parquet")}
    assert 1 <= len(first) < 3 and midway, "the kill must land mid-trial"
    # Tune's own state is pickled: make it unreadable, the resume must not need it
    poisoned = [f for f in (tmp_path / "ray").rglob("*") if f.is_file() and
                (f.suffix == ".pkl" or f.name.startswith(("experiment_state", "basic-variant-state")))]
    assert poisoned
    for f in poisoned:
        f.write_bytes(b"not a pickle")
    done = study(tmp_path, *LONG, "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"continuing from step (100|200|300) ", done.stdout + done.stderr)
    same_curves(tmp_path, uninterrupted)
    again = {p.name: p.stat().st_mtime for p in (tmp_path / "trials").glob("*.parquet")}
    assert all(again[name] == mtime for name, mtime in first.items()), "a finished trial was rerun"
    assert (tmp_path / "ray" / "structure_ablation.2").is_dir()  # a fresh Tune experiment, not a restored one


def _ray_daemons() -> set[int]:
    import psutil

    return {p.pid for p in psutil.process_iter(["name"]) if p.info["name"] in ("raylet", "gcs_server")}


def test_sigterm_stops_the_study_cleanly_and_resume_finishes_it(uninterrupted, tmp_path):
    before = _ray_daemons()
    cmd = [sys.executable, str(ROOT / "experiments" / "structure_ablation.py"), *TINY, *LONG, "--results", str(tmp_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"})
    deadline = time.time() + 400
    while time.time() < deadline and not list((tmp_path / "ray").glob("structure_ablation/*/checkpoint_*")):
        time.sleep(0.05)
    sent = time.time()
    proc.send_signal(signal.SIGTERM)  # the driver only, as `kill PID` or a scheduler would
    out, err = proc.communicate(timeout=120)
    stopped_s = time.time() - sent
    print(f"SIGTERM: stopped in {stopped_s:.1f} s")  # docs/cluster.md quotes it
    assert proc.returncode == 130, err[-3000:]
    assert stopped_s < 60, f"took {stopped_s:.0f} s to stop"
    assert "--resume" in err.strip().splitlines()[-1] and "Tuner.restore" not in out + err
    assert not [f for f in tmp_path.rglob(".*.tmp")], "a half-written file was left behind"
    deadline = time.time() + 30  # the Ray it started goes with it
    while time.time() < deadline and _ray_daemons() - before:
        time.sleep(0.5)
    assert not _ray_daemons() - before, "Ray processes outlived the study"
    done = study(tmp_path, *LONG, "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    same_curves(tmp_path, uninterrupted)


def _kill_trial_process_after_first_checkpoint(results: Path, killed: list) -> None:
    import psutil

    deadline = time.time() + 300
    while time.time() < deadline:
        checkpoints = list((results / "ray").glob("structure_ablation/*/checkpoint_000000"))
        if checkpoints:
            for proc in psutil.process_iter(["pid", "cmdline"]):
                if any("ImplicitFunc" in part for part in proc.info["cmdline"] or []):
                    os.kill(proc.info["pid"], signal.SIGKILL)
                    killed.append(proc.info["pid"])
                    return
        time.sleep(0.02)


def test_a_killed_trial_process_is_restarted_from_its_checkpoint(uninterrupted, tmp_path):
    import threading

    killed: list[int] = []
    watcher = threading.Thread(target=_kill_trial_process_after_first_checkpoint, args=(tmp_path, killed), daemon=True)
    watcher.start()
    done = study(tmp_path, *LONG)
    watcher.join(timeout=5)
    assert done.returncode == 0, done.stderr[-3000:]
    assert killed, "no trial process was killed: the test did not exercise recovery"
    same_curves(tmp_path, uninterrupted)


@pytest.mark.parametrize("workers", ["0", "1"])
def test_asha_stops_the_trials_behind_at_its_first_rung(workers, tmp_path):
    # FT at a high lr runs first and sets the bar at the rung (step 12 = 2 evals); the PET
    # trials, far behind it there, are stopped and still recorded, with their curves so far.
    # With Train runs (workers 1) a stopped trial must also give its CPUs back, or the
    # next trial never starts and the study hangs.
    cmd = [sys.executable, str(ROOT / "experiments" / "pet_scaling.py"), "--models", "tiny-bert", "--tasks", "sst2",
           "--data-dir", DATA, "--workers", workers, "--max-steps", "24", "--eval-every", "6", "--batch-size", "8",
           "--eval-limit", "64", "--train-limit", "64", "--max-concurrent", "1", "--lr", "0.01",
           "--methods", "ft,lora,adapter", "--asha", "--no-report", "--results", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    table = trials(tmp_path).set_index("method")
    assert table.loc["ft", "status"] == "finished" and table.loc["ft", "steps_run"] == 24
    stopped = table[table.status == "early_stopped"]
    assert len(stopped) >= 1 and (stopped.steps_run == 12).all()
    assert (stopped.final_score < table.loc["ft", "final_score"]).all()
    steps = curves(tmp_path).groupby("method").step.apply(sorted)
    assert all(steps[m] == [6, 12] for m in stopped.index)


def test_train_command_writes_the_rows_a_study_writes_for_the_same_config(tmp_path):
    # one function turns a run record into rows, for a study's results writer and for
    # `apet-ray train --out`: the same config gives the same rows, transfer rows included
    from apet_ray.cli import main

    common = ["--data-dir", DATA, "--max-steps", "4", "--eval-every", "2", "--batch-size", "8", "--eval-limit", "16",
              "--train-limit", "64", "--workers", "0", "--max-input-len", "64", "--labels", "unified"]
    # an APET source, as in the paper's Fig. 9, trained on the unified labels as the transfer study does
    cmd = [sys.executable, str(ROOT / "experiments" / "transfer.py"), "--models", "tiny-bert", "--tasks", "sst2",
           "--methods", "apet-discrete", "--match", "lora", "--seeds", "0", *common, "--no-report",
           "--results", str(tmp_path / "study")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert main(["train", "--model", "tiny-bert", "--task", "sst2", "--method", "apet", "--op", "concat",
                 "--distribution", "discrete", "--match", "lora", "--transfer-to", "sst2",
                 *common, "--out", str(tmp_path / "train")]) == 0

    def tables(folder):
        read = {t: pd.concat([pd.read_parquet(p) for p in (folder / t).glob("*.parquet")]) for t in ("trials", "curves", "transfer")}
        # what differs by design: who wrote it, and the clock
        volatile = {"trial_id", "study", "code_version", "versions", "wall_time_s", "tokens_per_s", "peak_memory_mb",
                    "elapsed_s"}
        return {t: df.drop(columns=sorted(volatile & set(df.columns))).reset_index(drop=True) for t, df in read.items()}

    study, train = tables(tmp_path / "study"), tables(tmp_path / "train")
    assert len(study["transfer"]) == 1 and len(study["curves"]) == 2
    for name in ("trials", "curves", "transfer"):
        pd.testing.assert_frame_equal(study[name], train[name], check_like=True, obj=name)
    assert train["trials"].family.item() == "bert" and train["trials"].checkpoint_bytes.item() > 0


def test_param_ablation_runs_every_search_in_one_experiment(tmp_path):
    cmd = [sys.executable, str(ROOT / "experiments" / "param_ablation.py"), "--models", "tiny-bert", "--tasks", "sst2",
           "--data-dir", DATA, "--batch-size", "8", "--eval-limit", "16", "--train-limit", "64", "--max-steps", "4",
           "--eval-every", "2", "--structures", "add-weight-discrete,concat-adjacent", "--min-count", "10",
           "--max-count", "1000", "--per-decade", "2", "--workers", "0", "--no-report", "--results", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"})
    assert done.returncode == 0, done.stderr[-3000:]
    summary = __import__("json").loads((tmp_path / "param_ablation.thresholds.json").read_text())
    assert [s["structure"] for s in summary["searches"]] == ["add-weight-discrete", "concat-adjacent"]
    grid = [10, 32, 100, 316, 1000]
    table = trials(tmp_path)
    probes = table[table.study == "param_ablation_search"]
    assert set(probes.delta_params) <= set(grid) and set(probes.status) <= {"finished", "decided", "early_stopped"}
    assert summary["steps"] == int(probes.steps_run.sum()) <= summary["dense_grid_steps"]
    assert sorted(p.name for p in (tmp_path / "ray").iterdir() if p.name.startswith("param_ablation")) == [
        "param_ablation_ft", "param_ablation_search"]  # the two searches shared one Tune experiment


def test_studies_take_a_task_file_of_three_classes_and_name_it_in_the_report(tmp_path):
    rows = [("the invoice is wrong", "billing"), ("app crashes on start", "tech"), ("need a quote", "sales")] * 12
    (tmp_path / "tickets.csv").write_text("message,team\n" + "".join(f'"{m}",{t}\n' for m, t in rows))
    task_file = tmp_path / "tickets.yaml"
    task_file.write_text("name: tickets\ntrain: tickets.csv\ntext_columns: [message]\nlabel_column: team\n"
                         "type: classification\n")
    common = ["--models", "tiny-bert", "--tasks", str(task_file), "--batch-size", "8", "--max-steps", "2",
              "--eval-every", "2", "--workers", "0"]
    env = {**os.environ, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}
    for script, extra in (("structure_ablation.py", ["--methods", "lora"]),
                          ("param_ablation.py", ["--min-count", "10", "--max-count", "100", "--per-decade", "1"])):
        results = tmp_path / script.removesuffix(".py")
        done = subprocess.run([sys.executable, str(ROOT / "experiments" / script), *common, *extra,
                               "--results", str(results)], capture_output=True, text=True, env=env, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        table = trials(results)
        assert set(table.task) == {"tickets"} and set(table.random_guess.round(3)) == {0.333}
        assert "tickets" in (results / "report" / "report.md").read_text()


def test_tune_lr_searches_each_group_with_optuna_and_asha_then_runs_the_chosen_lr(tmp_path):
    done = study(tmp_path, "--max-steps", "4", "--workers", "0", "--apet-match", "lora", "--distributions", "discrete",
                 "--tune-lr", "4", "--seeds", "0,1")
    assert done.returncode == 0, done.stderr[-3000:]
    # FT, LoRA and APET-Discrete at LoRA's count: three groups, the two seeds of each share one search
    assert done.stdout.count("[apet-ray] lr search") == 3
    table = trials(tmp_path)
    search, chosen = table[table.status == "search"], table[table.status != "search"]
    assert len(search) == 12 and len(chosen) == 6 and set(chosen.status) == {"finished"}
    for method, group in search.groupby("method"):
        assert group.lr.nunique() == 4  # Optuna's samples, log-uniform in the family's range
        assert group.lr.between(*((1e-6, 1e-3) if method == "ft" else (1e-4, 3e-2))).all()
        ran = group[group.steps_run == 4] if (group.steps_run == 4).any() else group  # ASHA may stop some
        best = ran[ran.final_score == ran.final_score.max()].lr.min()  # ties go to the smaller step
        assert set(chosen[chosen.method == method].lr) == {best}  # both seeds at the chosen lr


# a disk that fills up under the study: every write into trials/ is refused (the trial's rows
# reach the atomic writer, which raises ENOSPC the way a full disk does)
FULL_DISK = """
import errno, os, runpy, sys
import pyarrow.parquet as pq
real = pq.write_table
def write_table(table, where, *args, **kwargs):
    if os.path.basename(os.path.dirname(str(where))) == "trials":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(where))
    return real(table, where, *args, **kwargs)
pq.write_table = write_table
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_a_full_disk_stops_the_study_in_one_line_and_resume_finishes_it(tmp_path):
    argv = [str(ROOT / "experiments" / "structure_ablation.py"), *TINY, "--results", str(tmp_path), "--max-steps", "2",
            "--workers", "0", "--distributions", "adjacent", "--max-concurrent", "1"]
    full = subprocess.run([sys.executable, "-c", FULL_DISK, *argv], capture_output=True, text=True, timeout=600)
    last = full.stderr.strip().splitlines()[-1]
    assert full.returncode == 1, full.stderr[-3000:]
    assert "Traceback" not in full.stderr and "TuneError" not in full.stderr, full.stderr[-3000:]
    assert last.startswith("structure_ablation.py: error: cannot write ") and "/trials/" in last, last
    assert "No space left on device (ENOSPC)" in last and "--resume" in last
    assert not list((tmp_path / "trials").glob("*.parquet")), "a trial was recorded on a full disk"
    assert not [f for f in tmp_path.rglob(".*.tmp")], "a half-written file was left behind"
    assert full.stdout.count("[apet-ray] start ") <= 2, "trials went on starting after the refused write"
    done = study(tmp_path, "--max-steps", "2", "--workers", "0", "--distributions", "adjacent", "--max-concurrent", "1",
                 "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(trials(tmp_path)) == 3 and set(trials(tmp_path).status) == {"finished"}
