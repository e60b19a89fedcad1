import pytest
import torch

from apet_ray.delta.masks import MASKS, adjacent, discrete, full, is_contiguous


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("shape,k", [((64, 48), 1), ((64, 48), 500), ((64, 48), 64 * 48), ((10,), 7), ((1000, 1000), 3)])
@pytest.mark.parametrize("name", ["adjacent", "discrete"])
def test_exact_count_sorted_distinct_in_range(name, shape, k):
    idx = MASKS[name](shape, k, gen())
    n = torch.Size(shape).numel()
    assert idx.dtype == torch.long and idx.numel() == k
    assert idx.unique().numel() == k
    assert torch.equal(idx, idx.sort().values)
    assert 0 <= int(idx.min()) and int(idx.max()) < n


def test_adjacent_is_contiguous_from_a_row_boundary_and_discrete_is_not():
    for seed in range(5):
        a = adjacent((64, 48), 300, gen(seed))
        assert is_contiguous(a)
        assert int(a[0]) % 48 == 0 or int(a[-1]) == 64 * 48 - 1
        d = discrete((64, 48), 300, gen(seed))
        assert not is_contiguous(d)


def test_same_seed_same_mask_other_seed_other_mask():
    for fn in (adjacent, discrete):
        assert torch.equal(fn((128, 96), 700, gen(3)), fn((128, 96), 700, gen(3)))
    assert not torch.equal(discrete((128, 96), 700, gen(3)), discrete((128, 96), 700, gen(4)))


def test_discrete_sparse_path_is_uniform_over_the_tensor():
    # k << n takes the rejection-sampling path; its picks must not favour low indices
    idx = discrete((4096, 4096), 20000, gen(0)).float()
    n = 4096 * 4096
    assert abs(idx.mean().item() / n - 0.5) < 0.01


def test_bad_counts_are_refused():
    with pytest.raises(ValueError):
        discrete((4, 4), 0, gen())
    with pytest.raises(ValueError):
        adjacent((4, 4), 17, gen())
    with pytest.raises(ValueError):
        full((4, 4), 15, gen())
