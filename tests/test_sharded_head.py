"""A row-sharded frozen head gathered in pieces gives the whole head's logits and input
gradient: two gloo processes against one fp64 ``nn.Linear``, with a vocabulary that does
not split evenly (the last rank's block is short) and pieces small enough to take several."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

pytestmark = pytest.mark.timeout(120)
VOCAB, D = 37, 8


def _worker(rank: int, out: str, port: int) -> None:
    import apet_ray.sharded_head as sharded_head
    from torch.distributed.device_mesh import init_device_mesh

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        sharded_head.PIECE_BYTES = 2 * 5 * D * 8  # 5 rows of each rank per piece: 19 rows each -> 4 pieces
        torch.manual_seed(0)
        whole = nn.Linear(D, VOCAB, bias=False, dtype=torch.float64).requires_grad_(False)
        x = torch.randn(2, 3, D, dtype=torch.float64) + rank  # every rank its own inputs, as data parallel
        want_y = whole(x.clone().requires_grad_())

        head = nn.Linear(D, VOCAB, bias=False, dtype=torch.float64).requires_grad_(False)
        sharded_head.shard_head(head, init_device_mesh("cpu", (2,)), torch.float64)
        head.to_empty(device="cpu")  # its rows start on meta, as the loader finds them
        with torch.no_grad():  # as the loader fills it: this rank's rows
            local = head.weight.to_local()
            local.copy_(whole.weight[rank * 19: rank * 19 + local.shape[0]])
        xs = x.clone().requires_grad_()
        y = head(xs)
        y.backward(torch.ones_like(y) * torch.arange(VOCAB, dtype=torch.float64))
        xw = x.clone().requires_grad_()
        whole(xw).backward(torch.ones_like(y) * torch.arange(VOCAB, dtype=torch.float64))
        torch.save({"y": y.detach(), "want_y": want_y.detach(), "gx": xs.grad, "want_gx": xw.grad,
                    "local_rows": local.shape[0], "type": type(head).__name__}, Path(out, f"{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()
    sys.stdout.flush(), sys.stderr.flush()
    os._exit(0)


def test_the_pieces_give_the_whole_heads_logits_and_input_gradient(tmp_path):
    from test_distributed import _free_port

    mp.spawn(_worker, args=(str(tmp_path), _free_port()), nprocs=2, join=True)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"{rank}.pt")
        assert got["type"] == "RowShardedHead" and got["local_rows"] == (19, 18)[rank]
        assert got["y"].shape == (2, 3, VOCAB)
        torch.testing.assert_close(got["y"], got["want_y"], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got["gx"], got["want_gx"], rtol=1e-12, atol=1e-12)
