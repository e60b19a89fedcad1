"""A run's command-line options, defined once for ``apet-ray train`` and every study script:
the flag, its help, its default (``TrainConfig``'s unless a script embeds its own) and how
it becomes a config field. Checks live in ``check_config``, not here, so a YAML value and a
flag are refused alike.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, dataclass, fields

from apet_ray.distributed import STRATEGIES
from apet_ray.paths import path_arg
from apet_ray.run.config import DATA_SOURCES, LABEL_SETS, PRECISIONS, SCHEDULES, TrainConfig


@dataclass(frozen=True)
class Option:
    field: str  # the TrainConfig field it sets
    type: type
    help: str
    choices: tuple[str, ...] | None = None
    when_unset: str | None = None  # what None means, for --help

    @property
    def flag(self) -> str:
        return "--" + self.field.replace("_", "-")


RUN_OPTIONS = (
    Option("data_dir", path_arg, "folder of <task>/<split>.parquet|csv|jsonl files with the hub's columns",
           when_unset="the hub, then the packaged copy"),
    Option("data_source", str, "where task data comes from", choices=DATA_SOURCES),
    Option("batch_size", int, "global batch size, split over the workers"),
    Option("grad_accum", int, "gradient accumulation: each worker's share of the batch in this many micro-batches "
           "and one update (the same step as the whole batch, a fraction of the activation memory)"),
    Option("activation_checkpointing", bool, "keep only each block's input for backward and recompute the rest "
           "there: activation memory of about one block, about a third more compute, the same numbers"),
    Option("lr", float, "learning rate", when_unset="the paper's, 3e-4; 5e-5 on RTE"),
    Option("prompt_lr", float, "soft-prompt learning rate", when_unset="the paper's, 3e-2; 5e-5 on RTE"),
    Option("weight_decay", float, "AdamW weight decay of the trainable deltas (the paper's release: 0)"),
    Option("schedule", str, "learning rate over the run: constant, or linear decay to 0 (the release's)",
           choices=SCHEDULES),
    Option("labels", str, "train on the task's own labels, or on the unified set of zero-shot transfer (negative / "
           "not-entailment / false -> 0, positive / entailment / true -> 1, as the release's label_mapping_type)",
           choices=LABEL_SETS),
    Option("max_steps", int, "training steps"),
    Option("eval_every", int, "evaluate (and checkpoint) every this many steps"),
    Option("train_limit", int, "train on a seeded subset of this many examples", when_unset="all"),
    Option("eval_limit", int, "evaluate on a seeded subset of this many examples", when_unset="all"),
    Option("max_input_len", int, "truncate inputs to this many tokens", when_unset="the task's, 128 or 256"),
    Option("workers", int, "Ray Train workers per run; 0: train in this process (a study's trial process) with "
           "no worker group to start, the fast choice for short single-process runs",
           when_unset="0 on a local Ray, 1 with --address"),
    Option("strategy", str, "how workers share the model", choices=STRATEGIES),
    Option("precision", str, "numeric precision; auto: bf16 autocast on CUDA, and on a CPU with native bf16 "
           "(AMX / AVX-512-BF16) for single-process runs, else fp32; deltas and optimizer state stay fp32",
           choices=PRECISIONS),
)

_DEFAULTS = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}


def add_run_arguments(parser: argparse.ArgumentParser, defaults: dict | None = None,
                      also: dict[str, dict] | None = None) -> None:
    """Add the run options to ``parser``; ``defaults`` overrides TrainConfig's (a script's
    embedded study); ``also`` names other profiles whose values ``--help`` shows beside them."""
    defaults = {**_DEFAULTS, **(defaults or {})}
    group = parser.add_argument_group("training")
    for option in RUN_OPTIONS:
        default = defaults[option.field]

        def show(value, option=option):
            return option.when_unset if value is None and option.when_unset else value

        others = [f"{name}: {show(values[option.field])}" for name, values in (also or {}).items()
                  if option.field in values and values[option.field] != default]
        shown = "; ".join([str(show(default))] + others)
        # choices are shown, not enforced here: check_config refuses a bad value from a flag
        # and from a YAML file alike, in one line
        known = f": {', '.join(option.choices)}" if option.choices else ""
        how = {"action": argparse.BooleanOptionalAction} if option.type is bool else {"type": option.type}
        group.add_argument(option.flag, dest=option.field, default=default, help=f"{option.help}{known} (default: {shown})",
                           **how)
    group.add_argument("--address", default=defaults.get("address"),
                       help="Ray cluster address, e.g. auto or ray://head:10001 (default: start Ray on this machine)")


def run_fields(args: argparse.Namespace) -> dict:
    """The TrainConfig fields the run options set."""
    return {option.field: getattr(args, option.field) for option in RUN_OPTIONS}


def config_from_args(args: argparse.Namespace, **fields_) -> TrainConfig:
    """A run's config: the run options, plus what the caller fixes (model, task, spec, seed...)."""
    return TrainConfig(**run_fields(args), **fields_).with_absolute_paths()
