"""short_conv against a float64 reference: forward, backward, dtypes, layouts, compile, errors.

The forward reference is the definition summed in numpy (float64); the gradient reference is
torch autograd through the same convolution written as a Toeplitz matrix product (float64),
a formulation the kernel does not share.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kernels.short_conv import short_conv

TOLERANCE = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 1e-2}
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


# ---------------------------------------------------------------------------------------------
# References (float64)


def pad_left(padding: str, K: int) -> int:
    return K - 1 if padding == "causal" else (K - 1) // 2


def reference_numpy(x, w, bias, padding: str, layout: str) -> np.ndarray:
    """y[b, d, t] = bias[d] + sum_j w[d, j] * x[b, d, t - P + j], zeros outside [0, L)."""
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    if layout == "bld":
        x = x.transpose(0, 2, 1)
    B, D, L = x.shape
    K = w.shape[1]
    P = pad_left(padding, K)
    y = np.zeros((B, D, L))
    for t in range(L):
        for j in range(K):
            src = t - P + j
            if 0 <= src < L:
                y[:, :, t] += w[None, :, j] * x[:, :, src]
    if bias is not None:
        y += np.asarray(bias, dtype=np.float64)[None, :, None]
    return y.transpose(0, 2, 1) if layout == "bld" else y


def reference_toeplitz(x, w, bias, padding: str, layout: str) -> torch.Tensor:
    """The same convolution as y[b, d] = T[d] @ x[b, d], T[d, t, s] = w[d, s - t + P]."""
    if layout == "bld":
        x = x.transpose(1, 2)
    L, K = x.shape[-1], w.shape[1]
    lag = torch.arange(L)[None, :] - torch.arange(L)[:, None] + pad_left(padding, K)  # [t, s]
    inside = (lag >= 0) & (lag < K)
    T = w[:, lag.clamp(0, K - 1)] * inside  # [D, L, L]
    y = torch.einsum("dts,bds->bdt", T, x)
    if bias is not None:
        y = y + bias[None, :, None]
    return y.transpose(1, 2) if layout == "bld" else y


def rel_err(out: torch.Tensor, ref) -> float:
    ref = torch.as_tensor(ref, dtype=torch.float64)
    return ((out.double() - ref).norm() / ref.norm()).item()


# ---------------------------------------------------------------------------------------------
# Cases


def make_inputs(B, D, L, K, layout, dtype, w_dtype=None, seed=0, requires_grad=False):
    gen = torch.Generator().manual_seed(seed)
    x_shape = (B, D, L) if layout == "bdl" else (B, L, D)
    x = torch.randn(x_shape, generator=gen).to(dtype)
    w = (torch.randn(D, K, generator=gen) / K**0.5).to(w_dtype or dtype)
    bias = torch.randn(D, generator=gen).to(w_dtype or dtype)
    for t in (x, w, bias):
        t.requires_grad_(requires_grad)
    return x, w, bias


def _cases():
    """Every K x L x padding x layout; (B, D) cycles so each pair appears across them."""
    batch_channels = itertools.cycle([(1, 1), (2, 3), (2, 16), (1, 16), (2, 1), (1, 3), (2, 16)])
    cases = []
    for K, L in itertools.product((1, 2, 3, 4, 7), (1, 2, 7, 97, 256)):
        for padding, layout in itertools.product(("causal", "same"), ("bdl", "bld")):
            B, D = next(batch_channels)
            cases.append(
                pytest.param(
                    B, D, L, K, padding, layout, id=f"B{B}-D{D}-L{L}-K{K}-{padding}-{layout}"
                )
            )
    return cases


CASES = _cases()
# low-precision runs: a slice that still covers every K, L, padding and layout
LOW_PRECISION_CASES = CASES[::3]
DTYPE_CASES = [
    pytest.param(*case.values, dtype, id=f"{case.id}-{DTYPE_NAMES[dtype]}")
    for dtype in TOLERANCE
    for case in (CASES if dtype == torch.float32 else LOW_PRECISION_CASES)
]


# ---------------------------------------------------------------------------------------------
# Forward and backward


@pytest.mark.parametrize("B, D, L, K, padding, layout, dtype", DTYPE_CASES)
def test_forward(B, D, L, K, padding, layout, dtype):
    x, w, bias = make_inputs(B, D, L, K, layout, dtype, seed=L * 10 + K)
    out = short_conv(x, w, bias, padding=padding, layout=layout)
    assert out.dtype == dtype and out.shape == x.shape
    ref = reference_numpy(x.double(), w.double(), bias.double(), padding, layout)
    assert rel_err(out, ref) < TOLERANCE[dtype]


@pytest.mark.parametrize("B, D, L, K, padding, layout, dtype", DTYPE_CASES)
def test_backward(B, D, L, K, padding, layout, dtype):
    x, w, bias = make_inputs(B, D, L, K, layout, dtype, seed=L * 10 + K, requires_grad=True)
    dy = torch.randn(x.shape, generator=torch.Generator().manual_seed(K)).to(dtype)
    grads = torch.autograd.grad(
        short_conv(x, w, bias, padding=padding, layout=layout), (x, w, bias), dy
    )

    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, w, bias))
    y64 = reference_toeplitz(x64, w64, b64, padding, layout)
    y_numpy = reference_numpy(x64.detach(), w64.detach(), b64.detach(), padding, layout)
    assert rel_err(y64, y_numpy) < 1e-12  # the two references agree
    refs = torch.autograd.grad(y64, (x64, w64, b64), dy.double())
    for name, g, ref, t in zip(("dx", "dw", "dbias"), grads, refs, (x, w, bias), strict=True):
        assert g.dtype == t.dtype and g.shape == t.shape, name
        assert rel_err(g, ref) < TOLERANCE[dtype], name


@pytest.mark.parametrize(
    "B, D, L, K, padding, layout",
    [
        pytest.param(2, 3, 7, 3, "causal", "bdl", id="B2-D3-L7-K3-causal-bdl"),
        pytest.param(1, 2, 5, 4, "same", "bdl", id="B1-D2-L5-K4-same-bdl"),
        pytest.param(2, 3, 6, 3, "same", "bld", id="B2-D3-L6-K3-same-bld"),
        pytest.param(1, 3, 2, 7, "causal", "bld", id="B1-D3-L2-K7-causal-bld"),
        pytest.param(2, 1, 1, 1, "same", "bdl", id="B2-D1-L1-K1-same-bdl"),
    ],
)
def test_gradcheck(B, D, L, K, padding, layout):
    x, w, bias = make_inputs(B, D, L, K, layout, torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, w, b: short_conv(x, w, b, padding=padding, layout=layout), (x, w, bias)
    )


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
@pytest.mark.parametrize("K", [pytest.param(K, id=f"K{K}") for K in (1, 2, 3, 4, 7)])
@pytest.mark.parametrize("padding", ["causal", "same"])
def test_matches_pytorch_conv1d_convention(K, padding):
    """The documented convention: what Hyena's nn.Conv1d(groups=D) computes."""
    x, w, bias = make_inputs(2, 3, 11, K, "bdl", torch.float64)
    if padding == "causal":
        expected = F.conv1d(x, w[:, None], bias, padding=K - 1, groups=3)[..., :11]
    else:
        expected = F.conv1d(x, w[:, None], bias, padding="same", groups=3)
    torch.testing.assert_close(short_conv(x, w, bias, padding=padding), expected)


