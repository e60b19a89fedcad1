"""cluster.yaml passes Ray's own cluster-config checks, offline.

`ray up` runs prepare_config (merge with the provider's defaults.yaml), then asks AWS to
fill in instance resources and bootstrap IAM/keys/subnets (network, credentials), then
validate_config (JSON schema + cross-field checks). Here we run the two offline steps on
the same dict `ray up` would load; resources are spelled out in the YAML, so nothing is
left for the AWS look-up to fill. Sockets are blocked to prove no network is touched.
"""

from __future__ import annotations

import copy
import re
import shlex
import socket
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "cluster.yaml"


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("cluster.yaml checks must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture
def raw() -> dict:
    with open(CLUSTER_YAML) as f:
        return yaml.safe_load(f)


@pytest.fixture
def prepared(raw, no_network) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(copy.deepcopy(raw))
    validate_config(config)
    return config


def _tokens(cmd: str) -> list[str]:
    return shlex.split(cmd.replace(";", " ; "))


def test_ray_validation_passes(prepared):
    assert prepared["provider"]["type"] == "aws"
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_validator_is_live(raw, no_network):
    """The schema really is applied: an unknown key is rejected."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    bad = copy.deepcopy(raw)
    bad["available_node_types"]["head"]["not_a_field"] = 1
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(bad))


def test_gpu_workers_autoscale_and_head_is_cpu_only(prepared):
    types = prepared["available_node_types"]
    head = types.pop(prepared["head_node_type"])
    assert head["resources"].get("GPU", 0) == 0
    # The head advertises 0 CPUs, matching `ray start --head --num-cpus=0`.
    assert head["resources"].get("CPU") == 0
    head_start = " ".join(prepared["head_start_ray_commands"])
    assert "--num-cpus=0" in head_start

    gpu_types = {name: t for name, t in types.items() if t["resources"].get("GPU", 0) > 0}
    assert gpu_types, "no worker node type has GPUs"
    for name, t in gpu_types.items():
        assert t["min_workers"] == 0, f"{name} should scale from zero"
        assert t["max_workers"] >= 1
    assert {t["node_config"]["InstanceType"] for t in gpu_types.values()} >= {
        "g5.12xlarge",
        "p5.48xlarge",
    }
    assert sum(t["min_workers"] for t in types.values()) <= prepared["max_workers"]


def test_one_ami_for_all_nodes(raw):
    """Ray needs the same Python on every node: one AMI for every node type."""
    images = {t["node_config"].get("ImageId") for t in raw["available_node_types"].values()}
    assert len(images) == 1 and None not in images


def test_setup_installs_apet_ray_with_pinned_torch(prepared):
    for key in ("head_setup_commands", "worker_setup_commands"):
        pips = [c for c in prepared[key] if re.search(r"\bpip install\b", c)]
        installs = [c for c in pips if "apet-ray" in c or "apet_ray" in c]
        assert installs, f"{key}: no command installs apet-ray"
        # torch pinned in the same command as apet-ray, to the version pyproject pins.
        pin = re.search(r'"torch==([^"]+)"', (ROOT / "pyproject.toml").read_text())
        assert pin, "pyproject.toml no longer pins torch"
        assert any(f"torch=={pin.group(1)}" in c for c in installs)
    assert any("boto3" in c for c in prepared["head_setup_commands"]), (
        "the head's autoscaler needs boto3 (setting head_setup_commands replaces Ray's default)"
    )


def test_shared_results_path_is_mounted(prepared):
    setup = " ".join(prepared["setup_commands"])
    assert "/mnt/shared" in setup and "mount -t nfs4" in setup


def test_dashboard_on_localhost_8265_and_token_auth_everywhere(prepared):
    head = [_tokens(c) for c in prepared["head_start_ray_commands"]]
    head_start = next(t for t in head if "--head" in t)
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "--dashboard-port=8265" in head_start

    worker = [_tokens(c) for c in prepared["worker_start_ray_commands"]]
    worker_start = next(t for t in worker if "start" in t and "ray" in t)

    # RAY_AUTH_MODE has to agree on every node, and the token must be on every node.
    def mode(tokens):
        return [t.split("=", 1)[1] for t in tokens if t.startswith("RAY_AUTH_MODE=")]

    assert mode(head_start) == mode(worker_start) == ["token"]
    assert prepared["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"
    assert "chmod 600 ~/.ray/auth_token" in prepared["setup_commands"]  # owner-only on every node
