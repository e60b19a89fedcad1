"""Threshold search (E4): the fewest trainable parameters that beat the baseline (low
threshold) and that reach full fine-tuning (high threshold), found by bisection over a
log-spaced grid of counts instead of training every grid point.

Both bisections assume the score rises with the count (the paper's Fig. 7); each probe's
score is shared between them. ``ThresholdSearcher`` plugs into Ray Tune as a ``Searcher``
and runs every search of a study at once: each free trial slot gets the midpoint of the
widest unprobed gap of an open interval (with one slot per search this is plain bisection;
with more it is a k-ary search). ``DecidedProbes`` stops a probe whose eval already passed
the threshold it was sent to test, or whose count no open interval needs any more, so steps
go only where the answer is open. Scores already in the results folder seed the states, so
a rerun resumes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from ray.tune import Stopper
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

    def needs(self, index: int) -> bool:
        return not self.done and self.lo <= index < self.hi

    def widest_gap(self, busy: set[int]) -> tuple[int, int] | None:
        """(gap size, midpoint) of the widest run of open indices with no probe in it: with
        nothing busy, the bisection's own next probe."""
        marks = [self.lo - 1, *sorted(i for i in busy if self.needs(i)), self.hi]
        gaps = [(b - a - 1, (a + 1 + b) // 2) for a, b in zip(marks, marks[1:]) if b - a > 1]
        return max(gaps, key=lambda g: g[0]) if gaps and not self.done else None

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
    """Tune searcher over the count grids of several searches at once.

    ``searches`` maps a search's name to its state; ``make_config(name, count, lr)`` returns a
    trial's config. A free slot goes to the open search with the fewest probes running, at the
    midpoint of its widest unprobed gap. With an lr ladder (``lrs``), a probe of a count is one
    trial per lr and the count scores its best lr (``best_lr`` says which), so a threshold
    measures the count, not one learning rate's fit to it; ``lrs=(None,)``: the trial's own lr.

    ``score``: what a probe is judged by, its ``final`` evaluation or its ``best`` one. Only the
    best score is known early: once an evaluation passes, the best can only stay passed, so a
    probe stops as decided. A final score can still fall (an lr that oscillates), so under
    ``final`` a probe that no open interval needs still stops, but a passing one trains on.
    """

    SCORE_KEYS = {"final": "score", "best": "best_score"}  # in each report (run.loop.report_metrics)

    def __init__(self, searches: dict[str, SearchState], make_config: Callable[..., dict], score: str = "final",
                 lrs: tuple[float | None, ...] = (None,), groups: dict[str, object] | None = None):
        super().__init__(metric="score", mode="max")
        self.key = self.SCORE_KEYS[score]
        self.decide_early = score == "best"
        self.searches = searches
        self.make_config = make_config if lrs != (None,) else (lambda name, count, lr: make_config(name, count))
        self.lrs = tuple(lrs)
        self.live: dict[str, tuple[str, int, float | None]] = {}  # Tune trial id -> (search, grid index, lr)
        self.queued: list[tuple[str, int, float | None]] = []  # the other lrs of a count being probed
        self.outcomes: dict[tuple[str, int], dict] = {}  # (search, index) -> {lr: score}, None once abandoned
        self.best_lr: dict[tuple[str, int], float | None] = {}
        self.decided: set[str] = set()  # stopped early: their score passed what they probed
        self.abandoned: set[str] = set()  # stopped early: no open interval needs their count
        self.static: dict = {}  # run_study's per-trial settings (storage, resources)
        self.probes: dict[str, list[int]] = {name: [] for name in searches}  # counts trained, in order (once per lr)
        # searches that differ only in their seed share a group: once the seeds' thresholds
        # spread over more grid steps than a search's open bracket spans, refining that bracket
        # cannot narrow the interval over seeds, and it is settled at its upper end
        self.groups = groups or {}
        self.settled: set[tuple[str, str]] = set()  # (search, "low" | "high") settled at the seeds' spread
        for state in searches.values():
            state._settle()

    def _busy(self, name: str) -> set[int]:
        return {i for search, i, _ in [*self.live.values(), *self.queued] if search == name}

    def _needed(self, name: str, index: int) -> bool:
        state = self.searches[name]
        return state.low.needs(index) or state.high.needs(index)

    def _settle_by_seed_spread(self) -> None:
        members: dict[object, list[str]] = {}
        for name, key in self.groups.items():
            members.setdefault(key, []).append(name)
        for names in members.values():
            for which in ("low", "high"):
                found = [getattr(self.searches[n], which).lo for n in names if getattr(self.searches[n], which).done]
                if len(found) < 2:
                    continue
                spread = max(found) - min(found)
                for n in names:
                    b = getattr(self.searches[n], which)
                    if not b.done and b.hi < len(self.searches[n].grid) and b.hi - b.lo <= spread / 2:
                        b.lo = b.hi  # its threshold: at most grid[hi], which a probe passed
                        self.settled.add((n, which))

    def suggest(self, trial_id: str):
        self._settle_by_seed_spread()
        while self.queued:
            name, index, lr = self.queued.pop(0)
            if self._needed(name, index):
                return self._start(trial_id, name, index, lr)
            self._settle_probe(name, index, lr, None)  # nobody asks about this count any more
        choices = []
        for name, state in self.searches.items():
            busy = self._busy(name) | set(state.scores)
            gaps = [g for g in (state.low.widest_gap(busy), state.high.widest_gap(busy)) if g is not None]
            if gaps:
                size, index = max(gaps, key=lambda g: g[0])
                choices.append((len(self._busy(name)), -size, name, index))
        if not choices:
            return Searcher.FINISHED if not self.live else None  # else wait for a running probe
        _, _, name, index = min(choices)
        self.outcomes[name, index] = {}
        self.queued.extend((name, index, lr) for lr in self.lrs[1:])
        return self._start(trial_id, name, index, self.lrs[0])

    def _start(self, trial_id: str, name: str, index: int, lr: float | None) -> dict:
        self.live[trial_id] = (name, index, lr)
        count = self.searches[name].grid[index]
        self.probes[name].append(count)
        return {**self.static, "trial": self.make_config(name, count, lr)}

    def should_stop(self, trial_id: str, result: dict) -> bool:
        """Stop a probe once its answer is known: no open interval needs its count any more,
        or (``score="best"``) its best score already passes every test still open at it."""
        if trial_id not in self.live:
            return False
        name, index, _ = self.live[trial_id]
        state = self.searches[name]
        open_tests = [b for b in (state.low, state.high) if b.needs(index)]
        if not open_tests:
            self.abandoned.add(trial_id)
            return True
        if self.decide_early and self.key in result and all(b.passes(float(result[self.key])) for b in open_tests):
            self.decided.add(trial_id)
            return True
        return False

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        name, index, lr = self.live.pop(trial_id)
        if trial_id in self.abandoned:
            score = None  # a partial score of a count nobody asks about any more
        else:
            score = float(result.get(self.key, float("-inf"))) if result and not error else float("-inf")
        self._settle_probe(name, index, lr, score)

    def _settle_probe(self, name: str, index: int, lr: float | None, score: float | None) -> None:
        """One lr of a count is in; once every lr is, the count scores its best one."""
        outcome = self.outcomes.get((name, index))
        if outcome is None:  # abandoned already
            return
        if score is None:
            self.outcomes[name, index] = None
            return
        outcome[lr] = score
        if len(outcome) == len(self.lrs):
            best = max(outcome, key=lambda k: outcome[k])
            self.best_lr[name, index] = best
            self.searches[name].record(index, outcome[best])

    @property
    def done(self) -> bool:
        return not self.live and not self.queued and all(s.low.done and s.high.done for s in self.searches.values())


class DecidedProbes(Stopper):
    """The Tune stopper of a threshold search: asks its searcher whether a probe is decided."""

    def __init__(self, searcher: ThresholdSearcher):
        self.searcher = searcher

    def __call__(self, trial_id: str, result: dict) -> bool:
        return self.searcher.should_stop(trial_id, result)

    def stop_all(self) -> bool:
        return False
