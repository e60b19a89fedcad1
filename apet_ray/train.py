"""One training run: load a frozen backbone, attach a delta spec, train only the deltas,
evaluate on a schedule, report. Read it top to bottom: ``train`` is the whole loop.

The same function runs in one process (``apet-ray train --workers 0``) and inside every
Ray Train worker (``ray_train_loop``); under Ray the process group already exists and
``distributed.wrap`` applies DDP or FSDP2.
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from apet_ray.data import collate, encode, global_batch, shard
from apet_ray.delta import DeltaSpec, attach, count_backbone, count_deltas, count_trainable, load_state, read_deltas, save_deltas, trainable_state_dict
from apet_ray.distributed import all_reduce_sum, frozen_checksum, full_tensor, like, rank_and_world, resolve_strategy, unwrap, wrap
from apet_ray.models import DEFAULT_MODEL, build_model, load_tokenizer
from apet_ray.tasks import Task, custom_task, get_task, load_examples, score

Report = Callable[[dict, "str | None"], None]


@dataclass
class TrainConfig:
    model: str = DEFAULT_MODEL
    task: str = "rotten_tomatoes"
    spec: DeltaSpec = field(default_factory=lambda: DeltaSpec.pet("lora"))
    data_dir: str | None = None
    data_source: str = "auto"
    custom: dict | None = None  # bring-your-own task: keyword arguments of tasks.custom_task
    seed: int = 0
    batch_size: int = 32  # global, split over the workers
    lr: float | None = None  # None: the paper's (3e-4; 5e-5 on RTE)
    prompt_lr: float | None = None  # soft prompts; None: the paper's (3e-2; 5e-5 on RTE)
    weight_decay: float = 0.01
    max_steps: int = 300
    eval_every: int = 50
    train_limit: int | None = None
    eval_limit: int | None = 1000
    max_input_len: int | None = None  # None: the task's (128 single-sentence, 256 otherwise)
    workers: int = 1
    strategy: str = "auto"
    precision: str = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    converge_tol: float = 0.01
    train_head: bool = True  # BERT classifier head; False: frozen at its seeded random init
    transfer_tasks: tuple[str, ...] = ()  # after training, zero-shot eval on these (unified labels)
    verify_frozen: bool = False  # checksum the frozen weights before and after (costs a pass over them)

    def with_absolute_paths(self) -> "TrainConfig":
        """Ray workers run in another directory: local paths must not be relative."""
        def absolute(path: str | None) -> str | None:
            return str(Path(path).expanduser().resolve()) if path and Path(path).expanduser().exists() else path

        custom = {**self.custom, "path": absolute(self.custom["path"]), "eval_path": absolute(self.custom.get("eval_path"))} if self.custom else None
        return replace(self, model=absolute(self.model), data_dir=absolute(self.data_dir), custom=custom)

    def resolve_task(self) -> Task:
        return custom_task(**self.custom) if self.custom else get_task(self.task)

    def learning_rates(self) -> tuple[float, float]:
        """(base, soft-prompt) learning rates: the paper's unless ``lr`` / ``prompt_lr`` are given."""
        paper = (5e-5, 5e-5) if self.resolve_task().name == "rte" else (3e-4, 3e-2)
        return (self.lr if self.lr is not None else paper[0],
                self.prompt_lr if self.prompt_lr is not None else paper[1])


