"""E4 (paper Fig. 7): how many trainable parameters are needed?

For each model x task x APET structure: full fine-tuning gives the reference score, then a
bisection over a log-spaced grid of trainable-parameter counts finds the low threshold
(fewest parameters beating the baseline -- the larger of random guessing and the majority
class -- by --margin) and the high threshold (fewest reaching FT within --tol), training a
handful of counts instead of the whole grid. All searches run in one Tune experiment: free
trial slots go to the open intervals of every search (several counts of one interval at a
time when slots allow), and a probe stops once no open interval needs it -- or, with
--score best, as soon as an evaluation passes what it tests (a final score can still fall,
so under --score final, the default, a passing probe trains to the end). The definitions
are apet_ray/thresholds.py's, shared with the report.
The thresholds, trials and training steps spent versus the dense grid are printed and
saved to RESULTS/param_ablation.thresholds.json.

    python experiments/param_ablation.py               # smoke size: MiniLM, frozen random head
    python experiments/param_ablation.py --profile paper --address auto --models google/t5-v1_1-small,google/t5-v1_1-xxl \\
        --tasks sst2,rte --structures add-discrete,concat-adjacent --min-count 100 --max-count 10000000 \\
        --workers 8 --strategy fsdp
"""

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from apet_ray.atomic import write_text
from apet_ray.delta import DeltaSpec
from apet_ray.errors import UserError
from apet_ray.models import resolve
from apet_ray.report import make_report
from apet_ray.report.data import SCORE_COLUMNS
from apet_ray.results import read_results
from apet_ray.run import check_config
from apet_ray.search import DecidedProbes, SearchState, ThresholdSearcher, log_grid
from apet_ray.study import (choose_lrs, csv, main, parse, run_study, seeds, study_arguments, study_config, trial_config,
                            trial_id)
from apet_ray.study.lr_search import with_lr
from apet_ray.thresholds import HIGH_TOL, LOW_MARGIN, baseline

DEFAULTS = dict(
    models="minilm", tasks="rotten_tomatoes", seeds="0", structures="add-discrete",
    min_count=10, max_count=100_000, per_decade=4, margin=LOW_MARGIN, tol=HIGH_TOL, head="frozen",
    data_dir=None, data_source="auto", max_steps=40, eval_every=20, batch_size=16, train_limit=2000,
    eval_limit=200, max_input_len=64, workers=None, strategy="auto", results="results/param_ablation",
)

# --profile paper: the paper's setting (study.cli.PAPER) with these step counts -- the
# project's choice: the paper gives none beyond "up to ~14k steps" (Fig. 6)
PAPER_PROFILE = dict(max_steps=5000, eval_every=500)
SEARCH_STUDY = "param_ablation_search"  # one Tune experiment for every search of a run


