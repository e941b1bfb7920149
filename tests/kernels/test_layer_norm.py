"""``add_layer_norm`` (fused residual add + LayerNorm) against float64 references, and the LM
blocks that use it.

The reference is ``residual + x`` then ``F.layer_norm`` in float64, differentiated by autograd
for the gradients of both outputs (a formulation the kernels do not share).

CPU: the torch backend in the main process (every dtype, affine or not, with or without a
residual, leading dims, awkward d and row counts; opcheck; torch.compile through AOTAutograd;
bad inputs); the Triton kernels under TRITON_INTERPRET=1, which must be set before triton is
imported, so those cases run in one subprocess (this file run as a module) and the tests check
what it printed. The kernels use no ``tl.dot``, so bf16 runs there too (fp32 -> bf16
truncated instead of rounded: about twice the compiled kernels' bf16 error, still within
tolerance). The models: the residual-passing blocks equal the old pre-norm math, dropout
included, and load the same state dicts.
GPU (``gpu`` marker): the compiled kernels at training size and odd shapes, autocast,
determinism of dweight, torch.compile with inductor, CUDA graphs, 64-bit offsets, the models.
"""

from __future__ import annotations

import json
from typing import NamedTuple

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kernels.layer_norm import add_layer_norm
from kernels.layer_norm import reference as reference_backend

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
EPS = 1e-5
GRADS = ("dx", "dres", "dw", "db")


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.double()
    return ((out.double() - ref).norm() / ref.norm()).item()


def make_inputs(
    shape,
    x_dtype,
    res_dtype=torch.float32,
    *,
    weight=True,
    bias=True,
    w_dtype=torch.float32,
    out_dtype=None,
    d_stream=True,
    seed=0,
    device="cpu",
) -> dict:
    """Fresh random inputs and output gradients: x in ``x_dtype``, the residual (a stream with
    an offset, as a real one drifts) in ``res_dtype`` or None, weight and bias ``[d]`` in
    ``w_dtype`` or None, dy in y's dtype, the stream's gradient in fp32 or None."""
    gen = torch.Generator().manual_seed(seed)
    d = shape[-1]

    def randn(*s):
        return torch.randn(*s, generator=gen)

    x = randn(*shape).to(device, x_dtype)
    res = (2 * randn(*shape) + 0.5).to(device, res_dtype) if res_dtype is not None else None
    w = (1 + 0.3 * randn(d)).to(device, w_dtype) if weight else None
    b = (0.2 * randn(d)).to(device, w_dtype) if bias else None
    y_dtype = out_dtype or x_dtype
    dy = randn(*shape).to(device, y_dtype)
    dr = randn(*shape).to(device) if d_stream else None
    if x_dtype == torch.float64 and dr is not None:
        dr = dr.double()
    return {"x": x, "residual": res, "weight": w, "bias": b, "dy": dy, "dr": dr, "out": out_dtype}


def reference64(inp: dict) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """y, the stream and the gradients of <y, dy> + <stream, dr> for every input there is,
    in float64 through ``residual + x`` and ``F.layer_norm``."""
    names = ("x", "residual", "weight", "bias")
    leaves = {n: inp[n].detach().double().requires_grad_() for n in names if inp[n] is not None}
    x = leaves["x"]
    r = x + leaves["residual"] if "residual" in leaves else x
    y = F.layer_norm(r, (x.shape[-1],), leaves.get("weight"), leaves.get("bias"), EPS)
    outs, grads_out = [y], [inp["dy"].double()]
    if inp["dr"] is not None:
        outs.append(r)
        grads_out.append(inp["dr"].double())
    grads = torch.autograd.grad(outs, list(leaves.values()), grads_out)
    keys = {"x": "dx", "residual": "dres", "weight": "dw", "bias": "db"}
    return y.detach(), r.detach(), {keys[n]: g for n, g in zip(leaves, grads, strict=True)}


def forward_backward(inp: dict, backend: str) -> tuple[torch.Tensor, torch.Tensor, dict, dict]:
    """y, the stream and the gradients through ``add_layer_norm``; and the leaves."""
    names = ("x", "residual", "weight", "bias")
    leaves = {n: inp[n].detach().clone().requires_grad_() for n in names if inp[n] is not None}
    y, r = add_layer_norm(
        leaves["x"],
        leaves.get("residual"),
        leaves.get("weight"),
        leaves.get("bias"),
        EPS,
        out_dtype=inp["out"],
        backend=backend,
    )
    outs, grads_out = [y], [inp["dy"]]
    if inp["dr"] is not None:
        outs.append(r)
        grads_out.append(inp["dr"])
    grads = torch.autograd.grad(outs, list(leaves.values()), grads_out)
    keys = {"x": "dx", "residual": "dres", "weight": "dw", "bias": "db"}
    return y.detach(), r.detach(), {keys[n]: g for n, g in zip(leaves, grads, strict=True)}, leaves


def compare(inp: dict, backend: str) -> dict:
    """Relative errors of y, the stream and every gradient; the tolerance of each (that of its
    dtype); and whether every dtype is right."""
    y, r, grads, leaves = forward_backward(inp, backend)
    y_ref, r_ref, ref = reference64(inp)
    errs = {"y": rel_err(y, y_ref), "stream": rel_err(r, r_ref)}
    errs |= {name: rel_err(grads[name], ref[name]) for name in grads}
    tols = {"y": TOL[y.dtype], "stream": TOL[r.dtype]}
    tols |= {name: TOL[grads[name].dtype] for name in grads}
    stream_dtype = torch.float64 if torch.float64 in (t.dtype for t in leaves.values()) else None
    want_y = inp["out"] or inp["x"].dtype
    keys = {"x": "dx", "residual": "dres", "weight": "dw", "bias": "db"}
    ok = (
        y.dtype == want_y
        and y.shape == r.shape == inp["x"].shape
        and r.dtype == (stream_dtype or torch.float32)
        and all(grads[keys[n]].dtype == t.dtype for n, t in leaves.items())
    )
    return {"errs": errs, "tols": tols, "ok": ok}


def assert_within(res: dict) -> None:
    for name, err in res["errs"].items():
        assert err < res["tols"][name], (name, err, res["errs"])


