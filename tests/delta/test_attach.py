import pytest
import torch

from apet_ray.delta import DeltaSpec, attach, count_backbone, count_deltas, count_trainable, make_plan
from apet_ray.delta.layers import DeltaLinear
from apet_ray.errors import UserError
from support import tiny_bert, tiny_classifier, tiny_seq2seq, tiny_t5

# closed-form counts for the conftest configs (d=32, d_ff=48, 2 layers; T5: 2+2 blocks)
EXPECTED = {
    ("bert", "lora"): 2 * 2 * 8 * (32 + 32),
    ("bert", "adapter"): 2 * 2 * (2 * 32 * 24 + 24 + 32),
    ("bert", "prompt"): 100 * 32,
    ("bert", "bitfit_all"): 2 * (4 * 32 + 48 + 32 + 2 * 32) + 32,  # linears + block norms + embedding norm
    ("bert", "bitfit"): 2 * (4 * 32 + 32 + 2 * 32) + 32,  # the paper's: all but the FFN's first layer
    ("t5", "lora"): 4 * 2 * 8 * (32 + 32),  # self-attention only, encoder and decoder
    ("t5", "adapter"): 4 * 2 * (2 * 32 * 24 + 24 + 32),
    ("t5", "prompt"): 100 * 32,  # counted once, encoder input
    ("t5", "bitfit_all"): 2 * (4 * 32 + 2 * 48 + 32) + 2 * (8 * 32 + 2 * 48 + 32),  # added zero biases on linears
    # the release's: those, the LM head's (vocab 120: no tokenizer rows to drop), two relative-position
    # tables (32 buckets x 4 heads) and a new one in each of the 2 decoder cross-attentions
    ("t5", "bitfit"): 2 * (4 * 32 + 2 * 48 + 32) + 2 * (8 * 32 + 2 * 48 + 32) + 120 + 2 * 32 * 4 + 2 * 32 * 4,
}


def wrapped(family):
    return tiny_classifier() if family == "bert" else tiny_seq2seq()


@torch.no_grad()  # autograd can change ATen's matmul folding, hence the last bit
def logits(model, batch):
    return model(**batch)["logits"]


@pytest.mark.parametrize("family,method", sorted(EXPECTED))
def test_pet_counts_match_closed_form(family, method):
    model = wrapped(family)
    plan = attach(model, DeltaSpec.pet(method))
    assert plan.count == count_deltas(model) == EXPECTED[family, method]


def test_full_fine_tuning_trains_every_backbone_weight_once():
    model = tiny_seq2seq()  # T5 ties its embeddings: the shared table counts once
    attach(model, DeltaSpec.pet("ft"))
    assert count_deltas(model) == count_backbone(model) == sum(p.numel() for p in model.backbone.parameters())


def test_head_is_trainable_and_counted_apart_from_the_deltas():
    model = tiny_classifier()
    attach(model, DeltaSpec.pet("lora"))
    assert count_trainable(model) == count_deltas(model) + 32 * 2 + 2


@pytest.mark.parametrize("family", ["bert", "t5"])
@pytest.mark.parametrize("method", ["lora", "adapter", "bitfit"])
def test_zero_initialised_deltas_leave_outputs_unchanged(family, method, batch):
    if family == "t5":
        batch = {**batch, "labels": batch["input_ids"][:, :3].contiguous()}
    model = wrapped(family)
    before = logits(model, batch)
    attach(model, DeltaSpec.pet(method))
    assert torch.equal(logits(model, batch), before)


@pytest.mark.parametrize("op", ["add-weight", "concat", "plugin"])
@pytest.mark.parametrize("distribution", ["adjacent", "discrete"])
def test_apet_zero_init_leaves_outputs_unchanged(op, distribution, batch):
    model = tiny_classifier()
    before = logits(model, batch)
    attach(model, DeltaSpec.apet(op, distribution, budget=1000))
    assert torch.equal(logits(model, batch), before)


