"""The process group of a Ray Train run, its sockets bound to one address.

Ray Train's torch backend lets torch's ``env://`` rendezvous create the TCP store, which
listens on every interface and has no authentication: anyone who reaches the port can join
or poison the run. apet-ray's backend does what Ray's does (same backend choice, same
``MASTER_ADDR`` / ``MASTER_PORT`` and rank variables) but creates the store itself, on a
socket bound to the master's address -- 127.0.0.1 on a local Ray, the node's address on a
cluster -- and keeps gloo's (and NCCL's) own sockets on the interface that carries it.
"""

from __future__ import annotations

import datetime
import os
import socket

from ray.train.torch import TorchConfig
from ray.train.torch.config import _TorchBackend


class BoundTorchConfig(TorchConfig):
    """``TorchConfig`` whose process group listens on the master's address only."""

    @property
    def backend_cls(self):
        return _BoundBackend


class _BoundBackend(_TorchBackend):
    def on_start(self, worker_group, backend_config: TorchConfig) -> None:
        import ray
        from ray.train._internal.utils import get_address_and_port
        from ray.train._internal.worker_group import WorkerGroup as V1WorkerGroup
        from ray.train.torch.config import _set_torch_distributed_env_vars

        gpus = worker_group.get_resources_per_worker().get("GPU", 0)
        backend = backend_config.backend or ("nccl" if gpus > 0 else "gloo")
        addr, port = worker_group.execute_single(0, get_address_and_port)
        worker_group.execute(_set_rendezvous_env, addr=addr, port=port)
        if not isinstance(worker_group, V1WorkerGroup):
            worker_group.execute(_set_torch_distributed_env_vars)
        world = len(worker_group)
        ray.get([worker_group.execute_single_async(rank, init_bound_process_group, backend=backend, world_rank=rank,
                                                   world=world, addr=addr, port=port,
                                                   timeout_s=backend_config.timeout_s)
                 for rank in range(world)])


def _set_rendezvous_env(addr: str, port: int) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = addr, str(port)
    interface = interface_of(addr)
    if interface:  # gloo and NCCL open sockets of their own: on the same interface
        os.environ.setdefault("GLOO_SOCKET_IFNAME", interface)
        os.environ.setdefault("NCCL_SOCKET_IFNAME", interface)


def interface_of(addr: str) -> str | None:
    """The network interface that holds ``addr`` (``lo`` for 127.0.0.1), if any."""
    import psutil

    for name, addresses in psutil.net_if_addrs().items():
        if any(a.address.split("%")[0] == addr for a in addresses):
            return name
    return None


def init_bound_process_group(backend: str, world_rank: int, world: int, addr: str, port: int, timeout_s: int) -> None:
    """``init_process_group`` over a TCP store whose server (rank 0) listens on ``addr`` alone."""
    import torch.distributed as dist

    timeout = datetime.timedelta(seconds=timeout_s)
    if world_rank == 0:
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((addr, port))
        listener.listen(max(world, 64))
        # the store owns the socket from here; it must outlive this function
        store = dist.TCPStore(addr, port, world, True, timeout, master_listen_fd=listener.detach())
    else:
        store = dist.TCPStore(addr, port, world, False, timeout)
    dist.init_process_group(backend=backend, store=store, rank=world_rank, world_size=world, timeout=timeout)
