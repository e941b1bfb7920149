"""The ``triton`` short_conv backend against float64 references.

CPU: the kernels run under TRITON_INTERPRET=1, which must be set before triton is imported, so
the cases run in one subprocess (this file run as a module) and the tests check what it
printed. The kernels use no ``tl.dot``, so bf16 runs there too (with fp32 -> bf16 truncated
instead of rounded: about twice the compiled kernels' bf16 error, still within tolerance).
GPU (``gpu`` marker): the compiled kernels at real sizes in every dtype, forward and backward,
torch.compile(fullgraph=True), autocast, CUDA graph capture, 64-bit offsets.

The reference is ``F.conv1d`` in float64 (a grouped convolution: a formulation the kernels do
not share), differentiated by autograd; ``test_reference_matches_definition`` ties it to the
numpy definition of ``test_short_conv.py``.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kernels import short_conv

from .interpreted import count_calls, run_interpreted, start_interpreter

TOL = {
    torch.float32: 1e-5,
    torch.float16: 3e-3,
    torch.bfloat16: 1e-2,
    torch.float64: 1e-12,
}
DTYPES = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "fp64": torch.float64,
}
GRADS = ("dx", "dw", "dbias")


def pad_left(padding: str, K: int) -> int:
    return K - 1 if padding == "causal" else (K - 1) // 2


def conv_ref64(x, w, bias, padding: str, layout: str) -> torch.Tensor:
    """The convolution in float64 through ``F.conv1d(groups=D)`` (any device, differentiable)."""
    x = x.double()
    if layout == "bld":
        x = x.transpose(1, 2)
    K = w.shape[1]
    P = pad_left(padding, K)
    y = F.conv1d(
        F.pad(x, (P, K - 1 - P)),
        w.double()[:, None],
        bias.double() if bias is not None else None,
        groups=x.shape[1],
    )
    return y.transpose(1, 2) if layout == "bld" else y


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.double()
    return ((out.double() - ref).norm() / ref.norm()).item()


def make_inputs(
    B, D, L, K, layout, dtype, *, bias=True, w_dtype=None, b_dtype=None, seed=0, device="cpu"
):
    """Fresh random x ``[B, D, L]`` or ``[B, L, D]``, w ``[D, K]``, bias ``[D]`` (or None) and
    dy like x; x and dy in ``dtype``, w and bias in theirs (default ``dtype``)."""
    gen = torch.Generator().manual_seed(seed)
    shape = (B, D, L) if layout == "bdl" else (B, L, D)
    x = torch.randn(shape, generator=gen).to(device, dtype)
    w = (torch.randn(D, K, generator=gen) / K**0.5).to(device, w_dtype or dtype)
    b = torch.randn(D, generator=gen).to(device, b_dtype or dtype) if bias else None
    dy = torch.randn(shape, generator=gen).to(device, dtype)
    return x, w, b, dy


def forward_backward(x, w, b, dy, padding, layout, backend="triton"):
    """y and the gradients of <y, dy> for every input that has one, through ``short_conv``."""
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, w, b)]
    y = short_conv(*leaves, padding=padding, layout=layout, backend=backend)
    wanted = [t for t in leaves if t is not None]
    grads = torch.autograd.grad(y, wanted, dy)
    return y.detach(), dict(zip(GRADS, grads, strict=False)), leaves


def reference_grads(x, w, b, dy, padding, layout):
    leaves = [t.detach().double().requires_grad_() if t is not None else None for t in (x, w, b)]
    y = conv_ref64(*leaves, padding, layout)
    wanted = [t for t in leaves if t is not None]
    grads = torch.autograd.grad(y, wanted, dy.double())
    return y.detach(), dict(zip(GRADS, grads, strict=False))


def compare(x, w, b, dy, padding, layout) -> dict:
    """Relative errors of y and of every gradient, and whether every dtype is right."""
    y, grads, leaves = forward_backward(x, w, b, dy, padding, layout)
    y_ref, ref = reference_grads(x, w, b, dy, padding, layout)
    errs = {"y": rel_err(y, y_ref)} | {name: rel_err(grads[name], ref[name]) for name in grads}
    dtypes_ok = y.dtype == x.dtype and all(
        grads[name].dtype == t.dtype
        for name, t in zip(GRADS, leaves, strict=False)
        if t is not None
    )
    return {"errs": errs, "ok": dtypes_ok}


# ---------------------------------------------------------------------------------------------
# CPU: interpreter cases, run in a subprocess
#
# id -> (B, D, L, K, padding, layout, dtype, bias): through short_conv(backend="triton")

API_CASES = {
    "B2-D3-L7-K3-causal-bdl-fp32": (2, 3, 7, 3, "causal", "bdl", "fp32", True),
    "B2-D3-L7-K3-same-bld-fp32": (2, 3, 7, 3, "same", "bld", "fp32", True),
    "B1-D5-L1-K3-causal-bld-fp32-L1": (1, 5, 1, 3, "causal", "bld", "fp32", True),
    "B1-D5-L1-K4-same-bdl-fp16-L1-nobias": (1, 5, 1, 4, "same", "bdl", "fp16", False),
    "B2-D3-L2-K7-causal-bdl-fp32-L<K-nobias": (2, 3, 2, 7, "causal", "bdl", "fp32", False),
    "B2-D7-L3-K5-same-bld-fp16-L<K": (2, 7, 3, 5, "same", "bld", "fp16", True),
    "B2-D17-L97-K4-same-bdl-fp32": (2, 17, 97, 4, "same", "bdl", "fp32", True),
    "B2-D17-L97-K2-causal-bld-fp16-nobias": (2, 17, 97, 2, "causal", "bld", "fp16", False),
    "B1-D9-L130-K8-causal-bdl-fp16": (1, 9, 130, 8, "causal", "bdl", "fp16", True),
    "B1-D9-L130-K8-same-bld-fp32": (1, 9, 130, 8, "same", "bld", "fp32", True),
    "B1-D1-L11-K1-causal-bdl-fp32-K1": (1, 1, 11, 1, "causal", "bdl", "fp32", True),
    "B1-D129-L5-K3-causal-bld-fp32-2-dblocks": (1, 129, 5, 3, "causal", "bld", "fp32", True),
    "B2-D3-L1025-K3-same-bdl-fp16-two-time-tiles": (2, 3, 1025, 3, "same", "bdl", "fp16", True),
    "B2-D9-L31-K3-causal-bdl-bf16": (2, 9, 31, 3, "causal", "bdl", "bf16", True),
    "B2-D9-L31-K4-same-bld-bf16-nobias": (2, 9, 31, 4, "same", "bld", "bf16", False),
    "B1-D3-L40-K32-same-bdl-fp32-K32": (1, 3, 40, 32, "same", "bdl", "fp32", True),
    "B2-D3-L19-K3-causal-bld-fp64": (2, 3, 19, 3, "causal", "bld", "fp64", True),
}
# id -> ((B, D, L, K, padding, layout, dtype), launch options): the launchers on NaN-poisoned
# outputs and workspace, with tilings the defaults do not reach at these sizes
LAUNCHER_CASES = {
    # 5 time tiles of 64, 3 per program: the second chunk has one tile and skips two
    "bdl-multi-tile": ((1, 3, 301, 3, "causal", "bdl", "fp32"), {"tile": 64, "tiles": 3}),
    # 11 time tiles of 4 (8 channels), 3 per program: the last chunk has two tiles
    "bld-multi-tile": ((1, 5, 41, 4, "same", "bld", "fp16"), {"tile": 32, "tiles": 3}),
    "bdl-wide": ((2, 3, 50, 3, "same", "bdl", "fp32"), {"wide": True, "tile": 32, "tiles": 2}),
    "bld-wide": ((2, 5, 50, 2, "causal", "bld", "fp16"), {"wide": True, "tile": 32, "tiles": 2}),
    "bdl-tile1": ((1, 3, 5, 3, "causal", "bdl", "fp32"), {"tile": 1, "tiles": 2}),
    "bld-tile1": ((1, 3, 5, 4, "same", "bld", "fp32"), {"tile": 1, "tiles": 4}),
}
# id -> ((B, D, L, K, padding, layout, dtype), launch options): with an input bias, through
# short_conv (options None) or the launchers on NaN-poisoned outputs and workspace
INPUT_BIAS_CASES = {
    "ib-B2-D3-L7-K3-causal-bdl-fp32": ((2, 3, 7, 3, "causal", "bdl", "fp32"), None),
    "ib-B2-D5-L3-K5-same-bld-fp16-L<K": ((2, 5, 3, 5, "same", "bld", "fp16"), None),
    "ib-B1-D3-L301-K4-same-bdl-fp32-multi-tile": (
        (1, 3, 301, 4, "same", "bdl", "fp32"),
        {"tile": 64, "tiles": 3},
    ),
    "ib-B2-D5-L41-K3-causal-bld-fp16-multi-tile": (
        (2, 5, 41, 3, "causal", "bld", "fp16"),
        {"tile": 32, "tiles": 3},
    ),
    # the backward's two ways of summing dw, dbias and d(input_bias), each in the layout where
    # it is not the default: per element over the chunk's tiles, or per tile
    "ib-B1-D3-L301-K4-same-bdl-fp32-multi-tile-elementwise": (
        (1, 3, 301, 4, "same", "bdl", "fp32"),
        {"tile": 64, "tiles": 3, "elementwise": True},
    ),
    "ib-B2-D5-L41-K2-causal-bld-fp16-multi-tile-per-tile-sums": (
        (2, 5, 41, 2, "causal", "bld", "fp16"),
        {"tile": 32, "tiles": 3, "elementwise": False},
    ),
    "ib-B3-D7-L29-K1-same-bld-fp32-elementwise-default": (
        (3, 7, 29, 1, "same", "bld", "fp32"),
        {"tile": 32},
    ),
}
MIXED_CASE = "B2-D3-L9-K3-x-fp16-w-fp32-bias-fp64"
NEEDS_CASE = "partial-needs"
AUTOCAST_CASE = "autocast-bf16"
COMPILE_CASE = "compile-fullgraph"


def _run_api_case(B, D, L, K, padding, layout, dtype, bias):
    x, w, b, dy = make_inputs(B, D, L, K, layout, DTYPES[dtype], bias=bias, seed=B * L + K)
    return compare(x, w, b, dy, padding, layout)


def _run_launcher_case(case, options):
    from kernels.short_conv import triton as triton_backend

    B, D, L, K, padding, layout, dtype = case
    x, w, b, dy = make_inputs(B, D, L, K, layout, DTYPES[dtype], seed=7)
    nan = float("nan")
    y = torch.full_like(x, nan)
    dx = torch.full_like(x, nan)
    workspace = torch.full(triton_backend.workspace_shape(x, w, layout, **options), nan)
    triton_backend.forward(x, w, b, padding, layout, out=y, **options)
    _, dw, dbias, _ = triton_backend.backward(
        dy,
        x,
        w,
        padding,
        layout,
        (True, True, True, False),
        dx_out=dx,
        workspace=workspace,
        **options,
    )
    y_ref, ref = reference_grads(x, w, b, dy, padding, layout)
    errs = {"y": rel_err(y, y_ref), "dx": rel_err(dx, ref["dx"])}
    errs |= {"dw": rel_err(dw, ref["dw"]), "dbias": rel_err(dbias, ref["dbias"])}
    unwritten = sum(int(t.isnan().sum()) for t in (y, dx, workspace))
    plan = triton_backend.launch_plan(B, D, L, K, layout, **options)
    return {"errs": errs, "ok": unwritten == 0, "plan": plan._asdict()}


def input_bias_reference(x, w, b, ib, dy, padding, layout):
    """y and (dx, dw, dbias, d input_bias) in float64: the input bias added to x, then conv."""
    leaves = [t.detach().double().requires_grad_() for t in (x, w, b, ib)]
    x64, w64, b64, ib64 = leaves
    shifted = x64 + (ib64[:, None] if layout == "bdl" else ib64)
    y = conv_ref64(shifted, w64, b64, padding, layout)
    return y.detach(), torch.autograd.grad(y, leaves, dy.double())


def _run_input_bias_case(case, options):
    from kernels.short_conv import triton as triton_backend

    B, D, L, K, padding, layout, dtype = case
    x, w, b, dy = make_inputs(B, D, L, K, layout, DTYPES[dtype], seed=11 * L + K)
    ib = torch.randn(D, generator=torch.Generator().manual_seed(L)).to(DTYPES[dtype])
    y_ref, refs = input_bias_reference(x, w, b, ib, dy, padding, layout)
    names = ("dx", "dw", "dbias", "dib")
    if options is None:
        leaves = [t.clone().requires_grad_() for t in (x, w, b, ib)]
        y = short_conv(
            *leaves[:3], input_bias=leaves[3], padding=padding, layout=layout, backend="triton"
        )
        grads = torch.autograd.grad(y, leaves, dy)
        ok = all(g.dtype == t.dtype for g, t in zip(grads, leaves, strict=True))
    else:
        nan = float("nan")
        y, dx = torch.full_like(x, nan), torch.full_like(x, nan)
        plan_options = {k: v for k, v in options.items() if k != "elementwise"}
        shape = triton_backend.workspace_shape(x, w, layout, input_bias=True, **plan_options)
        workspace = torch.full(shape, nan)
        triton_backend.forward(x, w, b, padding, layout, input_bias=ib, out=y, **plan_options)
        _, dw, dbias, dib = triton_backend.backward(
            dy,
            x,
            w,
            padding,
            layout,
            (True, True, True, True),
            input_bias=ib,
            dx_out=dx,
            workspace=workspace,
            **options,
        )
        grads = (dx, dw, dbias, dib)
        ok = sum(int(t.isnan().sum()) for t in (y, dx, workspace)) == 0
    errs = {"y": rel_err(y, y_ref)}
    errs |= {n: rel_err(g, r) for n, g, r in zip(names, grads, refs, strict=True)}
    return {"errs": errs, "ok": ok}


def _run_mixed_case():
    """x fp16, w fp32, bias fp64: y in fp16, each gradient in its input's dtype."""
    x, w, b, dy = make_inputs(
        2, 3, 9, 3, "bdl", torch.float16, w_dtype=torch.float32, b_dtype=torch.float64, seed=3
    )
    return compare(x, w, b, dy, "causal", "bdl")