@pytest.mark.parametrize("family", ["bert", "t5"])
@pytest.mark.parametrize("op", ["add-weight", "concat", "plugin"])
@pytest.mark.parametrize("distribution", ["adjacent", "discrete"])
@pytest.mark.parametrize("target", [1, 2, 37, 8000, "lora", "adapter", "bitfit", "prompt"])
def test_apet_hits_the_budget_exactly(family, op, distribution, target):
    model = wrapped(family)
    if op == "concat" and target == 1:  # one value cannot feed both factors of a low-rank pair
        with pytest.raises(UserError, match="too small"):
            attach(model, DeltaSpec.apet(op, distribution, budget=1))
        return
    kw = {"match": target} if isinstance(target, str) else {"budget": target}
    plan = attach(model, DeltaSpec.apet(op, distribution, **kw))
    expected = EXPECTED[family, target] if isinstance(target, str) else target
    assert plan.requested == count_deltas(model) == expected
    # the masks themselves hold exactly that many trainable entries
    assert sum(m.values.numel() for m in model.modules() if hasattr(m, "indices")) == expected


def test_apet_adjacent_and_discrete_layouts():
    for distribution, contiguous in (("adjacent", True), ("discrete", False)):
        model = tiny_bert()
        attach(model, DeltaSpec.apet("add-weight", distribution, budget=600))
        layers = [m for m in model.modules() if isinstance(m, DeltaLinear) and m.weight_delta is not None]
        assert layers and all((m.weight_delta.run_start is not None) == contiguous for m in layers if m.weight_delta.k > 1)


def test_same_seed_same_masks_other_seed_other_masks():
    def masks(seed):
        model = tiny_bert()
        attach(model, DeltaSpec.apet("add-weight", "discrete", budget=500, seed=seed))
        return [b.clone() for n, b in model.named_buffers() if n.endswith("indices")]

    assert all(torch.equal(a, b) for a, b in zip(masks(0), masks(0)))
    assert not all(torch.equal(a, b) for a, b in zip(masks(0), masks(1)))


@pytest.mark.parametrize("kwargs,message", [
    (dict(op="add", budget=10**9), "larger than the capacity"),
    (dict(op="concat", budget=10**9), "can hold"),
    (dict(op="add", budget=0), "positive"),
    (dict(op="add", budget=-5), "positive"),
    (dict(op="add", budget=12.5), "whole number"),
    (dict(op="add", budget=True), "whole number"),
    (dict(op="add"), "--budget N or --match"),
    (dict(op="add", budget=10, match="lora"), "either"),
    (dict(op="add", match="nope"), "unknown method"),
    (dict(op="glue", budget=10), "unknown op"),
    (dict(op="add", distribution="sideways", budget=10), "unknown distribution"),
    (dict(op="add", budget=10, positions=("nowhere",)), "unknown position"),
    (dict(op="plugin", budget=10, positions=("embeddings",)), "plugin cannot"),
])
def test_impossible_specs_are_refused_with_a_reason(kwargs, message):
    with pytest.raises(UserError, match=message):
        attach(tiny_bert(), DeltaSpec.apet(**kwargs))


def test_unknown_pet_method_and_unsupported_family():
    with pytest.raises(UserError, match="unknown method"):
        DeltaSpec.pet("dora")
    from transformers import GPT2Config, GPT2Model, GPTNeoXConfig, GPTNeoXModel
    with pytest.raises(UserError, match="not supported"):
        make_plan(GPTNeoXModel(GPTNeoXConfig(num_hidden_layers=1, hidden_size=8, num_attention_heads=2,
                                             intermediate_size=16)), DeltaSpec.pet("lora"))
    # a known family in another class's layout (the bare transformer, not its LM) is named, not a traceback
    with pytest.raises(UserError, match="gpt2 model has no transformer.h: apet-ray expects AutoModelForCausalLM"):
        make_plan(GPT2Model(GPT2Config(n_layer=1, n_embd=8, n_head=2)), DeltaSpec.pet("lora"))


def test_meta_device_counts_equal_real_counts():
    for spec in (DeltaSpec.pet("lora"), DeltaSpec.apet("plugin", "discrete", match="lora")):
        real = tiny_t5()
        with torch.device("meta"):
            meta = tiny_t5()
        attach(real, spec), attach(meta, spec)
        assert count_deltas(real) == count_deltas(meta) and count_backbone(real) == count_backbone(meta)
