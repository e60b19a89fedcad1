"""Running a study on Ray Tune; results go to Parquet.

A study is a list of ``TrainConfig``s (the grid, built by a script in ``experiments/``)
plus how to run it (``StudyConfig``). ``run_study`` validates every trial before Ray starts
(``checks``; a dry run prints them resolved and stops), then runs one Tune experiment
(``experiment``) whose function trainable either trains in its own process (``workers=0``)
or drives a ``TorchTrainer`` (the Train V2 pattern), with ASHA per model and task when
asked; driver-side callbacks write one Parquet file per table per trial as it ends
(``callbacks``). A trial's id and name come from ``trials``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from apet_ray.atomic import make_folder, owning, write_text
from apet_ray.errors import Interrupted
from apet_ray.results import recorded_trials, trial_ids
from apet_ray.run.config import TrainConfig
from apet_ray.study.checks import dry_run_rows, print_dry_run, validate
from apet_ray.study.config import StudyConfig
from apet_ray.study.experiment import (experiment_name, fit, make_tuner, placement, sigterm_as_interrupt, trial_settings,
                                      tune_trial)
from apet_ray.study.lr_search import choose_lrs
from apet_ray.study.trials import entry, trial_id, trial_names, with_lr


def run_study(study: StudyConfig, trials: list[TrainConfig], searcher=None, max_trials: int | None = None,
              callbacks: tuple = (), stopper=None) -> Path:
    """Validate, run on Ray Tune, write Parquet, print the report. Returns the results folder.

    Without ``searcher`` the trials are the grid. With one (e.g. ``threshold_search.ThresholdSearcher``)
    the searcher proposes the trials and ``trials`` only lists configs to validate up front, and
    ``stopper`` (a Tune ``Stopper``, e.g. ``threshold_search.DecidedProbes``) may end trials early.
    ``callbacks`` are further Tune callbacks (e.g. a benchmark's timeline).
    """
    plans = validate(study, trials)
    if study.dry_run:
        print_dry_run(study, dry_run_rows(trials, plans))
        return Path(study.results).resolve()
    results = make_folder(Path(study.results).resolve())
    with owning(results, study.study):  # a second study on this folder is refused, in one line
        return _run_study(study, trials, results, searcher, max_trials, callbacks, stopper)


def _run_study(study: StudyConfig, trials: list[TrainConfig], results: Path, searcher, max_trials: int | None,
               callbacks: tuple, stopper) -> Path:
    from ray import tune

    from apet_ray.run.launch import code_version, init_ray
    from apet_ray.study.asha import GroupedASHA
    from apet_ray.study.callbacks import Progress, ResultsWriter

    init_ray(study.address)
    workers = trials[0].workers
    local = study.address in (None, "", "local")
    trial_resources, cpus_per_worker, concurrent, use_gpu = placement(study, workers, len(trials) if searcher is None else 10**6)
    if study.tune_lr and searcher is None:
        trials = [with_lr(t, lr) for t, lr in zip(trials, choose_lrs(study, trials))]
    names = trial_names(trials)
    grid = [entry(t, study.study, name) for t, name in zip(trials, names)]
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
        recorded = recorded_trials(results)  # a file that cannot be read is set aside: its trial runs again
        grid = [g for g in grid if g["trial_id"] not in recorded]
        print(f"[apet-ray] resuming {study.study}: {len(recorded & {trial_id(t, study.study) for t in trials})} trials "
              f"recorded, {len(grid)} to run (Tune experiment {name})", flush=True)
        if not grid:
            return _finish(study, results)

    trainable = tune.with_resources(tune_trial, trial_resources)
    static = trial_settings(results, cpus_per_worker, use_gpu)
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
    tuner = make_tuner(trainable, param_space, name, results, [writer, progress, *callbacks], stop=stopper,
                   scheduler=scheduler if searcher is None else None, max_concurrent_trials=concurrent,
                   search_alg=searcher, num_samples=(max_trials or -1) if searcher is not None else 1,
                   # the next trial starts in a warm process: no second import of torch. Not for
                   # Train runs: a reused trial process that ASHA stopped keeps its Train run (and
                   # its CPUs) alive, and the study hangs
                   reuse_actors=workers == 0)
    started = time.time()
    with sigterm_as_interrupt():
        grid_result = fit(tuner, writer)  # a refused write: one line, after Tune has stopped every trial
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


def _finish(study: StudyConfig, results: Path) -> Path:
    if study.report:
        from apet_ray.report import make_report

        print("\n".join(make_report(results, results / "report", score=study.score).lines()), flush=True)
    return results