def test_causal_output_ignores_the_future():
    x, w, _ = make_inputs(1, 3, 16, 4, "bdl", torch.float32)
    x2 = x.clone()
    x2[..., 9:] = torch.randn(1, 3, 7)
    torch.testing.assert_close(short_conv(x, w)[..., :9], short_conv(x2, w)[..., :9])


def test_no_bias_and_mixed_dtypes():
    x, w, bias = make_inputs(2, 3, 17, 3, "bld", torch.bfloat16, requires_grad=True)
    w = w.detach().float().requires_grad_()
    bias = bias.detach().double().requires_grad_()
    out = short_conv(x, w, bias, layout="bld")
    assert out.dtype == torch.bfloat16
    ref = reference_numpy(x.double().detach(), w.double().detach(), bias.detach(), "causal", "bld")
    assert rel_err(out, ref) < TOLERANCE[torch.bfloat16]
    dx, dw, dbias = torch.autograd.grad(out.float().sum(), (x, w, bias))
    assert (dx.dtype, dw.dtype, dbias.dtype) == (torch.bfloat16, torch.float32, torch.float64)

    out = short_conv(x, w, layout="bld")
    ref = reference_numpy(x.double().detach(), w.double().detach(), None, "causal", "bld")
    assert rel_err(out, ref) < TOLERANCE[torch.bfloat16]


