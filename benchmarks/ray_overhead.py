"""What Ray costs per trial, and how trials spread over nodes.

Part 1, overhead. The same short training (offline all-MiniLM-L6-v2, LoRA, rotten_tomatoes)
runs N times three ways, one trial at a time:
  in-process   ``train()`` called here, no Ray: the work itself;
  tune         a Tune trial that trains in its own process (``workers=0``);
  tune+train   a Tune trial driving a one-worker Ray Train run (``workers=1``).
A trial's cost is the time between consecutive trial completions seen by the Tune driver
(steady state: the first trial also pays for starting the trial process, so it is
reported apart). Overhead = that cost minus the in-process wall time; it is fixed per
trial, so its share of a 60-second trial is overhead / 60. Training throughput inside Ray
is compared with in-process throughput too (Ray's own processes share the cores).

Part 2, scaling. ``ray.cluster_utils.Cluster`` simulates nodes on this machine (a head with
no CPUs + nodes with one CPU each): N trials on 1 node, then on 2 nodes, through the same
``run_study`` call a real cluster gets; throughput in trials per minute and the ratio.

    python benchmarks/ray_overhead.py [--trials 4] [--steps 20] [--parts overhead,scaling]

Writes benchmarks/results/ray_overhead.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED_DATA = HERE.parent.parent / "shared" / "data"


def configs(n: int, steps: int, workers: int, data_dir: str | None):
    from apet_ray.delta import DeltaSpec
    from apet_ray.run import TrainConfig

    return [TrainConfig(model="minilm", task="rotten_tomatoes", data_dir=data_dir, spec=DeltaSpec.pet("lora", seed=seed),
                        seed=seed, max_steps=steps, eval_every=steps, batch_size=16, train_limit=1000, eval_limit=100,
                        max_input_len=64, workers=workers).with_absolute_paths() for seed in range(n)]


def timeline_callback():
    from ray.tune import Callback

    class Timeline(Callback):
        """Driver-side times at which trials start and complete, and their last results."""

        def __init__(self):
            self.started, self.completed, self.results = [], [], []

        def on_trial_start(self, iteration, trials, trial, **info):
            self.started.append(time.perf_counter())

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.completed.append(time.perf_counter())
            self.results.append(trial.last_result or {})

    return Timeline()


def run_tune(trials, study_name: str, address: str | None = None, **study_kw) -> dict:
    """One ``run_study`` call; the driver's timeline and the trials' own throughput."""
    from apet_ray.study import StudyConfig, run_study

    folder = Path(tempfile.mkdtemp(prefix=f"apet-bench-{study_name}-"))
    timeline = timeline_callback()
    try:
        t0 = time.perf_counter()
        run_study(StudyConfig(study=study_name, results=str(folder), address=address, asha=False, report=False, **study_kw),
                  trials, callbacks=(timeline,))
        wall = time.perf_counter() - t0
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    ends = sorted(timeline.completed)
    return {
        "wall_s": wall,
        "first_trial_s": ends[0] - t0 if ends else None,
        "steady_trial_s": statistics.median(b - a for a, b in zip(ends, ends[1:])) if len(ends) > 1 else None,
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in timeline.results if "tokens_per_s" in r),
        "trials": len(ends),
    }


def overhead(args) -> dict:
    import ray

    from apet_ray.run.launch import init_ray
    from apet_ray.run import train

    walls, throughput = [], []
    for cfg in configs(args.trials, args.steps, 0, args.data_dir):
        t0 = time.perf_counter()
        record = train(cfg, lambda metrics, folder: None)
        walls.append(time.perf_counter() - t0)
        throughput.append(record.tokens_per_s)
    work = statistics.median(walls[1:] if len(walls) > 1 else walls)  # the first pays for warm-up
    out = {"in-process": {"wall_s": work, "tokens_per_s": statistics.median(throughput)}}

    t0 = time.perf_counter()
    init_ray(None)
    out["ray_init_s"] = time.perf_counter() - t0
    for label, workers in (("tune", 0), ("tune+train", 1)):
        run = run_tune(configs(args.trials, args.steps, workers, args.data_dir), f"overhead-{workers}", max_concurrent=1)
        run["overhead_s"] = run["steady_trial_s"] - work
        run["share_of_60s_trial"] = run["overhead_s"] / 60
        run["throughput_vs_in_process"] = run["tokens_per_s"] / out["in-process"]["tokens_per_s"]
        out[label] = run
        print(f"[bench] {label}: {run['steady_trial_s']:.1f} s per trial (first {run['first_trial_s']:.1f} s), "
              f"overhead {run['overhead_s']:.1f} s = {run['share_of_60s_trial']:.0%} of a 60 s trial", flush=True)
    ray.shutdown()
    return out


def scaling(args) -> dict:
    import ray
    from ray.cluster_utils import Cluster

    out = {}
    for workers in args.scaling_workers:
        label = "tune" if workers == 0 else "tune+train"
        for nodes in (1, 2):
            cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
            for _ in range(nodes):
                cluster.add_node(num_cpus=1)
            cluster.wait_for_nodes()
            try:
                run = run_tune(configs(args.trials, args.steps, workers, args.data_dir), f"scaling-{workers}-{nodes}",
                               address=cluster.address, cpus_per_worker=0.9 if workers else 1.0)
            finally:
                ray.shutdown()
                cluster.shutdown()
            run["trials_per_min"] = 60 * run["trials"] / run["wall_s"]
            out[f"{label}, {nodes} node(s)"] = run
            print(f"[bench] {label} on {nodes} node(s): {run['trials']} trials in {run['wall_s']:.0f} s "
                  f"= {run['trials_per_min']:.2f} trials/min", flush=True)
        out[f"{label}: 2 nodes / 1 node"] = out[f"{label}, 2 node(s)"]["trials_per_min"] / out[f"{label}, 1 node(s)"]["trials_per_min"]
    return out


def markdown(results: dict) -> str:
    lines = [f"# Ray overhead and scaling ({results['machine']})", "",
             f"{results['trials']} trials of {results['steps']} steps (MiniLM-L6, LoRA, batch 16 x 64 tokens), "
             "one thread per trial.", ""]
    if "overhead" in results:
        o = results["overhead"]
        lines += ["| path | per trial (s) | first trial (s) | overhead (s) | of a 60 s trial | training tok/s vs in-process |",
                  "|---|---|---|---|---|---|",
                  f"| in-process `train()` | {o['in-process']['wall_s']:.1f} | | | | 1.00 |"]
        for label in ("tune", "tune+train"):
            r = o[label]
            lines.append(f"| {label} | {r['steady_trial_s']:.1f} | {r['first_trial_s']:.1f} | {r['overhead_s']:.1f} | "
                         f"{r['share_of_60s_trial']:.0%} | {r['throughput_vs_in_process']:.2f} |")
        lines += ["", f"`ray.init` (with dashboard): {o['ray_init_s']:.1f} s, once per study.", ""]
    if "scaling" in results:
        s = results["scaling"]
        lines += ["| path, nodes | wall (s) | trials/min |", "|---|---|---|"]
        for key, r in s.items():
            if isinstance(r, dict):
                lines.append(f"| {key} | {r['wall_s']:.0f} | {r['trials_per_min']:.2f} |")
        lines += [""] + [f"- {key}: {value:.2f} x" for key, value in s.items() if not isinstance(value, dict)] + [""]
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--parts", default="overhead,scaling")
    p.add_argument("--scaling-workers", default="0,1", help="trial kinds in part 2: 0 (tune) and/or 1 (tune+train)")
    p.add_argument("--data-dir", default=str(SHARED_DATA) if SHARED_DATA.exists() else None)
    p.add_argument("--out", default=str(HERE / "results" / "ray_overhead"))
    args = p.parse_args()
    args.scaling_workers = [int(w) for w in args.scaling_workers.split(",")]
    import torch

    torch.set_num_threads(1)  # as in a trial: one CPU, one thread
    results = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
               "trials": args.trials, "steps": args.steps}
    parts = args.parts.split(",")
    if "overhead" in parts:
        results["overhead"] = overhead(args)
    if "scaling" in parts:
        results["scaling"] = scaling(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    out.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
