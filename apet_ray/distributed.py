"""Strategies: one process, DDP, or FSDP2 with the frozen backbone sharded.

FSDP2 (``fully_shard``) goes on every transformer block, on each large frozen table outside
the blocks (token embeddings, a tied LM head), then on the root, so each block's and table's
frozen weights are gathered only while it runs; an untied frozen head stays sharded by rows
and is gathered in pieces (``sharded_head``). The deltas inside a unit are sharded with it
and are the only tensors that get gradients and optimizer state.
"""

from __future__ import annotations

import functools
import hashlib

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

from apet_ray.delta.architectures import blocks, family_of
from apet_ray.delta.plan import backbone_of
from apet_ray.errors import UserError
from apet_ray.sharded_head import shard_head

STRATEGIES = ("auto", "none", "ddp", "fsdp")


def local_device() -> torch.device:
    """This worker's device: its GPU (``LOCAL_RANK``) when there are GPUs, else the CPU."""
    if torch.cuda.is_available():
        import os

        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


@functools.lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """The CPU computes bf16 natively (AMX or AVX-512-BF16): autocast there is about 2x
    faster than fp32 on MiniLM (docs/benchmarks.md); elsewhere bf16 is emulated, and slower."""
    try:
        flags = next((line for line in open("/proc/cpuinfo") if line.startswith("flags")), "")
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("amx_bf16", "avx512_bf16"))


def use_bf16(precision: str, device: torch.device, world: int) -> bool:
    """``auto``: bf16 on CUDA, and on a CPU with native bf16 for a single-process run (the
    multi-process CPU paths, gloo DDP/FSDP, stay fp32); ``bf16`` / ``fp32`` as asked."""
    if precision != "auto":
        return precision == "bf16"
    return device.type == "cuda" or (device.type == "cpu" and world == 1 and cpu_has_fast_bf16())


def store_frozen_in_bf16(model: nn.Module) -> None:
    """Keep the frozen weights of linear layers and embeddings in bf16 for a bf16 run.

    They are only ever read as bf16 copies (autocast's casts, FSDP2's ``param_dtype``), so
    fp32 masters would double the backbone's memory, and each step would cast them again.
    Norms stay fp32: they are small, and a BitFit delta on a norm's bias is fp32. Deltas, a
    trained head and in-place (FT) weights train, so their values and AdamW state stay fp32.
    Works on the meta device too (an FSDP rank that receives its shards).
    """
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            for p in module.parameters(recurse=False):  # a tied table is one Parameter: cast once
                if not p.requires_grad and p.dtype == torch.float32:
                    p.data = p.data.to(torch.bfloat16)


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def resolve_strategy(strategy: str, world: int, backbone_bytes: int, device: torch.device) -> str:
    """``auto``: one process alone; FSDP when the frozen backbone would take more than a
    third of a GPU (it must leave room for activations); DDP otherwise."""
    if strategy not in STRATEGIES:
        raise UserError(f"unknown strategy {strategy!r} (known: {', '.join(STRATEGIES)})")
    if world == 1:
        # one process: nothing to shard, unless FSDP is asked for by name (its code path,
        # e.g. bf16 mixed precision, on a single GPU)
        return "fsdp" if strategy == "fsdp" and dist.is_initialized() else "none"
    if strategy == "none":
        raise UserError(f"strategy 'none' runs one process, but {world} workers were asked for")
    if strategy != "auto":
        return strategy
    if device.type == "cuda" and backbone_bytes > torch.cuda.get_device_properties(device).total_memory / 3:
        return "fsdp"
    return "ddp"


