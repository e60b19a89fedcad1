"""Finding 3 as a tool: the low and high thresholds expected of a model size not measured.

For each family, task and method, the thresholds measured on several sizes
(``threshold_table``) are fitted as a line in log-log space, ``log10(threshold) = a + b ·
log10(backbone parameters)``, and read at the size asked for:

- 3 or more sizes: least squares, with a 90 % prediction interval from the residuals;
- 2 sizes: the line through them; the interval is the one of the lines through the seeds'
  lowest and highest thresholds at each size (no residual to estimate a spread from);
- 1 size and a ``slope`` (e.g. the paper's Fig. 7): the line of that slope through it, with
  that size's seed interval carried along.

A threshold that is only a bound (reached at the sweep's smallest count, or never) cannot
anchor a line and is left out, with a note. A prediction far outside the measured sizes is
an extrapolation and says so.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from apet_ray.errors import UserError
from apet_ray.report.thresholds import AT_MOST, NOT_REACHED

# two-sided 90 % quantiles of Student's t by degrees of freedom (normal beyond the table)
_T90 = {1: 6.314, 2: 2.920, 3: 2.353, 4: 2.132, 5: 2.015, 6: 1.943, 7: 1.895, 8: 1.860, 9: 1.833, 10: 1.812,
        15: 1.753, 20: 1.725, 30: 1.697}


@dataclass
class Prediction:
    family: str
    task: str
    label: str
    threshold: str  # low | high
    params: float  # the size asked for
    value: float | None  # None: nothing to predict from (see note)
    lo: float | None
    hi: float | None
    basis: str  # how many sizes it rests on, and how
    sizes: list[dict] = field(default_factory=list)  # model, total_params, threshold of each size used
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def predict(table: pd.DataFrame, params: float, slope: dict[str, float] | None = None) -> list[Prediction]:
    """One prediction per (family, task, method label) and threshold (low, high).
    ``slope``: log-log slopes by threshold name, used where only one size was measured."""
    if not (params > 0 and math.isfinite(params)):
        raise UserError(f"--params must be a positive number of backbone parameters, not {params}")
    out = []
    for (family, task, label), rows in table.groupby(["family", "task", "label"]):
        for name in ("low", "high"):
            out.append(_one(rows.sort_values("total_params"), name, params, family, task, label,
                            (slope or {}).get(name)))
    return out


def _one(rows: pd.DataFrame, name: str, params: float, family: str, task: str, label: str,
         slope: float | None) -> Prediction:
    bound = rows[f"{name}_bound"]
    usable = rows[(bound != NOT_REACHED) & (bound != AT_MOST) & rows[f"{name}_threshold"].notna()]
    left_out = [f"{r.model} ({'not reached' if getattr(r, name + '_bound') == NOT_REACHED else 'a bound only'})"
                for r in rows.itertuples() if r.Index not in usable.index]
    prediction = Prediction(family, task, label, name, params, None, None, None, "", note=(
        f"left out: {', '.join(left_out)}" if left_out else ""))
    prediction.sizes = [{"model": r.model, "total_params": int(r.total_params),
                         "threshold": int(getattr(r, f"{name}_threshold"))} for r in usable.itertuples()]
    x = np.log10(usable["total_params"].astype(float).to_numpy())
    y = np.log10(usable[f"{name}_threshold"].astype(float).to_numpy())
    lo_y, hi_y = (np.log10(usable[f"{name}_{end}"].astype(float).fillna(usable[f"{name}_threshold"]).to_numpy())
                  for end in ("lo", "hi"))
    at = math.log10(params)
    sizes = len(np.unique(x))
    if sizes >= 3:
        b, a = np.polyfit(x, y, 1)
        residual = y - (a + b * x)
        dof = len(x) - 2
        s = math.sqrt(float(residual @ residual) / dof) if dof else 0.0
        spread = s * math.sqrt(1 + 1 / len(x) + (at - x.mean()) ** 2 / float(((x - x.mean()) ** 2).sum()))
        t = _T90.get(dof) or next((v for k, v in sorted(_T90.items()) if k >= dof), 1.645)
        value, lo, hi = a + b * at, a + b * at - t * spread, a + b * at + t * spread
        prediction.basis = f"least-squares fit over {sizes} sizes (slope {b:.2f}), 90 % prediction interval"
    elif sizes == 2:
        b = (y[-1] - y[0]) / (x[-1] - x[0])
        ends = [_line(x, lo_y, at), _line(x, hi_y, at)]
        value, lo, hi = y[0] + b * (at - x[0]), min(ends), max(ends)
        prediction.basis = f"the line through 2 sizes (slope {b:.2f}); interval from the seeds' range at each size"
    elif sizes == 1 and slope is not None:
        value, lo, hi = y[0] + slope * (at - x[0]), lo_y[0] + slope * (at - x[0]), hi_y[0] + slope * (at - x[0])
        prediction.basis = f"1 size and the given slope {slope:g}; interval: that size's seed range"
    else:
        prediction.basis = f"{sizes} size(s) with a {name} threshold"
        prediction.note = "; ".join(filter(None, [prediction.note, "needs 2 or more sizes, or one and a slope"]))
        return prediction
    prediction.value, prediction.lo, prediction.hi = (float(10 ** v) for v in (value, min(lo, value), max(hi, value)))
    if sizes and not (x.min() - 0.5 <= at <= x.max() + 0.5):
        prediction.note = "; ".join(filter(None, [prediction.note, "an extrapolation: more than 3x outside the "
                                                  "measured sizes"]))
    return prediction


def _line(x: np.ndarray, y: np.ndarray, at: float) -> float:
    return float(y[0] + (y[-1] - y[0]) / (x[-1] - x[0]) * (at - x[0]))


def to_lines(predictions: list[Prediction]) -> list[str]:
    lines = []
    for p in predictions:
        head = f"{p.family} / {p.task} / {p.label} / {p.threshold} threshold at {p.params:,.0f} parameters: "
        if p.value is None:
            lines.append(head + f"no prediction ({p.note})")
            continue
        used = ", ".join(f"{s['model']} {s['total_params']:,} -> {s['threshold']:,}" for s in p.sizes)
        lines.append(head + f"{p.value:,.0f} [{p.lo:,.0f}, {p.hi:,.0f}] from {p.basis} ({used})"
                     + (f"; {p.note}" if p.note else ""))
    return lines
