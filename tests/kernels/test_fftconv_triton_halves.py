"""The two-halves forward kernel (``triton_fwd``, ``halves=True``): a size-n convolution of
sequences of at most n/2 samples as two size-n/2 ones in one program, on the spectrum's even
bins and on its odd bins (the input twiddled by ``w_n^t``), against float64.

CPU: under TRITON_INTERPRET=1 in one subprocess (this file run as a module), fp32 and fp16 at
tiny sizes (the interpreter's bf16 ``tl.dot`` is wrong). GPU (``gpu`` marker): n = 16384, where
it is the in-register kernel of a causal L <= 8192, every dtype, and the public call.
"""

from __future__ import annotations

import contextlib
import json

import pytest
import torch

from .fftconv_reference import DTYPES, GPU_DTYPES, TOL, make_inputs, rel_err, spectrum_conv64
from .interpreted import run_interpreted, start_interpreter

# (B, H, L, n, dtype, gated, options): odd and prime lengths, B = 1 (one sequence per step),
# odd B (a half-empty pair), several steps, a sparse spectrum, the filter's bins gathered by the
# kernel, z written, the skip input held; n = 512 (m = 256: 16 x 16, the smallest tile) to
# 2048
HALVES_CASES = {
    "n512-L256-fp32-plain": (3, 2, 256, 512, "fp32", False, {}),
    "n512-L131-fp16-gated-B1": (1, 3, 131, 512, "fp16", True, {}),
    "n512-L200-fp32-gated-single": (4, 2, 200, 512, "fp32", True, {"pair": False}),
    "n1024-L509-fp16-gated-steps": (7, 2, 509, 1024, "fp16", True, {"steps": 2}),
    "n1024-L509-fp16-gated-one-pass": (7, 2, 509, 1024, "fp16", True, {"halves_passes": 1}),
    "n1024-L300-fp32-one-pass-z": (3, 2, 300, 1024, "fp32", True, {"halves_passes": 1, "z": True}),
    "n512-L256-fp32-in-place": (3, 2, 256, 512, "fp32", True, {"in_place": True}),
    "n1024-L512-fp32-kernel-layout": (5, 2, 512, 1024, "fp32", True, {"filter_layout": "kernel"}),
    "n1024-L500-fp16-z": (3, 2, 500, 1024, "fp16", True, {"z": True}),
    "n1024-L97-fp32-held-skip": (3, 2, 97, 1024, "fp32", True, {"skip_input": "held"}),
    "n2048-L1021-fp32-sparse": (3, 2, 1021, 2048, "fp32", False, {"keep_bins": 300}),
    "n2048-L1000-fp16-sparse-kernel": (
        2,
        2,
        1000,
        2048,
        "fp16",
        True,
        {"keep_bins": 300, "filter_layout": "kernel"},
    ),  # fmt: skip
    "n2048-L777-fp32-load-k": (5, 3, 777, 2048, "fp32", True, {"hold_filter": False}),
    "n2048-L1024-fp16-one-pass-sparse": (
        4,
        2,
        1024,
        2048,
        "fp16",
        False,
        {"halves_passes": 1, "keep_bins": 260},
    ),  # fmt: skip
}


# (B, H, L, n, taps, dtype, gated[, keep_bins]): the filter gradient from the two halves of the
# in-register backward (``triton_bwd.filter_grad_halves``): odd B, a prime L, fewer taps than L,
# no gates, a frequency cut-off
DK_CASES = {
    "dk-n512-L256-fp32-gated": (3, 2, 256, 512, 256, "fp32", True),
    "dk-n1024-L509-fp16-taps300": (5, 2, 509, 1024, 300, "fp16", True),
    "dk-n2048-L1000-fp32-plain-B1": (1, 3, 1000, 2048, 1000, "fp32", False),
    "dk-n2048-L1024-fp16-sparse": (4, 2, 1024, 2048, 1024, "fp16", True, 301),
}


def _run_dk_case(B, H, L, n, taps, dtype_name, gated, keep=None):
    from kernels.fftconv import triton_bwd

    dtype = DTYPES[dtype_name]
    u, k, pre, post, _ = make_inputs(B, H, L, taps, dtype, gated, seed=L + taps)
    dy = torch.randn(B, H, L, generator=torch.Generator().manual_seed(n)).to(dtype)
    kf = torch.fft.rfft(k, n=n)
    got = triton_bwd.filter_grad_halves(dy, u, kf, pre, post, n, taps, keep)
    v = u.double() * pre.double() if gated else u.double()
    dz = dy.double() * post.double() if gated else dy.double()
    cross = (torch.fft.rfft(dz, n=n) * torch.fft.rfft(v, n=n).conj()).sum(dim=0)
    if keep is not None:
        cross[:, keep:] = 0  # the cut-off: the gradient is low-passed as the spectrum is
    ref = torch.fft.irfft(cross, n=n)[:, :taps]
    return {"dk": rel_err(got, ref)}, got.shape == (H, taps)


