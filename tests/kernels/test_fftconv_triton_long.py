"""The long-sequence Triton path (``triton_long``) against float64 references.

CPU: the kernels run under TRITON_INTERPRET=1 (set before triton is imported), so the cases run
in one subprocess (this file run as a module) and the tests check what it printed. The outer
and inner sizes are forced small (``n0``, e.g. n = 1024 as 4 x 256) so that the interpreter
runs the long kernels at a few thousand samples; fp32 and fp16 only (the interpreter's bf16
``tl.dot`` is wrong). GPU (``gpu`` marker): the compiled kernels at their real sizes, up to
L = 2^22, every dtype, through the public call.
"""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch

from .fftconv_reference import conv_numpy, conv_torch64, make_inputs, rel_err, to_numpy
from .interpreted import run_interpreted

TOL = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 1e-2}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
GRADS = ("u", "k", "pregate", "postgate", "bias")


def conv_fft64(u, k, pre=None, post=None, bias=None, mode="causal"):
    """The convolution in float64 through torch.fft, any device, differentiable: linear
    convolution (size >= L + Lk - 1) windowed per mode; circular folds the linear result."""
    v = u * pre if pre is not None else u
    L = u.shape[-1]
    if mode == "bidirectional" and k.dim() == 3:
        fwd, rev = k[0], k[1]
        k = torch.cat([rev[:, 1:].flip(-1), fwd[:, :1] + rev[:, :1], fwd[:, 1:]], dim=-1)
    n = 1 << (L + k.shape[-1] - 2).bit_length()
    full = torch.fft.irfft(torch.fft.rfft(v, n=n) * torch.fft.rfft(k, n=n), n=n)
    if mode == "circular":
        z = torch.cat([full[..., : L - 1] + full[..., L : 2 * L - 1], full[..., L - 1 : L]], -1)
    else:
        start = (k.shape[-1] - 1) // 2 if mode == "bidirectional" else 0
        z = full[..., start : start + L]
    y = z * post if post is not None else z
    return y + bias[:, None] * v if bias is not None else y


def _spectrum_for(k, plan):
    """(kc, kf) as the public call builds them: circular order, rfft at the plan's size."""
    from kernels.fftconv import reference
    from kernels.fftconv.interface import circular_filter

    kc = circular_filter(k, plan)
    return kc, reference.rfft(kc.float(), plan.fft_size, plan.keep_bins)


# ---------------------------------------------------------------------------------------------
# CPU: interpreter cases, run in a subprocess

