"""E3 (paper Fig. 6): does structure change convergence speed?

APET-Adjacent and APET-Discrete with the same number of trainable parameters, trained to
the end (no early stopping) with frequent evaluations; steps-to-converge is recorded.

    python experiments/convergence.py                 # smoke size: the offline MiniLM
    python experiments/convergence.py --profile paper --address auto   # configs/convergence/paper.yaml
"""

from pathlib import Path

from apet_ray.delta import DeltaSpec
from apet_ray.errors import UserError
from apet_ray.study import (csv, main, model_tasks, parse, run_study, seeds, study_arguments, study_config,
                            trial_config)

DEFAULTS = dict(
    models="minilm", tasks="rotten_tomatoes", seeds="0", match="lora", ops="add-weight",
    data_dir=None, data_source="auto", max_steps=80, eval_every=10, batch_size=16, train_limit=2000,
    eval_limit=200, max_input_len=64, workers=None, strategy="auto", results="results/convergence",
)

# --profile paper: configs/convergence/paper.yaml, the paper's grid and training setting
PAPER = Path(__file__).parent / "configs" / "convergence" / "paper.yaml"


def run(argv=None):
    parser = study_arguments(__doc__.splitlines()[0], DEFAULTS, PAPER)
    parser.add_argument("--match", help="the PET method whose parameter count both structures get")
    parser.add_argument("--ops", help="APET ops to compare (add-weight, add, concat, plugin; default add-weight: the paper's add holds fewer entries than LoRA's count)")
    args = parse(parser, argv)
    if args.asha:
        raise UserError("--asha does not apply here: convergence curves must run to the end")
    trials = [
        trial_config(args, model, task, seed, spec=DeltaSpec.apet(op, distribution, match=args.match, seed=seed))
        for model, task in model_tasks(args) for seed in seeds(args.seeds)
        for op in csv(args.ops) for distribution in ("adjacent", "discrete")
    ]
    study = study_config(args, "convergence")
    run_study(study, trials)


if __name__ == "__main__":
    main(run)
