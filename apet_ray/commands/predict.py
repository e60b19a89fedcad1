"""``apet-ray predict RESULTS_DIR --params N``: the low and high thresholds expected of a model
of N backbone parameters, from the thresholds measured on other sizes of its family."""

from __future__ import annotations

import argparse
import json
import math


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict", help="expected low / high thresholds of a model size from the sizes measured",
        description="Fit the thresholds of a results folder (E4 sweeps on 2 or more sizes of one family) as a line "
                    "in log-log space and read it at --params; with one size, give the slope (--slope-low/-high).")
    parser.add_argument("results_dir", metavar="RESULTS_DIR", help="folder with trials/ (E4 sweeps)")
    parser.add_argument("--params", required=True, type=_count, help="backbone parameters of the model, e.g. 3.4e8")
    parser.add_argument("--slope-low", type=float, help="log-log slope of the low threshold (used with one size)")
    parser.add_argument("--slope-high", type=float, help="log-log slope of the high threshold (used with one size)")
    parser.add_argument("--score", choices=("final", "best"), default="final", help="which score (default: final)")
    parser.add_argument("--json", action="store_true", help="the predictions as one JSON list")
    parser.set_defaults(func=run)


def _count(text: str) -> float:
    suffix = {"k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}.get(text[-1:].lower(), 1.0)
    try:
        value = float(text[:-1] if suffix != 1.0 else text) * suffix
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a parameter count: {text!r} (e.g. 3.4e8 or 340M)") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"not a parameter count: {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    from apet_ray.errors import UserError
    from apet_ray.report.data import prepare
    from apet_ray.report.predict import predict, to_lines
    from apet_ray.report.thresholds import threshold_table
    from apet_ray.results import read_results

    results, _ = read_results(args.results_dir)
    table = threshold_table(prepare(results, args.score).trials)
    table = table[table["n_budgets"] >= 2]
    if table.empty:
        raise UserError(f"{args.results_dir} holds no budget sweep (a method at 2 or more counts): run "
                        "experiments/param_ablation.py first")
    slopes = {k: v for k, v in (("low", args.slope_low), ("high", args.slope_high)) if v is not None}
    predictions = predict(table, args.params, slopes)
    print(json.dumps([p.to_dict() for p in predictions], indent=1) if args.json else "\n".join(to_lines(predictions)))
    return 0
