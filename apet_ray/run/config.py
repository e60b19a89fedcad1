"""What one run is: the ``TrainConfig`` dataclass, its checks and its serialisation.

``check_config`` finds everything that can be wrong with a run before any Ray job starts
(unknown names, impossible budgets, missing data or columns, nonsensical numbers) and says
it in one line (``UserError``); the loop relies on it and repeats none of it.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from apet_ray.delta import DeltaSpec, attach, count_backbone, count_deltas
from apet_ray.delta.architectures import Kind, position_offset
from apet_ray.delta.ops import PromptTokens
from apet_ray.errors import UserError
from apet_ray.models import DEFAULT_MODEL, build_model, check_run_tokenizer
from apet_ray.paths import check_input
from apet_ray.run.memory import recompute_activations
from apet_ray.tasks import Task, custom_task, get_task, load_examples

PRECISIONS = ("auto", "fp32", "bf16")
SCHEDULES = ("constant", "linear")
LABEL_SETS = ("task", "unified")
DATA_SOURCES = ("auto", "dir", "hub", "packaged")


@dataclass
class TrainConfig:
    model: str = DEFAULT_MODEL
    task: str = "rotten_tomatoes"  # a registered task's name, or a bring-your-own task's (see ``custom``)
    spec: DeltaSpec = field(default_factory=lambda: DeltaSpec.pet("lora"))
    data_dir: str | None = None
    data_source: str = "auto"
    custom: dict | None = None  # bring-your-own task: keyword arguments of tasks.custom_task (its name is ``task``)
    seed: int = 0
    batch_size: int = 32  # global, split over the workers
    grad_accum: int = 1  # each worker's share in this many micro-batches, one update: the same step, less memory
    lr: float | None = None  # None: the paper's (3e-4; 5e-5 on RTE)
    prompt_lr: float | None = None  # soft prompts; None: the paper's (3e-2; 5e-5 on RTE)
    weight_decay: float = 0.01  # AdamW's; the paper's release trains with the Trainer's 0
    schedule: str = "constant"  # learning rate over the run: constant, or linear decay to 0 (the release's)
    max_steps: int = 300
    eval_every: int = 50
    train_limit: int | None = None
    eval_limit: int | None = 1000
    max_input_len: int | None = None  # None: the task's (128 single-sentence, 256 otherwise)
    workers: int = 1
    strategy: str = "auto"
    precision: str = "auto"  # auto: bf16 on CUDA and on CPUs with native bf16 (one process), else fp32
    converge_tol: float = 0.01
    train_head: bool = True  # BERT classifier head; False: frozen at its seeded random init
    transfer_tasks: tuple[str, ...] = ()  # after training, zero-shot eval on these (unified labels)
    labels: str = "task"  # train on the task's own labels, or on the unified set (E5: the release's "number" mapping)
    verify_frozen: bool = False  # checksum the frozen weights before and after (costs a pass over them)
    activation_checkpointing: bool = False  # recompute each block's activations in backward: less memory, more compute

    def with_absolute_paths(self) -> "TrainConfig":
        """Ray workers run in another directory: local paths must not be relative."""
        def absolute(path: str | None) -> str | None:
            return str(Path(path).expanduser().resolve()) if path and Path(path).expanduser().exists() else path

        custom = {**self.custom, "path": absolute(self.custom["path"]), "eval_path": absolute(self.custom.get("eval_path"))} if self.custom else None
        return replace(self, model=absolute(self.model), data_dir=absolute(self.data_dir), custom=custom)

    def resolve_task(self) -> Task:
        return custom_task(**self.custom, name=self.task) if self.custom else get_task(self.task)

    def training_task(self) -> Task:
        """The task as it is trained and scored: on its own labels, or on the unified set."""
        task = self.resolve_task()
        return task.unified_view() if self.labels == "unified" else task

    def data_source_kwargs(self) -> dict:
        """How ``load_examples`` finds a registered task's data (a custom task knows its files)."""
        return {} if self.custom else dict(data_dir=self.data_dir, source=self.data_source)

    @property
    def trains_prompt(self) -> bool:
        """The deltas include soft prompt tokens (prompt tuning, or APET concat at the embeddings)."""
        return self.spec.op == "concat" and "embeddings" in self.spec.positions

    def learning_rates(self) -> tuple[float, float]:
        """(base, soft-prompt) learning rates: the paper's unless ``lr`` / ``prompt_lr`` are given."""
        paper = (5e-5, 5e-5) if self.resolve_task().name == "rte" else (3e-4, 3e-2)
        return (self.lr if self.lr is not None else paper[0],
                self.prompt_lr if self.prompt_lr is not None else paper[1])

    def to_dict(self) -> dict:
        """Plain JSON-able values (the spec as its JSON text): what Ray ships and results record."""
        data = asdict(self)
        data["spec"] = self.spec.to_json()
        data["transfer_tasks"] = list(self.transfer_tasks)
        return data

    @staticmethod
    def from_dict(data: dict) -> "TrainConfig":
        return TrainConfig(**{**data, "spec": DeltaSpec.from_json(data["spec"]),
                              "transfer_tasks": tuple(data.get("transfer_tasks", ()))})


