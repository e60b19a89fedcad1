"""One training run, top to bottom: load a frozen backbone, attach a delta spec, train only
the deltas, evaluate on a schedule, report, return the ``RunRecord``.

The same function runs in one process (``apet-ray train --workers 0``, a Tune trial that
trains itself) and in every Ray Train worker (``run.launch``); under Ray the process group
already exists and ``distributed.wrap`` applies DDP or FSDP2. ``check_config`` has refused
every bad input before this runs.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn

from apet_ray.data import collate, encode, global_batch, shard
from apet_ray.delta import attach, count_backbone, count_deltas, count_trainable
from apet_ray.delta.architectures import Kind
from apet_ray.distributed import (all_gather_floats, all_reduce_sum, frozen_checksum, local_bytes, local_device,
                                  rank_and_world, resolve_strategy, return_free_heap_to_the_os,
                                  return_large_frees_to_the_os, store_frozen_in_bf16, unwrap, use_bf16, wrap)
from apet_ray.errors import UserError
from apet_ray.models import build_model, load_tokenizer
from apet_ray.run.checkpoint import Restored, save_checkpoint
from apet_ray.run.config import TrainConfig, check_task_fits_kind
from apet_ray.run.evaluate import evaluate, evaluate_transfer
from apet_ray.run.memory import peak_memory_mb, recompute_activations, reset_peak_memory
from apet_ray.run.provenance import device_name, versions
from apet_ray.run.record import RunRecord
from apet_ray.tasks import load_examples

# report(metrics, checkpoint_folder_or_None): metrics carry the record, its history from
# metrics["history_from"] on (report_metrics)
Report = Callable[[dict, "str | None"], None]
EVAL_SUBSET_SEED = 0  # which eval examples a limited evaluation uses: one subset for every seed


def train(cfg: TrainConfig, report: Report, restored: Restored | None = None) -> RunRecord:
    rank, world = rank_and_world()
    device = local_device()
    t_start = time.perf_counter()
    reset_peak_memory(device)
    torch.manual_seed(cfg.seed)

    # ---- model, deltas, data -------------------------------------------------------------
    task = cfg.training_task()
    num_labels = task.num_labels if task.is_classification else None
    strategy = _strategy(cfg, world, device, num_labels)
    cpu_fsdp = strategy == "fsdp" and device.type == "cpu"  # a worker whose heap glibc keeps
    if cpu_fsdp:  # before the build's first large allocations
        return_large_frees_to_the_os()
    # FSDP loads sharded (distributed.wrap): from a safetensors folder every rank reads its
    # own slices (a streamed build); else rank 0 alone reads the weights, the other ranks
    # build on the meta device and receive their shards from it
    stream = strategy == "fsdp" and not cfg.spec.is_peft
    on_meta = strategy == "fsdp" and rank != 0
    model, info = build_model(cfg.model, num_labels=num_labels, seed=cfg.seed,
                              device="stream" if stream and not on_meta else "meta" if on_meta else "cpu")
    if stream:
        model, on_meta = _agree_on_streaming(model, cfg, num_labels, rank, world)
    check_task_fits_kind(task, info.kind)
    plan = attach(model, cfg.spec)
    if hasattr(model, "head") and not cfg.train_head:
        model.head.requires_grad_(False)
    tokenizer = load_tokenizer(cfg.model)
    train_data, eval_data = (_encoded(cfg, task, split, tokenizer, info.kind) for split in ("train", "eval"))
    base_lr, prompt_lr = cfg.learning_rates()
    record = RunRecord(
        config=cfg.to_dict(), model=info.name, kind=info.kind, task=task.name, task_type=task.type,
        metric=task.metric, random_guess=0.0 if info.kind != Kind.BERT else task.random_guess,  # paper.md §5: generators
        majority=majority_rate(eval_data.examples) if task.is_classification else None,
        lr=base_lr, strategy="", workers=world, trainable_params=count_trainable(model),
        delta_params=count_deltas(model), total_params=count_backbone(model), requested_params=plan.requested)

    # ---- resume: deltas go in before sharding, optimizer state after ---------------------
    if restored is not None:
        _check_resumable(restored.record.config, cfg)
        if not on_meta:  # a meta rank gets rank 0's restored deltas with its shards
            restored.load_deltas_into(model)
        record = restored.record
        record.config, record.workers = cfg.to_dict(), world
    wall_before = record.wall_time_s  # a resumed run's wall time goes on from its checkpoint's

    # ---- placement, sharding, optimizer ----------------------------------------------------
    bf16 = use_bf16(cfg.precision, device, world)
    record.strategy = strategy
    record.device, record.precision, record.versions = device_name(device), "bf16" if bf16 else "fp32", versions()
    if bf16:
        store_frozen_in_bf16(model)
    if cfg.activation_checkpointing:
        recompute_activations(model)
    model = wrap(model, strategy, device, bf16)
    autocast = bf16 and strategy != "fsdp"  # FSDP's mixed-precision policy casts by itself
    named = {n: p for n, p in unwrap(model).named_parameters() if p.requires_grad}
    # FSDP2 swaps registered parameters between sharded and unsharded: hold the sharded ones
    frozen = [p for p in unwrap(model).parameters() if not p.requires_grad]
    record.frozen_mb_per_rank = [b / 2**20 for b in all_gather_floats(local_bytes(frozen), world)]
    frozen_before = frozen_checksum(frozen, world) if cfg.verify_frozen else None
    optimizer = _adamw(named, base_lr, prompt_lr, cfg.weight_decay)
    if restored is not None:
        restored.load_optimizer_into(optimizer, named)
    if rank == 0:
        print(f"[apet-ray] {info.name} / {task.name} / {cfg.spec.label}: {record.delta_params:,} delta + "
              f"{record.trainable_params - record.delta_params:,} head parameters trainable of "
              f"{record.total_params:,}; {len(train_data):,} train / {len(eval_data):,} eval examples; "
              f"{world} worker(s), strategy {strategy}{', bf16' if bf16 else ''}", flush=True)

    # ---- the loop --------------------------------------------------------------------------
    model.train()
    losses, tokens = [], 0
    t_window = time.perf_counter()
    first_step = record.steps_run  # > 0 after a resume
    sent = 0  # evaluations of record.history already reported by this process
    for step in range(first_step, cfg.max_steps):
        rows = shard(global_batch(len(train_data), cfg.batch_size, step, cfg.seed), rank, world)
        torch.manual_seed(cfg.seed * 1_000_003 + step)  # dropout depends on the step alone: exact resumes
        loss = 0.0
        for batch, share in _micro_batches(train_data, rows, cfg.grad_accum, tokenizer.pad_token_id, info.kind, device,
                                           by_length=world == 1):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                part = model(**batch)["loss"] * share  # the batch's mean loss, assembled part by part
            part.backward()
            loss += float(part.detach())
            tokens += int(batch["attention_mask"].sum())
        _set_lr(optimizer, cfg.schedule, step, cfg.max_steps)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cpu_fsdp:  # the next step's gathers would come on top of this one's freed pages
            return_free_heap_to_the_os()
        losses.append(loss)

        done = step + 1
        if done % cfg.eval_every and done != cfg.max_steps:
            continue
        # ---- evaluate, checkpoint, report -------------------------------------------------
        window = time.perf_counter() - t_window
        step_losses = [x / world for x in all_reduce_sum(losses, world)]  # global mean loss of each step
        tokens = int(all_reduce_sum([tokens], world)[0])
        score = evaluate(model, task, eval_data, info.kind, tokenizer, cfg.batch_size * 2, device, autocast)
        record.train_time_s += window
        record.tokens += tokens
        record.history.append({"step": done, "score": score, "loss": sum(step_losses) / len(step_losses),
                               "tokens_per_s": tokens / max(window, 1e-9), "elapsed_s": record.train_time_s})
        if done == cfg.max_steps:
            record.transfer = {target: _transfer(cfg, model, task, target, info.kind, tokenizer, device, autocast)
                               for target in cfg.transfer_tasks}
        record.peak_memory_mb_per_rank = all_gather_floats(peak_memory_mb(device), world)
        record.peak_memory_mb = max(record.peak_memory_mb_per_rank)
        record.wall_time_s = wall_before + time.perf_counter() - t_start
        checkpoint = save_checkpoint(model, optimizer, named, record, rank)
        if rank == 0:
            print(f"[apet-ray] step {done}/{cfg.max_steps}  loss {record.history[-1]['loss']:.4f}  "
                  f"{task.metric} {score:.4f} (best {record.best_score:.4f})  "
                  f"{record.history[-1]['tokens_per_s']:,.0f} tok/s  peak {record.peak_memory_mb:,.0f} MB", flush=True)
        try:
            report(report_metrics(record, sent), checkpoint)
            sent = len(record.history)
        finally:  # the reporter has copied it, or Tune stopped the trial inside report
            if checkpoint is not None:
                shutil.rmtree(checkpoint, ignore_errors=True)
        losses, tokens = [], 0
        t_window = time.perf_counter()

    if first_step >= cfg.max_steps and record.history:
        # restored from the final checkpoint (a restart after the last report): say it again,
        # so whoever waits for the final result (Tune) gets it
        report(report_metrics(record), None)
    if frozen_before is not None:
        record.frozen_unchanged = frozen_checksum(frozen, world) == frozen_before
    record.peak_memory_mb_per_rank = all_gather_floats(peak_memory_mb(device), world)
    record.peak_memory_mb = max(record.peak_memory_mb_per_rank)
    record.wall_time_s = wall_before + time.perf_counter() - t_start
    return record


# what a resume may change: where and how long it runs, not what it trains
RESUMABLE_CHANGES = {"workers", "strategy", "max_steps", "eval_every", "verify_frozen", "transfer_tasks",
                     "activation_checkpointing"}


def _check_resumable(saved: dict, cfg: TrainConfig) -> None:
    now = cfg.to_dict()
    changed = sorted(k for k in set(saved) | set(now) if k not in RESUMABLE_CHANGES and saved.get(k) != now.get(k))
    if changed:
        raise UserError(f"the checkpoint was trained with other settings ({', '.join(changed)}): resume with the "
                        "original ones, or start a new run")


def _adamw(named: dict[str, torch.Tensor], base_lr: float, prompt_lr: float, weight_decay: float):
    """AdamW over the deltas; soft prompts (``prompt.*``) take their own learning rate (paper.md §2)."""
    groups = [{"params": [p for n, p in named.items() if not n.startswith("prompt.")], "lr": base_lr, "base_lr": base_lr},
              {"params": [p for n, p in named.items() if n.startswith("prompt.")], "lr": prompt_lr, "base_lr": prompt_lr}]
    return torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=weight_decay)


def _micro_batches(data, rows: list[int], parts: int, pad_id: int, kind: str, device, by_length: bool = False):
    """This rank's rows in ``parts`` micro-batches, each with its share of the batch's loss:
    the losses are means over the counted targets (class labels, or target tokens not
    ignored), so a part's share is its count over the batch's and the summed gradients are
    the whole batch's. ``by_length`` (one process only: distributed ranks must run the same
    number of forwards) further splits a micro-batch into length buckets where that saves
    padding (``_length_buckets``): the same examples and the same summed gradient."""
    chunks = [rows[i::parts] for i in range(parts)]
    if by_length:
        chunks = [bucket for chunk in chunks for bucket in _length_buckets(data, chunk, kind)]
    batches = [{k: v.to(device) for k, v in collate(data, chunk, pad_id, kind).items()} for chunk in chunks if chunk]
    # a decoder's loss is over the labels shifted by one: its first label is never counted
    counted = [int((b["labels"][:, 1:] if kind == Kind.CAUSAL else b["labels"]).ne(-100).sum()) for b in batches]
    total = max(sum(counted), 1)
    return [(b, n / total) for b, n in zip(batches, counted)]


# A batch is padded to its longest example: one of 16 short reviews padded to the longest
# computes about twice the tokens it has. Split in two by length when that pads at least
# SPLIT_SAVES fewer tokens (each forward has a small fixed cost), down to MIN_BUCKET rows.
# Measured, MiniLM, Rotten Tomatoes (27 tokens on average, cut at 64), batch 16, fp32, one
# thread, AVX2 code paths: one batch 456 ms a step, two length halves 351 ms, four 323 ms.
SPLIT_SAVES = 0.2
MIN_BUCKET = 4


def _length_buckets(data, rows: list[int], kind: str) -> list[list[int]]:
    if len(rows) < 2 * MIN_BUCKET:
        return [rows]

    def size(r: int) -> int:  # what padding scales: the input, and a text-to-text target
        return len(data.input_ids[r]) + (0 if kind == Kind.BERT else len(data.labels[r]))

    ordered = sorted(rows, key=size)
    half = len(ordered) // 2
    whole = len(ordered) * size(ordered[-1])
    split = half * size(ordered[half - 1]) + (len(ordered) - half) * size(ordered[-1])
    if split > (1 - SPLIT_SAVES) * whole:
        return [rows]
    return _length_buckets(data, ordered[:half], kind) + _length_buckets(data, ordered[half:], kind)


def _set_lr(optimizer: torch.optim.Optimizer, schedule: str, step: int, max_steps: int) -> None:
    """The lr of this step, a function of the step alone (so a resume continues it exactly):
    constant, or the Trainer's linear decay without warm-up, base * (1 - step / max_steps)."""
    factor = 1.0 if schedule == "constant" else 1.0 - step / max_steps
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor


