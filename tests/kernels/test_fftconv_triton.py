"""The ``triton`` backend against float64 references.

CPU: the kernels run under TRITON_INTERPRET=1, which must be set before triton is imported, so
the cases run in one subprocess (this file run as a module) and the tests check what it
printed; the rest of the suite may already have imported triton. fp32 and fp16 only: the
interpreter's bf16 ``tl.dot`` is wrong (bf16 is tested on the GPU).
GPU (``gpu`` marker): the compiled kernels, every dtype, forward and backward.
"""

from __future__ import annotations

import json

import pytest
import torch

from .fftconv_reference import (
    DTYPES,
    GPU_DTYPES,
    TOL,
    conv_fft64,
    conv_numpy,
    conv_torch64,
    make_inputs,
    rel_err,
    spectrum_conv64,
    to_numpy,
)
from .interpreted import count_calls, run_interpreted, start_interpreter

# ---------------------------------------------------------------------------------------------
# CPU: interpreter cases, run in a subprocess
#
# id -> (B, H, L, Lk, mode, dtype, gated, freq_keep, fused): `fused` says whether the plan is
# one the fused kernel runs (n >= 256, folded circular plans included), else the primitives run.

FORWARD_CASES = {
    "B3-H5-L128-K128-causal-fp32-plain": (3, 5, 128, 128, "causal", "fp32", False, 1.0, True),
    "B3-H5-L128-K128-causal-fp32-gated": (3, 5, 128, 128, "causal", "fp32", True, 1.0, True),
    "B2-H3-L256-K256-causal-fp16-gated": (2, 3, 256, 256, "causal", "fp16", True, 1.0, True),
    "B1-H3-L300-K300-causal-fp16-plain": (1, 3, 300, 300, "causal", "fp16", False, 1.0, True),
    "B3-H2-L1000-K10-causal-fp32-gated": (3, 2, 1000, 10, "causal", "fp32", True, 1.0, True),
    "B3-H2-L200-K399-bidir-fp32-gated": (3, 2, 200, 399, "bidirectional", "fp32", True, 1.0, True),
    "B2-H3-L130-K61-bidir-fp16-gated": (2, 3, 130, 61, "bidirectional", "fp16", True, 1.0, True),
    "B2-H3-L256-circular-fp32-gated": (2, 3, 256, 256, "circular", "fp32", True, 1.0, True),
    "B1-H2-L4096-K4096-causal-fp16-gated": (1, 2, 4096, 4096, "causal", "fp16", True, 1.0, True),
    "B3-H2-L200-K60-causal-fp32-sparse": (3, 2, 200, 60, "causal", "fp32", True, 0.5, True),
    # n = 2048 (64 x 32): 75% of the bins zero -> 16 of 32 frequency columns computed
    "B3-H2-L1000-K1000-causal-fp32-sparse75": (
        3,
        2,
        1000,
        1000,
        "causal",
        "fp32",
        True,
        0.25,
        True,
    ),
    "B2-H3-L900-K500-causal-fp16-sparse75": (2, 3, 900, 500, "causal", "fp16", True, 0.25, True),
    # n = 4096 (64 x 64), 1/16 of the bins: 16 of 64 columns (14 low, 2 high)
    "B1-H2-L2000-K2000-causal-fp32-sparse94": (
        *(1, 2, 2000, 2000, "causal", "fp32"),
        *(True, 0.0625, True),
    ),
    "B2-H3-L97-K31-causal-fp32-fallback": (2, 3, 97, 31, "causal", "fp32", True, 1.0, False),
    # circular, L not a power of two: the linear convolution on the fused kernel, then folded
    "B2-H3-L200-circular-fp32-folded": (2, 3, 200, 200, "circular", "fp32", True, 1.0, True),
    "B1-H1-L1-K1-causal-fp16-fallback": (1, 1, 1, 1, "causal", "fp16", True, 1.0, False),
}
LAUNCHER_CASES = {  # id -> (B, H, L, n, dtype, gated, pair, steps[, skip_input[, hold]]):
    # NaN-poisoned
    "B3-H2-L300-n512-fp32-pair": (3, 2, 300, 512, "fp32", True, True, 1),
    "B3-H2-L300-n512-fp32-single": (3, 2, 300, 512, "fp32", True, False, 1),
    "B1-H3-L256-n256-fp16-pair": (1, 3, 256, 256, "fp16", False, True, 1),
    "B3-H2-L1027-n2048-fp16-pair": (3, 2, 1027, 2048, "fp16", True, True, 1),
    "B5-H1-L2048-n4096-fp16-pair": (5, 1, 2048, 4096, "fp16", True, True, 1),
    # several steps per program, the last program's loop cut short (7 = 2 + 2 + 2 + 1)
    "B7-H3-L200-n256-fp32-pair-steps2": (7, 3, 200, 256, "fp32", True, True, 2),
    "B7-H2-L129-n256-fp16-pair-steps4": (7, 2, 129, 256, "fp16", True, True, 4),
    "B5-H2-L100-n256-fp32-single-steps3": (5, 2, 100, 256, "fp32", True, False, 3),
    # the skip term's input loaded again at the output (launch's skip_input="reload")
    "B3-H2-L1027-n2048-fp16-pair-reload": (3, 2, 1027, 2048, "fp16", True, True, 1, "reload"),
    "B3-H2-L300-n512-fp32-single-reload": (3, 2, 300, 512, "fp32", True, False, 1, "reload"),
    "B7-H2-L129-n256-fp16-pair-steps4-reload": (7, 2, 129, 256, "fp16", True, True, 4, "reload"),
    # the filter spectrum loaded per step instead of held (launch's hold_filter=False)
    "B7-H2-L129-n256-fp16-pair-steps4-loadk": (
        *(7, 2, 129, 256, "fp16", True, True, 4, "reload", False),
    ),
    "B5-H2-L300-n512-fp32-single-steps3-loadk": (
        *(5, 2, 300, 512, "fp32", True, False, 3, "held", False),
    ),
}
# the three-stage kernel (launch's transform="three"): id -> (B, H, L, n, dtype, gates, pair,
# steps, skip_input), NaN-poisoned, z written too when gated; gates: "" or "pre-post-bias"
THREE_CASES = {
    # 5 sequences, 2 pairs per program: the second program's pair half empty
    "three-B5-H2-L2048-n4096-fp16-pair-steps2-reload": (
        *(5, 2, 2048, 4096, "fp16", "pre-post-bias", True, 2, "reload"),
    ),
    "three-B3-H2-L1999-n4096-fp32-single": (3, 2, 1999, 4096, "fp32", "", False, 1, "held"),
    # n = 8192: 16 of N1 = 32 rows hold the input (the zero-row skip), skip input held
    "three-B3-H1-L4093-n8192-fp16-pair-held": (
        *(3, 1, 4093, 8192, "fp16", "pre-post-bias", True, 1, "held"),
    ),
    "three-B7-H2-L300-n8192-fp32-pair-steps3": (
        *(7, 2, 300, 8192, "fp32", "pre-post-bias", True, 3, "reload"),
    ),
}
# the filter's bins gathered from its rfft by the kernel (fftconv_fwd's filter_layout="kernel")
# against the layout pass: id -> (B, n, L, dtype, options), outputs bit for bit equal
FILTER_CASES = {
    "filter-B3-n512-L300-fp32": (3, 512, 300, "fp32", {}),
    "filter-B2-n2048-L1000-fp16-keep300": (2, 2048, 1000, "fp16", {"keep_bins": 300}),
    "filter-B3-n4096-L2048-fp16-three": (3, 4096, 2048, "fp16", {"transform": "three"}),
    "filter-B3-n8192-L4096-fp16-three-held": (
        *(3, 8192, 4096, "fp16", {"transform": "three", "hold_filter": True}),
    ),
    "filter-B3-n8192-L4096-fp16-three-loaded": (
        *(3, 8192, 4096, "fp16", {"transform": "three", "hold_filter": False}),
    ),
    "filter-B2-n1024-L1500-fp16-blocked": (2, 1024, 1500, "fp16", {"blocked": True}),
    # two stages with the filter loaded per step (several steps: a reload per step), sparse
    "filter-B7-n2048-L1000-fp16-keep300-loaded": (
        *(7, 2048, 1000, "fp16", {"keep_bins": 300, "hold_filter": False, "steps": 2}),
    ),
}
SPECTRUM_CASE = "spectrum-n1024-L300-fp32"
BACKWARD_CASE = "B3-H2-L200-K150-causal-fp32-backward"
# a partial filter the default plan cuts into blocks (dense n = 4096, blocked n = 512), through
# the public call, forward and backward
BLOCKED_CASE = "B3-H2-L2500-K100-causal-fp16-blocked"
COMPILE_CASE = "compile-fullgraph-fp32"
# id -> (B, H, L, Lk, dtype, blocked, fused): the public call with a postgate that wants a
# gradient, forward and backward: the forward kernel keeps z, the backward kernel takes
# dpostgate = dy * z from it; below n = 256 (no kernel) the primitives keep z and the backward
# multiplies on the host
Z_CASES = {
    "z-B3-H2-L300-K300-causal-fp32": (3, 2, 300, 300, "fp32", False, True),
    "z-B2-H3-L200-K150-causal-fp16": (2, 3, 200, 150, "fp16", False, True),
    "z-B3-H2-L700-K100-causal-fp16-blocked": (3, 2, 700, 100, "fp16", True, True),
    "z-B2-H3-L50-K50-causal-fp32-primitives": (2, 3, 50, 50, "fp32", False, False),
}
# id -> (H, n, keep_bins, N1): spectrum_layout's kernel against its torch ops, bit for bit
LAYOUT_CASES = {
    "layout-H3-n256": (3, 256, None, None),
    "layout-H2-n2048-keep300": (2, 2048, 300, None),  # 16 of 32 columns, 8 low + 8 high
    "layout-H2-n4096-keep129-N1x32": (2, 4096, 129, 32),  # the backward's other split
    "layout-H1-n8192": (1, 8192, None, None),
    "layout3-H2-n4096": (2, 4096, None, "three"),  # spectrum_layout3
    "layout3-H1-n8192": (1, 8192, None, "three"),
}


