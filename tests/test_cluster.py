"""A real multi-node Ray on this machine: a head without CPUs and two worker nodes (each its
own raylet, temp dir and ports, started with `ray start`), a study sent with
`ray job submit`, and a worker node lost in the middle of a trial.

Only this cluster's processes are ever stopped (found by their temp dir): `ray stop` would
stop every Ray of the user on the machine.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import psutil
import pytest

pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]
ROOT = Path(__file__).resolve().parents[1]
DATA = str(ROOT / "tests" / "fixtures" / "data")
RAY = str(Path(sys.executable).parent / "ray")
TINY = ["--models", "tiny-bert", "--tasks", "sst2", "--data-dir", DATA, "--batch-size", "8", "--eval-limit", "16",
        "--train-limit", "64", "--methods", "lora", "--distributions", "adjacent", "--no-report", "--max-concurrent", "1"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Cluster:
    root: Path
    env: dict
    gcs: str  # ip:port of the head
    dashboard: str  # http://127.0.0.1:port, where jobs are submitted

    def ray(self, *args, timeout=120, check=True) -> subprocess.CompletedProcess:
        done = subprocess.run([RAY, *args], capture_output=True, text=True, env=self.env, timeout=timeout)
        assert not check or done.returncode == 0, (args, done.stdout[-2000:], done.stderr[-2000:])
        return done

    def processes(self, node: str = "") -> list[psutil.Process]:
        """Every process of this cluster (or of one node: "head", "w1", "w2"): those started
        with its temp dir on their command line (raylet, GCS, dashboard...) and all their
        descendants (workers and actors retitle themselves, ``ray::RayTrainWorker``)."""
        where = str(self.root / node)
        found: dict[int, psutil.Process] = {}
        for proc in psutil.process_iter(["cmdline"]):
            try:
                if any(where in part for part in proc.info["cmdline"] or []):
                    found[proc.pid] = proc
                    found.update({c.pid: c for c in proc.children(recursive=True)})
            except psutil.Error:
                pass
        return list(found.values())

    def node_of(self, title: str) -> str | None:
        """The worker node ("w1", "w2") whose processes include one titled ``title``."""
        for node in ("w1", "w2"):
            for proc in self.processes(node):
                try:
                    if title in " ".join(proc.cmdline()):
                        return node
                except psutil.Error:
                    pass
        return None

    def kill(self, node: str = "") -> int:
        procs = self.processes(node)
        for proc in procs:
            try:
                proc.send_signal(signal.SIGKILL)
            except psutil.Error:
                pass
        psutil.wait_procs(procs, timeout=20)
        return len(procs)


@pytest.fixture
def cluster():
    import ray

    root = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths live under it
    # the auth mode must be the same for every node and client: set it, never inherit it
    env = {**{k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")},
           "RAY_AUTH_MODE": "token", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}
    ip = ray.util.get_node_ip_address()
    gcs, dashboard = free_port(), free_port()
    c = Cluster(root, env, f"{ip}:{gcs}", f"http://127.0.0.1:{dashboard}")
    try:
        c.ray("get-auth-token", "--generate")
        c.ray("start", "--head", "--num-cpus", "0", "--port", str(gcs), "--dashboard-host", "127.0.0.1",
              "--dashboard-port", str(dashboard), "--ray-client-server-port", str(free_port()),
              "--dashboard-agent-listen-port", str(free_port()), "--temp-dir", str(root / "head"),
              "--disable-usage-stats")
        for node in ("w1", "w2"):  # 2 logical CPUs each: one trial (0.1) + its Train worker (1) fits on either
            c.ray("start", "--address", c.gcs, "--num-cpus", "2", "--dashboard-agent-listen-port", str(free_port()),
                  "--temp-dir", str(root / node), "--disable-usage-stats")
        yield c
    finally:
        c.kill()
        shutil.rmtree(root, ignore_errors=True)


def trials(results: Path) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in sorted((results / "trials").glob("*.parquet"))])


def curves(results: Path) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in (results / "curves").glob("*.parquet")])


def submit(cluster: Cluster, results: Path, job: str, *extra: str, wait: bool = True):
    cmd = ["job", "submit", "--address", cluster.dashboard, "--submission-id", job, *(() if wait else ("--no-wait",)),
           "--", sys.executable, str(ROOT / "experiments" / "structure_ablation.py"), "--address", "auto", *TINY,
           *extra, "--results", str(results)]
    return cluster.ray(*cmd, timeout=600, check=False)


def test_a_study_submitted_as_a_ray_job_runs_on_the_worker_nodes(cluster, tmp_path):
    done = submit(cluster, tmp_path / "results", "apet-two-nodes", "--max-steps", "4", "--eval-every", "2")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    table = trials(tmp_path / "results")
    assert len(table) == 3 and set(table.status) == {"finished"}
    logs = cluster.ray("job", "logs", "apet-two-nodes", "--address", cluster.dashboard).stdout
    assert "[apet-ray] structure_ablation: 3 trials" in logs and logs.count("[apet-ray] finished") == 3
    assert "1 worker(s) each" in logs  # Ray Train runs on the cluster, not in-trial training


def test_losing_a_worker_node_mid_trial_costs_only_that_trials_steps_since_its_checkpoint(cluster, tmp_path):
    results = tmp_path / "results"
    args = ("--max-steps", "400", "--eval-every", "100")
    submit(cluster, results, "apet-node-loss", *args, wait=False)
    deadline, victim = time.time() + 400, None
    # A Train worker past its first checkpoint as Ray knows it: the checkpoint folder appears
    # while the worker uploads, before the controller registers it; a node lost in between
    # restarts from step 0 (rightly). The controller's snapshot is written after registering.
    while time.time() < deadline and victim is None:
        if list((results / "ray" / "train").glob("*/checkpoint_manager_snapshot.json")):
            victim = cluster.node_of("RayTrainWorker")
        time.sleep(0.2)
    assert victim, "no Train worker was found mid-trial"
    killed_at = time.time()
    assert cluster.kill(victim) >= 2  # its raylet and everything on it, at once
    status = ""
    while time.time() < killed_at + 500 and not re.search(r"succeeded|failed|stopped", status):
        time.sleep(2)
        job = cluster.ray("job", "status", "apet-node-loss", "--address", cluster.dashboard, check=False)
        status = (job.stdout + job.stderr).lower()
    finished_at = time.time()
    logs = cluster.ray("job", "logs", "apet-node-loss", "--address", cluster.dashboard).stdout
    print("\n".join(line for line in logs.splitlines() if re.search(r"restarted|continuing|died|lost|finished \d", line)))
    assert "succeeded" in status, logs[-4000:]
    table = trials(results)
    assert len(table) == 3 and table.trial_id.is_unique and set(table.status) == {"finished"}
    steps = curves(results).groupby("trial_id").step.apply(list)
    assert all(s == [100, 200, 300, 400] for s in steps), steps  # no step twice, none missing
    assert re.search(r"restarted from step (100|200|300) \(Ray's checkpoint\)", logs), logs[-4000:]
    print(f"node {victim} killed; the study finished {finished_at - killed_at:.0f} s later")
