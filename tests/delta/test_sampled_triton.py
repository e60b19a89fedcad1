"""The Triton sampled kernel == (dY^T @ X) at the mask, on a GPU and through Triton's
interpreter on the CPU (the same kernel source, run block by block in NumPy).

Triton reads ``TRITON_INTERPRET`` when it is imported, so the interpreter cases run in one
child process that sets it first and reports each case's error against an fp64 reference.
Skipped where Triton is not installed (it is in the ``[test]`` and ``[gpu]`` extras); the
CUDA cases are skipped without a GPU.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from apet_ray.delta import functional, sampled_triton

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")

# tokens not a multiple of BLOCK_T, entries not a multiple of BLOCK_E, FFN-shaped weights
CASES = [(300, (384, 384), 2e-3, "float32"), (129, (1536, 384), 5e-4, "float32"), (7, (7, 5), 0.5, "float32"),
         (1, (1, 37), 1.0, "float32"), (257, (37, 1), 0.3, "float32"),
         (200, (96, 384), 1e-2, "bfloat16"), (200, (96, 384), 1e-2, "float16")]

CHILD = r"""
import json, sys
import torch
from apet_ray.delta import functional, sampled_triton
from apet_ray.delta.functional import masked_add_linear
from apet_ray.delta.masks import discrete

def mask(shape, density, seed=0):
    k = max(1, round(density * shape[0] * shape[1]))
    return discrete(shape, k, torch.Generator().manual_seed(seed))

def error(out, ref):  # relative to the largest entry: a dot product that cancels has only absolute accuracy
    return float((out.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30))

report = {"available_on_cpu": sampled_triton.available("cpu"), "cases": []}
for tokens, shape, density, dtype in json.loads(sys.argv[1]):
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(tokens, shape[0], generator=gen).to(getattr(torch, dtype))
    x = torch.randn(tokens, shape[1], generator=gen).to(g.dtype)
    indices = mask(tuple(shape), density)
    out = sampled_triton.sampled_dots(g, x, indices)
    ref = (g.double().T @ x.double()).view(-1)[indices]
    report["cases"].append({"dtype": str(out.dtype), "shape": list(out.shape) == list(ref.shape), "error": error(out, ref)})

g = torch.ones(10, 6)
report["empty"] = sampled_triton.sampled_dots(g, torch.ones(10, 4), torch.empty(0, dtype=torch.int64)).numel()
refused = []
for a, b, idx in ((g, torch.ones(10, 4), [24]), (g.double(), torch.ones(10, 4).double(), [0])):
    try:
        sampled_triton.sampled_dots(a, b, torch.tensor(idx))
    except (IndexError, ValueError) as exc:
        refused.append(type(exc).__name__)
report["refused"] = refused

# through the autograd Function, on the path a GPU takes
calls = []
real = sampled_triton.sampled_dots
sampled_triton.sampled_dots = lambda g, *a: calls.append(str(g.dtype)) or real(g, *a)
functional.values_grad_path = lambda *_: "triton"
shape = (96, 384)
indices = mask(shape, 2e-3)
gen = torch.Generator().manual_seed(1)
x = torch.randn(4, 50, shape[1], generator=gen, requires_grad=True)
weight, bias = torch.randn(shape, generator=gen), torch.randn(shape[0], generator=gen)
values = torch.randn(indices.numel(), generator=gen, requires_grad=True)
grad_out = torch.randn(4, 50, shape[0], generator=gen)
masked_add_linear(x, weight, bias, values, indices, None).backward(grad_out)
exact = (grad_out.double().reshape(-1, shape[0]).T @ x.detach().double().reshape(-1, shape[1])).view(-1)[indices]
report["layer"] = {"calls": calls, "error": error(values.grad, exact)}
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def interpreted() -> dict:
    env = {**os.environ, "TRITON_INTERPRET": "1", "APET_RAY_SAMPLED_KERNEL": "auto"}
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(CASES)], capture_output=True, text=True, env=env,
                          timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", range(len(CASES)), ids=lambda i: "{}x{}-{}-{}".format(*CASES[i][1], CASES[i][0], CASES[i][3]))
def test_matches_the_fp64_reference_in_the_interpreter(interpreted, case):
    assert interpreted["available_on_cpu"]
    seen = interpreted["cases"][case]
    # fp32 sums; bf16 / fp16 inputs are multiplied exactly and summed in fp32 as well
    assert seen["dtype"] == "torch.float32" and seen["shape"] and seen["error"] < 1e-5, seen


def test_no_entries_and_refusals(interpreted):
    assert interpreted["empty"] == 0
    assert interpreted["refused"] == ["IndexError", "ValueError"]  # an index past the weight; fp64


def test_masked_add_linear_takes_it_where_chosen(interpreted):
    assert interpreted["layer"]["calls"] == ["torch.float32"] and interpreted["layer"]["error"] < 1e-5


def test_a_gpu_chooses_it_where_the_gathers_ran(monkeypatch):
    n = 384 * 384
    path = functional.values_grad_path
    monkeypatch.setattr(sampled_triton, "available", lambda device_type="cuda": device_type == "cuda")
    assert path(100, n, torch.bfloat16, "cuda", 2, True) == "triton"
    assert path(100, n, torch.float64, "cuda", 2, True) == "gather"  # it sums in fp32
    assert path(100, n, torch.float32, "cuda", 2, False) == "gather"  # a graph of the gradient wanted
    assert path(int(functional.CUDA_GATHER_MAX_DENSITY * n) + 1, n, torch.float32, "cuda", 2, True) == "full"
    monkeypatch.setattr(sampled_triton, "available", lambda device_type="cuda": False)
    assert path(100, n, torch.float32, "cuda", 2, True) == "gather"


def test_off_holds_it_off_and_the_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("APET_RAY_SAMPLED_KERNEL", "off")
    assert not sampled_triton.available("cuda") and not sampled_triton.available("cpu")
    monkeypatch.setenv("APET_RAY_SAMPLED_KERNEL", "auto")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert not sampled_triton.available("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("case", range(len(CASES)))
def test_on_the_gpu(case):
    from apet_ray.delta.masks import discrete

    tokens, shape, density, dtype = CASES[case]
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(tokens, shape[0], generator=gen).to(getattr(torch, dtype)).cuda()
    x = torch.randn(tokens, shape[1], generator=gen).to(g.dtype).cuda()
    k = max(1, round(density * shape[0] * shape[1]))
    indices = discrete(shape, k, torch.Generator().manual_seed(0)).cuda()
    out = sampled_triton.sampled_dots(g, x, indices)
    ref = (g.double().T @ x.double()).view(-1)[indices]
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
