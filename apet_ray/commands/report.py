"""``apet-ray report RESULTS_DIR [--out DIR]``: the paper's table, figures and findings."""

from __future__ import annotations

import argparse
from pathlib import Path

from apet_ray.paths import path_arg


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="build the table, figures and findings from a results folder",
        description="Build the Table-2-style table, the figures (3, 5, 6, 7, 9) and a verdict on "
        "each of the paper's findings from the Parquet files of RESULTS_DIR.",
    )
    parser.add_argument("results_dir", metavar="RESULTS_DIR", type=path_arg, help="folder with trials/, curves/, transfer/")
    parser.add_argument("--out", metavar="DIR", type=path_arg, default=None, help="output folder (default: RESULTS_DIR/report)")
    parser.add_argument(
        "--score", choices=("final", "best"), default="final",
        help="which score of each trial to report (default: final)",
    )  # fmt: skip
    parser.add_argument("--margin", type=float, default=None, help="low threshold: above random guessing by this "
                        "(default 0.05)")
    parser.add_argument("--tol", type=float, default=None, help="high threshold: within this of FT (default 0.01)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # imported here so that `apet-ray --help` doesn't pay for pandas and matplotlib
    from apet_ray.errors import OutputError, UserError
    from apet_ray.paths import check_input, output_folder
    from apet_ray.report import make_report
    from apet_ray.thresholds import HIGH_TOL, LOW_MARGIN

    # a symlink loop, an unreadable results folder, an output that cannot be written: one line, before any work
    check_input(args.results_dir, "RESULTS_DIR", folder=True)
    out = output_folder(args.out if args.out else Path(args.results_dir) / "report", "--out")

    for name in ("margin", "tol"):
        value = getattr(args, name)
        if value is not None and not 0 <= value < 1:
            raise UserError(f"--{name} is a score difference from 0 to 1, not {value}")
    try:
        summary = make_report(args.results_dir, out, score=args.score,
                              margin=LOW_MARGIN if args.margin is None else args.margin,
                              tol=HIGH_TOL if args.tol is None else args.tol)
    except OutputError as exc:  # a full or read-only disk half-way: every file written is whole
        raise exc.with_hint("free space or fix --out, then run the report again") from None
    print("\n".join(summary.lines()))
    return 0
