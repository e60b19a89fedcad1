"""E3 (paper Fig. 6): does structure change convergence speed?

APET-Adjacent and APET-Discrete with the same number of trainable parameters, trained to
the end (no early stopping) with frequent evaluations; steps-to-converge is recorded.

    python experiments/convergence.py                 # smoke size: the offline MiniLM
    python experiments/convergence.py --profile paper --address auto --models google/t5-v1_1-small,google/t5-v1_1-xxl \\
        --tasks sst2,rte,mrpc --seeds 0,1,2 --workers 8 --strategy fsdp
"""

from apet_ray.delta import DeltaSpec
from apet_ray.errors import UserError
from apet_ray.study import csv, main, parse, run_study, seeds, study_arguments, study_config, trial_config

DEFAULTS = dict(
    models="minilm", tasks="rotten_tomatoes", seeds="0", match="lora", ops="add",
    data_dir=None, data_source="auto", max_steps=80, eval_every=10, batch_size=16, train_limit=2000,
    eval_limit=200, max_input_len=64, workers=None, strategy="auto", results="results/convergence",
)

# --profile paper: the paper's setting (study.cli.PAPER) with these step counts -- the
# project's choice: the paper gives none beyond "up to ~14k steps" (Fig. 6)
PAPER_PROFILE = dict(max_steps=14000, eval_every=200)


def run(argv=None):
    parser = study_arguments(__doc__.splitlines()[0], DEFAULTS, PAPER_PROFILE)
    parser.add_argument("--match", help="the PET method whose parameter count both structures get")
    parser.add_argument("--ops", help="APET ops to compare (add, concat, plugin)")
    args = parse(parser, argv)
    if args.asha:
        raise UserError("--asha does not apply here: convergence curves must run to the end")
    trials = [
        trial_config(args, model, task, seed, spec=DeltaSpec.apet(op, distribution, match=args.match, seed=seed))
        for model in csv(args.models) for task in csv(args.tasks) for seed in seeds(args.seeds)
        for op in csv(args.ops) for distribution in ("adjacent", "discrete")
    ]
    study = study_config(args, "convergence")
    run_study(study, trials)


if __name__ == "__main__":
    main(run)
