"""Running ``train`` on Ray: starting or joining Ray, the Ray Train worker function, the
Tune trial that trains in its own process, and the ``TorchTrainer`` of one run.

Local by default (a Ray instance on this machine, every Ray service on 127.0.0.1, the
dashboard at 127.0.0.1:8265); the same code joins a cluster with ``address="auto"`` or
``ray://...``. Both Ray paths are one hop from the loop:
``train_on_session(ray.train | ray.tune, cfg) -> train(cfg, report, restored)``.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch

from apet_ray.errors import UserError
from apet_ray.run.checkpoint import read_checkpoint
from apet_ray.run.config import TrainConfig
from apet_ray.run.loop import train
from apet_ray.run.record import RunRecord

RAY_ENV = {
    # ray.train.report blocks ~2 s per call at Ray's default health-check interval (docs/cluster.md)
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    # Train V2 copies print() into its log files and echoes it again: progress lines came twice
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    # Tune warns at every snapshot of short trials that checkpoint often; the study's own
    # progress lines are what a person reads
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    # No result.json / progress.csv / TensorBoard files per trial: the Parquet tables are the
    # results, each report carries the run's whole record (so result.json grew with the square
    # of the evaluations), and TensorBoard warned at every report about the history list
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
}


def check_address(address: str | None) -> None:
    """Refuse an unreachable cluster address before anything starts."""
    if address in (None, "", "local"):
        return
    if address == "auto":
        if not os.environ.get("RAY_ADDRESS") and not Path("/tmp/ray/ray_current_cluster").exists():
            raise UserError("--address auto found no running Ray cluster on this machine (start one with `ray start --head`)")
        return
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    host, port = parsed.hostname, parsed.port or (10001 if parsed.scheme == "ray" else 6379)
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError as exc:
        raise UserError(f"cannot reach a Ray cluster at {address} ({exc.strerror or exc})") from None


def init_ray(address: str | None = None, num_cpus: int | None = None, dashboard: bool = True) -> None:
    import ray

    # Tune's end-of-run analysis looks for result.json, which RAY_ENV turns off: its warning is noise
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    if ray.is_initialized():
        return
    os.environ.update({k: os.environ.get(k, v) for k, v in RAY_ENV.items()})
    local = address in (None, "", "local")
    kwargs = dict(num_cpus=num_cpus, include_dashboard=dashboard, dashboard_host="127.0.0.1") if local else {}
    if local:
        _listen_on_loopback_only()
        create_private_token()  # before Ray starts: Ray would write it world-readable first
    # Train V2: a run stopped by ASHA only gives back its CPUs when the dashboard's state
    # service runs (docs/cluster.md), so the dashboard stays on unless the caller opts out.
    ray.init(address=None if local else address, runtime_env={"env_vars": dict(RAY_ENV)},
             log_to_driver=True, configure_logging=True, logging_level="WARNING", **kwargs)
    keep_token_private()


def _token_path() -> Path:
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")


def create_private_token(path: str | os.PathLike[str] | None = None) -> None:
    """Ray 2.60 writes a missing auth token 0644 (in a 0755 ``~/.ray``) and only then could it be
    made private: generate it here first, 0600 from its first byte (a folder made for it is 0700).
    An existing token is made private; with ``RAY_AUTH_MODE=disabled`` nothing is created."""
    token = Path(path) if path else _token_path()
    if token.exists():
        keep_token_private(token)
        return
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return
    from ray._private.authentication.authentication_token_generator import generate_new_authentication_token

    try:
        token.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it meanwhile
        keep_token_private(token)
        return
    except OSError as exc:  # a home we cannot write: Ray will say so itself
        logging.getLogger(__name__).warning("could not create %s (%s)", token, exc.strerror or exc)
        return
    with os.fdopen(fd, "w") as fh:
        fh.write(generate_new_authentication_token())


def keep_token_private(path: str | os.PathLike[str] | None = None) -> None:
    """Make Ray's auth token file readable by its owner only (Ray 2.60 writes it 0644): the
    token is the key to the cluster. ``path``: default ``RAY_AUTH_TOKEN_PATH`` or
    ``~/.ray/auth_token``, where Ray reads it."""
    token = Path(path) if path else _token_path()
    try:
        if token.is_file() and token.stat().st_mode & 0o077:
            token.chmod(0o600)
    except OSError as exc:  # someone else's file: say so, don't stop the study
        logging.getLogger(__name__).warning("could not make %s private (%s)", token, exc.strerror or exc)


# Ray's switch for "no multi-node cluster" (its default on macOS and Windows): the node's
# address is then the loopback one, and the GCS, raylet, worker, agent and metrics servers
# listen on 127.0.0.1 instead of every interface. Ray 2.60 turns a loopback
# ``_node_ip_address`` into the machine's external address, so this is the one way there.
LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _listen_on_loopback_only() -> None:
    """A local Ray instance serves this machine only; export ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1``
    to let other machines' ``ray start --address`` join it."""
    from ray._private import ray_constants

    os.environ.setdefault(LOCAL_ONLY_ENV, "0")  # Ray's own processes read it at import
    # the driver read it when ray was imported, which may have been before this call
    ray_constants.ENABLE_RAY_CLUSTER = os.environ[LOCAL_ONLY_ENV].lower() in ("1", "true")


