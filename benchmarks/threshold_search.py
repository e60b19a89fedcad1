"""The threshold search against the serial search it replaced and the dense grid, side by side.

Runs the E4 embedded default (`experiments/param_ablation.py` with no flags: MiniLM,
rotten_tomatoes, APET add-discrete, a 17-count grid, 40 steps per probe) three ways on a
local Ray with ``--slots`` logical CPUs (one trial per CPU):
  serial   the code at ``--serial-rev`` (one Tune study per search, one probe per bisection);
  search   this checkout (one experiment, k-ary probes, probes stopped once decided);
  dense    this checkout with ``--dense`` (every grid count trained).
The FT reference is trained once and copied into each run's folder (recorded, not retrained).
For each: wall time, probes, training steps, and the thresholds (which must agree).

    python benchmarks/threshold_search.py [--slots 4] [--serial-rev c6c54d6] [--extra "--lr 1e-2 --max-steps 120"]

``--extra`` passes study flags to every run (the FT reference included): the embedded
default learns nothing in its 40 steps, so every probe fails there, the case a k-ary search
handles worst; a setting that learns shows the early decisions.

Writes benchmarks/results/threshold_search.{json,md} (``--stem`` names another).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# The last commit whose param_ablation ran one Tune study per search, one probe per bisection.
SERIAL_REV = "c6c54d6"

LAUNCH = """
import os, runpy, sys
import ray
from apet_ray.run.launch import RAY_ENV
os.environ.update(RAY_ENV)
ray.init(num_cpus=int(os.environ["BENCH_SLOTS"]), include_dashboard=True, dashboard_host="127.0.0.1",
         runtime_env={"env_vars": dict(RAY_ENV)}, logging_level="WARNING")
sys.argv = [sys.argv[1], *sys.argv[2:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run(code: Path, results: Path, slots: int, *flags: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(code), "BENCH_SLOTS": str(slots)}
    cmd = [sys.executable, "-c", LAUNCH, str(code / "experiments" / "param_ablation.py"), "--results", str(results),
           "--no-report", *flags]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=code)  # cwd first on sys.path
    if done.returncode != 0:
        raise SystemExit(f"{code.name}: param_ablation failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - t0


def summary(results: Path, wall: float) -> dict:
    data = json.loads((results / "param_ablation.thresholds.json").read_text())
    searches = data["searches"] if isinstance(data, dict) else data  # the serial code wrote a list
    trials = pd.concat([pd.read_parquet(p) for p in (results / "trials").glob("*.parquet")])
    probes = trials[trials.method == "apet"]
    return {"wall_s": round(wall, 1), "probes": int(len(probes)), "steps": int(probes.steps_run.sum()),
            "statuses": probes.status.value_counts().to_dict(),
            "thresholds": [(s["low_threshold"], s["high_threshold"]) for s in searches]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--serial-rev", default=SERIAL_REV)
    parser.add_argument("--extra", default="", help="flags for param_ablation.py, one string")
    parser.add_argument("--stem", default="threshold_search", help="results file name (default threshold_search)")
    args = parser.parse_args()
    extra = args.extra.split()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        serial_code = tmp / "serial"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(serial_code), args.serial_rev],
                       check=True, capture_output=True)
        try:
            print("FT reference ...", flush=True)
            reference = tmp / "ft"
            run(ROOT, reference, args.slots, *extra, "--max-count", "11")  # a 2-count grid: trains FT, and 2 probes
            ft_rows = [p for p in (reference / "trials").glob("*.parquet")
                       if pd.read_parquet(p).study.iloc[0] == "param_ablation_ft"]
            out = {}
            for name, code, flags in (("serial", serial_code, ()), ("search", ROOT, ()), ("dense", ROOT, ("--dense",))):
                results = tmp / name
                (results / "trials").mkdir(parents=True)
                for p in ft_rows:
                    shutil.copy(p, results / "trials" / p.name)
                print(f"{name} ...", flush=True)
                out[name] = summary(results, run(code, results, args.slots, *extra, *flags))
                print(f"  {out[name]}", flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(serial_code)], capture_output=True)
    serial, search, dense = out["serial"], out["search"], out["dense"]
    result = {"slots": args.slots, "serial_rev": args.serial_rev, "extra": args.extra, "runs": out,
              "wall_search_over_serial": round(search["wall_s"] / serial["wall_s"], 3),
              "steps_search_over_dense": round(search["steps"] / dense["steps"], 3),
              "steps_serial_over_dense": round(serial["steps"] / dense["steps"], 3),
              "thresholds_agree": serial["thresholds"] == search["thresholds"] == dense["thresholds"]}
    (HERE / "results" / f"{args.stem}.json").write_text(json.dumps(result, indent=2, default=str))
    setting = f"E4 embedded default with {args.extra}" if args.extra else "E4 embedded default"
    lines = [f"# Threshold search, {setting}, {args.slots} trial slots (local Ray, {os.cpu_count()} cores)", "",
             "| run | wall (s) | probes | training steps | × dense steps | thresholds (low, high) |", "|---|---|---|---|---|---|"]
    for name in ("serial", "search", "dense"):
        r = out[name]
        lines.append(f"| {name} | {r['wall_s']} | {r['probes']} | {r['steps']:,} | {r['steps'] / dense['steps']:.2f} | "
                     f"{', '.join(f'({lo}, {hi})' for lo, hi in r['thresholds'])} |")
    lines += ["", f"search / serial wall time: {result['wall_search_over_serial']:.2f}; thresholds agree: "
              f"{result['thresholds_agree']}"]
    (HERE / "results" / f"{args.stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
