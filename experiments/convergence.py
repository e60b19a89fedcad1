"""E3 (paper Fig. 6): does structure change convergence speed?

APET-Adjacent and APET-Discrete with the same number of trainable parameters, trained to
the end (no early stopping) with frequent evaluations; steps-to-converge is recorded.

    python experiments/convergence.py                 # smoke size: the offline MiniLM
    python experiments/convergence.py --address auto --models google/t5-v1_1-small,google/t5-v1_1-xxl \\
        --tasks sst2,rte,mrpc --seeds 0,1,2 --max-steps 14000 --eval-every 200 --workers 8 --strategy fsdp
"""

from apet_ray.delta import DeltaSpec
from apet_ray.study import csv, main, parse, run_study, seeds, study_arguments, study_config, trial_config

DEFAULTS = dict(
    models="minilm", tasks="rotten_tomatoes", seeds="0", match="lora", ops="add",
    data_dir=None, data_source="auto", max_steps=80, eval_every=10, batch_size=16, train_limit=2000,
    eval_limit=200, max_input_len=64, workers=1, strategy="auto", results="results/convergence",
)


def run(argv=None):
    parser = study_arguments(__doc__.splitlines()[0], DEFAULTS)
    parser.add_argument("--match", help="the PET method whose parameter count both structures get")
    parser.add_argument("--ops", help="APET ops to compare (add, concat, plugin)")
    args = parse(parser, argv)
    trials = [
        trial_config(args, model, task, seed, spec=DeltaSpec.apet(op, distribution, match=args.match, seed=seed))
        for model in csv(args.models) for task in csv(args.tasks) for seed in seeds(args.seeds)
        for op in csv(args.ops) for distribution in ("adjacent", "discrete")
    ]
    study = study_config(args, "convergence")
    study.asha = False  # convergence curves must run to the end
    run_study(study, trials)


if __name__ == "__main__":
    main(run)
