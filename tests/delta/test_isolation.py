"""Only the k trainable values move: frozen weights and masked-out entries are bit-identical
after AdamW with weight decay."""

import pytest
import torch

from apet_ray.delta import DeltaSpec, attach, trainable_state_dict
from apet_ray.delta.masked import MaskedTensor
from support import tiny_classifier


@pytest.mark.parametrize("op", ["add-weight", "concat", "plugin"])
@pytest.mark.parametrize("distribution", ["adjacent", "discrete"])
def test_adamw_with_weight_decay_moves_only_the_masked_values(op, distribution, batch):
    model = tiny_classifier().train()
    attach(model, DeltaSpec.apet(op, distribution, budget=700, seed=3))
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    masks = {n: m for n, m in model.named_modules() if isinstance(m, MaskedTensor)}
    dense_before = {n: m().detach().clone() for n, m in masks.items()}
    values_before = {n: m.values.detach().clone() for n, m in masks.items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.5)
    labels = torch.tensor([0, 1, 1])
    for _ in range(5):
        opt.zero_grad()
        model(**batch, labels=labels)["loss"].backward()
        opt.step()

    for n, p in model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, frozen[n]), n
    moved = 0
    for n, m in masks.items():
        outside = torch.ones(m.numel_dense, dtype=torch.bool)
        outside[m.indices] = False
        after = m().detach().flatten()
        assert torch.equal(after[outside], dense_before[n].flatten()[outside]), n  # masked-out stays put
        moved += int((m.values != values_before[n]).sum())
    assert moved > 0.5 * sum(m.k for m in masks.values())
    # the optimizer only ever saw O(k) tensors: no state of dense shape
    for state in opt.state.values():
        for t in state.values():
            if torch.is_tensor(t) and t.dim():
                assert t.dim() == 1 or t.shape == (2, 32)  # 1-D values, or the classifier head
    assert set(trainable_state_dict(model)) >= {f"{n}.values" for n in masks}