class Case(NamedTuple):
    shape: tuple[int, ...]
    x: str  # x's dtype
    res: str | None  # the residual's dtype, or no residual
    out: str | None = None  # out_dtype (None: the default)
    weight: bool = True
    bias: bool = True
    w: str = "fp32"  # weight's and bias's dtype
    dr: bool = True  # the stream is used (has a gradient); False: the final norm


# odd and prime d and row counts, leading dims, every dtype, affine or not, residual or not
CASES = {
    "N37-d97-fp32-res-fp32": Case((37, 97), "fp32", "fp32"),
    "B3-L5-d97-bf16-res-fp32-out-bf16": Case((3, 5, 97), "bf16", "fp32", "bf16"),
    "N31-d864-fp16-nores-weight-only": Case((31, 864), "fp16", None, bias=False),
    "N13-d864-bf16-res-fp32-bias-only-out-fp32": Case(
        (13, 864), "bf16", "fp32", "fp32", weight=False
    ),
    "B2-L3-T5-d7-fp32-nores-noaffine-final": Case(
        (2, 3, 5, 7), "fp32", None, weight=False, bias=False, dr=False
    ),
    "N41-d2-bf16-res-bf16": Case((41, 2), "bf16", "bf16"),
    "N17-d130-fp16-res-fp32-w-fp16-out-bf16": Case((17, 130), "fp16", "fp32", "bf16", w="fp16"),
    "N11-d33-fp32-res-fp16-w-bf16-out-fp16-final": Case(
        (11, 33), "fp32", "fp16", "fp16", w="bf16", dr=False
    ),
    "N1-d1031-fp32-res-fp32-one-row": Case((1, 1031), "fp32", "fp32"),
}


def case_inputs(case: str, seed: int = 0, device: str = "cpu") -> dict:
    c = CASES[case]
    return make_inputs(
        c.shape,
        DTYPES[c.x],
        DTYPES[c.res] if c.res else None,
        weight=c.weight,
        bias=c.bias,
        w_dtype=DTYPES[c.w],
        out_dtype=DTYPES[c.out] if c.out else None,
        d_stream=c.dr,
        seed=seed,
        device=device,
    )


# ---------------------------------------------------------------------------------------------
# CPU: the torch backend


@pytest.mark.parametrize("case", list(CASES))
def test_torch_backend_forward_backward(case):
    res = compare(case_inputs(case, seed=len(case)), "torch")
    assert res["ok"], "an output or gradient has the wrong dtype or shape"
    assert_within(res)


def test_fp64():
    inp = make_inputs((7, 33), torch.float64, torch.float64, w_dtype=torch.float64)
    res = compare(inp, "auto")
    assert res["ok"]
    assert_within(res)


def test_reference_backend_equals_layer_norm_in_fp64():
    """reference.py's written-out backward against autograd through F.layer_norm."""
    inp = make_inputs((19, 45), torch.float64, torch.float64, w_dtype=torch.float64)
    y_ref, r_ref, ref = reference64(inp)
    y, r, mean, rstd = reference_backend.forward(
        inp["x"], inp["residual"], inp["weight"], inp["bias"], EPS, torch.float64
    )
    d_pre, dw, db = reference_backend.backward(
        inp["dy"], inp["dr"], r, mean, rstd, inp["weight"], (True, True, True)
    )
    for got, want in ((y, y_ref), (r, r_ref), (d_pre, ref["dx"]), (dw, ref["dw"]), (db, ref["db"])):
        assert rel_err(got, want) < 1e-13


def test_d1_gives_the_bias_and_passes_the_stream_gradient():
    """d = 1: every row is its own mean, so y = bias, dw = 0 and dx = the stream's gradient."""
    inp = make_inputs((5, 1), torch.float32, torch.float32)
    y, r, grads, _ = forward_backward(inp, "torch")
    torch.testing.assert_close(y, inp["bias"].expand(5, 1))
    torch.testing.assert_close(r, inp["x"] + inp["residual"])
    torch.testing.assert_close(grads["dx"], inp["dr"])
    assert grads["dres"].data_ptr() == grads["dx"].data_ptr(), "same dtype: one tensor for both"
    assert torch.count_nonzero(grads["dw"]) == 0


def test_autocast_picks_the_output_dtype():
    """Under bf16 autocast y comes in bf16 (the next matmul's dtype), the stream in fp32, and
    the gradients in the inputs' dtypes; outside it y takes x's dtype."""
    inp = make_inputs((6, 40), torch.float32, torch.float32)
    leaves = [inp[n].clone().requires_grad_() for n in ("x", "residual", "weight", "bias")]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, r = add_layer_norm(*leaves)
    assert y.dtype == torch.bfloat16 and r.dtype == torch.float32
    grads = torch.autograd.grad([y, r], leaves, [inp["dy"].bfloat16(), inp["dr"]])
    assert all(g.dtype == torch.float32 for g in grads)
    y_ref, _, ref = reference64(inp | {"dy": inp["dy"].bfloat16()})
    assert rel_err(y, y_ref) < TOL[torch.bfloat16]
    assert rel_err(grads[0], ref["dx"]) < TOL[torch.float32]
    y, _ = add_layer_norm(inp["x"].half(), inp["residual"])
    assert y.dtype == torch.float16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, _ = add_layer_norm(inp["x"], inp["residual"], out_dtype=torch.float32)
    assert y.dtype == torch.float32


def test_unused_outputs_get_no_gradient_work():
    """An unused stream (the final norm) or an unused y: the backward gets None, not zeros,
    and the gradients are those of the output that was used."""
    inp = make_inputs((9, 31), torch.bfloat16, torch.float32)
    _, _, ref_y = reference64(inp | {"dr": None})
    leaves = [inp[n].clone().requires_grad_() for n in ("x", "residual", "weight", "bias")]
    y, _ = add_layer_norm(*leaves)
    grads = torch.autograd.grad(y, leaves, inp["dy"])
    for name, g in zip(GRADS, grads, strict=True):
        assert rel_err(g, ref_y[name]) < TOL[g.dtype], name

    _, r = add_layer_norm(*leaves)
    dx, dres, dw, db = torch.autograd.grad(r, leaves, inp["dr"], allow_unused=True)
    assert torch.equal(dres, inp["dr"]) and torch.equal(dx, inp["dr"].bfloat16())
    assert not dw.any() and not db.any()


