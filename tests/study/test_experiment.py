"""A resumed or retried trial continues from its newest *whole* checkpoint (study.experiment.latest_checkpoint)."""

import json

import torch
from safetensors.torch import save_file

from apet_ray.run import RunRecord, TrainConfig
from apet_ray.study.experiment import latest_checkpoint


def _checkpoint(folder, cfg: TrainConfig, steps: int, torn: bool = False):
    folder.mkdir(parents=True)
    record = RunRecord(config=cfg.to_dict(), model="m", kind="bert", task="sst2", task_type="sa", metric="accuracy",
                       random_guess=0.5, majority=None, lr=1e-3, strategy="none", workers=1, trainable_params=1,
                       delta_params=1, total_params=1, requested_params=None,
                       history=[{"step": steps, "score": 0.5, "loss": 1.0, "tokens_per_s": 1.0, "elapsed_s": 1.0}])
    (folder / "state.json").write_text(json.dumps({"record": record.to_dict()}))
    save_file({"x": torch.zeros(4)}, str(folder / "deltas.safetensors"))
    save_file({"x.step": torch.zeros(64)}, str(folder / "optimizer.safetensors"))
    if torn:  # a process killed while Tune copied the folder into place
        data = (folder / "optimizer.safetensors").read_bytes()
        (folder / "optimizer.safetensors").write_bytes(data[: len(data) // 2])


def test_a_torn_checkpoint_is_passed_over_for_the_newest_whole_one(tmp_path):
    cfg = TrainConfig(model="tiny-bert", task="sst2")
    trial = tmp_path / "exp" / "lora-s0-abc"
    _checkpoint(trial / "checkpoint_000000", cfg, steps=100)
    _checkpoint(trial / "checkpoint_000001", cfg, steps=200, torn=True)
    assert latest_checkpoint(tmp_path, "lora-s0", cfg) == trial / "checkpoint_000000"


def test_a_field_added_later_at_its_old_behaviour_keeps_the_trial_id_of_earlier_results():
    import hashlib
    import json
    from dataclasses import replace

    from apet_ray.run.config import TrainConfig
    from apet_ray.study.trials import ADDED_LATER, trial_id

    cfg = TrainConfig(model="tiny-bert", task="sst2")
    before = {k: v for k, v in cfg.to_dict().items() if k not in ADDED_LATER}  # a config of the version before them
    assert {"schedule", "labels"} <= set(ADDED_LATER)
    digest = hashlib.sha1(json.dumps(before, sort_keys=True, default=str).encode()).hexdigest()[:8]
    assert trial_id(cfg, "s").endswith(digest)
    assert not trial_id(replace(cfg, schedule="linear"), "s").endswith(digest)
