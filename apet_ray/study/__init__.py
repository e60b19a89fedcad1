"""Studies on Ray Tune: a grid (or a searcher) of ``TrainConfig``s run as Tune trials, each
trial a Ray Train run or, with ``workers=0``, training in its own process; every trial's
record is written to Parquet as it ends (``runner``). The study scripts' shared command
line is ``cli``."""

from apet_ray.study.cli import csv, main, parse, seeds, study_arguments, study_config, trial_config
from apet_ray.study.runner import StudyConfig, choose_lrs, run_study, trial_id, tune_trial, validate

__all__ = ["StudyConfig", "choose_lrs", "csv", "main", "parse", "run_study", "seeds", "study_arguments", "study_config",
           "trial_config", "trial_id", "tune_trial", "validate"]
