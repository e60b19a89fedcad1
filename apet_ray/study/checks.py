"""A study's checks before Ray starts, and its dry run.

``validate`` puts every trial through ``run.check_config`` and checks the grid and the
results folder, so a mistake is one line before anything is started; a dry run prints the
resolved trials (or one JSON list) and starts nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

from apet_ray.errors import UserError
from apet_ray.paths import output_folder
from apet_ray.run.config import RunPlan, TrainConfig, check_config
from apet_ray.study.config import StudyConfig
from apet_ray.study.trials import trial_id


def validate(study: StudyConfig, trials: list[TrainConfig]) -> list[RunPlan]:
    """Every trial through ``check_config``, the grid and the results folder checked; the
    trials' resolved plans, in order. A dry run neither needs the cluster nor the folder."""
    from apet_ray.run.launch import check_address

    if not trials:
        raise UserError("the study has no trials")
    if study.max_concurrent is not None and study.max_concurrent < 1:
        raise UserError(f"--max-concurrent must be 1 or more, not {study.max_concurrent}")
    if study.json and not study.dry_run:
        raise UserError("--json only applies with --dry-run")
    # empty, a symlink loop, a file; unless a dry run (which needs no folder): read-only or not ours
    output_folder(study.results, "--results", probe=not study.dry_run)
    if study.tune_lr < 0 or study.tune_lr == 1:
        raise UserError(f"--tune-lr needs at least 2 trials per group (or 0 for the fixed learning rates), got {study.tune_lr}")
    if not study.dry_run:
        check_address(study.address)
    if len({cfg.workers for cfg in trials}) > 1:
        raise UserError("every trial of a study must use the same number of workers")
    seen, plans = set(), []
    for cfg in trials:
        plans.append(check_config(cfg))
        tid = trial_id(cfg, study.study)
        if tid in seen:
            raise UserError(f"trial {tid} appears twice in the grid")
        seen.add(tid)
    if study.dry_run:
        return plans
    tune_dir = Path(study.results).resolve() / "ray" / study.study
    if tune_dir.exists() and not study.resume:
        raise UserError(f"{tune_dir} holds an earlier run of {study.study}: add --resume to continue it, or use another --results")
    if study.resume and not tune_dir.exists():
        raise UserError(f"nothing to resume: {tune_dir} does not exist")
    record = Path(study.results).resolve() / f"{study.study}.study.json"
    if study.resume and record.exists():
        # the restored trials keep their old configs and resources: other flags would mix them
        before = _recorded_trials(record)
        if before and before != seen:
            raise UserError(f"--resume needs the flags of the interrupted study: {len(seen - before)} of its "
                            f"{len(seen)} trials differ from the ones recorded in {record}")
    return plans


def dry_run_rows(trials: list[TrainConfig], plans: list[RunPlan]) -> list[dict]:
    """One resolved row per trial: what would train, on what, how long, at which lr."""
    return [{
        "model": plan.model, "family": plan.kind, "task": plan.task, "task_type": plan.task_type,
        "method": cfg.spec.method, "label": cfg.spec.label,
        "op": cfg.spec.op if cfg.spec.method == "apet" else None,
        "distribution": cfg.spec.distribution if cfg.spec.method == "apet" else None,
        "match": cfg.spec.match, "delta_params": plan.delta_params, "total_params": plan.total_params,
        "seed": cfg.seed, "batch_size": cfg.batch_size, "lr": plan.lr, "weight_decay": cfg.weight_decay,
        "schedule": cfg.schedule, "max_steps": cfg.max_steps,
        "eval_every": cfg.eval_every, "max_input_len": plan.max_input_len, "train_limit": cfg.train_limit,
        "eval_limit": cfg.eval_limit, "workers": cfg.workers, "strategy": cfg.strategy,
    } for cfg, plan in zip(trials, plans)]


def print_dry_run(study: StudyConfig, rows: list[dict]) -> None:
    if study.json:
        print(json.dumps(rows, indent=1))
        return
    for r in rows:
        limits = "/".join("all" if r[k] is None else f"{r[k]:,}" for k in ("train_limit", "eval_limit"))
        print(f"{r['model']} / {r['task']} / {r['label']} / seed {r['seed']}: {r['delta_params']:,} deltas; "
              f"batch {r['batch_size']}, lr {r['lr']:g}, {r['max_steps']:,} steps (eval every {r['eval_every']:,}), "
              f"inputs <= {r['max_input_len']} tokens, train/eval examples {limits}, {r['workers']} worker(s)")
    if study.tune_lr:
        print(f"learning rates: tuned first, {study.tune_lr} Optuna trials (ASHA-stopped) per group of seeds "
              f"(study/lr_search.py); the lr above is the untuned default")
    print(f"{study.study}: {len(rows)} trials (dry run: nothing started)")


def _recorded_trials(record: Path) -> set[str]:
    """The trial ids a study's ``<study>.study.json`` lists (written atomically by the study;
    anything else in its place is refused in one line rather than trusted or tracebacked)."""
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
        trials = data["trials"]
        if not isinstance(trials, list) or not all(isinstance(t, str) for t in trials):
            raise TypeError("trials is not a list of ids")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{record} is not a study record ({type(exc).__name__}: {exc}): remove it, or resume into "
                        "another --results") from None
    return set(trials)
