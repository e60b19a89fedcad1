"""ASHA with one set of brackets per group of comparable trials (one model, one task).

A single ASHA ranks every trial of a study against every other at each rung: a T5-XXL
trial against a BERT-small one, ROUGE-L against accuracy. Stopping is only a decision
between trials of the same model on the same task, so each (model, task) group gets its
own ``ASHAScheduler``; trials are started in order (``FIFOScheduler``), and each result
goes to its group's scheduler, which answers continue or stop.
"""

from __future__ import annotations

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler


def comparison_group(trial) -> str:
    """The group a study trial is ranked in (set by ``run_study`` in the trial's config)."""
    return trial.config["trial"].get("group", "all")


class GroupedASHA(FIFOScheduler):
    def __init__(self, **asha_kwargs):
        super().__init__()
        self._asha_kwargs = asha_kwargs
        self._groups: dict[str, ASHAScheduler] = {}

    def set_search_properties(self, metric, mode, **spec) -> bool:
        for key, value in (("metric", metric), ("mode", mode)):
            if value is not None:
                self._asha_kwargs.setdefault(key, value)
        return True

    def _scheduler(self, trial) -> ASHAScheduler:
        group = comparison_group(trial)
        if group not in self._groups:
            self._groups[group] = ASHAScheduler(**self._asha_kwargs)
        return self._groups[group]

    def on_trial_add(self, tune_controller, trial) -> None:
        self._scheduler(trial).on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        return self._scheduler(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        self._scheduler(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_error(self, tune_controller, trial) -> None:
        self._scheduler(trial).on_trial_error(tune_controller, trial)

    def on_trial_remove(self, tune_controller, trial) -> None:
        self._scheduler(trial).on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return "; ".join(f"{group}: {s.debug_string()}" for group, s in sorted(self._groups.items())) or "GroupedASHA"