def _run_needs_case():
    """One input at a time requires grad: the backward runs asked for that gradient only."""
    x, w, b, dy = make_inputs(2, 6, 23, 3, "bld", torch.float32, seed=4)
    _, ref = reference_grads(x, w, b, dy, "same", "bld")
    errs = {}
    for wanted in ("x", "w", "bias"):
        leaves = {"x": x.clone(), "w": w.clone(), "bias": b.clone()}
        leaves[wanted].requires_grad_()
        y = short_conv(
            leaves["x"], leaves["w"], leaves["bias"], padding="same", layout="bld", backend="triton"
        )
        (grad,) = torch.autograd.grad(y, leaves[wanted], dy)
        errs[wanted] = rel_err(grad, ref[{"x": "dx", "w": "dw", "bias": "dbias"}[wanted]])
    return {"errs": errs, "ok": True}


def _run_autocast_case():
    """fp32 x under bf16 autocast: y in bf16 from the bf16 kernels, gradients in fp32."""
    x, w, b, dy = make_inputs(2, 6, 29, 3, "bdl", torch.float32, seed=6)
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = short_conv(*leaves, backend="triton")
    grads = torch.autograd.grad(y, leaves, dy.bfloat16())
    y_ref, ref = reference_grads(x.bfloat16(), w, b, dy.bfloat16(), "causal", "bdl")
    errs = {"y": rel_err(y, y_ref)} | {
        name: rel_err(g, ref[name]) for name, g in zip(GRADS, grads, strict=True)
    }
    ok = y.dtype == torch.bfloat16 and all(g.dtype == torch.float32 for g in grads)
    return {"errs": errs, "ok": ok}


