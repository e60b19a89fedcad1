"""Evaluation: predictions split over the workers, decoded to label ids or text, scored by
the task's metric; and zero-shot transfer to another task through the unified labels."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from apet_ray.data import Encoded, collate, encode
from apet_ray.delta.architectures import Kind
from apet_ray.distributed import rank_and_world, unwrap
from apet_ray.tasks import Example, Task, decode_generated, get_task, label_token_ids, load_examples, score


def evaluate(model, task: Task, data: Encoded, kind: str, tokenizer, batch_size: int, device,
             autocast: bool = False) -> float:
    """The task's metric on ``data``."""
    preds = predict(model, task, data, kind, tokenizer, batch_size, device, autocast)
    return float(score(task, preds, data.examples))


@torch.no_grad()
def predict(model, task: Task, data: Encoded, kind: str, tokenizer, batch_size: int, device,
            autocast: bool = False) -> list:
    """Predictions for ``data`` (label ids, -1 for an invalid generation, or texts), split
    over the workers and gathered on every rank.

    Every rank runs the same number of batches (the last rank pads with repeats, which are
    dropped), because FSDP gathers weights collectively on every forward.
    """
    rank, world = rank_and_world()
    n = len(data)
    per = math.ceil(n / world)
    mine = [min(i, n - 1) for i in range(rank * per, (rank + 1) * per)]
    label_ids = label_token_ids(task, tokenizer) if kind != Kind.BERT and task.is_classification else None
    gen_len = max(task.max_gen_len, max((len(ids) for ids in label_ids), default=0)) if label_ids else task.max_gen_len
    # batches of similar lengths pad little (generation pads every step): predicted in length
    # order, put back in the data's order below
    order = sorted(range(per), key=lambda j: len(data.input_ids[mine[j]]))
    preds = []
    was_training = model.training
    model.eval()
    for i in range(0, per, batch_size):
        rows = [mine[j] for j in order[i: i + batch_size]]
        batch = {k: v.to(device) for k, v in collate(data, rows, tokenizer.pad_token_id, kind).items() if k != "labels"}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):  # as the training forward
            if kind == Kind.BERT:
                preds += model(**batch)["logits"].argmax(-1).tolist()
            else:
                generator = model if hasattr(model, "generate") else unwrap(model)
                out = generator.generate(batch["input_ids"], batch["attention_mask"], max_new_tokens=gen_len).tolist()
                preds += [decode_generated(task, ids, tokenizer, label_ids) for ids in out]
    if was_training:
        model.train()
    in_order = [None] * per
    for position, j in enumerate(order):
        in_order[j] = preds[position]
    preds = in_order[: max(0, min(per, n - rank * per))]
    if world > 1:
        gathered = [None] * world
        dist.all_gather_object(gathered, preds)
        preds = [p for part in gathered for p in part]
    return preds


def evaluate_transfer(model, source: Task, target_name: str, kind: str, tokenizer, device, *, seed: int,
                      batch_size: int, eval_limit: int | None, max_input_len: int | None, data_dir: str | None,
                      data_source: str, autocast: bool = False) -> float:
    """Zero-shot transfer: the model trained on ``source`` predicts on ``target``; both label
    sets are mapped to the unified one (negative / not-entailment / false -> 0, positive /
    entailment / true -> 1) and examples without a unified label are left out."""
    target = get_task(target_name)
    examples = [e for e in load_examples(target, "eval", limit=eval_limit, seed=seed, data_dir=data_dir, source=data_source)
                if target.to_unified(e.label) is not None]
    # present the target's inputs as the source task's (its prefix and label words)
    as_source = [Example(inputs=(" ".join(e.inputs),) if len(source.text_columns) == 1 else (e.inputs + ("",))[:2],
                         label=0) for e in examples]
    data = encode(source, as_source, tokenizer, kind, max_input_len)
    preds = predict(model, source, data, kind, tokenizer, batch_size, device, autocast)
    hits = [p >= 0 and source.to_unified(p) == target.to_unified(e.label) for p, e in zip(preds, examples)]
    return sum(hits) / max(len(hits), 1)
