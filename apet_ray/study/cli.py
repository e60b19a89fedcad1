"""The command line every study script shares: grid axes, the run options (defined once in
``run.options``), how the study runs, a YAML ``--config``; and ``main``, which shows a
user's mistake as one line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from apet_ray.errors import UserError
from apet_ray.run.config import TrainConfig
from apet_ray.run.options import add_run_arguments, config_from_args
from apet_ray.study.runner import StudyConfig


def study_arguments(description: str, defaults: dict) -> argparse.ArgumentParser:
    """The shared flags; ``defaults`` is the script's embedded study (it also sets the
    defaults of flags the script adds afterwards)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", help="YAML file with any of these options (flags override it)")
    grid = p.add_argument_group("grid")
    grid.add_argument("--models", help="comma-separated model names or paths")
    grid.add_argument("--tasks", help="comma-separated task names")
    grid.add_argument("--seeds", help="comma-separated seeds (a grid axis)")
    add_run_arguments(p, defaults)
    how = p.add_argument_group("study")
    how.add_argument("--results", help="results folder (Parquet tables and Ray's files)")
    how.add_argument("--resume", action="store_true", help="continue an interrupted study in --results")
    how.add_argument("--no-asha", action="store_true", help="run every trial to the end")
    how.add_argument("--max-concurrent", type=int, help="trials at a time (default: as many as the cluster holds)")
    how.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    p.set_defaults(**defaults)
    return p


def parse(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse flags; values from ``--config FILE.yaml`` fill in whatever no flag gave."""
    args = parser.parse_args(argv)
    if args.config:
        import yaml

        path = Path(args.config)
        if not path.is_file():
            raise UserError(f"config file {path} not found")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise UserError(f"{path} is not valid YAML ({str(exc).splitlines()[0]})") from None
        known = {a.dest for a in parser._actions}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"{path}: unknown option(s) {', '.join(unknown)}")
        given = {a.dest for a in parser._actions if any(opt in (argv if argv is not None else sys.argv[1:]) for opt in a.option_strings)}
        for key, value in data.items():
            if key not in given:
                setattr(args, key, ",".join(map(str, value)) if isinstance(value, list) else value)
    return args


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
    """One grid point's config: the run options plus the point's model, task, seed and spec."""
    return config_from_args(args, model=model, task=task, seed=seed, **fields)


def study_config(args: argparse.Namespace, study: str, **extra) -> StudyConfig:
    return StudyConfig(study=study, results=args.results, address=args.address, resume=args.resume,
                       asha=not args.no_asha, max_concurrent=args.max_concurrent, report=not args.no_report,
                       extra=extra)


def main(run) -> None:
    """Run a study script's ``run()`` with user mistakes shown as one line."""
    try:
        run()
    except UserError as exc:
        print(f"{Path(sys.argv[0]).name}: error: {exc}", file=sys.stderr)
        sys.exit(2)
