"""The paper's Add (Eq. 14): f(h) + W~ (.) m, a masked vector added to a layer's output --
input-independent, BitFit's form -- and add-weight, the sparse weight delta that "add" was
before, kept bit for bit (its fingerprints below were recorded from the old add)."""

import hashlib
import json

import pytest
import torch

from apet_ray.cli import main as cli
from apet_ray.delta import DeltaSpec, attach, count_deltas, make_plan, trainable_state_dict
from apet_ray.delta.layers import DeltaLinear
from apet_ray.delta.masked import MaskedTensor
from apet_ray.errors import UserError
from support import shared_or_skip, tiny_classifier, tiny_seq2seq

# tiny BERT (d 32, FFN 48, 2 layers): 2 x (3 x 32 + 48 + 32) linear outputs (q, v, attention
# output, FFN in and out; not the key's: softmax ignores it) + 5 LayerNorm biases x 32
BERT_CAPACITY = 2 * (3 * 32 + 48 + 32) + 5 * 32
# tiny T5 (d 32, gated FFN 48, 2 + 2 blocks; no key outputs): encoder 3 x 32 + 2 x 48 + 32,
# decoder 6 x 32 + 2 x 48 + 32, per block; the LM head's 120 rows; a vector on each of the 12
# RMS norms (2 + 3 per block, 2 final), which have no bias of their own; and BitFit's four
# relative-position tables (32 buckets x 4 heads: the two self-attention ones, two new cross ones)
T5_LINEAR_OUTPUTS = 2 * (3 * 32 + 2 * 48 + 32) + 2 * (6 * 32 + 2 * 48 + 32)
T5_CAPACITY = T5_LINEAR_OUTPUTS + 120 + 12 * 32 + 4 * 32 * 4


def _model(family):
    return tiny_classifier() if family == "bert" else tiny_seq2seq()


def _batch(family, batch):
    if family == "t5":
        return {**batch, "labels": torch.randint(2, 120, (3, 4), generator=torch.Generator().manual_seed(2))}
    return batch


def _out(model, batch):
    out = model(**batch)
    return out["logits"]


@pytest.mark.parametrize("family,capacity", [("bert", BERT_CAPACITY), ("t5", T5_CAPACITY)])
@pytest.mark.parametrize("distribution", ["adjacent", "discrete"])
def test_add_hits_every_budget_up_to_its_capacity_exactly(family, capacity, distribution):
    for budget in (1, 2, 37, 100, capacity - 1, capacity):
        model = _model(family)
        plan = attach(model, DeltaSpec.apet("add", distribution, budget=budget, seed=budget))
        assert plan.count == count_deltas(model) == budget
        assert sum(m.k for m in model.modules() if isinstance(m, MaskedTensor)) == budget
        # output vectors only: a linear layer's bias delta, a norm's bias (or a vector added to
        # a norm without one), T5's relative-position tables (additive on the scores); never a weight
        assert {p.kind for p in plan.placements} <= {"bias", "param", "output", "table"}
        assert all(p.param in (None, "bias") or p.path.endswith("relative_attention_bias") for p in plan.placements)
    with pytest.raises(UserError, match=rf"at most {capacity:,}\): .*--op add-weight"):
        make_plan(_model(family), DeltaSpec.apet("add", distribution, budget=capacity + 1))


def test_adjacent_add_runs_are_contiguous_and_discrete_ones_scattered():
    for distribution, contiguous in (("adjacent", True), ("discrete", False)):
        model = tiny_classifier()
        attach(model, DeltaSpec.apet("add", distribution, budget=400, seed=1))
        partial = [m for m in model.modules() if isinstance(m, MaskedTensor) and 1 < m.k < m.numel_dense]
        assert partial and all((m.run_start is not None) == contiguous for m in partial)