def test_gradients_only_for_inputs_that_need_them():
    inp = make_inputs((8, 24), torch.float32, torch.float32)
    _, _, ref = reference64(inp)
    for wanted in ("x", "residual", "weight", "bias"):
        args = {n: inp[n].clone() for n in ("x", "residual", "weight", "bias")}
        args[wanted].requires_grad_()
        y, r = add_layer_norm(*args.values())
        (g,) = torch.autograd.grad([y, r], args[wanted], [inp["dy"], inp["dr"]])
        name = {"x": "dx", "residual": "dres", "weight": "dw", "bias": "db"}[wanted]
        assert rel_err(g, ref[name]) < TOL[torch.float32], wanted


def test_noncontiguous_inputs():
    inp = make_inputs((7, 2, 50), torch.float32, torch.float32)
    x = inp["x"].transpose(0, 1).contiguous().transpose(0, 1)  # same values, other strides
    assert not x.is_contiguous()
    y, r = add_layer_norm(x, inp["residual"], inp["weight"], inp["bias"])
    y_ref, r_ref, _ = reference64(inp)
    assert rel_err(y, y_ref) < TOL[torch.float32] and rel_err(r, r_ref) < TOL[torch.float32]


def test_empty_rows():
    x = torch.randn(0, 3, 16, requires_grad=True)
    w = torch.randn(16, requires_grad=True)
    y, r = add_layer_norm(x, None, w, None)
    assert y.shape == r.shape == (0, 3, 16)
    (dw,) = torch.autograd.grad(y.sum() + r.sum(), w, allow_unused=True)
    assert dw is None or not dw.any()


def test_opcheck():
    """Schema, fake tensors, autograd registration and AOT dispatch of both custom ops."""
    inp = make_inputs((5, 12), torch.bfloat16, torch.float32, out_dtype=torch.bfloat16)
    x, res, w, b = (inp[n] for n in ("x", "residual", "weight", "bias"))
    x, res, w, b = (t.requires_grad_() for t in (x, res, w, b))
    op = torch.ops.longconv.add_layer_norm.default
    torch.library.opcheck(op, (x, res, w, b, EPS, torch.bfloat16, "torch"))
    torch.library.opcheck(op, (x.detach(), None, None, None, 0.0, torch.float32, "torch"))
    y, r, mean, rstd = op(
        x.detach(), res.detach(), w.detach(), b.detach(), EPS, torch.bfloat16, "torch"
    )
    bwd = torch.ops.longconv.add_layer_norm_backward.default
    needs = [True, True, True, True]
    args = (inp["dy"], inp["dr"], r, mean, rstd, w.detach(), torch.bfloat16, torch.float32)
    torch.library.opcheck(bwd, (*args, torch.float32, needs, "torch"))
    stream_only = [True, False, False, False]
    args = (None, inp["dr"], r, mean, rstd, None, torch.bfloat16, torch.float32, None)
    torch.library.opcheck(bwd, (*args, stream_only, "torch"))


def _record_aot_graphs(ops: dict):
    from torch._dynamo.backends.common import aot_autograd
    from torch._functorch.aot_autograd import make_boxed_func

    def recorder(kind):
        def compiler(gm, example_inputs):
            ops[kind] = [str(n.target) for n in gm.graph.nodes if n.op == "call_function"]
            return make_boxed_func(gm.forward)

        return compiler

    return aot_autograd(fw_compiler=recorder("fw"), bw_compiler=recorder("bw"))


class _PreNormBlock(nn.Module):
    """Two branches on a stream, as the LM blocks run them, and a final norm."""

    def __init__(self, d: int):
        super().__init__()
        self.norm1, self.norm2, self.norm_f = (nn.LayerNorm(d) for _ in range(3))
        self.fc1, self.fc2 = nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x, backend: str = "torch"):
        h, r = add_layer_norm(x, None, self.norm1.weight, self.norm1.bias, backend=backend)
        h, r = add_layer_norm(self.fc1(h), r, self.norm2.weight, self.norm2.bias, backend=backend)
        h, _ = add_layer_norm(self.fc2(h), r, self.norm_f.weight, self.norm_f.bias, backend=backend)
        return h


def compile_case(backend: str) -> dict:
    """torch.compile(fullgraph=True) through AOTAutograd: one forward op per norm in the
    forward graph, one backward op per norm in the backward graph, eager's results."""
    torch.manual_seed(0)
    block = _PreNormBlock(24)
    x = torch.randn(3, 7, 24)
    ops: dict = {}
    compiled = torch.compile(block, fullgraph=True, backend=_record_aot_graphs(ops))
    y_e = block(x, backend)
    g_e = torch.autograd.grad(y_e.square().sum(), list(block.parameters()))
    y_c = compiled(x, backend)
    g_c = torch.autograd.grad(y_c.square().sum(), list(block.parameters()))
    errs = {"y": rel_err(y_c, y_e)} | {
        f"g{i}": rel_err(a, e) for i, (a, e) in enumerate(zip(g_c, g_e, strict=True))
    }
    counts = {
        "fw": ops.get("fw", []).count("longconv.add_layer_norm.default"),
        "bw": ops.get("bw", []).count("longconv.add_layer_norm_backward.default"),
    }
    return {"errs": errs, "counts": counts}


def test_compile_fullgraph():
    res = compile_case("torch")
    assert res["counts"] == {"fw": 3, "bw": 3}, res
    for name, err in res["errs"].items():
        assert err < 1e-6, (name, err)


NO_FEATURES = r"x must have shape \[\.\.\., d\] with d >= 1 features; got shape"
BAD = [
    (dict(x=[1.0]), TypeError, r"x must be a torch.Tensor; got list"),
    (
        dict(x=torch.ones(3, 4, dtype=torch.long)),
        TypeError,
        r"x must be a floating-point .* got torch.int64",
    ),
    (dict(x=torch.ones(3, 0)), ValueError, NO_FEATURES + r" \(3, 0\)"),
    (dict(x=torch.ones(())), ValueError, NO_FEATURES + r" \(\)"),
    (
        dict(residual=torch.ones(3, 5)),
        ValueError,
        r"residual must have the shape of x \(3, 4\); got",
    ),
    (dict(residual=torch.ones(3, 4).int()), TypeError, r"residual must be a floating-point"),
    (dict(weight=torch.ones(5)), ValueError, r"weight must have shape \(d,\) = \(4,\); got \(5,\)"),
    (
        dict(bias=torch.ones(1, 4)),
        ValueError,
        r"bias must have shape \(d,\) = \(4,\); got \(1, 4\)",
    ),
    (dict(eps="1e-5"), TypeError, r"eps must be a real number; got str"),
    (dict(eps=-1.0), ValueError, r"eps must be a finite number >= 0; got -1.0"),
    (dict(eps=float("nan")), ValueError, r"eps must be a finite number >= 0; got nan"),
    (dict(out_dtype=torch.int8), TypeError, r"out_dtype must be None or one of .*; got torch.int8"),
    (dict(out_dtype="bf16"), TypeError, r"out_dtype must be None or one of .* got 'bf16'"),
    (dict(backend="cuda"), ValueError, r"backend must be one of \('auto', 'torch', 'triton'\)"),
    (dict(residual=torch.ones(3, 4, device="meta")), ValueError, r"residual must be on the same"),
]


