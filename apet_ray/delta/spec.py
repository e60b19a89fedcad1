"""A delta spec says which weights train, through which op, with which mask, how many.

Every method of the paper is one spec: the four PET methods and full fine-tuning are APET
with all-ones ("full") masks on particular positions (``DeltaSpec.pet``); APET proper picks
an op, a mask distribution and an exact budget (``DeltaSpec.apet``).
"""

from __future__ import annotations

import dataclasses
import json
import numbers
from dataclasses import dataclass

from apet_ray.delta import peft_names
from apet_ray.delta.methods import APET, OPS, display_label, get_method, label_of, matchable_methods, method_names
from apet_ray.errors import UserError

DISTRIBUTIONS = ("full", "adjacent", "discrete")
PLUGIN_INITS = ("kaiming", "release")
# fields added after specs were first stored, with their defaults (left out of to_json there)
_LATER_FIELDS = {"plugin_init": "kaiming", "options": ""}
PEFT_OP = "peft"  # the op of a peft arm: peft builds its modules (peft_arm), not the registry


@dataclass(frozen=True)
class DeltaSpec:
    """What to train. Sizes are free for concat/plugin (``size`` = prompt length, rank or
    bottleneck); ``None`` lets the engine pick the smallest size whose new weights hold
    ``budget`` at about ``density``."""

    method: str
    op: str
    positions: tuple[str, ...]
    distribution: str = "full"
    budget: int | None = None  # exact trainable count; None = the full structure's count
    match: str | None = None  # take the budget from this PET method on the same model
    size: int | None = None
    density: float = 0.5  # target fraction of a new weight's entries that train (APET concat/plugin)
    alpha: float = 16.0  # low-rank scale numerator: alpha / rank, for APET alpha / 8 (LoRA's r; registry.lowrank_scale)
    activation: str = "relu"  # plugin non-linearity
    seed: int = 0
    # plugin projections: "kaiming" (down kaiming-uniform as peft, up zero: outputs unchanged at
    # attach) or "release" (both N(0, 0.01), the release's adapter: the paper's values)
    plugin_init: str = "kaiming"
    # a peft arm's config options, canonical ``key=value&...`` (method ``peft:<type>``, op ``peft``)
    options: str = ""

    # ---- constructors -------------------------------------------------------------
    @staticmethod
    def pet(method: str, seed: int = 0) -> "DeltaSpec":
        """A registered PET method with its preset settings (``delta.methods``), or a peft arm
        ``peft:<type>?key=value&...`` (peft's own modules, ``delta.peft_arm``)."""
        if peft_names.is_peft(method):
            name, options = peft_names.parse_arm(method)
            return DeltaSpec(method=peft_names.peft_type(name), op=PEFT_OP, positions=(), options=options,
                             seed=seed).validated()
        m = get_method(method)
        return DeltaSpec(method=m.name, op=m.op, positions=m.positions, size=m.size, alpha=m.alpha,
                         activation=m.activation, seed=seed).validated()

    @staticmethod
    def apet(
        op: str = "add",
        distribution: str = "discrete",
        budget: int | None = None,
        match: str | None = None,
        positions: tuple[str, ...] | None = None,
        size: int | None = None,
        density: float = 0.5,
        seed: int = 0,
    ) -> "DeltaSpec":
        """APET: ``op`` with an ``distribution`` mask holding exactly ``budget`` values, or as
        many as PET method ``match`` trains on the same model.

        Default positions: for concat and plugin, the matched method's when it uses the same
        op (so APET differs from it only in its masks and size); otherwise the op's own
        default (``registry.Op.defaults``). Add (the paper's Eq. 14) defaults to every layer
        output where a vector can train (``outputs``: a superset of BitFit's positions but
        its key biases, so it holds BitFit's count on every family), add-weight to the linear weights (the
        authors' BERT variant masked the model's own weights): on BitFit's own positions a
        matched budget would fill every entry.
        """
        if op not in OPS:
            raise UserError(f"unknown op {op!r} (known: {', '.join(OPS)})")
        if peft_names.is_peft(match):  # one spelling of each arm: canonical type and options
            match = DeltaSpec.pet(match).arm
        known = match is not None and (match in matchable_methods() or peft_names.is_peft(match))
        matched = DeltaSpec.pet(match) if known else None
        twin = matched is not None and matched.op == op  # the PET method APET differs from only in masks
        if positions is None:
            positions = matched.positions if twin and OPS[op].match_positions else OPS[op].defaults
        return DeltaSpec(
            method="apet", op=op, positions=tuple(positions), distribution=distribution, budget=budget,
            match=match, size=size, density=density, seed=seed,
            activation=matched.activation if twin else DeltaSpec.activation,
        ).validated()

    @staticmethod
    def build(
        method: str,
        op: str | None = None,
        distribution: str | None = None,
        budget: int | None = None,
        match: str | None = None,
        positions: tuple[str, ...] | None = None,
        size: int | None = None,
        density: float = 0.5,
        seed: int = 0,
    ) -> "DeltaSpec":
        """One entry point for command lines and study configs."""
        if method == APET:
            return DeltaSpec.apet(op or "add", distribution or "discrete", budget, match, positions, size, density, seed)
        given = {"--op": op, "--distribution": distribution, "--budget": budget, "--match": match,
                 "--positions": positions, "--size": size}
        extra = [flag for flag, value in given.items() if value is not None]
        if extra:
            raise UserError(f"{' '.join(extra)} only apply to --method apet ({method} uses the paper's settings)")
        return DeltaSpec.pet(method, seed=seed)

    # ---- checks -----------------------------------------------------------------
    def validated(self) -> "DeltaSpec":
        if peft_names.is_peft(self.method):
            return self._validated_peft()
        if self.method not in method_names():
            raise UserError(f"unknown method {self.method!r} (known: {', '.join(method_names())})")
        if self.op not in OPS:
            raise UserError(f"unknown op {self.op!r} (known: {', '.join(OPS)})")
        if self.distribution not in DISTRIBUTIONS:
            raise UserError(f"unknown distribution {self.distribution!r} (known: adjacent, discrete)")
        if not self.positions:
            raise UserError("a delta spec needs at least one position")
        if self.budget is not None and self.match is not None:
            raise UserError("give either a budget or a method to match, not both")
        if self.budget is not None:
            check_budget(self.budget)
        if peft_names.is_peft(self.match):
            DeltaSpec.pet(self.match)  # a peft arm that cannot be one is refused here
        elif self.match is not None and self.match not in matchable_methods():
            if self.match in method_names():
                raise UserError(f"matching {label_of(self.match)}'s count is not a parameter-efficient budget; give --budget N")
            raise UserError(f"cannot match unknown method {self.match!r} (known: {', '.join(matchable_methods())})")
        if self.method == "apet" and self.budget is None and self.match is None:
            raise UserError("APET needs --budget N or --match METHOD")
        if self.method == "apet" and self.distribution == "full":
            raise UserError("APET takes an adjacent or discrete mask; a full mask is a PET method")
        if self.size is not None and (not _is_int(self.size) or self.size < 1):
            raise UserError(f"size must be a positive integer, not {self.size!r}")
        if not 0.0 < self.density <= 1.0:
            raise UserError(f"density must be in (0, 1], not {self.density}")
        if self.plugin_init not in PLUGIN_INITS:
            raise UserError(f"unknown plugin init {self.plugin_init!r} (known: {', '.join(PLUGIN_INITS)})")
        return self

    def _validated_peft(self) -> "DeltaSpec":
        name, options = peft_names.parse_arm(peft_names.arm_name(self.method, self.options))
        if (name, options) != (self.method, self.options):
            raise UserError(f"peft arm {self.arm!r} is not in canonical form (DeltaSpec.pet gives it)")
        if (self.op, self.positions, self.distribution, self.budget, self.match) != (PEFT_OP, (), "full", None, None):
            raise UserError(f"{self.method} is peft's method at its own settings: give its options as "
                            f"{self.method}?key=value, not APET fields")
        peft_names.check_options(self.method, self.options)
        return self

    @property
    def is_peft(self) -> bool:
        """Trained through peft's own modules (``peft:<type>``), not the op registry."""
        return peft_names.is_peft(self.method)

    @property
    def arm(self) -> str:
        """The method as a study's ``--methods`` names it: ``lora``, ``peft:lora?r=16``."""
        return peft_names.arm_name(self.method, self.options)

    @property
    def twin_op(self) -> str:
        """The op APET takes when a study matches it to this method: the method's own, or for a
        peft arm ``peft_names.twin_op`` (LoRA concat, IA3 add, otherwise add-weight)."""
        return peft_names.twin_op(self.method) if self.is_peft else self.op

    # ---- serialisation (stored in checkpoints and results) --------------------------
    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        for name, default in _LATER_FIELDS.items():  # at its default a later field is left out: the
            if data[name] == default:  # JSON, so every trial id made from it, stays what it was
                del data[name]
        return json.dumps(data, sort_keys=True)

    @staticmethod
    def from_json(text: str) -> "DeltaSpec":
        data = json.loads(text)
        data["positions"] = tuple(data["positions"])
        return DeltaSpec(**data).validated()

    @property
    def label(self) -> str:
        """Human-readable name, e.g. ``APET-Discrete (add, =LoRA)``, ``peft LORA (r=16)``."""
        if self.is_peft:
            return label_of(self.arm)
        return display_label(self.method, self.op, self.distribution, self.match or "", self.budget)


def _is_int(x: object) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def check_budget(budget: object) -> int:
    if not _is_int(budget):
        raise UserError(f"budget must be a whole number of parameters, not {budget!r}")
    if budget <= 0:
        raise UserError(f"budget must be positive, not {budget}")
    return int(budget)
