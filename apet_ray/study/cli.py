"""The command line every study script shares: grid axes, the run options (defined once in
``run.options``), how the study runs, a YAML ``--config``, a ``--profile``; and ``main``,
which shows a user's mistake as one line.

Two profiles: ``smoke`` (the script's embedded defaults: a small study that runs offline on
a laptop) and ``paper``: the study's ``experiments/configs/<study>/paper.yaml``, the one
place that says what the paper ran (its models and tasks as a ``grid`` of blocks, seeds,
batch, learning rates, steps). Flags and ``--config`` values override either; ``--models``
or ``--tasks`` replace those of every grid block.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from apet_ray.config_files import read_mapping
from apet_ray.errors import Interrupted, OneLineParser, UserError, machine_error, machine_error_line
from apet_ray.paths import path_arg
from apet_ray.run.config import TrainConfig
from apet_ray.run.options import add_run_arguments, config_from_args
from apet_ray.study.config import StudyConfig
from apet_ray.tasks.task_file import is_task_file, read_task_file

def study_arguments(description: str, defaults: dict, paper: Path | None = None) -> argparse.ArgumentParser:
    """The shared flags. ``defaults`` is the script's embedded (smoke) study, which also sets
    the defaults of flags the script adds afterwards; ``paper`` the YAML file of its paper
    profile (read again, checked and typed, when the profile is chosen)."""
    profiles = {"smoke": dict(defaults), "paper": {**defaults, **_raw_yaml(paper)} if paper else dict(defaults)}
    # no abbreviations: parse() tells flags given from defaults by their exact spelling
    p = OneLineParser(description=description, allow_abbrev=False)
    p.add_argument("--config", type=path_arg, help="YAML file with any of these options (flags override it)")
    p.add_argument("--profile", choices=sorted(profiles), default="smoke",
                   help="smoke: the embedded small study (short runs, laptop-sized: not the paper's settings); "
                        "paper: the paper's training setting (default: smoke)")
    grid = p.add_argument_group("grid")
    for flag, what in (("--models", "comma-separated model names or paths"), ("--tasks", "comma-separated task names"),
                       ("--seeds", "comma-separated seeds (a grid axis)")):
        dest = flag[2:]
        paper_value = profiles["paper"].get(dest)
        other = f"; paper: {paper_value}" if paper_value != defaults.get(dest) else ""
        grid.add_argument(flag, help=f"{what} (default: {defaults.get(dest)}{other})")
    add_run_arguments(p, defaults, also={"paper": profiles["paper"]})
    p.add_argument("--plugin-init", choices=["kaiming", "release"],
                   help="how adapters and APET plugins start: kaiming (down kaiming-uniform, up zero: the output "
                        "starts unchanged) or release (both N(0, 0.01), as the paper's code) (default: kaiming; "
                        "paper: release)")
    ft_lr = defaults.get("ft_lr")
    p.add_argument("--ft-lr", type=float, help="learning rate of the full fine-tuning trials (default: "
                   f"{ft_lr if ft_lr is not None else 'the --lr of the others'}; paper: the paper's, as --lr)")
    how = p.add_argument_group("study")
    how.add_argument("--results", type=path_arg, help=f"results folder: Parquet tables and Ray's files (default: {defaults.get('results')})")
    how.add_argument("--resume", action="store_true", help="continue an interrupted study in --results")
    how.add_argument("--asha", action="store_true",
                     help="stop trials that fall behind at ASHA rungs, ranked within each model and task; stopped "
                          "trials are recorded and listed in the report, not scored (default: every trial runs to the end)")
    how.add_argument("--max-concurrent", type=int, help="trials at a time (default: as many as the cluster holds)")
    how.add_argument("--tune-lr", type=int, default=0, metavar="N",
                     help="first choose each group's learning rate (a group: trials differing only in their seed) by an "
                          "Optuna search of N trials with ASHA stopping (default: 0, the fixed lrs)")
    how.add_argument("--score", choices=["final", "best"], default="final",
                     help="which score of each trial the report's tables, figures and findings show: its final "
                          "evaluation or its best one, as the paper's release reports (load_best_model_at_end); "
                          "both are recorded (default: final)")
    how.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    how.add_argument("--dry-run", action="store_true",
                     help="check every trial and print it, resolved (one line each), without starting Ray")
    how.add_argument("--json", action="store_true", help="with --dry-run: the trials as one JSON list")
    p.set_defaults(grid=None, **defaults)
    p.profiles = profiles  # read by parse()
    p.profile_files = {"paper": paper} if paper else {}
    return p


def parse(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse flags over the chosen profile's defaults; values from ``--config FILE.yaml``
    fill in whatever no flag gave (a YAML file may name the profile too)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    given = {a.dest for a in parser._actions if any(opt in argv or any(x.startswith(opt + "=") for x in argv)
                                                    for opt in a.option_strings)}
    data = _yaml_options(args.config, parser) if args.config else {}
    profile = args.profile if "profile" in given else data.get("profile", args.profile)
    profiles = getattr(parser, "profiles", {"smoke": {}})
    if profile not in profiles:
        raise UserError(f"unknown profile {profile!r} (known: {', '.join(sorted(profiles))})")
    values = dict(profiles["smoke"])
    if profile in getattr(parser, "profile_files", {}):
        path = parser.profile_files[profile]
        values.update(_typed_options(_yaml_options(str(path), parser), parser, str(path)))
    else:
        values.update(profiles[profile])
    values.update(_typed_options(data, parser, args.config))
    for key, value in values.items():
        if key not in given:
            setattr(args, key, value)
    args.profile, args.given = profile, given
    return args


def model_tasks(args: argparse.Namespace) -> list[tuple[str, str]]:
    """The (model, task) pairs of the grid: ``--models`` x ``--tasks``, or a profile's
    ``grid`` blocks (each its own models x tasks, e.g. T5 on all 11 tasks and BERT on the 8
    classification ones), whose models or tasks a flag replaces."""
    given = getattr(args, "given", set())
    blocks = args.grid or [(args.models, args.tasks)]
    pairs = [(m, t) for models, tasks in blocks
             for m in csv(args.models if "models" in given or not args.grid else models)
             for t in csv(args.tasks if "tasks" in given or not args.grid else tasks)]
    return list(dict.fromkeys(pairs))


def _typed_options(data: dict, parser: argparse.ArgumentParser, where: str | None) -> dict:
    actions = {a.dest: a for a in parser._actions}
    return {key: _grid(value, where) if key == "grid" else _typed(actions[key], value, where) for key, value in data.items()}


def _grid(value, where: str) -> list[tuple[str, str]]:
    """``grid: [{models: [...], tasks: [...]}, ...]`` as (models, tasks) comma lists."""
    blocks = value if isinstance(value, list) else [value]
    if not blocks or not all(isinstance(b, dict) and set(b) == {"models", "tasks"} for b in blocks):
        raise UserError(f"{where}: grid: expected a list of blocks, each with models and tasks (and nothing else)")
    return [tuple(",".join(map(str, b[k])) if isinstance(b[k], list) else str(b[k]) for k in ("models", "tasks"))
            for b in blocks]


def _raw_yaml(path: Path) -> dict:
    """A profile file's values as written (for --help; parse() checks and types them)."""
    try:
        return read_mapping(path, "config file")
    except UserError:
        return {}  # parse() reads it again and says what is wrong


