"""The training loop in one process (no Ray): resume, frozen weights, convergence steps."""

from pathlib import Path

import pytest
import torch

from apet_ray.data import global_batch, shard
from apet_ray.delta import DeltaSpec, read_deltas
from apet_ray.errors import UserError
from apet_ray.run import TrainConfig, check_config, read_checkpoint, steps_to_converge, train
from support import saved_model

DATA = str(Path(__file__).resolve().parents[1] / "fixtures" / "data")


def tiny(**kw) -> TrainConfig:
    base = dict(model="tiny-bert", task="sst2", data_dir=DATA, batch_size=8, max_steps=12, eval_every=4,
                eval_limit=32, spec=DeltaSpec.apet("add-weight", "discrete", budget=3000, seed=1), workers=0)
    return TrainConfig(**{**base, **kw})


class Recorder:
    """Keeps a copy of every checkpoint the loop reports (it deletes its own afterwards)."""

    def __init__(self, root: Path):
        self.root, self.metrics, self.folders = root, [], []

    def __call__(self, metrics, folder):
        self.metrics.append(metrics)
        if folder:
            import shutil
            target = self.root / f"step-{metrics['step']}"
            shutil.copytree(folder, target)
            self.folders.append(target)


def test_steps_to_converge():
    assert steps_to_converge([1, 2, 3, 4], [0.1, 0.5, 0.8, 0.79], tol=0.02) == 3
    assert steps_to_converge([1, 2, 3, 4, 5], [0.9, 0.5, 0.8, 0.9, 0.9], tol=0.01) == 4
    assert steps_to_converge([1, 2, 3, 4], [0.9, 0.5, 0.8, 0.9], tol=0.01) is None  # best only at the end
    assert steps_to_converge([1, 2, 3, 4], [0.5, 0.6, 0.7, 0.9], tol=0.01) is None  # still rising at the end
    assert steps_to_converge([1], [0.7], tol=0.0) == 1
    assert steps_to_converge([10, 20], [0.7, 0.7], tol=0.0) == 10
    assert steps_to_converge([], [], tol=0.1) is None


def test_batches_depend_on_seed_and_step_only_and_shards_cover_the_batch():
    assert global_batch(100, 32, 7, seed=3) == global_batch(100, 32, 7, seed=3)
    assert global_batch(100, 32, 7, seed=3) != global_batch(100, 32, 7, seed=4)
    rows = global_batch(10, 7, 1, seed=0)  # crosses an epoch boundary
    assert len(rows) == 7
    parts = [shard(rows, r, 3) for r in range(3)]
    assert sum(parts, []) == rows and [len(p) for p in parts] == [3, 2, 2]


def test_resume_continues_the_same_trajectory(tmp_path):
    straight = train(tiny(), Recorder(tmp_path / "a"))
    first = Recorder(tmp_path / "b")
    train(tiny(max_steps=8), first)
    resumed = train(tiny(), Recorder(tmp_path / "c"), read_checkpoint(first.folders[-1]))
    # the resumed run's record carries the first part's history on: the same curve, bit for bit
    strip = [{k: h[k] for k in ("step", "score", "loss")} for h in straight.history]
    assert [{k: h[k] for k in ("step", "score", "loss")} for h in resumed.history] == strip
    a, _ = read_deltas(tmp_path / "a" / "step-12" / "deltas.safetensors")
    c, _ = read_deltas(tmp_path / "c" / "step-12" / "deltas.safetensors")
    assert a.keys() == c.keys() and all(torch.equal(a[k], c[k]) for k in a)


def test_frozen_weights_are_untouched_and_counts_are_reported(tmp_path):
    rec = Recorder(tmp_path)
    out = train(tiny(verify_frozen=True, spec=DeltaSpec.pet("adapter")), rec)
    assert out.frozen_unchanged is True
    assert out.delta_params == 2 * 2 * (2 * 32 * 24 + 24 + 32)
    assert out.trainable_params == out.delta_params + 32 * 2 + 2
    assert len(out.history) == 3 and out.steps_run == 12 and out.finished
    assert out.kind == "bert" and out.peak_memory_mb > 0 and out.tokens_per_s > 0
    assert out.checkpoint_bytes == (rec.folders[-1] / "deltas.safetensors").stat().st_size
    # each report carries only the evaluations since the previous one: put together, they
    # are the returned record's history
    assert [m["history_from"] for m in rec.metrics] == [0, 1, 2]
    assert [h for m in rec.metrics for h in m["record"]["history"]] == out.history