def _run_forward_case(B, H, L, Lk, mode, dtype, gated, freq_keep, fused):
    from kernels import fftconv

    u, k, pre, post, bias = make_inputs(B, H, L, Lk, DTYPES[dtype], gated)
    y = fftconv(
        u,
        k,
        pregate=pre,
        postgate=post,
        bias=bias,
        mode=mode,
        freq_keep=freq_keep,
        backend="triton",
    )
    ref = conv_numpy(
        to_numpy(u),
        to_numpy(k),
        to_numpy(pre),
        to_numpy(post),
        to_numpy(bias),
        mode=mode,
        freq_keep=freq_keep,
    )
    return {"y": rel_err(y, ref)}, y.dtype == DTYPES[dtype]


def _run_launcher_case(B, H, L, n, dtype, gated, pair, steps, skip_input="held", hold=None):
    from kernels.fftconv import triton_fwd

    u, k, pre, post, bias = make_inputs(B, H, L, n, DTYPES[dtype], gated, seed=1)
    kf = torch.fft.rfft(k, n=n)  # a circular filter of length n
    out = torch.full_like(u, float("nan"))
    triton_fwd.fftconv_fwd(
        u, kf, pre, post, bias, n, out=out, pair=pair, steps=steps, skip_input=skip_input,
        hold_filter=hold,
    )  # fmt: skip
    full = torch.fft.irfft(torch.fft.rfft(k.double(), n=n), n=n)  # the same filter, float64
    v = u.double() * pre.double() if gated else u.double()
    z = torch.fft.irfft(torch.fft.rfft(v, n=n) * torch.fft.rfft(full, n=n), n=n)[..., :L]
    ref = z * post.double() + bias.double()[:, None] * v if gated else z
    return {"y": rel_err(out, ref), "unwritten": float(out.isnan().sum())}, True


def _run_three_case(B, H, L, n, dtype, gates, pair, steps, skip_input):
    from kernels.fftconv import triton_fwd

    gated = bool(gates)
    u, k, pre, post, bias = make_inputs(B, H, L, n, DTYPES[dtype], gated, seed=3)
    kf = torch.fft.rfft(k, n=n)  # a circular filter of length n
    out = torch.full_like(u, float("nan"))
    z_out = torch.full_like(u, float("nan")) if gated else None
    triton_fwd.fftconv_fwd(
        u, kf, pre, post, bias, n, out=out, pair=pair, steps=steps, skip_input=skip_input,
        transform="three", z_out=z_out,
    )  # fmt: skip
    ref, z = spectrum_conv64(u, kf, n, pre, post, bias)
    errs = {"y": rel_err(out, ref), "unwritten": float(out.isnan().sum())}
    if gated:
        errs |= {"z": rel_err(z_out, z), "z_unwritten": float(z_out.isnan().sum())}
    return errs, True


def _run_filter_case(B, n, L, dtype, options):
    from kernels.fftconv import triton_fwd

    H = 2
    taps = n // 2 if options.get("blocked") else n
    u, k, pre, post, bias = make_inputs(B, H, L, taps, DTYPES[dtype], True, seed=9)
    kf = torch.fft.rfft(k, n=n)
    if options.get("keep_bins"):
        kf[:, options["keep_bins"] :] = 0
    ys = {}
    for layout in ("pass", "kernel"):
        out = torch.full_like(u, float("nan"))
        triton_fwd.fftconv_fwd(u, kf, pre, post, bias, n, out=out, filter_layout=layout, **options)
        ys[layout] = out
    with triton_fwd.use_filter_layout("kernel"):  # the default's override takes the same path
        default = triton_fwd.fftconv_fwd(u, kf, pre, post, bias, n, **options)
    same = torch.equal(ys["pass"], ys["kernel"]) and torch.equal(default, ys["kernel"])
    return {"max_abs": float((ys["pass"] - ys["kernel"]).abs().max())}, same


def _run_spectrum_case():
    """A spectrum prepared for a longer length (n = 1024) serves L = 300: ROWS < N1."""
    from kernels import fftconv, filter_spectrum

    u, k, pre, post, bias = make_inputs(3, 2, 300, 40, torch.float32, True, seed=2)
    spec = filter_spectrum(k, 512, backend="triton")
    y = fftconv(u, spec, pregate=pre, postgate=post, bias=bias)
    ref = conv_numpy(to_numpy(u), to_numpy(k), to_numpy(pre), to_numpy(post), to_numpy(bias))
    return {"y": rel_err(y, ref)}, spec.plan.fft_size == 1024


def _run_backward_case():
    from kernels import fftconv

    u, k, pre, post, bias = make_inputs(3, 2, 200, 150, torch.float32, True, seed=3)
    leaves = [x.clone().requires_grad_() for x in (u, k, pre, post, bias)]
    refs = [x.double().requires_grad_() for x in (u, k, pre, post, bias)]
    dy = torch.randn(3, 2, 200, generator=torch.Generator().manual_seed(4))
    fftconv(
        *leaves[:2], pregate=leaves[2], postgate=leaves[3], bias=leaves[4], backend="triton"
    ).backward(dy)
    conv_torch64(*refs).backward(dy.double())
    names = ("u", "k", "pregate", "postgate", "bias")
    return {
        name: rel_err(a.grad, b.grad) for name, a, b in zip(names, leaves, refs, strict=True)
    }, True


def _run_blocked_case():
    from kernels import fftconv
    from kernels.fftconv.plan import make_plan

    u, k, pre, post, bias = make_inputs(3, 2, 2500, 100, torch.float16, True, seed=8)
    leaves = [x.clone().requires_grad_() for x in (u, k, pre, post, bias)]
    refs = [x.double().requires_grad_() for x in (u, k, pre, post, bias)]
    dy = torch.randn(3, 2, 2500, generator=torch.Generator().manual_seed(9)).half()
    y = fftconv(
        *leaves[:2], pregate=leaves[2], postgate=leaves[3], bias=leaves[4], backend="triton"
    )
    y.backward(dy)
    want = conv_torch64(*refs)
    want.backward(dy.double())
    names = ("u", "k", "pregate", "postgate", "bias")
    errs = {"y": rel_err(y, want)}
    errs |= {name: rel_err(a.grad, b.grad) for name, a, b in zip(names, leaves, refs, strict=True)}
    return errs, make_plan("causal", 2500, 100).blocked


