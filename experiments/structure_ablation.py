"""E2 (paper Fig. 5): does scale remove the effect of module structure?

For every model and task: the four PET methods and full fine-tuning, plus APET-Adjacent
and APET-Discrete with exactly each PET method's number of trainable parameters.

    python experiments/structure_ablation.py                      # embedded default, offline, < 10 min on 2 cores
    python experiments/structure_ablation.py --profile paper --address auto   # configs/structure_ablation/paper.yaml
"""

from pathlib import Path

from apet_ray.delta import DeltaSpec, split_methods
from apet_ray.study import (csv, main, model_tasks, parse, run_study, seeds, study_arguments, study_config,
                            trial_config)

PET = ("prompt", "bitfit", "lora", "adapter")
# The embedded default (--profile smoke): the real offline model on real data, sized for a
# laptop (under 10 min on 2 cores). Short-run settings, not the paper's: 150 steps of batch
# 16 at lr 1e-3 for the deltas and 3e-5 for full fine-tuning, chosen by the sweep in
# benchmarks/smoke_lr_sweep.py (soft prompts keep the paper's 3e-2); eval on 500 examples.
# APET is matched to BitFit, LoRA and the adapter: matching Prompt's count takes a 200-token
# prompt, 8x the tokens of a plain example, ~10 min per trial here (--apet-match adds it).
DEFAULTS = dict(
    models="minilm", tasks="rotten_tomatoes", seeds="0", methods=",".join(PET), apet_match="bitfit,lora,adapter",
    distributions="adjacent,discrete",
    lr=1e-3, ft_lr=3e-5,
    data_dir=None, data_source="auto", max_steps=150, eval_every=50, batch_size=16, train_limit=None,
    eval_limit=500, max_input_len=64, workers=None, strategy="auto", results="results/structure_ablation",
)

# --profile paper: configs/structure_ablation/paper.yaml, the paper's grid and training setting
PAPER = Path(__file__).parent / "configs" / "structure_ablation" / "paper.yaml"


def run(argv=None):
    parser = study_arguments(__doc__.splitlines()[0], DEFAULTS, PAPER)
    parser.add_argument("--methods", help="PET methods to compare (default: prompt,bitfit,lora,adapter); peft's "
                        "as peft:<type>[?key=value&...], e.g. peft:ia3 (docs/extending.md)")
    parser.add_argument("--apet-match", help="which of --methods APET is matched to, by count (default: "
                        "bitfit,lora,adapter; paper: all four)")
    parser.add_argument("--distributions", help="APET mask distributions")
    args = parse(parser, argv)
    # an unknown name is refused here, in one line; arms compare in canonical form (peft options sorted)
    matched = {DeltaSpec.pet(name).arm for name in split_methods(args.apet_match)}
    trials = []
    for model, task in model_tasks(args):
        for seed in seeds(args.seeds):
            trials.append(trial_config(args, model, task, seed, spec=DeltaSpec.pet("ft", seed=seed)))
            for method in split_methods(args.methods):
                pet = DeltaSpec.pet(method, seed=seed)
                trials.append(trial_config(args, model, task, seed, spec=pet))
                if pet.arm not in matched:
                    continue
                for distribution in csv(args.distributions):  # a peft arm's twin: concat (LoRA), add (IA3), add-weight
                    apet = DeltaSpec.apet(pet.twin_op, distribution, match=pet.arm, seed=seed)
                    trials.append(trial_config(args, model, task, seed, spec=apet))
    # no ASHA unless asked (--asha): the table compares final scores, PET and matched APET
    # step for step, and a stopped trial has none
    run_study(study_config(args, "structure_ablation"), trials)


if __name__ == "__main__":
    main(run)