def test_checkpoint_of_k_discrete_values_is_O_k(tmp_path):
    rec = Recorder(tmp_path)
    train(tiny(max_steps=4), rec)
    size = (rec.folders[-1] / "deltas.safetensors").stat().st_size
    # 3,000 values (fp32) + 3,000 indices (int32) + a 66-parameter head + header
    assert size < 3000 * 8 + 66 * 4 + 16_384


def test_t5_text_to_text_runs_and_scores_invalid_generations_as_zero(tmp_path):
    out = train(tiny(model="tiny-t5", spec=DeltaSpec.pet("lora"), max_steps=2, eval_every=2, eval_limit=8), Recorder(tmp_path))
    assert out.random_guess == 0.0 and 0.0 <= out.final_score <= 1.0 and out.kind == "t5"


@pytest.mark.parametrize("change,message", [
    (dict(task="nope"), "unknown task"),
    (dict(model="./missing-model"), "does not exist"),
    (dict(spec=DeltaSpec.apet("add", "discrete", budget=10**9)), "larger than"),
    (dict(data_dir="/nonexistent/dir"), "not found"),
    (dict(batch_size=0), "batch_size"),
    (dict(workers=-1), "workers must be 0"),
    (dict(eval_limit=0), "eval_limit"),
    (dict(strategy="zero3"), "unknown strategy"),
    (dict(precision="fp8"), "unknown precision"),
    (dict(model="tiny-bert", task="samsum"), "classification only"),
])
def test_check_config_refuses_bad_runs_in_one_line(change, message):
    with pytest.raises(UserError, match=message) as info:
        check_config(tiny(**change))
    assert "\n" not in str(info.value)


def test_peak_memory_is_this_runs_not_the_process_lifetime():
    from apet_ray.run.memory import peak_memory_mb, reset_peak_memory

    cpu = torch.device("cpu")
    reset_peak_memory(cpu)
    big = torch.ones(64 * 2**20)  # 256 MiB, returned to the system when freed
    high = peak_memory_mb(cpu)
    del big
    reset_peak_memory(cpu)
    if peak_memory_mb(cpu) == high:
        pytest.skip("this system cannot reset the peak RSS (no writable /proc/self/clear_refs)")
    assert peak_memory_mb(cpu) < high - 200


def test_every_seed_is_scored_on_the_same_eval_examples_and_the_majority_is_recorded(tmp_path):
    from apet_ray.models import load_tokenizer
    from apet_ray.run.loop import _encoded, majority_rate

    tokenizer = load_tokenizer("tiny-bert")
    task = tiny().resolve_task()
    evals = [_encoded(tiny(seed=s, eval_limit=10), task, "eval", tokenizer, "bert").examples for s in (0, 1)]
    trains = [_encoded(tiny(seed=s, train_limit=10), task, "train", tokenizer, "bert").examples for s in (0, 1)]
    assert evals[0] == evals[1] and trains[0] != trains[1]
    out = train(tiny(max_steps=4, eval_limit=10), Recorder(tmp_path))
    assert out.majority == majority_rate(evals[0]) and 0.5 <= out.majority <= 1.0


def test_resume_refuses_other_training_settings_but_may_run_longer(tmp_path):
    first = Recorder(tmp_path / "a")
    train(tiny(max_steps=4), first)
    with pytest.raises(UserError, match="other settings \\(lr\\)"):
        train(tiny(max_steps=8, lr=0.5), Recorder(tmp_path / "b"), read_checkpoint(first.folders[-1]))
    longer = train(tiny(max_steps=8), Recorder(tmp_path / "c"), read_checkpoint(first.folders[-1]))
    assert longer.steps_run == 8 and longer.config["max_steps"] == 8 and longer.finished


