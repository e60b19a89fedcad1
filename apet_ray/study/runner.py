"""Studies on Ray Tune; results go to Parquet.

A study is a list of ``TrainConfig``s (the grid, built by a script in ``experiments/``)
plus how to run it. ``run_study`` validates every trial before Ray starts (or, for a dry
run, prints them resolved), then runs a Tune experiment whose function trainable either
trains in its own process (``workers=0``) or drives a ``TorchTrainer`` (the Train V2
pattern), with ASHA per model and task when asked; driver-side callbacks write one Parquet
file per table per trial as it ends (``study/callbacks.py``).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import re
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from apet_ray.atomic import owning, write_text
from apet_ray.errors import Interrupted, UserError
from apet_ray.run.config import RunPlan, TrainConfig, check_config
from apet_ray.results import trial_ids
from apet_ray.run.record import RunRecord
from apet_ray.study.lr_search import with_lr


@dataclass
class StudyConfig:
    study: str
    results: str = "results"
    address: str | None = None
    resume: bool = False
    asha: bool = False  # stop trials behind at rungs, within each (model, task); only where stopping is a decision
    grace_evals: int = 2  # ASHA's first rung, in evaluations
    max_concurrent: int | None = None  # None: as many as the cluster's CPUs/GPUs hold
    cpus_per_worker: float | None = None  # None: 1 with workers=0; else 0.9 locally (0.1 is the trial driver's), 1 on a cluster
    report: bool = True  # write the report at the end
    tune_lr: int = 0  # > 0: an Optuna lr search of this many trials per group first (study/lr_search.py)
    dry_run: bool = False  # print the resolved trials and stop, before Ray
    json: bool = False  # the dry run as one JSON list
    extra: dict = field(default_factory=dict)  # study-specific facts recorded with the results


# ---- identity of a trial -------------------------------------------------------------------

def trial_id(cfg: TrainConfig, study: str) -> str:
    """Stable across restarts: the same grid point always writes the same files. It becomes
    a file name, so a model folder or task name with spaces, other scripts or great length
    is reduced to safe characters here (the digest keeps such ids distinct)."""
    spec = cfg.spec
    digest = hashlib.sha1(json.dumps(cfg.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:8]
    what = spec.method if spec.method != "apet" else f"apet-{spec.op}-{spec.distribution}-{spec.match or spec.budget}"
    model = _safe(Path(cfg.model).name.replace("_", "-"))
    return f"{_safe(study)}-{model}-{_safe(cfg.task)}-{what}-s{cfg.seed}-{digest}"


def _safe(part: str, limit: int = 40) -> str:
    return (re.sub(r"[^A-Za-z0-9._=+-]+", "-", part).strip("-.") or "x")[:limit]


def trial_names(trials: list[TrainConfig]) -> list[str]:
    """Short names that say what each trial is (``lora-s0``, ``apet-add-discrete=lora-s1``),
    with the model and task when the grid has several; repeated names get a counter."""
    def what(cfg: TrainConfig) -> str:
        spec = cfg.spec
        if spec.method != "apet":
            return spec.method
        return f"apet-{spec.op}-{spec.distribution}" + (f"={spec.match}" if spec.match else f"-{spec.budget}")

    several = len({(t.model, t.task) for t in trials}) > 1
    names, seen = [], {}
    for cfg in trials:
        where = f"{Path(cfg.model).name}-{cfg.task}-" if several else ""
        name = f"{where}{what(cfg)}-s{cfg.seed}"
        seen[name] = seen.get(name, 0) + 1
        names.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return names


# ---- validation, before Ray ------------------------------------------------------------------

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
    if Path(study.results).exists() and not Path(study.results).is_dir():
        raise UserError(f"--results {study.results} is a file, not a folder")
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
        before = set(json.loads(record.read_text()).get("trials", []))
        if before and before != seen:
            raise UserError(f"--resume needs the flags of the interrupted study: {len(seen - before)} of its "
                            f"{len(seen)} trials differ from the ones recorded in {record}")
    return plans


def dry_run_rows(trials: list[TrainConfig], plans: list[RunPlan]) -> list[dict]:
    """One resolved row per trial: what would train, on what, how long, at which lr."""
    return [{
        "model": plan.model, "family": plan.family, "task": plan.task, "task_type": plan.task_type,
        "method": cfg.spec.method, "label": cfg.spec.label,
        "op": cfg.spec.op if cfg.spec.method == "apet" else None,
        "distribution": cfg.spec.distribution if cfg.spec.method == "apet" else None,
        "match": cfg.spec.match, "delta_params": plan.delta_params, "total_params": plan.total_params,
        "seed": cfg.seed, "batch_size": cfg.batch_size, "lr": plan.lr, "max_steps": cfg.max_steps,
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


# ---- running ---------------------------------------------------------------------------------

def tune_trial(config: dict) -> None:
    """The Tune function trainable: one Ray Train run (Train V2 pattern, STACK.md), or with
    ``workers=0`` the training itself, in this trial's process."""
    from ray import tune

    from apet_ray.study.lr_search import sampled_entry

    entry = sampled_entry(config)  # an lr search's trial: its sampled lr applied
    record = Path(config["results"]) / "trials" / f"{entry['trial_id']}.parquet"
    if record.exists():
        # finished before an interruption that Tune's own state missed: never run it twice
        import pandas as pd

        row = pd.read_parquet(record).iloc[0]
        tune.report({"score": float(row.final_score), "step": int(row.steps_run), "already_recorded": True})
        return
    cfg = TrainConfig.from_dict(entry["train"])
    if cfg.workers == 0:
        # No worker group: starting one (controller and worker processes, their imports)
        # costs ~20 s per trial on a laptop, a third of a one-minute trial (docs/benchmarks.md)
        import gc
        import logging

        from apet_ray.run.launch import train_on_session

        logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)  # a line per checkpoint
        gc.collect()  # a reused process: the previous trial's model goes before this one loads
        earlier = latest_checkpoint(Path(config["results"]) / "ray", entry["name"], cfg)
        train_on_session(tune, cfg, threads=config["cpus_per_worker"], earlier=earlier)
        return

    from ray.tune.integration.ray_train import TuneReportCallback

    from apet_ray.run.launch import make_trainer

    trainer = make_trainer(cfg, storage_path=config["train_storage"], name=entry["trial_id"],
                           max_failures=1, cpus_per_worker=config["cpus_per_worker"],
                           use_gpu=config["use_gpu"], callbacks=[TuneReportCallback()])
    result = trainer.fit()
    if result.error is not None:
        raise result.error