def _typed(action: argparse.Action, value, where: str):
    """A YAML value as the flag would have parsed it (YAML reads ``1e-3`` as a string)."""
    if isinstance(value, list):
        value = ",".join(map(str, value))
    if value is None or action.type is None:
        return value
    try:
        return action.type(str(value))
    except argparse.ArgumentTypeError as exc:  # the type's own words (an empty path...)
        raise UserError(f"{where}: {action.dest}: {exc}") from None
    except (TypeError, ValueError):
        raise UserError(f"{where}: {action.dest}: {value!r} is not a {getattr(action.type, '__name__', 'valid value')}") from None


def _yaml_options(config: str, parser: argparse.ArgumentParser) -> dict:
    path = Path(config)
    data = read_mapping(path, "config file")  # bounded: size, text, expanded anchors, duplicate keys
    unknown = sorted(set(data) - {a.dest for a in parser._actions} - {"grid"})
    if unknown:
        raise UserError(f"{path}: unknown option(s) {', '.join(unknown)}")
    return data


def csv(value) -> list[str]:
    if value is None:
        return []
    items = [v.strip() for v in str(value).split(",") if v.strip()]
    if not items:
        raise UserError(f"empty list {value!r}")
    return items


def seeds(value) -> list[int]:
    try:
        return [int(s) for s in csv(value)]
    except ValueError:
        raise UserError(f"seeds must be whole numbers, not {value!r}") from None


def trial_config(args: argparse.Namespace, model: str, task: str, seed: int, **fields) -> TrainConfig:
    """One grid point's config: the run options plus the point's model, task, seed and spec.

    ``--workers`` unset: on a local Ray each trial trains in its own process (no Train worker
    group to start: ~20 s less per trial, the same numbers to the bit); on a cluster it is a
    one-worker Ray Train run, which Train restarts on another node if its node dies."""
    if args.workers is None:
        args.workers = 0 if args.address in (None, "", "local") else 1
    if is_task_file(task):  # a task of the user's own, described in a YAML / JSON file
        task, fields["custom"] = read_task_file(task)
    cfg = config_from_args(args, model=model, task=task, seed=seed, **fields)
    if cfg.spec.op == "plugin" and getattr(args, "plugin_init", None):
        cfg.spec = replace(cfg.spec, plugin_init=args.plugin_init).validated()
    if cfg.spec.method == "ft" and getattr(args, "ft_lr", None) is not None:
        cfg.lr = args.ft_lr  # FT moves every weight: it wants a smaller step than the deltas
    return cfg


def study_config(args: argparse.Namespace, study: str, **extra) -> StudyConfig:
    return StudyConfig(study=study, results=args.results, address=args.address, resume=args.resume,
                       asha=args.asha, max_concurrent=args.max_concurrent, report=not args.no_report,
                       tune_lr=args.tune_lr, score=args.score,
                       dry_run=args.dry_run, json=args.json, extra={"profile": args.profile, **extra})


def main(run) -> None:
    """Run a study script's ``run()`` with user mistakes -- and a machine that refuses (a full
    or read-only disk no writer caught) -- shown as one line."""
    try:
        run()
    except UserError as exc:
        print(f"{Path(sys.argv[0]).name}: {'stopped' if isinstance(exc, Interrupted) else 'error'}: {exc}",
              file=sys.stderr)
        sys.exit(exc.exit_code)
    except Exception as exc:
        error = machine_error(exc)
        if error is None:
            raise
        print(f"{Path(sys.argv[0]).name}: error: {machine_error_line(error)}", file=sys.stderr)
        sys.exit(1)