def train(cfg: TrainConfig, report: Report, restore_dir: str | None = None) -> dict:
    rank, world = rank_and_world()
    device = _device()
    t_start = time.perf_counter()
    _reset_peak_memory(device)
    torch.manual_seed(cfg.seed)

    # ---- model and deltas ----------------------------------------------------------------
    task = cfg.resolve_task()
    model, info = build_model(cfg.model, num_labels=task.num_labels if task.is_classification else None, seed=cfg.seed)
    if info.family == "bert" and not task.is_classification:
        raise ValueError(f"{task.name} is a {task.type} task: BERT-family models do classification only")
    plan = attach(model, cfg.spec)
    if hasattr(model, "head") and not cfg.train_head:
        model.head.requires_grad_(False)
    counts = {"trainable_params": count_trainable(model), "delta_params": count_deltas(model),
              "total_params": count_backbone(model), "requested_params": plan.requested}

    # ---- data ----------------------------------------------------------------------------
    tokenizer = load_tokenizer(cfg.model)
    source = dict(data_dir=cfg.data_dir, source=cfg.data_source) if not cfg.custom else {}
    train_data = encode(task, load_examples(task, "train", limit=cfg.train_limit, seed=cfg.seed, **source), tokenizer, info.family, cfg.max_input_len)
    eval_data = encode(task, load_examples(task, "eval", limit=cfg.eval_limit, seed=cfg.seed, **source), tokenizer, info.family, cfg.max_input_len)
    pad_id = tokenizer.pad_token_id

    # ---- resume: deltas go in before sharding, optimizer state after --------------------
    state = {"step": 0, "history": [], "losses": [], "tokens": 0, "elapsed": 0.0}
    saved_optim = None
    if restore_dir is not None:
        tensors, _ = read_deltas(Path(restore_dir) / "deltas.safetensors")
        load_state(model, tensors, source=restore_dir)
        saved_optim = load_file(str(Path(restore_dir) / "optimizer.safetensors"))
        state = json.loads((Path(restore_dir) / "state.json").read_text())

    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    model.to(device)
    strategy = resolve_strategy(cfg.strategy, world, counts["total_params"] * 4, device)
    model = wrap(model, strategy, device, bf16)
    named = {n: p for n, p in unwrap(model).named_parameters() if p.requires_grad}
    # FSDP2 swaps registered parameters between sharded and unsharded: hold the sharded ones
    frozen = [p for p in unwrap(model).parameters() if not p.requires_grad]
    frozen_before = frozen_checksum(frozen, world) if cfg.verify_frozen else None
    base_lr, prompt_lr = cfg.learning_rates()
    groups = [
        {"params": [p for n, p in named.items() if not n.startswith("prompt.")], "lr": base_lr},
        {"params": [p for n, p in named.items() if n.startswith("prompt.")], "lr": prompt_lr},
    ]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=cfg.weight_decay)
    if saved_optim is not None:
        for n, p in named.items():
            optimizer.state[p] = {"step": saved_optim[f"{n}.step"].clone(),
                                  "exp_avg": like(saved_optim[f"{n}.exp_avg"], p),
                                  "exp_avg_sq": like(saved_optim[f"{n}.exp_avg_sq"], p)}

    if rank == 0:
        print(f"[apet-ray] {info.name} / {task.name} / {cfg.spec.label}: {counts['delta_params']:,} delta + "
              f"{counts['trainable_params'] - counts['delta_params']:,} head parameters trainable of "
              f"{counts['total_params']:,}; {len(train_data):,} train / {len(eval_data):,} eval examples; "
              f"{world} worker(s), strategy {strategy}{', bf16' if bf16 else ''}", flush=True)

    run_facts = {
        "model": info.name, "task": task.name, "task_type": task.type, "metric": task.metric,
        # an untrained generator emits no valid label: T5's chance level is 0 (paper, SPEC §5)
        "random_guess": 0.0 if info.family == "t5" else task.random_guess,
        "lr": base_lr, "strategy": strategy, "workers": world, "converge_tol": cfg.converge_tol,
    }

    # ---- the loop --------------------------------------------------------------------------
    model.train()
    losses, tokens = [], 0
    reported = False
    t_window = time.perf_counter()
    for step in range(state["step"], cfg.max_steps):
        rows = shard(global_batch(len(train_data), cfg.batch_size, step, cfg.seed), rank, world)
        batch = {k: v.to(device) for k, v in collate(train_data, rows, pad_id, info.family).items()}
        torch.manual_seed(cfg.seed * 1_000_003 + step)  # dropout depends on the step alone: exact resumes
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16 and strategy != "fsdp"):
            loss = model(**batch)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        tokens += int(batch["attention_mask"].sum())

        done = step + 1
        if done % cfg.eval_every and done != cfg.max_steps:
            continue
        # ---- evaluate, checkpoint, report -------------------------------------------------
        window = time.perf_counter() - t_window
        step_losses = [x / world for x in all_reduce_sum(losses, world)]  # global mean loss of each step
        mean_loss, tokens = sum(step_losses) / len(step_losses), all_reduce_sum([tokens], world)[0]
        state["losses"] += step_losses
        metric = evaluate(model, task, eval_data, info.family, pad_id, cfg.batch_size * 2, device, tokenizer)
        state["elapsed"] += window
        state["tokens"] += tokens
        state["history"].append({"step": done, "score": metric, "loss": mean_loss,
                                 "tokens_per_s": tokens / max(window, 1e-9), "elapsed_s": state["elapsed"]})
        state["step"] = done
        scores = [h["score"] for h in state["history"]]
        metrics = {
            "step": done, "loss": mean_loss, "score": metric, "best_score": max(scores),
            "tokens_per_s": tokens / max(window, 1e-9), "peak_memory_mb": _peak_memory_mb(device),
            "elapsed_s": state["elapsed"], **{k: v for k, v in counts.items() if v is not None},
            # the whole curve and the run's facts ride along, so whoever sees the last report
            # (a Tune callback, even for a trial ASHA stopped) can write the full record
            "history": list(state["history"]), "run": run_facts,
        }
        if done == cfg.max_steps and cfg.transfer_tasks:
            state["transfer"] = {target: evaluate_transfer(model, task, target, cfg, info.family, tokenizer, device)
                                 for target in cfg.transfer_tasks}
            metrics["transfer"] = state["transfer"]
        checkpoint = save_checkpoint(model, optimizer, named, state, rank)
        if rank == 0:
            print(f"[apet-ray] step {done}/{cfg.max_steps}  loss {mean_loss:.4f}  {task.metric} {metric:.4f} "
                  f"(best {max(scores):.4f})  {metrics['tokens_per_s']:,.0f} tok/s  "
                  f"peak {metrics['peak_memory_mb']:,.0f} MB", flush=True)
        state["last_metrics"] = {k: v for k, v in metrics.items() if k != "history"}
        try:
            report(metrics, checkpoint)
        finally:  # the reporter has copied it, or Tune stopped the trial inside report
            if checkpoint is not None:
                shutil.rmtree(checkpoint, ignore_errors=True)
        reported = True
        losses, tokens = [], 0
        t_window = time.perf_counter()

    if not reported and "last_metrics" in state:
        # restored from the final checkpoint (a restart after the last report): say it again,
        # so whoever waits for the final result (Tune) gets it
        report({**state["last_metrics"], "history": list(state["history"])}, None)
    frozen_unchanged = None
    if frozen_before is not None:
        frozen_unchanged = frozen_checksum(frozen, world) == frozen_before
    history = state["history"]
    return {
        **counts,
        **run_facts,
        "history": history,
        "losses": state["losses"],
        "frozen_unchanged": frozen_unchanged,
        "transfer": state.get("transfer", {}),
        **outcome(history, cfg.converge_tol),
        "train_time_s": state["elapsed"],
        "wall_time_s": time.perf_counter() - t_start,
        "tokens_per_s": state["tokens"] / max(state["elapsed"], 1e-9),
        "peak_memory_mb": _peak_memory_mb(device),
    }