def code_version() -> str:
    """The git commit of the code that ran (with +dirty), or the package version."""
    from apet_ray import __version__
    from apet_ray.run.provenance import versions

    commit = versions()["commit"]  # one git read per process, shared with the trials rows' provenance
    if commit == "not a checkout":
        return __version__
    sha, dirty = commit.removesuffix("+dirty"), commit.endswith("+dirty")
    return f"{__version__}+{sha[:7]}{'.dirty' if dirty else ''}"


def train_on_session(session, cfg: TrainConfig, threads: int, earlier: str | os.PathLike[str] | None = None) -> RunRecord:
    """``train`` reporting to Ray and resuming from Ray's checkpoint when there is one, else
    from ``earlier`` (a checkpoint folder of an earlier attempt of a resumed study).

    ``session`` is ``ray.train`` in a Train worker, or ``ray.tune`` in a Tune trial that
    trains itself: both offer ``report``, ``Checkpoint`` and ``get_checkpoint``.
    """
    torch.set_num_threads(max(1, int(threads)))

    def report(metrics: dict, folder: str | None) -> None:
        session.report(metrics, checkpoint=session.Checkpoint.from_directory(folder) if folder else None)

    checkpoint = session.get_checkpoint()
    restored = None
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:  # read whole, before Ray may prune it
            restored = read_checkpoint(folder)
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"[apet-ray] {cfg.spec.label}: restarted from step {restored.record.steps_run} (Ray's checkpoint)",
                  flush=True)
    elif earlier is not None:
        restored = read_checkpoint(earlier)
        print(f"[apet-ray] {cfg.spec.label}: continuing from step {restored.record.steps_run} ({earlier})", flush=True)
    return train(cfg, report, restored)


def train_worker(config: dict) -> dict:
    """The Ray Train worker function: ``config = {"train": TrainConfig.to_dict(), "threads": n}``;
    returns the record as a dict (Ray gives back rank 0's)."""
    import ray.train

    return train_on_session(ray.train, TrainConfig.from_dict(config["train"]), config.get("threads", 1)).to_dict()


def make_trainer(cfg: TrainConfig, storage_path: str, name: str, max_failures: int = 0,
                 cpus_per_worker: float = 1.0, use_gpu: bool | None = None, callbacks=()):
    """A TorchTrainer for one run; ``use_gpu`` None: whenever the cluster has GPUs."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from apet_ray.run.process_group import BoundTorchConfig

    if use_gpu is None:
        use_gpu = ray.cluster_resources().get("GPU", 0) > 0
    resources = {"CPU": cpus_per_worker} | ({"GPU": 1} if use_gpu else {})
    return TorchTrainer(
        train_worker,
        train_loop_config={"train": cfg.to_dict(), "threads": max(1, int(cpus_per_worker))},
        torch_config=BoundTorchConfig(),  # the rendezvous store listens on the master's address only
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=list(callbacks),
        ),
    )