@pytest.mark.parametrize(("overrides", "error", "match"), BAD)
def test_bad_inputs_name_the_argument(overrides, error, match):
    args = {"x": torch.ones(3, 4), "residual": None, "weight": None, "bias": None, "eps": EPS}
    overrides = dict(overrides)
    kwargs = {k: overrides.pop(k) for k in ("out_dtype", "backend") if k in overrides}
    with pytest.raises(error, match=match):
        add_layer_norm(**(args | overrides), **kwargs)


def test_triton_backend_needs_cuda_or_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match=r"backend='triton' is not usable here: it runs on CUDA"):
        add_layer_norm(torch.ones(2, 4), backend="triton")


def test_resolve_backend():
    pytest.importorskip("triton")
    from kernels.layer_norm import triton as triton_backend
    from kernels.layer_norm.interface import resolve_backend

    cuda, cpu = torch.device("cuda"), torch.device("cpu")  # resolving touches no device
    fp32, bf16, fp64 = torch.float32, torch.bfloat16, torch.float64
    assert resolve_backend("auto", cuda, 864, (bf16, fp32)) == "triton"
    assert resolve_backend("auto", cuda, triton_backend.MAX_D + 1, (bf16, fp32)) == "torch"
    assert resolve_backend("auto", cuda, 864, (fp64,)) == "torch"
    assert resolve_backend("auto", cpu, 864, (fp32,)) == "torch"
    assert resolve_backend("torch", cuda, 864, (fp32,)) == "torch"
    with pytest.raises(ValueError, match=r"rows of up to 8192 features; got d=8193"):
        resolve_backend("triton", cuda, 8193, (fp32,))
    with pytest.raises(ValueError, match=r"fp16, bf16 or fp32 x and residual; got torch.float64"):
        resolve_backend("triton", cuda, 8, (fp64,))


def test_launch_plan():
    pytest.importorskip("triton")
    from kernels.layer_norm import triton as triton_backend

    plan = triton_backend.launch_plan
    fwd, bwd = plan(65536, 864), plan(65536, 864, backward=True)
    assert (fwd.block_m, fwd.block_d, fwd.num_warps, fwd.programs) == (4, 1024, 8, 16384)
    assert (bwd.block_m, bwd.num_warps, bwd.tiles, bwd.programs) == (1, 4, 64, 1024)
    for N in (1, 7, 1000, 65536, 10**6 + 3):
        for D in (1, 97, 864, 4096, 8192):
            for backward in (False, True):
                p = plan(N, D, backward=backward)
                rows = p.block_m * p.tiles
                assert p.programs * rows >= N > (p.programs - 1) * rows
                assert p.block_m & (p.block_m - 1) == 0 and p.tiles & (p.tiles - 1) == 0
                assert p.block_m <= triton_backend.triton.next_power_of_2(N)
                assert 1 <= p.num_warps <= triton_backend.MAX_WARPS
                if backward and N * D >= 2**22:  # enough rows: enough programs
                    assert p.programs >= triton_backend.MIN_PROGRAMS or p.tiles == 1
    with pytest.raises(ValueError, match=r"takes 1 <= d <= 8192; got d=8193"):
        plan(4, 8193)
    with pytest.raises(ValueError, match=r"block_m must be a power of two >= 1; got 3"):
        plan(4, 8, block_m=3)
    with pytest.raises(ValueError, match=r"tiles applies to the backward only"):
        plan(4, 8, tiles=2)


def test_launchers_reject_bad_input(monkeypatch):
    pytest.importorskip("triton")
    from kernels.layer_norm import triton as triton_backend

    x = torch.randn(4, 8)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match=r"runs on CUDA tensors .*; got x on cpu"):
        triton_backend.forward(x, None, None, None, EPS, torch.float32)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(TypeError, match=r"x must be one of .* got torch.float64"):
        triton_backend.forward(x.double(), None, None, None, EPS, torch.float32)
    with pytest.raises(ValueError, match=r"residual must have shape \(4, 8\) on cpu; got \(4, 9\)"):
        triton_backend.forward(x, torch.randn(4, 9), None, None, EPS, torch.float32)
    with pytest.raises(ValueError, match=r"y must be a contiguous torch.float16 tensor"):
        outs = (torch.empty(4, 8), torch.empty(4, 8), torch.empty(4), torch.empty(4))
        triton_backend.forward(x, None, None, None, EPS, torch.float16, out=outs)
    r, mean, rstd = torch.randn(4, 8), torch.randn(4), torch.rand(4)
    with pytest.raises(ValueError, match=r"needs must have 4 entries"):
        triton_backend.backward(x, None, r, mean, rstd, None, x.dtype, x.dtype, (True,) * 3)
    with pytest.raises(ValueError, match=r"asks for the gradient of weight, but weight is None"):
        triton_backend.backward(x, None, r, mean, rstd, None, x.dtype, x.dtype, (True,) * 4)
    with pytest.raises(ValueError, match=r"dy must have shape \(4, 8\)"):
        triton_backend.backward(
            x[:3], None, r, mean, rstd, None, x.dtype, x.dtype, (True,) + (False,) * 3
        )


# ---------------------------------------------------------------------------------------------
# CPU: the Triton kernels under the interpreter, in a subprocess