def _task_file(tmp_path: Path, task_type: str):
    """A small NLI (two inputs, three classes) or SUM (generation) task of one's own."""
    from apet_ray.tasks import read_task_file

    if task_type == "nli":
        rows = [("a cat sits", "an animal sits", "yes"), ("it rains", "it is dry", "no"),
                ("he runs", "he moves", "maybe")] * 8
        (tmp_path / "nli.csv").write_text("premise,claim,gold\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows))
        spec = "train: nli.csv\ntext_columns: [premise, claim]\nlabel_column: gold\ntype: nli\n"
    else:
        rows = [("the meeting moved to friday at noon", "meeting friday"), ("lunch is at one today", "lunch at one")] * 12
        (tmp_path / "notes.csv").write_text("note,gist\n" + "".join(f"{a},{b}\n" for a, b in rows))
        spec = "train: notes.csv\ntext_columns: [note]\ntarget_column: gist\ntype: sum\nmax_target_len: 8\n"
    (tmp_path / f"{task_type}.yaml").write_text(spec)
    return read_task_file(tmp_path / f"{task_type}.yaml")


@pytest.mark.parametrize("family", ["distilbert", "deberta-v2"])
def test_an_encoder_family_beyond_bert_trains_end_to_end(tmp_path, family):
    cfg = tiny(model=str(saved_model(family, tmp_path / family)), spec=DeltaSpec.pet("lora"), max_steps=6, eval_every=3,
               eval_limit=8, lr=1e-2)
    out = train(cfg, Recorder(tmp_path / "run"))
    assert out.kind == "bert" and out.steps_run == 6 and out.total_params > 0
    losses = [h["loss"] for h in out.history]
    assert all(torch.isfinite(torch.tensor(losses))) and 0.0 <= out.final_score <= 1.0


@pytest.mark.parametrize("model,task_type", [("tiny-llama", "sa"), ("tiny-llama", "nli"), ("tiny-llama", "sum"),
                                        ("gpt2", "sa"), ("gpt2", "sum"), ("bloom", "nli")])
def test_a_decoder_only_model_trains_end_to_end(tmp_path, model, task_type):
    task, custom = ("sst2", None) if task_type == "sa" else _task_file(tmp_path, task_type)
    if not model.startswith("tiny-"):  # GPT-2 (Conv1D, fused q/k/v), BLOOM (fused, ALiBi) as model folders
        model = str(saved_model(model, tmp_path / model))
    cfg = tiny(model=model, task=task, custom=custom, spec=DeltaSpec.pet("lora"), max_steps=6, eval_every=3,
               eval_limit=8, lr=1e-2, data_dir=DATA if task_type == "sa" else None)
    out = train(cfg, Recorder(tmp_path))
    assert out.kind == "causal" and out.random_guess == 0.0 and out.steps_run == 6
    losses = [h["loss"] for h in out.history]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]  # it learns the targets
    assert 0.0 <= out.final_score <= 1.0


@pytest.mark.parametrize("spec", [DeltaSpec.pet("lora"), DeltaSpec.pet("bitfit"), DeltaSpec.pet("prompt"),
                                  DeltaSpec.apet("add-weight", "discrete", budget=3000, seed=1)], ids=lambda s: s.label)
def test_a_bf16_run_stores_the_frozen_weights_in_bf16_and_trains_the_deltas_in_fp32(tmp_path, spec):
    runs = {p: train(tiny(spec=spec, precision=p, max_steps=8, eval_every=4, lr=1e-2, verify_frozen=True),
                     Recorder(tmp_path / p))
            for p in ("fp32", "bf16")}
    # linear layers and embeddings are nearly all of the frozen bytes; norms stay fp32
    ratio = runs["bf16"].frozen_mb_per_rank[0] / runs["fp32"].frozen_mb_per_rank[0]
    assert 0.5 <= ratio < 0.52
    assert runs["bf16"].frozen_unchanged is True
    tensors, _ = read_deltas(Recorder(tmp_path).root / "bf16" / "step-8" / "deltas.safetensors")
    values = {k: t for k, t in tensors.items() if not k.endswith(".indices")}
    assert values and all(t.dtype == torch.float32 for t in values.values())
    bf16, fp32 = ([h["loss"] for h in runs[p].history] for p in ("bf16", "fp32"))
    assert bf16 == pytest.approx(fp32, rel=0.05)  # the same run, rounded differently


def test_the_linear_schedule_decays_each_group_from_its_own_lr_to_zero_as_a_function_of_the_step():
    import torch

    from apet_ray.run.loop import _adamw, _set_lr

    named = {"w": torch.nn.Parameter(torch.zeros(2)), "prompt.p": torch.nn.Parameter(torch.zeros(2))}
    opt = _adamw(named, 1e-3, 3e-2, 0.0)
    _set_lr(opt, "linear", 25, 100)
    assert [g["lr"] for g in opt.param_groups] == [pytest.approx(7.5e-4), pytest.approx(2.25e-2)]
    _set_lr(opt, "constant", 99, 100)
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 3e-2]


