"""``apet-ray train``: one run, in this process or on Ray Train, with a progress display;
writes the run's record (run.json + the trials, curves and transfer tables, from the same
function a study uses) and its final deltas under --out."""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from apet_ray.atomic import copy_file, copy_folder, make_folder, owning, write_text
from apet_ray.commands.params import add_spec_arguments, spec_from_args
from apet_ray.errors import OutputError, UserError, machine_error
from apet_ray.paths import output_folder, path_arg
from apet_ray.models import DEFAULT_MODEL
from apet_ray.run.options import add_run_arguments, config_from_args
from apet_ray.tasks import TASKS
from apet_ray.tasks.task_file import is_task_file, read_task_file

# a one-off run starts one worker unless told otherwise (studies embed their own defaults)
TRAIN_DEFAULTS = {"workers": 1}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train one delta spec on one task",
                       description="Train one delta spec on one task, in this process or on Ray Train; "
                       "write its record (run.json, Parquet tables) and final deltas under --out.")
    p.add_argument("--model", type=path_arg, default=DEFAULT_MODEL, help="HF name, local folder, minilm (offline default), mpnet, smollm2 (offline extras) or tiny-bert/tiny-t5/tiny-llama")
    p.add_argument("--task", type=path_arg, help="a task name (apet-ray tasks), a task file (.yaml/.json, docs/tasks.md); with "
                   "--train-file, the name of your task (default: rotten_tomatoes, or the train file's name)")
    byo = p.add_argument_group("bring your own task (instead of a registered --task)")
    byo.add_argument("--train-file", type=path_arg, help="csv/parquet/jsonl with your own columns")
    byo.add_argument("--eval-file", type=path_arg, help="held-out file (default: 10%% of --train-file)")
    byo.add_argument("--text-columns", default="text", help="comma-separated input column(s)")
    byo.add_argument("--label-column", help="classification label column")
    byo.add_argument("--target-column", help="generation target column")
    add_spec_arguments(p)
    add_run_arguments(p, TRAIN_DEFAULTS)
    p.add_argument("--transfer-to", help="after training, zero-shot evaluate on these comma-separated "
                   "classification tasks (unified labels, as experiments/transfer.py does)")
    p.add_argument("--max-failures", type=int, default=1, help="worker-group restarts from the last checkpoint")
    p.add_argument("--out", type=path_arg, default="runs/train", help="output folder")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.set_defaults(func=run)


def config_from_cli(args: argparse.Namespace):
    custom, task = None, args.task or "rotten_tomatoes"
    if is_task_file(task):
        task, custom = read_task_file(task)
    elif args.train_file:
        if args.task and args.task in TASKS:
            raise UserError(f"--task {args.task} is a built-in task; with --train-file, --task names your own task: "
                            "give it another name")
        custom = dict(path=args.train_file, text_columns=tuple(args.text_columns.split(",")),
                      label_column=args.label_column, target_column=args.target_column, eval_path=args.eval_file)
        task = args.task or Path(args.train_file).stem
    transfer = tuple(t.strip() for t in (args.transfer_to or "").split(",") if t.strip())
    return config_from_args(args, model=args.model, task=task, spec=spec_from_args(args), seed=args.seed,
                            custom=custom, transfer_tasks=transfer)