# cases through add_layer_norm(backend="triton"): all of CASES
# id -> ((N, D, x, residual, out), launch options): the launchers on NaN-poisoned outputs and
# workspace, with tilings the defaults do not reach at these sizes
LAUNCHER_CASES = {
    # 19 row tiles of 2 rows, 4 tiles per program: the last program has 3 tiles and skips one
    "N37-d97-m2-t4": ((37, 97, "bf16", "fp32", "bf16"), {"block_m": 2, "tiles": 4}),
    "N13-d864-m1-t8-w2": (
        (13, 864, "fp16", "fp32", "fp16"),
        {"block_m": 1, "tiles": 8, "num_warps": 2},
    ),
    # 4-row tiles on 5 rows: the second tile is mostly masked
    "N5-d33-m4-t1": ((5, 33, "fp32", "fp32", "fp32"), {"block_m": 4, "tiles": 1}),
    "N7-d1-default": ((7, 1, "fp32", None, "fp32"), {}),
    "N3-d1031-default-fp16-same-dtype": ((3, 1031, "fp16", "fp16", "fp32"), {}),
}  # fmt: skip
NEEDS_CASE = "needs-one-at-a-time"
AUTOCAST_CASE = "autocast-bf16"
COMPILE_CASE = "compile-fullgraph"
OPCHECK_CASE = "opcheck"
UNUSED_CASE = "unused-outputs"


def _run_api_case(case: str) -> dict:
    res = compare(case_inputs(case, seed=len(case)), "triton")
    return res


def _run_launcher_case(case, options):
    from kernels.layer_norm import triton as triton_backend

    N, D, x_name, res_name, out_name = case
    inp = make_inputs(
        (N, D), DTYPES[x_name], DTYPES[res_name] if res_name else None,
        out_dtype=DTYPES[out_name], seed=N + D,
    )  # fmt: skip
    x, res, w, b = (inp[n] for n in ("x", "residual", "weight", "bias"))
    nan = float("nan")
    fwd_options = {k: v for k, v in options.items() if k != "tiles"}
    outs = (
        torch.full((N, D), nan, dtype=DTYPES[out_name]),
        torch.full((N, D), nan),
        torch.full((N,), nan),
        torch.full((N,), nan),
    )
    triton_backend.forward(x, res, w, b, EPS, DTYPES[out_name], out=outs, **fwd_options)
    y, r, mean, rstd = outs
    res_dtype = res.dtype if res is not None else x.dtype
    needs = (True, res is not None, True, True)
    dx = torch.full((N, D), nan, dtype=x.dtype)
    dres = torch.full((N, D), nan, dtype=res_dtype)
    workspace = torch.full(triton_backend.workspace_shape(N, D, needs, **options), nan)
    _, _, dw, db = triton_backend.backward(
        inp["dy"], inp["dr"], r, mean, rstd, w, x.dtype, res_dtype, needs,
        dx_out=dx, d_residual_buf=dres, workspace=workspace, **options,
    )  # fmt: skip
    y_ref, r_ref, ref = reference64(inp)
    errs = {"y": rel_err(y, y_ref), "stream": rel_err(r, r_ref), "dx": rel_err(dx, ref["dx"])}
    if D > 1:  # d = 1: dw is zero (test_d1_...)
        errs["dw"] = rel_err(dw, ref["dw"])
    errs["db"] = rel_err(db, ref["db"])
    tols = {"y": TOL[y.dtype], "stream": TOL[torch.float32], "dx": TOL[x.dtype]}
    tols |= {"dw": TOL[torch.float32], "db": TOL[torch.float32]}
    if res is not None:
        errs["dres"], tols["dres"] = rel_err(dres, ref["dres"]), TOL[res_dtype]
    poisoned = [y, r, mean, rstd, dx, workspace] + ([dres] if res is not None else [])
    unwritten = sum(int(t.isnan().sum()) for t in poisoned)
    plan = triton_backend.launch_plan(N, D, backward=True, **options)
    return {"errs": errs, "tols": tols, "ok": unwritten == 0, "plan": plan._asdict()}


def _run_needs_case() -> dict:
    """One input at a time requires grad: the backward writes only that gradient."""
    inp = make_inputs((11, 50), torch.float16, torch.float32, seed=3)
    _, _, ref = reference64(inp)
    errs, tols = {}, {}
    for wanted, name in (("x", "dx"), ("residual", "dres"), ("weight", "dw"), ("bias", "db")):
        args = {n: inp[n].clone() for n in ("x", "residual", "weight", "bias")}
        args[wanted].requires_grad_()
        y, r = add_layer_norm(*args.values(), backend="triton")
        (g,) = torch.autograd.grad([y, r], args[wanted], [inp["dy"], inp["dr"]])
        errs[name], tols[name] = rel_err(g, ref[name]), TOL[g.dtype]
    return {"errs": errs, "tols": tols, "ok": True}


def _run_autocast_case() -> dict:
    inp = make_inputs((9, 40), torch.float32, torch.float32, seed=4)
    leaves = [inp[n].clone().requires_grad_() for n in ("x", "residual", "weight", "bias")]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, r = add_layer_norm(*leaves, backend="triton")
    dy = inp["dy"].bfloat16()
    grads = torch.autograd.grad([y, r], leaves, [dy, inp["dr"]])
    y_ref, _, ref = reference64(inp | {"dy": dy})
    errs = {"y": rel_err(y, y_ref)} | {
        n: rel_err(g, ref[n]) for n, g in zip(GRADS, grads, strict=True)
    }
    tols = {"y": TOL[torch.bfloat16]} | {n: TOL[torch.float32] for n in GRADS}
    ok = y.dtype == torch.bfloat16 and r.dtype == torch.float32
    return {"errs": errs, "tols": tols, "ok": ok and all(g.dtype == torch.float32 for g in grads)}


def _run_unused_case() -> dict:
    """y alone (the final norm: no stream gradient), then the stream alone (no dy: the op
    takes the torch math for that backward)."""
    inp = make_inputs((7, 29), torch.bfloat16, torch.float32, seed=5)
    _, _, ref = reference64(inp | {"dr": None})
    leaves = [inp[n].clone().requires_grad_() for n in ("x", "residual", "weight", "bias")]
    y, _ = add_layer_norm(*leaves, backend="triton")
    grads = torch.autograd.grad(y, leaves, inp["dy"])
    errs = {n: rel_err(g, ref[n]) for n, g in zip(GRADS, grads, strict=True)}
    tols = {n: TOL[g.dtype] for n, g in zip(GRADS, grads, strict=True)}
    _, r = add_layer_norm(*leaves, backend="triton")
    dx, dres, dw, db = torch.autograd.grad(r, leaves, inp["dr"])
    ok = torch.equal(dres, inp["dr"]) and not dw.any() and not db.any()
    return {"errs": errs, "tols": tols, "ok": ok}


