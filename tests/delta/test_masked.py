import torch

from apet_ray.delta.masked import MaskedTensor
from apet_ray.delta.masks import adjacent, discrete


def test_dense_view_places_values_at_indices_and_zero_elsewhere():
    init = torch.randn(6, 5)
    for fn in (adjacent, discrete):
        idx = fn((6, 5), 9, torch.Generator().manual_seed(0))
        m = MaskedTensor((6, 5), idx, init)
        dense = m()
        mask = torch.zeros(30, dtype=torch.bool)
        mask[idx] = True
        assert torch.equal(dense.flatten()[mask], init.flatten()[mask])
        assert torch.count_nonzero(dense.flatten()[~mask]) == 0


def test_gradient_and_parameters_are_O_k():
    idx = discrete((300, 200), 60, torch.Generator().manual_seed(0))
    m = MaskedTensor((300, 200), idx, torch.zeros(300, 200))
    x = torch.randn(8, 200)
    (x @ m().T).square().sum().backward()
    assert [p.numel() for p in m.parameters()] == [60]
    assert m.values.grad.shape == (60,)
