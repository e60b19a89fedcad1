"""Position ``any``: whole tensors of the backbone picked at random, as the release's APET does.

The release picks whole trainable tensors until its budget is (roughly) met, half of it
among the tensors where the PET method's modules sit and half among the rest of the model.
Here the same, exactly: each half's candidates are shuffled by a seeded generator (the
same seed, the same picks), taken whole in that order while they fit, and the first one
that does not fit is masked (the spec's distribution) to hit the half exactly. A half whose
candidates hold less passes the rest to the other half; a budget above the whole backbone
is refused.

"Where the PET method sits" is the matched method's positions (LoRA: the query and value
layers' weights and biases; the adapter: the attention and FFN output layers'; BitFit: the
biases and tables it trains that the backbone has; Prompt: the input embeddings), or the
op's default positions without a match. The picks are deltas on the model's own tensors
(op ``add-weight``): a linear weight as a weight delta, anything else as a parameter delta.
The token table is left out where it is also the output layer (T5's ``shared``, a tied
head): a delta there would miss one of its uses (as ``add-weight`` at ``embeddings``).
"""

from __future__ import annotations

import zlib

import torch
from torch import nn

from apet_ray.delta.architectures import Family, modules_for_role
from apet_ray.delta.methods import get_method
from apet_ray.delta.registry import OPS, Host
from apet_ray.errors import UserError

ANY = "any"


def tensors(backbone: nn.Module, fam: Family) -> list[tuple[str, str, int]]:
    """(module path, parameter name, size) of every backbone tensor, a tied one once."""
    skip = set()
    table = backbone.get_input_embeddings()
    head = backbone.get_output_embeddings() if fam.kind != "bert" else None
    if fam.kind == "t5" or (head is not None and head.weight is table.weight):
        skip.add(id(table.weight))
    out = []
    for name, p in backbone.named_parameters():
        if id(p) not in skip:
            path, _, param = name.rpartition(".")
            out.append((path, param, p.numel()))
    return out


def _pet_tensors(backbone: nn.Module, fam: Family, spec) -> set[tuple[str, str]]:
    """The backbone tensors at the positions of the matched method (else the op's defaults)."""
    # a peft arm has no roles of its own here: the op's defaults stand for its positions
    matched = spec.match and not spec.match.startswith("peft:")
    roles = get_method(spec.match).positions if matched else OPS[spec.op].defaults
    found: set[tuple[str, str]] = set()
    for role in roles:
        if role == ANY:
            continue
        if role == "embeddings":
            found.add((fam.input_embeddings, "weight"))
        elif role in ("biases", "paper_biases"):  # the ones the backbone has; added ones are new
            for h in OPS["add-weight"].at[role](backbone, fam, role, spec):
                found.add((h.path, h.param or "bias"))
        else:
            for path in modules_for_role(backbone, fam, role):
                found.update((path, name) for name, _ in backbone.get_submodule(path).named_parameters(recurse=False))
    # a bias BitFit adds, a table it adds: new tensors, not the backbone's
    return found & {(path, name) for path, name, _ in tensors(backbone, fam)}


def _take(candidates: list[tuple[str, str, int]], k: int, gen: torch.Generator) -> list[tuple[str, str, int]]:
    """Whole tensors in a random order while they fit, then the next one masked to k in all."""
    picked, left = [], k
    for i in torch.randperm(len(candidates), generator=gen).tolist():
        if left == 0:
            break
        path, param, n = candidates[i]
        picked.append((path, param, min(n, left)))
        left -= min(n, left)
    return picked


def hosts(backbone: nn.Module, fam: Family, spec, k: int) -> list[Host]:
    """Hosts with preset counts (``Host.k``) summing to exactly k."""
    if spec.op != "add-weight":
        raise UserError(f"position 'any' picks the model's own tensors: use --op add-weight, not {spec.op}")
    if tuple(spec.positions) != (ANY,):
        raise UserError("position 'any' picks its tensors itself: give it alone")
    every = tensors(backbone, fam)
    total = sum(n for *_, n in every)
    if k > total:
        raise UserError(f"budget {k:,} is larger than the whole backbone ({total:,} in the tensors 'any' may pick)")
    at_pet = _pet_tensors(backbone, fam, spec)
    pet = [t for t in every if (t[0], t[1]) in at_pet]
    rest = [t for t in every if (t[0], t[1]) not in at_pet]
    k_pet = min(k // 2, sum(n for *_, n in pet))
    k_pet = max(k_pet, k - sum(n for *_, n in rest))  # the other half holds less: this one takes more
    gen = torch.Generator().manual_seed(spec.seed * 1_000_003 + zlib.crc32(ANY.encode()))
    picked = _take(pet, k_pet, gen) + _take(rest, k - k_pet, gen)
    out = []
    for path, param, n in picked:
        module = backbone.get_submodule(path)
        if isinstance(module, nn.Linear) and param in ("weight", "bias"):  # one DeltaLinear hosts both
            out.append(Host(param, path, k=n))
        else:
            out.append(Host("param", path, param, k=n))
    return out
