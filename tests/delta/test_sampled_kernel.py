"""The compiled sampled-gradient kernel == (dY^T @ X) at the mask, and its fallback.

The kernel tests skip where the extension cannot be built (no compiler, no ninja, or
APET_RAY_SAMPLED_KERNEL=off); the fallback tests run everywhere. The first test to need the
kernel builds it (about 40 s, then cached under ~/.cache/apet-ray/extensions).
"""

import math

import pytest
import torch
import torch.nn.functional as F

from apet_ray.delta import functional, sampled_kernel, sampled_triton
from apet_ray.delta.functional import masked_add_linear
from apet_ray.delta.masks import discrete

FP32 = {"rtol": 1e-5}


@pytest.fixture(scope="module")
def kernel() -> sampled_kernel.KernelState:
    st = sampled_kernel.state()
    if not st.available:
        pytest.skip(f"sampled kernel unavailable: {st.reason}")
    return st


@pytest.fixture
def fallback(monkeypatch) -> None:
    """This test sees a process whose kernel is switched off (the real state comes back after)."""
    monkeypatch.setenv(sampled_kernel.ENV_VAR, "off")
    monkeypatch.setattr(sampled_kernel, "_state", None)


def dense_reference(g: torch.Tensor, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    return (g.double().T @ x.double()).view(-1)[indices]


def assert_matches(out: torch.Tensor, ref: torch.Tensor, rtol: float) -> None:
    # relative to the largest entry: a dot product that cancels to ~0 has only absolute accuracy
    scale = ref.abs().max().item() if ref.numel() else 1.0
    torch.testing.assert_close(out.double(), ref, rtol=rtol, atol=rtol * max(scale, 1e-30))


def operands(tokens: int, out_f: int, in_f: int, dtype=torch.float32, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(tokens, out_f, generator=gen).to(dtype)
    x = torch.randn(tokens, in_f, generator=gen).to(dtype)
    return g, x


def mask(shape: tuple[int, int], density: float, seed: int = 0) -> torch.Tensor:
    k = max(1, round(density * shape[0] * shape[1]))
    return discrete(shape, k, torch.Generator().manual_seed(seed))


# (out_f, in_f): MiniLM's attention and both FFN weights, and odd small ones
SHAPES = [(384, 384), (1536, 384), (384, 1536), (7, 5), (1, 37), (37, 1), (3, 200)]
DENSITIES = [5e-4, 2e-3, 1e-2, 5e-2]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("density", DENSITIES)
def test_fp32_matches_the_dense_reference(kernel, shape, density):
    indices = mask(shape, density)
    g, x = operands(1000, *shape)  # 1000 tokens: no multiple of any tile
    out = sampled_kernel.sampled_dots(g, x, indices)
    assert out.dtype == torch.float32 and out.shape == indices.shape
    assert_matches(out, dense_reference(g, x, indices), **FP32)


@pytest.mark.parametrize("shape", [(384, 384), (1536, 384), (7, 5)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("density", [5e-4, 1e-2, 5e-2])
def test_bf16_inputs_accumulate_in_fp32(kernel, shape, density):
    indices = mask(shape, density)
    g, x = operands(777, *shape)
    g16, x16 = g.bfloat16(), x.bfloat16()
    out = sampled_kernel.sampled_dots(g16, x16, indices)
    assert out.dtype == torch.float32
    # exact products of the bf16 inputs, summed in fp32: as tight as fp32 inputs
    assert_matches(out, dense_reference(g16, x16, indices), rtol=1e-5)
    # and within bf16's input rounding of the unrounded operands
    assert_matches(out, dense_reference(g, x, indices), rtol=3e-2)


def test_fp16_and_fp64(kernel):
    indices = mask((384, 384), 1e-2)
    g, x = operands(300, 384, 384, torch.float64)
    out64 = sampled_kernel.sampled_dots(g, x, indices)
    assert out64.dtype == torch.float64
    assert_matches(out64, dense_reference(g, x, indices), rtol=1e-12)
    out16 = sampled_kernel.sampled_dots(g.half(), x.half(), indices)
    assert out16.dtype == torch.float32
    assert_matches(out16, dense_reference(g.half(), x.half(), indices), rtol=1e-5)


@pytest.mark.parametrize("tokens", [1, 7, 8, 9, 63, 257, 4096])
@pytest.mark.parametrize("block", [0, 16, 40])
def test_token_counts_and_tiles_that_do_not_divide(kernel, tokens, block):
    indices = mask((384, 384), 1e-2)
    g, x = operands(tokens, 384, 384)
    out = sampled_kernel.sampled_dots(g, x, indices, block)
    assert_matches(out, dense_reference(g, x, indices), **FP32)


def shaped_masks() -> dict[str, tuple[tuple[int, int], torch.Tensor]]:
    one_row = 5 * 300 + torch.arange(0, 300, 7)  # all entries in row 5
    sparse_rows = torch.tensor([3, 4, 5, 2 * 300 + 299, 250 * 300, 250 * 300 + 1, 299 * 300 + 299])  # most rows empty
    return {
        "k=1": ((384, 384), torch.tensor([384 * 200 + 17])),
        "first and last entry": ((384, 1536), torch.tensor([0, 384 * 1536 - 1])),
        "one row": ((300, 300), one_row),
        "one column": ((300, 300), torch.arange(0, 300) * 300 + 11),
        "rows with no entries": ((300, 300), sparse_rows),
        "every entry": ((7, 5), torch.arange(35)),
        "1 x 1": ((1, 1), torch.tensor([0])),
        "no entries": ((9, 4), torch.tensor([], dtype=torch.int64)),
    }


@pytest.mark.parametrize("name", list(shaped_masks()))
@pytest.mark.parametrize("threads", [1, 2])
def test_mask_shapes_and_thread_counts(kernel, name, threads):
    shape, indices = shaped_masks()[name]
    g, x = operands(515, *shape)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = sampled_kernel.sampled_dots(g, x, indices)
        again = sampled_kernel.sampled_dots(g, x, indices)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(out, again)  # a fixed order of sums for a fixed thread count
    assert_matches(out, dense_reference(g, x, indices), **FP32)


def test_strided_operands(kernel):
    """Backward hands over what autograd has: an expanded (stride-0) gradient from .sum(),
    or a transposed view."""
    indices = mask((64, 48), 5e-2)
    g = torch.ones(1, 64).expand(200, 64)
    x = torch.randn(48, 200).t()
    out = sampled_kernel.sampled_dots(g, x, indices)
    assert_matches(out, dense_reference(g, x, indices), **FP32)


def test_refuses_unsorted_or_out_of_range_indices(kernel):
    g, x = operands(10, 6, 4)
    with pytest.raises(RuntimeError, match="strictly increasing"):
        sampled_kernel.sampled_dots(g, x, torch.tensor([5, 3]))
    with pytest.raises(RuntimeError, match="strictly increasing"):
        sampled_kernel.sampled_dots(g, x, torch.tensor([3, 3]))
    with pytest.raises(RuntimeError, match="outside"):
        sampled_kernel.sampled_dots(g, x, torch.tensor([24]))
    with pytest.raises(RuntimeError, match="dtype"):
        sampled_kernel.sampled_dots(g, x.double(), torch.tensor([1]))


# --- through masked_add_linear ---------------------------------------------------------

def reference(x, weight, bias, values, indices):
    dense = values.new_zeros(weight.numel()).scatter(0, indices, values).view(weight.shape)
    return F.linear(x, weight + dense.to(weight.dtype), bias)


def layer_inputs(shape, k, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 50, shape[1], generator=gen, dtype=dtype)
    weight = torch.randn(shape, generator=gen, dtype=dtype)
    bias = torch.randn(shape[0], generator=gen, dtype=dtype)
    values = torch.randn(k, generator=gen, dtype=dtype)
    grad_out = torch.randn(4, 50, shape[0], generator=gen, dtype=dtype)
    return x, weight, bias, values, grad_out


def grads(fn, x, weight, bias, values, grad_out, indices):
    x, values = x.detach().requires_grad_(True), values.detach().requires_grad_(True)
    y = fn(x, weight, bias, values, indices)
    y.backward(grad_out.to(y.dtype))
    return y.detach(), x.grad, values.grad


@pytest.fixture
def kernel_calls(monkeypatch) -> list[torch.dtype]:
    """The dtypes the kernel was called with, in order."""
    calls: list[torch.dtype] = []
    real = sampled_kernel.sampled_dots
    monkeypatch.setattr(sampled_kernel, "sampled_dots", lambda g, *a, **kw: calls.append(g.dtype) or real(g, *a, **kw))
    return calls


@pytest.mark.parametrize("shape", [(384, 384), (96, 384), (7, 5)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("density", [5e-4, 1e-2, 8e-2])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_masked_add_linear_takes_the_kernel_and_matches(kernel, kernel_calls, shape, density, dtype):
    indices = mask(shape, density)
    inputs = layer_inputs(shape, indices.numel(), dtype)
    ours = grads(lambda *a: masked_add_linear(*a, None), *inputs, indices)
    assert kernel_calls == [dtype]
    ref = grads(reference, *inputs, indices)
    tol = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-4}
    for a, b, what in zip(ours, ref, ("y", "x.grad", "values.grad")):
        assert a.dtype == b.dtype, what
        torch.testing.assert_close(a, b, **tol, msg=what)


def test_masked_add_linear_under_bf16_autocast(kernel, kernel_calls):
    shape = (384, 384)
    indices = mask(shape, 1e-2)
    inputs = layer_inputs(shape, indices.numel())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = grads(lambda *a: masked_add_linear(*a, None), *inputs, indices)
    assert kernel_calls == [torch.bfloat16]
    exact = grads(reference, *(t.double() for t in inputs), indices)
    assert ours[2].dtype == torch.float32
    # the kernel sums the bf16 products in fp32: the values gradient is as close as bf16's
    # rounding of dY and X allows
    scale = exact[2].abs().max()
    torch.testing.assert_close(ours[2].double(), exact[2], rtol=3e-2, atol=3e-2 * scale)


def test_bf16_params_as_under_fsdp2_mixed_precision(kernel, kernel_calls):
    shape = (96, 384)
    indices = mask(shape, 1e-2)
    x, weight, bias, values, grad_out = layer_inputs(shape, indices.numel())
    master = values.clone().requires_grad_(True)
    x16 = x.bfloat16().requires_grad_(True)
    y = masked_add_linear(x16, weight.bfloat16(), bias.bfloat16(), master.bfloat16(), indices, None)
    y.backward(grad_out.bfloat16())
    assert kernel_calls == [torch.bfloat16] and master.grad.dtype == torch.float32
    exact = grads(reference, x.double(), weight.double(), bias.double(), values.double(), grad_out.double(), indices)
    torch.testing.assert_close(master.grad.double(), exact[2], rtol=3e-2, atol=3e-2 * exact[2].abs().max())


def test_gradcheck_through_the_kernel(kernel, kernel_calls):
    shape = (12, 10)
    indices = mask(shape, 5e-2)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, shape[1], generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(shape, generator=gen, dtype=torch.float64)
    values = torch.randn(indices.numel(), generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, v: masked_add_linear(x, weight, None, v, indices, None), (x, values))
    assert kernel_calls


def test_not_above_the_density_cutoff_nor_for_a_gradient_graph_or_unsorted_indices(kernel, kernel_calls):
    n = 384 * 384
    path = functional.values_grad_path
    assert path(int(functional.KERNEL_MAX_DENSITY * n), n, torch.float32, "cpu", 2, True) == "kernel"
    assert path(int(functional.KERNEL_MAX_DENSITY * n) + 1, n, torch.float32, "cpu", 2, True) == "full"
    assert path(int(functional.KERNEL_MAX_DENSITY_LOW_PRECISION * n), n, torch.bfloat16, "cpu", 2, True) == "kernel"
    assert path(int(functional.KERNEL_MAX_DENSITY_LOW_PRECISION * n) + 1, n, torch.bfloat16, "cpu", 2, True) == "full"
    assert path(100, n, torch.float32, "cpu", 2, False) == "gather"  # as measured without it
    assert path(100, n, torch.float32, "cuda", 2, True) == ("triton" if sampled_triton.available("cuda") else "gather")

    shape = (12, 10)
    indices = mask(shape, 5e-2)
    x, weight, bias, values, grad_out = layer_inputs(shape, indices.numel(), torch.float64)
    x, values = x.requires_grad_(True), values.requires_grad_(True)
    y = masked_add_linear(x, weight, bias, values, indices, None)
    (gv,) = torch.autograd.grad(y, values, grad_out, create_graph=True)  # a graph to differentiate again
    assert gv.requires_grad and not kernel_calls
    unsorted = indices.flip(0)
    y = masked_add_linear(x, weight, bias, values, unsorted, None)
    (gv,) = torch.autograd.grad(y, values, grad_out)
    assert not kernel_calls
    ref = grads(reference, x, weight, bias, values, grad_out, unsorted)[2]
    torch.testing.assert_close(gv, ref, rtol=1e-12, atol=1e-12)


# --- the fallback: runs with or without a compiler ------------------------------------

def test_off_takes_pytorchs_paths_with_the_same_result(fallback, capsys):
    shape = (96, 384)
    indices = mask(shape, 1e-2)
    inputs = layer_inputs(shape, indices.numel(), torch.float64)
    ours = grads(lambda *a: masked_add_linear(*a, None), *inputs, indices)
    again = grads(lambda *a: masked_add_linear(*a, None), *inputs, indices)
    st = sampled_kernel.state()
    assert not st.available and st.reason == "APET_RAY_SAMPLED_KERNEL=off"
    assert functional.values_grad_path(indices.numel(), math.prod(shape), torch.float64, "cpu", 2, True) == "full"
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["apet-ray: sparse weight delta gradients use PyTorch's gathered/dense paths: "
                     "APET_RAY_SAMPLED_KERNEL=off"]  # once per process, not per backward
    ref = grads(reference, *inputs, indices)
    for a, b, c in zip(ours, again, ref):
        assert torch.equal(a, b)
        torch.testing.assert_close(a, c, rtol=1e-12, atol=1e-12)
    with pytest.raises(RuntimeError, match="PyTorch's gathered/dense paths"):
        sampled_kernel.sampled_dots(torch.ones(2, 2), torch.ones(2, 2), torch.tensor([0]))


def test_kernel_and_fallback_agree(fallback, monkeypatch):
    shape = (384, 384)
    indices = mask(shape, 2e-3)
    inputs = layer_inputs(shape, indices.numel())
    without = grads(lambda *a: masked_add_linear(*a, None), *inputs, indices)
    monkeypatch.delenv(sampled_kernel.ENV_VAR)
    sampled_kernel.reset()
    if not sampled_kernel.available():
        pytest.skip(f"sampled kernel unavailable: {sampled_kernel.state().reason}")
    with_kernel = grads(lambda *a: masked_add_linear(*a, None), *inputs, indices)
    for a, b in zip(with_kernel, without):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


def test_no_compiler_falls_back_or_fails_when_required(fallback, monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-apet-ray")
    monkeypatch.setenv(sampled_kernel.ENV_VAR, "auto")
    st = sampled_kernel.state()
    assert not st.available and st.reason == "CXX=no-such-compiler-apet-ray not found"
    assert "use PyTorch's gathered/dense paths: CXX=" in st.describe()
    monkeypatch.setenv(sampled_kernel.ENV_VAR, "on")
    sampled_kernel.reset()
    with pytest.raises(RuntimeError, match="APET_RAY_SAMPLED_KERNEL=on but the sampled kernel is unavailable"):
        sampled_kernel.state()
    monkeypatch.setenv(sampled_kernel.ENV_VAR, "sometimes")
    with pytest.raises(ValueError, match="expected one of auto, on, off"):
        sampled_kernel.state()


def test_build_directory_is_per_torch_and_source_under_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    a, b = sampled_kernel.build_directory(b"one source"), sampled_kernel.build_directory(b"another")
    assert a.parent == tmp_path / "apet-ray" / "extensions" and a != b
    assert a.name.startswith(f"{torch.__version__}-")
    assert sampled_kernel.build_directory(b"one source") == a


def test_disabled_holds_the_kernel_off_inside_only():
    before = sampled_kernel.available()
    with sampled_kernel.disabled():
        assert not sampled_kernel.available()
        with sampled_kernel.disabled():
            assert not sampled_kernel.available()
        assert not sampled_kernel.available()
    assert sampled_kernel.available() == before
