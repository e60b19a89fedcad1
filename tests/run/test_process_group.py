"""A Ray Train run's process group listens on the master's address only: on a local Ray,
every socket of every process (Train workers, their TCP store and gloo pairs included) is on
127.0.0.0/8."""

import ipaddress
import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.timeout(240)]

# Start Ray as a study does, run a Train run through apet-ray's backend, and from rank 0 --
# once every rank has joined and gloo has connected them (an all_reduce) -- list every
# listening TCP socket of the driver and of every process under it.
SCRIPT = r"""
import json, os, sys, psutil, ray
import torch, torch.distributed as dist
from ray.train import ScalingConfig
from ray.train.torch import TorchTrainer
from apet_ray.run.launch import init_ray
from apet_ray.run.process_group import BoundTorchConfig

workers, out = int(sys.argv[1]), sys.argv[2]
init_ray(None, num_cpus=2)
driver = os.getpid()

def listening(_):
    t = torch.ones(1)
    dist.all_reduce(t)
    assert int(t.item()) == dist.get_world_size() == workers
    if dist.get_rank() == 0:
        # the driver's tree, and every Ray worker process (a Train worker need not descend from the driver)
        names = {}
        for proc in psutil.process_iter(["pid", "name"]):
            name = proc.info["name"] or ""
            if proc.pid == driver or name.startswith("ray::") or name in ("gcs_server", "raylet"):
                names[proc.pid] = name
        names.update({p.pid: p.name() for p in psutil.Process(driver).children(recursive=True)})
        socks = [(c.laddr.ip, c.laddr.port, names[c.pid]) for c in psutil.net_connections("inet")
                 if c.status == psutil.CONN_LISTEN and c.pid in names]
        with open(out, "w") as f:
            json.dump({"sockets": socks, "me": os.getpid()}, f)
    dist.barrier()

TorchTrainer(listening, torch_config=BoundTorchConfig(),
             scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 0.9})).fit()
"""


@pytest.mark.parametrize("workers", [1, 2])
def test_a_train_runs_process_group_listens_on_loopback_only(workers, tmp_path):
    env = {**{k: v for k, v in os.environ.items() if k not in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_AUTH_TOKEN_PATH",
                                                                "GLOO_SOCKET_IFNAME")},
           "HOME": str(tmp_path), "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}
    out = tmp_path / "sockets.json"
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(workers), str(out)], capture_output=True, text=True,
                          timeout=200, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(out.read_text())
    sockets = seen["sockets"]
    # the test sees Ray's servers and the Train worker's own sockets (its TCP store at least)
    assert {"gcs_server", "raylet"} <= {name for _, _, name in sockets}, sockets
    assert any(name.startswith("ray::") or "Train" in name for _, _, name in sockets) or len(sockets) > 6, sockets
    exposed = [s for s in sockets if not ipaddress.ip_address(s[0].removeprefix("::ffff:") or "::").is_loopback]
    assert exposed == [], f"listening beyond 127.0.0.0/8: {exposed}"


def test_the_interface_of_the_loopback_address_is_found():
    from apet_ray.run.process_group import interface_of

    assert interface_of("127.0.0.1") is not None and interface_of("203.0.113.7") is None
