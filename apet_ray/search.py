"""Threshold search (E4): the fewest trainable parameters that beat random guessing (low
threshold) and that reach full fine-tuning (high threshold), found by bisection over a
log-spaced grid of counts instead of training every grid point.

Both bisections assume the score rises with the count (the paper's Fig. 7); each probe's
score is shared between them. ``ThresholdSearcher`` plugs into Ray Tune as a ``Searcher``:
it suggests the next counts, at most one pending probe per bisection, and finishes when
both intervals close. Scores already in the results folder seed it, so a rerun resumes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from ray.tune.search import Searcher

from apet_ray.thresholds import beats_baseline, reaches_ft


def log_grid(low: int, high: int, per_decade: int) -> list[int]:
    """Distinct whole counts from ``low`` to ``high``, ``per_decade`` per factor of ten."""
    steps = max(1, round(math.log10(high / low) * per_decade))
    return sorted({round(low * (high / low) ** (i / steps)) for i in range(steps + 1)})


@dataclass
class Bisection:
    """Smallest grid index whose score passes (``thresholds``: the low threshold's
    ``beats_baseline(score, reference, allowance)`` or the high one's
    ``reaches_ft(score, reference, allowance)``); none passes when ``hi == len(grid)``."""

    name: str  # low | high
    reference: float  # the baseline (low) or the FT score (high)
    allowance: float  # the margin above the baseline (low) or the tolerance below FT (high)
    lo: int
    hi: int  # the answer lies in [lo, hi]; hi == len(grid) means "no grid point passes"
    pending: int | None = None

    def passes(self, score: float) -> bool:
        test = beats_baseline if self.name == "low" else reaches_ft
        return test(score, self.reference, self.allowance)

    @property
    def done(self) -> bool:
        return self.lo >= self.hi

    def next_probe(self) -> int:
        return (self.lo + self.hi) // 2

    def update(self, index: int, score: float) -> None:
        if self.passes(score):
            self.hi = min(self.hi, index)
        else:
            self.lo = max(self.lo, index + 1)


@dataclass
class SearchState:
    grid: list[int]
    low: Bisection
    high: Bisection
    scores: dict[int, float] = field(default_factory=dict)  # grid index -> score

    @staticmethod
    def new(grid: list[int], baseline: float, margin: float, ft_score: float, tol: float) -> "SearchState":
        """``baseline``: ``thresholds.baseline`` (chance or the majority class, the larger)."""
        n = len(grid)
        return SearchState(grid, Bisection("low", baseline, margin, 0, n), Bisection("high", ft_score, tol, 0, n))

    def record(self, index: int, score: float) -> None:
        self.scores[index] = score
        for b in (self.low, self.high):
            if b.pending == index:
                b.pending = None
            b.update(index, score)
        self._settle()

    def _settle(self) -> None:
        # a probe already scored answers a bisection's next question without training
        for b in (self.low, self.high):
            while not b.done and b.next_probe() in self.scores:
                b.update(b.next_probe(), self.scores[b.next_probe()])

    def threshold(self, b: Bisection) -> int | None:
        return self.grid[b.lo] if b.done and b.lo < len(self.grid) else None


class ThresholdSearcher(Searcher):
    """Tune searcher over the count grid. ``make_config(count)`` returns a trial's config."""

    def __init__(self, state: SearchState, make_config: Callable[[int], dict], metric: str = "score"):
        super().__init__(metric=metric, mode="max")
        self.state = state
        self.make_config = make_config
        self.live: dict[str, tuple[int, Bisection]] = {}
        self.static: dict = {}  # run_study's per-trial settings (storage, resources)
        self.probes: list[int] = []  # counts trained, in order
        self.state._settle()

    def suggest(self, trial_id: str):
        for b in (self.state.low, self.state.high):
            if b.done or b.pending is not None:
                continue
            index = b.next_probe()
            if any(i == index for i, _ in self.live.values()):
                b.pending = index  # the other bisection is training this count already
                continue
            b.pending = index
            self.live[trial_id] = (index, b)
            self.probes.append(self.state.grid[index])
            return {**self.static, "trial": self.make_config(self.state.grid[index])}
        if self.state.low.done and self.state.high.done and not self.live:
            return Searcher.FINISHED
        return None  # wait for a running probe

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        index, _ = self.live.pop(trial_id)
        score = float(result.get("score", float("-inf"))) if result and not error else float("-inf")
        self.state.record(index, score)