def latest_checkpoint(ray_dir: Path, name: str, cfg: TrainConfig) -> Path | None:
    """The newest complete checkpoint of this trial that an earlier Tune experiment of the
    results folder wrote (``ray/<experiment>/<name>-<tune id>/checkpoint_*``), for a resumed
    study: it starts a fresh Tune experiment instead of unpickling the old one's state, and
    each unfinished trial continues from here. Only apet-ray's own files are read (JSON
    here, safetensors when restored); a folder that is torn or belongs to another config
    is passed over."""
    wanted = json.dumps(cfg.to_dict(), sort_keys=True, default=str)
    best, best_step = None, -1
    for state in ray_dir.glob(f"*/{glob.escape(name)}-*/checkpoint_*/state.json"):
        folder = state.parent
        if not all(_whole_safetensors(folder / f) for f in ("deltas.safetensors", "optimizer.safetensors")):
            continue  # e.g. a process killed while Tune copied the folder into place: a torn file
        try:
            record = RunRecord.from_dict(json.loads(state.read_text())["record"])
            same = json.dumps(record.config, sort_keys=True, default=str) == wanted
            step = record.steps_run
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            continue
        if same and step > best_step:
            best, best_step = folder, step
    return best


def _whole_safetensors(path: Path) -> bool:
    """The file is there and its header covers it exactly (safetensors checks that on open,
    without reading the tensors)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt"):
            return True
    except Exception:  # missing, truncated or not safetensors: several exception types
        return False


def experiment_name(results: Path, study: str) -> str:
    """The Tune experiment of this attempt: ``<study>`` first, ``<study>.2``, ``.3``... for each
    resume, so earlier attempts' checkpoints stay where their trials can find them."""
    n = 1
    while (results / "ray" / (study if n == 1 else f"{study}.{n}")).exists():
        n += 1
    return study if n == 1 else f"{study}.{n}"


