"""E1 (paper Fig. 3): do the PET methods converge to full fine-tuning as models grow?

Every model x task x seed runs the four PET methods at the paper's settings and FT.

    python experiments/pet_scaling.py                 # smoke size: the offline MiniLM, one task
    python experiments/pet_scaling.py --profile paper --address auto   # configs/pet_scaling/paper.yaml
"""

from pathlib import Path

from apet_ray.delta import DeltaSpec
from apet_ray.study import (csv, main, model_tasks, parse, run_study, seeds, study_arguments, study_config,
                            trial_config)

DEFAULTS = dict(
    models="minilm", tasks="rotten_tomatoes", seeds="0", methods="prompt,bitfit,lora,adapter,ft",
    data_dir=None, data_source="auto", max_steps=40, eval_every=20, batch_size=16, train_limit=2000,
    eval_limit=200, max_input_len=64, workers=None, strategy="auto", results="results/pet_scaling",
)

# --profile paper: configs/pet_scaling/paper.yaml, the paper's grid and training setting
PAPER = Path(__file__).parent / "configs" / "pet_scaling" / "paper.yaml"


def run(argv=None):
    parser = study_arguments(__doc__.splitlines()[0], DEFAULTS, PAPER)
    parser.add_argument("--methods", help="PET methods and ft")
    args = parse(parser, argv)
    trials = [
        trial_config(args, model, task, seed, spec=DeltaSpec.pet(method, seed=seed))
        for model, task in model_tasks(args) for seed in seeds(args.seeds)
        for method in csv(args.methods)
    ]
    run_study(study_config(args, "pet_scaling"), trials)


if __name__ == "__main__":
    main(run)