def _run_compile_case():
    """torch.compile(fullgraph=True) through AOTAutograd: one short_conv op in the forward
    graph and one short_conv_backward op in the backward graph; same results as eager."""
    from torch._dynamo.backends.common import aot_autograd
    from torch._functorch.aot_autograd import make_boxed_func

    graphs: dict[str, list[str]] = {}

    def recorder(kind):
        def compiler(gm, example_inputs):
            graphs[kind] = [str(n.target) for n in gm.graph.nodes if n.op == "call_function"]
            return make_boxed_func(gm.forward)

        return compiler

    recording_backend = aot_autograd(fw_compiler=recorder("fw"), bw_compiler=recorder("bw"))

    def block(x, w, b):
        return F.silu(short_conv(x * 2, w, b, padding="causal", layout="bld", backend="triton"))

    x, w, b, dy = make_inputs(2, 5, 13, 4, "bld", torch.float32, seed=5)
    eager = [t.clone().requires_grad_() for t in (x, w, b)]
    compiled = [t.clone().requires_grad_() for t in (x, w, b)]
    y_e = block(*eager)
    y_c = torch.compile(block, fullgraph=True, backend=recording_backend)(*compiled)
    g_e = torch.autograd.grad(y_e, eager, dy)
    g_c = torch.autograd.grad(y_c, compiled, dy)
    errs = {"y": rel_err(y_c, y_e)} | {
        name: rel_err(a, e) for name, a, e in zip(GRADS, g_c, g_e, strict=True)
    }
    fw, bw = graphs.get("fw", []), graphs.get("bw", [])
    ok = fw.count("longconv.short_conv.default") == 1
    ok = ok and bw.count("longconv.short_conv_backward.default") == 1
    return {"errs": errs, "ok": ok, "ops": graphs}


