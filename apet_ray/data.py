"""Examples -> token ids -> batches, in a seeded order that depends only on the step.

The global batch of step s is fixed by (seed, s) alone, so a resumed run sees exactly the
batches it would have seen, and N workers each take an equal contiguous slice of it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from apet_ray.delta.architectures import Kind
from apet_ray.tasks import Example, Task, to_text


@dataclass
class Encoded:
    """Token ids of a split. ``labels``: class ids (BERT) or target token ids (T5, decoder-only)."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    labels: list[int] | list[list[int]]
    examples: list[Example]

    def __len__(self) -> int:
        return len(self.input_ids)


# A tokenizer reads a whole string before it truncates (a 20 MB CSV field took 22 s and
# 2.9 GB): each text is first cut to this many characters per token kept -- far beyond
# what real text needs (English averages about 4 characters a token), so no kept token
# changes.
CHARS_PER_TOKEN = 64


def _clip(texts, tokens: int) -> list[str]:
    most = tokens * CHARS_PER_TOKEN
    return [t[:most] for t in texts]


def encode(task: Task, examples: list[Example], tokenizer, kind: str, max_input_len: int | None = None,
           max_target_len: int = 128) -> Encoded:
    limit = max_input_len or task.max_input_len
    if kind == Kind.BERT:
        if len(task.text_columns) > 2:  # check_config refuses it; never drop a column silently here
            raise ValueError(f"{task.name}: a BERT-family model reads one text or a pair, not {len(task.text_columns)}")
        texts = [e.inputs for e in examples]
        pairs = _clip([t[1] for t in texts], limit) if len(task.text_columns) == 2 else None
        enc = tokenizer(_clip([t[0] for t in texts], limit), pairs, truncation=True, max_length=limit)
        return Encoded(enc["input_ids"], enc.get("token_type_ids"), [e.label for e in examples], examples)
    sources, targets = zip(*(to_text(task, e) for e in examples))
    src = tokenizer(_clip(sources, limit), truncation=True, max_length=limit)["input_ids"]
    if kind == Kind.CAUSAL:  # the target continues the source: no BOS inside, an EOS to stop at
        eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
        tgt = [ids[: max_target_len - 1] + [eos] for ids in
               tokenizer(_clip(targets, max_target_len), add_special_tokens=False)["input_ids"]]
        return Encoded(src, None, tgt, list(examples))
    tgt = tokenizer(_clip(targets, max_target_len), truncation=True, max_length=max_target_len)["input_ids"]
    # T5 tokenizers end each sequence with </s>; the WordPiece tokenizer of the tiny
    # presets ends it with [SEP], which the tiny-t5 config takes as its eos id.
    return Encoded(src, None, tgt, list(examples))


def collate(data: Encoded, rows: list[int], pad_id: int, kind: str) -> dict[str, torch.Tensor]:
    ids = [data.input_ids[i] for i in rows]
    width = max(len(r) for r in ids)
    batch = {
        "input_ids": torch.tensor([r + [pad_id] * (width - len(r)) for r in ids]),
        "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in ids]),
    }
    if data.token_type_ids is not None:
        tt = [data.token_type_ids[i] for i in rows]
        batch["token_type_ids"] = torch.tensor([r + [0] * (width - len(r)) for r in tt])
    if kind == Kind.BERT:
        batch["labels"] = torch.tensor([data.labels[i] for i in rows])
    else:
        tgt = [data.labels[i] for i in rows]
        t_width = max(len(r) for r in tgt)
        batch["labels"] = torch.tensor([r + [-100] * (t_width - len(r)) for r in tgt])  # -100: ignored by the loss
    return batch


def global_batch(n: int, batch_size: int, step: int, seed: int) -> list[int]:
    """Example indices of the global batch of ``step`` (0-based): epochs are seeded shuffles."""
    start = step * batch_size
    rows: list[int] = []
    while len(rows) < batch_size:
        epoch, offset = divmod(start + len(rows), n)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch)).tolist()
        rows += order[offset: offset + batch_size - len(rows)]
    return rows


def shard(rows: list[int], rank: int, world: int) -> list[int]:
    """This worker's contiguous slice of a global batch (sizes differ by at most one)."""
    per, extra = divmod(len(rows), world)
    start = rank * per + min(rank, extra)
    return rows[start: start + per + (1 if rank < extra else 0)]
