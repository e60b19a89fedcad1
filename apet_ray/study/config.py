"""How a study runs, beside what it trains (its ``TrainConfig``s)."""

from __future__ import annotations

from dataclasses import dataclass, field


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
    score: str = "final"  # the report shows each trial's final or best score (both are recorded)
    tune_lr: int = 0  # > 0: an Optuna lr search of this many trials per group first (study/lr_search.py)
    dry_run: bool = False  # print the resolved trials and stop, before Ray
    json: bool = False  # the dry run as one JSON list
    extra: dict = field(default_factory=dict)  # study-specific facts recorded with the results