def _interpreter_main() -> None:
    """Runs every CPU case under the interpreter; prints one JSON line of results."""
    start_interpreter()
    from kernels.short_conv import triton as triton_backend

    calls = count_calls(triton_backend, "forward", "backward")
    jobs = [(cid, _run_api_case, args) for cid, args in API_CASES.items()]
    jobs += [(cid, _run_launcher_case, args) for cid, args in LAUNCHER_CASES.items()]
    jobs += [(cid, _run_input_bias_case, args) for cid, args in INPUT_BIAS_CASES.items()]
    jobs += [(MIXED_CASE, _run_mixed_case, ()), (NEEDS_CASE, _run_needs_case, ())]
    jobs += [(AUTOCAST_CASE, _run_autocast_case, ()), (COMPILE_CASE, _run_compile_case, ())]
    results = {}
    for cid, run, args in jobs:
        calls.clear()
        results[cid] = run(*args) | {"kernels": sorted(set(calls))}
    print(json.dumps(results))


@pytest.fixture(scope="module")
def interpreted():
    return run_interpreted("tests.kernels.test_short_conv_triton")


def _assert_within(res: dict, dtype: torch.dtype) -> None:
    for name, err in res["errs"].items():
        assert err < TOL[dtype], (name, err, res["errs"])


@pytest.mark.parametrize("case", list(API_CASES))
def test_interpreter_forward_backward(interpreted, case):
    dtype = DTYPES[API_CASES[case][6]]
    res = interpreted[case]
    assert res["kernels"] == ["backward", "forward"], "the triton kernels did not run"
    assert res["ok"], "an output or gradient has the wrong dtype"
    assert set(res["errs"]) == {"y", "dx", "dw"} | ({"dbias"} if API_CASES[case][7] else set())
    _assert_within(res, dtype)


@pytest.mark.parametrize("case", list(LAUNCHER_CASES))
def test_interpreter_launcher_poisoned(interpreted, case):
    """Every element of y, dx and the dw workspace written, with multi-tile chunks, a short
    last chunk, one-element tiles and 64-bit tile offsets."""
    (*_, dtype), options = LAUNCHER_CASES[case]
    res = interpreted[case]
    assert res["ok"], "unwritten (NaN) elements left"
    assert res["plan"]["tiles"] == options["tiles"]
    _assert_within(res, DTYPES[dtype])