def wrap(model: nn.Module, strategy: str, device: torch.device, bf16: bool) -> nn.Module:
    """Place ``model`` on ``device`` for ``strategy``.

    FSDP loads sharded, block by block, then the root, so no rank ever holds more than one
    full block. Two ways in:
      streamed  every rank built the model with the backbone's parameters on meta and the
                rest for real (``build_model(device="stream")``, ``model.apet_weights``):
                each rank reads its own rows of each weight from the safetensors files and
                keeps its own part of the rest; nothing is sent
      from rank 0  only rank 0 built the model with its weights (the other ranks on the meta
                device, deltas attached alike); rank 0 scatters every tensor
    """
    if strategy == "none":
        return model.to(device)
    if strategy == "ddp":
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model.to(device), device_ids=ids)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    _check_same_model_on_every_rank(model)
    if device.type == "cpu":
        return_large_frees_to_the_os()
    source = getattr(model, "apet_weights", None)
    files = source.names(model) if source is not None else {}  # by name: sharding swaps the parameters
    # the real tensors by name (rank 0's all, or every rank's own deltas, head and buffers
    # when streamed); each is let go of once loaded
    real = {name: t for name, t in (*model.state_dict().items(), *model.named_buffers()) if not t.is_meta}
    full_state = real if source is not None or dist.get_rank() == 0 else None
    load = _Loader(full_state, device, files, source, from_rank0=source is None)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    backbone, prefix = backbone_of(model)
    stacked = blocks(backbone, family_of(backbone))
    for _, path, block in stacked:
        fully_shard(block, mesh=mesh, mp_policy=policy)
        load(block, f"{prefix}{path}.")
    own_rows = set()  # the weights of untied heads, which FSDP leaves to sharded_head
    for paths, tables in _tables_outside_blocks(backbone, [block for _, _, block in stacked]):
        head = any(isinstance(t, nn.Linear) for t in tables)
        if head and len(tables) == 1 and tables[0].bias is None:  # an untied head: gathered in pieces
            shard_head(tables[0], mesh, torch.bfloat16 if bf16 else tables[0].weight.dtype)
            own_rows.add(tables[0].weight)
        else:  # a tied head runs last in forward and first in backward: kept gathered in between,
            # not gathered twice at the moment every activation is alive
            fully_shard(tables if len(tables) > 1 else tables[0], mesh=mesh, mp_policy=policy,
                        reshard_after_forward=not head)
        for path, table in zip(paths, tables):
            load(table, f"{prefix}{path}.")
    fully_shard(model, mesh=mesh, mp_policy=policy, ignored_params=own_rows or None)
    load(model, "")
    if device.type == "cpu":
        _gather_only_what_runs(model)
    if source is not None:
        del model.apet_weights
    if hasattr(model, "generate"):  # generation must gather the root's weights like forward does
        register_fsdp_forward_method(model, "generate")
    return model


def _gather_only_what_runs(model: nn.Module) -> None:
    """On a CPU, hold no unit gathered beyond the one that runs.

    FSDP2's defaults overlap gathers with compute on a GPU's streams: forward keeps each
    unit's gather buffer until the next unit is gathered, and backward gathers the next unit
    while this one runs. A CPU has no streams to overlap on, so both only hold memory (a
    block's size each, at the moment the step peaks). An asynchronous unshard frees its
    buffer once copied out; a unit that prefetches itself in backward (a no-op: it is
    gathered by then) replaces the default prefetch of the next.
    """
    from torch.distributed.fsdp import FSDPModule

    for unit in model.modules():
        if isinstance(unit, FSDPModule):
            # private in torch 2.13, public (set_unshard_async_op) in later releases
            (getattr(unit, "set_unshard_async_op", None) or unit._set_unshard_async_op)(True)
            unit.set_modules_to_backward_prefetch([unit])


