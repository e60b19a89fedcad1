"""FSDP2 loads sharded: every rank reads its own slices of a safetensors folder (rank 0
reads and scatters what cannot be sliced), every rank ends up holding only its shard of the
frozen backbone, and the run follows the single-process trajectory.

Two gloo processes started with torch.multiprocessing (no Ray: the loading is the subject)."""

from __future__ import annotations

import gc
import json
import os
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from apet_ray.delta import DeltaSpec
from apet_ray.run import RunRecord, TrainConfig, train
from support import saved_model

pytestmark = pytest.mark.timeout(300)
DATA = str(Path(__file__).parent / "fixtures" / "data")


def _config(model: Path, method: str, recompute: bool = False) -> TrainConfig:
    spec = DeltaSpec.pet(method) if method != "apet" else DeltaSpec.apet("concat", "adjacent", match="lora", seed=1)
    return TrainConfig(model=str(model), task="sst2", data_dir=DATA, batch_size=8, max_steps=6, eval_every=3,
                       eval_limit=16, spec=spec, strategy="fsdp", precision="fp32", verify_frozen=True,
                       activation_checkpointing=recompute)


def _worker(rank: int, cfg: dict, out: str, port: int) -> None:
    import apet_ray.models.loading as loading

    from apet_ray.models import streaming

    reads = []  # which ranks read whole weights from the model folder (the real loader still runs)
    load = loading._pretrained
    loading._pretrained = lambda *args, **kw: reads.append(rank) or load(*args, **kw)
    sliced = []  # bytes each rank read as its own slices (a streamed load)
    read = streaming.WeightSource.read

    def counted(self, key, start=0, stop=None):
        tensor = read(self, key, start, stop)
        sliced.append(tensor.nbytes)
        return tensor

    streaming.WeightSource.read = counted
    import apet_ray.distributed as distributed

    heads = []  # heads left sharded by rows (untied, frozen), gathered in pieces
    shard_head = distributed.shard_head
    distributed.shard_head = lambda head, *args: heads.append(type(head).__name__) or shard_head(head, *args)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        record = train(TrainConfig.from_dict(cfg), lambda metrics, folder: None)
        Path(out, f"reads-{rank}.json").write_text(json.dumps({"whole": reads, "sliced": sum(sliced), "heads": heads}))
        if rank == 0:
            Path(out, "record.json").write_text(json.dumps(record.to_dict()))
        # leave together, with the FSDP state and its gloo work freed while the group lives:
        # a rank that tore down alone once aborted in a C++ destructor ("terminate called
        # without an active exception") after both had finished
        del record
        gc.collect()
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # the work is done and written; skip interpreter finalization, where the process group's
    # threads can still be joinable when static destructors run
    sys.stdout.flush(), sys.stderr.flush()
    os._exit(0)


def _stored_bytes(path: Path) -> int:
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        return sum(f.get_tensor(k).nbytes for k in f.keys())


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("kind,method,recompute", [
    ("bert", "lora", False), ("bert", "apet", False), ("t5", "prompt", False), ("t5", "bitfit", False),
    ("llama", "lora", False), ("llama", "prompt", False), ("gpt2", "lora", False),
    ("t5", "lora", True)])  # FSDP2 gathers a block once for its recompute and its backward
def test_each_rank_holds_only_its_shard_and_the_run_matches_one_process(tmp_path, kind, method, recompute):
    cfg = _config(saved_model(kind, tmp_path / "model"), method, recompute)
    # against one process that keeps its activations
    reference = train(TrainConfig(**{**cfg.__dict__, "strategy": "none", "activation_checkpointing": False}),
                      lambda metrics, folder: None)
    mp.spawn(_worker, args=(cfg.to_dict(), str(tmp_path), _free_port()), nprocs=2, join=True)
    record = RunRecord.from_dict(json.loads((tmp_path / "record.json").read_text()))
    reads = [json.loads((tmp_path / f"reads-{rank}.json").read_text()) for rank in (0, 1)]
    if kind == "gpt2":  # Conv1D's weights are stored transposed: rank 0 reads them whole and scatters
        assert [r["whole"] for r in reads] == [[0], []] and [r["sliced"] for r in reads] == [0, 0]
    else:  # every rank read its own rows of the file, about half of it, and nobody the whole
        stored = _stored_bytes(tmp_path / "model" / "model.safetensors")
        assert [r["whole"] for r in reads] == [[], []]
        assert sum(r["sliced"] for r in reads) >= stored
        assert max(r["sliced"] for r in reads) < 0.6 * stored

    # Llama's untied head stays sharded by rows (sharded_head); tied heads are FSDP units
    assert [r["heads"] for r in reads] == ([["Linear"]] * 2 if kind == "llama" else [[], []])
    assert record.strategy == "fsdp" and record.workers == 2
    assert [h["loss"] for h in record.history] == pytest.approx([h["loss"] for h in reference.history], rel=1e-5, abs=1e-6)
    assert record.frozen_unchanged is True
    # the frozen weights, split in two: each rank holds about half, together all of them once
    whole = reference.frozen_mb_per_rank[0]
    assert len(record.frozen_mb_per_rank) == 2 and sum(record.frozen_mb_per_rank) == pytest.approx(whole, rel=1e-3)
    assert max(record.frozen_mb_per_rank) < 0.55 * whole
    assert len(record.peak_memory_mb_per_rank) == 2 and record.peak_memory_mb == max(record.peak_memory_mb_per_rank)


