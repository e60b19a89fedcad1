"""masked_add_linear == the plain autograd reference F.linear(x, W + scatter(values), b)."""

import pytest
import torch
import torch.nn.functional as F

from apet_ray.delta import functional
from apet_ray.delta.functional import masked_add_linear
from apet_ray.delta.layers import DeltaLinear
from apet_ray.delta.masked import MaskedTensor
from apet_ray.delta.masks import adjacent, discrete, full, is_contiguous

SHAPE = (12, 10)  # out x in
NUMEL = SHAPE[0] * SHAPE[1]
TOL = {torch.float64: {"rtol": 1e-12, "atol": 1e-12}, torch.float32: {"rtol": 1e-5, "atol": 1e-5}}


def make_indices(kind: str, k: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if kind == "full":
        return full(SHAPE, NUMEL, gen)
    return (adjacent if kind == "adjacent" else discrete)(SHAPE, k, gen)


def run_start(indices: torch.Tensor) -> int | None:
    return int(indices[0]) if is_contiguous(indices) else None


def reference(x, weight, bias, values, indices):
    dense = values.new_zeros(weight.numel()).scatter(0, indices, values).view(weight.shape)
    return F.linear(x, weight + dense.to(weight.dtype), bias)


def inputs(dtype, k, seed=0, x_grad=True):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 5, SHAPE[1], generator=gen, dtype=dtype).requires_grad_(x_grad)
    weight = torch.randn(SHAPE, generator=gen, dtype=dtype)
    bias = torch.randn(SHAPE[0], generator=gen, dtype=dtype)
    values = torch.randn(k, generator=gen, dtype=dtype).requires_grad_(True)
    grad_out = torch.randn(3, 5, SHAPE[0], generator=gen, dtype=dtype)
    return x, weight, bias, values, grad_out


def forward_backward(fn, x, weight, bias, values, grad_out, indices):
    x, values = x.detach().requires_grad_(x.requires_grad), values.detach().requires_grad_(True)
    y = fn(x, weight, bias, values, indices)
    y.backward(grad_out)
    return y.detach(), x.grad, values.grad


CASES = [("adjacent", k) for k in (1, 7, 10, 25, 60, NUMEL - 3)] + \
        [("discrete", k) for k in (1, 2, 7, 25, 60, NUMEL - 3)] + [("full", NUMEL)]


def use_path(monkeypatch, path):
    """Discrete masks form the values gradient three ways (gathered dot products, a sampled
    dense-dense product, or gathered from the full weight gradient); force one of them."""
    if path is not None:
        monkeypatch.setattr(functional, "values_grad_path", lambda *_: path)


DISCRETE_PATHS = ("gather", "sddmm", "full")


def with_paths(cases):
    return [(kind, k, path) for kind, k in cases
            for path in (DISCRETE_PATHS if kind == "discrete" and k > 1 else (None,))]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind,k,path", with_paths(CASES))
def test_matches_reference(kind, k, path, dtype, monkeypatch):
    use_path(monkeypatch, path)
    indices = make_indices(kind, k)
    assert (run_start(indices) is not None) == (kind != "discrete" or k == 1)
    x, weight, bias, values, grad_out = inputs(dtype, indices.numel())
    ours = forward_backward(lambda *a: masked_add_linear(*a, run_start(indices)), x, weight, bias, values, grad_out, indices)
    ref = forward_backward(reference, x, weight, bias, values, grad_out, indices)
    for a, b, what in zip(ours, ref, ("y", "x.grad", "values.grad")):
        assert a.dtype == b.dtype, what
        torch.testing.assert_close(a, b, **TOL[dtype], msg=what)


def test_gather_path_chunks(monkeypatch):
    use_path(monkeypatch, "gather")
    monkeypatch.setattr(functional, "_SAMPLED_CHUNK_ELEMENTS", 16)  # 15 tokens: one entry a chunk
    indices = make_indices("discrete", 40)
    x, weight, bias, values, grad_out = inputs(torch.float64, 40)
    ours = forward_backward(lambda *a: masked_add_linear(*a, None), x, weight, bias, values, grad_out, indices)
    ref = forward_backward(reference, x, weight, bias, values, grad_out, indices)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


