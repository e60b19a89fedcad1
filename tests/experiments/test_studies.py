"""Studies end to end on a tiny model: Tune runs Train trials, Parquet comes out, and a
study whose driver is SIGKILLed resumes without rerunning or duplicating trials."""

import os
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


def test_structure_ablation_writes_equal_counts_per_group(tmp_path):
    done = study(tmp_path, "--max-steps", "4")
    assert done.returncode == 0, done.stderr[-3000:]
    table = trials(tmp_path)
    assert len(table) == 4 and set(table.status) == {"finished"}
    lora = table[table.method == "lora"].delta_params.item()
    apet = table[table.method == "apet"]
    assert sorted(apet.distribution) == ["adjacent", "discrete"]
    assert (apet.delta_params == lora).all() and (apet.requested_params == lora).all()
    curves = pd.concat([pd.read_parquet(p) for p in (tmp_path / "curves").glob("*.parquet")])
    assert sorted(curves.step.unique()) == [2, 4]


def test_killed_driver_resumes_with_one_row_per_trial(tmp_path):
    proc = study(tmp_path, "--max-steps", "6", "--max-concurrent", "1", wait=False)
    deadline = time.time() + 400
    while time.time() < deadline and not list((tmp_path / "trials").glob("*.parquet")):
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started
    proc.wait()
    first = {p.name: p.stat().st_mtime for p in (tmp_path / "trials").glob("*.parquet")}
    assert 1 <= len(first) < 4, "the kill must land mid-study"
    done = study(tmp_path, "--max-steps", "6", "--max-concurrent", "1", "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    table = trials(tmp_path)
    assert len(table) == 4 and table.trial_id.is_unique
    again = {p.name: p.stat().st_mtime for p in (tmp_path / "trials").glob("*.parquet")}
    assert all(again[name] == mtime for name, mtime in first.items()), "a finished trial was rerun"
