"""Layout-changing linear layers against ``F.linear`` + ``transpose`` in float64: values, the
gradients of input, weight and bias, the output layout, autocast, and bad arguments."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from models.projections import linear_from_channels, linear_to_channels


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def reference(kind: str, x, w, b):
    if kind == "to":
        return F.linear(x, w, b).transpose(1, 2)  # [B, L, d_in] -> [B, d_out, L]
    return F.linear(x.transpose(1, 2), w, b)  # [B, d_in, L] -> [B, L, d_out]


FUNCS = {"to": linear_to_channels, "from": linear_from_channels}


def make_inputs(kind, B, L, d_in, d_out, dtype, device="cpu", with_bias=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shape = (B, L, d_in) if kind == "to" else (B, d_in, L)
    x = torch.randn(shape, generator=gen, dtype=torch.float64).to(device, dtype)
    w = torch.randn(d_out, d_in, generator=gen, dtype=torch.float64).to(device, dtype)
    b = torch.randn(d_out, generator=gen, dtype=torch.float64).to(device, dtype)
    return x, w, (b if with_bias else None)


CASES = [
    pytest.param(1, 7, 5, 3, True, id="B1-L7-5to3"),
    pytest.param(3, 13, 11, 17, True, id="B3-L13-11to17"),
    pytest.param(2, 97, 6, 18, False, id="B2-L97-6to18-nobias"),
]


@pytest.mark.parametrize("kind", ["to", "from"])
@pytest.mark.parametrize(("B", "L", "d_in", "d_out", "with_bias"), CASES)
def test_matches_linear_fp64(kind, B, L, d_in, d_out, with_bias):
    x, w, b = make_inputs(kind, B, L, d_in, d_out, torch.float64, with_bias=with_bias)
    params = [t.requires_grad_() for t in (x, w, b) if t is not None]
    out = FUNCS[kind](x, w, b)
    assert out.is_contiguous()
    ref = reference(kind, x, w, b)
    assert out.shape == ref.shape
    assert rel_err(out, ref) < 1e-12
    dy = torch.randn_like(ref)
    grads = torch.autograd.grad(out, params, dy)
    ref_grads = torch.autograd.grad(ref, params, dy)
    for g, r in zip(grads, ref_grads, strict=True):
        assert g.shape == r.shape and g.dtype == r.dtype
        assert rel_err(g, r) < 1e-12
    # the input gradient comes back in the input's own (contiguous) layout
    assert grads[0].is_contiguous()


@pytest.mark.parametrize("kind", ["to", "from"])
def test_fp32_and_only_some_grads(kind):
    x, w, b = make_inputs(kind, 2, 19, 8, 12, torch.float32)
    w.requires_grad_()
    out = FUNCS[kind](x, w, b)
    (dw,) = torch.autograd.grad(out.square().sum(), [w])
    w64 = w.detach().double().requires_grad_()
    ref = reference(kind, x.double(), w64, b.double())
    (rw,) = torch.autograd.grad(ref.square().sum(), [w64])
    assert rel_err(out, ref) < 1e-5
    assert rel_err(dw, rw) < 1e-5


@pytest.mark.parametrize("kind", ["to", "from"])
def test_autocast_cpu_bf16(kind):
    x, w, b = make_inputs(kind, 2, 33, 16, 24, torch.float32)
    x.requires_grad_()
    w.requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = FUNCS[kind](x, w, b)
        ref = reference(kind, x, w, b)
    assert out.dtype == ref.dtype == torch.bfloat16
    assert rel_err(out, reference(kind, x.double(), w.double(), b.double())) < 1e-2
    dy = torch.randn_like(out)
    dx, dw = torch.autograd.grad(out, [x, w], dy)
    assert dx.dtype == dw.dtype == torch.float32
    x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    rx, rw = torch.autograd.grad(reference(kind, x64, w64, b.double()), [x64, w64], dy.double())
    assert rel_err(dx, rx) < 1e-2
    assert rel_err(dw, rw) < 1e-2


@pytest.mark.parametrize("used", [(0, 1, 2), (0, 2), (1,)])
def test_chunks_match_linear_fp64(used):
    """Contiguous row blocks of the output; unused blocks (no gradient) count as zeros."""
    x, w, b = make_inputs("to", 2, 11, 5, 12, torch.float64)
    params = [t.requires_grad_() for t in (x, w, b)]
    outs = linear_to_channels(x, w, b, chunks=3)
    ref = reference("to", x, w, b).chunk(3, dim=1)
    assert len(outs) == 3 and all(o.is_contiguous() for o in outs)
    for o, r in zip(outs, ref, strict=True):
        assert rel_err(o, r) < 1e-12
    dys = [torch.randn_like(ref[i]) for i in used]
    grads = torch.autograd.grad([outs[i] for i in used], params, dys)
    ref_grads = torch.autograd.grad([ref[i] for i in used], params, dys)
    for g, r in zip(grads, ref_grads, strict=True):
        assert rel_err(g, r) < 1e-12


def test_chunks_must_divide():
    x, w, b = make_inputs("to", 2, 5, 4, 6, torch.float32)
    with pytest.raises(ValueError, match="chunks must divide d_out=6; got 4"):
        linear_to_channels(x, w, b, chunks=4)


@pytest.mark.parametrize("kind", ["to", "from"])
def test_bad_arguments(kind):
    x, w, b = make_inputs(kind, 2, 5, 4, 6, torch.float32)
    f = FUNCS[kind]
    with pytest.raises(ValueError, match="3-D"):
        f(x[0], w, b)
    with pytest.raises(ValueError, match=r"weight must be \[d_out, 4\]"):
        f(x, w[:, :3], b)
    with pytest.raises(ValueError, match=r"bias must be \[6\]"):
        f(x, w, b[:5])


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["to", "from"])
def test_cuda_autocast_bf16(kind):
    x, w, b = make_inputs(kind, 3, 1000, 96, 288, torch.float32, device="cuda")
    x.requires_grad_()
    w.requires_grad_()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = FUNCS[kind](x, w, b)
    assert out.dtype == torch.bfloat16 and out.is_contiguous()
    dy = torch.randn_like(out)
    dx, dw = torch.autograd.grad(out, [x, w], dy)
    x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    ref = reference(kind, x64, w64, b.double())
    rx, rw = torch.autograd.grad(ref, [x64, w64], dy.double())
    assert rel_err(out, ref) < 1e-2
    assert rel_err(dx, rx) < 1e-2
    assert rel_err(dw, rw) < 1e-2


def _compile_devices():
    return [
        pytest.param("cpu", id="cpu"),
        pytest.param("cuda", id="cuda", marks=pytest.mark.gpu),
    ]


@pytest.mark.parametrize("device", _compile_devices())
@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
@pytest.mark.parametrize(("kind", "chunks"), [("to", None), ("to", 3), ("from", None)])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
def test_compiled_gradients_match_eager(device, backend, kind, chunks, with_bias):
    """torch.compile traces the Functions forward and backward: the gradients of every input
    match the eager ones. (A bias added in place to the forward's output once left every
    input with a zero gradient on CUDA, the forward's values unchanged.)"""
    torch._dynamo.reset()
    x, w, b = make_inputs(kind, 2, 37, 8, 12, torch.float32, device=device, with_bias=with_bias)
    params = [t.requires_grad_() for t in (x, w, b) if t is not None]

    def f(x, w, b):
        if chunks is None:
            return FUNCS[kind](x, w, b)
        return torch.cat(linear_to_channels(x, w, b, chunks=chunks), dim=1)

    gen = torch.Generator(device).manual_seed(1)
    dy = None
    grads = []
    for fn in (f, torch.compile(f, backend=backend, fullgraph=True)):
        out = fn(x, w, b)
        dy = torch.randn(out.shape, device=device, generator=gen) if dy is None else dy
        grads.append(torch.autograd.grad(out, params, dy))
    for eager, compiled in zip(*grads, strict=True):
        assert eager.abs().sum() > 0
        assert rel_err(compiled, eager) < 1e-5
