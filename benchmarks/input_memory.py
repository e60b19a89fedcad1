"""Peak memory of the checks before a study starts, on hostile input files.

Each case is a study's validation (``experiments/structure_ablation.py --dry-run``: every
trial through ``check_config``, which reads the data, the task and config files) in a fresh
process, on one input built to blow up once read:

  baseline          the test fixtures (tests/fixtures/data): the process's own footprint
  parquet_cell      a zstd Parquet train split whose one text cell is 100M repeated characters
                    (a few KB on disk, 100 MB once decoded): just inside the data bound
  parquet_rows      1.1M rows of a few characters: just inside the bound on rows
  parquet_huge      1.2 GB of text in a few KB: past the data bound, refused from the footer
  yaml_config       a 378-byte YAML "billion laughs" (anchors nested 9 deep) as --config
  yaml_task         the same as a task file (--tasks bomb.yaml)
  csv_line          a CSV whose one data line is a 200M-character text cell: past the bound
  csv_edge          the same with 72M characters: just inside it
  jsonl_edge        a JSON-lines file whose one line holds 45M characters: just inside it

The bound is ``tasks.files.check_read_cost`` (the memory cap less the process, over the
measured bytes per byte of text and per row); the peak resident set (VmHWM) of each
process is compared with the stated cap of 1 GB.

    python benchmarks/input_memory.py [--cases baseline,parquet_cell,...]

Writes benchmarks/results/input_memory.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FIXTURES = ROOT / "tests" / "fixtures" / "data"
CAP_MB = 1024

CHILD = """
import json, runpy, sys, time
t0 = time.perf_counter()
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
    code = 0
except SystemExit as exc:
    code = exc.code if isinstance(exc.code, int) else 1
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print("INPUT_MEMORY " + json.dumps({"exit": code, "peak_mb": peak / 1024, "seconds": time.perf_counter() - t0}),
      file=sys.__stdout__, flush=True)
