"""E5 (paper Fig. 9): does scale help zero-shot transfer?

Train on each source task, then evaluate on every target task with the unified label set
(negative / not-entailment / false -> 0; positive / entailment / true -> 1).

    python experiments/transfer.py                    # smoke size: MiniLM; uses ../shared/data when present
    python experiments/transfer.py --profile paper --address auto   # configs/transfer/paper.yaml
"""

from pathlib import Path

from apet_ray.delta import DeltaSpec
from apet_ray.errors import UserError
from apet_ray.study import (csv, main, model_tasks, parse, run_study, seeds, study_arguments, study_config,
                            trial_config)

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
DEFAULTS = dict(
    models="minilm", methods="lora", match="lora", seeds="0", labels="unified",
    # offline: the development data beside the project when it is there, else the packaged task only
    tasks="rotten_tomatoes,sst2,mrpc,rte" if SHARED.is_dir() else "rotten_tomatoes",
    data_dir=str(SHARED.resolve()) if SHARED.is_dir() else None, data_source="auto",
    max_steps=40, eval_every=20, batch_size=16, train_limit=2000, eval_limit=200, max_input_len=64, workers=None,
    strategy="auto", results="results/transfer",
)

# --profile paper: configs/transfer/paper.yaml, the paper's grid and training setting
PAPER = Path(__file__).parent / "configs" / "transfer" / "paper.yaml"


def spec(method: str, match: str, seed: int) -> DeltaSpec:
    """A PET method by name, or ``apet-<distribution>`` at ``match``'s count and op."""
    if method.startswith("apet-"):
        return DeltaSpec.apet(DeltaSpec.pet(match).op, method.removeprefix("apet-"), match=match, seed=seed)
    return DeltaSpec.pet(method, seed=seed)


def run(argv=None):
    parser = study_arguments(__doc__.splitlines()[0], DEFAULTS, PAPER)
    parser.add_argument("--methods", help="methods to train on each source task: PET methods, and apet-adjacent / "
                        "apet-discrete (APET with --match's count, at its op and positions, as in the paper's Fig. 9)")
    parser.add_argument("--match", help="the PET method whose count the APET methods take")
    args = parse(parser, argv)
    if args.asha:
        raise UserError("--asha does not apply here: every source model must be evaluated on every target")
    pairs = model_tasks(args)
    targets = {model: tuple(t for m, t in pairs if m == model) for model, _ in pairs}  # every task the model trains on
    trials = [
        trial_config(args, model, source, seed, spec=spec(method, args.match, seed), transfer_tasks=targets[model])
        for model, source in pairs for seed in seeds(args.seeds) for method in csv(args.methods)
    ]
    study = study_config(args, "transfer")
    run_study(study, trials)


if __name__ == "__main__":
    main(run)
