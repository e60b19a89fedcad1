"""The method registry: one entry adds a PET method everywhere -- spec, plan, training,
results and the report's table."""

from pathlib import Path

import pytest

from apet_ray.delta import DeltaSpec, attach, count_deltas, label_of, matchable_methods, method_names, pet_methods
from apet_ray.delta.methods import Method, register, unregister
from apet_ray.errors import UserError
from tests.support import tiny_classifier

DATA = str(Path(__file__).resolve().parents[1] / "fixtures" / "data")


@pytest.fixture
def lora_qk():
    method = register(Method("lora_qk", "LoRA (q, k)", op="concat", positions=("query", "key"), size=2))
    try:
        yield method
    finally:
        unregister("lora_qk")


def test_the_paper_methods_in_table_order():
    assert pet_methods() == ("ft", "prompt", "bitfit", "lora", "adapter", "bitfit_all")
    assert method_names()[-1] == "apet" and "ft" not in matchable_methods()
    assert [label_of(m) for m in pet_methods()] == ["FT", "Prompt", "BitFit", "LoRA", "Adapter", "BitFit (all biases)"]


def test_a_registered_method_is_planned_trained_and_reported(lora_qk, tmp_path):
    from apet_ray.report import make_report
    from apet_ray.results import rows_from_record, write_trial
    from apet_ray.run import TrainConfig, train

    spec = DeltaSpec.pet("lora_qk")
    model = tiny_classifier()
    plan = attach(model, spec)
    # rank 2 on query and key of 2 layers of width 32: (32*2 + 2*32) per matrix
    assert count_deltas(model) == plan.count == 2 * 2 * (32 * 2 + 2 * 32)
    apet = DeltaSpec.apet("add", "discrete", match="lora_qk")  # APET can match it too
    assert attach(tiny_classifier(), apet).requested == plan.count

    cfg = TrainConfig(model="tiny-bert", task="sst2", data_dir=DATA, spec=spec, batch_size=4, max_steps=1,
                      eval_every=1, eval_limit=8, workers=0)
    record = train(cfg, lambda metrics, checkpoint: None)
    assert record.steps_run == 1 and record.delta_params == 2 * 2 * (32 * 2 + 2 * 32)
    rows = rows_from_record(record, "toy", "toy-lora-qk", "finished", "test")
    write_trial(tmp_path, "toy-lora-qk", rows.trial, rows.curves, rows.transfer)
    summary = make_report(tmp_path, tmp_path / "report", figures=[])
    assert "| LoRA (q, k) |" in (tmp_path / "report" / "table.md").read_text()
    assert summary.n_trials == 1


def test_registry_refuses_clashes_and_unknown_names():
    with pytest.raises(ValueError, match="registered already"):
        register(Method("lora", "LoRA", op="concat", positions=("query",), size=4))
    with pytest.raises(ValueError, match="unknown op"):
        register(Method("odd", "Odd", op="multiply", positions=("query",)))
    with pytest.raises(UserError, match="unknown method 'dora'"):
        DeltaSpec.pet("dora")
    with pytest.raises(UserError, match="not a parameter-efficient budget"):
        DeltaSpec.apet("add", "discrete", match="ft")