@pytest.mark.parametrize("case", list(INPUT_BIAS_CASES))
def test_interpreter_input_bias(interpreted, case):
    """The input bias joins x inside the sequence only; its gradient is the sum of dx."""
    (*_, dtype), _ = INPUT_BIAS_CASES[case]
    res = interpreted[case]
    assert res["kernels"] == ["backward", "forward"], "the triton kernels did not run"
    assert res["ok"], "wrong gradient dtype, or unwritten (NaN) elements left"
    assert set(res["errs"]) == {"y", "dx", "dw", "dbias", "dib"}
    _assert_within(res, DTYPES[dtype])


def test_interpreter_mixed_dtypes(interpreted):
    res = interpreted[MIXED_CASE]
    assert res["ok"], "an output or gradient has the wrong dtype"
    _assert_within(res, torch.float16)


def test_interpreter_partial_needs(interpreted):
    res = interpreted[NEEDS_CASE]
    assert res["kernels"] == ["backward", "forward"]
    _assert_within(res, torch.float32)


def test_interpreter_autocast(interpreted):
    res = interpreted[AUTOCAST_CASE]
    assert res["ok"], "y must be bf16 and the gradients fp32"
    assert res["kernels"] == ["backward", "forward"]
    _assert_within(res, torch.bfloat16)


def test_interpreter_compile_fullgraph_one_op(interpreted):
    res = interpreted[COMPILE_CASE]
    assert res["ok"], res["ops"]
    assert res["kernels"] == ["backward", "forward"]
    _assert_within(res, torch.float32)


# ---------------------------------------------------------------------------------------------
# CPU: no kernel launches


def test_reference_matches_definition():
    from .test_short_conv import reference_numpy

    for padding, layout, K in (("causal", "bdl", 4), ("same", "bld", 4), ("same", "bdl", 5)):
        x, w, b, _ = make_inputs(2, 3, 11, K, layout, torch.float64)
        want = torch.as_tensor(reference_numpy(x, w, b, padding, layout))
        assert rel_err(conv_ref64(x, w, b, padding, layout), want) < 1e-14


def test_triton_backend_needs_cuda_or_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x, w, b, _ = make_inputs(1, 3, 8, 3, "bdl", torch.float32)
    with pytest.raises(ValueError, match=r"backend='triton' is not usable here: it runs on CUDA"):
        short_conv(x, w, b, backend="triton")


def test_triton_backend_rejects_wide_filters(monkeypatch):
    pytest.importorskip("triton")
    from kernels.short_conv import triton as triton_backend
    from kernels.short_conv.interface import resolve_backend

    K = triton_backend.MAX_TAPS + 1
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # usable on this device, so the width decides
    x, w, b, _ = make_inputs(1, 3, 8, K, "bdl", torch.float32)
    with pytest.raises(ValueError, match=rf"up to {K - 1} taps; got w with K={K} taps"):
        short_conv(x, w, b, backend="triton")
    cuda = torch.device("cuda")  # resolving touches no device
    assert resolve_backend("auto", cuda, K) == "torch"
    assert resolve_backend("auto", cuda, 3) == "triton"
    assert resolve_backend("auto", torch.device("cpu"), 3) == "torch"


def test_backward_defaults_and_elementwise_refusal(monkeypatch):
    """The backward's own launch defaults: 1024-element tiles (fewer for wide filters), in
    "bld" with K <= 4 chunks of 8 tiles (explicit options win, ``tiles=None`` keeps
    launch_plan's rule); per-element sums refuse more than 4 taps."""
    pytest.importorskip("triton")
    from kernels.short_conv import triton as triton_backend

    opts = triton_backend.backward_plan_options
    assert opts("bld", 3, {}) == {"tile": 1024, "tiles": 8}
    assert opts("bdl", 3, {}) == {"tile": 1024}
    assert opts("bld", 8, {}) == {"tile": min(1024, triton_backend.default_tile(8))}
    assert opts("bld", 3, {"tile": 4096, "tiles": None}) == {"tile": 4096, "tiles": None}
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    x, w, _, dy = make_inputs(1, 3, 8, 5, "bld", torch.float32)
    with pytest.raises(ValueError, match="elementwise sums cover up to 4 taps; got K=5"):
        triton_backend.backward(dy, x, w, "causal", "bld", (True,) * 3 + (False,), elementwise=True)


def test_launch_plan():
    """Tiles are powers of two of the default size; the backward's chunks cover the sequence;
    on large tensors the dw workspace stays a few % of a tensor ((K + 1) / CHUNK of its
    elements) while the grid keeps MIN_PROGRAMS programs."""
    pytest.importorskip("triton")
    from kernels.short_conv import triton as triton_backend

    for B, D, L, layout in ((16, 768, 10923, "bld"), (8, 4096, 4096, "bdl"), (1, 8, 2**24, "bdl")):
        for K in (3, 4, 8):
            plan = triton_backend.launch_plan(B, D, L, K, layout)
            tile = plan.block_d * plan.block_t
            assert tile <= triton_backend.default_tile(K) and tile & (tile - 1) == 0
            assert plan.tiles * plan.chunks >= plan.blocks_t > plan.tiles * (plan.chunks - 1)
            assert B * plan.chunks * (K + 1) * D < 1.1 * (K + 1) / triton_backend.CHUNK * B * D * L
            assert B * plan.blocks_d * plan.chunks >= triton_backend.MIN_PROGRAMS
    small = triton_backend.launch_plan(1, 3, 5, 3, "bld")
    assert (small.block_d, small.block_t, small.tiles, small.chunks) == (4, 8, 1, 1)
    with pytest.raises(ValueError, match=r"tile must be a power of two; got 100"):
        triton_backend.launch_plan(1, 3, 5, 3, "bld", tile=100)
    with pytest.raises(ValueError, match=r"tiles must be >= 1; got 0"):
        triton_backend.launch_plan(1, 3, 5, 3, "bld", tiles=0)