@dataclass(frozen=True)
class RunPlan:
    """What ``check_config`` resolved without loading weights: a dry run's line."""

    model: str
    kind: str  # a delta.architectures.Kind (the dry run writes it as "family")
    task: str
    task_type: str
    delta_params: int  # exact, from the plan on the meta device
    total_params: int
    max_input_len: int  # the effective one (the task's unless given)
    lr: float  # the learning rate the method's deltas train at (a prompt's own, for prompt tuning)

    def to_dict(self) -> dict:
        return asdict(self)


def check_task_fits_kind(task: Task, kind: str) -> None:
    if kind == Kind.BERT and not task.is_classification:
        raise UserError(f"{task.name} is a {task.type} task: BERT-family models do classification only (SA, NLI, PI)")
    if kind == Kind.BERT and len(task.text_columns) > 2:
        # the encoder reads one text or a pair ([CLS] a [SEP] b [SEP]): a third column would be
        # dropped without a word, so it is refused; T5 and decoder-only models read them all
        raise UserError(f"{task.name} has {len(task.text_columns)} text columns ({', '.join(task.text_columns)}), but "
                        "a BERT-family model reads one text or a pair: join them into one or two columns, or use a "
                        "T5 or decoder-only model (they read every column, each named)")


# Seeds feed torch.Generator and numpy, and are mixed with step numbers: 32 bits keep all
# of them in range.
MAX_SEED = 2**32 - 1


def check_positions(model, kind: str, max_input_len: int, task: Task) -> None:
    """Soft prompt + input (+ generated target, decoder-only) must fit the model's position
    table, or the first forward fails deep inside the model."""
    config = getattr(getattr(model, "backbone", model), "config", None)
    limit = getattr(config, "max_position_embeddings", None)
    if not limit:  # T5: relative positions, no table
        return
    limit -= position_offset(getattr(config, "model_type", None))  # rows RoBERTa-style encoders reserve
    prompt = sum(m.length for m in model.modules() if isinstance(m, PromptTokens))
    target = task.max_gen_len if kind == Kind.CAUSAL and not task.is_classification else (1 if kind == Kind.CAUSAL else 0)
    need = prompt + max_input_len + target
    if need > limit:
        parts = [f"{max_input_len} input tokens"] + ([f"{prompt} soft-prompt tokens"] if prompt else []) + \
                ([f"{target} target tokens"] if target else [])
        raise UserError(f"{' + '.join(parts)} = {need} positions, but the model has {limit}: lower --max-input-len"
                        + (" or the prompt length" if prompt else ""))


def check_paths(cfg: TrainConfig) -> None:
    """The run's input paths (``paths.check_input``): none empty, no symlink loop, each readable
    where it exists; a missing one is left to its reader, which says "not found"."""
    if not str(cfg.model).strip():
        raise UserError("model '': an empty name (leave --model out for the default)")
    if os.path.lexists(Path(cfg.model).expanduser()):
        check_input(cfg.model, "model")  # a local folder (a hub name is not a path here)
    check_input(cfg.data_dir, "--data-dir", folder=True)
    for key in ("path", "eval_path"):
        check_input((cfg.custom or {}).get(key), "data file", folder=False)


