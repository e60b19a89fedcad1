"""The Tune side of a study: the function trainable, where its trials find their checkpoints,
the resources they take, and the ``Tuner`` every study and lr search runs.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import signal
import threading
from pathlib import Path

from apet_ray.run.checkpoint import is_complete
from apet_ray.run.config import TrainConfig
from apet_ray.run.record import RunRecord
from apet_ray.study.config import StudyConfig
from apet_ray.study.trials import sampled_entry, tune_trial_dirname, tune_trial_name


def tune_trial(config: dict) -> None:
    """The Tune function trainable: one Ray Train run (Train V2 pattern, docs/cluster.md), or with
    ``workers=0`` the training itself, in this trial's process."""
    from ray import tune

    entry = sampled_entry(config)  # an lr search's trial: its sampled lr applied
    record = Path(config["results"]) / "trials" / f"{entry['trial_id']}.parquet"
    if record.exists():
        # finished before an interruption that Tune's own state missed: never run it twice
        import pandas as pd

        try:
            row = pd.read_parquet(record).iloc[0]
        except Exception:  # unreadable: it is set aside on the next resume; train it now
            row = None
        if row is not None:
            tune.report({"score": float(row.final_score), "step": int(row.steps_run), "already_recorded": True})
            return
    cfg = TrainConfig.from_dict(entry["train"])
    if cfg.workers == 0:
        # No worker group: starting one (controller and worker processes, their imports)
        # costs ~20 s per trial on a laptop, a third of a one-minute trial (docs/benchmarks.md)
        import gc

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
        if not is_complete(folder):
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


def experiment_name(results: Path, study: str) -> str:
    """The Tune experiment of this attempt: ``<study>`` first, ``<study>.2``, ``.3``... for each
    resume, so earlier attempts' checkpoints stay where their trials can find them."""
    n = 1
    while (results / "ray" / (study if n == 1 else f"{study}.{n}")).exists():
        n += 1
    return study if n == 1 else f"{study}.{n}"


def placement(study: StudyConfig, workers: int, most: int) -> tuple[dict, float, int, bool]:
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


def trial_settings(results: Path, cpus_per_worker: float, use_gpu: bool) -> dict:
    """What every trial of an experiment reads from its config beside its own entry."""
    return {"results": str(results), "train_storage": str(results / "ray" / "train"), "cpus_per_worker": cpus_per_worker,
            "use_gpu": use_gpu}


def make_tuner(trainable, param_space: dict, name: str, results: Path, callbacks: list, stop=None, **tune_config):
    """The Tune experiment a study (or one group's lr search) runs: trials scored by their
    "score" (max) and named by apet-ray, under ``results``/ray/``name``."""
    from ray import tune
    from ray.tune.stopper import CombinedStopper

    from apet_ray.study.callbacks import ResultsWriter, WriteRefused

    writers = [c for c in callbacks if isinstance(c, ResultsWriter)]
    if writers:  # a refused write ends the experiment (the writer says why once it has returned)
        stop = CombinedStopper(*([stop] if stop is not None else []), WriteRefused(writers))
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(metric="score", mode="max", trial_name_creator=tune_trial_name,
                                    trial_dirname_creator=tune_trial_dirname, **tune_config),
        # verbose 0: Progress prints one line per trial instead of Tune's config dumps. A Train
        # run restarts its worker group itself (make_trainer); Tune retries a trial whose own
        # process died (with the node it ran on) from its last checkpoint -- for a Train run,
        # the new trial's TorchTrainer finds it under the same run name. --workers 0
        # checkpoints through Tune: keep two, as a Train run does
        run_config=tune.RunConfig(name=name, storage_path=str(results / "ray"), callbacks=callbacks, verbose=0,
                                  stop=stop, failure_config=tune.FailureConfig(max_failures=1),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=2)),
    )


def fit(tuner, writer):
    """``tuner.fit()``, then the writer's refused write (if any) as one line -- also when Tune
    itself failed on the same disk afterwards."""
    try:
        grid = tuner.fit()
    except Exception:
        writer.raise_failure()
        raise
    writer.raise_failure()
    return grid


@contextlib.contextmanager
def sigterm_as_interrupt():
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

