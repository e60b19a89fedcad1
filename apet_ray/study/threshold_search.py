"""E4 (paper Fig. 7) as a study: full fine-tuning for the reference, then every threshold
search of the run in one Tune experiment.

For each model x task x seed x APET structure, FT gives the high threshold's target; then a
bisection over a log-spaced grid of counts (``bisection``) finds the low threshold (fewest
parameters beating random guessing by ``margin``, the paper's definition; the report
also gives the strict one, against the majority class) and the high one (fewest reaching FT within
``tol``). Free trial slots go to the open intervals of every search, and a probe stops once
no open interval needs it -- or, judged by its ``best`` score, as soon as an evaluation
passes what it tests (a final score can still fall, so under ``final`` a passing probe
trains to the end). Probes already in the results folder seed the searches, so a rerun
resumes. ``dense`` trains every grid count instead: the answer a search is checked against.
The thresholds, the trials and the training steps spent against the dense grid's are
printed and saved to ``RESULTS/param_ablation.thresholds.json``.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from apet_ray.atomic import write_text
from apet_ray.delta import DeltaSpec
from apet_ray.errors import UserError
from apet_ray.results import read_results
from apet_ray.models import resolve
from apet_ray.report.data import SCORE_COLUMNS
from apet_ray.run.config import TrainConfig, check_config
from apet_ray.study.checks import dry_run_rows, print_dry_run, validate
from apet_ray.study.bisection import DecidedProbes, SearchState, ThresholdSearcher, log_grid
from apet_ray.study.cli import study_config
from apet_ray.study.lr_search import choose_lrs
from apet_ray.study.runner import run_study
from apet_ray.study.trials import entry, trial_name, with_lr
from apet_ray.thresholds import HIGH_TOL, LOW_MARGIN, baseline

__all__ = ["HIGH_TOL", "LOW_MARGIN", "Rules", "Search", "count_grid", "find_thresholds", "parse_structures"]

FT_STUDY = "param_ablation_ft"
SEARCH_STUDY = "param_ablation_search"  # one Tune experiment for every search of a run


@dataclass(frozen=True)
class Search:
    """One threshold search: model and task as given on the command line, seed, structure."""

    model: str
    task: str  # a task name or a task file
    seed: int
    op: str
    dist: str

    def spec(self, count: int) -> DeltaSpec:
        return DeltaSpec.apet(self.op, self.dist, budget=count, seed=self.seed)


@dataclass(frozen=True)
class Reference:
    """What a search is judged against: its FT score and baseline, and the names runs record."""

    model: str
    task: str
    random_guess: float
    baseline: float  # the larger of random guessing and the majority class (thresholds.baseline)
    ft_score: float


@dataclass(frozen=True)
class Rules:
    grid: list[int]
    margin: float  # low threshold: score > random guess + margin (the paper's; the report adds the strict one)
    tol: float  # high threshold: score >= FT - tol
    score: str = "final"  # judge a probe by its final or its best evaluation
    dense: bool = False  # train every grid count instead of searching
    lrs: tuple[float, ...] = ()  # an lr ladder: each probed count trains at each, scored by its best


MAX_GRID_POINTS = 1000  # a grid is searched, not trained whole: more points than this is a typo


def check_rules(margin: float, tol: float) -> None:
    """The low threshold's margin and the high one's tolerance: score differences in [0, 1)."""
    for name, value in (("margin", margin), ("tol", tol)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and 0 <= value < 1):
            raise UserError(f"--{name} is a score difference from 0 to 1, not {value}")


def count_grid(low: int, high: int, per_decade: int) -> list[int]:
    if not 0 < low < high:
        raise UserError(f"need 0 < --min-count < --max-count, got {low} and {high}")
    if not 1 <= per_decade <= MAX_GRID_POINTS or math.log10(high / low) * per_decade > MAX_GRID_POINTS:
        raise UserError(f"--per-decade {per_decade} over {low:,} .. {high:,} makes more than {MAX_GRID_POINTS} grid "
                        "counts (or fewer than 1 per decade)")
    return log_grid(low, high, per_decade)


def parse_lrs(text: str | None) -> tuple[float, ...]:
    """``--lrs 1e-4,1e-3,1e-2``: each finite and above zero."""
    if not text:
        return ()
    try:
        lrs = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UserError(f"--lrs takes comma-separated learning rates, not {text!r}") from None
    if not lrs or not all(math.isfinite(lr) and lr > 0 for lr in lrs) or len(set(lrs)) != len(lrs):
        raise UserError(f"--lrs needs distinct learning rates, each finite and above 0, got {text!r}")
    return lrs


def parse_structures(names: list[str]) -> list[tuple[str, str]]:
    """``add-weight-discrete`` -> ("add-weight", "discrete"): the distribution is the last part."""
    structures = [tuple(name.rsplit("-", 1)) for name in names]
    for name, parts in zip(names, structures):
        if len(parts) != 2:
            raise UserError(f"--structures takes op-distribution pairs such as add-weight-discrete, not {name!r}")
    return structures


def find_thresholds(args, searches: list[Search], rules: Rules, config: Callable[[str, str, int, DeltaSpec], TrainConfig]):
    """The FT references, then every search; ``config(model, task, seed, spec)`` builds a trial."""
    check_rules(rules.margin, rules.tol)
    if args.tune_lr and rules.lrs:  # before anything trains: both would choose the lr
        raise UserError("--tune-lr and --lrs both choose the learning rate: give one (--lrs '' turns the ladder off)")
    grid, results = rules.grid, Path(args.results)
    for s in searches:  # every search's extremes, so nothing starts when one of them cannot run
        for count in (grid[0], grid[-1]):
            check_config(config(s.model, s.task, s.seed, s.spec(count)))
    ft = {(s.model, s.task, s.seed): config(s.model, s.task, s.seed, DeltaSpec.pet("ft", seed=s.seed)) for s in searches}
    ft_study = study_config(args, FT_STUDY)
    ft_study.asha, ft_study.report = False, False
    if args.dry_run:
        _dry_run(ft_study, ft, searches, rules)
        return
    run_study(ft_study, list(ft.values()))

    trials = read_results(results)[0].trials
    column = SCORE_COLUMNS[rules.score]
    by_name = {search_name(s, ft[s.model, s.task, s.seed].task): s for s in searches}
    references = {name: reference(trials, ft[s.model, s.task, s.seed], column) for name, s in by_name.items()}
    states = {name: resumed_state(trials, s, name, references[name], rules, column) for name, s in by_name.items()}
    lr_of = _tuned_lrs(args, by_name, config, grid) if args.tune_lr and not rules.dense else {}

    def make(name: str, count: int, lr: float | None) -> dict:
        s = by_name[name]
        cfg = config(s.model, s.task, s.seed, s.spec(count))
        if lr is not None or name in lr_of:
            cfg = with_lr(cfg, lr if lr is not None else lr_of[name])
        return entry(cfg, name, trial_name(cfg) + (f"-lr{lr:.0e}" if lr is not None else ""))

    groups = {name: (s.model, s.task, s.op, s.dist) for name, s in by_name.items()}  # the seeds of one search
    searcher = ThresholdSearcher(states, make, score=rules.score, lrs=rules.lrs or (None,), groups=groups)
    started = time.time()
    search_study = study_config(args, SEARCH_STUDY)
    search_study.asha, search_study.report, search_study.resume = False, False, False
    if rules.dense:
        _fresh_tune_dir(results, SEARCH_STUDY)
        dense = [config(s.model, s.task, s.seed, s.spec(c)) for s in searches for c in grid]
        run_study(search_study, [with_lr(cfg, lr) for cfg in dense for lr in rules.lrs] if rules.lrs else dense)
        trials = read_results(results)[0].trials
        for name, state in states.items():
            for index, (score, lr) in probe_scores(trials, by_name[name], references[name], grid, column,
                                                   ["finished"]).items():
                state.scores[index] = score
                searcher.best_lr[name, index] = lr
    elif not searcher.done:
        _fresh_tune_dir(results, SEARCH_STUDY)
        s = searches[0]
        run_study(search_study, [config(s.model, s.task, s.seed, s.spec(grid[0]))], searcher=searcher,
                  stopper=DecidedProbes(searcher))
    _summarise(args, rules, states, by_name, references, searcher, results, started)


def _dry_run(ft_study, ft: dict, searches: list[Search], rules: Rules) -> None:
    """The FT trials, resolved, and one line (or JSON row) per search: with --json stdout is
    one JSON list, FT rows first."""
    ft_trials = list(ft.values())
    rows = dry_run_rows(ft_trials, validate(ft_study, ft_trials))
    grid = rules.grid
    searched = [{"search": search_name(s, ft[s.model, s.task, s.seed].task), "model": s.model,
                 "task": ft[s.model, s.task, s.seed].task, "seed": s.seed, "op": s.op, "distribution": s.dist,
                 "grid": grid, "lrs": list(rules.lrs) or None, "margin": rules.margin, "tol": rules.tol, "score": rules.score}
                for s in searches]
    if ft_study.json:
        print(json.dumps(rows + searched, indent=1))
        return
    print_dry_run(ft_study, rows)
    for r in searched:
        print(f"search {r['model']} / {r['task']} / APET-{r['distribution'].capitalize()} ({r['op']}) / seed {r['seed']}: "
              f"bisection over {len(grid)} counts {grid[0]:,} .. {grid[-1]:,}, low threshold: > random guess + "
              f"{rules.margin}, high: >= FT - {rules.tol}")


def search_name(s: Search, task: str) -> str:
    """A search's name, the study of its probes' trial ids (``task``: as runs record it; a
    serial search of an earlier version wrote its probes under this name, so they resume)."""
    return f"param_ablation-{Path(s.model).name}-{task}-{s.op}-{s.dist}-s{s.seed}"


def reference(trials: pd.DataFrame, ft: TrainConfig, column: str) -> Reference:
    """The finished FT trial of this model, task and seed, and the baseline it records."""
    model, task = resolve(ft.model)[1].name, ft.task  # as runs record them
    rows = trials[(trials.study == FT_STUDY) & (trials.method == "ft") & (trials.model == model) & (trials.task == task)
                  & (trials.seed == ft.seed) & (trials.status == "finished")] if not trials.empty else trials
    if rows.empty:
        raise UserError(f"no FT result for {ft.model} / {ft.task} / seed {ft.seed}: cannot search for the high threshold")
    random_guess = float(rows.random_guess.iloc[0])
    base = baseline(random_guess, rows.majority.iloc[0] if "majority" in rows else None)
    return Reference(model, task, random_guess, base, float(rows[column].iloc[0]))


def probe_scores(trials: pd.DataFrame, s: Search, ref: Reference, grid: list[int], column: str,
                 statuses: list[str], studies: tuple[str, ...] = (SEARCH_STUDY,)) -> dict[int, tuple[float, float]]:
    """Grid index -> (score, lr) of the recorded probes of one search; a count recorded at
    several lrs (a ladder) keeps its best."""
    if trials.empty:
        return {}
    rows = trials[trials.study.isin(studies) & (trials.model == ref.model) & (trials.task == ref.task)
                  & (trials.seed == s.seed) & (trials.op == s.op) & (trials.distribution == s.dist)
                  & trials.status.isin(statuses)]
    out: dict[int, tuple[float, float]] = {}
    for r in rows.itertuples():
        if int(r.delta_params) in grid:
            index, score = grid.index(int(r.delta_params)), float(getattr(r, column))
            if index not in out or score > out[index][0]:
                out[index] = (score, float(r.lr))
    return out


def resumed_state(trials: pd.DataFrame, s: Search, name: str, ref: Reference, rules: Rules, column: str) -> SearchState:
    """A search's state with the probes already written (by this search, or a serial one before it)."""
    state = SearchState.new(rules.grid, ref.random_guess, rules.margin, ref.ft_score, rules.tol)
    for index, (score, _) in probe_scores(trials, s, ref, rules.grid, column, ["finished", "decided"],
                                          (SEARCH_STUDY, name)).items():
        state.record(index, score)
    return state