def _run_z_case(B, H, L, Lk, dtype, blocked, fused):
    from kernels import fftconv
    from kernels.fftconv import core, triton_bwd, triton_fwd
    from kernels.fftconv import triton as triton_backend

    kept = count_calls(triton_backend, "fused_forward_z")
    host_product = core.postgate_grad
    host_products = count_calls(core, "postgate_grad")
    bwd_calls = []  # (needs, whether z was handed over) per backward launcher call
    kernel_flags = []  # (NEED_DPOSTGATE, Z_IN) per backward kernel launch
    forward_launches = []
    bwd, kernel, fwd_launch = (
        triton_bwd.fftconv_bwd, triton_bwd._fftconv_bwd_kernel, triton_fwd.launch
    )  # fmt: skip

    def recording(*args, **kwargs):
        bwd_calls.append((list(args[9]), kwargs.get("z") is not None))
        return bwd(*args, **kwargs)

    class Recorded:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                kernel_flags.append((kwargs["NEED_DPOSTGATE"], kwargs["Z_IN"]))
                return kernel[grid](*args, **kwargs)

            return launch

    def recording_forward(*args, **kwargs):
        forward_launches.append(kwargs.get("z_out") is not None)
        return fwd_launch(*args, **kwargs)

    triton_bwd.fftconv_bwd = recording
    triton_bwd._fftconv_bwd_kernel = Recorded()
    triton_fwd.launch = recording_forward
    try:
        u, k, pre, post, bias = make_inputs(B, H, L, Lk, DTYPES[dtype], True, seed=12)
        leaves = [x.clone().requires_grad_() for x in (u, k, pre, post, bias)]
        refs = [x.double().requires_grad_() for x in (u, k, pre, post, bias)]
        dy = torch.randn(B, H, L, generator=torch.Generator().manual_seed(13)).to(u.dtype)
        y = fftconv(
            *leaves[:2], pregate=leaves[2], postgate=leaves[3], bias=leaves[4],
            backend="triton", blocked=blocked,
        )  # fmt: skip
        y.backward(dy)
        want = conv_torch64(*refs)
        want.backward(dy.double())
    finally:
        triton_bwd.fftconv_bwd = bwd
        triton_bwd._fftconv_bwd_kernel = kernel
        triton_fwd.launch = fwd_launch
        core.postgate_grad = host_product
    names = ("u", "k", "pregate", "postgate", "bias")
    errs = {"y": rel_err(y, want)}
    errs |= {name: rel_err(a.grad, b.grad) for name, a, b in zip(names, leaves, refs, strict=True)}
    # z kept by the forward kernel (its one launch, which wrote z) and handed to the backward,
    # whose kernels computed the postgate's gradient from it: no launch transformed v for z,
    # no product on the host; without kernels, z from the primitives times dy on the host
    if fused:
        ok = (
            bool(kept)
            and forward_launches == [True]
            and bwd_calls == [([True] * 5, True)]
            and (True, True) in kernel_flags
            and (True, False) not in kernel_flags
            and not host_products
        )
    else:
        ok = bool(kept) and not (forward_launches or bwd_calls or kernel_flags)
        ok = ok and host_products == ["postgate_grad"]
    return errs, ok


def _run_compile_case():
    """torch.compile(fullgraph=True) around the triton backend: one graph, the eager result."""
    from kernels import fftconv

    u, k, pre, post, bias = make_inputs(2, 3, 200, 90, torch.float32, True, seed=6)

    def f(u, k, pre, post, bias):
        return fftconv(u, k, pregate=pre, postgate=post, bias=bias, backend="triton").tanh()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    return {"y": rel_err(compiled(u, k, pre, post, bias), f(u, k, pre, post, bias))}, True


def _run_layout_case(H, n, keep_bins, N1):
    from kernels.fftconv import triton_fwd

    if N1 == "three":
        g = torch.Generator().manual_seed(n + H)
        kf = torch.fft.rfft(torch.randn(H, n, generator=g), n=n)
        want = triton_fwd.spectrum_layout3(kf, n, kernel=False)
        got = triton_fwd.spectrum_layout3(kf, n, kernel=True)
        return {"max_abs": float((got - want).abs().max())}, torch.equal(got, want)

    g = torch.Generator().manual_seed(n + H)
    kf = torch.fft.rfft(torch.randn(H, n, generator=g), n=n)
    want = triton_fwd.spectrum_layout(kf, n, keep_bins, N1, kernel=False)
    got = triton_fwd.spectrum_layout(kf, n, keep_bins, N1, kernel=True)
    low, high = triton_fwd.kept_columns(n, keep_bins, N1=N1)
    # the cases cut columns where they say so
    shape_ok = got.shape == want.shape and (keep_bins is None) == (
        low + high == n // (N1 or triton_fwd.split(n)[0])
    )
    return {"max_abs": float((got - want).abs().max())}, shape_ok and torch.equal(got, want)


def _interpreter_main() -> None:
    """Runs every CPU case under the interpreter; prints one JSON line of results."""
    start_interpreter()
    from kernels.fftconv import triton_bwd, triton_fwd

    # every fused forward of n <= 8192 ends in launch (folded ones too)
    calls = count_calls(triton_fwd, "launch")
    bwd_calls = count_calls(triton_bwd, "launch")
    results = {}
    jobs = [(cid, _run_forward_case, args) for cid, args in FORWARD_CASES.items()]
    jobs += [(cid, _run_launcher_case, args) for cid, args in LAUNCHER_CASES.items()]
    jobs += [(cid, _run_three_case, args) for cid, args in THREE_CASES.items()]
    jobs += [(cid, _run_filter_case, args) for cid, args in FILTER_CASES.items()]
    jobs += [(SPECTRUM_CASE, _run_spectrum_case, ()), (BACKWARD_CASE, _run_backward_case, ())]
    jobs += [(COMPILE_CASE, _run_compile_case, ()), (BLOCKED_CASE, _run_blocked_case, ())]
    jobs += [(cid, _run_layout_case, args) for cid, args in LAYOUT_CASES.items()]
    jobs += [(cid, _run_z_case, args) for cid, args in Z_CASES.items()]
    for cid, run, args in jobs:
        calls.clear()
        bwd_calls.clear()
        errs, ok = run(*args)
        results[cid] = {"errs": errs, "ok": ok, "fused": bool(calls), "bwd_fused": bool(bwd_calls)}
    print(json.dumps(results))


@pytest.fixture(scope="module")
def interpreted():
    return run_interpreted("tests.kernels.test_fftconv_triton")


@pytest.mark.parametrize("case", list(FORWARD_CASES))
def test_interpreter_forward(interpreted, case):
    *_, dtype, _, _, fused = FORWARD_CASES[case]
    res = interpreted[case]
    assert res["ok"], "output dtype differs from u's"
    assert res["fused"] == fused, "fused path taken" if res["fused"] else "fused path skipped"
    assert res["errs"]["y"] < TOL[DTYPES[dtype]], res["errs"]


@pytest.mark.parametrize("case", list(Z_CASES))
def test_interpreter_postgate_gradient_from_kept_z(interpreted, case):
    """A postgate that wants a gradient: the forward kernel writes z too (dense and blocked
    plans), the backward kernel takes the postgate's gradient dy * z from it (no transform of v
    for z, and no forward launch in the blocked backward); below n = 256 the primitives keep z
    and the backward multiplies on the host; the output and all five gradients match
    float64."""
    dtype, _, fused = Z_CASES[case][4:]
    res = interpreted[case]
    assert res["ok"], "z not kept by the forward, or the backward recomputed it"
    assert res["fused"] == fused and res["bwd_fused"] == fused
    for name, err in res["errs"].items():
        assert err < TOL[DTYPES[dtype]], (name, err)