# id -> (B, H, L, out_len, n, n0, dtype, gated, max_intermediate_bytes): conv_long on a forced
# split, NaN-poisoned output. Odd B (a sequence without a partner), out_len > L (the linear
# convolution a fold reads), L = n (no zero rows), several chunks, two outer levels.
LAUNCHER_CASES = {
    "B3-H2-L500-n1024-4x256-fp32-gated": (3, 2, 500, 500, 1024, 4, "fp32", True, None),
    "B2-H2-L1000-n2048-8x256-fp16-gated": (2, 2, 1000, 1000, 2048, 8, "fp16", True, None),
    "B1-H2-L4096-n4096-16x256-fp32-plain": (1, 2, 4096, 4096, 4096, 16, "fp32", False, None),
    "B2-H1-L700-out1500-n2048-8x256-fp32": (2, 1, 700, 1500, 2048, 8, "fp32", False, None),
    "B3-H3-L301-n1024-2x512-fp16-chunk-h": (3, 3, 301, 301, 1024, 2, "fp16", True, 4 * 4096),
    "B5-H2-L301-n1024-2x512-fp32-chunk-b": (5, 2, 301, 301, 1024, 2, "fp32", True, 8192),
}
# the same, slow in the interpreter (256 rows): two outer levels end to end (``-m slow``)
SLOW_LAUNCHER_CASES = {
    "B2-H1-L30001-n65536-256x256-fp32": (2, 1, 30001, 30001, 65536, 256, "fp32", True, None),
}
MODES = {"causal": "causal", "bidir": "bidirectional", "circ": "circular"}
# id -> (B, H, L, Lk, mode, dtype, gated, freq_keep, path): the public call, backend="triton";
# path: which code runs ("long" kernels, "fold-inner" = triton_fwd on a padded input)
FORWARD_CASES = {
    "B2-H2-L5000-K5000-causal-fp32-gated": (2, 2, 5000, 5000, "causal", "fp32", 1, 1.0, "long"),
    "B3-H1-L6000-M3001-bidir-fp16-gated": (3, 1, 6000, 6001, "bidir", "fp16", 1, 1.0, "long"),
    "B1-H1-L16384-circ-fp32-plain": (1, 1, 16384, 16384, "circ", "fp32", 0, 1.0, "long"),
    "B3-H1-L4099-circ-fp32-gated": (3, 1, 4099, 4099, "circ", "fp32", 1, 1.0, "long"),
    "B2-H3-L97-circ-fp16-gated": (2, 3, 97, 97, "circ", "fp16", 1, 1.0, "fold-inner"),
    "B2-H2-L31-circ-fp32-gated": (2, 2, 31, 31, "circ", "fp32", 1, 1.0, "fold-inner"),
    "B1-H1-L1-circ-fp32-gated": (1, 1, 1, 1, "circ", "fp32", 1, 1.0, "fold-inner"),
    "B3-H2-L1000-circ-fp16-plain": (3, 2, 1000, 1000, "circ", "fp16", 0, 1.0, "fold-inner"),
    "B2-H2-L300-circ-fp32-sparse": (2, 2, 300, 300, "circ", "fp32", 1, 0.25, "fold-inner"),
}
# id -> (B, H, L, Lk, mode, dtype, n0, needs): long_backward against float64 autograd; n0 forces
# the long kernels at a small n (None: the plan's own path); needs: u, k, pregate, postgate, bias
BACKWARD_CASES = {
    "B2-H2-L300-K200-causal-fp32-n0x2": (2, 2, 300, 200, "causal", "fp32", 2, "11111"),
    "B3-H2-L300-M101-bidir-fp32-n0x2": (3, 2, 300, 201, "bidir", "fp32", 2, "11111"),
    "B2-H1-L1024-circ-fp16-n0x4": (2, 1, 1024, 1024, "circ", "fp16", 4, "11111"),
    "B2-H1-L4099-circ-fp32": (2, 1, 4099, 4099, "circ", "fp32", None, "11111"),
    "B3-H2-L61-circ-fp32": (3, 2, 61, 61, "circ", "fp32", None, "11111"),
    "B2-H2-L499-circ-fp16": (2, 2, 499, 499, "circ", "fp16", None, "11111"),
    "B2-H1-L263-circ-fp32-u-only": (2, 1, 263, 263, "circ", "fp32", None, "10000"),
    "B2-H1-L263-circ-fp32-post-k": (2, 1, 263, 263, "circ", "fp32", None, "01010"),
}
# id -> (B, H, L, Lk, mode, dtype): fftconv(backend="triton").backward(), which reaches
# long_backward through the backend's fused_backward
PUBLIC_BACKWARD_CASES = {
    "public-B3-H2-L61-circ-fp32": (3, 2, 61, 61, "circ", "fp32"),
    "public-B2-H1-L4500-K4000-causal-fp32": (2, 1, 4500, 4000, "causal", "fp32"),
}
# id -> (which, B, H, L, n0, m, dtype): one two-level column kernel against its formula
TWO_LEVEL_CASES = {
    "cols-fwd2-B5-H1-L20000-256x256-fp32": ("fwd", 5, 1, 20000, 256, 256, "fp32"),
    "cols-inv2-B5-H2-L40000-256x256-fp32": ("inv", 5, 2, 40000, 256, 256, "fp32"),
    "cols-fwd2-B2-H1-L65536-256x256-fp16": ("fwd", 2, 1, 65536, 256, 256, "fp16"),
}