def _tables_outside_blocks(backbone: nn.Module, in_blocks: list[nn.Module]) -> list[tuple[list[str], list[nn.Module]]]:
    """The frozen embeddings and linear layers outside the blocks worth a unit of their own:
    (paths, modules) per unit, the modules that share a table (a tied head) grouped in one.
    ``wrap`` makes each a unit, except an untied frozen head, which ``sharded_head`` keeps
    sharded by rows.

    Left to the root they would stay gathered from the first forward to the end of backward
    (FSDP2 keeps the root unsharded in between); as units they are gathered while they run.
    That matters where tables are large next to the activations (a 128K-word vocabulary's
    1 GB embedding and head in bf16); on the 2-rank CPU run of t5-v1_1-large it changed the
    peak by less than the noise (docs/benchmarks.md §7). Tables that train (a delta in one)
    stay in the root, where FSDP2 reduces their gradients once.
    """
    inside = {id(m) for block in in_blocks for m in block.modules()}
    big = max((sum(p.numel() for p in block.parameters()) for block in in_blocks), default=0) // 4
    units: dict[int, tuple[list[str], list[nn.Module], set[int]]] = {}  # keyed by the first table's id
    for path, m in backbone.named_modules():
        own = list(m.parameters(recurse=False))
        if type(m) not in (nn.Embedding, nn.Linear) or id(m) in inside or not own or any(p.requires_grad for p in own):
            continue
        ids = {id(p) for p in own}
        unit = next((u for u in units.values() if u[2] & ids), None)
        if unit is None:
            units[id(m)] = ([path], [m], ids)
        else:
            unit[0].append(path), unit[1].append(m), unit[2].update(ids)
    params = {id(p): p for p in backbone.parameters()}
    return [(paths, modules) for paths, modules, ids in units.values()
            if sum(params[i].numel() for i in ids) >= max(big, 1)]


def _check_same_model_on_every_rank(model: nn.Module) -> None:
    # a rank that built other tensors would deadlock or abort the scatters below
    layout = repr([(name, tuple(t.shape)) for name, t in (*model.state_dict().items(), *model.named_buffers())])
    layouts = [None] * dist.get_world_size()
    dist.all_gather_object(layouts, hashlib.sha256(layout.encode()).hexdigest())
    if len(set(layouts)) != 1:
        raise RuntimeError("the ranks built different models (parameter names or shapes differ): cannot load sharded")


