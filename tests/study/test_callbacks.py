"""The driver puts each trial's record together from reports that carry only what is new."""

from types import SimpleNamespace

from apet_ray.run.record import RunRecord
from apet_ray.study.callbacks import TrialRecords

RECORD = RunRecord(config={"max_steps": 6}, model="m", kind="bert", task="sst2", task_type="sa", metric="accuracy",
                   random_guess=0.5, majority=0.5, lr=1e-3, strategy="none", workers=0, trainable_params=10,
                   delta_params=8, total_params=100, requested_params=None).to_dict()


def report(points, since):
    """What run.loop.report_metrics sends: the record with the evaluations from ``since`` on."""
    history = [{"step": s, "score": s / 10, "loss": 1.0, "tokens_per_s": 1.0, "elapsed_s": 1.0} for s in points]
    return {"record": {**RECORD, "history": history}, "history_from": since}


def test_history_is_assembled_and_a_restarted_trial_replaces_it_from_its_first_report():
    records, trial = TrialRecords(), SimpleNamespace(trial_id="t1")
    assert records.get(trial) is None
    records.add(trial, report([2], 0))
    records.add(trial, report([4], 1))
    assert [h["step"] for h in records.get(trial).history] == [2, 4]
    # the trial's process died after step 4 and restarted from its step-2 checkpoint: its
    # first report carries everything it has (the restored step 2, then step 4 again)
    records.add(trial, report([2, 4], 0))
    records.add(trial, report([6], 2))
    assert [h["step"] for h in records.get(trial).history] == [2, 4, 6]
    records.add(trial, {"score": 0.5, "already_recorded": True})  # no record: nothing changes
    assert records.get(trial).steps_run == 6
    assert records.get(SimpleNamespace(trial_id="t2")) is None