def outcome(history: list[dict], tol: float) -> dict:
    """Final and best score, steps run and steps to converge, from the eval curve."""
    scores = [h["score"] for h in history]
    return {
        "final_score": scores[-1] if scores else float("nan"),
        "best_score": max(scores) if scores else float("nan"),
        "steps_to_converge": steps_to_converge([h["step"] for h in history], scores, tol),
        "steps_run": history[-1]["step"] if history else 0,
    }


def check_config(cfg: TrainConfig) -> None:
    """Everything that can be wrong with a run, found before any Ray job starts: unknown
    names, impossible budgets, missing data or columns, nonsensical numbers."""
    from apet_ray.distributed import STRATEGIES
    from apet_ray.errors import UserError

    for name in ("batch_size", "max_steps", "eval_every"):
        if not isinstance(getattr(cfg, name), int) or getattr(cfg, name) < 1:
            raise UserError(f"{name} must be a positive whole number, not {getattr(cfg, name)!r}")
    if cfg.workers < 0:
        raise UserError(f"workers must be 0 (in this process) or more, not {cfg.workers}")
    if cfg.batch_size < max(cfg.workers, 1):
        raise UserError(f"batch size {cfg.batch_size} cannot be split over {cfg.workers} workers")
    if cfg.strategy not in STRATEGIES:
        raise UserError(f"unknown strategy {cfg.strategy!r} (known: {', '.join(STRATEGIES)})")
    if cfg.precision not in ("auto", "fp32", "bf16"):
        raise UserError(f"unknown precision {cfg.precision!r} (known: auto, fp32, bf16)")
    for name in ("lr", "prompt_lr"):
        value = getattr(cfg, name)
        if value is not None and not value > 0:
            raise UserError(f"{name} must be positive, not {value}")
    task = cfg.resolve_task()
    model, info = build_model(cfg.model, num_labels=task.num_labels if task.is_classification else None, device="meta")
    if info.family == "bert" and not task.is_classification:
        raise UserError(f"{task.name} is a {task.type} task: BERT-family models do classification only (SA, NLI, PI)")
    attach(model, cfg.spec)  # plans the budget on the meta device: refuses what cannot fit
    source = dict(data_dir=cfg.data_dir, source=cfg.data_source) if not cfg.custom else {}
    for split in ("train", "eval"):
        load_examples(task, split, limit=1, seed=cfg.seed, **source)
    for target in cfg.transfer_tasks:
        target_task = get_task(target)
        if not (task.is_classification and target_task.is_classification):
            raise UserError(f"zero-shot transfer {task.name} -> {target} needs classification tasks on both sides")
        load_examples(target_task, "eval", limit=1, seed=cfg.seed, data_dir=cfg.data_dir, source=cfg.data_source)