def _encoded(cfg: TrainConfig, task, split: str, tokenizer, kind: str):
    limit = cfg.train_limit if split == "train" else cfg.eval_limit
    # the eval subset is the same for every seed: seeds differ in initialisation, masks and
    # data order, and are all scored on the same examples
    seed = cfg.seed if split == "train" else EVAL_SUBSET_SEED
    examples = load_examples(cfg.resolve_task(), split, limit=limit, seed=seed, **cfg.data_source_kwargs())
    if cfg.labels == "unified":
        examples = cfg.resolve_task().relabel_unified(examples)
    return encode(task, examples, tokenizer, kind, cfg.max_input_len)


def majority_rate(examples) -> float:
    """The share of the most common label: what always answering it would score."""
    counts = Counter(e.label for e in examples)
    return max(counts.values()) / len(examples) if examples else float("nan")


def _agree_on_streaming(model: nn.Module, cfg: TrainConfig, num_labels: int | None, rank: int,
                        world: int) -> tuple[nn.Module, bool]:
    """Rank 0 tried a streamed build: if it streams, every rank does (each builds its own
    streamed model); if not, rank 0's model is a loaded one and the others keep their meta
    build. Returns this rank's model and whether it is a meta rank that receives its shards."""
    streams = [None] * world
    dist.all_gather_object(streams, hasattr(model, "apet_weights"))
    if not streams[0]:
        return model, rank != 0
    if rank != 0:
        model, _ = build_model(cfg.model, num_labels=num_labels, seed=cfg.seed, device="stream")
        if not hasattr(model, "apet_weights"):
            raise UserError(f"{cfg.model}: rank {rank} sees other weight files than rank 0: give every node the same model folder")
    return model, False


