"""E4 (paper Fig. 7): how many trainable parameters are needed?

For each model x task x seed x APET structure: full fine-tuning gives the reference score,
then a bisection over a log-spaced grid of trainable-parameter counts finds the low
threshold (fewest parameters beating random guessing by --margin, the paper's rule; the
report adds the strict one, against the majority class) and the high threshold
(fewest reaching FT within --tol), training a handful of counts instead of the whole grid;
all searches share one Tune experiment (apet_ray/study/threshold_search.py). The
thresholds, trials and training steps spent versus the dense grid are printed and saved to
RESULTS/param_ablation.thresholds.json. --score best judges each probe by its best evaluation
and stops it as soon as one passes what it was sent to test (a final score can still fall).

    python experiments/param_ablation.py                 # embedded: MiniLM, Fig. 7 in about 6 minutes
    python experiments/param_ablation.py --profile paper --address auto   # configs/param_ablation/paper.yaml
"""

from pathlib import Path

from apet_ray.study import csv, main, model_tasks, parse, seeds, study_arguments, trial_config
from apet_ray.study.threshold_search import (HIGH_TOL, LOW_MARGIN, Rules, Search, count_grid, find_thresholds,
                                            parse_lrs, parse_structures)

# The embedded default (--profile smoke): Fig. 7 on the offline MiniLM and Rotten Tomatoes in
# minutes. APET's sparse weight delta with an Adjacent and a Discrete mask (the sweep passes
# what the paper's add holds), 11 counts from 10 to 1M, each probed count at lr 1e-3 and 1e-2
# (a count scores its best), FT at the 3e-5 of benchmarks/smoke_lr_sweep.py, the classifier
# head frozen at its seeded init so only the counted deltas learn. 80 steps, one evaluation
# on 200 examples: a point there is +-3.5, so the high threshold is FT - 2 points (--tol).
DEFAULTS = dict(
    models="minilm", tasks="rotten_tomatoes", seeds="0", structures="add-weight-adjacent,add-weight-discrete",
    min_count=10, max_count=1_000_000, per_decade=2, margin=LOW_MARGIN, tol=0.02, head="frozen", lrs="1e-3,1e-2",
    ft_lr=3e-5, data_dir=None, data_source="auto", max_steps=80, eval_every=80, batch_size=16, train_limit=2000,
    eval_limit=200, max_input_len=64, workers=None, strategy="auto", results="results/param_ablation",
)

# --profile paper: configs/param_ablation/paper.yaml, the paper's grid and training setting
PAPER = Path(__file__).parent / "configs" / "param_ablation" / "paper.yaml"


def run(argv=None):
    parser = study_arguments(__doc__.splitlines()[0], DEFAULTS, PAPER)
    parser.add_argument("--structures", help="APET op-distribution pairs, e.g. add-weight-discrete,concat-adjacent (the sweep passes what the paper's add can hold: its sparse weight delta, add-weight)")
    parser.add_argument("--min-count", type=int)
    parser.add_argument("--max-count", type=int)
    parser.add_argument("--per-decade", type=int, help="grid points per factor of ten")
    parser.add_argument("--margin", type=float, help=f"low threshold: score > random guess + margin, the paper's (default {LOW_MARGIN})")
    parser.add_argument("--tol", type=float, help=f"high threshold: score >= FT score - tol (default 0.02; paper: {HIGH_TOL})")
    parser.add_argument("--dense", action="store_true",
                        help="train every grid count instead of searching (the dense grid a search is checked against)")
    parser.add_argument("--lrs", help="an lr ladder, e.g. 1e-4,1e-3,1e-2: each probed count trains at every one and "
                        "scores its best, so the threshold measures the count, not one lr (default 1e-3,1e-2; "
                        "paper: 3e-5,3e-4,3e-3)")
    parser.add_argument("--head", choices=["frozen", "trainable"],
                        help="BERT classifier head; frozen keeps the count honest (a trained head alone beats chance)")
    args = parse(parser, argv)
    rules = Rules(count_grid(args.min_count, args.max_count, args.per_decade), args.margin, args.tol, args.score,
                  args.dense, parse_lrs(args.lrs))
    structures = parse_structures(csv(args.structures))
    searches = [Search(model, task, seed, op, dist) for model, task in model_tasks(args) for seed in seeds(args.seeds)
                for op, dist in structures]

    def config(model, task, seed, spec):
        return trial_config(args, model, task, seed, spec=spec, train_head=args.head == "trainable")

    find_thresholds(args, searches, rules, config)


if __name__ == "__main__":
    main(run)