def evaluate(model, task: Task, data, family: str, pad_id: int, batch_size: int, device, tokenizer) -> float:
    """The task's metric on ``data``."""
    return float(score(task, predict(model, task, data, family, pad_id, batch_size, device, tokenizer), data.examples))


@torch.no_grad()
def predict(model, task: Task, data, family: str, pad_id: int, batch_size: int, device, tokenizer) -> list:
    """Predictions for ``data`` (label ids, -1 for an invalid generation, or texts), split
    over the workers and gathered on every rank.

    Every rank runs the same number of batches (the last rank pads with repeats, which are
    dropped), because FSDP gathers weights collectively on every forward.
    """
    rank, world = rank_and_world()
    n = len(data)
    per = math.ceil(n / world)
    mine = [min(i, n - 1) for i in range(rank * per, (rank + 1) * per)]
    labels_ids = _label_token_ids(task, tokenizer) if family == "t5" and task.is_classification else None
    gen_len = max(task.max_gen_len, max((len(ids) for ids in labels_ids), default=0)) if labels_ids else task.max_gen_len
    preds = []
    was_training = model.training
    model.eval()
    for i in range(0, per, batch_size):
        rows = mine[i: i + batch_size]
        batch = {k: v.to(device) for k, v in collate(data, rows, pad_id, family).items() if k != "labels"}
        if family == "bert":
            preds += model(**batch)["logits"].argmax(-1).tolist()
        else:
            generator = model if hasattr(model, "generate") else unwrap(model)
            out = generator.generate(batch["input_ids"], batch["attention_mask"], max_new_tokens=gen_len).tolist()
            preds += [_decode(task, ids, tokenizer, labels_ids) for ids in out]
    if was_training:
        model.train()
    preds = preds[: max(0, min(per, n - rank * per))]
    if world > 1:
        gathered = [None] * world
        dist.all_gather_object(gathered, preds)
        preds = [p for part in gathered for p in part]
    return preds


def evaluate_transfer(model, source: Task, target_name: str, cfg: TrainConfig, family: str, tokenizer, device) -> float:
    """Zero-shot transfer: the model trained on ``source`` predicts on ``target``; both label
    sets are mapped to the unified one (negative / not-entailment / false -> 0, positive /
    entailment / true -> 1) and examples without a unified label are left out."""
    from apet_ray.tasks import Example

    target = get_task(target_name)
    if not (source.is_classification and target.is_classification):
        raise ValueError("transfer needs classification tasks on both sides")
    source_kw = dict(data_dir=cfg.data_dir, source=cfg.data_source)
    examples = [e for e in load_examples(target, "eval", limit=cfg.eval_limit, seed=cfg.seed, **source_kw)
                if target.to_unified(e.label) is not None]
    # present the target's inputs as the source task's (its prefix and label words)
    as_source = [Example(inputs=(" ".join(e.inputs),) if len(source.text_columns) == 1 else (e.inputs + ("",))[:2],
                         label=0) for e in examples]
    data = encode(source, as_source, tokenizer, family, cfg.max_input_len)
    preds = predict(model, source, data, family, tokenizer.pad_token_id, cfg.batch_size * 2, device, tokenizer)
    hits = [source.to_unified(p) == target.to_unified(e.label) if p >= 0 else False for p, e in zip(preds, examples)]
    return sum(hits) / max(len(hits), 1)


def _label_token_ids(task: Task, tokenizer) -> list[list[int]]:
    special = set(tokenizer.all_special_ids)
    return [[t for t in tokenizer(word)["input_ids"] if t not in special] for word in task.label_words]


