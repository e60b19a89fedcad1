"""Ray Train on 2 CPU workers: DDP and FSDP2 follow the single-process trajectory, frozen
weights stay put, and a killed worker is replaced from the last checkpoint."""

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import ray

from apet_ray.delta import DeltaSpec
from apet_ray.run import RunRecord, TrainConfig, train
from apet_ray.run.launch import make_trainer

pytestmark = [pytest.mark.ray, pytest.mark.timeout(420)]
DATA = str(Path(__file__).parent / "fixtures" / "data")


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def tiny(**kw) -> TrainConfig:
    # fp32 on every side: the single-process reference would otherwise take bf16 autocast on
    # an AMX CPU, where the multi-process CPU paths stay fp32 (distributed.use_bf16)
    base = dict(model="tiny-bert", task="sst2", data_dir=DATA, batch_size=8, max_steps=20, eval_every=4,
                eval_limit=32, spec=DeltaSpec.apet("add-weight", "discrete", budget=3000, seed=1), workers=2,
                verify_frozen=True, precision="fp32")
    return TrainConfig(**{**base, **kw})


def fit(cfg, tmp_path, name, **kw):
    result = make_trainer(cfg, storage_path=str(tmp_path), name=name, use_gpu=False, **kw).fit()
    assert result.error is None, result.error
    return RunRecord.from_dict(result.return_value)


def losses(record: RunRecord) -> list[float]:
    """The mean training loss of each evaluation window: the trajectory, step group by step group."""
    return [h["loss"] for h in record.history]


@pytest.mark.parametrize("spec", [DeltaSpec.apet("add-weight", "discrete", budget=3000, seed=1), DeltaSpec.pet("lora")],
                         ids=["apet-add-weight-discrete", "lora"])
def test_ddp_and_fsdp_follow_the_single_process_losses(spec, tmp_path):
    reference = losses(train(tiny(spec=spec, workers=0), lambda m, c: None))
    assert len(reference) == 5
    for strategy in ("ddp", "fsdp"):
        out = fit(tiny(spec=spec, strategy=strategy), tmp_path, f"{strategy}-{spec.method}")
        assert out.strategy == strategy and out.workers == 2
        # same global batch, split 4 + 4; gradients averaged over workers: equal up to
        # float32 summation order
        assert losses(out) == pytest.approx(reference, rel=1e-5, abs=1e-6), strategy
        assert out.frozen_unchanged is True, strategy
        assert out.peak_memory_mb > 0 and out.checkpoint_bytes > 0


def _kill_a_worker_after_first_checkpoint(storage: Path, killed: list):
    import psutil

    deadline = time.time() + 120
    while time.time() < deadline and not killed:
        if list(storage.rglob("checkpoint_*")):
            for proc in psutil.process_iter(["pid", "cmdline"]):
                cmd = " ".join(proc.info["cmdline"] or [])
                if "RayTrainWorker" in cmd:
                    os.kill(proc.info["pid"], signal.SIGKILL)
                    killed.append(proc.info["pid"])
                    return
        time.sleep(0.1)


def test_a_killed_worker_is_replaced_and_the_run_finishes_from_the_checkpoint(tmp_path):
    cfg = tiny(strategy="fsdp", max_steps=40, eval_every=5)
    killed: list[int] = []
    watcher = threading.Thread(target=_kill_a_worker_after_first_checkpoint, args=(tmp_path, killed), daemon=True)
    watcher.start()
    out = fit(cfg, tmp_path, "killed", max_failures=1)
    watcher.join(timeout=5)
    assert killed, "no worker was killed: the test did not exercise recovery"
    assert out.steps_run == 40
    assert [h["step"] for h in out.history] == list(range(5, 41, 5))  # no step evaluated twice
    reference = train(tiny(workers=0, max_steps=40, eval_every=5), lambda m, c: None)
    assert losses(out) == pytest.approx(losses(reference), rel=1e-5, abs=1e-6)
