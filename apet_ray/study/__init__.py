"""Studies on Ray Tune: a grid (or a searcher) of ``TrainConfig``s run as Tune trials, each
trial a Ray Train run or, with ``workers=0``, training in its own process; every trial's
record is written to Parquet as it ends (``runner``). The study scripts' shared command
line is ``cli``; E4's threshold search is ``threshold_search``."""

from apet_ray.study.checks import validate
from apet_ray.study.cli import csv, main, model_tasks, parse, seeds, study_arguments, study_config, trial_config
from apet_ray.study.config import StudyConfig
from apet_ray.study.experiment import tune_trial
from apet_ray.study.lr_search import choose_lrs
from apet_ray.study.runner import run_study
from apet_ray.study.trials import trial_id

__all__ = ["StudyConfig", "choose_lrs", "csv", "main", "model_tasks", "parse", "run_study", "seeds", "study_arguments", "study_config",
           "trial_config", "trial_id", "tune_trial", "validate"]
