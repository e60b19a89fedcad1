"""One training run: its config, the loop, evaluation, checkpoints, the record it returns,
and the Ray glue that runs it in a Train worker or a Tune trial.

    from apet_ray.run import TrainConfig, check_config, train
    cfg = TrainConfig(model="minilm", task="rotten_tomatoes", max_steps=100, workers=0)
    check_config(cfg)                                   # one clear line for any bad input
    record = train(cfg, report=lambda metrics, checkpoint: None)
    print(record.final_score, record.delta_params, record.peak_memory_mb)

Files: ``config`` (TrainConfig, checks), ``loop`` (``train``, top to bottom), ``evaluate``
(predict, decode, transfer), ``checkpoint``, ``record`` (``RunRecord``), ``memory`` (peak
probes), ``options`` (the command-line flags of a run), ``launch`` (Ray).
"""

from apet_ray.run.checkpoint import Restored, read_checkpoint
from apet_ray.run.config import TrainConfig, check_config
from apet_ray.run.loop import train
from apet_ray.run.record import RunRecord, steps_to_converge

__all__ = ["TrainConfig", "check_config", "train", "RunRecord", "steps_to_converge", "Restored", "read_checkpoint"]
