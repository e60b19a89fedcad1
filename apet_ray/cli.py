"""The ``apet-ray`` command.

Each subcommand lives beside the code it drives and exposes ``register(subparsers)``,
which adds its parser and sets ``func`` to a callable taking the parsed arguments and
returning an exit code. This file only wires them together and turns ``UserError`` -- and
an OSError of the machine refusing (full or read-only disk, permissions) -- into one line on
stderr.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from apet_ray.errors import OneLineParser, UserError, machine_error, machine_error_line

# module path of every subcommand, in the order ``--help`` lists them
SUBCOMMANDS = (
    "apet_ray.commands.params",
    "apet_ray.commands.tasks",
    "apet_ray.commands.train",
    "apet_ray.commands.report",
    "apet_ray.commands.predict",
    "apet_ray.commands.export",
)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="apet-ray", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a subcommand not built yet must not break the rest
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"apet-ray {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:  # a full or read-only disk no writer caught: one line too, not a traceback
        error = machine_error(exc)
        if error is None:
            raise
        print(f"apet-ray {args.command}: error: {machine_error_line(error)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