def _decode(task: Task, ids: list[int], tokenizer, label_ids: list[list[int]] | None):
    """A label id (-1 for an invalid generation, which scores 0) or the generated text."""
    special = set(tokenizer.all_special_ids)
    if label_ids is not None:
        content = []
        for t in ids:
            if t == tokenizer.eos_token_id or (t == tokenizer.sep_token_id and tokenizer.eos_token_id is None):
                break
            if t not in special:
                content.append(t)
        return label_ids.index(content) if content in label_ids else -1
    return tokenizer.decode(ids, skip_special_tokens=True).strip()


def steps_to_converge(steps: list[int], scores: list[float], tol: float) -> int | None:
    """First evaluated step from which the score stays within ``tol`` of its best."""
    if not scores:
        return None
    best = max(scores)
    first = len(scores) - 1
    while first > 0 and scores[first - 1] >= best - tol:
        first -= 1
    return steps[first]


# ---- checkpoints: deltas + optimizer + step, nothing else ----------------------------------

def save_checkpoint(model, optimizer, named: dict[str, torch.Tensor], state: dict, rank: int) -> str | None:
    """Gather the trainable tensors (a collective under FSDP) and let rank 0 write them to a
    fresh folder: deltas.safetensors, optimizer.safetensors, state.json.

    ``named`` maps names to the parameters the optimizer holds: FSDP2 swaps the root's
    registered parameters between sharded and unsharded, so names are looked up once."""
    inner = unwrap(model)
    deltas = {k: full_tensor(v) for k, v in trainable_state_dict(inner).items()}
    optim: dict[str, torch.Tensor] = {}
    for name, p in named.items():
        s = optimizer.state[p]
        optim[f"{name}.exp_avg"] = full_tensor(s["exp_avg"])
        optim[f"{name}.exp_avg_sq"] = full_tensor(s["exp_avg_sq"])
        optim[f"{name}.step"] = full_tensor(torch.as_tensor(s["step"], dtype=torch.float32)).reshape(())
    if rank != 0:
        return None
    folder = Path(tempfile.mkdtemp(prefix="apet-ckpt-"))
    save_deltas(inner, folder / "deltas.safetensors", metadata={"step": str(state["step"])}, state=deltas)
    save_file(optim, str(folder / "optimizer.safetensors"))
    (folder / "state.json").write_text(json.dumps(state))
    return str(folder)


# ---- Ray Train ------------------------------------------------------------------------------

def ray_train_loop(config: dict) -> dict:
    """The Ray Train worker function: ``config = {"train": asdict(TrainConfig), "threads": n}``."""
    import ray.train

    return train_in_ray(ray.train, config_from_dict(config["train"]), config.get("threads", 1))


def train_in_ray(session, cfg: TrainConfig, threads: int) -> dict:
    """``train`` reporting to Ray and resuming from its checkpoint. ``session`` is
    ``ray.train`` in a Train worker or ``ray.tune`` in a Tune trial that trains itself:
    both offer ``report``, ``Checkpoint`` and ``get_checkpoint``."""
    torch.set_num_threads(max(1, int(threads)))

    def report(metrics: dict, folder: str | None) -> None:
        session.report(metrics, checkpoint=session.Checkpoint.from_directory(folder) if folder else None)

    return train_from(cfg, report, session.get_checkpoint())


def train_from(cfg: TrainConfig, report: Report, checkpoint) -> dict:
    """``train``, continuing from a Ray checkpoint (Train's or Tune's) when there is one."""
    if checkpoint is None:
        return train(cfg, report)
    local = tempfile.mkdtemp(prefix="apet-restore-")
    try:
        with checkpoint.as_directory() as folder:
            shutil.copytree(folder, local, dirs_exist_ok=True)
        return train(cfg, report, restore_dir=local)
    finally:
        shutil.rmtree(local, ignore_errors=True)


def config_to_dict(cfg: TrainConfig) -> dict:
    data = asdict(cfg)
    data["spec"] = cfg.spec.to_json()
    return data


def config_from_dict(data: dict) -> TrainConfig:
    return TrainConfig(**{**data, "spec": DeltaSpec.from_json(data["spec"])})


# ---- small helpers -----------------------------------------------------------------------------

def _device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def _reset_peak_memory(device: torch.device) -> None:
    """Start this run's peak afresh: a Tune trial process can run several trials."""
    if device.type == "cuda":
        if torch.cuda.is_initialized():  # a fresh process has no peak to clear (and would raise)
            torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: reset the peak RSS (VmHWM)
    except OSError:
        pass  # elsewhere the peak is the process's since it started


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):  # peak RSS since the last reset, in kB
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