def _run_launcher_case(B, H, L, out_len, n, n0, dtype, gated, max_bytes):
    from kernels.fftconv import triton_long

    dt = DTYPES[dtype]
    u, k, pre, post, bias = make_inputs(B, H, L, min(L, n), dt, gated, seed=1)
    if out_len != L:
        pre = post = bias = None
    split = triton_long.make_split(n, n0)
    spectrum = triton_long.spectrum_layout(torch.fft.rfft(k, n=n), split)
    out = torch.full((B, H, out_len), float("nan"), dtype=dt)
    options = {"max_intermediate_bytes": max_bytes} if max_bytes else {}
    triton_long.conv_long(
        u, spectrum, split, out_len, pregate=pre, postgate=post, bias=bias, out=out, **options
    )
    v = u.double() * pre.double() if pre is not None else u.double()
    kf = torch.fft.rfft(k.double(), n=n)
    ref = torch.fft.irfft(torch.fft.rfft(v, n=n) * kf, n=n)[..., :out_len]
    if gated and out_len == L:
        ref = ref * post.double() + bias.double()[:, None] * v
    return {"y": rel_err(out, ref), "unwritten": float(out.isnan().sum())}, {}


def _run_forward_case(B, H, L, Lk, mode, dtype, gated, freq_keep, path):
    from kernels import fftconv
    from kernels.fftconv import core, reference
    from kernels.fftconv.plan import make_plan

    dt, mode = DTYPES[dtype], MODES[mode]
    u, k, pre, post, bias = make_inputs(B, H, L, Lk, dt, bool(gated), seed=2)
    gates = {"pregate": pre, "postgate": post, "bias": bias}
    y = fftconv(u, k, **gates, mode=mode, freq_keep=freq_keep, backend="triton")
    if freq_keep < 1.0:  # torch.fft in float64 on the same plan (the cut is defined there)
        plan = make_plan(mode, L, Lk, freq_keep)
        kc, _ = _spectrum_for(k.double(), plan)
        args = [x.double() if x is not None else None for x in (u, kc, pre, post, bias)]
        ref = core.forward(args[0], args[1], None, *args[2:], plan, reference)
    elif L * Lk > 10**6:  # direct summation gets slow: torch.fft in float64 (checked below)
        args = [x.double() if x is not None else None for x in (u, k, pre, post, bias)]
        ref = conv_fft64(*args, mode=mode)
    else:
        ref = conv_numpy(*(to_numpy(x) for x in (u, k, pre, post, bias)), mode=mode)
    return {"y": rel_err(y, ref)}, {"dtype_ok": y.dtype == dt}


def _run_backward_case(B, H, L, Lk, mode, dtype, n0, needs):
    from kernels.fftconv import triton_long
    from kernels.fftconv.plan import make_plan

    dt, mode, needs = DTYPES[dtype], MODES[mode], tuple(x == "1" for x in needs)
    u, k, pre, post, bias = make_inputs(B, H, L, Lk, dt, True, seed=3)
    plan = make_plan(mode, L, Lk)
    k_leaf = k.clone().requires_grad_()
    kc, kf = _spectrum_for(k_leaf, plan)
    dy = torch.randn(B, H, L, generator=torch.Generator().manual_seed(4)).to(dt)
    options = {"n0": n0} if n0 else {}
    grads = triton_long.long_backward(
        dy, u, kc.detach(), kf.detach(), pre, post, bias, plan, needs, **options
    )
    refs = [x.double().requires_grad_() for x in (u, k, pre, post, bias)]
    conv_torch64(*refs, mode=mode).backward(dy.double())
    errs, flags = {}, {}
    leaves = (u, k, pre, post, bias)
    for name, need, got, leaf, ref in zip(GRADS, needs, grads, leaves, refs, strict=True):
        flags[f"{name}_none_when_unneeded"] = (got is None) != need
        if got is None:
            continue
        flags[f"{name}_dtype"] = got.dtype == (kc.dtype if name == "k" else leaf.dtype)
        if name == "k":  # d_kc -> d_k through the layout (a crop, or the bidirectional gather)
            (got,) = torch.autograd.grad(kc, k_leaf, grad_outputs=got.to(kc.dtype))
        errs[name] = rel_err(got, ref.grad)
    return errs, flags