def run(argv=None):
    parser = study_arguments(__doc__.splitlines()[0], DEFAULTS, PAPER_PROFILE)
    parser.add_argument("--structures", help="APET op-distribution pairs, e.g. add-discrete,concat-adjacent")
    parser.add_argument("--min-count", type=int)
    parser.add_argument("--max-count", type=int)
    parser.add_argument("--per-decade", type=int, help="grid points per factor of ten")
    parser.add_argument("--margin", type=float, help=f"low threshold: score > baseline + margin (default {LOW_MARGIN})")
    parser.add_argument("--tol", type=float, help=f"high threshold: score >= FT score - tol (default {HIGH_TOL})")
    parser.add_argument("--dense", action="store_true",
                        help="train every grid count instead of searching (the dense grid a search is checked against)")
    parser.add_argument("--score", choices=["final", "best"], default="final",
                        help="judge a probe (and FT) by its final or its best evaluation; with best, a probe stops "
                             "as soon as an evaluation passes what it was sent to test (default final)")
    parser.add_argument("--head", choices=["frozen", "trainable"],
                        help="BERT classifier head; frozen keeps the count honest (a trained head alone beats chance)")
    args = parse(parser, argv)
    if not 0 < args.min_count < args.max_count:
        raise UserError(f"need 0 < --min-count < --max-count, got {args.min_count} and {args.max_count}")
    grid = log_grid(args.min_count, args.max_count, args.per_decade)
    results = Path(args.results)
    head = dict(train_head=args.head == "trainable")

    def config(model, task, seed, spec):
        return trial_config(args, model, task, seed, spec=spec, **head)

    # 1. the FT reference for every model x task x seed (a plain grid study)
    ft = [config(m, t, s, DeltaSpec.pet("ft", seed=s)) for m in csv(args.models) for t in csv(args.tasks) for s in seeds(args.seeds)]
    structures = [tuple(x.split("-")) for x in csv(args.structures)]
    for structure, parts in zip(csv(args.structures), structures):
        if len(parts) != 2:
            raise UserError(f"--structures takes op-distribution pairs such as add-discrete, not {structure!r}")
    searches = [(m, t, s, op, dist) for m in csv(args.models) for t in csv(args.tasks) for s in seeds(args.seeds)
                for op, dist in structures]
    # validate every search's extremes now, so nothing starts when one of them cannot run
    for m, t, s, op, dist in searches:
        for count in (grid[0], grid[-1]):
            check_config(config(m, t, s, DeltaSpec.apet(op, dist, budget=count, seed=s)))
    ft_study = study_config(args, "param_ablation_ft")
    ft_study.asha, ft_study.report = False, False
    run_study(ft_study, ft)
    if args.dry_run:
        for m, t, s, op, dist in searches:
            shown = config(m, t, s, DeltaSpec.pet("ft", seed=s)).task  # a task file's own name
            print(f"search {m} / {shown} / APET-{dist.capitalize()} ({op}) / seed {s}: bisection over {len(grid)} counts "
                  f"{grid[0]:,} .. {grid[-1]:,} ({args.per_decade} per decade), low threshold: > baseline + {args.margin}, "
                  f"high: >= FT - {args.tol}")
        return

    # 2. every search in one Tune experiment: free slots go to the open intervals of all of them
    tables, _ = read_results(results)
    trials = tables.trials
    column = SCORE_COLUMNS[args.score]
    states: dict[str, SearchState] = {}
    facts: dict[str, Search] = {}
    for m, t, s, op, dist in searches:
        reference = config(m, t, s, DeltaSpec.pet("ft", seed=s))
        model_name, task_name = resolve(reference.model)[1].name, reference.task  # as runs record them
        ft_rows = trials[(trials.study == ft_study.study) & (trials.method == "ft") & (trials.model == model_name)
                         & (trials.task == task_name) & (trials.seed == s) & (trials.status == "finished")] if not trials.empty else trials
        if ft_rows.empty:
            raise UserError(f"no FT result for {m} / {t} / seed {s}: cannot search for the high threshold")
        ft_score = float(ft_rows[column].iloc[0])
        random_guess = float(ft_rows.random_guess.iloc[0])
        base = baseline(random_guess, ft_rows.majority.iloc[0] if "majority" in ft_rows else None)
        name = f"param_ablation-{Path(m).name}-{task_name}-{op}-{dist}-s{s}"
        state = SearchState.new(grid, base, args.margin, ft_score, args.tol)
        # a rerun resumes from the probes already written (by this search, or a serial one before it)
        done = trials[trials.study.isin([SEARCH_STUDY, name]) & (trials.model == model_name) & (trials.task == task_name)
                      & (trials.seed == s) & (trials.op == op) & (trials.distribution == dist)
                      & trials.status.isin(["finished", "decided"])] if not trials.empty else trials
        for _, row in done.iterrows():
            if int(row.delta_params) in grid:
                state.record(grid.index(int(row.delta_params)), float(row[column]))
        states[name] = state
        facts[name] = Search(m, t, s, op, dist, random_guess, base, ft_score, model_name, task_name)

    lr_of = {}
    if args.tune_lr and not args.dense:
        # once per structure (and model, task), at the grid's middle count: tuning every probe
        # would multiply the search's cost by --tune-lr, and a probe's lr must not decide its count
        middle = grid[len(grid) // 2]
        refs = {name: config(f.model, f.task, f.seed, DeltaSpec.apet(f.op, f.dist, budget=middle, seed=f.seed))
                for name, f in facts.items()}
        tuning = study_config(args, SEARCH_STUDY)
        tuning.results = str(results)
        lr_of = dict(zip(refs, choose_lrs(tuning, list(refs.values()))))

    def make(name, count):
        f = facts[name]
        cfg = config(f.model, f.task, f.seed, DeltaSpec.apet(f.op, f.dist, budget=count, seed=f.seed))
        if name in lr_of:
            cfg = with_lr(cfg, lr_of[name])
        return {"trial_id": trial_id(cfg, name), "name": f"apet-{f.op}-{f.dist}-{count}-s{f.seed}",
                "group": f"{cfg.model} | {cfg.task}", "train": cfg.to_dict()}

    searcher = ThresholdSearcher(states, make, score=args.score)
    started = time.time()
    if args.dense:
        _run_dense_grid(args, results, states, facts, config, column)
    elif not searcher.done:
        study = study_config(args, SEARCH_STUDY)
        study.asha, study.report, study.resume = False, False, False
        study.results = str(results)
        _fresh_tune_dir(results, SEARCH_STUDY)
        f = next(iter(facts.values()))
        run_study(study, [config(f.model, f.task, f.seed, DeltaSpec.apet(f.op, f.dist, budget=grid[0], seed=f.seed))],
                  searcher=searcher, stopper=DecidedProbes(searcher))
    summary = []
    for name, state in states.items():
        f = facts[name]
        probes = len(state.scores)
        low, high = (_dense_thresholds(state, args) if args.dense
                     else (state.threshold(state.low), state.threshold(state.high)))
        record = {
            "model": f.model, "task": f.task_name, "seed": f.seed, "structure": f"{f.op}-{f.dist}",
            "random_guess": f.random_guess, "baseline": f.baseline,
            "margin": args.margin, "ft_score": f.ft_score, "tol": args.tol, "grid": grid,
            "low_threshold": low, "high_threshold": high, "score": args.score,
            "probes": {grid[i]: v for i, v in sorted(state.scores.items())}, "trials": len(searcher.probes[name]),
            "dense_grid_steps": len(grid) * args.max_steps,
        }
        summary.append(record)
        print(f"[apet-ray] {f.model} / {f.task_name} / {f.op}-{f.dist} / seed {f.seed}: low threshold {low}, "
              f"high threshold {high} (FT {f.ft_score:.3f}, baseline {f.baseline:.2f}); "
              f"{probes} of {len(grid)} grid counts scored", flush=True)
    steps = _steps_trained(results)
    print(f"[apet-ray] {'dense grid' if args.dense else 'threshold search'}: "
          f"{sum(len(p) for p in searcher.probes.values()) if not args.dense else len(states) * len(grid)} probes "
          f"({len(searcher.decided)} stopped once decided, {len(searcher.abandoned)} once no longer needed), "
          f"{steps:,} training steps = {100 * steps / max(1, len(states) * len(grid) * args.max_steps):.0f}% of the "
          f"dense grid's, {time.time() - started:.0f} s", flush=True)
    write_text(results / "param_ablation.thresholds.json", json.dumps(
        {"searches": summary, "steps": steps, "dense_grid_steps": len(states) * len(grid) * args.max_steps,
         "wall_s": round(time.time() - started, 1)}, indent=2))
    if not args.no_report:
        print("\n".join(make_report(results, results / "report", score=args.score).lines()), flush=True)


@dataclass(frozen=True)
class Search:
    """One threshold search: what it searches on, and its FT reference and baseline."""

    model: str  # as given on the command line
    task: str  # a task name or a task file, as given
    seed: int
    op: str
    dist: str
    random_guess: float
    baseline: float  # the larger of random guessing and the majority class (thresholds.baseline)
    ft_score: float
    model_name: str  # as runs record them
    task_name: str


def _run_dense_grid(args, results: Path, states: dict[str, SearchState], facts: dict[str, "Search"], config,
                    column: str) -> None:
    """Every count of every search, as one grid study; the scores go into the states."""
    trials = [config(f.model, f.task, f.seed, DeltaSpec.apet(f.op, f.dist, budget=count, seed=f.seed))
              for f in facts.values() for count in next(iter(states.values())).grid]
    study = study_config(args, SEARCH_STUDY)
    study.asha, study.report, study.resume = False, False, False
    study.results = str(results)
    _fresh_tune_dir(results, SEARCH_STUDY)
    run_study(study, trials)
    table = read_results(results)[0].trials
    for name, state in states.items():
        f = facts[name]
        rows = table[(table.study == SEARCH_STUDY) & (table.model == f.model_name) & (table.seed == f.seed)
                     & (table.task == f.task_name) & (table.op == f.op)
                     & (table.distribution == f.dist) & (table.status == "finished")]
        for row in rows.itertuples():
            if int(row.delta_params) in state.grid:
                state.scores[state.grid.index(int(row.delta_params))] = float(getattr(row, column))


def _dense_thresholds(state: SearchState, args) -> tuple[int | None, int | None]:
    """The dense grid's answer: the first count that passes (thresholds.py's tests)."""
    scored = sorted(state.scores.items())
    low = next((state.grid[i] for i, v in scored if state.low.passes(v)), None)
    high = next((state.grid[i] for i, v in scored if state.high.passes(v)), None)
    return low, high


def _steps_trained(results: Path) -> int:
    """Training steps the search's probes ran (this run and any before it), from the trials table."""
    tables, _ = read_results(results)
    trials = tables.trials
    if trials.empty:
        return 0
    return int(trials[trials.study == SEARCH_STUDY]["steps_run"].sum())


def _fresh_tune_dir(results: Path, name: str) -> None:
    # the searcher, not Tune, carries the state of a resumed search: start Tune afresh
    shutil.rmtree(results / "ray" / name, ignore_errors=True)


if __name__ == "__main__":
    main(run)