"""


def _parquet(path: Path, texts, labels, dictionary: bool) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({"sentence": pa.array(texts, pa.string()), "label": pa.array(labels, pa.int64())})
    pq.write_table(table, path, compression="zstd", use_dictionary=dictionary)


def _with_fixture_eval(data: Path) -> None:
    (data / "sst2").mkdir(parents=True, exist_ok=True)
    shutil.copy(FIXTURES / "sst2" / "validation.parquet", data / "sst2" / "validation.parquet")


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi"))


def build(case: str, work: Path) -> list[str]:
    """The input of ``case`` under ``work``; the flags that point the study at it."""
    data = work / "data"
    if case == "baseline":
        return ["--data-dir", str(FIXTURES)]
    if case == "parquet_cell":
        _parquet(data / "sst2" / "train.parquet", ["a" * 100_000_000] + [f"fine {i}" for i in range(7)],
                 [i % 2 for i in range(8)], dictionary=False)
    elif case == "parquet_rows":
        n = 1_100_000
        _parquet(data / "sst2" / "train.parquet", [f"w{i % 1000}" for i in range(n)], [i % 2 for i in range(n)],
                 dictionary=True)
    elif case == "parquet_huge":
        import pyarrow as pa
        import pyarrow.parquet as pq

        (data / "sst2").mkdir(parents=True)
        cell = pa.array(["a" * 100_000_000], pa.string())
        with pq.ParquetWriter(data / "sst2" / "train.parquet", pa.schema([("sentence", pa.string()),
                                                                          ("label", pa.int64())]),
                              compression="zstd", use_dictionary=False) as writer:
            for i in range(12):  # 12 row groups of one 100M-character cell: 1.2 GB once read
                writer.write_table(pa.table({"sentence": cell, "label": pa.array([i % 2], pa.int64())}))
    elif case in ("csv_line", "csv_edge"):
        (data / "sst2").mkdir(parents=True)
        with open(data / "sst2" / "train.csv", "w") as fh:
            fh.write("sentence,label\n")
            fh.write("a" * (200_000_000 if case == "csv_line" else 72_000_000) + ",1\n")
            fh.write("fine,0\nok,1\n")
    elif case == "jsonl_edge":
        (data / "sst2").mkdir(parents=True)
        with open(data / "sst2" / "train.jsonl", "w") as fh:
            fh.write(json.dumps({"sentence": "a" * 45_000_000, "label": 1}) + "\n")
            fh.write(json.dumps({"sentence": "fine", "label": 0}) + "\n" + json.dumps({"sentence": "ok", "label": 1}) + "\n")
    elif case in ("yaml_config", "yaml_task"):
        (work / "bomb.yaml").write_text(BOMB)
        flag = "--config" if case == "yaml_config" else "--tasks"
        return ["--data-dir", str(FIXTURES), flag, str(work / "bomb.yaml")]
    else:
        raise SystemExit(f"unknown case {case!r}")
    _with_fixture_eval(data)
    return ["--data-dir", str(data)]


CASES = ("baseline", "parquet_cell", "parquet_rows", "parquet_huge", "yaml_config", "yaml_task",
         "csv_line", "csv_edge", "jsonl_edge")


def measure(case: str) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"input-memory-{case}-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        flags = build(case, work)
        built_s = time.perf_counter() - t0
        on_disk = sum(p.stat().st_size for p in work.rglob("*") if p.is_file() and "validation" not in p.name)
        argv = [str(ROOT / "experiments" / "structure_ablation.py"), "--models", "tiny-bert", "--tasks", "sst2",
                "--methods", "lora", "--distributions", "adjacent", "--apet-match", "lora", "--max-steps", "2",
                "--eval-every", "1", "--train-limit", "1", "--eval-limit", "8", "--results", str(work / "results"),
                "--dry-run", *flags]
        done = subprocess.run([sys.executable, "-c", CHILD, *argv], capture_output=True, text=True, timeout=600,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
        line = next(l for l in done.stdout.splitlines() if l.startswith("INPUT_MEMORY "))
        result = json.loads(line.split(" ", 1)[1])
        err = [l for l in done.stderr.strip().splitlines() if l.strip()]
        out = [l for l in done.stdout.splitlines() if not l.startswith("INPUT_MEMORY ")]
        message = err[-1] if result["exit"] else (out[-1] if out else "")
        if str(work) in message:
            message = message.replace(str(work), "<tmp>")
        return {"case": case, "input_bytes": on_disk, "build_s": round(built_s, 1), "exit": result["exit"],
                "peak_mb": round(result["peak_mb"]), "seconds": round(result["seconds"], 1),
                "under_cap": result["peak_mb"] <= CAP_MB, "outcome": message[:300],
                "traceback": "Traceback" in done.stderr}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES))
    args = parser.parse_args()
    rows = []
    for case in args.cases.split(","):
        row = measure(case)
        rows.append(row)
        print(f"{case:13s} {row['input_bytes']:>13,} B on disk  peak {row['peak_mb']:>5,} MB  {row['seconds']:>5.1f} s  "
              f"exit {row['exit']}  {row['outcome'][:120]}", flush=True)
    import torch

    meta = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}", "cap_mb": CAP_MB}
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "input_memory.json").write_text(json.dumps({**meta, "rows": rows}, indent=1) + "\n")
    lines = [f"# Peak memory of the checks on hostile inputs ({meta['machine']})", "",
             "`experiments/structure_ablation.py --dry-run` (3 trials: FT, LoRA, APET-Adjacent; each trial's",
             "data read by `check_config`), one process per case; peak = VmHWM; the stated cap is 1 GB.", "",
             "| case | input on disk | peak RSS (MB) | under 1 GB | time (s) | outcome |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['input_bytes']:,} B | {r['peak_mb']:,} | {'yes' if r['under_cap'] else 'NO'} | "
                     f"{r['seconds']} | exit {r['exit']}: {r['outcome'].replace('|', '/')} |")
    (out / "input_memory.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'input_memory.json'} and {out / 'input_memory.md'}")


if __name__ == "__main__":
    main()