@pytest.mark.parametrize("kind,k,path", with_paths([("adjacent", 1), ("adjacent", 25), ("discrete", 1), ("discrete", 25), ("full", NUMEL)]))
def test_gradcheck_all_inputs(kind, k, path, monkeypatch):
    use_path(monkeypatch, path)
    indices = make_indices(kind, k)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, SHAPE[1], generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(SHAPE, generator=gen, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(SHAPE[0], generator=gen, dtype=torch.float64, requires_grad=True)
    values = torch.randn(k, generator=gen, dtype=torch.float64, requires_grad=True)
    start = run_start(indices)
    assert torch.autograd.gradcheck(lambda x, w, b, v: masked_add_linear(x, w, b, v, indices, start),
                                    (x, weight, bias, values))


@pytest.mark.parametrize("kind,k", [("adjacent", 25), ("discrete", 25), ("full", NUMEL)])
def test_frozen_weight_and_bias_get_no_gradient_and_x_may_not_need_one(kind, k):
    indices = make_indices(kind, k)
    x, weight, bias, values, grad_out = inputs(torch.float64, k, x_grad=False)
    y = masked_add_linear(x, weight, bias, values, indices, run_start(indices))
    y.backward(grad_out)
    assert weight.grad is None and bias.grad is None and x.grad is None
    values_ref = values.detach().clone().requires_grad_(True)
    reference(x, weight, bias, values_ref, indices).backward(grad_out)
    torch.testing.assert_close(values.grad, values_ref.grad, **TOL[torch.float64])
    assert masked_add_linear(x, weight, None, values.detach(), indices, run_start(indices)).shape == y.shape


@pytest.mark.parametrize("kind,k", [("adjacent", 25), ("discrete", 25), ("discrete", 1), ("full", NUMEL)])
def test_zero_delta_is_bit_identical_to_the_frozen_layer(kind, k):
    indices = make_indices(kind, k)
    x, weight, bias, _, _ = inputs(torch.float32, k)
    values = torch.zeros(k, requires_grad=True)
    start = run_start(indices)
    with torch.no_grad():
        assert torch.equal(masked_add_linear(x, weight, bias, values, indices, start), F.linear(x, weight, bias))
        assert torch.equal(masked_add_linear(x, weight, None, values, indices, start), F.linear(x, weight))
    # the Function's forward always runs without grad, so the same holds with autograd on
    assert torch.equal(masked_add_linear(x, weight, bias, values, indices, start).detach(),
                       F.linear(x.detach(), weight, bias))


@pytest.mark.parametrize("kind,k,path", with_paths([("adjacent", 25), ("discrete", 2), ("discrete", 25), ("full", NUMEL)]))
def test_autocast_bf16_runs_and_gradients_are_close(kind, k, path, monkeypatch):
    use_path(monkeypatch, path)
    indices = make_indices(kind, k)
    x, weight, bias, values, grad_out = inputs(torch.float32, k)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = forward_backward(lambda *a: masked_add_linear(*a, run_start(indices)), x, weight, bias, values, grad_out, indices)
        ref = forward_backward(reference, x, weight, bias, values, grad_out, indices)
    exact = forward_backward(reference, x.double(), weight.double(), bias.double(), values.double(), grad_out.double(), indices)
    assert ours[0].dtype == torch.bfloat16 and ours[1].dtype == torch.float32 and ours[2].dtype == torch.float32
    # same casts as autocast's own path: the forward is bit-identical
    assert torch.equal(ours[0], ref[0])
    for a, b, e in zip(ours, ref, exact):
        torch.testing.assert_close(a.double(), b.double(), rtol=2e-2, atol=2e-2)
        torch.testing.assert_close(a.double(), e, rtol=5e-2, atol=5e-2)


@pytest.mark.parametrize("kind,k,path", with_paths([("adjacent", 25), ("discrete", 25)]))
def test_bf16_params_and_plain_tensor_values_as_under_fsdp2_mixed_precision(kind, k, path, monkeypatch):
    use_path(monkeypatch, path)
    """FSDP2 casts the module's params to bf16: W, b and the (unsharded, non-leaf) values."""
    indices = make_indices(kind, k)
    x, weight, bias, values, grad_out = inputs(torch.float32, k)
    master = values.detach().requires_grad_(True)  # the fp32 sharded parameter
    x16 = x.detach().bfloat16().requires_grad_(True)
    y = masked_add_linear(x16, weight.bfloat16(), bias.bfloat16(), master.bfloat16(), indices, run_start(indices))
    assert y.dtype == torch.bfloat16
    y.backward(grad_out.bfloat16())
    assert x16.grad.dtype == torch.bfloat16 and master.grad.dtype == torch.float32
    exact = forward_backward(reference, x.double(), weight.double(), bias.double(), values.double(), grad_out.double(), indices)
    for a, e in zip((y.detach(), x16.grad, master.grad), exact):
        torch.testing.assert_close(a.double(), e, rtol=5e-2, atol=8e-2)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(3, 5), (2, 3, 5)])