def _strategy(cfg: TrainConfig, world: int, device: torch.device, num_labels: int | None) -> str:
    """The strategy before any weights load: ``auto`` weighs the backbone, built on the meta device."""
    if world == 1 or cfg.strategy != "auto" or device.type != "cuda":
        return resolve_strategy(cfg.strategy, world, 0, device)
    counted, _ = build_model(cfg.model, num_labels=num_labels, device="meta")
    return resolve_strategy(cfg.strategy, world, count_backbone(counted) * 4, device)


def _transfer(cfg: TrainConfig, model, task, target: str, kind: str, tokenizer, device, autocast: bool) -> float:
    return evaluate_transfer(model, task, target, kind, tokenizer, device, seed=EVAL_SUBSET_SEED,
                             batch_size=cfg.batch_size * 2, eval_limit=cfg.eval_limit, max_input_len=cfg.max_input_len,
                             data_dir=cfg.data_dir, data_source=cfg.data_source, autocast=autocast)


def report_metrics(record: RunRecord, since: int = 0) -> dict:
    """What every report carries: flat values for Tune (ASHA reads ``step`` and ``score``)
    and the record with the evaluations from index ``since`` on (``history_from``): each
    report sends only what is new, and the first of a process everything, restored points
    included; the driver puts the history together (``study.callbacks.ResultsWriter``). A
    whole history in every report made the traffic grow with the square of the evaluations."""
    last = record.history[-1]
    whole = record.to_dict()
    whole["history"] = whole["history"][since:]
    return {"step": last["step"], "score": last["score"], "loss": last["loss"], "best_score": record.best_score,
            "tokens_per_s": last["tokens_per_s"], "peak_memory_mb": record.peak_memory_mb,
            "elapsed_s": record.train_time_s, "delta_params": record.delta_params, "record": whole,
            "history_from": since}
