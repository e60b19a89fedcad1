"""Hand-made results folders for the report tests (no training: rows are written directly).

Imported by the report tests as ``report_synth`` (a unique name: a bare ``conftest`` import
could pick up another folder's conftest).

``build_study`` writes a small synthetic study shaped like the paper's: PET + FT on two or
three model sizes, matched APET trials with curves, APET budget sweeps and transfer rows,
with numbers chosen so that each finding's outcome is known.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from apet_ray.results import write_trial

MODELS = {  # name -> backbone parameters
    "bert-small": 28_763_648,
    "bert-base": 109_482_240,
    "bert-large": 335_141_888,
    "bert-xxl": 11_000_000_000,  # synthetic: stands in for the paper's ~10B scale
}
TASKS = {"sst2": "SA", "imdb": "SA", "rte": "NLI", "qnli": "NLI", "mrpc": "PI", "qqp": "PI"}
PET_COUNTS = {"prompt": 51_200, "bitfit": 102_000, "lora": 294_912, "adapter": 903_744}


def trial_row(trial_id: str, **fields: object) -> dict[str, object]:
    """A valid trials row; keyword arguments override any column."""
    row: dict[str, object] = {
        "trial_id": trial_id,
        "study": "test",
        "model": "bert-small",
        "family": "bert",
        "total_params": MODELS["bert-small"],
        "task": "sst2",
        "task_type": "SA",
        "method": "lora",
        "op": None,
        "distribution": None,
        "match": None,
        "requested_params": None,
        "trainable_params": 296_450,
        "delta_params": 294_912,
        "seed": 0,
        "lr": 3e-4,
        "batch_size": 32,
        "max_steps": 1000,
        "metric": "accuracy",
        "random_guess": 0.5,
        "final_score": 0.8,
        "best_score": 0.82,
        "ft_score": None,
        "steps_to_converge": 400,
        "steps_run": 1000,
        "wall_time_s": 12.5,
        "status": "finished",
        "code_version": "test",
        "hparams": "{}",
    }
    row.update(fields)
    row["ratio"] = row["delta_params"] / row["total_params"]
    row["hparams"] = json.dumps({k: row[k] for k in ("method", "op", "distribution", "lr", "seed")})
    return row


def curve_rows(trial: dict[str, object], steps: int = 10, every: int = 100) -> list[dict[str, object]]:
    """A saturating training curve ending at the trial's final score."""
    final = float(trial["final_score"])
    tau = float(trial["steps_to_converge"] or every * steps) / 3
    rows = []
    for k in range(1, steps + 1):
        step = k * every
        rows.append(
            {
                "study": trial["study"], "model": trial["model"], "task": trial["task"],
                "method": trial["method"], "op": trial["op"], "distribution": trial["distribution"],
                "seed": trial["seed"], "delta_params": trial["delta_params"], "step": step,
                "score": final * (1 - math.exp(-step / tau)) + 0.0, "loss": 1.0 / k,
                "tokens_per_s": 5000.0, "elapsed_s": step / 10,
            }
        )  # fmt: skip
    return rows


def put(results: Path, trial: dict[str, object], curves: bool = True, transfer=()) -> None:
    write_trial(results, str(trial["trial_id"]), trial, curve_rows(trial) if curves else [], transfer)


def _transfer_rows(model: str, source: str, seed: int) -> list[dict[str, object]]:
    """E5: evaluate a trial trained on ``source`` on all six targets; better within a task type."""
    rows = []
    for target, kind in TASKS.items():
        in_task = 0.85
        rel = 1.0 if target == source else (0.9 if kind == TASKS[source] else 0.55)
        rows.append({"study": "e5", "model": model, "method": "lora", "seed": seed,
                     "source_task": source, "target_task": target, "score": in_task * rel,
                     "in_task_score": in_task, "relative": None})  # fmt: skip
    return rows


def build_study(results: Path, models=("bert-small", "bert-xxl"), seeds=(0, 1), tasks=("sst2", "rte")) -> Path:
    """Write a study whose four findings are all supported (by construction)."""
    for mi, model in enumerate(models):
        scale = mi / max(1, len(models) - 1)  # 0 for the smallest model, 1 for the largest
        base = {"model": model, "family": "t5" if "t5" in model else "bert", "total_params": MODELS[model]}
        for task in tasks:
            tbase = {**base, "task": task, "task_type": TASKS[task]}
            ft = 0.80 + 0.08 * scale
            for seed in seeds:
                noise = 0.002 * (seed - 0.5)
                put(results, trial_row(f"e1-{model}-{task}-ft-{seed}", **tbase, study="e1", method="ft",
                                       delta_params=MODELS[model], trainable_params=MODELS[model] + 1538,
                                       seed=seed, final_score=ft + noise))  # fmt: skip
                for k, (method, count) in enumerate(PET_COUNTS.items()):
                    # gaps to FT shrink from 4-16 points (small) to 0-0.3 points (large)
                    gap = (0.04 + 0.04 * k) * (1 - scale) + 0.001 * k * scale
                    transfer = _transfer_rows(model, task, seed) if method == "lora" else ()
                    put(results, trial_row(f"e1-{model}-{task}-{method}-{seed}", **tbase, study="e1",
                                           method=method, delta_params=count, trainable_params=count + 1538,
                                           seed=seed, final_score=ft - gap + noise), transfer=transfer)  # fmt: skip
        # E2/E3: APET at each PET method's count; Adjacent converges faster; gap shrinks with scale
        task = tasks[0]
        tbase = {**base, "task": task, "task_type": TASKS[task], "study": "e2", "method": "apet", "op": "add"}
        ft = 0.80 + 0.08 * scale
        for method, count in PET_COUNTS.items():
            for dist, drop, steps in (("adjacent", 0.02, 300), ("discrete", 0.05, 600)):
                for seed in seeds:
                    put(results, trial_row(f"e2-{model}-{method}-{dist}-{seed}", **tbase, distribution=dist,
                                           match=method, requested_params=count, delta_params=count,
                                           trainable_params=count + 1538, seed=seed,
                                           final_score=ft - 0.02 - drop * (1 - scale) - 0.001 * seed,
                                           steps_to_converge=steps + 50 * seed))  # fmt: skip
        # E4: budget sweeps; high threshold falls with size, low threshold stays
        tbase = {**base, "task": task, "task_type": TASKS[task], "study": "e4", "method": "apet", "op": "add"}
        for dist in ("adjacent", "discrete"):
            for b, budget in enumerate((100, 400, 1600, 6400, 25_600, 102_400)):
                reach = 5 - 2 * scale  # budget index at which FT is reached
                score = 0.5 + (ft - 0.5) * min(1.0, b / reach) if b else 0.52
                score -= 0.005 if dist == "discrete" and b else 0.0  # Discrete slightly behind
                for seed in seeds:
                    put(results, trial_row(f"e4-{model}-{dist}-{budget}-{seed}", **tbase, distribution=dist,
                                           requested_params=budget, delta_params=budget,
                                           trainable_params=budget + 1538, seed=seed,
                                           final_score=score + 0.001 * seed,
                                           steps_to_converge=300 if dist == "adjacent" else 500))  # fmt: skip
    return results
