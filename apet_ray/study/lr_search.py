"""``--tune-lr N``: a learning rate per group, chosen by Optuna, before the study proper.

A structure compared at one shared learning rate is ranked by its lr sensitivity as much as
by what it can learn (sparse masks want a larger step: docs/benchmarks.md §6). So with
``--tune-lr N`` each group of trials that differ only in their seed -- one (model, task,
method or structure, count) -- first gets an Optuna search (Ray Tune's ``OptunaSearch``) of
N trials on its first seed, log-uniform over the method family's range below, with ASHA
stopping the poor ones on the eval metric. The study's trials then run at their group's
chosen lr (the best final score; a trial ASHA stopped only wins if none ran to the end).
Search trials are written with status ``search`` (their steps and time are the search's
cost) and kept out of tables, figures and findings.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from apet_ray.atomic import owning
from apet_ray.run.config import TrainConfig
from apet_ray.study.config import StudyConfig
from apet_ray.study.experiment import fit, make_tuner, placement, trial_settings, tune_trial
from apet_ray.study.trials import entry, trial_names

# log-uniform ranges per method family: around the paper's 3e-4 / 3e-2, wide enough for the
# 1e-2 that sparse masks want, and FT's usual 1e-5..1e-4
LR_RANGES = {"ft": (1e-6, 1e-3), "prompt": (1e-3, 3e-1), "delta": (1e-4, 3e-2)}


def lr_family(cfg: TrainConfig) -> str:
    if cfg.spec.method == "ft":
        return "ft"
    return "prompt" if cfg.trains_prompt else "delta"


def group_key(cfg: TrainConfig) -> str:
    """Everything but the seed (of the run and of the masks)."""
    data = cfg.to_dict()
    data.pop("seed")
    spec = json.loads(data.pop("spec"))
    spec.pop("seed", None)
    return json.dumps({**data, "spec": spec}, sort_keys=True, default=str)


def choose_lrs(study: StudyConfig, trials: list[TrainConfig]) -> list[float]:
    """The chosen lr of each trial's group, in trial order: one Optuna + ASHA Tune experiment
    per group, whose trials are written with status ``search``."""
    from ray import tune

    from apet_ray.run.launch import init_ray

    results = Path(study.results).resolve()
    results.mkdir(parents=True, exist_ok=True)
    init_ray(study.address)
    resources, cpus_per_worker, concurrent, use_gpu = placement(study, trials[0].workers, study.tune_lr)
    static = trial_settings(results, cpus_per_worker, use_gpu)
    groups: dict[str, TrainConfig] = {}
    for cfg in sorted(trials, key=lambda c: c.seed):
        groups.setdefault(group_key(cfg), cfg)
    chosen: dict[str, float] = {}
    with owning(results, study.study):
        for i, (key, cfg) in enumerate(groups.items()):
            low, high = LR_RANGES[lr_family(cfg)]
            outcomes = _search(study, f"{study.study}-lr{i}", cfg, tune.loguniform(low, high), resources, static, concurrent)
            finished = [o for o in outcomes if o[2]] or outcomes
            best = max(finished, key=lambda o: (o[1] if math.isfinite(o[1]) else -math.inf, -o[0]))
            chosen[key] = best[0]
            print(f"[apet-ray] lr search {i + 1}/{len(groups)} ({cfg.spec.label}, {lr_family(cfg)} range "
                  f"{low:g}..{high:g}): {len(outcomes)} trials, chosen lr {best[0]:.2e} (score {best[1]:.3f})", flush=True)
    return [chosen[group_key(cfg)] for cfg in trials]


def _search(study: StudyConfig, name: str, cfg: TrainConfig, space, resources: dict, static: dict,
            concurrent: int) -> list[tuple[float, float, bool]]:
    """One group's lr search: Optuna proposes, ASHA stops; (lr, final score, ran to the end) per trial."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from apet_ray.run.launch import code_version
    from apet_ray.study.callbacks import Progress, ResultsWriter

    results = Path(static["results"])
    shutil.rmtree(results / "ray" / name, ignore_errors=True)  # recorded trials are skipped by tune_trial
    asha = ASHAScheduler(time_attr="step", max_t=cfg.max_steps, grace_period=cfg.eval_every * study.grace_evals,
                         reduction_factor=2)
    writer = ResultsWriter(results, name, code_version(), status="search")
    tuner = make_tuner(tune.with_resources(tune_trial, resources),
                       {**static, "trial": entry(cfg, name, trial_names([cfg])[0]), "lr_study": name, "lr": space},
                       name, results, [writer, Progress(study.tune_lr, concurrent, writer.records)],
                       search_alg=OptunaSearch(seed=cfg.seed), scheduler=asha, num_samples=study.tune_lr,
                       max_concurrent_trials=concurrent, reuse_actors=cfg.workers == 0)
    return [(float(r.config["lr"]), float(r.metrics.get("score", float("nan"))), int(r.metrics.get("step", 0)) >= cfg.max_steps)
            for r in fit(tuner, writer) if r.metrics]
