"""``apet-ray params``: trainable and total parameter counts of a spec on a model.

The model is built on the meta device from its config: no weights are loaded, so an 11B
config takes seconds.
"""

from __future__ import annotations

import argparse
import json
import math

from apet_ray.delta import OPS, DeltaSpec, attach, count_backbone, count_deltas, matchable_methods, method_names
from apet_ray.models import DEFAULT_MODEL, build_model


def add_spec_arguments(parser: argparse.ArgumentParser) -> None:
    """The delta-spec flags shared by ``params``, ``train`` and the study scripts."""
    parser.add_argument("--method", default="lora", help=f"one of {', '.join(method_names())} (default lora)")
    parser.add_argument("--op", help=f"APET op: {', '.join(OPS)} (default add)")
    parser.add_argument("--distribution", help="APET mask: adjacent or discrete (default discrete)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--budget", type=_int, help="APET: exact number of trainable delta parameters")
    group.add_argument("--match", help=f"APET: as many as this method on the same model ({', '.join(matchable_methods())})")
    parser.add_argument("--positions", type=lambda s: tuple(s.split(",")),
                        help="APET: comma-separated roles, e.g. query,value or linear or biases")
    parser.add_argument("--size", type=_int, help="APET concat/plugin: rank, bottleneck or prompt length")
    parser.add_argument("--density", type=float, default=0.5, help="APET concat/plugin: target mask density")
    parser.add_argument("--seed", type=int, default=0)


def spec_from_args(args: argparse.Namespace) -> DeltaSpec:
    return DeltaSpec.build(args.method, args.op, args.distribution, args.budget, args.match,
                           args.positions, args.size, args.density, args.seed)


def _int(text: str) -> int:
    # accept 8000, 8_000 and 8e3; refuse 8000.5 with a clear message
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or abs(value) > 2**63:  # inf, nan, 1e400: no count is that
        raise argparse.ArgumentTypeError(f"{text!r} is not a count")
    if value != int(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    return int(value)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("params", help="count trainable and total parameters (no weights loaded)",
                       description=__doc__.splitlines()[0])
    p.add_argument("--model", default=DEFAULT_MODEL, help="HF name, local folder or preset (tiny-bert, tiny-t5, minilm)")
    add_spec_arguments(p)
    p.add_argument("--num-labels", type=int, default=2, help="classifier head size for BERT-family models")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    spec = spec_from_args(args)
    model, info = build_model(args.model, num_labels=args.num_labels, device="meta")
    plan = attach(model, spec)
    trainable, total = count_deltas(model), count_backbone(model)
    head = sum(p.numel() for p in model.head.parameters()) if hasattr(model, "head") else 0
    result = {
        "model": info.name,
        "family": info.kind,  # the key trials tables and dry runs use for the kind
        "method": spec.method,
        "label": spec.label,
        "op": spec.op,
        "distribution": spec.distribution,
        "positions": list(spec.positions),
        "size": plan.size,
        "requested_params": plan.requested,
        "trainable_params": trainable,
        "total_params": total,
        "ratio": trainable / total,
        "head_params": head,
        "tensors": sum(1 for p in plan.placements for s in p.slots if s.k),
        "counting": "backbone parameters, tied weights once; deltas only (a classifier head is head_params)",
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{info.name} ({info.kind}, {total:,} backbone parameters)")
        print(f"  {spec.label}: {trainable:,} trainable delta parameters = {100 * trainable / total:.4f}% of the backbone"
              + (f"  [size {plan.size}]" if plan.size else ""))
        if head:
            print(f"  + {head:,} classifier-head parameters when trained for classification")
    return 0