@pytest.mark.parametrize("case", list(LAUNCHER_CASES))
def test_interpreter_launcher_poisoned(interpreted, case):
    dtype = LAUNCHER_CASES[case][4]
    res = interpreted[case]
    assert res["errs"]["unwritten"] == 0
    assert res["errs"]["y"] < TOL[DTYPES[dtype]], res["errs"]


def test_interpreter_spectrum_for_longer_length(interpreted):
    res = interpreted[SPECTRUM_CASE]
    assert res["ok"] and res["fused"]
    assert res["errs"]["y"] < TOL[torch.float32], res["errs"]


@pytest.mark.parametrize("case", list(LAYOUT_CASES))
def test_interpreter_spectrum_layout_kernel_exact(interpreted, case):
    """The short path's spectrum layout in one kernel pass equals the torch ops bit for bit,
    dense and frequency-sparse (kept columns only), in either split."""
    res = interpreted[case]
    assert res["ok"], res["errs"]


def test_interpreter_compile_fullgraph(interpreted):
    res = interpreted[COMPILE_CASE]
    assert res["fused"], "the compiled graph did not run the fused kernel"
    assert res["errs"]["y"] < 1e-6, res["errs"]


def test_interpreter_backward(interpreted):
    res = interpreted[BACKWARD_CASE]
    assert res["fused"]
    for name, err in res["errs"].items():
        assert err < TOL[torch.float32], (name, err)


def test_interpreter_blocked_public_call(interpreted):
    """The default plan of a partial filter is blocked, and both fused kernels run it."""
    res = interpreted[BLOCKED_CASE]
    assert res["ok"], "the default plan is not blocked"
    assert res["fused"] and res["bwd_fused"]
    for name, err in res["errs"].items():
        assert err < TOL[torch.float16], (name, err)


@pytest.mark.parametrize(
    ("n", "dtype", "blocked", "store_z"),
    [
        pytest.param(8192, torch.bfloat16, False, False, id="n8192-bf16"),
        pytest.param(8192, torch.bfloat16, False, True, id="n8192-bf16-z"),
        pytest.param(8192, torch.bfloat16, True, True, id="n8192-bf16-blocked-z"),
        pytest.param(8192, torch.float32, False, False, id="n8192-fp32"),
        pytest.param(4096, torch.float32, True, False, id="n4096-fp32-blocked"),
        pytest.param(4096, torch.bfloat16, False, True, id="n4096-bf16-z"),
    ],
)
def test_forward_defaults_fit_sm90_shared_memory(n, dtype, blocked, store_z):
    """The default launch at the sizes where shared memory is tight (gated: the most tiles in
    flight; ``store_z``: also writing z, the forward of a postgate that wants a gradient),
    compiled for sm_90 as the launcher compiles it (``benchmarks.fftconv --static``), fits one
    block's shared memory; and the check sees an overflow (fp32 tables held for several steps
    at n = 8192 take 484 KB, which is why the launcher runs one step there)."""
    pytest.importorskip("triton")
    from benchmarks.common import compile_sm90
    from benchmarks.fftconv import SHARED_PER_BLOCK, static_stats
    from kernels.fftconv import triton_fwd

    try:
        stats = static_stats(n, dtype, True, blocked, store_z=store_z)
    except (FileNotFoundError, RuntimeError) as err:  # no ptxas / no NVIDIA backend here
        pytest.skip(f"no sm_90 compile on this machine: {err}")
    assert 0 < stats["shared_bytes"] <= SHARED_PER_BLOCK, stats
    if (n, dtype, blocked) == (8192, torch.float32, False):
        assert stats["steps"] == 1
        meta, _ = triton_fwd.kernel_meta(
            n, 32, 1024, n // 2, dtype, gates=(True,) * 3, precision="tf32x3", sms=132
        )
        warps = meta.pop("num_warps")
        kernel = triton_fwd._fftconv_fwd_kernel
        pointers = {name: "*fp32" for name in kernel.arg_names if name.endswith("_ptr")}
        _, held = compile_sm90(kernel, meta | {"STEPS": 8}, pointers, warps)
        assert held["shared_bytes"] > SHARED_PER_BLOCK, held


@pytest.mark.parametrize(
    ("n", "dtype", "store_z"),
    [
        pytest.param(4096, torch.bfloat16, True, id="n4096-bf16-z"),
        pytest.param(8192, torch.bfloat16, True, id="n8192-bf16-z"),
        pytest.param(8192, torch.float32, False, id="n8192-fp32"),
    ],
)
def test_three_stage_fits_sm90_shared_memory(n, dtype, store_z):
    """The three-stage kernel, gated, with the launcher's defaults otherwise, compiled for
    sm_90: within one block's shared memory, and without spills on 8 warps at n = 4096."""
    pytest.importorskip("triton")
    from benchmarks.fftconv import SHARED_PER_BLOCK, static_stats

    try:
        stats = static_stats(n, dtype, True, False, store_z=store_z, transform="three")
        if n == 4096:
            wide = static_stats(n, dtype, True, False, transform="three", num_warps=8)
    except (FileNotFoundError, RuntimeError) as err:  # no ptxas / no NVIDIA backend here
        pytest.skip(f"no sm_90 compile on this machine: {err}")
    assert 0 < stats["shared_bytes"] <= SHARED_PER_BLOCK, stats
    if n == 4096:
        assert wide["num_warps"] == 8 and wide["spill_store_bytes"] == 0, wide


@pytest.mark.parametrize("n", [4096, 8192])
def test_filter_loaded_per_step_fits_sm90_shared_memory(n):
    """The two-stage kernel with the filter loaded per step (``hold_filter=False``), gated and
    writing z, compiled for sm_90 as the launcher compiles it, fits one block's shared memory
    (at n = 8192 the launcher drops to one pipeline stage for it: two ask for 252 KB)."""
    pytest.importorskip("triton")
    from benchmarks.fftconv import SHARED_PER_BLOCK, static_stats

    try:
        stats = static_stats(
            n, torch.bfloat16, True, False, store_z=True, transform="two", hold_filter=False
        )
    except (FileNotFoundError, RuntimeError) as err:  # no ptxas / no NVIDIA backend here
        pytest.skip(f"no sm_90 compile on this machine: {err}")
    assert 0 < stats["shared_bytes"] <= SHARED_PER_BLOCK, stats
    assert stats["stages"] == (1 if n == 8192 else 2), stats


def test_skip_input_refuses_unknown_values():
    from kernels.fftconv import triton_fwd

    u = torch.randn(2, 3, 100)
    spectrum = torch.zeros(3, 2, 32, 16)
    with pytest.raises(
        ValueError, match=r"skip_input must be one of \('held', 'reload'\); got 'x'"
    ):
        triton_fwd.launch(u, spectrum, None, None, None, 512, skip_input="x")