def _run_public_backward_case(B, H, L, Lk, mode, dtype):
    from kernels import fftconv

    dt, mode = DTYPES[dtype], MODES[mode]
    inputs = make_inputs(B, H, L, Lk, dt, True, seed=6)
    leaves = [x.clone().requires_grad_() for x in inputs]
    refs = [x.double().requires_grad_() for x in inputs]
    dy = torch.randn(B, H, L, generator=torch.Generator().manual_seed(7)).to(dt)
    u, k, pre, post, bias = leaves
    y = fftconv(u, k, pregate=pre, postgate=post, bias=bias, mode=mode, backend="triton")
    y.backward(dy)
    conv_torch64(*refs, mode=mode).backward(dy.double())
    errs = {name: rel_err(a.grad, b.grad) for name, a, b in zip(GRADS, leaves, refs, strict=True)}
    dtypes = {
        f"{name}_dtype": a.grad.dtype == a.dtype for name, a in zip(GRADS, leaves, strict=True)
    }
    return errs, dtypes


def _run_two_level_case(which, B, H, L, n0, m, dtype):
    """(A) alone: the intermediate against ``U_N0 @ x``; (A') alone: its output against
    ``conj(U_N0) @ E`` on a random intermediate (the two-level kernels, two pairs per program:
    an odd number of pairs leaves a masked step)."""
    import math

    from kernels.fftconv import triton_fwd, triton_long, triton_long_kernels

    dt = DTYPES[dtype]
    split = triton_long.make_split(n0 * m, n0)
    assert split.two_level
    n, nbp, steps = split.n, (B + 1) // 2, 2
    g = torch.Generator().manual_seed(5)
    j = torch.arange(n0, dtype=torch.float64)
    U = torch.exp(-2j * math.pi * torch.outer(j, j) / n0) / math.sqrt(n0)
    tables = triton_long.constants(split, torch.device("cpu"), dt)
    bt = triton_long.default_block_cols(split)
    grid = (H * -(-nbp // steps) * (m // bt),)
    sizes = {"P": split.p, "Q": split.q, "M": m, "BT": bt, "STEPS": steps, "HAS_PREGATE": False}
    sizes["ROWS"] = triton_long._rows_for(L, split)
    sizes["PRECISION"] = triton_fwd.dot_precision(torch.empty(0, dtype=dt))
    if which == "fwd":
        u = torch.randn(B, H, L, generator=g).to(dt)
        buf = torch.full((H * nbp, 2, n0, m), float("nan"), dtype=dt)
        args = (u, u, buf, *tables, B, H, L, 0, 0, nbp)
        triton_long_kernels.cols_fwd2_kernel[grid](*args, **sizes)
        x = torch.nn.functional.pad(u.double(), (0, n - L))
        if B % 2:
            x = torch.cat([x, torch.zeros_like(x[:1])])
        x = (x[0::2] + 1j * x[1::2]).reshape(nbp, H, n0, m).transpose(0, 1).reshape(-1, n0, m)
        out = torch.view_as_real(torch.complex(buf[:, 0].double(), buf[:, 1].double()))
        ref = torch.view_as_real(U @ x)
    else:
        buf = torch.randn(H * nbp, 2, n0, m, generator=g).to(dt)
        out = torch.full((B, H, L), float("nan"), dtype=torch.float32)
        args = (buf, buf, buf, buf, buf, out, *tables, B, H, L, 0, 0, nbp)
        flags = {"HAS_POSTGATE": False, "HAS_BIAS": False, "BIAS_GATED": False}
        triton_long_kernels.cols_inv2_kernel[grid](*args, **sizes, **flags)
        e = torch.complex(buf[:, 0].double(), buf[:, 1].double())
        z = (U.conj() @ e).reshape(H, nbp, n)[..., :L].transpose(0, 1)  # [nbp, H, L]
        ref = torch.stack([z.real, z.imag], dim=1).reshape(2 * nbp, H, L)[:B]
    return {"y": rel_err(out, ref), "unwritten": float(out.isnan().sum())}, {}


def _interpreter_main(slow: bool) -> None:
    """Runs the CPU cases (the slow ones instead when ``slow``) under the interpreter; prints
    one JSON line of results."""
    assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    from kernels.fftconv import triton_fwd, triton_long

    calls = {"long": 0, "fold-inner": 0}
    conv_long, launch = triton_long.conv_long, triton_fwd.launch

    def counted_long(*args, **kwargs):
        calls["long"] += 1
        return conv_long(*args, **kwargs)

    def counted_launch(*args, **kwargs):
        calls["fold-inner"] += 1
        return launch(*args, **kwargs)

    triton_long.conv_long, triton_fwd.launch = counted_long, counted_launch
    jobs = [(cid, _run_launcher_case, args) for cid, args in LAUNCHER_CASES.items()]
    jobs += [(cid, _run_forward_case, args) for cid, args in FORWARD_CASES.items()]
    jobs += [(cid, _run_backward_case, args) for cid, args in BACKWARD_CASES.items()]
    jobs += [(cid, _run_public_backward_case, args) for cid, args in PUBLIC_BACKWARD_CASES.items()]
    jobs += [(cid, _run_two_level_case, args) for cid, args in TWO_LEVEL_CASES.items()]
    if slow:
        jobs = [(cid, _run_launcher_case, args) for cid, args in SLOW_LAUNCHER_CASES.items()]
    results = {}
    for cid, run, args in jobs:
        calls.update({"long": 0, "fold-inner": 0})
        errs, flags = run(*args)
        results[cid] = {"errs": errs, "flags": flags, "calls": dict(calls)}
    print(json.dumps(results))


def _interpret(*args: str) -> dict:
    return run_interpreted("tests.kernels.test_fftconv_triton_long", *args)


@pytest.fixture(scope="module")
def interpreted():
    return _interpret()


@pytest.fixture(scope="module")
def interpreted_slow():
    return _interpret("slow")


@pytest.mark.parametrize("case", list(LAUNCHER_CASES))
def test_interpreter_launcher_poisoned(interpreted, case):
    res = interpreted[case]
    assert res["errs"]["unwritten"] == 0
    assert res["errs"]["y"] < TOL[DTYPES[LAUNCHER_CASES[case][6]]], res["errs"]


@pytest.mark.slow
@pytest.mark.parametrize("case", list(SLOW_LAUNCHER_CASES))
def test_interpreter_launcher_two_level_end_to_end(interpreted_slow, case):
    res = interpreted_slow[case]
    assert res["errs"]["unwritten"] == 0
    assert res["errs"]["y"] < TOL[DTYPES[SLOW_LAUNCHER_CASES[case][6]]], res["errs"]


@pytest.mark.parametrize("case", list(FORWARD_CASES))
def test_interpreter_forward(interpreted, case):
    *_, dtype, _, _, path = FORWARD_CASES[case]
    res = interpreted[case]
    assert res["flags"]["dtype_ok"], "output dtype differs from u's"
    assert res["calls"][path] >= 1, f"the {path} path was not taken: {res['calls']}"
    assert res["errs"]["y"] < TOL[DTYPES[dtype]], res["errs"]


@pytest.mark.parametrize("case", list(BACKWARD_CASES))
def test_interpreter_backward(interpreted, case):
    dtype, n0, needs = BACKWARD_CASES[case][5:]
    res = interpreted[case]
    assert all(res["flags"].values()), res["flags"]
    assert res["calls"]["long"] + res["calls"]["fold-inner"] >= 1, res["calls"]
    assert set(res["errs"]) == {
        name for name, need in zip(GRADS, needs, strict=True) if need == "1"
    }
    for name, err in res["errs"].items():
        assert err < TOL[DTYPES[dtype]], (name, err)


@pytest.mark.parametrize("case", list(PUBLIC_BACKWARD_CASES))
def test_interpreter_public_backward(interpreted, case):
    res = interpreted[case]
    assert all(res["flags"].values()), res["flags"]
    assert res["calls"]["long"] + res["calls"]["fold-inner"] >= 2, res["calls"]  # fwd + bwd
    for name, err in res["errs"].items():
        assert err < TOL[DTYPES[PUBLIC_BACKWARD_CASES[case][-1]]], (name, err)


@pytest.mark.parametrize("case", list(TWO_LEVEL_CASES))
def test_interpreter_two_level_columns(interpreted, case):
    res = interpreted[case]
    assert res["errs"]["unwritten"] == 0
    assert res["errs"]["y"] < TOL[DTYPES[TWO_LEVEL_CASES[case][-1]]], res["errs"]


# ---------------------------------------------------------------------------------------------
# CPU, no kernel launched: plans, splits, layout, validation


def test_supports_covers_long_and_folded_plans():
    from kernels.fftconv import triton_long
    from kernels.fftconv.plan import make_plan

    assert triton_long.supports(make_plan("causal", 8192, 8192), torch.bfloat16)  # n = 16384
    assert triton_long.supports(make_plan("causal", 2**22, 2**22), torch.float16)  # n = 2^23
    assert not triton_long.supports(make_plan("causal", 2**23, 2**23), torch.float16)  # 2^24
    # fp32 keeps the inner size <= 4096 (shared memory), so its outer size caps n at 2^22
    assert triton_long.supports(make_plan("causal", 2**21, 2**21), torch.float32)  # n = 2^22
    assert not triton_long.supports(make_plan("causal", 2**22, 2**22), torch.float32)
    assert triton_long.make_split(2**21, dtype=torch.float32).m == 4096
    assert triton_long.make_split(2**21, dtype=torch.bfloat16).m == 8192
    assert not triton_long.supports(make_plan("causal", 4096, 4096), torch.float32)  # fused
    assert triton_long.supports(make_plan("circular", 97, 97), torch.float32)  # fold, n = 256
    assert triton_long.supports(make_plan("circular", 31, 31), torch.float32)  # fold, n = 64
    assert not triton_long.supports(make_plan("circular", 31, 31, 0.25), torch.float32)
    assert not triton_long.supports(make_plan("circular", 5000, 5000), torch.float64)


@pytest.mark.parametrize("n", [2**k for k in range(14, 24)])
def test_default_split(n):
    from kernels.fftconv import triton_long

    s = triton_long.make_split(n)
    assert s.n0 * s.m == n and s.p * s.q == s.n0
    assert triton_long.MIN_INNER <= s.m <= triton_long.MAX_INNER
    assert (s.q > 1) == (s.n0 > triton_long.ONE_LEVEL_MAX)
    if s.two_level:
        assert s.p >= s.q >= 16


def test_spectrum_layout_order():
    """Entry [h, k0, :, a1, a2] is bin k0 + N0 (a1 + M1 a2) of the full spectrum."""
    from kernels.fftconv import triton_fwd, triton_long

    split = triton_long.make_split(4096, 8)
    M1, M2 = triton_fwd.split(split.m)
    k = torch.randn(3, 4096, generator=torch.Generator().manual_seed(0))
    full = torch.fft.fft(k.double())
    lay = triton_long.spectrum_layout(torch.fft.rfft(k, n=4096), split)
    conj = triton_long.spectrum_layout(torch.fft.rfft(k, n=4096), split, conj=True)
    for h, k0, a1, a2 in [(0, 0, 0, 0), (1, 7, 3, 5), (2, 3, M1 - 1, M2 - 1), (0, 5, 10, 2)]:
        want = full[h, k0 + 8 * (a1 + M1 * a2)]
        got = complex(lay[h, k0, 0, a1, a2], lay[h, k0, 1, a1, a2])
        assert abs(got - complex(want)) < 1e-3 * (1 + abs(want))
        assert conj[h, k0, 1, a1, a2] == -lay[h, k0, 1, a1, a2]


@pytest.mark.parametrize(
    ("n", "n0", "match"),
    [
        pytest.param(3000, None, "n must be a power of two", id="n-not-pow2"),
        pytest.param(2**24, None, "n must be a power of two in", id="n-too-large"),
        pytest.param(2**16, 3, "n0 must be a power of two", id="n0-not-pow2"),
        pytest.param(2**16, 2048, "n0 must be a power of two in", id="n0-too-large"),
        pytest.param(2**16, 512, "inner size m", id="m-too-small"),
        pytest.param(2**20, 16, "inner size m", id="m-too-large"),
    ],
)
def test_make_split_rejects(n, n0, match):
    from kernels.fftconv import triton_long

    with pytest.raises(ValueError, match=match):
        triton_long.make_split(n, n0)


def test_conv_long_validation():
    from kernels.fftconv import triton_long

    split = triton_long.make_split(1024, 4)
    u = torch.randn(2, 3, 500)
    spec = triton_long.spectrum_layout(torch.fft.rfft(torch.randn(3, 500), n=1024), split)
    with pytest.raises(ValueError, match=r"spectrum must be fp32 of shape \(3, 4, 2, 16, 16\)"):
        triton_long.conv_long(u, spec[:2], split)
    with pytest.raises(TypeError, match="x must have a dtype"):
        triton_long.conv_long(u.double(), spec, split)
    with pytest.raises(ValueError, match=r"L and out_len must be in \[1, n=1024\]"):
        triton_long.conv_long(u, spec, split, 1025)
    with pytest.raises(ValueError, match=r"postgate must have shape \(2, 3, 500\)"):
        triton_long.conv_long(u, spec, split, postgate=u[:, :, :10])
    with pytest.raises(ValueError, match="postgate and bias need out_len == L=500"):
        triton_long.conv_long(u, spec, split, 700, bias=torch.randn(3))
    with pytest.raises(ValueError, match="block_cols must be a power of two"):
        triton_long.conv_long(u, spec, split, block_cols=24)
    with pytest.raises(ValueError, match=r"kf must be complex of shape \(H, 513\)"):
        triton_long.spectrum_layout(torch.randn(3, 513), split)


def test_fft64_reference_matches_direct():
    for mode in ("causal", "bidirectional", "circular"):
        Lk = {"causal": 41, "bidirectional": 41, "circular": 57}[mode]
        u, k, pre, post, bias = (
            None if x is None else x.double()
            for x in make_inputs(2, 3, 57, Lk, torch.float32, True)
        )
        want = conv_torch64(u, k, pre, post, bias, mode=mode)
        assert rel_err(conv_fft64(u, k, pre, post, bias, mode=mode), want) < 1e-12, mode


# ---------------------------------------------------------------------------------------------
# GPU: the compiled kernels at their real sizes

GPU_DTYPES = [pytest.param(d, id=name) for name, d in DTYPES.items()]
# (B, H, L, mode, dtypes): B*H small at the big sizes so the float64 reference fits and runs
# fast; bf16 everywhere, fp16 and fp32 at a spread of sizes (each size compiles its kernels)
GPU_FORWARD_SHAPES = [
    (3, 111, 8191, "causal", "bf16 fp16 fp32"),
    (2, 111, 8191, "circular", "bf16 fp16 fp32"),  # folded, prime L
    (3, 16, 16384, "causal", "bf16"),
    (2, 8, 16384, "bidirectional", "bf16 fp32"),
    (1, 5, 32768, "causal", "bf16 fp16"),
    (2, 4, 32768, "circular", "bf16"),
    (3, 4, 65536, "causal", "bf16"),
    (2, 3, 65537, "circular", "bf16 fp16"),  # folded, prime L
    (2, 2, 2**20, "causal", "bf16 fp16 fp32"),
    (1, 2, 2**20 - 3, "bidirectional", "bf16"),
    (1, 1, 1000003, "circular", "bf16 fp16"),  # folded, prime L
    (2, 1, 2**22, "causal", "bf16 fp16 fp32"),
]
GPU_FORWARD = [
    pytest.param(B, H, L, mode, DTYPES[name], id=f"B{B}-H{H}-L{L}-{mode}-{name}")
    for B, H, L, mode, names in GPU_FORWARD_SHAPES
    for name in names.split()
]


def _full_filter_len(L, mode):
    return 2 * L - 1 if mode == "bidirectional" else L


@pytest.mark.gpu
@pytest.mark.parametrize("gated", [False, True], ids=["plain", "gated"])
@pytest.mark.parametrize(("B", "H", "L", "mode", "dtype"), GPU_FORWARD)
def test_gpu_forward(B, H, L, mode, dtype, gated):
    from kernels import fftconv

    u, k, pre, post, bias = make_inputs(
        B, H, L, _full_filter_len(L, mode), dtype, gated, device="cuda"
    )
    y = fftconv(u, k, pregate=pre, postgate=post, bias=bias, mode=mode, backend="triton")
    assert y.dtype == dtype and y.shape == u.shape
    ref = conv_fft64(
        *(None if x is None else x.double() for x in (u, k, pre, post, bias)), mode=mode
    )
    err = rel_err(y, ref)
    del ref
    assert err < TOL[dtype], err


@pytest.mark.gpu
def test_gpu_cuda_graph_after_prepare():
    """FFTConv.prepare builds every table, so the long path captures and replays."""
    from kernels import FFTConv

    B, H, L = 2, 3, 8192
    conv = FFTConv(L, backend="triton")
    conv.prepare(L, "cuda", torch.bfloat16)
    u, k, pre, post, bias = make_inputs(B, H, L, L, torch.bfloat16, True, device="cuda")
    spec = conv.filter_spectrum(k)
    want = conv(u, spec, pre, post, bias)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        got = conv(u, spec, pre, post, bias)
    u.copy_(torch.randn_like(u))
    graph.replay()
    assert rel_err(got, conv(u, spec, pre, post, bias)) < 1e-6
    assert rel_err(got, want) > 0.1  # the replay saw the new input


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize(
    ("B", "H", "L", "n", "n0"),
    [
        pytest.param(3, 7, 20000, 2**15, 32, id="B3-H7-L20000-n32K-32x1024"),
        pytest.param(2, 3, 2**17, 2**18, 256, id="B2-H3-L128K-n256K-256x1024-two-level"),
        pytest.param(2, 2, 2**18 + 5, 2**20, 1024, id="B2-H2-L256K-n1M-1024x1024-two-level"),
        pytest.param(3, 2, 3000, 2**13, 16, id="B3-H2-L3000-n8192-16x512"),
    ],
)
def test_gpu_launcher_splits_poisoned(B, H, L, n, n0, dtype):
    """Other splits than the default, NaN-poisoned output."""
    from kernels.fftconv import triton_long

    u, k, pre, post, bias = make_inputs(B, H, L, L, dtype, True, seed=5, device="cuda")
    split = triton_long.make_split(n, n0)
    kf = torch.fft.rfft(k, n=n)
    out = torch.full_like(u, float("nan"))
    spectrum = triton_long.spectrum_layout(kf, split)
    gates = {"pregate": pre, "postgate": post, "bias": bias}
    triton_long.conv_long(u, spectrum, split, **gates, out=out)
    v = u.double() * pre.double()
    z = torch.fft.irfft(torch.fft.rfft(v, n=n) * kf.to(torch.complex128), n=n)[..., :L]
    ref = z * post.double() + bias.double()[:, None] * v
    assert not out.isnan().any()
    assert rel_err(out, ref) < TOL[dtype]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize(
    ("B", "H", "L", "Lk", "mode"),
    [
        pytest.param(3, 111, 8192, 8192, "causal", id="B3-H111-L8192-causal"),
        pytest.param(2, 5, 12289, 12289, "circular", id="B2-H5-L12289-circular-fold"),
        pytest.param(2, 3, 2**20, 2**19, "causal", id="B2-H3-L1M-K512K-causal"),
        pytest.param(3, 7, 1021, 1021, "circular", id="B3-H7-L1021-circular-fold-inner"),
    ],
)
def test_gpu_long_backward(B, H, L, Lk, mode, dtype):
    from kernels.fftconv import triton_long
    from kernels.fftconv.plan import make_plan

    u, k, pre, post, bias = make_inputs(B, H, L, Lk, dtype, True, seed=6, device="cuda")
    plan = make_plan(mode, L, Lk)
    assert triton_long.supports(plan, dtype)
    kc, kf = _spectrum_for(k, plan)
    dy = torch.randn(B, H, L, generator=torch.Generator().manual_seed(7)).to("cuda", dtype)
    grads = triton_long.long_backward(dy, u, kc, kf, pre, post, bias, plan, (True,) * 5)
    refs = [x.double().requires_grad_() for x in (u, k, pre, post, bias)]
    conv_fft64(*refs, mode=mode).backward(dy.double())
    for name, got, leaf, ref in zip(GRADS, grads, (u, k, pre, post, bias), refs, strict=True):
        if name == "k":
            got = torch.nn.functional.pad(got, (0, Lk - got.shape[-1]))
        assert got.dtype == leaf.dtype, name
        assert rel_err(got, ref.grad) < TOL[dtype], (name, rel_err(got, ref.grad))


if __name__ == "__main__":
    _interpreter_main(slow=sys.argv[1:] == ["slow"])
