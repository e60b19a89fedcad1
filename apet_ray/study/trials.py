"""Who a trial is: its id (file names of its results), its short name (console, Tune folders),
and its entry in a Tune experiment's config.

Every place that names a trial reads it from here, so a trial found by a resumed study, by
a threshold search or by an lr search's sampled trial is named the same way.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import replace
from pathlib import Path

from apet_ray.delta import DeltaSpec
from apet_ray.delta.peft_names import slug as peft_slug
from apet_ray.run.config import TrainConfig


def slug(spec: DeltaSpec) -> str:
    """What a spec trains, short: ``lora``, ``apet-add-weight-discrete=lora``, ``apet-concat-adjacent-5000``,
    ``peft-ia3`` (a peft arm's options are in the trial id's digest)."""
    if spec.method != "apet":
        return peft_slug(spec.method) if spec.is_peft else spec.method
    match = peft_slug(spec.match) if spec.match and spec.match.startswith("peft:") else spec.match
    return f"apet-{spec.op}-{spec.distribution}" + (f"={match}" if spec.match else f"-{spec.budget}")


def trial_id(cfg: TrainConfig, study: str) -> str:
    """Stable across restarts: the same grid point always writes the same files. It becomes
    a file name, so a model folder or task name with spaces, other scripts or great length
    is reduced to safe characters here (the digest keeps such ids distinct). The format
    predates ``slug`` (``=`` spelled ``-``) and is kept so existing results resume."""
    digest = hashlib.sha1(json.dumps(_as_first_recorded(cfg), sort_keys=True, default=str).encode()).hexdigest()[:8]
    model = _safe(Path(cfg.model).name.replace("_", "-"))
    return f"{_safe(study)}-{model}-{_safe(cfg.task)}-{slug(cfg.spec).replace('=', '-')}-s{cfg.seed}-{digest}"


# Config fields added after results were first written, at the value that behaves as before
# their time: a config that leaves them there digests as it always did, so a results folder
# of an earlier version still resumes.
ADDED_LATER = {"schedule": "constant", "labels": "task", "grad_accum": 1, "activation_checkpointing": False}


def _as_first_recorded(cfg: TrainConfig) -> dict:
    data = cfg.to_dict()
    for name, value in ADDED_LATER.items():
        if data.get(name) == value:
            del data[name]
    return data


def _safe(part: str, limit: int = 40) -> str:
    return (re.sub(r"[^A-Za-z0-9._=+-]+", "-", part).strip("-.") or "x")[:limit]


def trial_name(cfg: TrainConfig) -> str:
    """``lora-s0``, ``apet-add-discrete=lora-s1``, ``apet-add-discrete-316-s0``."""
    return f"{slug(cfg.spec)}-s{cfg.seed}"


def trial_names(trials: list[TrainConfig]) -> list[str]:
    """Short names that say what each trial is (``lora-s0``, ``apet-add-discrete=lora-s1``),
    with the model and task when the grid has several; repeated names get a counter."""
    several = len({(t.model, t.task) for t in trials}) > 1
    names, seen = [], {}
    for cfg in trials:
        where = f"{Path(cfg.model).name}-{cfg.task}-" if several else ""
        name = f"{where}{trial_name(cfg)}"
        seen[name] = seen.get(name, 0) + 1
        names.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return names


def entry(cfg: TrainConfig, study: str, name: str) -> dict:
    """A trial as a Tune experiment carries it in its config (``config["trial"]``)."""
    return {"trial_id": trial_id(cfg, study), "name": name, "group": f"{cfg.model} | {cfg.task}", "train": cfg.to_dict()}


def with_lr(cfg: TrainConfig, lr: float) -> TrainConfig:
    """``cfg`` at ``lr``: its deltas' step, and its prompt's when it trains one."""
    return replace(cfg, lr=lr, prompt_lr=lr)


def sampled_entry(config: dict) -> dict:
    """A Tune trial's entry with the lr an lr search sampled (``config["lr"]``) applied, in
    its training config, its id and its name; any other trial's entry as it is."""
    trial = config["trial"]
    if "lr" not in config:
        return trial
    cfg = with_lr(TrainConfig.from_dict(trial["train"]), float(config["lr"]))
    return {**trial, "trial_id": trial_id(cfg, config["lr_study"]), "name": f"{trial['name']}-lr{cfg.lr:.1e}",
            "train": cfg.to_dict()}


def tune_trial_name(trial) -> str:
    """A Tune trial's name: apet-ray's (``entry``), with an lr search's sampled lr."""
    return sampled_entry(trial.config).get("name", trial.trial_id)


def tune_trial_dirname(trial) -> str:
    """The trial's folder under results/ray/<experiment>/: its name, unique by Tune's id."""
    return f"{tune_trial_name(trial)}-{trial.trial_id}"