def _run_opcheck_case() -> dict:
    inp = make_inputs((5, 12), torch.float16, torch.float32, seed=6)
    x, res, w, b = (inp[n].requires_grad_() for n in ("x", "residual", "weight", "bias"))
    op = torch.ops.longconv.add_layer_norm.default
    torch.library.opcheck(op, (x, res, w, b, EPS, torch.bfloat16, "triton"))
    return {"errs": {}, "tols": {}, "ok": True}


def _run_compile_case() -> dict:
    res = compile_case("triton")
    tols = dict.fromkeys(res["errs"], 1e-6)
    return {"errs": res["errs"], "tols": tols, "ok": res["counts"] == {"fw": 3, "bw": 3}}


def _interpreter_main() -> None:
    """Runs every CPU case under the interpreter; prints one JSON line of results."""
    start_interpreter()
    from kernels.layer_norm import triton as triton_backend

    calls = count_calls(triton_backend, "forward", "backward")
    jobs = [(cid, _run_api_case, (cid,)) for cid in CASES]
    jobs += [(cid, _run_launcher_case, args) for cid, args in LAUNCHER_CASES.items()]
    jobs += [(NEEDS_CASE, _run_needs_case, ()), (AUTOCAST_CASE, _run_autocast_case, ())]
    jobs += [(UNUSED_CASE, _run_unused_case, ()), (OPCHECK_CASE, _run_opcheck_case, ())]
    jobs += [(COMPILE_CASE, _run_compile_case, ())]
    results = {}
    for cid, run, args in jobs:
        calls.clear()
        results[cid] = run(*args) | {"kernels": sorted(set(calls))}
    print(json.dumps(results))


@pytest.fixture(scope="module")
def interpreted():
    return run_interpreted("tests.kernels.test_layer_norm")


@pytest.mark.parametrize("case", list(CASES))
def test_interpreter_forward_backward(interpreted, case):
    res = interpreted[case]
    assert res["kernels"] == ["backward", "forward"], "the triton kernels did not run"
    assert res["ok"], "an output or gradient has the wrong dtype or shape"
    assert_within(res)


@pytest.mark.parametrize("case", list(LAUNCHER_CASES))
def test_interpreter_launcher_poisoned(interpreted, case):
    """Every element of y, the stream, the statistics, dx, d_residual and the workspace
    written, with multi-tile chunks, a short last chunk and masked rows."""
    _, options = LAUNCHER_CASES[case]
    res = interpreted[case]
    assert res["ok"], "unwritten (NaN) elements left"
    if "tiles" in options:
        assert res["plan"]["tiles"] == options["tiles"]
    assert_within(res)


@pytest.mark.parametrize("case", [NEEDS_CASE, AUTOCAST_CASE, UNUSED_CASE, OPCHECK_CASE])
def test_interpreter_api(interpreted, case):
    res = interpreted[case]
    assert res["ok"], res
    assert "forward" in res["kernels"]
    assert_within(res)


def test_interpreter_compile_fullgraph(interpreted):
    res = interpreted[COMPILE_CASE]
    assert res["ok"], "one custom op per norm in each graph"
    assert res["kernels"] == ["backward", "forward"]
    assert_within(res)


# ---------------------------------------------------------------------------------------------
# The LM blocks: the same math as before the fused op


def _old_hidden(model, idx):
    """The trunk as the blocks computed it before the fused op: ``x + dropout(branch(norm(x)))``
    twice per block, then the final norm."""
    from models.gpt import GPTLM

    extra = model.block_args(idx)
    x = model.drop(model.wte(idx))
    for blk in model.blocks:
        mixer = (lambda h, b=blk: b.attn(h, *extra)) if isinstance(model, GPTLM) else blk.mixer
        x = x + blk.dropout(mixer(blk.norm1(x)))
        x = x + blk.dropout(blk.mlp(blk.norm2(x)))
    return model.norm_f(x)


def _tiny(family: str, **overrides):
    from models.gpt import GPTLM
    from models.lm import HyenaLM

    size = {"n_layer": 2, "d_model": 32, "d_inner": 48}
    if family == "hyena":
        return HyenaLM.from_name("hyena-tiny", **(size | overrides))
    return GPTLM.from_name("gpt-tiny", **(size | {"n_head": 2} | overrides))


@pytest.mark.parametrize("family", ["hyena", "gpt"])
@pytest.mark.parametrize("norm_backend", ["auto", "unfused"])
def test_blocks_match_the_old_pre_norm_math(family, norm_backend):
    """In float64 with dropout on (embedding and residual): the same hidden states and
    gradients as the old blocks with the same RNG draws."""
    torch.manual_seed(0)
    model = _tiny(family, resid_dropout=0.2, embed_dropout=0.1, norm_backend=norm_backend)
    model = model.double().train()
    idx = torch.randint(0, 256, (2, 23))
    torch.manual_seed(1)
    h = model.hidden(idx)
    grads = torch.autograd.grad(h.square().sum(), list(model.parameters()))
    torch.manual_seed(1)
    h_old = _old_hidden(model, idx)
    grads_old = torch.autograd.grad(h_old.square().sum(), list(model.parameters()))
    assert rel_err(h, h_old) < 1e-12
    for (name, _), g, g_old in zip(model.named_parameters(), grads, grads_old, strict=True):
        assert rel_err(g, g_old) < 1e-10, name


@pytest.mark.parametrize("family", ["hyena", "gpt"])
def test_blocks_under_autocast(family):
    """bf16 autocast: the trunk ends in bf16 (the head's matmul dtype) and agrees with the old
    trunk (fp32 out) within the bf16 tolerance, gradients included."""
    torch.manual_seed(0)
    model = _tiny(family).eval()
    idx = torch.randint(0, 256, (2, 19))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = model.hidden(idx)
        h_old = _old_hidden(model, idx)
    assert h.dtype == torch.bfloat16 and h_old.dtype == torch.float32
    assert rel_err(h, h_old) < TOL[torch.bfloat16]
    # a gradient of h that bf16 holds exactly: both trunks start their backward from the same
    # values, and differ only where they round (the same bf16 matmuls in both)
    dh = torch.randn(h.shape).bfloat16().float()
    grads = torch.autograd.grad((h.float() * dh).sum(), list(model.parameters()))
    grads_old = torch.autograd.grad((h_old * dh).sum(), list(model.parameters()))
    for (name, _), g, g_old in zip(model.named_parameters(), grads, grads_old, strict=True):
        assert rel_err(g, g_old) < TOL[torch.bfloat16], name