def _run_halves_case(B, H, L, n, dtype_name, gated, options):
    from kernels.fftconv import triton_fwd

    dtype = DTYPES[dtype_name]
    options = dict(options)
    keep = options.pop("keep_bins", None)
    want_z = options.pop("z", False)
    in_place = options.pop("in_place", False)
    u, k, pre, post, bias = make_inputs(B, H, L, L, dtype, gated, seed=L + n)
    kf = torch.fft.rfft(k, n=n)
    if keep is not None:
        kf[:, keep:] = 0
    ref, z_ref = spectrum_conv64(u, kf, n, pre, post, bias)
    # in place: the output written over u (the two-pass default falls back to one pass)
    out = u if in_place else torch.full_like(u, float("nan"))
    z_out = torch.full_like(u, float("nan")) if want_z else None
    triton_fwd.fftconv_fwd(
        u, kf, pre, post, bias, n, keep_bins=keep, halves=True, out=out, z_out=z_out, **options
    )
    errs = {"y": rel_err(out, ref)}
    ok = not out.isnan().any()
    if want_z:
        errs["z"] = rel_err(z_out, z_ref)
        ok = ok and not z_out.isnan().any()
    return errs, ok


def _run_layout_case():
    """The halves' layout (``outer_spectrum_layout`` at n0 = 2, the layout kernel) against the
    bins it names, and against the torch ops bit for bit, dense and sparse."""
    from kernels.fftconv import triton_fwd

    n, H = 1024, 3
    kf = torch.fft.rfft(torch.randn(H, n, generator=torch.Generator().manual_seed(3)), n=n)
    full = triton_fwd.full_spectrum(kf, n)
    N1, N2 = triton_fwd.split(n // 2)
    got = triton_fwd.outer_spectrum_layout(kf, n, 2, kernel=True)  # [H, 2, 2, N1, N2]
    a1 = torch.arange(N1)[:, None]
    a2 = torch.arange(N2)[None, :]
    ok = got.shape == (H, 2, 2, N1, N2)
    for half in (0, 1):
        bins = full[:, half + 2 * (a1 + N1 * a2)]
        ok = ok and torch.equal(got[:, half, 0], bins.real)
        ok = ok and torch.equal(got[:, half, 1], bins.imag)
    for keep in (None, 100):
        want = triton_fwd.outer_spectrum_layout(kf, n, 2, kernel=False, keep_bins=keep)
        again = triton_fwd.outer_spectrum_layout(kf, n, 2, kernel=True, keep_bins=keep)
        ok = ok and torch.equal(want, again)
    return {}, bool(ok)


@contextlib.contextmanager
def _recorded(module, name: str, record):
    """``module.<name>`` wrapped within the block so that each call appends ``record(args,
    kwargs)`` to the list the block gets; the function restored after."""
    original = getattr(module, name)
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(record(args, kwargs))
        return original(*args, **kwargs)

    setattr(module, name, wrapper)
    try:
        yield calls
    finally:
        setattr(module, name, original)


def _public_forward(inputs, bias, **call):
    """The public call on leaf copies of ``inputs = (u, k, pregate, postgate)`` (``call``:
    fftconv's other keywords, the backend among them): ``(y, leaves)``."""
    from kernels.fftconv import fftconv

    leaves = [x.clone().requires_grad_() for x in inputs]
    y = fftconv(leaves[0], leaves[1], pregate=leaves[2], postgate=leaves[3], bias=bias, **call)
    return y, leaves


def _errors_against_float64(y, leaves, inputs, bias, **call):
    """y and its gradients (a random cotangent) against the torch backend's in float64 on the
    same inputs: their relative errors."""
    from kernels.fftconv import fftconv

    dy = torch.randn_like(y)
    grads = torch.autograd.grad(y, leaves, dy)
    ref_leaves = [x.double().clone().requires_grad_() for x in inputs]
    call["backend"] = "torch"
    ref = fftconv(ref_leaves[0], ref_leaves[1], pregate=ref_leaves[2], postgate=ref_leaves[3],
                  bias=bias.double(), **call)  # fmt: skip
    ref_grads = torch.autograd.grad(ref, ref_leaves, dy.double())
    errs = {"y": rel_err(y, ref)}
    errs |= {f"d{i}": rel_err(g, r) for i, (g, r) in enumerate(zip(grads, ref_grads, strict=True))}
    return errs


def _run_public_case():
    """The public call with the two-halves default forced on (``use_halves``) for a plan of
    n = 1024 taken as the kernel's size (fp16): forward through ``launch(halves=True)``, the
    backward on the long path, both against float64."""
    from kernels.fftconv import triton_fwd

    u, k, pre, post, bias = make_inputs(3, 2, 300, 300, torch.float16, True, seed=9)
    saved = triton_fwd.HALVES_MAX_FFT
    triton_fwd.HALVES_MAX_FFT = 1024  # the plan's n (causal L = 300 -> 1024)
    try:
        with _recorded(triton_fwd, "launch", lambda a, kw: kw.get("halves")) as calls:
            with triton_fwd.use_halves(True):
                y, leaves = _public_forward((u, k, pre, post), bias, backend="triton")
    finally:
        triton_fwd.HALVES_MAX_FFT = saved
    errs = _errors_against_float64(y, leaves, (u, k, pre, post), bias, backend="triton")
    return errs, calls == [True]


def _run_public_8k_case():
    """The public call at L = 8192 (n = 16384) with the two-halves kernel on: its forward
    keeps z, and the backward runs the correlation on the same kernel (conjugate spectrum, an
    fp32 dv) and the filter gradient on the in-register backward's two halves (the odd one
    twisted); every gradient against float64 (fp16, B = 3, H = 2)."""
    from kernels.fftconv import triton_bwd, triton_fwd

    u, k, pre, post, bias = make_inputs(3, 2, 8192, 8192, torch.float16, True, seed=2)

    def forward(args, kwargs):
        out = kwargs.get("out")
        return kwargs.get("halves"), None if out is None else str(out.dtype)

    with _recorded(triton_fwd, "launch", forward) as calls:
        with _recorded(triton_bwd, "launch", lambda a, kw: (a[6], kw.get("twist"))) as bwd_calls:
            with triton_fwd.use_halves(True):
                y, leaves = _public_forward((u, k, pre, post), bias, backend="triton")
                errs = _errors_against_float64(y, leaves, (u, k, pre, post), bias)
    ok = calls == [(True, None), (True, "torch.float32")]
    return errs, ok and bwd_calls == [(8192, False), (8192, True)]  # (n, twist)


def _run_public_bidirectional_case():
    """A bidirectional plan at n = 16384 (L = 5000, a centred filter of 9999 taps) with the
    two-halves kernel on, forward and backward: the correlation on the halves, the filter
    gradient (its taps reach past n/2: the negative lags) on the long kernels; every gradient
    against float64 (fp16, B = 3, H = 2)."""
    from kernels.fftconv import triton_bwd, triton_fwd

    u, k, pre, post, bias = make_inputs(3, 2, 5000, 9999, torch.float16, True, seed=7)
    with _recorded(triton_fwd, "launch", lambda a, kw: kw.get("halves")) as calls:
        with _recorded(triton_bwd, "launch", lambda a, kw: a[6]) as bwd_calls:
            with triton_fwd.use_halves(True):
                call = {"backend": "triton", "mode": "bidirectional"}
                y, leaves = _public_forward((u, k, pre, post), bias, **call)
                errs = _errors_against_float64(y, leaves, (u, k, pre, post), bias, **call)
    return errs, calls == [True, True] and bwd_calls == []


def _run_compile_case():
    """torch.compile(fullgraph=True) around the public call with the two-halves kernel on
    (L = 6000, n = 16384, fp16, gated): one graph whose forward and gradients are the eager
    call's, the two-halves forward launched in both."""
    from kernels.fftconv import fftconv, triton_fwd

    u, k, pre, post, bias = make_inputs(2, 2, 6000, 6000, torch.float16, True, seed=4)

    def f(u, k, pre, post):
        return fftconv(u, k, pregate=pre, postgate=post, bias=bias, backend="triton").tanh()

    dy = torch.randn_like(u)
    results = []
    with _recorded(triton_fwd, "launch", lambda a, kw: kw.get("halves")) as calls:
        with triton_fwd.use_halves(True):
            for run in (f, torch.compile(f, fullgraph=True, backend="aot_eager")):
                leaves = [x.clone().requires_grad_() for x in (u, k, pre, post)]
                y = run(*leaves)
                results.append((y, torch.autograd.grad(y, leaves, dy)))
    (y_e, g_e), (y_c, g_c) = results
    errs = {"y": rel_err(y_c, y_e)}
    errs |= {f"d{i}": rel_err(c, e) for i, (c, e) in enumerate(zip(g_c, g_e, strict=True))}
    # eager and compiled: the forward and the backward's correlation, each a two-halves launch
    return errs, calls == [True] * 4


def _interpreter_main() -> None:
    start_interpreter()
    results = {}
    jobs = [(cid, _run_halves_case, args) for cid, args in HALVES_CASES.items()]
    jobs += [("layout", _run_layout_case, ()), ("public", _run_public_case, ())]
    jobs += [("public-8k", _run_public_8k_case, ()), ("compile", _run_compile_case, ())]
    jobs += [("public-bidir", _run_public_bidirectional_case, ())]
    jobs += [(cid, _run_dk_case, args) for cid, args in DK_CASES.items()]
    for cid, run, args in jobs:
        errs, ok = run(*args)
        results[cid] = {"errs": errs, "ok": bool(ok)}
    print(json.dumps(results))


@pytest.fixture(scope="module")
def interpreted():
    return run_interpreted("tests.kernels.test_fftconv_triton_halves")


@pytest.mark.parametrize("case", list(HALVES_CASES))
def test_interpreter_halves(interpreted, case):
    """Every output (and z) written and right against float64."""
    dtype = DTYPES[HALVES_CASES[case][4]]
    res = interpreted[case]
    assert res["ok"], res
    assert all(err < TOL[dtype] for err in res["errs"].values()), res


@pytest.mark.parametrize("case", list(DK_CASES))
def test_interpreter_filter_grad_halves(interpreted, case):
    """The filter gradient of the size-n problem from the size-n/2 backward on the even bins
    and, twisted, on the odd bins, against float64."""
    dtype = DTYPES[DK_CASES[case][5]]
    res = interpreted[case]
    assert res["ok"], res
    assert res["errs"]["dk"] < TOL[dtype], res


def test_filter_grad_halves_refuses_what_it_does_not_compute():
    from kernels.fftconv import triton_bwd

    u = torch.randn(2, 3, 300)
    kf = torch.zeros(3, 513, dtype=torch.complex64)
    with pytest.raises(ValueError, match="twist: the filter gradient alone"):
        triton_bwd.launch(u, u, kf, None, None, None, 1024, (True, True, False, False, False),
                          twist=True)  # fmt: skip
    with pytest.raises(ValueError, match="L and taps must be <= n/2 = 512"):
        triton_bwd.filter_grad_halves(u, u, kf, None, None, 1024, 600)


def test_interpreter_halves_layout(interpreted):
    assert interpreted["layout"]["ok"]


def test_interpreter_halves_public_call(interpreted):
    """One forward launch (the two-halves kernel), gradients right (fp16: the default takes
    fp16/bf16 plans only)."""
    res = interpreted["public"]
    assert res["ok"], res
    assert all(err < TOL[torch.float16] for err in res["errs"].values()), res


def test_interpreter_halves_public_call_at_8k(interpreted):
    """L = 8192: the two-halves forward (z kept) and the backward's correlation on the same
    kernel (fp32 dv), gradients right (fp16)."""
    res = interpreted["public-8k"]
    assert res["ok"], res
    assert all(err < TOL[torch.float16] for err in res["errs"].values()), res


def test_interpreter_halves_bidirectional_backward(interpreted):
    """A bidirectional filter's gradient with the two halves on: its taps pass n/2, so it
    takes the long kernels' route (it failed in ``filter_grad_halves`` before)."""
    res = interpreted["public-bidir"]
    assert res["ok"], res
    assert all(err < TOL[torch.float16] for err in res["errs"].values()), res


def test_interpreter_halves_compile_fullgraph(interpreted):
    """torch.compile(fullgraph=True) runs the two-halves route as eager does, same results."""
    res = interpreted["compile"]
    assert res["ok"], res
    assert all(err < 1e-6 for err in res["errs"].values()), res


def test_halves_refuses_plans_it_does_not_run():
    from kernels.fftconv import triton_fwd

    u = torch.randn(2, 3, 600)
    kf = torch.zeros(3, 513, dtype=torch.complex64)
    with pytest.raises(ValueError, match="halves"):  # L > n/2
        triton_fwd.fftconv_fwd(u, kf, None, None, None, 1024, halves=True)
    with pytest.raises(ValueError, match="halves"):  # blocked
        triton_fwd.fftconv_fwd(u[..., :300], kf, None, None, None, 1024, halves=True, blocked=True)
    big = torch.zeros(3, 2**14 + 1, dtype=torch.complex64)
    with pytest.raises(ValueError, match="halves"):  # n/2 past the in-register sizes
        triton_fwd.fftconv_fwd(u, big, None, None, None, 2**15, halves=True)
    with pytest.raises(ValueError, match="two stages"):
        triton_fwd.kernel_meta(
            1024, 2, 3, 300, torch.float16, gates=(False,) * 3, halves=True, transform="three"
        )


def _halves_launches(gates, passes, wide_out=False, **options):
    """The metas of each launch ``launch(halves=True, halves_passes=passes)`` makes at
    n = 16384, L = 8192 for the benchmark's shape (H = 1024, B * H * L = 2^27, 132 SMs)."""
    from kernels.fftconv import triton_fwd

    n, L, H = 16384, 8192, 1024
    B = 2**27 // (H * L)
    common = dict(precision="tf32", sms=132, halves=True, **options)
    metas = triton_fwd.launch_metas(
        n, B, H, L, torch.bfloat16, gates=gates, passes=passes, wide_out=wide_out, **common
    )
    return [meta for meta, _ in metas]


@pytest.mark.parametrize("passes", [1, 2])
@pytest.mark.parametrize(
    ("gates", "wide_out"),
    [
        ((False,) * 3, False),
        ((True, False, False), False),
        ((True,) * 3, False),
        ((False,) * 3, True),
        ((True, False, False), True),
    ],
    ids=["plain", "pre", "gated", "plain-fp32-out", "pre-fp32-out"],
)
def test_halves_defaults_fit_sm90_shared_memory(gates, wide_out, passes):
    """Every launch of the two-halves kernel at n = 16384 with the launcher's defaults,
    compiled for sm_90, fits one block's shared memory, with an output in the input's dtype or
    in fp32 (``wide_out``: the backward's correlation writes dv so, the postgate as its
    pregate); and the check sees an overflow (the odd half's launch on two pipeline stages
    with both gates asks for 280 KB, with a pregate and an fp32 output 248 KB: the launch that
    failed at the benchmark's shape while the GPU tests' B = 3 ran one step per program)."""
    pytest.importorskip("triton")
    from benchmarks.common import compile_sm90
    from benchmarks.fftconv import SHARED_PER_BLOCK
    from kernels.fftconv import triton_fwd

    fp32 = ("bias_ptr", "kf_ptr", "twiddle_ptr") + (("y_ptr",) if wide_out else ())

    def shared(meta):
        meta = dict(meta)
        warps = meta.pop("num_warps")
        kernel = triton_fwd.kernel_of(meta)
        pointers = {
            name: "*fp32" if name in fp32 else "*bf16"
            for name in kernel.arg_names
            if name.endswith("_ptr")
        }
        return compile_sm90(kernel, meta, pointers, warps)[1]["shared_bytes"]

    launches = _halves_launches(gates, passes, wide_out=wide_out)
    try:
        sizes = [shared(meta) for meta in launches]
    except (FileNotFoundError, RuntimeError) as err:  # no ptxas / no NVIDIA backend here
        pytest.skip(f"no sm_90 compile on this machine: {err}")
    assert all(0 < size <= SHARED_PER_BLOCK for size in sizes), sizes
    if passes == 2 and (gates == (True,) * 3 or (wide_out and gates[0])):
        odd = _halves_launches(gates, passes, stages=2)[1]
        assert shared(odd) > SHARED_PER_BLOCK


def test_halves_passes_refused_and_in_place_falls_back(monkeypatch):
    """``halves_passes`` other than 1 or 2 is refused; an output in the storage of u or a gate
    takes one pass (the first of two would overwrite what the second reads)."""
    from kernels.fftconv import triton_fwd

    u = torch.randn(2, 3, 300)
    spectrum = torch.zeros(3, 513, dtype=torch.complex64)
    with pytest.raises(ValueError, match="halves_passes must be 1 or 2; got 3"):
        triton_fwd.launch(u, spectrum, None, None, None, 1024, halves=True, halves_passes=3)
    with pytest.raises(ValueError, match=r"out must be contiguous, of dtype in .*float64"):
        triton_fwd.launch(u, spectrum, None, None, None, 1024, halves=True, out=u.double())
    seen = []
    monkeypatch.setattr(triton_fwd, "kernel_of", lambda meta: seen.append(meta["HALF"]) or _Noop())
    triton_fwd.launch(u, spectrum, None, None, None, 1024, halves=True)
    assert seen == [0, 1]
    seen.clear()
    triton_fwd.launch(u, spectrum, u, None, None, 1024, halves=True, out=u[:, :, :])
    assert seen == [2]
    seen.clear()
    triton_fwd.launch(u, spectrum, None, None, None, 1024, halves=True, halves_passes=1)
    assert seen == [2]


class _Noop:
    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def test_halves_default_only_where_set():
    """The public forward takes the two-halves kernel at ``HALVES_AT`` for fp16/bf16 plans
    that fit (L <= n/2), ``use_halves`` overriding it; fp32 never by default."""
    from kernels.fftconv import triton_fwd

    n = triton_fwd.HALVES_MAX_FFT
    for dtype in (torch.float16, torch.bfloat16):
        assert triton_fwd.halves_for(n, n // 2, False, dtype) == (n in triton_fwd.HALVES_AT)
        assert not triton_fwd.halves_for(n, n // 2 + 1, False, dtype)
        with triton_fwd.use_halves(True):
            assert triton_fwd.halves_for(n, n // 2, False, dtype)
            assert not triton_fwd.halves_for(n // 2, n // 4, False, dtype)
        with triton_fwd.use_halves(False):
            assert not triton_fwd.halves_for(n, n // 2, False, dtype)
    assert not triton_fwd.halves_for(n, n // 2, False, torch.float32)


def test_halves_default_skips_a_postgate_without_z(monkeypatch):
    """Where ``HALVES_AT`` makes the two halves the default, a forward whose postgate keeps no
    z (no gradient for it: inference) takes the long path, and every other forward the halves:
    no postgate, or one that wants a gradient (its forward keeps z). ``use_halves(True)`` forces
    them on that forward too. The routes are recorded, not run (no kernel launches here)."""
    from kernels.fftconv import fftconv, triton, triton_fwd, triton_long

    n = triton_fwd.HALVES_MAX_FFT
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the backend's check; nothing is interpreted
    monkeypatch.setattr(triton_fwd, "HALVES_AT", (n,))
    routes = []

    def halves(u, kf, pre, post, bias, plan, z_out=None):
        # what _forward_in_register hands the kernel as its ``halves``
        on = triton._halves(plan, u.dtype, post is not None and z_out is None)
        routes.append("halves" if on else "in-register")
        return torch.zeros_like(u)

    def long_path(u, *args, **kwargs):
        routes.append("long")
        return torch.zeros_like(u)

    monkeypatch.setattr(triton, "_forward_in_register", halves)
    monkeypatch.setattr(triton_long, "long_forward", long_path)
    B, H, L = 2, 3, n // 2
    u = torch.randn(B, H, L, dtype=torch.float16)
    k = torch.randn(H, L)
    post = torch.randn(B, H, L, dtype=torch.float16)

    def route(postgate, grad=True, forced=None):
        routes.clear()
        with torch.set_grad_enabled(grad), triton_fwd.use_halves(forced):
            fftconv(u, k, postgate=postgate, backend="triton")
        return routes

    assert route(None) == ["halves"]
    assert route(None, grad=False) == ["halves"]
    assert route(post) == ["long"]  # a postgate that wants no gradient
    assert route(post.clone().requires_grad_()) == ["halves"]  # keeps z
    assert route(post.clone().requires_grad_(), grad=False) == ["long"]
    assert route(post, forced=True) == ["halves"]
    assert route(post.clone().requires_grad_(), forced=False) == ["long"]
    assert route(None, forced=False) == ["long"]
    assert route(None, forced=True) == ["halves"]


def test_halves_backward_only_where_forced(monkeypatch):
    """The backward of a plan the two-halves forward runs by default stays on the long path
    (it measured faster there); ``use_halves(True)`` puts it on the two halves, and
    ``use_halves(False)`` or fp32 never."""
    from kernels.fftconv import triton_fwd

    n = triton_fwd.HALVES_MAX_FFT
    monkeypatch.setattr(triton_fwd, "HALVES_AT", (n,))
    for dtype in (torch.float16, torch.bfloat16):
        assert triton_fwd.halves_for(n, n // 2, False, dtype)
        assert not triton_fwd.halves_backward_for(n, n // 2, False, dtype)
        with triton_fwd.use_halves(True):
            assert triton_fwd.halves_backward_for(n, n // 2, False, dtype)
            assert not triton_fwd.halves_backward_for(n, n // 2 + 1, False, dtype)
        with triton_fwd.use_halves(False):
            assert not triton_fwd.halves_backward_for(n, n // 2, False, dtype)
    with triton_fwd.use_halves(True):
        assert not triton_fwd.halves_backward_for(n, n // 2, False, torch.float32)


def test_halves_dot_flops():
    """Two passes of the size-n/2 kernel's products, the first and last stages on the rows
    that hold u and y, the middle ones on the kept columns."""
    from kernels.fftconv import triton_fwd

    n, L, B, H = 16384, 8192, 4, 3
    m = n // 2
    N1, N2 = triton_fwd.split(m)
    per_pair = 2 * 8 * m * (2 * N1 + 2 * N2)  # ROWS = N1 at L = m
    assert triton_fwd.dot_flops(B, H, L, n, halves=True) == H * (B // 2) * per_pair
    low, high = triton_fwd.outer_kept_columns(n, 2, 2048)
    assert low + high < N2
    sparse = triton_fwd.dot_flops(B, H, L, n, halves=True, keep_bins=2048)
    assert sparse == H * (B // 2) * 2 * 8 * m * (2 * N1 + 2 * (low + high))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize(
    ("B", "L", "gates", "options"),
    [
        pytest.param(7, 8192, "none", {}, id="L8192-plain"),
        pytest.param(7, 8192, "pre-post-bias", {}, id="L8192-gated"),
        pytest.param(5, 5003, "pre", {"steps": 2}, id="L5003-pre-steps2"),
        pytest.param(1, 4097, "pre-post-bias", {}, id="L4097-B1-gated"),
        pytest.param(
            4, 8192, "pre-post-bias", {"filter_layout": "kernel", "z": True}, id="L8192-kf-raw-z"
        ),
        pytest.param(3, 8192, "none", {"keep_bins": 2048}, id="L8192-sparse"),
        pytest.param(3, 6000, "pre-post-bias", {"hold_filter": False}, id="L6000-load-k"),
        pytest.param(7, 8192, "pre-post-bias", {"halves_passes": 1}, id="L8192-gated-one-pass"),
        pytest.param(5, 7001, "pre", {"halves_passes": 1, "z": True}, id="L7001-one-pass-z"),
    ],
)
def test_gpu_halves_poisoned(B, L, gates, options, dtype):
    """n = 16384 on the two-halves kernel: every output (and z) written and right against
    float64 with the launcher's defaults."""
    from kernels.fftconv import triton_fwd

    n = 16384
    options = dict(options)
    keep = options.pop("keep_bins", None)
    want_z = options.pop("z", False)
    u, k, pre, post, bias = make_inputs(B, 5, L, L, dtype, gates != "none", seed=L, device="cuda")
    if gates == "pre":
        post = bias = None
    kf = torch.fft.rfft(k, n=n)
    if keep is not None:
        kf[:, keep:] = 0
    out = torch.full_like(u, float("nan"))
    z_out = torch.full_like(u, float("nan")) if want_z else None
    triton_fwd.fftconv_fwd(
        u, kf, pre, post, bias, n, keep_bins=keep, halves=True, out=out, z_out=z_out, **options
    )
    ref, z = spectrum_conv64(u, kf, n, pre, post, bias)
    assert not out.isnan().any()
    assert rel_err(out, ref) < TOL[dtype]
    if want_z:
        assert not z_out.isnan().any()
        assert rel_err(z_out, z) < TOL[dtype]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize(("B", "L", "taps"), [(7, 8192, 8192), (4, 6001, 3000), (1, 4097, 4097)])
def test_gpu_filter_grad_halves(B, L, taps, dtype):
    """n = 16384: the filter gradient from the size-8192 backward's two halves (the odd one
    twisted) against float64, gated, with the launcher's defaults."""
    from kernels.fftconv import triton_bwd

    n = 16384
    u, k, pre, post, _ = make_inputs(B, 5, L, taps, dtype, True, seed=L, device="cuda")
    dy = torch.randn(B, 5, L, device="cuda").to(dtype)
    kf = torch.fft.rfft(k, n=n)
    got = triton_bwd.filter_grad_halves(dy, u, kf, pre, post, n, taps)
    v = u.double() * pre.double()
    dz = dy.double() * post.double()
    cross = (torch.fft.rfft(dz, n=n) * torch.fft.rfft(v, n=n).conj()).sum(dim=0)
    ref = torch.fft.irfft(cross, n=n)[:, :taps]
    assert not got.isnan().any()
    assert rel_err(got, ref) < TOL[dtype]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize(
    ("mode", "L"), [("causal", 8192), ("causal", 6007), ("bidirectional", 5000)]
)
def test_gpu_halves_public_call(mode, L, dtype):
    """The public call with the two-halves forward on (``use_halves``): forward and the long
    path's backward against float64 (B = 3, H = 4)."""
    from kernels.fftconv import triton_fwd

    Lk = L if mode == "causal" else 2 * L - 1
    u, k, pre, post, bias = make_inputs(3, 4, L, Lk, dtype, True, seed=L, device="cuda")
    with _recorded(triton_fwd, "launch", lambda a, kw: kw.get("halves")) as calls:
        with triton_fwd.use_halves(True):
            y, leaves = _public_forward((u, k, pre, post), bias, mode=mode, backend="triton")
    halves_ran = len(calls) == 1
    errs = _errors_against_float64(y, leaves, (u, k, pre, post), bias, mode=mode)
    assert halves_ran
    for err in errs.values():
        assert err < TOL[dtype]


@pytest.mark.gpu
def test_gpu_halves_public_call_pipelined():
    """The public call with every gate and the bias at a shape where the two-halves launches
    take several pairs per program on a pipelined loop (B = 16, H = 264: the benchmark's steps;
    the test above, at B = 3, runs one step per program): forward and every gradient against
    the torch backend in fp32 on the same inputs (bf16). At this shape the backward's
    correlation (the postgate as its pregate, dv in fp32) once asked for 248 KB of shared
    memory on two stages and failed to launch."""
    from kernels.fftconv import triton_fwd

    B, H, L = 16, 264, 8192
    u, k, pre, post, bias = make_inputs(B, H, L, L, torch.bfloat16, True, seed=5, device="cuda")
    with _recorded(triton_fwd, "launch_metas", lambda a, kw: kw.get("wide_out")) as calls:
        with triton_fwd.use_halves(True):
            y, leaves = _public_forward((u, k, pre, post), bias, backend="triton")
            dy = torch.randn_like(y)
            grads = torch.autograd.grad(y, leaves, dy)
    assert calls == [False, True], calls  # the forward, the backward's correlation
    metas = triton_fwd.launch_metas(
        16384, B, H, L, torch.bfloat16, gates=(True, False, False), passes=2, halves=True,
        wide_out=True, device=u.device,
    )  # fmt: skip
    assert metas[1][0]["STEPS"] > 1, metas  # a pipelined loop, as the benchmark's
    ref_leaves = [x.float().clone().requires_grad_() for x in (u, k, pre, post)]
    ref = fftconv_public_fp32(ref_leaves, bias)
    ref_grads = torch.autograd.grad(ref, ref_leaves, dy.float())
    assert rel_err(y, ref) < TOL[torch.bfloat16]
    for got, want in zip(grads, ref_grads, strict=True):
        assert rel_err(got, want) < TOL[torch.bfloat16]


def fftconv_public_fp32(leaves, bias):
    from kernels.fftconv import fftconv

    u, k, pre, post = leaves
    return fftconv(u, k, pregate=pre, postgate=post, bias=bias.float(), backend="torch")


def test_halves_plans_keep_z():
    """A plan the two-halves forward runs keeps z (its forward writes it; the long-path
    backward is then asked for the other gradients only); off, or in fp32, the long path's
    plan keeps none."""
    from kernels.fftconv import triton, triton_fwd
    from kernels.fftconv.plan import make_plan

    plan = make_plan("causal", 8192, 8192)
    assert plan.fft_size == triton_fwd.HALVES_MAX_FFT
    with triton_fwd.use_halves(True):
        assert triton.keeps_z(plan, torch.bfloat16)
        assert not triton.keeps_z(plan, torch.float32)
        assert not triton.keeps_z(make_plan("causal", 16384, 16384), torch.bfloat16)
    with triton_fwd.use_halves(False):
        assert not triton.keeps_z(plan, torch.bfloat16)


def test_prepare_builds_the_halves_tables_where_they_run():
    """``prepare`` (before a CUDA graph capture, where nothing can be built) builds the size-n/2
    tables of the two-halves kernels (forward and backward) where they run the plan, and not
    where the long path does."""
    from kernels.fftconv import triton, triton_fwd

    device = torch.device("cpu")
    n = triton_fwd.HALVES_MAX_FFT
    N1, N2 = triton_fwd.split(n // 2)
    for on in (False, True):
        for key in [key for key in triton_fwd._CONSTANTS if key[:2] == (N1, N2)]:
            del triton_fwd._CONSTANTS[key]
        with triton_fwd.use_halves(on):
            triton.prepare(n, device, torch.float16)
        assert ((N1, N2, device, torch.float16) in triton_fwd._CONSTANTS) == on


if __name__ == "__main__":
    _interpreter_main()
