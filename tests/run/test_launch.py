"""A local Ray started by apet-ray listens on the loopback address only."""

import ipaddress
import json
import os
import stat
import subprocess
import sys

import pytest

from apet_ray.run.launch import keep_token_private

pytestmark = [pytest.mark.ray, pytest.mark.timeout(180)]

# Start Ray as a study does, run one task (so a worker process exists too), then list every
# listening TCP socket of the driver and of every process under it (GCS, raylet, agents,
# dashboard, workers).
SCRIPT = r"""
import json, os, sys, psutil, ray
from apet_ray.run.launch import init_ray
init_ray(None, num_cpus=1, dashboard=sys.argv[1] == "dashboard")
ray.get(ray.remote(lambda: os.getpid()).remote())
pids = {os.getpid()} | {p.pid for p in psutil.Process().children(recursive=True)}
names = {}
for pid in pids:
    try:
        names[pid] = psutil.Process(pid).name()
    except psutil.Error:
        pass
socks = [(c.laddr.ip, c.laddr.port, names.get(c.pid, "?")) for c in psutil.net_connections("inet")
         if c.status == psutil.CONN_LISTEN and c.pid in pids]
ray.shutdown()
print(json.dumps(socks))
"""


@pytest.mark.parametrize("dashboard", ["dashboard", "no-dashboard"])
def test_local_ray_listens_on_loopback_only_and_its_token_is_private(dashboard, tmp_path):
    # a home of its own: Ray writes its auth token to ~/.ray/auth_token
    env = {**{k: v for k, v in os.environ.items() if k not in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_AUTH_TOKEN_PATH")},
           "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", SCRIPT, dashboard], capture_output=True, text=True, timeout=150,
                          env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    sockets = json.loads(done.stdout.strip().splitlines()[-1])
    names = {name for _, _, name in sockets}
    assert len(sockets) >= 4 and {"gcs_server", "raylet"} <= names, sockets  # the test sees Ray's servers
    exposed = [s for s in sockets if not ipaddress.ip_address(s[0].removeprefix("::ffff:")).is_loopback]
    assert exposed == [], f"listening beyond 127.0.0.0/8: {exposed}"
    token = tmp_path / ".ray" / "auth_token"
    assert token.is_file() and stat.S_IMODE(token.stat().st_mode) == 0o600


def test_token_file_made_private(tmp_path):
    token = tmp_path / "auth_token"
    token.write_text("secret")
    token.chmod(0o644)
    keep_token_private(token)
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    keep_token_private(tmp_path / "missing")  # nothing to do, no error


def test_a_missing_token_is_created_private_before_ray_starts(tmp_path, monkeypatch):
    from apet_ray.run.launch import create_private_token

    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    token = tmp_path / "home" / ".ray" / "auth_token"
    create_private_token(token)
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and stat.S_IMODE(token.parent.stat().st_mode) == 0o700
    assert len(token.read_text()) >= 32
    before = token.read_text()
    token.chmod(0o644)
    create_private_token(token)  # an existing token is kept, made private
    assert token.read_text() == before and stat.S_IMODE(token.stat().st_mode) == 0o600
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    create_private_token(tmp_path / "none" / "auth_token")
    assert not (tmp_path / "none").exists()
