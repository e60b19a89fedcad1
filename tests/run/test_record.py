"""The run record's serialisation and the position check that reads the families' table."""

import pytest
from transformers import RobertaConfig

from apet_ray.errors import UserError
from apet_ray.models import build_model
from apet_ray.run.config import check_positions
from apet_ray.run.record import RunRecord
from apet_ray.tasks import get_task


def test_a_record_saved_before_the_rename_to_kind_still_reads():
    record = RunRecord(config={"max_steps": 6}, model="m", kind="bert", task="sst2", task_type="sa", metric="accuracy",
                       random_guess=0.5, majority=0.5, lr=1e-3, strategy="single", workers=0, trainable_params=2,
                       delta_params=1, total_params=10, requested_params=None)
    saved = record.to_dict()
    assert RunRecord.from_dict(saved) == record
    saved["family"] = saved.pop("kind")  # as a checkpoint's state.json of an older run has it
    assert RunRecord.from_dict(saved) == record


def test_a_roberta_position_table_loses_its_two_reserved_rows(tmp_path):
    RobertaConfig(vocab_size=120, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=48,
                  max_position_embeddings=34).save_pretrained(tmp_path)
    model, info = build_model(str(tmp_path), num_labels=2, device="meta")
    check_positions(model, info.kind, 32, get_task("sst2"))
    with pytest.raises(UserError, match="33 input tokens = 33 positions, but the model has 32"):
        check_positions(model, info.kind, 33, get_task("sst2"))