def test_non_contiguous_input():
    x, w, bias = make_inputs(2, 5, 33, 3, "bld", torch.float32)
    x_bdl = x.transpose(1, 2)  # a [B, D, L] view of [B, L, D] memory
    out = short_conv(x_bdl, w, bias, padding="same")
    ref = reference_numpy(x_bdl, w, bias, "same", "bdl")
    assert rel_err(out, ref) < TOLERANCE[torch.float32]


def test_empty_batch():
    x, w, bias = make_inputs(0, 3, 8, 3, "bdl", torch.float32, requires_grad=True)
    out = short_conv(x, w, bias)
    assert out.shape == (0, 3, 8)
    dx, dw, dbias = torch.autograd.grad(out.sum(), (x, w, bias))
    assert dx.shape == x.shape and not dw.any() and not dbias.any()


def test_autocast_casts_fp32_input():
    x, w, bias = make_inputs(2, 4, 19, 3, "bdl", torch.float32, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = short_conv(x, w, bias)
    assert out.dtype == torch.bfloat16
    ref = reference_numpy(x.detach(), w.detach(), bias.detach(), "causal", "bdl")
    assert rel_err(out, ref) < TOLERANCE[torch.bfloat16]
    dx, dw, dbias = torch.autograd.grad(out.float().sum(), (x, w, bias))
    assert dx.dtype == dw.dtype == dbias.dtype == torch.float32


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_backends(backend):
    x, w, bias = make_inputs(2, 3, 9, 3, "bdl", torch.float32)
    ref = reference_numpy(x, w, bias, "causal", "bdl")
    assert rel_err(short_conv(x, w, bias, backend=backend), ref) < TOLERANCE[torch.float32]


# ---------------------------------------------------------------------------------------------
# torch.compile and the custom-op registration


def test_torch_compile_fullgraph_forward_backward():
    def block(x, w, bias):
        return F.silu(short_conv(x * 2, w, bias, padding="same", layout="bld"))

    compiled = torch.compile(block, fullgraph=True)
    eager_inputs = make_inputs(2, 5, 16, 3, "bld", torch.float32, requires_grad=True)
    compiled_inputs = [t.detach().clone().requires_grad_() for t in eager_inputs]
    dy = torch.randn(2, 16, 5)

    eager_out = block(*eager_inputs)
    compiled_out = compiled(*compiled_inputs)
    torch.testing.assert_close(compiled_out, eager_out)
    eager_grads = torch.autograd.grad(eager_out, eager_inputs, dy)
    compiled_grads = torch.autograd.grad(compiled_out, compiled_inputs, dy)
    for got, expected in zip(compiled_grads, eager_grads, strict=True):
        torch.testing.assert_close(got, expected)


def test_custom_op_registration():
    x, w, bias = make_inputs(2, 3, 10, 4, "bdl", torch.float32, requires_grad=True)
    ib = torch.randn(3, requires_grad=True)
    op = torch.ops.longconv.short_conv
    torch.library.opcheck(op, (x, w, bias, None, "causal", "bdl", "torch"))
    torch.library.opcheck(op, (x, w, None, None, "same", "bdl", "torch"))
    torch.library.opcheck(op, (x, w, bias, ib, "causal", "bdl", "torch"))


INPUT_BIAS_CASES = [
    pytest.param(2, 3, 7, 3, "causal", "bdl", torch.float32, id="B2-D3-L7-K3-causal-bdl-fp32"),
    pytest.param(1, 4, 3, 5, "same", "bld", torch.float32, id="B1-D4-L3-K5-same-bld-fp32-L<K"),
    pytest.param(2, 5, 97, 4, "same", "bdl", torch.bfloat16, id="B2-D5-L97-K4-same-bdl-bf16"),
    pytest.param(3, 2, 11, 2, "causal", "bld", torch.float16, id="B3-D2-L11-K2-causal-bld-fp16"),
]


@pytest.mark.parametrize("B, D, L, K, padding, layout, dtype", INPUT_BIAS_CASES)
def test_input_bias(B, D, L, K, padding, layout, dtype):
    """input_bias joins x inside the sequence, not the padding: conv(x + input_bias)."""
    x, w, bias = make_inputs(B, D, L, K, layout, dtype, seed=L + K, requires_grad=True)
    ib = torch.randn(D, generator=torch.Generator().manual_seed(D)).to(dtype).requires_grad_()
    y = short_conv(x, w, bias, input_bias=ib, padding=padding, layout=layout)
    dy = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    grads = torch.autograd.grad(y, (x, w, bias, ib), dy)

    leaves = [t.detach().double().requires_grad_() for t in (x, w, bias, ib)]
    x64, w64, b64, ib64 = leaves
    shifted = x64 + (ib64[:, None] if layout == "bdl" else ib64)
    y64 = reference_toeplitz(shifted, w64, b64, padding, layout)
    refs = torch.autograd.grad(y64, leaves, dy.double())
    assert rel_err(y, y64) < TOLERANCE[dtype]
    for name, g, ref, t in zip(
        ("dx", "dw", "db", "dib"), grads, refs, (x, w, bias, ib), strict=True
    ):
        assert g.dtype == t.dtype and g.shape == t.shape, name
        assert rel_err(g, ref) < TOLERANCE[dtype], name


def test_input_bias_gradcheck():
    x, w, bias = make_inputs(2, 3, 6, 3, "bdl", torch.float64, requires_grad=True)
    ib = torch.randn(3, dtype=torch.float64, requires_grad=True)
    for padding in ("causal", "same"):
        assert torch.autograd.gradcheck(
            lambda x, w, b, ib, padding=padding: short_conv(
                x, w, b, input_bias=ib, padding=padding
            ),
            (x, w, bias, ib),
        )


# ---------------------------------------------------------------------------------------------
# Errors


def _good():
    x, w, bias = make_inputs(2, 3, 8, 3, "bdl", torch.float32)
    return {"x": x, "w": w, "bias": bias}


def _with(**overrides):
    return lambda: {**_good(), **overrides}


BAD_INPUTS = [
    pytest.param(_with(x=[1.0]), TypeError, r"x must be a torch.Tensor; got list", id="x-list"),
    pytest.param(
        _with(x=torch.ones(2, 3, 8, dtype=torch.int64)),
        TypeError,
        r"x must be a floating-point tensor .*; got torch.int64",
        id="x-int",
    ),
    pytest.param(_with(w=None), TypeError, r"w must be a torch.Tensor; got NoneType", id="w-none"),
    pytest.param(
        _with(w=torch.ones(3, 3, dtype=torch.complex64)),
        TypeError,
        r"w must be a floating-point tensor .*; got torch.complex64",
        id="w-complex",
    ),
    pytest.param(
        _with(bias=3.0), TypeError, r"bias must be a torch.Tensor; got float", id="bias-float"
    ),
    pytest.param(
        _with(bias=torch.ones(3, dtype=torch.int32)),
        TypeError,
        r"bias must be a floating-point tensor .*; got torch.int32",
        id="bias-int",
    ),
    pytest.param(
        _with(input_bias=[1.0]),
        TypeError,
        r"input_bias must be a torch.Tensor; got list",
        id="input-bias-list",
    ),
    pytest.param(
        _with(input_bias=torch.ones(4)),
        ValueError,
        r"input_bias must have shape \(D,\) = \(3,\); got \(4,\)",
        id="input-bias-shape",
    ),
    pytest.param(
        _with(x=torch.randn(3, 8)),
        ValueError,
        r"x must have shape \(B, D, L\) for layout='bdl'; got shape \(3, 8\)",
        id="x-rank2",
    ),
    pytest.param(
        _with(x=torch.randn(2, 8, 3, 1), layout="bld"),
        ValueError,
        r"x must have shape \(B, L, D\) for layout='bld'; got shape \(2, 8, 3, 1\)",
        id="x-rank4-bld",
    ),
    pytest.param(
        _with(x=torch.randn(2, 3, 0)),
        ValueError,
        r"x must have a sequence length L >= 1; got L=0",
        id="L0",
    ),
    pytest.param(
        _with(x=torch.randn(2, 0, 3), layout="bld"),
        ValueError,
        r"x must have a sequence length L >= 1; got L=0 \(shape \(2, 0, 3\)\)",
        id="L0-bld",
    ),
    pytest.param(
        _with(x=torch.randn(2, 0, 8), w=torch.randn(0, 3), bias=None),
        ValueError,
        r"x must have D >= 1 channels; got D=0",
        id="D0",
    ),
    pytest.param(
        _with(w=torch.randn(3)),
        ValueError,
        r"w must have shape \(D, K\) = \(3, K\); got shape \(3,\)",
        id="w-rank1",
    ),
    pytest.param(
        _with(w=torch.randn(4, 3)),
        ValueError,
        r"w must have D=3 rows to match x's channels; got w of shape \(4, 3\)",
        id="w-D-mismatch",
    ),
    pytest.param(
        # [B, L, D] = [2, 8, 3]: the filter must have D=3 rows, not L=8
        _with(x=torch.randn(2, 8, 3), w=torch.randn(8, 3), layout="bld"),
        ValueError,
        r"w must have D=3 rows to match x's channels; got w of shape \(8, 3\)",
        id="w-D-mismatch-bld",
    ),
    pytest.param(
        _with(w=torch.randn(3, 0)),
        ValueError,
        r"w must have at least one tap \(K >= 1\); got shape \(3, 0\)",
        id="K0",
    ),
    pytest.param(
        _with(bias=torch.randn(4)),
        ValueError,
        r"bias must have shape \(D,\) = \(3,\); got \(4,\)",
        id="bias-length",
    ),
    pytest.param(
        _with(bias=torch.randn(3, 1)),
        ValueError,
        r"bias must have shape \(D,\) = \(3,\); got \(3, 1\)",
        id="bias-rank2",
    ),
    pytest.param(
        _with(w=torch.randn(3, 3, device="meta")),
        ValueError,
        r"w must be on the same device as x \(cpu\); got meta",
        id="w-device",
    ),
    pytest.param(
        _with(bias=torch.randn(3, device="meta")),
        ValueError,
        r"bias must be on the same device as x \(cpu\); got meta",
        id="bias-device",
    ),
    pytest.param(
        _with(padding="valid"),
        ValueError,
        r"padding must be one of \('causal', 'same'\); got 'valid'",
        id="padding",
    ),
    pytest.param(
        _with(layout="BLD"),
        ValueError,
        r"layout must be one of \('bdl', 'bld'\); got 'BLD'",
        id="layout",
    ),
    pytest.param(
        _with(backend="triton"),
        ValueError,
        r"backend='triton' is not usable here: it runs on CUDA devices .*; got cpu",
        id="backend-triton",
    ),
    pytest.param(
        _with(backend="cuda"),
        ValueError,
        r"backend must be one of \('auto', 'torch', 'triton'\); got 'cuda'",
        id="backend-unknown",
    ),
]


@pytest.mark.parametrize("make_kwargs, error, match", BAD_INPUTS)
def test_bad_inputs(make_kwargs, error, match):
    with pytest.raises(error, match=match):
        short_conv(**make_kwargs())