def test_launchers_reject_bad_input(monkeypatch):
    """The launchers' own checks (they run before any launch)."""
    pytest.importorskip("triton")
    from kernels.short_conv import triton as triton_backend

    x, w, b, dy = make_inputs(2, 3, 8, 3, "bdl", torch.float32)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match=r"runs on CUDA tensors .*; got x on cpu"):
        triton_backend.forward(x, w, b, "causal", "bdl")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    cases = [
        (dict(w=torch.randn(4, 3)), ValueError, r"w must have shape \(D, K\) = \(3, K\)"),
        (dict(w=torch.randn(3, 33)), ValueError, r"takes 1 to 32 taps; got w with K=33"),
        (dict(x=x.long()), TypeError, r"x must be one of .* got torch.int64"),
        (dict(layout="lbd"), ValueError, r"layout must be one of \('bdl', 'bld'\); got 'lbd'"),
        (dict(out=torch.empty(2, 3, 9)), ValueError, r"out must be a contiguous torch.float32"),
    ]
    for overrides, error, match in cases:
        args = {"x": x, "w": w, "bias": b, "padding": "causal", "layout": "bdl"} | overrides
        out = args.pop("out", None)
        with pytest.raises(error, match=match):
            triton_backend.forward(**args, out=out)
    with pytest.raises(ValueError, match=r"dy must have x's shape \(2, 3, 8\)"):
        triton_backend.backward(dy[..., 1:], x, w, "causal", "bdl", (True, True, True, False))
    with pytest.raises(ValueError, match=r"workspace must be a contiguous torch.float32 tensor"):
        triton_backend.backward(
            dy, x, w, "causal", "bdl", (False, True, False, False), workspace=torch.empty(1, 4, 3)
        )


# ---------------------------------------------------------------------------------------------
# GPU

# (B, D, L, K): odd D and a multiple of 16, L from 1 to past a power of two; K cycles
GPU_SHAPES = [
    pytest.param(3, 111, 1, 3, id="B3-D111-L1-K3"),
    pytest.param(3, 111, 97, 4, id="B3-D111-L97-K4"),
    pytest.param(3, 768, 1000, 3, id="B3-D768-L1000-K3"),
    pytest.param(3, 111, 4096, 2, id="B3-D111-L4096-K2"),
    pytest.param(3, 768, 8191, 4, id="B3-D768-L8191-K4"),
    pytest.param(2, 768, 4096, 7, id="B2-D768-L4096-K7"),
]
GPU_DTYPES = [pytest.param(d, id=name) for name, d in DTYPES.items() if name != "fp64"]
LAYOUTS = ["bdl", "bld"]
PADDINGS = ["causal", "same"]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(("B", "D", "L", "K"), GPU_SHAPES)
def test_gpu_forward_backward(B, D, L, K, layout, padding, dtype):
    """y, dx, dw, dbias against float64; the bf16 backward included. fp32 also follows
    flash-attention's rule: at most 2x the error of the torch reference backend."""
    bias = (L + K) % 2 == 0 or dtype != torch.float16  # bias off in some fp16 runs
    x, w, b, dy = make_inputs(B, D, L, K, layout, dtype, bias=bias, seed=L + K, device="cuda")
    y, grads, _ = forward_backward(x, w, b, dy, padding, layout)
    y_ref, ref = reference_grads(x, w, b, dy, padding, layout)
    assert y.dtype == dtype and y.shape == x.shape
    errs = {"y": rel_err(y, y_ref)} | {name: rel_err(grads[name], ref[name]) for name in grads}
    for name, err in errs.items():
        assert err < TOL[dtype], (name, err, errs)
    y_t, grads_t, _ = forward_backward(x, w, b, dy, padding, layout, backend="torch")
    errs_t = {"y": rel_err(y_t, y_ref)} | {n: rel_err(grads_t[n], ref[n]) for n in grads_t}
    for name, err in errs.items():
        # floor: a tenth of the tolerance (the two sum in different orders)
        assert err <= max(2 * errs_t[name], TOL[dtype] / 10), (name, err, errs_t[name])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_gpu_input_bias(layout, padding, dtype):
    """The Hyena shape with in_proj's bias folded in: y and all four gradients vs float64."""
    B, D, L, K = 3, 777, 4097, 3
    x, w, b, dy = make_inputs(B, D, L, K, layout, dtype, seed=5, device="cuda")
    ib = torch.randn(D, generator=torch.Generator().manual_seed(9)).to("cuda", dtype)
    leaves = [t.clone().requires_grad_() for t in (x, w, b, ib)]
    y = short_conv(*leaves[:3], input_bias=leaves[3], padding=padding, layout=layout)
    grads = torch.autograd.grad(y, leaves, dy)
    y_ref, refs = input_bias_reference(x, w, b, ib, dy, padding, layout)
    errs = {"y": rel_err(y, y_ref)}
    names = ("dx", "dw", "db", "dib")
    errs |= {n: rel_err(g, r) for n, g, r in zip(names, grads, refs, strict=True)}
    for name, err in errs.items():
        assert err < TOL[dtype], (name, err, errs)