class _Loader:
    """Fills the not yet loaded tensors of a sharded module, one tensor at a time.

    ``files`` (state name -> file tensor name): read from ``source``, each rank its own rows.
    The rest comes from ``full_state``: rank 0's, scattered (parameters: each rank keeps its
    shard) or broadcast whole (buffers: masks, position ids) when ``from_rank0``; else every
    rank's own copy, of which it keeps its part. Ranks without a ``full_state`` pass None
    and may hold meta tensors until now.
    """

    def __init__(self, full_state: dict | None, device: torch.device, files: dict[str, str], source, from_rank0: bool):
        self.full_state, self.device, self.files, self.source = full_state, device, files, source
        self.from_rank0 = from_rank0
        self.loaded: set[str] = set()
        self.read: set[str] = set()  # file tensors already read

    def __call__(self, module: nn.Module, prefix: str) -> None:
        from apet_ray.delta.masked import MaskedTensor

        for m in module.modules():  # materialise what is still meta, and nothing already loaded
            if any(t.is_meta for t in (*m.parameters(recurse=False), *m.buffers(recurse=False))):
                m.to_empty(device=self.device, recurse=False)
        with torch.no_grad():
            for name, target in (*module.state_dict().items(), *module.named_buffers()):
                key = prefix + name
                if key in self.loaded:
                    continue
                self.loaded.add(key)
                local = target.to_local() if isinstance(target, DTensor) else target
                if key in self.files:
                    if self.files[key] in self.read:  # a tied table, under its second name
                        continue
                    self.read.add(self.files[key])
                    local.copy_(self._rows(self.files[key], target).to(self.device, local.dtype))
                else:
                    local.copy_(self._from_state(key, target, local))
        for m in module.modules():
            if isinstance(m, MaskedTensor):  # its layout (contiguous run or scatter) follows its indices
                m._refresh_layout()

    def _rows(self, file_key: str, target: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a weight, read from its file (FSDP2 shards dim 0)."""
        if not isinstance(target, DTensor):
            return self.source.read(file_key)
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

        shape, offset = compute_local_shape_and_global_offset(target.shape, target.device_mesh, target.placements)
        if not shape or not shape[0]:  # a rank past the last row of a short tensor
            return torch.empty(shape, dtype=target.dtype)
        return self.source.read(file_key, offset[0], offset[0] + shape[0])

    def _from_state(self, key: str, target: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
        have = self.full_state is not None
        full = (self.full_state.pop(key).to(self.device, local.dtype) if have
                else torch.empty(target.shape, dtype=local.dtype, device=self.device))
        if isinstance(target, DTensor):  # src_data_rank None: every rank cuts its part of its own copy
            return distribute_tensor(full, target.device_mesh, target.placements,
                                     src_data_rank=0 if self.from_rank0 else None).to_local()
        if self.from_rank0:
            dist.broadcast(full, src=0)
        return full


def return_large_frees_to_the_os() -> None:
    """glibc keeps freed heap memory for reuse; FSDP's per-block gathers of varied sizes then
    ratchet a CPU worker's resident memory up to about the full model (measured: 4.6 GB for
    a 2.9 GB model's half-shard). Serving allocations of 64 KiB or more by mmap returns them
    on free. 1 MiB took rank 1's peak to 2.9 GB, but a step's mid-sized tensors (a decoder
    token's activations, attention scores) still fragmented the heap: 150 MB of it free and
    resident at the peak; at 64 KiB it stays under 10 MB and the peak is 90 MB lower, the
    run's time within its noise (docs/benchmarks.md section 7). Fixing the threshold also
    stops glibc raising it (up to 32 MiB) after the first large free, which put one rank's
    shards in a fragmented heap and the other's in mmap: a run calls this before it builds
    the model. No-op off glibc."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 16)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def return_free_heap_to_the_os() -> None:
    """Give the pages of freed heap memory back (glibc ``malloc_trim``; a no-op elsewhere).

    A step frees its activations, but glibc keeps their pages for reuse, so between steps a CPU
    worker holds its last step's whole working set, and what the next step gathers comes on
    top of it. A CPU FSDP worker calls it once per update; it costs a few milliseconds.
    """
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def local_bytes(tensors: list[torch.Tensor]) -> int:
    """Bytes of these tensors that this rank holds (its shard of a DTensor)."""
    return sum((t.to_local() if isinstance(t, DTensor) else t).nbytes for t in tensors)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor on every rank (a collective for FSDP shards), on the CPU."""
    return (t.full_tensor() if isinstance(t, DTensor) else t).detach().cpu()


def like(full: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``full`` laid out as ``target`` is: sharded the same way when it is a DTensor."""
    if isinstance(target, DTensor):
        return distribute_tensor(full.to(target.device, target.dtype), target.device_mesh, target.placements)
    return full.to(target.device, target.dtype)


def all_reduce_sum(xs: list[float], world: int) -> list[float]:
    if world == 1 or not xs:
        return list(xs)
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"  # NCCL reduces GPU tensors only
    t = torch.tensor(xs, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def all_gather_floats(x: float, world: int) -> list[float]:
    """``x`` from every rank, in rank order."""
    if world == 1:
        return [x]
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    out = [torch.zeros(1, dtype=torch.float64, device=device) for _ in range(world)]
    dist.all_gather(out, torch.tensor([x], dtype=torch.float64, device=device))
    return [float(t.item()) for t in out]


def frozen_checksum(frozen: list[torch.Tensor], world: int) -> list[float]:
    """Exact fingerprint of every frozen tensor this rank holds (its shard under FSDP):
    the sum and the position-weighted sum of the raw bits, gathered over ranks."""
    sums = []
    for p in frozen:
        local = p.to_local() if isinstance(p, DTensor) else p
        bits = local.detach().contiguous().view(-1).view(torch.int32 if local.element_size() == 4 else torch.int16).long()
        weights = torch.arange(1, bits.numel() + 1, dtype=torch.long, device=bits.device)
        sums += [float(bits.sum()), float((bits * weights).sum() % 1_000_000_007)]
    return all_reduce_sum(sums, world)