@pytest.mark.parametrize("family", ["bert", "t5"])
@pytest.mark.parametrize("distribution", ["adjacent", "discrete"])
def test_add_starts_at_zero_and_every_counted_entry_and_only_those_get_gradients(family, distribution, batch):
    batch = _batch(family, batch)
    model = _model(family)
    before = _out(model, batch).detach()
    attach(model, DeltaSpec.apet("add", distribution, budget=150, seed=5))
    if family == "bert":
        model.head.requires_grad_(False)
    # zero-initialised: outputs unchanged (to float rounding -- a frozen T5 already differs by
    # 1e-6 from a trainable one, autograd picking other kernels) and every vector exactly 0
    assert torch.allclose(_out(model, batch), before, rtol=0, atol=1e-5)
    assert all(not m().any() for m in model.modules() if isinstance(m, MaskedTensor))
    trainable = [p for p in model.parameters() if p.requires_grad]
    masked = [m for m in model.modules() if isinstance(m, MaskedTensor)]
    assert sum(p.numel() for p in trainable) == sum(m.k for m in masked) == 150
    assert {id(p) for p in trainable} == {id(m.values) for m in masked}  # nothing else trains
    _out(model, batch).double().pow(2).sum().backward()
    assert all(m.values.grad is not None for m in masked)
    # a position table's far buckets see no pair of these 7 tokens: every other entry moves
    tables = {id(m) for n, m in model.named_modules() if "relative_attention_bias" in n}
    assert all(bool((m.values.grad != 0).all()) for m in masked if id(m) not in tables)
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


def test_add_is_a_vector_on_the_output_whatever_the_input():
    model = tiny_classifier()
    attach(model, DeltaSpec.apet("add", "discrete", budget=20, positions=("query",), seed=2))
    layer = next(m for m in model.modules() if isinstance(m, DeltaLinear) and m.bias_delta is not None)
    with torch.no_grad():
        layer.bias_delta.values.copy_(torch.arange(1.0, layer.bias_delta.k + 1))
    dense = layer.bias_delta().detach()
    assert int((dense != 0).sum()) == layer.bias_delta.k
    for seed in (0, 1):  # two different inputs move the output by the same vector
        x = torch.randn(3, 5, layer.in_features, generator=torch.Generator().manual_seed(seed))
        assert torch.allclose(layer(x) - layer.base(x), dense.expand(3, 5, -1))


def test_add_leaves_out_the_key_outputs_that_cannot_train():
    paths = [p.path for p in make_plan(tiny_seq2seq(), DeltaSpec.apet("add", "discrete", budget=50)).placements]
    assert paths and not any(path.endswith(".k") for path in paths)
    for role in ("key", "cross_key"):
        with pytest.raises(UserError, match="softmax ignores"):
            make_plan(tiny_seq2seq(), DeltaSpec.apet("add", "discrete", budget=5, positions=(role,)))
    # BitFit, a full mask, trains the key biases as the paper counts them
    assert any(p.path.endswith("SelfAttention.k") for p in make_plan(tiny_seq2seq(), DeltaSpec.pet("bitfit")).placements)


def test_add_at_bitfit_positions_is_bitfit_without_its_key_biases():
    model = tiny_classifier()
    bitfit = [p for p in make_plan(model, DeltaSpec.pet("bitfit")).placements if not p.path.endswith(".key")]
    capacity = sum(s.numel for p in bitfit for s in p.slots)
    add = make_plan(model, DeltaSpec.apet("add", "discrete", budget=capacity, positions=("paper_biases",)))
    assert [(p.kind, p.path, p.param, [(s.name, s.k) for s in p.slots]) for p in add.placements] == \
           [(p.kind, p.path, p.param, [(s.name, s.numel) for s in p.slots]) for p in bitfit]