@pytest.mark.gpu
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("K", [1, 2, 3, 4, 5, 6, 7, 8, 16])
def test_gpu_filter_widths(K, layout):
    for padding in PADDINGS:
        x, w, b, dy = make_inputs(2, 111, 1000, K, layout, torch.bfloat16, seed=K, device="cuda")
        res = compare(x, w, b, dy, padding, layout)
        assert res["ok"]
        for name, err in res["errs"].items():
            assert err < TOL[torch.bfloat16], (padding, name, err)


@pytest.mark.gpu
def test_gpu_widest_filter():
    """K = MAX_TAPS (one layout and padding: its backward takes ~30 s to compile)."""
    from kernels.short_conv import triton as triton_backend

    K = triton_backend.MAX_TAPS
    x, w, b, dy = make_inputs(2, 111, 1000, K, "bdl", torch.bfloat16, seed=K, device="cuda")
    res = compare(x, w, b, dy, "same", "bdl")
    for name, err in res["errs"].items():
        assert err < TOL[torch.bfloat16], (name, err)


@pytest.mark.gpu
def test_gpu_fp64():
    x, w, b, dy = make_inputs(2, 37, 300, 3, "bld", torch.float64, device="cuda")
    res = compare(x, w, b, dy, "same", "bld")
    assert res["ok"]
    for name, err in res["errs"].items():
        assert err < TOL[torch.float64], (name, err)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize(
    ("layout", "options"),
    [
        pytest.param("bdl", {}, id="bdl-default"),
        pytest.param("bld", {}, id="bld-default"),
        pytest.param("bdl", {"tile": 2048, "tiles": 3}, id="bdl-tile2048-tiles3"),
        pytest.param("bld", {"tile": 8192, "tiles": 5}, id="bld-tile8192-tiles5"),
        pytest.param("bdl", {"wide": True}, id="bdl-wide"),
        pytest.param("bld", {"wide": True, "tile": 1024}, id="bld-wide-tile1024"),
        pytest.param("bld", {"num_warps": 4}, id="bld-4warps"),
    ],
)
def test_gpu_launcher_poisoned(layout, options, dtype):
    """Every element of y, dx and the dw workspace written under each launch setting."""
    from kernels.short_conv import triton as triton_backend

    x, w, b, dy = make_inputs(3, 111, 3001, 4, layout, dtype, seed=9, device="cuda")
    plan_options = {k: v for k, v in options.items() if k != "num_warps"}
    nan = float("nan")
    y, dx = torch.full_like(x, nan), torch.full_like(x, nan)
    workspace = torch.full(
        triton_backend.workspace_shape(x, w, layout, **plan_options), nan, device=x.device
    )
    triton_backend.forward(x, w, b, "same", layout, out=y, **options)
    _, dw, dbias, _ = triton_backend.backward(
        dy,
        x,
        w,
        "same",
        layout,
        (True, True, True, False),
        dx_out=dx,
        workspace=workspace,
        **options,
    )
    assert not (y.isnan().any() or dx.isnan().any() or workspace.isnan().any())
    y_ref, ref = reference_grads(x, w, b, dy, "same", layout)
    for name, got in (("y", y), ("dx", dx), ("dw", dw), ("dbias", dbias)):
        want = y_ref if name == "y" else ref[name]
        assert rel_err(got, want) < TOL[dtype], name


@pytest.mark.gpu
@pytest.mark.parametrize("layout", LAYOUTS)
def test_gpu_backward_deterministic(layout):
    """dw and dbias: the same bits on every run (no atomics)."""
    x, w, b, dy = make_inputs(4, 768, 4096, 3, layout, torch.bfloat16, device="cuda")
    _, first, _ = forward_backward(x, w, b, dy, "causal", layout)
    for _ in range(3):
        _, again, _ = forward_backward(x, w, b, dy, "causal", layout)
        for name in GRADS:
            assert torch.equal(first[name], again[name]), name


@pytest.mark.gpu
def test_gpu_auto_picks_triton(monkeypatch):
    from kernels.short_conv import triton as triton_backend

    calls = []
    launch = triton_backend.forward

    def counted(*args, **kwargs):
        calls.append(1)
        return launch(*args, **kwargs)

    monkeypatch.setattr(triton_backend, "forward", counted)
    x, w, b, _ = make_inputs(2, 16, 64, 3, "bdl", torch.bfloat16, device="cuda")
    short_conv(x, w, b)
    assert calls == [1]
    short_conv(x, torch.randn(16, triton_backend.MAX_TAPS + 1, device="cuda"), b)
    assert calls == [1], "auto must fall back to torch for filters wider than MAX_TAPS"