def check_config(cfg: TrainConfig) -> RunPlan:
    """Refuse, in one line, a run that cannot work, and say what it resolves to; loads one
    example per split to prove the data (no weights)."""
    from apet_ray.distributed import STRATEGIES

    check_paths(cfg)
    for name in ("batch_size", "max_steps", "eval_every"):
        value = getattr(cfg, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UserError(f"{name} must be a positive whole number, not {value!r}")
    if not isinstance(cfg.workers, int) or cfg.workers < 0:
        raise UserError(f"workers must be 0 (train in this process) or more, not {cfg.workers!r}")
    if cfg.batch_size < max(cfg.workers, 1):
        raise UserError(f"batch size {cfg.batch_size} cannot be split over {cfg.workers} workers")
    if not isinstance(cfg.grad_accum, int) or isinstance(cfg.grad_accum, bool) or cfg.grad_accum < 1:
        raise UserError(f"grad_accum must be a positive whole number, not {cfg.grad_accum!r}")
    if cfg.batch_size // max(cfg.workers, 1) < cfg.grad_accum:
        raise UserError(f"a batch of {cfg.batch_size} over {max(cfg.workers, 1)} worker(s) cannot be cut into "
                        f"{cfg.grad_accum} micro-batches")
    if not isinstance(cfg.activation_checkpointing, bool):
        raise UserError(f"activation_checkpointing must be true or false, not {cfg.activation_checkpointing!r}")
    if cfg.strategy not in STRATEGIES:
        raise UserError(f"unknown strategy {cfg.strategy!r} (known: {', '.join(STRATEGIES)})")
    if cfg.strategy in ("ddp", "fsdp") and cfg.workers == 0:
        raise UserError(f"--strategy {cfg.strategy} splits a run over Ray Train workers: give --workers 1 or more")
    if cfg.data_source not in DATA_SOURCES:
        raise UserError(f"unknown data source {cfg.data_source!r} (known: {', '.join(DATA_SOURCES)})")
    if cfg.precision not in PRECISIONS:
        raise UserError(f"unknown precision {cfg.precision!r} (known: {', '.join(PRECISIONS)})")
    if cfg.labels not in LABEL_SETS:
        raise UserError(f"unknown label set {cfg.labels!r} (known: {', '.join(LABEL_SETS)})")
    if cfg.labels == "unified":
        cfg.resolve_task().unified_view()  # a task without a unified pair is refused here
    if cfg.schedule not in SCHEDULES:
        raise UserError(f"unknown schedule {cfg.schedule!r} (known: {', '.join(SCHEDULES)})")
    if not (isinstance(cfg.weight_decay, (int, float)) and 0 <= cfg.weight_decay < float("inf")):
        raise UserError(f"weight_decay must be a finite number of 0 or more, not {cfg.weight_decay!r}")
    for name in ("lr", "prompt_lr"):
        value = getattr(cfg, name)
        if value is not None and not (value > 0 and value < float("inf")):
            raise UserError(f"{name} must be positive and finite, not {value}")
    for name in ("train_limit", "eval_limit", "max_input_len"):
        value = getattr(cfg, name)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise UserError(f"{name} must be a positive whole number, not {value!r}")
    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool) or not 0 <= cfg.seed <= MAX_SEED:
        raise UserError(f"seed must be a whole number from 0 to {MAX_SEED:,}, not {cfg.seed!r}")
    task = cfg.resolve_task()
    model, info = build_model(cfg.model, num_labels=task.num_labels if task.is_classification else None, device="meta")
    check_task_fits_kind(task, info.kind)
    attach(model, cfg.spec)  # plans the budget on the meta device: refuses what cannot fit
    if cfg.activation_checkpointing:
        recompute_activations(model)  # refuses a model whose blocks transformers cannot recompute
    check_positions(model, info.kind, cfg.max_input_len or task.max_input_len, task)
    check_run_tokenizer(cfg.model)
    for split in ("train", "eval"):
        load_examples(task, split, limit=1, seed=cfg.seed, **cfg.data_source_kwargs())
    for target in cfg.transfer_tasks:
        target_task = get_task(target)
        if not (task.is_classification and target_task.is_classification):
            raise UserError(f"zero-shot transfer {task.name} -> {target} needs classification tasks on both sides")
        load_examples(target_task, "eval", limit=1, seed=cfg.seed, data_dir=cfg.data_dir, source=cfg.data_source)
    base_lr, prompt_lr = cfg.learning_rates()
    return RunPlan(model=info.name, kind=info.kind, task=task.name, task_type=task.type.upper(),
                   delta_params=count_deltas(model), total_params=count_backbone(model),
                   max_input_len=cfg.max_input_len or task.max_input_len, lr=prompt_lr if cfg.trains_prompt else base_lr)