def test_a_match_above_the_capacity_points_to_add_weight():
    with pytest.raises(UserError, match=r"LoRA's count\) is larger than the capacity of add .*--op add-weight"):
        attach(tiny_classifier(), DeltaSpec.apet("add", "discrete", match="lora"))
    with pytest.raises(UserError, match="use --op add-weight"):
        attach(tiny_classifier(), DeltaSpec.apet("add", "discrete", budget=10, positions=("norm",)))
    plan = attach(tiny_classifier(), DeltaSpec.apet("add-weight", "discrete", match="lora"))
    assert plan.count == plan.requested == 2 * 2 * 8 * (32 + 32)


# ---- add-weight is the old add -------------------------------------------------------

# (count, sha256 of the placements, k per slot, state keys and mask indices, |output| after
# the values are set to a fixed pattern), recorded from the add op before the paper's form
# took its name (commit f9e273b): same counts, masks, checkpoint keys and outputs.
OLD_ADD = {
    ("bert", "discrete", 500, 0, None): (500, "52df0ba3c00577f2", 2.086),
    ("bert", "adjacent", 900, 3, None): (900, "1cfedac182df8c87", 2.0636),
    ("bert", "discrete", 7, 1, None): (7, "81e1513bdf7f13ba", 2.0603),
    ("bert", "discrete", 40, 2, "biases"): (40, "99a824bf5d1be71e", 1.9842),
    ("bert", "discrete", 40, 2, "norm"): (40, "f074bf6d6d732165", 2.0602),
    ("t5", "discrete", 500, 0, None): (500, "28d845b59941590f", 1203.4065),
    ("t5", "adjacent", 900, 3, None): (900, "a8ab289c60530418", 1210.2257),
    ("t5", "discrete", 7, 1, None): (7, "be8f5062e1b4edc0", 1208.5229),
    ("t5", "discrete", 40, 2, "biases"): (40, "3b5afedadb5b8d70", 1210.8519),
    ("t5", "discrete", 40, 2, "norm"): (40, "c373dc0ab257fe87", 1209.0901),
}


def _fingerprint(family, spec, batch):
    model = _model(family)
    plan = attach(model, spec)
    h = hashlib.sha256()
    for p in plan.placements:
        for s in p.slots:
            h.update(f"{p.kind}|{p.path}|{s.name}|{s.k};".encode())
    state = trainable_state_dict(model)
    for key in sorted(state):
        h.update(key.encode())
        if key.endswith(".indices"):
            h.update(state[key].numpy().tobytes())
    with torch.no_grad():
        for i, m in enumerate(m for m in model.modules() if isinstance(m, MaskedTensor)):
            m.values.copy_(torch.linspace(-0.05, 0.05, m.values.numel()) * (1 + i % 3))
        y = _out(model, _batch(family, batch))
    return plan.count, h.hexdigest()[:16], float(y.double().abs().sum())


@pytest.mark.parametrize("key", list(OLD_ADD), ids=lambda k: "-".join(map(str, k)))
def test_add_weight_reproduces_the_old_add(key, batch):
    family, distribution, budget, seed, position = key
    kw = {"positions": (position,)} if position else {}
    spec = DeltaSpec.apet("add-weight", distribution, budget=budget, seed=seed, **kw)
    count, digest, total = _fingerprint(family, spec, batch)
    assert (count, digest) == OLD_ADD[key][:2]
    assert total == pytest.approx(OLD_ADD[key][2], abs=1e-4)


def test_bitfit_counts_as_before_on_bert_base(capsys):
    cfg = shared_or_skip("configs", "bert-base-uncased")
    assert cli(["params", "--model", str(cfg), "--method", "bitfit", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["op"], out["trainable_params"]) == ("add", 65_280)


def test_add_on_xxl_hits_a_budget_and_refuses_lora_s_count(capsys):
    cfg = str(shared_or_skip("configs", "t5-v1_1-xxl"))
    assert cli(["params", "--model", cfg, "--method", "apet", "--op", "add", "--budget", "8000", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["trainable_params"] == 8000
    assert cli(["params", "--model", cfg, "--method", "apet", "--op", "add", "--match", "lora", "--json"]) == 2
    assert "--op add-weight" in capsys.readouterr().err