@pytest.mark.parametrize("family", ["hyena", "gpt"])
def test_state_dicts_are_unchanged(family):
    """The norms keep their nn.LayerNorm parameters: any norm_backend loads any other's
    weights, and the keys are the ones checkpoints hold."""
    fused, unfused = _tiny(family), _tiny(family, norm_backend="unfused")
    assert fused.state_dict().keys() == unfused.state_dict().keys()
    unfused.load_state_dict(fused.state_dict())
    keys = set(fused.state_dict())
    for name in ("norm_f.weight", "norm_f.bias", "blocks.1.norm1.weight", "blocks.0.norm2.bias"):
        assert name in keys
    idx = torch.randint(0, 256, (1, 9))
    assert rel_err(fused.eval()(idx), unfused.eval()(idx)) < 1e-5


def test_norm_backend_is_validated():
    with pytest.raises(ValueError, match=r"model.norm_backend must be one of .*; got 'apex'"):
        _tiny("hyena", norm_backend="apex")
    with pytest.raises(ValueError, match=r"model.norm_backend must be one of .*; got 'apex'"):
        _tiny("gpt", norm_backend="apex")


# ---------------------------------------------------------------------------------------------
# GPU

# (shape, x, residual, out): the training size, odd and prime sizes, d from 1 to MAX_D
GPU_SHAPES = [
    pytest.param((16 * 4096, 864), "bf16", "fp32", "bf16", id="N65536-d864-bf16-res-fp32-out-bf16"),
    pytest.param((3, 1000, 97), "bf16", "fp32", "bf16", id="B3-L1000-d97-bf16"),
    pytest.param((7, 13, 8191), "fp16", "fp32", "fp16", id="B7-L13-d8191-fp16"),
    pytest.param((4099, 8192), "bf16", "fp32", "bf16", id="N4099-d8192-bf16"),
    pytest.param((1009, 1), "fp32", "fp32", "fp32", id="N1009-d1-fp32"),
    pytest.param((2, 2053, 4096), "fp32", "fp32", "fp32", id="B2-L2053-d4096-fp32"),
    pytest.param((5003, 864), "fp32", None, "bf16", id="N5003-d864-fp32-nores-out-bf16"),
    pytest.param((3001, 1536), "bf16", "bf16", "bf16", id="N3001-d1536-bf16-res-bf16"),
    pytest.param((997, 130), "fp16", "fp32", "fp32", id="N997-d130-fp16-out-fp32"),
]  # fmt: skip


@pytest.mark.gpu
@pytest.mark.parametrize(("shape", "x_dtype", "res_dtype", "out_dtype"), GPU_SHAPES)
def test_gpu_forward_backward(shape, x_dtype, res_dtype, out_dtype):
    """y, the stream and all four gradients against float64; the triton backend at most 2x the
    torch backend's error in the same precision (floor: a tenth of the tolerance)."""
    inp = make_inputs(
        shape,
        DTYPES[x_dtype],
        DTYPES[res_dtype] if res_dtype else None,
        out_dtype=DTYPES[out_dtype],
        seed=shape[-1],
        device="cuda",
    )
    res = compare(inp, "triton")
    assert res["ok"]
    if shape[-1] == 1:
        res["errs"].pop("dw")  # d = 1: dw is zero (the reference's is rounding noise)
    assert_within(res)
    res_t = compare(inp, "torch")
    for name, err in res["errs"].items():
        # d = 1: every gradient of the normalized row is a cancellation amplified by
        # 1/sqrt(eps) (the row has no variance), so the floor is the tolerance itself
        floor = res["tols"][name] / (1 if shape[-1] == 1 else 10)
        assert err <= max(2 * res_t["errs"][name], floor), (name, err, res_t)


@pytest.mark.gpu
def test_gpu_auto_picks_triton_and_autocast(monkeypatch):
    from kernels.layer_norm import triton as triton_backend

    calls = []
    launch = triton_backend.forward

    def counted(*args, **kwargs):
        calls.append(1)
        return launch(*args, **kwargs)

    monkeypatch.setattr(triton_backend, "forward", counted)
    inp = make_inputs((3, 333, 864), torch.float32, torch.float32, device="cuda")
    leaves = [inp[n].clone().requires_grad_() for n in ("x", "residual", "weight", "bias")]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y, r = add_layer_norm(*leaves)
    assert calls == [1] and y.dtype == torch.bfloat16 and r.dtype == torch.float32
    dy = inp["dy"].bfloat16()
    grads = torch.autograd.grad([y, r], leaves, [dy, inp["dr"]])
    y_ref, _, ref = reference64(inp | {"dy": dy})
    assert rel_err(y, y_ref) < TOL[torch.bfloat16]
    for name, g in zip(GRADS, grads, strict=True):
        assert g.dtype == torch.float32 and rel_err(g, ref[name]) < TOL[torch.float32], name
    add_layer_norm(inp["x"].double(), None)
    assert calls == [1], "auto must take torch for fp64"


@pytest.mark.gpu
def test_gpu_backward_deterministic():
    """dweight, dbias and dx: the same bits on every run (no atomics)."""
    inp = make_inputs((16 * 4096, 864), torch.bfloat16, torch.float32, device="cuda", seed=1)
    _, _, first, _ = forward_backward(inp, "triton")
    for _ in range(3):
        _, _, again, _ = forward_backward(inp, "triton")
        for name in GRADS:
            assert torch.equal(first[name], again[name]), name