def test_skip_input_reloaded_only_for_dense_16bit_plans_from_n4096():
    """v13's default: the skip term's input loaded again for fp16/bf16 dense plans at n = 4096
    and 8192 (held elsewhere, and in fp32); the launcher compiles what the policy says."""
    from kernels.fftconv import triton_fwd

    for n in (256, 1024, 2048, 4096, 8192):
        for dtype in (torch.float16, torch.bfloat16, torch.float32):
            want = "reload" if n >= 4096 and dtype != torch.float32 else "held"
            assert triton_fwd.skip_input_for(n, dtype) == want, (n, dtype)
            meta, _ = triton_fwd.kernel_meta(n, 4, 2, n // 2, dtype, gates=(True, True, True))
            assert meta["SKIP_INPUT"] == triton_fwd.SKIP_INPUTS[want], (n, dtype)
        assert triton_fwd.skip_input_for(n, torch.bfloat16, blocked=True) == "held"
    meta, _ = triton_fwd.kernel_meta(
        8192, 4, 2, 4096, torch.bfloat16, gates=(True, True, True), skip_input="held"
    )
    assert meta["SKIP_INPUT"] == triton_fwd.SKIP_INPUTS["held"]


def test_num_warps_two_only_for_dense_16bit_plans():
    """2 warps at the sizes measured faster on 2 (``TWO_WARPS_AT``) for dense fp16/bf16 plans
    only: fp32 (twice the registers per table) and blocked plans keep the 4 they were tuned on,
    and a caller that names no dtype (the long path's own kernels) gets the size's old default."""
    from kernels.fftconv import triton_fwd

    assert triton_fwd.TWO_WARPS_AT, "no size runs on 2 warps"
    for n in triton_fwd.TWO_WARPS_AT:
        assert n > 512, "sizes up to 512 run on 2 warps anyway"
        for dtype in (torch.float16, torch.bfloat16):
            assert triton_fwd.num_warps_for(n, dtype) == 2, (n, dtype)
            assert triton_fwd.num_warps_for(n, dtype, blocked=True) == 4, (n, dtype)
        assert triton_fwd.num_warps_for(n, torch.float32) == 4, n
        assert triton_fwd.num_warps_for(n) == 4, n
    assert set(triton_fwd.TWO_WARPS_AT) == {1024, 2048}
    assert triton_fwd.num_warps_for(4096, torch.bfloat16) == 4
    assert triton_fwd.num_warps_for(8192, torch.bfloat16) == 8
    assert triton_fwd.num_warps_for(512, torch.float32) == 2


@pytest.mark.parametrize("mode", ["causal", "bidirectional"])
def test_fft64_reference_matches_direct(mode):
    u, k, pre, post, bias = (
        None if x is None else x.double() for x in make_inputs(2, 3, 57, 41, torch.float32, True)
    )
    want = conv_torch64(u, k, pre, post, bias, mode=mode)
    assert rel_err(conv_fft64(u, k, pre, post, bias, mode=mode), want) < 1e-12


# ---------------------------------------------------------------------------------------------
# GPU

# (B, H, L): odd and even B (B = 1 runs unpaired), H = 111; L = 1 falls back (n < 256)
GPU_SHAPES = [
    pytest.param(2, 111, 1, id="B2-H111-L1"),
    pytest.param(3, 111, 97, id="B3-H111-L97"),
    pytest.param(2, 111, 256, id="B2-H111-L256"),
    pytest.param(1, 7, 256, id="B1-H7-L256"),
    pytest.param(3, 111, 1000, id="B3-H111-L1000"),
    pytest.param(2, 5, 1024, id="B2-H5-L1024"),
    pytest.param(3, 111, 4096, id="B3-H111-L4096"),
    pytest.param(1, 3, 4096, id="B1-H3-L4096"),
]


def _full_filter_len(L, mode):
    return L if mode == "causal" else 2 * L - 1


@pytest.mark.gpu
@pytest.mark.parametrize("gated", [False, True], ids=["plain", "gated"])
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("mode", ["causal", "bidirectional"])
@pytest.mark.parametrize(("B", "H", "L"), GPU_SHAPES)
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
    assert err < TOL[dtype], err
    if dtype == torch.float32:  # flash-attention's rule: at most 2x the torch.fft path's error
        y_torch = fftconv(u, k, pregate=pre, postgate=post, bias=bias, mode=mode, backend="torch")
        # floor: tf32x3 dots (three tf32 products) sit near 1e-6, a fifth of the tolerance
        assert err <= max(2 * rel_err(y_torch, ref), TOL[dtype] / 5), (err, rel_err(y_torch, ref))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize(
    ("B", "H", "L", "Lk", "mode", "pair"),
    [
        pytest.param(3, 111, 97, 50, "causal", False, id="B3-H111-L97-K50-causal"),
        pytest.param(2, 5, 1024, 1024, "causal", False, id="B2-H5-L1024-K1024-causal"),
        pytest.param(3, 7, 1000, 300, "bidirectional", True, id="B3-H7-L1000-M300-bidir-pair"),
        pytest.param(3, 111, 4096, 4096, "causal", False, id="B3-H111-L4096-K4096-causal"),
    ],
)
def test_gpu_backward(B, H, L, Lk, mode, pair, dtype):
    from kernels import fftconv

    u, k, pre, post, bias = make_inputs(B, H, L, Lk, dtype, True, pair=pair, device="cuda")
    leaves = [x.clone().requires_grad_() for x in (u, k, pre, post, bias)]
    refs = [x.double().requires_grad_() for x in (u, k, pre, post, bias)]
    dy = torch.randn(B, H, L, generator=torch.Generator().manual_seed(1)).to("cuda", dtype)
    fftconv(
        *leaves[:2],
        pregate=leaves[2],
        postgate=leaves[3],
        bias=leaves[4],
        mode=mode,
        backend="triton",
    ).backward(dy)
    conv_fft64(*refs, mode=mode).backward(dy.double())
    for name, a, b in zip(("u", "k", "pregate", "postgate", "bias"), leaves, refs, strict=True):
        assert a.grad is not None and a.grad.dtype == a.dtype, name
        assert rel_err(a.grad, b.grad) < TOL[dtype], (name, rel_err(a.grad, b.grad))


# (n, L) covering every tile-row count ROWS (16 .. N1) of every tile shape, L past a row boundary
@pytest.mark.parametrize("case", list(THREE_CASES))
def test_interpreter_three_stage_poisoned(interpreted, case):
    """The three-stage kernel against float64: every output (and z) written, pairs and single
    sequences, steps cut short, the zero-row skip at n = 8192, both skip inputs."""
    dtype = THREE_CASES[case][4]
    res = interpreted[case]
    assert res["fused"], "launch not called"
    errs = res["errs"]
    assert errs["unwritten"] == 0 and errs.get("z_unwritten", 0) == 0, errs
    assert errs["y"] < TOL[DTYPES[dtype]], errs
    if "z" in errs:
        assert errs["z"] < TOL[DTYPES[dtype]], errs


@pytest.mark.parametrize("case", list(FILTER_CASES))
def test_interpreter_filter_gathered_by_the_kernel(interpreted, case):
    """The kernels gather the filter's bins from its rfft (mirrored bins conjugated, the kept
    columns of a sparse filter, both transforms, held or loaded per step, blocked plans): the
    output equals the layout pass's bit for bit."""
    res = interpreted[case]
    assert res["fused"], "launch not called"
    assert res["ok"], res["errs"]


def test_filter_layout_refuses_unknown_values():
    from kernels.fftconv import triton_fwd

    u = torch.zeros(2, 1, 100)
    kf = torch.zeros(1, 257, dtype=torch.complex64)
    with pytest.raises(
        ValueError, match=r"filter_layout must be one of \('pass', 'kernel'\); got 'x'"
    ):
        triton_fwd.fftconv_fwd(u, kf, None, None, None, 512, filter_layout="x")
    with pytest.raises(ValueError, match=r"layout must be one of"):
        with triton_fwd.use_filter_layout("x"):
            pass
    # an rfft of the wrong length handed to the kernel
    with pytest.raises(
        ValueError, match=r"an rfft must be complex64 of shape \(1, 257\); got \(1, 129\)"
    ):
        triton_fwd.launch(u, torch.zeros(1, 129, dtype=torch.complex64), None, None, None, 512)


@pytest.mark.parametrize("gates", ["plain", "pre", "post"])
@pytest.mark.parametrize("n", [2048, 4096, 8192])
def test_filter_layout_default(n, gates, monkeypatch):
    """The filter's bins gathered by the kernel (the rfft handed to ``launch`` as it is) by
    default at the sizes of ``FILTER_IN_KERNEL_AT`` where the transform is two stages; laid out
    by the pass elsewhere, the three-stage transform included; ``use_filter_layout`` over
    both."""
    from kernels.fftconv import triton_fwd

    seen = []
    monkeypatch.setattr(triton_fwd, "launch", lambda u, spectrum, *a, **k: seen.append(spectrum))
    monkeypatch.setattr(triton_fwd, "_layout_kernel", False)  # torch ops: no interpreter here
    L = n // 2
    u = torch.zeros(2, 3, L, dtype=torch.bfloat16)
    pre = u if gates == "pre" else None
    post = u if gates == "post" else None
    kf = torch.zeros(3, n // 2 + 1, dtype=torch.complex64)
    triton_fwd.fftconv_fwd(u, kf, pre, post, None, n)
    transform = triton_fwd.transform_for(n, u.dtype, gates=(pre is not None, post is not None))
    gathered = n in triton_fwd.FILTER_IN_KERNEL_AT and transform == "two"
    assert (seen[-1].dtype == torch.complex64) == gathered
    assert triton_fwd.FILTER_IN_KERNEL_AT == (4096, 8192)
    for layout in triton_fwd.FILTER_LAYOUTS:
        with triton_fwd.use_filter_layout(layout):
            triton_fwd.fftconv_fwd(u, kf, pre, post, None, n)
        assert (seen[-1].dtype == torch.complex64) == (layout == "kernel")


def test_prepare_builds_the_three_stage_tables():
    """``prepare`` (what ``FFTConv.prepare`` calls before a CUDA graph capture, where nothing
    can be built) builds the three-stage kernel's tables too at its sizes, and only there."""
    from kernels.fftconv import triton, triton_fwd

    device = torch.device("cpu")
    for n in (2048, 8192):
        for key in [key for key in triton_fwd._CONSTANTS3 if key[0] == n]:
            del triton_fwd._CONSTANTS3[key]
        triton.prepare(n, device, torch.float16)
        built = (n, device, torch.float16) in triton_fwd._CONSTANTS3
        assert built == (n in triton_fwd.THREE_STAGE_SIZES)


def test_three_stage_refuses_plans_it_does_not_run():
    """transform="three": dense plans with a dense spectrum at n = 4096 and 8192 only; each
    refusal names the argument and the value."""
    from kernels.fftconv import triton_fwd

    u = torch.zeros(2, 1, 100)
    kf = torch.zeros(1, 1025, dtype=torch.complex64)
    with pytest.raises(
        ValueError, match=r"transform='three' runs at n in \(4096, 8192\); got n=2048"
    ):
        triton_fwd.fftconv_fwd(u, kf, None, None, None, 2048, transform="three")
    kf = torch.zeros(1, 2049, dtype=torch.complex64)
    with pytest.raises(ValueError, match=r"dense spectrum; got blocked=False, keep_bins=300"):
        triton_fwd.fftconv_fwd(u, kf, None, None, None, 4096, keep_bins=300, transform="three")
    with pytest.raises(ValueError, match=r"dense spectrum; got blocked=True"):
        triton_fwd.fftconv_fwd(u, kf, None, None, None, 4096, blocked=True, transform="three")
    with pytest.raises(
        ValueError, match=r"transform must be one of \('two', 'three'\); got 'four'"
    ):
        triton_fwd.fftconv_fwd(u, kf, None, None, None, 4096, transform="four")
    # a two-stage spectrum handed to the three-stage kernel
    spectrum = triton_fwd.spectrum_layout(kf, 4096, kernel=False)
    with pytest.raises(ValueError, match=r"spectrum must be fp32 of shape \(1, 16, 2, 16, 16\)"):
        triton_fwd.launch(u, spectrum, None, None, None, 4096, transform="three")


def test_three_stage_spectrum_layout_matches_the_bins():
    """``spectrum_layout3``'s torch ops put bin k1 + N1 k2 + N1 N2 k3 of the full spectrum at
    [k1, plane, k2, k3] (the kernel's form is checked against them under the interpreter)."""
    from kernels.fftconv import triton_fwd

    n = 8192
    N1, N2, N3 = triton_fwd.split3(n)
    g = torch.Generator().manual_seed(4)
    kf = torch.fft.rfft(torch.randn(2, n, generator=g), n=n)
    full = torch.fft.fft(torch.fft.irfft(kf, n=n).double())  # [2, n], the Hermitian spectrum
    got = triton_fwd.spectrum_layout3(kf, n, kernel=False)
    assert got.shape == (2, N1, 2, N2, N3)
    for k1, k2, k3 in [(0, 0, 0), (31, 15, 15), (5, 9, 2), (17, 0, 11)]:
        k = k1 + N1 * k2 + N1 * N2 * k3
        want = full[:, k]
        assert torch.allclose(got[:, k1, 0, k2, k3].double(), want.real, atol=1e-3)
        assert torch.allclose(got[:, k1, 1, k2, k3].double(), want.imag, atol=1e-3)


def test_three_stage_default_only_where_measured():
    """The default transform is two stages except for dense fp16/bf16 plans with a pregate
    (with or without a postgate: both measured wins) at the sizes of ``THREE_STAGE_GATED_AT``
    (n = 8192; the filter loaded per step there); and a launch's compile-time arguments follow
    it."""
    from kernels.fftconv import triton_fwd

    assert triton_fwd.THREE_STAGE_GATED_AT == (8192,)
    for n in (256, 2048, 4096, 8192):
        for dtype in (torch.float16, torch.bfloat16, torch.float32):
            half = dtype != torch.float32
            want = "three" if half and n == 8192 else "two"
            for gates in ((True, True), (True, False), (True, False, True)):
                assert triton_fwd.transform_for(n, dtype, gates=gates) == want
                assert triton_fwd.transform_for(n, dtype, blocked=True, gates=gates) == "two"
                assert triton_fwd.transform_for(n, dtype, keep_bins=n // 8, gates=gates) == "two"
            for gates in ((False, False), (False, True), (False, True, True)):
                assert triton_fwd.transform_for(n, dtype, gates=gates) == "two"
    meta, _ = triton_fwd.kernel_meta(8192, 8, 4, 4096, torch.bfloat16, gates=(True, True, True))
    assert meta["N3"] == 16 and meta["HOLD_FILTER"] is False
    assert triton_fwd.kernel_of(meta) is triton_fwd._fftconv_fwd3_kernel
    meta, _ = triton_fwd.kernel_meta(8192, 8, 4, 4096, torch.bfloat16, gates=(True, False, False))
    assert meta["N3"] == 16
    meta, _ = triton_fwd.kernel_meta(8192, 8, 4, 4096, torch.bfloat16, gates=(False, True, True))
    assert "N3" not in meta and triton_fwd.kernel_of(meta) is triton_fwd._fftconv_fwd_kernel
    meta, _ = triton_fwd.kernel_meta(
        8192, 8, 4, 4096, torch.bfloat16, gates=(True, True, True), hold_filter=True
    )
    assert meta["HOLD_FILTER"] is True
    # the two-stage kernel holds the filter unless told otherwise
    meta, _ = triton_fwd.kernel_meta(4096, 8, 4, 2048, torch.bfloat16, gates=(True,) * 3)
    assert "N3" not in meta and meta["HOLD_FILTER"] is True
    meta, _ = triton_fwd.kernel_meta(
        4096, 8, 4, 2048, torch.bfloat16, gates=(True,) * 3, hold_filter=False
    )
    assert meta["HOLD_FILTER"] is False


LAUNCH_SIZES = [
    pytest.param(512, 300, id="n512-L300-rows32"),
    pytest.param(1024, 200, id="n1024-L200-rows16"),
    pytest.param(1024, 515, id="n1024-L515-rows32"),
    pytest.param(2048, 200, id="n2048-L200-rows16"),
    pytest.param(2048, 1027, id="n2048-L1027-rows64"),
    pytest.param(4096, 300, id="n4096-L300-rows16"),
    pytest.param(4096, 2051, id="n4096-L2051-rows64"),
    pytest.param(8192, 1500, id="n8192-L1500-rows32"),
    pytest.param(8192, 5000, id="n8192-L5000-rows128"),
]


@pytest.mark.gpu
@pytest.mark.parametrize("steps", [1, 3], ids=["steps1", "steps3"])
@pytest.mark.parametrize("pair", [False, True], ids=["single", "pair"])
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize(("n", "L"), LAUNCH_SIZES)
def test_gpu_launcher_poisoned(n, L, dtype, pair, steps):
    """Every output element written, every tile-row count right, any steps per program (B = 7:
    the last program's loop is cut short)."""
    from kernels.fftconv import triton_fwd

    u, k, pre, post, bias = make_inputs(7, 5, L, n, dtype, True, seed=5, device="cuda")
    kf = torch.fft.rfft(k, n=n)
    out = torch.full_like(u, float("nan"))
    triton_fwd.fftconv_fwd(u, kf, pre, post, bias, n, out=out, pair=pair, steps=steps)
    ref, _ = spectrum_conv64(u, kf, n, pre, post, bias)
    assert not out.isnan().any()
    assert rel_err(out, ref) < TOL[dtype]


@pytest.mark.gpu
@pytest.mark.parametrize("gates", ["pre", "pre-post"])
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize(
    ("n", "L"),
    [
        p
        for p in LAUNCH_SIZES
        if p.id
        in ("n2048-L1027-rows64", "n4096-L2051-rows64", "n8192-L1500-rows32", "n8192-L5000-rows128")
    ],
)
@pytest.mark.parametrize("skip_input", ["reload", "held"])
def test_gpu_launcher_skip_input(n, L, dtype, gates, skip_input):
    """The skip term's input loaded again at the output (``skip_input="reload"``, the default
    from n = 4096 on) or held in registers: every output written and right, with the pipelined
    defaults (B = 7: a half-empty last pair)."""
    from kernels.fftconv import triton_fwd

    u, k, pre, post, bias = make_inputs(7, 5, L, n, dtype, True, seed=11, device="cuda")
    post = post if gates == "pre-post" else None
    kf = torch.fft.rfft(k, n=n)
    out = torch.full_like(u, float("nan"))
    triton_fwd.fftconv_fwd(u, kf, pre, post, bias, n, out=out, skip_input=skip_input)
    ref, _ = spectrum_conv64(u, kf, n, pre, post, bias)
    assert not out.isnan().any()
    assert rel_err(out, ref) < TOL[dtype]


@pytest.mark.gpu
@pytest.mark.parametrize("gates", ["none", "pre-post-bias"])
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize(
    ("n", "L", "pair"),
    [
        pytest.param(4096, 2051, True, id="n4096-L2051-pair"),
        pytest.param(4096, 97, False, id="n4096-L97-single"),
        pytest.param(8192, 4096, True, id="n8192-L4096-rows16-pair"),
        pytest.param(8192, 5000, False, id="n8192-L5000-rows32-single"),
    ],
)
def test_gpu_three_stage_poisoned(n, L, dtype, pair, gates):
    """The three-stage kernel (``transform="three"``) on the GPU, bf16 included: every output
    and z written and right against float64 with the launcher's defaults (B = 7: the last
    program's loop cut short, a half-empty pair)."""
    from kernels.fftconv import triton_fwd

    gated = gates != "none"
    u, k, pre, post, bias = make_inputs(7, 5, L, n, dtype, gated, seed=13, device="cuda")
    kf = torch.fft.rfft(k, n=n)
    out = torch.full_like(u, float("nan"))
    z_out = torch.full_like(u, float("nan")) if gated else None
    triton_fwd.fftconv_fwd(
        u, kf, pre, post, bias, n, out=out, pair=pair, transform="three", z_out=z_out
    )
    ref, z = spectrum_conv64(u, kf, n, pre, post, bias)
    assert not out.isnan().any()
    assert rel_err(out, ref) < TOL[dtype]
    if gated:
        assert not z_out.isnan().any()
        assert rel_err(z_out, z) < TOL[dtype]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize(
    ("n", "L", "transform"),
    [
        pytest.param(2048, 1027, "two", id="n2048"),
        pytest.param(4096, 2051, "two", id="n4096"),
        pytest.param(8192, 4096, "two", id="n8192-two"),
        pytest.param(8192, 4096, "three", id="n8192-three-held"),
    ],
)
def test_gpu_filter_loaded_or_held(n, L, transform, dtype):
    """The filter spectrum loaded per step where the default holds it, and held where the
    default loads it (``hold_filter``): every output written and right against float64 (B = 7:
    several steps, a half-empty last pair)."""
    from kernels.fftconv import triton_fwd

    hold = transform == "three"
    u, k, pre, post, bias = make_inputs(7, 5, L, n, dtype, True, seed=19, device="cuda")
    kf = torch.fft.rfft(k, n=n)
    out = torch.full_like(u, float("nan"))
    triton_fwd.fftconv_fwd(
        u, kf, pre, post, bias, n, out=out, transform=transform, hold_filter=hold, steps=2
    )
    ref, _ = spectrum_conv64(u, kf, n, pre, post, bias)
    assert not out.isnan().any()
    assert rel_err(out, ref) < TOL[dtype]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize(
    ("n", "L", "options"),
    [
        pytest.param(256, 200, {}, id="n256"),
        pytest.param(2048, 1027, {"keep_bins": 300}, id="n2048-sparse"),
        pytest.param(4096, 2051, {}, id="n4096"),
        pytest.param(8192, 4096, {"transform": "three"}, id="n8192-three"),
        pytest.param(8192, 5000, {"transform": "two"}, id="n8192-two"),
        pytest.param(1024, 3000, {"blocked": True}, id="n1024-blocked"),
    ],
)
def test_gpu_filter_gathered_by_the_kernel(n, L, options, dtype):
    """``filter_layout="kernel"`` (the kernel gathers the filter's bins from its rfft) gives
    the layout pass's output bit for bit, every output written."""
    from kernels.fftconv import triton_fwd

    taps = n // 2 if options.get("blocked") else n
    u, k, pre, post, bias = make_inputs(7, 5, L, taps, dtype, True, seed=17, device="cuda")
    kf = torch.fft.rfft(k, n=n)
    if options.get("keep_bins"):
        kf[:, options["keep_bins"] :] = 0
    outs = []
    for layout in ("pass", "kernel"):
        out = torch.full_like(u, float("nan"))
        triton_fwd.fftconv_fwd(u, kf, pre, post, bias, n, out=out, filter_layout=layout, **options)
        outs.append(out)
    assert not outs[1].isnan().any()
    assert torch.equal(outs[0], outs[1])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
def test_gpu_launcher_32_steps_at_n2048(dtype):
    """n = 2048 takes up to 32 pairs per program by default (``MAX_STEPS_AT``): B = 77 (39
    pairs: one full loop and one cut short at 7), every output written and right."""
    from kernels.fftconv import triton_fwd

    device = torch.device("cuda")
    assert triton_fwd.steps_for(2048, 1024, 64, device) == 32
    assert triton_fwd.steps_for(2048, 1024, 64, device, blocked=True) == triton_fwd.MAX_STEPS
    # n = 8192: 4 programs per SM suffice (one fills an SM), so 16 pairs at H = 1024, L = 4K
    assert triton_fwd.steps_for(8192, 1024, 16, device) == 16
    assert triton_fwd.steps_for(8192, 1024, 16, device, blocked=True) == 8
    u, k, pre, post, bias = make_inputs(77, 3, 1000, 1000, dtype, True, seed=15, device="cuda")
    kf = torch.fft.rfft(k, n=2048)
    out = torch.full_like(u, float("nan"))
    triton_fwd.fftconv_fwd(u, kf, pre, post, bias, 2048, out=out, steps=32)
    v = u.double() * pre.double()
    z = torch.fft.irfft(torch.fft.rfft(v, n=2048) * kf.to(torch.complex128), n=2048)[..., :1000]
    ref = z * post.double() + bias.double()[:, None] * v
    assert not out.isnan().any()
    assert rel_err(out, ref) < TOL[dtype]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize(
    ("L", "freq_keep"),
    [(1000, 0.25), (1024, 0.5), (2048, 0.25), (2000, 0.0625), (4096, 0.25), (3001, 0.125)],
)
def test_gpu_frequency_sparse_skips_columns(L, freq_keep, dtype):
    """The kernel computes only the kept frequency columns, and the result is the dense
    convolution with the filter's spectrum cut at keep_bins (float64 torch.fft reference)."""
    from kernels import fftconv
    from kernels.fftconv import triton_fwd
    from kernels.fftconv.plan import make_plan

    plan = make_plan("causal", L, L, freq_keep)
    low, high = triton_fwd.kept_columns(plan.fft_size, plan.keep_bins)
    assert low + high < triton_fwd.split(plan.fft_size)[1], "no columns skipped"
    u, k, pre, post, bias = make_inputs(3, 7, L, L, dtype, True, seed=14, device="cuda")
    y = fftconv(u, k, pregate=pre, postgate=post, bias=bias, freq_keep=freq_keep, backend="triton")
    ref = fftconv(
        *(x.double() for x in (u, k)),
        pregate=pre.double(),
        postgate=post.double(),
        bias=bias.double(),
        freq_keep=freq_keep,
        backend="torch",
    )
    assert rel_err(y, ref) < TOL[dtype]


@pytest.mark.gpu
@pytest.mark.parametrize("keep_bins", [None, 300, 2049], ids=["dense", "keep300", "keep2049"])
@pytest.mark.parametrize("n", [256, 2048, 8192])
def test_gpu_spectrum_layout_kernel_exact(n, keep_bins):
    """The short path's layout kernel equals the torch ops bit for bit on the GPU (H = 111)."""
    from kernels.fftconv import triton_fwd

    keep = None if keep_bins is None else min(keep_bins, n // 2 + 1)
    kf = torch.fft.rfft(torch.randn(111, n, device="cuda"), n=n)
    want = triton_fwd.spectrum_layout(kf, n, keep, kernel=False)
    assert torch.equal(triton_fwd.spectrum_layout(kf, n, keep, kernel=True), want)


@pytest.mark.gpu
def test_gpu_offsets_past_2_31():
    """B*H*L > 2^31: the last sequences land where 32-bit offsets would wrap."""
    from kernels import fftconv

    B, H, L = 64, 131073, 256
    assert B * H * L > 2**31
    g = torch.Generator(device="cuda").manual_seed(0)
    u = torch.randn(B, H, L, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(H, L, device="cuda", generator=g) / 16
    y = fftconv(u, k, backend="triton")
    ref = conv_fft64(u[-1:, -4:].double(), k[-4:].double())
    assert rel_err(y[-1:, -4:], ref) < TOL[torch.bfloat16]
    del u, y


@pytest.mark.gpu
@pytest.mark.parametrize("L", [1000, 4096], ids=["L1000", "L4096"])
def test_gpu_cuda_graph_capture_forward_backward(L):
    """Forward and backward captured in one CUDA graph and replayed on new inputs."""
    from kernels import FFTConv

    conv = FFTConv(L, backend="triton")
    shapes = make_inputs(3, 7, L, L, torch.bfloat16, True, seed=11, device="cuda")
    static = [x.clone().requires_grad_() for x in shapes]
    conv.prepare(L, "cuda", torch.bfloat16)
    dy = torch.randn(3, 7, L, device="cuda", dtype=torch.bfloat16)

    def step():
        u, k, pre, post, bias = static
        y = conv(u, k, pregate=pre, postgate=post, bias=bias)
        grads = torch.autograd.grad(y, static, dy)
        return y, grads

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up on a side stream, as capture requires
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y_graph, grads_graph = step()

    fresh = make_inputs(3, 7, L, L, torch.bfloat16, True, seed=12, device="cuda")
    with torch.no_grad():
        for dst, src in zip(static, fresh, strict=True):
            dst.copy_(src)
    graph.replay()
    torch.cuda.synchronize()
    leaves = [x.double().requires_grad_() for x in fresh]
    ref = conv_fft64(*leaves)
    ref_grads = torch.autograd.grad(ref, leaves, dy.double())
    assert rel_err(y_graph, ref) < TOL[torch.bfloat16]
    for name, g, r in zip(("u", "k", "pre", "post", "bias"), grads_graph, ref_grads, strict=True):
        assert rel_err(g, r) < TOL[torch.bfloat16], name


@pytest.mark.gpu
@pytest.mark.parametrize(
    ("L", "halves"),
    [(1000, None), (16384, None), (8192, True)],
    ids=["L1000", "L16384-long", "L8192-halves"],
)
def test_gpu_compile_reduce_overhead_builds_tables_on_first_use(L, halves, monkeypatch):
    """torch.compile(mode="reduce-overhead") replays forward and backward as CUDA graphs; its
    warm-up runs route allocations to the graphs' pool and refuse to record while a tensor
    there is alive and not an output. The FFT tables are built on first use and cached: with
    empty caches they are built inside that warm-up, and must land outside the pool. Three
    steps (warm-up, record, replay), each on fresh inputs, against float64 (``halves``: the
    two-halves kernels on, forward and backward, at n = 16384)."""
    from kernels import fftconv
    from kernels.fftconv import triton_fwd, triton_long

    monkeypatch.setattr(triton_fwd, "_CONSTANTS", {})
    monkeypatch.setattr(triton_long, "_CONSTANTS", {})
    monkeypatch.setattr(triton_fwd, "_halves", halves)
    torch._dynamo.reset()

    def f(u, k, pre, post, bias):
        return fftconv(u, k, pregate=pre, postgate=post, bias=bias, backend="triton")

    compiled = torch.compile(f, mode="reduce-overhead")
    try:
        for seed in (21, 22, 23):
            torch.compiler.cudagraph_mark_step_begin()
            fresh = make_inputs(2, 5, L, L, torch.bfloat16, True, seed=seed, device="cuda")
            leaves = [x.requires_grad_() for x in fresh]
            y = compiled(*leaves)
            dy = torch.randn_like(y)
            grads = torch.autograd.grad(y, leaves, dy)
            y = y.clone()  # the next replay reuses the graph's output memory
            grads = [g.clone() for g in grads]
            ref_leaves = [x.detach().double().requires_grad_() for x in fresh]
            ref = conv_fft64(*ref_leaves)
            ref_grads = torch.autograd.grad(ref, ref_leaves, dy.double())
            assert rel_err(y, ref) < TOL[torch.bfloat16], seed
            for name, g, r in zip(("u", "k", "pre", "post", "bias"), grads, ref_grads, strict=True):
                assert rel_err(g, r) < TOL[torch.bfloat16], (seed, name)
        assert triton_fwd._CONSTANTS, "the fused kernels' tables were not built in the test"
    finally:
        torch._dynamo.reset()


@pytest.mark.gpu
def test_gpu_autocast_and_compile_fullgraph():
    """fp32 inputs under bf16 autocast run the bf16 kernels; torch.compile(fullgraph=True)
    with inductor around the triton backend gives the eager result, forward and backward."""
    from kernels import fftconv

    u, k, pre, post, bias = make_inputs(
        4, 6, 2000, 700, torch.float32, True, seed=13, device="cuda"
    )
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = fftconv(u, k, pregate=pre, postgate=post, bias=bias, backend="triton")
    assert y.dtype == torch.bfloat16
    u64, pre64, post64 = (x.bfloat16().double() for x in (u, pre, post))
    ref = conv_fft64(u64, k.double(), pre64, post64, bias.double())
    assert rel_err(y, ref) < TOL[torch.bfloat16]

    leaves = [x.clone().requires_grad_() for x in (u, k, pre, post, bias)]

    def f(u, k, pre, post, bias):
        return fftconv(u, k, pregate=pre, postgate=post, bias=bias, backend="triton").tanh()

    y_c = torch.compile(f, fullgraph=True)(*leaves)
    g_c = torch.autograd.grad(y_c.sum(), leaves)
    y_e = f(*leaves)
    g_e = torch.autograd.grad(y_e.sum(), leaves)
    assert rel_err(y_c, y_e) < 1e-5
    for gc, ge in zip(g_c, g_e, strict=True):
        assert rel_err(gc, ge) < 1e-5


if __name__ == "__main__":
    _interpreter_main()