def test_an_untied_head_scattered_by_rank0_is_sharded_by_rows_too(tmp_path):
    # a model built by name (no folder to slice): rank 0 builds and scatters, the head included
    cfg = TrainConfig(**{**_config(Path("unused"), "lora").__dict__, "model": "tiny-llama"})
    reference = train(TrainConfig(**{**cfg.__dict__, "strategy": "none"}), lambda metrics, folder: None)
    mp.spawn(_worker, args=(cfg.to_dict(), str(tmp_path), _free_port()), nprocs=2, join=True)
    record = RunRecord.from_dict(json.loads((tmp_path / "record.json").read_text()))
    reads = [json.loads((tmp_path / f"reads-{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["heads"] for r in reads] == [["Linear"]] * 2 and [r["sliced"] for r in reads] == [0, 0]
    assert [h["loss"] for h in record.history] == pytest.approx([h["loss"] for h in reference.history], rel=1e-5, abs=1e-6)
    assert record.frozen_unchanged is True
    assert sum(record.frozen_mb_per_rank) == pytest.approx(reference.frozen_mb_per_rank[0], rel=1e-3)


def test_a_bf16_fsdp_run_shards_bf16_frozen_weights(tmp_path):
    # bf16: frozen linears and embeddings stored in bf16 before sharding, so each rank holds a
    # quarter of the fp32 bytes; the deltas and their AdamW state stay fp32
    folder = saved_model("llama", tmp_path / "model")
    cfg = TrainConfig(**{**_config(folder, "lora").__dict__, "precision": "bf16"})
    fp32 = train(TrainConfig(**{**cfg.__dict__, "strategy": "none", "precision": "fp32"}), lambda metrics, folder: None)
    one = train(TrainConfig(**{**cfg.__dict__, "strategy": "none"}), lambda metrics, folder: None)
    mp.spawn(_worker, args=(cfg.to_dict(), str(tmp_path), _free_port()), nprocs=2, join=True)
    record = RunRecord.from_dict(json.loads((tmp_path / "record.json").read_text()))
    assert record.frozen_unchanged is True
    assert sum(record.frozen_mb_per_rank) == pytest.approx(one.frozen_mb_per_rank[0], rel=1e-3)
    assert max(record.frozen_mb_per_rank) < 0.28 * fp32.frozen_mb_per_rank[0]
    # FSDP computes every matmul in bf16 as autocast does, but also its norms: close, not equal
    assert [h["loss"] for h in record.history] == pytest.approx([h["loss"] for h in one.history], rel=2e-2)


def test_the_tables_outside_the_blocks_are_units_of_their_own_a_tied_table_one_unit():
    from apet_ray.delta.architectures import blocks, family_of
    from apet_ray.delta.attach import attach
    from apet_ray.distributed import _tables_outside_blocks
    from apet_ray.models import build_model

    def units(name: str, method: str) -> list[list[str]]:
        model, _ = build_model(name, num_labels=2, device="meta")
        attach(model, DeltaSpec.pet(method))
        stacked = [block for _, _, block in blocks(model.backbone, family_of(model.backbone))]
        return [paths for paths, _ in _tables_outside_blocks(model.backbone, stacked)]

    # T5 ties one table to its three embeddings and its head: one unit, gathered for all four
    assert units("tiny-t5", "lora") == [["shared", "encoder.embed_tokens", "decoder.embed_tokens", "lm_head"]]
    assert units("tiny-llama", "lora") == [["model.embed_tokens"], ["lm_head"]]  # untied: two
    assert units("tiny-llama", "ft") == []  # tables that train stay with the root
