"""E1 (paper Fig. 3): do the PET methods converge to full fine-tuning as models grow?

Every model x task x seed runs the four PET methods at the paper's settings and FT.

    python experiments/pet_scaling.py                 # smoke size: the offline MiniLM, one task
    python experiments/pet_scaling.py --profile paper --address auto --models google/t5-v1_1-small,google/t5-v1_1-base,google/t5-v1_1-xxl \\
        --tasks sst2,imdb,rotten_tomatoes,mnli,qnli,rte,mrpc,qqp,nq_open,samsum,multi_news --seeds 0,1,2 \\
        --workers 8 --strategy fsdp
"""

from apet_ray.delta import DeltaSpec
from apet_ray.study import csv, main, parse, run_study, seeds, study_arguments, study_config, trial_config

DEFAULTS = dict(
    models="minilm", tasks="rotten_tomatoes", seeds="0", methods="prompt,bitfit,lora,adapter,ft",
    data_dir=None, data_source="auto", max_steps=40, eval_every=20, batch_size=16, train_limit=2000,
    eval_limit=200, max_input_len=64, workers=None, strategy="auto", results="results/pet_scaling",
)

# --profile paper: the paper's setting (study.cli.PAPER) with these step counts -- the
# project's choice: the paper gives none beyond "up to ~14k steps" (Fig. 6)
PAPER_PROFILE = dict(max_steps=10000, eval_every=500)


def run(argv=None):
    parser = study_arguments(__doc__.splitlines()[0], DEFAULTS, PAPER_PROFILE)
    parser.add_argument("--methods", help="PET methods and ft")
    args = parse(parser, argv)
    trials = [
        trial_config(args, model, task, seed, spec=DeltaSpec.pet(method, seed=seed))
        for model in csv(args.models) for task in csv(args.tasks) for seed in seeds(args.seeds)
        for method in csv(args.methods)
    ]
    run_study(study_config(args, "pet_scaling"), trials)


if __name__ == "__main__":
    main(run)
