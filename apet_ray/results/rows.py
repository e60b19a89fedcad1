"""A run record as table rows: the one function that turns what a run did into its trials
row, curves rows and transfer rows, for a study's results writer and ``apet-ray train`` alike."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from apet_ray.delta.methods import APET

if TYPE_CHECKING:  # reading results must not import torch (run/ does)
    from apet_ray.run.record import RunRecord


@dataclass
class TrialRows:
    trial: dict
    curves: list[dict]
    transfer: list[dict]


def rows_from_record(record: RunRecord, study: str, trial_id: str, status: str, code_version: str) -> TrialRows:
    """The rows of one run. ``status`` "finished" becomes "early_stopped" for a run that
    stopped before its last step (ASHA); "decided" is a threshold-search probe stopped once its
    score passed what it was probing (that score is a lower bound of its final one). PET methods at their preset leave op, distribution
    and requested_params empty: they are described by the method alone."""
    cfg = record.config
    spec = json.loads(cfg["spec"])
    is_apet = spec["method"] == APET
    if status == "finished" and not record.finished:
        status = "early_stopped"
    common = {
        "study": study, "model": record.model, "method": spec["method"],
        "op": spec["op"] if is_apet else None, "distribution": spec["distribution"] if is_apet else None,
        "seed": int(cfg["seed"]),
    }
    trial = {
        **common, "trial_id": trial_id, "family": record.kind, "total_params": record.total_params,
        "task": record.task,
        "task_type": record.task_type.upper(),  # SA, NLI, PI, QA, SUM as in the paper and the report
        "match": spec["match"] if is_apet else None,
        "requested_params": record.requested_params if is_apet else None,
        "trainable_params": record.trainable_params, "delta_params": record.delta_params,
        "ratio": record.delta_params / record.total_params,
        "lr": float(record.lr), "batch_size": int(cfg["batch_size"]), "max_steps": int(cfg["max_steps"]),
        "metric": record.metric, "random_guess": float(record.random_guess), "majority": record.majority,
        "final_score": record.final_score, "best_score": record.best_score,
        "steps_to_converge": record.steps_to_converge, "steps_run": record.steps_run,
        "wall_time_s": float(record.wall_time_s),
        "tokens_per_s": None if math.isnan(record.tokens_per_s) else record.tokens_per_s,
        "peak_memory_mb": float(record.peak_memory_mb), "checkpoint_bytes": record.checkpoint_bytes,
        "status": status, "code_version": code_version, "hparams": json.dumps(cfg, sort_keys=True, default=str),
        "versions": json.dumps(record.versions, sort_keys=True) if record.versions else None,
        "device": record.device or None, "precision": record.precision or None,
        "workers": int(cfg["workers"]), "strategy": record.strategy or None,
    }
    curves = [
        {**common, "trial_id": trial_id, "task": record.task, "delta_params": record.delta_params,
         "step": int(h["step"]), "score": float(h["score"]), "loss": float(h["loss"]),
         "tokens_per_s": float(h["tokens_per_s"]), "elapsed_s": float(h["elapsed_s"])}
        for h in record.history
    ]
    transfer = [
        {**common, "trial_id": trial_id, "source_task": record.task, "target_task": target, "score": float(value)}
        for target, value in record.transfer.items()
    ]
    return TrialRows(trial, curves, transfer)
