"""``apet-ray tasks``: the 11 tasks, their metrics, lengths and hub datasets."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from apet_ray.errors import UserError
from apet_ray.tasks.loading import split_file
from apet_ray.tasks.registry import TASKS, Task

_COLUMNS = ("name", "type", "metric", "random guess", "max input len", "max gen len", "hub dataset")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tasks",
        help="list the tasks",
        description="List the 11 tasks of the paper with their metric, random-guess level, "
                    "maximum input / generation lengths (tokens) and hub dataset.",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    parser.add_argument("--data-dir", metavar="DIR",
                        help="also show which split files DIR/<task>/ holds for each task")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    data_dir = getattr(args, "data_dir", None)
    if data_dir is not None:
        if not Path(data_dir).is_dir():
            raise UserError(f"data directory not found: {data_dir}")
    tasks = list(TASKS.values())
    if args.json:
        rows = []
        for task in tasks:
            row = task.describe()
            if data_dir is not None:
                row["local_files"] = _local_files(task, data_dir)
            rows.append(row)
        print(json.dumps(rows, indent=2))
        return 0
    header = list(_COLUMNS) + (["files in --data-dir"] if data_dir is not None else [])
    table = [header]
    for task in tasks:
        row = [task.name, task.type, task.metric, _guess(task), str(task.max_input_len),
               str(task.max_gen_len), task.hub_id]
        if data_dir is not None:
            found = _local_files(task, data_dir)
            row.append(", ".join(f"{split}={name}" for split, name in found.items()) or "-")
        table.append(row)
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for n, row in enumerate(table):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
        if n == 0:
            print("  ".join("-" * width for width in widths))
    return 0


def _guess(task: Task) -> str:
    return f"{task.random_guess:.3g}"


def _local_files(task: Task, data_dir: str) -> dict[str, str]:
    found = {}
    for split in ("train", "eval"):
        path = split_file(task, split, data_dir)
        if path is not None:
            found[split] = path.name
    return found