def _placement(study: StudyConfig, workers: int, most: int) -> tuple[dict, float, int, bool]:
    """(a trial's Tune resources, CPUs per worker, trials at a time, GPUs?) on this cluster."""
    import ray

    resources = ray.cluster_resources()
    use_gpu = resources.get("GPU", 0) > 0
    if workers == 0:  # the trial process trains: it holds the CPU (and GPU) itself
        cpus_per_worker = study.cpus_per_worker or 1.0
        trial_resources = {"cpu": cpus_per_worker, "gpu": 1 if use_gpu else 0}
        per_trial = cpus_per_worker
    else:  # a light trial process (0.1 CPU) drives a Train worker group
        local = study.address in (None, "", "local")
        cpus_per_worker = study.cpus_per_worker or (0.9 if local and not use_gpu else 1.0)
        trial_resources = {"cpu": 0.1}
        per_trial = 0.1 + workers * cpus_per_worker
    capacity = int(resources.get("GPU", 0) // max(workers, 1)) if use_gpu else int(resources.get("CPU", 1) // per_trial)
    return trial_resources, cpus_per_worker, max(1, min(study.max_concurrent or capacity, most)), use_gpu


def choose_lrs(study: StudyConfig, trials: list[TrainConfig]) -> list[float]:
    """Each trial's group's tuned learning rate (``--tune-lr``), from one Optuna + ASHA Tune
    experiment per group; its trials are written with status ``search``."""
    from apet_ray.run.launch import init_ray
    from apet_ray.study.lr_search import tune_learning_rates

    results = Path(study.results).resolve()
    results.mkdir(parents=True, exist_ok=True)
    init_ray(study.address)
    trial_resources, cpus_per_worker, concurrent, use_gpu = _placement(study, trials[0].workers, study.tune_lr)
    static = {"results": str(results), "train_storage": str(results / "ray" / "train"), "cpus_per_worker": cpus_per_worker,
              "use_gpu": use_gpu}

    def run_search(name: str, cfg: TrainConfig, space) -> list[tuple[float, float, bool]]:
        return _lr_search_experiment(study, name, cfg, space, trial_resources, static, concurrent)

    with owning(results, study.study):
        return tune_learning_rates(study, trials, study.tune_lr, run_search)


def _lr_search_experiment(study: StudyConfig, name: str, cfg: TrainConfig, space, trial_resources: dict, static: dict,
                          concurrent: int) -> list[tuple[float, float, bool]]:
    """One group's lr search: Optuna proposes, ASHA stops; (lr, final score, ran to the end) per trial."""
    import shutil

    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from apet_ray.run.launch import code_version
    from apet_ray.study.callbacks import Progress, ResultsWriter

    results = Path(static["results"])
    shutil.rmtree(results / "ray" / name, ignore_errors=True)  # recorded trials are skipped by tune_trial
    entry = {"trial_id": trial_id(cfg, name), "name": trial_names([cfg])[0], "group": f"{cfg.model} | {cfg.task}",
             "train": cfg.to_dict()}
    asha = ASHAScheduler(time_attr="step", max_t=cfg.max_steps, grace_period=cfg.eval_every * study.grace_evals,
                         reduction_factor=2)
    writer = ResultsWriter(results, name, code_version(), status="search")
    tuner = _tuner(tune.with_resources(tune_trial, trial_resources), {**static, "trial": entry, "lr_study": name, "lr": space},
                   name, results, [writer, Progress(study.tune_lr, concurrent, writer.records)],
                   search_alg=OptunaSearch(seed=cfg.seed), scheduler=asha, num_samples=study.tune_lr,
                   max_concurrent_trials=concurrent, reuse_actors=cfg.workers == 0)
    return [(float(r.config["lr"]), float(r.metrics.get("score", float("nan"))), int(r.metrics.get("step", 0)) >= cfg.max_steps)
            for r in tuner.fit() if r.metrics]


def run_study(study: StudyConfig, trials: list[TrainConfig], searcher=None, max_trials: int | None = None,
              callbacks: tuple = (), stopper=None) -> Path:
    """Validate, run on Ray Tune, write Parquet, print the report. Returns the results folder.

    Without ``searcher`` the trials are the grid. With one (e.g. ``search.ThresholdSearcher``)
    the searcher proposes the trials and ``trials`` only lists configs to validate up front, and
    ``stopper`` (a Tune ``Stopper``, e.g. ``search.DecidedProbes``) may end trials early.
    ``callbacks`` are further Tune callbacks (e.g. a benchmark's timeline).
    """
    plans = validate(study, trials)
    if study.dry_run:
        print_dry_run(study, dry_run_rows(trials, plans))
        return Path(study.results).resolve()
    results = Path(study.results).resolve()
    results.mkdir(parents=True, exist_ok=True)
    with owning(results, study.study):  # a second study on this folder is refused, in one line
        return _run_study(study, trials, results, searcher, max_trials, callbacks, stopper)


def _run_study(study: StudyConfig, trials: list[TrainConfig], results: Path, searcher, max_trials: int | None,
               callbacks: tuple, stopper) -> Path:
    from ray import tune

    from apet_ray.study.asha import GroupedASHA
    from apet_ray.study.callbacks import Progress, ResultsWriter

    from apet_ray.run.launch import code_version, init_ray

    init_ray(study.address)
    workers = trials[0].workers
    local = study.address in (None, "", "local")
    trial_resources, cpus_per_worker, concurrent, use_gpu = _placement(study, workers, len(trials) if searcher is None else 10**6)
    if study.tune_lr and searcher is None:
        trials = [with_lr(t, lr) for t, lr in zip(trials, choose_lrs(study, trials))]
    names = trial_names(trials)
    grid = [{"trial_id": trial_id(t, study.study), "name": name, "group": f"{t.model} | {t.task}", "train": t.to_dict()}
            for t, name in zip(trials, names)]
    how = f"{workers} worker(s) each" if workers else "each in its own process"
    print(f"[apet-ray] {study.study}: {len(grid) if searcher is None else 'searched'} trials, up to {concurrent} at a time, "
          f"{how}{' on GPUs' if use_gpu else ''}; ASHA {'on, per model and task' if study.asha else 'off'}; "
          f"results in {results}{'; dashboard http://127.0.0.1:8265' if local else ''}", flush=True)
    write_text(results / f"{study.study}.study.json", json.dumps(
        {"study": study.study, "trials": [g["trial_id"] for g in grid], "extra": study.extra,
         "started": time.strftime("%Y-%m-%d %H:%M:%S"), "code_version": code_version()}, indent=2, default=str))
    name = experiment_name(results, study.study)
    if study.resume and searcher is None:
        # apet-ray's own state, not Tune's pickled one: the trials table says what is done,
        # each trial finds its own last checkpoint (latest_checkpoint; a Train run by its name)
        recorded = trial_ids(results)
        grid = [g for g in grid if g["trial_id"] not in recorded]
        print(f"[apet-ray] resuming {study.study}: {len(recorded & {trial_id(t, study.study) for t in trials})} trials "
              f"recorded, {len(grid)} to run (Tune experiment {name})", flush=True)
        if not grid:
            return _finish(study, results)

    trainable = tune.with_resources(tune_trial, trial_resources)
    static = {"results": str(results), "train_storage": str(results / "ray" / "train"), "cpus_per_worker": cpus_per_worker,
              "use_gpu": use_gpu}
    param_space = {**static, "trial": tune.grid_search(grid)} if searcher is None else {}
    if searcher is not None:
        searcher.static = static
    max_steps = max(t.max_steps for t in trials)
    eval_every = min(t.eval_every for t in trials)
    scheduler = GroupedASHA(time_attr="step", max_t=max_steps, grace_period=eval_every * study.grace_evals,
                            reduction_factor=2) if study.asha else None
    decided = getattr(searcher, "decided", set())
    writer = ResultsWriter(results, study.study, code_version(), decided=lambda tid: tid in decided)
    progress = Progress(len(grid) if searcher is None else None, concurrent, writer.records,
                        decided=lambda tid: tid in decided)
    tuner = _tuner(trainable, param_space, name, results, [writer, progress, *callbacks], stop=stopper,
                   scheduler=scheduler if searcher is None else None, max_concurrent_trials=concurrent,
                   search_alg=searcher, num_samples=(max_trials or -1) if searcher is not None else 1,
                   # the next trial starts in a warm process: no second import of torch. Not for
                   # Train runs: a reused trial process that ASHA stopped keeps its Train run (and
                   # its CPUs) alive, and the study hangs
                   reuse_actors=workers == 0)
    started = time.time()
    with _sigterm_as_interrupt():
        grid_result = tuner.fit()
    errors = [r.error for r in grid_result if r.error is not None]
    if progress.rows:
        print(progress.table(), flush=True)
    recorded = trial_ids(results)  # once: a glob of the trials folder
    missing = [g["name"] for g in grid if g["trial_id"] not in recorded] if searcher is None else []
    if missing and not errors:  # Tune returns early on SIGINT (and SIGTERM, turned into one)
        raise Interrupted(f"{study.study} interrupted after {time.time() - started:.0f} s with {len(missing)} of "
                          f"{len(grid)} trials not recorded; rerun the same command with --resume to continue "
                          "(finished trials are kept, the others go on from their last checkpoint)")
    print(f"[apet-ray] {study.study} finished in {time.time() - started:.0f} s: {len(grid_result)} trials, "
          f"{len(errors)} errors, {writer.written} written now; tables in {results}/trials, {results}/curves", flush=True)
    return _finish(study, results)


def _tuner(trainable, param_space: dict, name: str, results: Path, callbacks: list, stop=None, **tune_config):
    """The Tune experiment a study (or one group's lr search) runs: trials scored by their
    "score" (max) and named by apet-ray, under ``results``/ray/``name``."""
    from ray import tune

    from apet_ray.study.callbacks import trial_dirname, trial_name

    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(metric="score", mode="max", trial_name_creator=trial_name,
                                    trial_dirname_creator=trial_dirname, **tune_config),
        # verbose 0: Progress prints one line per trial instead of Tune's config dumps. A Train
        # run restarts its worker group itself (make_trainer); Tune retries a trial whose own
        # process died (with the node it ran on) from its last checkpoint -- for a Train run,
        # the new trial's TorchTrainer finds it under the same run name. --workers 0
        # checkpoints through Tune: keep two, as a Train run does
        run_config=tune.RunConfig(name=name, storage_path=str(results / "ray"), callbacks=callbacks, verbose=0,
                                  stop=stop, failure_config=tune.FailureConfig(max_failures=1),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=2)),
    )


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (``kill``, a scheduler's stop, ``ray job stop``) stops the study as Ctrl-C does:
    Tune ends the trials and returns, no file is left half-written, and Ray is shut down
    when the driver exits. Tune's own hint (``Tuner.restore``) is not apet-ray's way."""
    logging.getLogger("ray.tune.tune").addFilter(_NoRestoreHint())
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _NoRestoreHint(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Tuner.restore" not in record.getMessage()


def _finish(study: StudyConfig, results: Path) -> Path:
    if study.report:
        from apet_ray.report import make_report

        print("\n".join(make_report(results, results / "report").lines()), flush=True)
    return results