def run(args: argparse.Namespace) -> int:
    from apet_ray.results import rows_from_record, trial_ids, write_trial
    from apet_ray.run import check_config
    from apet_ray.run.launch import check_address, code_version

    cfg = config_from_cli(args)
    # empty, a symlink loop, a file, read-only or not ours: refused here, before anything starts
    out = output_folder(args.out, "--out")
    if args.max_failures < 0:
        raise UserError(f"--max-failures must be 0 or more, not {args.max_failures}")
    check_config(cfg)
    check_address(args.address)
    if (out / "run.json").exists():
        if args.resume:  # nothing left to train: no second row for the same run
            print(f"[apet-ray] {out} holds a finished run ({_finished_id(out)}): nothing to resume")
            return 0
        raise UserError(f"{out} already holds a finished run; choose another --out")
    if (out / "ray").exists() and not args.resume:
        raise UserError(f"{out} holds an unfinished run: add --resume to continue it, or choose another --out")
    if args.resume and not (out / "ray").exists() and not _checkpoints(out / "checkpoints"):
        raise UserError(f"nothing to resume: {out} holds no checkpoint of a run")

    started = time.time()
    try:
        make_folder(out)
        with owning(out, "apet-ray train"):  # a second run into the same --out is refused, in one line
            record = _run_local(cfg, out, args.resume) if cfg.workers == 0 else _run_ray(cfg, out, args)
            # a resume after a refused write rewrites the trial it began, not a second one
            earlier = sorted(trial_ids(out)) if args.resume else []
            trial_id = earlier[-1] if earlier else f"train-{time.strftime('%Y%m%d-%H%M%S', time.localtime(started))}"
            rows = rows_from_record(record, study="train", trial_id=trial_id, status="finished",
                                    code_version=code_version())
            write_trial(out, trial_id, rows.trial, rows.curves, rows.transfer)
            write_text(out / "run.json", json.dumps({"trial_id": trial_id, "record": record.to_dict()}, indent=2,
                                                    default=str))
    except OutputError as exc:  # a full or read-only disk after the start: nothing half-written
        raise exc.with_hint("free space or fix --out, then rerun the same command with --resume (training goes on "
                            "from its last checkpoint)") from None
    print(f"[apet-ray] done: {record.metric} {record.final_score:.4f} (best {record.best_score:.4f}) "
          f"after {record.steps_run} steps in {record.wall_time_s:.0f} s; "
          f"deltas in {out / 'deltas.safetensors'}, record in {out / 'run.json'} and {out}/trials, curves")
    return 0


def _checkpoints(folder: Path) -> list[Path]:
    """The complete checkpoints, oldest first (``run.checkpoint.is_complete``: a torn copy or
    a leftover is passed over)."""
    from apet_ray.run.checkpoint import is_complete

    steps = [p for p in folder.glob("step-*") if p.name.split("-")[1].isdigit() and is_complete(p)]
    return sorted(steps, key=lambda p: int(p.name.split("-")[1]))


def _finished_id(out: Path) -> str:
    try:
        return str(json.loads((out / "run.json").read_text()).get("trial_id", "?"))
    except (OSError, ValueError, AttributeError):
        return "its run.json is unreadable"


def _run_local(cfg, out: Path, resume: bool):
    """In this process, no Ray: checkpoints go to OUT/checkpoints/step-N (the last two kept)."""
    from apet_ray.run import read_checkpoint, train

    ckpts = make_folder(out / "checkpoints")
    existing = _checkpoints(ckpts)
    restored = read_checkpoint(existing[-1]) if resume and existing else None

    def report(metrics: dict, folder: str | None) -> None:
        if folder:
            copy_folder(folder, ckpts / f"step-{metrics['step']}")
            for old in _checkpoints(ckpts)[:-2]:
                shutil.rmtree(old)

    record = train(cfg, report, restored)
    copy_file(_checkpoints(ckpts)[-1] / "deltas.safetensors", out / "deltas.safetensors")
    return record


def _run_ray(cfg, out: Path, args: argparse.Namespace):
    import ray

    from apet_ray.run import RunRecord
    from apet_ray.run.launch import init_ray, make_trainer

    init_ray(args.address)
    cpus = ray.cluster_resources().get("CPU", 1)
    per_worker = max(0.5, min(cpus / cfg.workers, 8.0)) if not args.address else 1.0
    trainer = make_trainer(cfg, storage_path=str(out / "ray"), name="run", max_failures=args.max_failures,
                           cpus_per_worker=per_worker)
    result = trainer.fit()
    if result.error is not None:
        refused = machine_error(result.error)  # a worker's disk refused a checkpoint: one line
        if refused is not None:
            raise OutputError(refused.filename or out / "ray", refused)
        raise RuntimeError(f"training failed: {result.error}")
    with result.checkpoint.as_directory() as folder:
        copy_file(Path(folder) / "deltas.safetensors", out / "deltas.safetensors")
    return RunRecord.from_dict(result.return_value)