def test_output_can_be_modified_in_place(shape, bias):
    """As F.linear's output can (transformers scale or add to projections in place)."""
    indices = make_indices("discrete", 25)
    x, weight, b, values, _ = inputs(torch.float64, 25)
    x = torch.randn(*shape, SHAPE[1], dtype=torch.float64)
    b = b if bias else None
    grads = []
    for fn in (lambda *a: masked_add_linear(*a, None), reference):
        v = values.detach().requires_grad_(True)
        y = fn(x, weight, b, v, indices)
        y.mul_(2.0)
        y.sum().backward()
        grads.append(v.grad)
    torch.testing.assert_close(grads[0], grads[1], **TOL[torch.float64])


@pytest.mark.parametrize("kind,k", [("adjacent", 25), ("discrete", 25)])
def test_keeps_no_weight_sized_tensor_of_its_own_for_backward(kind, k):
    indices = make_indices(kind, k)
    x, weight, bias, values, _ = inputs(torch.float32, k)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        masked_add_linear(x, weight, bias, values, indices, run_start(indices))
    ptrs = {t.data_ptr() for t in saved}
    assert ptrs == {x.data_ptr(), weight.data_ptr(), values.data_ptr(), indices.data_ptr()}


@pytest.mark.parametrize("kind,k", [("adjacent", 25), ("discrete", 25)])
def test_delta_linear_uses_it(kind, k):
    indices = make_indices(kind, k)
    base = torch.nn.Linear(SHAPE[1], SHAPE[0]).double().requires_grad_(False)
    layer = DeltaLinear(base)
    layer.weight_delta = MaskedTensor(SHAPE, indices, torch.randn(SHAPE, dtype=torch.float64))
    x, _, _, _, grad_out = inputs(torch.float64, k)
    values = layer.weight_delta.values
    y = layer(x)
    assert y.grad_fn.name() == "MaskedAddLinearBackward"
    y.backward(grad_out)
    ref = forward_backward(reference, x, base.weight, base.bias, values.detach(), grad_out, indices)
    torch.testing.assert_close(y.detach(), ref[0], **TOL[torch.float64])
    torch.testing.assert_close(x.grad, ref[1], **TOL[torch.float64])
    torch.testing.assert_close(values.grad, ref[2], **TOL[torch.float64])
    assert base.weight.grad is None and base.bias.grad is None


def test_values_grad_path_follows_the_measured_crossovers():
    path = functional.values_grad_path
    n = 384 * 384
    assert path(100, n, torch.float32, "cpu", threads=2) == "gather"
    assert path(int(0.002 * n), n, torch.float32, "cpu", threads=2) == "gather"  # 0.2 %: 1.5 vs 3.9 ms
    # 0.7 %: sampled_addmm's fixed cost wins with one thread only (5.1 vs 7.4 ms; 4.0 vs 3.9 with two)
    assert path(1024, n, torch.float32, "cpu", threads=1) == "sddmm"
    assert path(1024, n, torch.float32, "cpu", threads=2) == "full"
    assert path(int(0.1 * n), n, torch.float32, "cpu", threads=1) == "full"
    # bf16 on CPU: AMX makes the dense product cheaper than any gather; no bf16 sampled_addmm
    assert path(1024, n, torch.bfloat16, "cpu") == "full"
    assert path(16, n, torch.bfloat16, "cpu") == "gather"
    assert path(200, n, torch.float32, "cuda") == "gather" and path(1024, n, torch.float32, "cuda") == "full"


def test_unsorted_indices_take_the_gather_path_and_stay_exact(monkeypatch):
    use_path(monkeypatch, "sddmm")  # CSR needs row-major order: a hand-made mask out of order must not use it
    indices = make_indices("discrete", 25).flip(0)
    x, weight, bias, values, grad_out = inputs(torch.float64, 25)
    ours = forward_backward(lambda *a: masked_add_linear(*a, None), x, weight, bias, values, grad_out, indices)
    ref = forward_backward(reference, x, weight, bias, values, grad_out, indices)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, **TOL[torch.float64])