@pytest.mark.gpu
@pytest.mark.parametrize("layout", LAYOUTS)
def test_gpu_autocast(layout):
    """fp32 x under bf16 autocast: the bf16 kernels run; gradients come back in fp32."""
    x, w, b, dy = make_inputs(3, 96, 777, 3, layout, torch.float32, seed=2, device="cuda")
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = short_conv(*leaves, layout=layout, backend="triton")
    assert y.dtype == torch.bfloat16
    grads = torch.autograd.grad(y, leaves, dy.bfloat16())
    assert all(g.dtype == torch.float32 for g in grads)
    y_ref, ref = reference_grads(x.bfloat16(), w, b, dy.bfloat16(), "causal", layout)
    assert rel_err(y, y_ref) < TOL[torch.bfloat16]
    for name, g in zip(GRADS, grads, strict=True):
        assert rel_err(g, ref[name]) < TOL[torch.bfloat16], name


class _ShortConvBlock(nn.Module):
    """in_proj -> short_conv (bld) -> SiLU: how Hyena-style blocks use the kernel."""

    def __init__(self, d: int, K: int):
        super().__init__()
        self.proj = nn.Linear(d, d)
        self.w = nn.Parameter(torch.randn(d, K) / K**0.5)
        self.b = nn.Parameter(torch.randn(d))

    def forward(self, u):
        z = self.proj(u)  # [B, L, D]
        return F.silu(
            short_conv(z, self.w, self.b, padding="causal", layout="bld", backend="triton")
        )


@pytest.mark.gpu
def test_gpu_compile_fullgraph_module():
    """torch.compile(fullgraph=True) with inductor: the eager results, forward and backward."""
    torch.manual_seed(0)
    block = _ShortConvBlock(96, 4).cuda()
    compiled = torch.compile(block, fullgraph=True)
    u = torch.randn(3, 1000, 96, device="cuda")
    dy = torch.randn(3, 1000, 96, device="cuda")
    y_e = block(u)
    g_e = torch.autograd.grad(y_e, list(block.parameters()), dy)
    y_c = compiled(u)
    g_c = torch.autograd.grad(y_c, list(block.parameters()), dy)
    assert rel_err(y_c, y_e) < 1e-5
    for a, e in zip(g_c, g_e, strict=True):
        assert rel_err(a, e) < 1e-5


@pytest.mark.gpu
@pytest.mark.parametrize("layout", LAYOUTS)
def test_gpu_cuda_graph_capture_forward_backward(layout):
    """Forward and backward captured in one CUDA graph and replayed on new inputs."""
    x, w, b, dy = make_inputs(3, 111, 1000, 3, layout, torch.bfloat16, seed=11, device="cuda")
    static = [t.clone().requires_grad_() for t in (x, w, b)]

    def step():
        y = short_conv(*static, padding="same", layout=layout, backend="triton")
        return y, torch.autograd.grad(y, static, dy)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up (compiles the kernels) on a side stream
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y_graph, grads_graph = step()

    fresh = make_inputs(3, 111, 1000, 3, layout, torch.bfloat16, seed=12, device="cuda")[:3]
    with torch.no_grad():
        for dst, src in zip(static, fresh, strict=True):
            dst.copy_(src)
    graph.replay()
    torch.cuda.synchronize()
    y_ref, ref = reference_grads(*fresh, dy, "same", layout)
    assert rel_err(y_graph, y_ref) < TOL[torch.bfloat16]
    for name, g in zip(GRADS, grads_graph, strict=True):
        assert rel_err(g, ref[name]) < TOL[torch.bfloat16], name


@pytest.mark.gpu
@pytest.mark.parametrize("layout", LAYOUTS)
def test_gpu_offsets_past_2_31(layout):
    """B*D*L > 2^31: the last sequence's elements lie where 32-bit offsets would wrap."""
    B, D, L, K = 2, 1024, 2**20 + 7, 3
    assert B * D * L > 2**31
    gen = torch.Generator(device="cuda").manual_seed(0)
    shape = (B, D, L) if layout == "bdl" else (B, L, D)
    x = torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=gen).requires_grad_()
    w = torch.randn(D, K, device="cuda", generator=gen).requires_grad_()
    y = short_conv(x, w, padding="causal", layout=layout, backend="triton")
    # the last sequence, last 5 channels (convolved on their own: the conv is depthwise)
    last = (
        (slice(-1, None), slice(-5, None))
        if layout == "bdl"
        else (slice(-1, None), ..., slice(-5, None))
    )
    x_last, w_last = x.detach()[last], w.detach()[-5:]
    y_ref = conv_ref64(x_last, w_last, None, "causal", layout)
    assert rel_err(y.detach()[last], y_ref) < TOL[torch.bfloat16]

    dy = torch.zeros_like(y)
    dy[last] = torch.randn(y_ref.shape, device="cuda", generator=gen).bfloat16()
    dx, dw = torch.autograd.grad(y, (x, w), dy)
    _, ref = reference_grads(x_last, w_last, None, dy[last], "causal", layout)
    assert rel_err(dx[last], ref["dx"]) < TOL[torch.bfloat16]
    assert rel_err(dw[-5:], ref["dw"]) < TOL[torch.bfloat16]


if __name__ == "__main__":
    _interpreter_main()