def _tuned_lrs(args, by_name: dict[str, Search], config, grid: list[int]) -> dict[str, float]:
    """``--tune-lr``: once per search, at the grid's middle count -- tuning every probe would
    multiply the search's cost by --tune-lr, and a probe's lr must not decide its count."""
    middle = grid[len(grid) // 2]
    refs = {name: config(s.model, s.task, s.seed, s.spec(middle)) for name, s in by_name.items()}
    return dict(zip(refs, choose_lrs(study_config(args, SEARCH_STUDY), list(refs.values()))))


def _summarise(args, rules: Rules, states: dict[str, SearchState], by_name: dict[str, Search],
               references: dict[str, Reference], searcher: ThresholdSearcher, results: Path, started: float) -> None:
    from apet_ray.report import make_report

    grid, summary = rules.grid, []
    for name, state in states.items():
        s, ref = by_name[name], references[name]
        low, high = _dense_thresholds(state) if rules.dense else (state.threshold(state.low), state.threshold(state.high))
        summary.append({
            "model": s.model, "task": ref.task, "seed": s.seed, "structure": f"{s.op}-{s.dist}",
            "random_guess": ref.random_guess, "baseline": ref.baseline,
            "margin": rules.margin, "ft_score": ref.ft_score, "tol": rules.tol, "grid": grid,
            "low_threshold": low, "high_threshold": high, "score": rules.score,
            "probes": {grid[i]: v for i, v in sorted(state.scores.items())}, "trials": len(searcher.probes[name]),
            "lrs": rules.lrs or None,
            "best_lr": {grid[i]: lr for (n, i), lr in sorted(searcher.best_lr.items()) if n == name and lr} or None,
            "settled_at_seed_spread": sorted(w for n, w in searcher.settled if n == name),
            "dense_grid_steps": len(grid) * len(rules.lrs or (None,)) * args.max_steps,
        })
        print(f"[apet-ray] {s.model} / {ref.task} / {s.op}-{s.dist} / seed {s.seed}: low threshold {low}, "
              f"high threshold {high} (FT {ref.ft_score:.3f}, random guess {ref.random_guess:.2f}); "
              f"{len(state.scores)} of {len(grid)} grid counts scored", flush=True)
    steps, dense_steps = _steps_trained(results), len(states) * len(grid) * len(rules.lrs or (None,)) * args.max_steps
    probes = len(states) * len(grid) if rules.dense else sum(len(p) for p in searcher.probes.values())
    print(f"[apet-ray] {'dense grid' if rules.dense else 'threshold search'}: {probes} probes "
          f"({len(searcher.decided)} stopped once decided, {len(searcher.abandoned)} once no longer needed), "
          f"{steps:,} training steps = {100 * steps / max(1, dense_steps):.0f}% of the "
          f"dense grid's, {time.time() - started:.0f} s", flush=True)
    write_text(results / "param_ablation.thresholds.json", json.dumps(
        {"searches": summary, "steps": steps, "dense_grid_steps": dense_steps,
         "wall_s": round(time.time() - started, 1)}, indent=2))
    if not args.no_report:
        print("\n".join(make_report(results, results / "report", score=rules.score, margin=rules.margin,
                                     tol=rules.tol).lines()), flush=True)


def _dense_thresholds(state: SearchState) -> tuple[int | None, int | None]:
    """The dense grid's answer: the first count that passes (thresholds.py's tests)."""
    scored = sorted(state.scores.items())
    low = next((state.grid[i] for i, v in scored if state.low.passes(v)), None)
    high = next((state.grid[i] for i, v in scored if state.high.passes(v)), None)
    return low, high


def _steps_trained(results: Path) -> int:
    """Training steps the search's probes ran (this run and any before it), from the trials table."""
    trials = read_results(results)[0].trials
    return 0 if trials.empty else int(trials[trials.study == SEARCH_STUDY]["steps_run"].sum())


def _fresh_tune_dir(results: Path, name: str) -> None:
    # the searcher, not Tune, carries the state of a resumed search: start Tune afresh
    shutil.rmtree(results / "ray" / name, ignore_errors=True)
