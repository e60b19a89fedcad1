"""The run record: everything one run is and did, in one typed value.

The loop builds it, updates it at every evaluation and sends it with every report, so
whoever sees the last report -- the Tune driver's results writer, even for a trial that
ASHA stopped, or ``apet-ray train`` -- holds the whole record and turns it into rows with
``apet_ray.results.rows_from_record``. The outcome (final and best score, steps run, steps
to converge) is derived from the history, never stored beside it, so the two cannot disagree.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields


@dataclass
class RunRecord:
    config: dict  # TrainConfig.to_dict(): what ran
    model: str  # display name (all-MiniLM-L6-v2, a hub id, a folder)
    kind: str  # a delta.architectures.Kind: bert | t5 | causal (the trials table's "family" column)
    task: str
    task_type: str  # sa, nli, pi, qa, sum
    metric: str
    random_guess: float  # chance level on this kind of model (an untrained T5 emits no valid label: 0)
    majority: float | None  # the eval split's majority-class rate (classification), else None
    lr: float
    strategy: str
    workers: int
    trainable_params: int  # deltas + a classifier head
    delta_params: int
    total_params: int  # backbone, tied weights once
    requested_params: int | None  # the budget asked for (APET), else None
    history: list[dict] = field(default_factory=list)  # per evaluation: step, score, loss, tokens_per_s, elapsed_s
    transfer: dict[str, float] = field(default_factory=dict)  # target task -> zero-shot score
    train_time_s: float = 0.0  # training steps only (evaluations and checkpoints excluded)
    wall_time_s: float = 0.0  # since the run started (load, data, loop)
    tokens: int = 0  # non-padding training tokens, all workers
    peak_memory_mb: float = 0.0  # largest over the workers
    peak_memory_mb_per_rank: list[float] = field(default_factory=list)  # each worker's, in rank order
    frozen_mb_per_rank: list[float] = field(default_factory=list)  # frozen weights each worker holds (its shard)
    checkpoint_bytes: int | None = None  # the last delta checkpoint (deltas.safetensors)
    frozen_unchanged: bool | None = None  # with verify_frozen: the backbone's checksum held
    device: str = ""  # what rank 0 trained on: the GPU's name, or the CPU model (provenance)
    precision: str = ""  # fp32 or bf16, as it ran
    versions: dict[str, str] = field(default_factory=dict)  # apet-ray, its commit, torch, transformers, ray, peft, python

    # ---- the outcome, from the history ------------------------------------------------
    @property
    def scores(self) -> list[float]:
        return [h["score"] for h in self.history]

    @property
    def final_score(self) -> float:
        return self.scores[-1] if self.history else float("nan")

    @property
    def best_score(self) -> float:
        return max(self.scores) if self.history else float("nan")

    @property
    def steps_run(self) -> int:
        return int(self.history[-1]["step"]) if self.history else 0

    @property
    def steps_to_converge(self) -> int | None:
        return steps_to_converge([h["step"] for h in self.history], self.scores, self.config["converge_tol"])

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.train_time_s if self.train_time_s > 0 else math.nan

    @property
    def finished(self) -> bool:
        """Ran every step it was configured for (else stopped early, e.g. by ASHA)."""
        return self.steps_run >= int(self.config["max_steps"])

    # ---- serialisation: rides in every Ray report as plain JSON values ------------------
    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(data: dict) -> "RunRecord":
        known = {f.name for f in fields(RunRecord)}
        if "family" in data and "kind" not in data:  # a record saved before the field's rename (a checkpoint to resume)
            data = {**data, "kind": data["family"]}
        return RunRecord(**{k: v for k, v in data.items() if k in known})


def steps_to_converge(steps: list[int], scores: list[float], tol: float) -> int | None:
    """First evaluated step from which the score stays within ``tol`` of its best; None when
    that is only the last evaluation of several -- a curve still rising at the end has not
    been seen to converge, and counting its last step would tie every short run."""
    if not scores:
        return None
    best = max(scores)
    first = len(scores) - 1
    while first > 0 and scores[first - 1] >= best - tol:
        first -= 1
    if first == len(scores) - 1 and len(scores) > 1:
        return None
    return steps[first]
