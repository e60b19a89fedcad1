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
from dataclasses import replace

from apet_ray.run.config import TrainConfig

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


def with_lr(cfg: TrainConfig, lr: float) -> TrainConfig:
    """``cfg`` at ``lr``: its deltas' step, and its prompt's when it trains one."""
    return replace(cfg, lr=lr, prompt_lr=lr)


def sampled_entry(config: dict) -> dict:
    """A Tune trial's entry (``config["trial"]``) with the lr an lr search sampled applied,
    in its training config, its id and its name; any other trial's entry as it is."""
    from apet_ray.study.runner import trial_id

    entry = config["trial"]
    if "lr" not in config:
        return entry
    cfg = with_lr(TrainConfig.from_dict(entry["train"]), float(config["lr"]))
    return {**entry, "trial_id": trial_id(cfg, config["lr_study"]), "name": f"{entry['name']}-lr{cfg.lr:.1e}",
            "train": cfg.to_dict()}


def tune_learning_rates(study, trials: list[TrainConfig], n: int, run_search) -> list[float]:
    """The chosen lr of each trial's group, in trial order. ``run_search(name, cfg, space)``
    runs one group's search as a Tune experiment and returns its (lr, final score, finished)
    triples (``runner._lr_search_experiment``)."""
    from ray import tune

    chosen: dict[str, float] = {}
    groups: dict[str, TrainConfig] = {}
    for cfg in sorted(trials, key=lambda c: c.seed):
        groups.setdefault(group_key(cfg), cfg)
    for i, (key, cfg) in enumerate(groups.items()):
        low, high = LR_RANGES[lr_family(cfg)]
        outcomes = run_search(f"{study.study}-lr{i}", cfg, tune.loguniform(low, high))
        finished = [o for o in outcomes if o[2]] or outcomes
        best = max(finished, key=lambda o: (o[1] if math.isfinite(o[1]) else -math.inf, -o[0]))
        chosen[key] = best[0]
        print(f"[apet-ray] lr search {i + 1}/{len(groups)} ({cfg.spec.label}, {lr_family(cfg)} range "
              f"{low:g}..{high:g}): {len(outcomes)} trials, chosen lr {best[0]:.2e} (score {best[1]:.3f})", flush=True)
    return [chosen[group_key(cfg)] for cfg in trials]