@pytest.mark.gpu
@pytest.mark.parametrize(
    "options",
    [
        pytest.param({}, id="default"),
        pytest.param({"block_m": 1, "tiles": 64, "num_warps": 4}, id="m1-t64-w4"),
        pytest.param({"block_m": 2, "tiles": 16, "num_warps": 8}, id="m2-t16-w8"),
        pytest.param({"block_m": 8, "tiles": 1, "num_warps": 16}, id="m8-t1-w16"),
    ],
)
def test_gpu_launcher_poisoned(options):
    """Every element of every output and of the workspace written under each launch setting."""
    from kernels.layer_norm import triton as triton_backend

    N, D = 10007, 864
    inp = make_inputs((N, D), torch.bfloat16, torch.float32, device="cuda", seed=2)
    x, res, w, b = (inp[n] for n in ("x", "residual", "weight", "bias"))
    nan = float("nan")
    outs = (
        torch.full_like(x, nan),
        *(torch.full(s, nan, device="cuda") for s in ((N, D), (N,), (N,))),
    )
    fwd_opts = {k: v for k, v in options.items() if k != "tiles"}
    triton_backend.forward(x, res, w, b, EPS, torch.bfloat16, out=outs, **fwd_opts)
    y, r, mean, rstd = outs
    needs = (True, True, True, True)
    dx, dres = torch.full_like(x, nan), torch.full_like(res, nan)
    workspace = torch.full(
        triton_backend.workspace_shape(N, D, needs, **options), nan, device="cuda"
    )
    _, _, dw, db = triton_backend.backward(
        inp["dy"], inp["dr"], r, mean, rstd, w, x.dtype, res.dtype, needs,
        dx_out=dx, d_residual_buf=dres, workspace=workspace, **options,
    )  # fmt: skip
    assert not any(t.isnan().any() for t in (y, r, mean, rstd, dx, dres, workspace))
    y_ref, r_ref, ref = reference64(inp)
    assert rel_err(y, y_ref) < TOL[torch.bfloat16] and rel_err(dx, ref["dx"]) < TOL[torch.bfloat16]
    for got, want in ((r, r_ref), (dres, ref["dres"]), (dw, ref["dw"]), (db, ref["db"])):
        assert rel_err(got, want) < TOL[torch.float32]


@pytest.mark.gpu
def test_gpu_compile_fullgraph_inductor():
    """torch.compile(fullgraph=True) with inductor: eager's results, forward and backward."""
    torch.manual_seed(0)
    block = _PreNormBlock(864).cuda()
    compiled = torch.compile(block, fullgraph=True)
    x = torch.randn(4, 1000, 864, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y_e = block(x, "triton")
        y_c = compiled(x, "triton")
    g_e = torch.autograd.grad(y_e.float().square().sum(), list(block.parameters()))
    g_c = torch.autograd.grad(y_c.float().square().sum(), list(block.parameters()))
    assert rel_err(y_c, y_e) < TOL[torch.bfloat16]
    for a, e in zip(g_c, g_e, strict=True):
        assert rel_err(a, e) < 2e-2


@pytest.mark.gpu
def test_gpu_cuda_graph_capture_forward_backward():
    inp = make_inputs((3001, 864), torch.bfloat16, torch.float32, device="cuda", seed=3)
    static = [inp[n].clone().requires_grad_() for n in ("x", "residual", "weight", "bias")]

    def step():
        y, r = add_layer_norm(*static, backend="triton")
        return y, r, torch.autograd.grad([y, r], static, [inp["dy"], inp["dr"]])

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up (compiles the kernels) on a side stream
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y_graph, _, grads_graph = step()
    fresh = make_inputs((3001, 864), torch.bfloat16, torch.float32, device="cuda", seed=4)
    with torch.no_grad():
        for dst, name in zip(static, ("x", "residual", "weight", "bias"), strict=True):
            dst.copy_(fresh[name])
    graph.replay()
    torch.cuda.synchronize()
    y_ref, _, ref = reference64(fresh | {"dy": inp["dy"], "dr": inp["dr"]})
    assert rel_err(y_graph, y_ref) < TOL[torch.bfloat16]
    for name, g in zip(GRADS, grads_graph, strict=True):
        assert rel_err(g, ref[name]) < TOL[g.dtype], name


@pytest.mark.gpu
def test_gpu_offsets_past_2_31():
    """N * d > 2^31: the last rows lie where 32-bit offsets would wrap."""
    N, D = 2**18 + 3, 8192
    assert N * D > 2**31
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(N, D, device="cuda", dtype=torch.bfloat16, generator=gen).requires_grad_()
    w = torch.randn(D, device="cuda", generator=gen).requires_grad_()
    y, _ = add_layer_norm(x, None, w, None, backend="triton")
    last = slice(-5, None)
    y_ref = F.layer_norm(x.detach()[last].double(), (D,), w.detach().double(), None, EPS)
    assert rel_err(y.detach()[last], y_ref) < TOL[torch.bfloat16]
    dy = torch.zeros_like(y)
    dy[last] = torch.randn(5, D, device="cuda", generator=gen).bfloat16()
    dx, dw = torch.autograd.grad(y, (x, w), dy)
    x64, w64 = x.detach()[last].double().requires_grad_(), w.detach().double().requires_grad_()
    dx_ref, dw_ref = torch.autograd.grad(
        F.layer_norm(x64, (D,), w64, None, EPS), (x64, w64), dy[last].double()
    )
    assert rel_err(dx[last], dx_ref) < TOL[torch.bfloat16]
    assert rel_err(dw, dw_ref) < TOL[torch.float32]


@pytest.mark.gpu
@pytest.mark.parametrize("family", ["hyena", "gpt"])
def test_gpu_models_fused_against_unfused(family):
    """A bf16-autocast training loss and its gradients: the fused blocks (triton) against the
    old unfused ones on the same weights."""
    torch.manual_seed(0)
    fused = _tiny(family, vocab_size=512, d_model=96, d_inner=192).cuda()
    unfused = _tiny(family, vocab_size=512, d_model=96, d_inner=192, norm_backend="unfused").cuda()
    unfused.load_state_dict(fused.state_dict())
    idx = torch.randint(0, 512, (4, 128), device="cuda")
    targets = torch.randint(0, 512, (4, 128), device="cuda")
    losses = []
    for model in (fused, unfused):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model.loss(idx, targets, reduction="mean")
        loss.backward()
        losses.append(loss.detach())
    assert rel_err(losses[0], losses[1]) < 1e-2
    for (name, p), q in zip(fused.named_parameters(), unfused.parameters(), strict=True):
        assert rel_err(p.grad, q.grad) < 5e-2, name


if __name__ == "__main__":
    _interpreter_main()
