"""The Tune driver's two callbacks: the results writer and the console.

``ResultsWriter`` writes each trial's Parquet rows when it ends -- finished, stopped by
ASHA or failed -- from the run record its last report carried, so a crash never tears a
file and a resumed study never duplicates a row. A disk that refuses a write (full,
read-only) stops the study: the writer keeps the failure instead of raising inside Tune
(which would print Tune's traceback and retry the trial), ``stop_all`` ends the other
trials, no further rows are written (their trials run again on ``--resume``, from their
last checkpoints), and ``raise_failure`` turns it into one line once Tune has returned. ``Progress`` prints one line per started
and per finished trial (what it is, its score, an ETA) and a status table at the end, in
place of Tune's own per-trial config dumps.
"""

from __future__ import annotations

import time
from pathlib import Path

from ray.tune import Callback
from ray.tune.stopper import Stopper

from apet_ray.errors import OutputError
from apet_ray.results import rows_from_record, write_trial
from apet_ray.run.record import RunRecord
from apet_ray.study.trials import sampled_entry, tune_trial_name


class TrialRecords:
    """Each trial's whole run record, put together on the driver from reports that carry only
    the evaluations since the previous report (``run.loop.report_metrics``)."""

    def __init__(self):
        self._records: dict[str, dict] = {}

    def add(self, trial, result: dict) -> None:
        record = result.get("record")
        if record is None:
            return
        before = self._records.get(trial.trial_id, {}).get("history", [])
        self._records[trial.trial_id] = {**record, "history": before[:result.get("history_from", 0)] + record["history"]}

    def get(self, trial) -> RunRecord | None:
        record = self._records.get(trial.trial_id)
        return RunRecord.from_dict(record) if record is not None else None


class ResultsWriter(Callback):
    """Writes each trial's rows when it ends. ``decided(tune_trial_id)`` says a trial was stopped
    because its answer was known (a threshold search's ``decided`` set). Its ``records`` are
    the trials' records, shared with ``Progress``."""

    def __init__(self, results: Path, study: str, code_version: str, decided=lambda tune_trial_id: False,
                 status: str | None = None):
        self.results, self.study, self.code_version, self.decided = results, study, code_version, decided
        self.status = status  # e.g. "search" for every trial of an lr search
        self.records = TrialRecords()
        self.written = 0
        self.ids: list[str] = []
        self.failure: OutputError | None = None

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.records.add(trial, result)

    def _write(self, trial, status: str) -> None:
        last = trial.last_result or {}
        if last.get("already_recorded") or self.failure is not None:
            return  # after a refused write nothing more is recorded: those trials run again on --resume
        tid = sampled_entry(trial.config)["trial_id"]
        record = self.records.get(trial)
        if record is None:
            print(f"[apet-ray] {tune_trial_name(trial)} ended ({status}) before its first evaluation: no results written",
                  flush=True)
            return
        rows = rows_from_record(record, self.study, tid, status, self.code_version)
        try:
            write_trial(self.results, tid, rows.trial, rows.curves, rows.transfer)
        except (OutputError, OSError) as exc:  # a full or read-only disk: nothing half-written stays (atomic.replacing)
            if not isinstance(exc, OutputError):  # refused outside the atomic writer (a folder, a lock)
                exc = OutputError(exc.filename or self.results, exc)
            self.failure = exc.with_hint(f"the results of {tune_trial_name(trial)} and of the trials still running "
                                         "are not recorded; free space or fix the folder, then rerun with --resume "
                                         "(they go on from their last checkpoints)")
            return
        self.written += 1
        self.ids.append(tid)

    def stop_all(self) -> bool:
        """Whether the study must end now (a write was refused): Tune's ``Stopper`` question."""
        return self.failure is not None

    def raise_failure(self) -> None:
        if self.failure is not None:
            raise self.failure

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._write(trial, self.status or ("decided" if self.decided(trial.trial_id) else "finished"))

    def on_trial_error(self, iteration, trials, trial, **info):
        self._write(trial, "error")


class WriteRefused(Stopper):
    """Ends every trial of the experiment once one of its ``ResultsWriter``s could not write."""

    def __init__(self, writers: list[ResultsWriter]):
        self.writers = writers

    def __call__(self, trial_id, result) -> bool:
        return False

    def stop_all(self) -> bool:
        return any(w.stop_all() for w in self.writers)


class Progress(Callback):
    def __init__(self, total: int | None, concurrent: int, records: TrialRecords, decided=lambda tune_trial_id: False):
        self.total, self.concurrent, self.records, self.decided = total, concurrent, records, decided
        self.started_at: dict[str, float] = {}
        self.durations: list[float] = []
        self.rows: list[tuple[str, str, int, str, str]] = []
        self.t0 = time.time()

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started_at[trial.trial_id] = time.time()
        print(f"[apet-ray] start {tune_trial_name(trial)}", flush=True)

    def _end(self, trial, status: str) -> None:
        last = trial.last_result or {}
        self.durations.append(time.time() - self.started_at.get(trial.trial_id, self.t0))
        record = self.records.get(trial)
        score = f"{record.metric} {record.final_score:.3f}" if record and record.history else "no evaluation"
        steps = f"step {record.steps_run}/{record.config['max_steps']}" if record and record.history else ""
        if status == "finished" and record and record.history and not record.finished:  # as rows_from_record says
            status = "decided (stopped)" if self.decided(trial.trial_id) else "stopped (ASHA)"
        if last.get("already_recorded"):
            status, score = "recorded earlier", f"score {last.get('score', float('nan')):.3f}"
        params = f"{record.delta_params:,}" if record else "?"
        self.rows.append((tune_trial_name(trial), steps, params, score, status))
        done = len(self.durations)
        eta = ""
        if self.total:
            left = self.total - done
            mean = sum(self.durations) / done
            eta = f"; about {max(left, 0) * mean / max(self.concurrent, 1) / 60:.0f} min left" if left > 0 else ""
        print(f"[apet-ray] {status} {done}/{self.total or '?'} {tune_trial_name(trial)}: {score}, {params} delta params, "
              f"{self.durations[-1]:.0f} s{eta}", flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._end(trial, "finished")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trial, "error")

    def table(self) -> str:
        widths = [max(len(str(r[i])) for r in self.rows + [("trial", "step", "params", "score", "status")])
                  for i in range(5)]
        lines = [("trial", "step", "params", "score", "status"), *self.rows]
        return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths)) for line in lines)