def test_training_on_the_unified_label_set(tmp_path):
    # T5 answers "0" / "1" instead of the task's words; a task without the pair is refused up front
    record = train(tiny(model="tiny-t5", labels="unified", max_steps=4, eval_every=4,
                        spec=DeltaSpec.pet("lora")), report=lambda metrics, folder: None)
    assert record.history and 0.0 <= record.final_score <= 1.0
    with pytest.raises(UserError, match="no unified negative/positive labels"):
        check_config(tiny(task="samsum", labels="unified"))


def test_a_run_records_what_produced_it():
    from apet_ray.results import rows_from_record

    record = train(tiny(max_steps=2, eval_every=2), report=lambda metrics, folder: None)
    assert record.versions["torch"] == torch.__version__ and record.versions["commit"]
    assert record.precision in ("fp32", "bf16") and record.device
    row = rows_from_record(record, "s", "t", "finished", "v").trial
    assert (row["workers"], row["strategy"], row["device"]) == (0, "none", record.device)


@pytest.mark.parametrize("kind", ["bert", "t5"])
def test_gradient_accumulation_takes_the_whole_batchs_step(tmp_path, kind):
    import json

    folder = saved_model(kind, tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    for key in ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout_rate"):  # dropout off: same masks
        if key in config:
            config[key] = 0.0
    (folder / "config.json").write_text(json.dumps(config))
    spec = DeltaSpec.pet("lora") if kind == "t5" else DeltaSpec.apet("add-weight", "discrete", budget=3000, seed=1)
    records = {}
    for parts in (1, 4):
        out = tmp_path / f"accum-{parts}"
        recorder = Recorder(out)
        records[parts] = train(tiny(model=str(folder), spec=spec, grad_accum=parts, max_steps=3, eval_every=3,
                                    batch_size=8, precision="fp32"), report=recorder)  # bf16 rounds each part
        records[parts, "deltas"] = read_deltas(recorder.folders[-1] / "deltas.safetensors")[0]
    assert records[1].history[-1]["loss"] == pytest.approx(records[4].history[-1]["loss"], abs=1e-5)
    for name, value in records[1, "deltas"].items():
        torch.testing.assert_close(records[4, "deltas"][name], value, atol=1e-5, rtol=1e-5)
    with pytest.raises(UserError, match="cannot be cut into 16 micro-batches"):
        check_config(tiny(grad_accum=16, batch_size=8))


@pytest.mark.parametrize("kind", ["bert", "t5"])
def test_length_buckets_pad_less_and_take_the_same_step(kind):
    from apet_ray.data import encode
    from apet_ray.delta import attach
    from apet_ray.models import build_model, load_tokenizer
    from apet_ray.run.loop import _length_buckets, _micro_batches
    from apet_ray.tasks import Example, get_task

    task = get_task("sst2")
    tokenizer = load_tokenizer("tiny-bert")
    examples = [Example(inputs=(" ".join(["film"] * (1 + (i * 7) % 48)),), label=i % 2) for i in range(16)]
    data = encode(task, examples, tokenizer, kind, 64)
    rows = list(range(16))
    buckets = _length_buckets(data, rows, kind)
    assert len(buckets) > 1 and sorted(r for b in buckets for r in b) == rows
    padded = lambda groups: sum(len(g) * max(len(data.input_ids[r]) for r in g) for g in groups)
    assert padded(buckets) < 0.8 * padded([rows])

    grads = []
    for by_length in (False, True):
        model, _ = build_model(f"tiny-{kind}", num_labels=2, seed=0)  # presets: dropout off
        attach(model, DeltaSpec.pet("lora"))
        loss = 0.0
        for batch, share in _micro_batches(data, rows, 1, tokenizer.pad_token_id, kind, "cpu", by_length=by_length):
            part = model(**batch)["loss"] * share
            part.backward()
            loss += float(part)
        grads.append((loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}))
    assert grads[0][0] == pytest.approx(grads[1][0], abs=1e-6)
    for name, g in grads[0][1].items():
        torch.testing.assert_close(grads[1][1][name], g, atol=1e-6, rtol=1e-5)


def test_recomputed_activations_take_the_same_steps_in_the_loop():
    # dropout on (MiniLM-sized presets train without it; bert's classifier head keeps 0.1)
    runs = [train(tiny(activation_checkpointing=on, max_steps=4, eval_every=4, precision="fp32"), report=lambda m, f: None)
            for on in (False, True)]
    assert [h["loss"] for h in runs[1].history] == pytest.approx([h["loss"] for h in runs[0].history], abs=1e-6)
    assert runs[1].final_score == runs[0].final_score
    with pytest.raises(UserError, match="activation_checkpointing must be true or false"):
        check_config(tiny(activation_checkpointing="yes"))
