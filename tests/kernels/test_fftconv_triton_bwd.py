"""The fused Triton backward (``triton_bwd``) against float64 references.

CPU: the kernel runs under TRITON_INTERPRET=1 (set before triton is imported), so the cases run
in one subprocess (this file run as a module) and the tests check what it printed; fp32 and
fp16 only (the interpreter's bf16 ``tl.dot`` is wrong), n = 256 and 512 mostly (it is slow),
n = 2048 and 4096 for frequency-sparse filters (the column skip needs N2 >= 32).
The launch variants (``triton_bwd.Config``: blocks of pairs, the split into two kernels, the
accumulator in memory) run there too, with masked tail pairs and half-empty pairs; the
interpreter does not pipeline, so what pipelining changes is checked on the GPU.
GPU (``gpu`` marker): the compiled kernel, every dtype and mode, torch.compile and autocast,
frequency-sparse filters at n = 2048-8192, and every variant the backward benchmark times.
"""

from __future__ import annotations

import json
from typing import NamedTuple

import pytest
import torch

from .fftconv_reference import DTYPES, GPU_DTYPES, TOL, conv_torch64, make_inputs, rel_err
from .interpreted import count_calls, run_interpreted, start_interpreter

NAMES = ("u", "k", "pregate", "postgate", "bias")


def sparse_conv_fft64(u, k, pregate=None, postgate=None, bias=None, freq_keep=1.0):
    """The causal frequency-sparse convolution in float64 by torch.fft, differentiable by
    autograd (no hand-written backward): rfft at the plan's n, the filter spectrum's bins from
    ``keep_bins`` on zeroed, irfft, the first L samples; gates and bias as in the layer."""
    from kernels.fftconv.plan import make_plan

    L, Lk = u.shape[-1], k.shape[-1]
    plan = make_plan("causal", L, Lk, freq_keep)
    n = plan.fft_size
    v = u * pregate if pregate is not None else u
    kf = torch.fft.rfft(k[:, : plan.filter_len], n=n)
    low_pass = torch.arange(n // 2 + 1, device=u.device) < plan.keep_bins
    z = torch.fft.irfft(torch.fft.rfft(v, n=n) * (kf * low_pass), n=n)[..., :L]
    y = z * postgate if postgate is not None else z
    return y + bias[:, None] * v if bias is not None else y


def grads_vs_reference(
    B, H, L, Lk, mode, dtype, gated, wants=NAMES, pair=False, freq_keep=1.0, seed=0, device="cpu"
):
    """Backward of ``fftconv(backend="triton")`` and of a float64 reference on the same inputs:
    on CPU the direct convolution (``conv_torch64``, no FFT); for causal frequency-sparse
    filters (which have no direct form) autograd through torch.fft in float64
    (``sparse_conv_fft64``); on the GPU (where the direct float64 convolution of long filters
    is slow) and for the other sparse ones, the torch.fft backend in float64. Returns ({name:
    rel. error}, ok): ok is False if a gradient is missing where wanted, present where not, or
    of a wrong dtype."""
    from kernels import fftconv

    inputs = dict(
        zip(NAMES, make_inputs(B, H, L, Lk, dtype, gated, pair, seed, device), strict=True)
    )
    g = torch.Generator().manual_seed(seed + 1)
    dy = torch.randn(B, H, L, generator=g).to(device, dtype)
    leaves = {
        name: x.clone().requires_grad_(name in wants) if x is not None else None
        for name, x in inputs.items()
    }
    refs = {
        name: x.double().requires_grad_(name in wants) if x is not None else None
        for name, x in inputs.items()
    }

    def call(x, backend):
        return fftconv(
            x["u"],
            x["k"],
            pregate=x["pregate"],
            postgate=x["postgate"],
            bias=x["bias"],
            mode=mode,
            freq_keep=freq_keep,
            backend=backend,
        )

    call(leaves, "triton").backward(dy)
    if freq_keep < 1.0 and mode == "causal" and not pair:
        args = [refs[name] for name in NAMES]
        sparse_conv_fft64(*args, freq_keep=freq_keep).backward(dy.double())
    elif freq_keep < 1.0 or device != "cpu":
        call(refs, "torch").backward(dy.double())
    else:
        args = [refs[name] for name in NAMES]
        conv_torch64(*args, mode=mode).backward(dy.double())
    errs, ok = {}, True
    for name in NAMES:
        leaf, ref = leaves[name], refs[name]
        if leaf is None:
            continue
        if name not in wants:
            ok &= leaf.grad is None
            continue
        ok &= leaf.grad is not None and leaf.grad.dtype == leaf.dtype
        errs[name] = rel_err(leaf.grad, ref.grad) if leaf.grad is not None else float("inf")
    return errs, bool(ok)


# ---------------------------------------------------------------------------------------------
# CPU: interpreter cases, run in a subprocess


class Case(NamedTuple):
    """A backward through the public call; every case here is a plan the fused backward covers
    (256 <= n <= 8192, no fold)."""

    B: int
    H: int
    L: int
    Lk: int
    mode: str = "causal"
    dtype: str = "fp32"
    gated: bool = True
    wants: tuple[str, ...] = NAMES  # the inputs that require a gradient
    pair: bool = False  # bidirectional filter as a (2, H, M) forward/reverse pair
    freq_keep: float = 1.0


CASES = {
    "B3-H5-L128-K128-causal-fp32-gated": Case(3, 5, 128, 128),
    "B2-H3-L256-K256-causal-fp16-gated": Case(2, 3, 256, 256, dtype="fp16"),
    "B3-H3-L200-K57-causal-fp32-gated": Case(3, 3, 200, 57),
    "B1-H3-L300-K150-causal-fp16-plain": Case(1, 3, 300, 150, dtype="fp16", gated=False),
    "B3-H2-L130-K61-bidir-fp32-gated": Case(3, 2, 130, 61, "bidirectional"),
    "B2-H3-L200-M40-bidir-fp16-pair": Case(2, 3, 200, 40, "bidirectional", "fp16", pair=True),
    "B3-H1-L256-circular-fp32-gated": Case(3, 1, 256, 256, "circular"),
    "B1-H2-L512-circular-fp16-plain": Case(1, 2, 512, 512, "circular", "fp16", gated=False),
    "B3-H2-L200-K60-causal-fp32-sparse": Case(3, 2, 200, 60, freq_keep=0.5),
    "B3-H3-L111-K100-causal-fp32-needs-u": Case(3, 3, 111, 100, wants=("u",)),
    "B3-H3-L111-K100-causal-fp32-needs-k": Case(3, 3, 111, 100, wants=("k",)),
    "B3-H3-L111-K100-causal-fp16-needs-post-bias": Case(
        3, 3, 111, 100, dtype="fp16", wants=("postgate", "bias")
    ),
    "B3-H3-L111-K100-causal-fp32-needs-pre-k": Case(3, 3, 111, 100, wants=("pregate", "k")),
    # frequency-sparse filters on the default configurations, the spectra on K2 < N2 columns:
    # n = 2048 (64 x 32; fp32 accumulator in memory, fp16 held tables and blocks of 8 pairs)
    # and n = 4096 (fp32: 128 x 32, 16 of 32 columns; fp16: 64 x 64, a square tile, which runs
    # the dense columns)
    "B3-H2-L1000-K1000-causal-fp32-sparse75": Case(3, 2, 1000, 1000, freq_keep=0.25),
    "B3-H2-L1000-K1000-causal-fp16-sparse94": Case(
        3, 2, 1000, 1000, dtype="fp16", freq_keep=1 / 16
    ),
    "B3-H2-L2000-K2000-causal-fp32-sparse94": Case(3, 2, 2000, 2000, freq_keep=1 / 16),
    "B3-H2-L2000-K2000-causal-fp16-sparse75-dense-columns": Case(
        3, 2, 2000, 2000, dtype="fp16", freq_keep=0.25
    ),
    "B3-H2-L1500-K700-causal-fp16-sparse75-needs-k-post": Case(
        3, 2, 1500, 700, dtype="fp16", wants=("k", "postgate"), freq_keep=0.25
    ),
}


class LaunchCase(NamedTuple):
    """A bare launch with NaN-poisoned outputs: ``config`` the ``triton_bwd.Config`` fields
    (None: the default), ``wants`` the gradients asked for (all five, or u and k when plain),
    ``freq_keep`` < 1: a frequency-sparse filter (``keep_bins`` passed to the launch)."""

    B: int
    H: int
    L: int
    n: int
    dtype: str = "fp32"
    config: dict | None = None
    pairs_per_program: int | None = None
    gated: bool = True
    wants: tuple[str, ...] | None = None
    freq_keep: float = 1.0


def _cfg(n1, warps, **options):
    """``triton_bwd.Config`` fields as a dict."""
    return dict(n1=n1, num_warps=warps, **options)


def _config(fields: dict):
    """The ``triton_bwd.Config`` of ``_cfg`` fields (kernel (b)'s ``b`` a dict of its own)."""
    from kernels.fftconv import triton_bwd

    if isinstance(fields.get("b"), dict):
        fields = {**fields, "b": triton_bwd.Config(**fields["b"])}
    return triton_bwd.Config(**fields)


def _b_pipelined(n1, warps, a_steps):
    """A split whose kernel (b) runs blocks of 4 pairs, 2 stages, its accumulator in registers
    and the bias gradient in it; (a) with its tables held, ``a_steps`` pairs x 2 stages."""
    b = _cfg(n1, warps, steps=4, stages=2)
    return _cfg(
        n1, warps, hoist=True, steps=a_steps, stages=2, split="store_q", dbias_in_b=True, b=b
    )


_V5_N4096 = _cfg(64, 4, hoist=True, steps=8, stages=2, split="store_q", b=_cfg(64, 4))
_SPLIT_ACC_IN_MEMORY_PIPELINED = _cfg(32, 2, acc_in_memory=True, steps=4, stages=2, split="store_q")
LAUNCHER_CASES = {
    "B5-H2-L300-n512-fp32-default": LaunchCase(5, 2, 300, 512),
    "B7-H3-L256-n256-fp32-loop3-acc-in-memory": LaunchCase(
        7, 3, 256, 256, config=_cfg(16, 2, acc_in_memory=True), pairs_per_program=3
    ),
    "B6-H1-L260-n512-fp16-loop2-reload": LaunchCase(
        6, 1, 260, 512, "fp16", _cfg(32, 2), pairs_per_program=2
    ),
    "B4-H2-L500-n512-fp32-hoist-loop1": LaunchCase(
        4, 2, 500, 512, config=_cfg(32, 2, hoist=True), pairs_per_program=1
    ),
    # blocks of pairs (software-pipelined on a GPU): B = 9 is 5 pairs, the last half empty; 3
    # pairs per program round up to 2 blocks of 2, so the second chunk's last pair is masked
    "B9-H2-L256-n512-fp32-steps4-stages2-tail": LaunchCase(
        9, 2, 256, 512, config=_cfg(32, 2, steps=4, stages=2), pairs_per_program=3
    ),
    "B9-H2-L200-n512-fp16-steps4-stages3-hoist-tail": LaunchCase(
        9, 2, 200, 512, "fp16", _cfg(32, 2, hoist=True, steps=4, stages=3), 3
    ),
    # split backward: Q through memory, and Q computed twice
    "B5-H3-L256-n256-fp32-store-q-steps2-tail": LaunchCase(
        5, 3, 256, 256, config=_cfg(16, 2, steps=2, stages=2, split="store_q"), pairs_per_program=3
    ),
    "B7-H2-L300-n512-fp16-store-q-hoist": LaunchCase(
        7, 2, 300, 512, "fp16", _cfg(32, 2, hoist=True, split="store_q", dk_num_warps=4)
    ),
    "B9-H2-L256-n512-fp16-store-q-acc-in-memory-steps4-stages2-tail": LaunchCase(
        9, 2, 256, 512, "fp16", _SPLIT_ACC_IN_MEMORY_PIPELINED, pairs_per_program=3
    ),
    # the split's kernels configured apart (Config.b): (a) in blocks of 4 pairs, (b) one pair
    # at a time with its accumulator in memory (the chunk rounds to (a)'s blocks); and (b) in
    # longer blocks than (a), its tables held, on other warps
    "B9-H2-L256-n512-fp16-store-q-a-steps4-b-acc-in-memory-tail": LaunchCase(
        9,
        2,
        256,
        512,
        "fp16",
        _cfg(32, 2, steps=4, stages=2, split="store_q", b=_cfg(32, 2, acc_in_memory=True)),
        3,
    ),  # fmt: skip
    # n = 4096's default since backward v5: (a) tables held, 8 pairs x 2 stages; (b) one pair
    # at a time, its accumulator in registers (a half-empty pair, 3 pairs in a block of 8)
    "B5-H2-L2000-n4096-fp16-store-q-a-hold-steps8-b-acc-in-registers": LaunchCase(
        5, 2, 2000, 4096, "fp16", _V5_N4096
    ),
    # (b) pipelined in blocks of 4 pairs with its accumulator in registers, the bias gradient
    # in it, (a) in blocks of 2 (n = 8192's variant split-q-a-hold-s8p2-b-s4p2 in small); and
    # at n = 8192 on the variant's own tiles and warps ((a) the default's, blocks of 8)
    "B9-H2-L256-n512-fp16-store-q-dbias-in-b-b-steps4-stages2-tail": LaunchCase(
        9, 2, 256, 512, "fp16", _b_pipelined(32, 2, a_steps=2), 3
    ),
    "B5-H1-L4000-n8192-fp16-store-q-dbias-in-b-b-steps4-stages2": LaunchCase(
        5, 1, 4000, 8192, "fp16", _b_pipelined(128, 8, a_steps=8), 3
    ),
    "B7-H2-L300-n512-fp32-store-q-b-hoist-steps4-warps4": LaunchCase(
        7, 2, 300, 512, config=_cfg(32, 2, split="store_q", b=_cfg(32, 4, hoist=True, steps=4))
    ),
    # the bias gradient in kernel (b) (Config.dbias_in_b): with every gradient; with only the
    # filter's and the bias's, where (a) only writes Q (store_q) or does not run (recompute)
    "B7-H2-L300-n512-fp16-store-q-dbias-in-b": LaunchCase(
        7,
        2,
        300,
        512,
        "fp16",
        _cfg(32, 2, split="store_q", dbias_in_b=True, b=_cfg(32, 2, acc_in_memory=True)),
    ),  # fmt: skip
    "B5-H2-L256-n512-fp32-store-q-dbias-in-b-needs-k-bias": LaunchCase(
        5, 2, 256, 512, config=_cfg(32, 2, split="store_q", dbias_in_b=True), wants=("k", "bias")
    ),
    "B5-H2-L256-n512-fp32-recompute-dbias-in-b-needs-k-bias": LaunchCase(
        5, 2, 256, 512, config=_cfg(32, 2, split="recompute", dbias_in_b=True), wants=("k", "bias")
    ),
    "B5-H2-L256-n512-fp32-recompute-acc-in-memory": LaunchCase(
        5, 2, 256, 512, config=_cfg(32, 2, acc_in_memory=True, split="recompute")
    ),
    "B3-H2-L256-n512-fp16-store-q-plain-steps2": LaunchCase(
        3, 2, 256, 512, "fp16", _cfg(32, 2, steps=2, stages=2, split="store_q"), 2, gated=False
    ),
    "B4-H2-L180-n512-fp32-recompute-plain": LaunchCase(
        4, 2, 180, 512, config=_cfg(32, 2, split="recompute"), gated=False
    ),
    "B5-H2-L256-n512-fp32-store-q-needs-k-bias": LaunchCase(
        5, 2, 256, 512, config=_cfg(32, 2, split="store_q"), wants=("k", "bias")
    ),
    # frequency-sparse filters in the other variants: Q through memory and the accumulator in
    # memory on [N1, K2] tiles, held tables for the inverse stage's [K2, N2] columns, Q
    # recomputed, and 64 x 64 at n = 4096 (16 of 64 columns)
    "B5-H2-L1000-n2048-fp16-sparse75-store-q-steps2-tail": LaunchCase(
        5,
        2,
        1000,
        2048,
        "fp16",
        _cfg(64, 4, steps=2, stages=2, split="store_q"),
        3,
        freq_keep=0.25,
    ),  # fmt: skip
    "B5-H2-L1000-n2048-fp32-sparse94-hoist-acc-in-memory": LaunchCase(
        5, 2, 1000, 2048, config=_cfg(64, 4, hoist=True, acc_in_memory=True), freq_keep=1 / 16
    ),
    "B3-H2-L1500-n2048-fp32-sparse75-recompute-plain": LaunchCase(
        3, 2, 1500, 2048, config=_cfg(64, 4, split="recompute"), gated=False, freq_keep=0.25
    ),
    # a square tile skips columns in fp32 only (skips_columns), so fp32 here, and fp16 below
    "B3-H2-L2000-n4096-fp32-sparse94-64x64-store-q-acc-in-memory": LaunchCase(
        3,
        2,
        2000,
        4096,
        "fp32",
        _cfg(64, 4, acc_in_memory=True, split="store_q"),
        freq_keep=1 / 16,
    ),  # fmt: skip
    "B3-H2-L1000-n4096-fp16-sparse75-64x64-dense-columns": LaunchCase(
        3, 2, 1000, 4096, "fp16", _cfg(64, 4), freq_keep=0.25
    ),
    # the fused kernel on 128 x 32 tiles (the default at n = 4096 before backward v4): 16 of 32
    "B3-H2-L2000-n4096-fp16-sparse75-128x32-fused": LaunchCase(
        3, 2, 2000, 4096, "fp16", _cfg(128, 8), freq_keep=0.25
    ),
}
SPECTRUM_CASE = "spectrum-n512-L200-fp32"
DETERMINISM_CASE = "determinism-B9-H2-L256-fp32"


def _run_case(c: Case):
    return grads_vs_reference(
        c.B, c.H, c.L, c.Lk, c.mode, DTYPES[c.dtype], c.gated, c.wants, c.pair, c.freq_keep
    )


def _launcher_reference(dy, u, kf, pre, post, bias, n, keep_bins=None):
    """The five gradients in float64 by torch.fft (circular filter of length n; with
    ``keep_bins``, its spectrum cut there)."""
    from kernels.fftconv import core, reference
    from kernels.fftconv.plan import ConvPlan

    B, H, L = u.shape
    plan = ConvPlan("causal", L, n, n, False, keep_bins or n // 2 + 1)
    kc = torch.fft.irfft(kf.to(torch.complex128), n=n)
    args = [None if x is None else x.double() for x in (dy, u, kc, None, pre, post, bias)]
    needs = (True, True, pre is not None, post is not None, bias is not None)
    return core.backward(*args, plan, reference, needs)


def _run_launcher_case(c: LaunchCase, device="cpu"):
    """The bare launch against float64: ({name: rel. error, "unwritten": NaN count}, ok): ok is
    False if an out tensor was not the one returned or a gradient's presence is wrong."""
    from kernels.fftconv import triton_bwd
    from kernels.fftconv.plan import keep_bins_for

    dtype = DTYPES[c.dtype]
    u, k, pre, post, bias = make_inputs(c.B, c.H, c.L, c.n, dtype, c.gated, seed=1, device=device)
    kf = torch.fft.rfft(k, n=c.n)
    keep = keep_bins_for(c.n, c.freq_keep)
    kf[:, keep:] = 0  # the contract: a sparse filter's spectrum is zero from keep_bins on
    g = torch.Generator().manual_seed(2)
    dy = torch.randn(c.B, c.H, c.L, generator=g).to(device, dtype)
    wants = c.wants or (NAMES if c.gated else ("u", "k"))
    needs = tuple(name in wants for name in NAMES)
    out = tuple(torch.full_like(u, float("nan")) for _ in range(3))
    grads = triton_bwd.launch(
        dy,
        u,
        kf,
        pre,
        post,
        bias,
        c.n,
        needs,
        config=_config(c.config) if c.config else None,
        pairs_per_program=c.pairs_per_program,
        out=out,
        keep_bins=keep if c.freq_keep < 1 else None,
    )
    d_u, dk_spec, d_pre, d_post, d_bias = grads
    d_k = triton_bwd.dk_from_spectrum(dk_spec, c.n, keep) if dk_spec is not None else None
    ref = _launcher_reference(dy, u, kf, pre, post, bias, c.n, keep)
    got = (d_u, d_k, d_pre, d_post, d_bias)
    errs = {
        name: rel_err(a, b)
        for name, a, b in zip(NAMES, got, ref, strict=True)
        if name in wants and a is not None
    }
    written = [
        x for x, name in zip(out, ("u", "pregate", "postgate"), strict=True) if name in wants
    ]
    errs["unwritten"] = float(sum(x.isnan().sum() for x in written))
    ok = all((a is not None) == (name in wants) for name, a in zip(NAMES, got, strict=True))
    ok &= all(
        a is b or name not in wants
        for name, a, b in zip(("u", "pregate", "postgate"), out, (d_u, d_pre, d_post), strict=True)
    )
    return errs, ok


def _run_spectrum_case():
    """A filter prepared for a longer length (n = 512) serves L = 200: ROWS < N1."""
    from kernels import fftconv, filter_spectrum

    u, k, pre, post, bias = make_inputs(3, 2, 200, 40, torch.float32, True, seed=3)
    leaves = [x.clone().requires_grad_() for x in (u, k, pre, post, bias)]
    refs = [x.double().requires_grad_() for x in (u, k, pre, post, bias)]
    dy = torch.randn(3, 2, 200, generator=torch.Generator().manual_seed(4))
    spec = filter_spectrum(leaves[1], 256, backend="triton")
    fftconv(leaves[0], spec, pregate=leaves[2], postgate=leaves[3], bias=leaves[4]).backward(dy)
    conv_torch64(*refs).backward(dy.double())
    errs = {name: rel_err(a.grad, b.grad) for name, a, b in zip(NAMES, leaves, refs, strict=True)}
    return errs, spec.plan.fft_size == 512


def _run_determinism_case():
    """The same backward twice, bit for bit (several chunks per channel: partial sums)."""
    from kernels import fftconv

    u, k, pre, post, bias = make_inputs(9, 2, 256, 256, torch.float32, True, seed=5)
    dy = torch.randn(9, 2, 256, generator=torch.Generator().manual_seed(6))
    runs = []
    for _ in range(2):
        leaves = [x.clone().requires_grad_() for x in (u, k, pre, post, bias)]
        fftconv(
            leaves[0], leaves[1], pregate=leaves[2], postgate=leaves[3], bias=leaves[4],
            backend="triton",
        ).backward(dy)  # fmt: skip
        runs.append([x.grad for x in leaves])
    same = all(torch.equal(a, b) for a, b in zip(*runs, strict=True))
    return {}, same


def _record_columns(triton_bwd, setattr=setattr) -> list[tuple[int, int, int]]:
    """Wraps the kernel so that every launch appends its ``(N1, N2, K2)`` constexprs (the
    frequency columns it computed the spectra on) to the returned list (``setattr``: a
    pytest ``monkeypatch.setattr``, to undo the wrap after the test)."""
    launched: list[tuple[int, int, int]] = []
    kernel = triton_bwd._fftconv_bwd_kernel

    class Recorded:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                launched.append((kwargs["N1"], kwargs["N2"], kwargs["K2"]))
                return kernel[grid](*args, **kwargs)

            return launch

    setattr(triton_bwd, "_fftconv_bwd_kernel", Recorded())
    return launched


def _interpreter_main() -> None:
    """Runs every CPU case under the interpreter; prints one JSON line of results."""
    start_interpreter()
    from kernels.fftconv import triton_bwd

    calls = count_calls(triton_bwd, "fftconv_bwd")
    launched = _record_columns(triton_bwd)
    jobs = [(cid, _run_case, (case,)) for cid, case in CASES.items()]
    jobs += [(cid, _run_launcher_case, (case,)) for cid, case in LAUNCHER_CASES.items()]
    jobs += [(SPECTRUM_CASE, _run_spectrum_case, ()), (DETERMINISM_CASE, _run_determinism_case, ())]
    results = {}
    for cid, run, args in jobs:
        calls.clear()
        launched.clear()
        errs, ok = run(*args)
        results[cid] = {"errs": errs, "ok": ok, "fused": bool(calls), "columns": launched[:]}
    print(json.dumps(results))


@pytest.fixture(scope="module")
def interpreted():
    return run_interpreted("tests.kernels.test_fftconv_triton_bwd")


def _expected_columns(n: int, freq_keep: float, dtype: str, config: dict | None = None):
    """``(N1, N2, K2)`` a launch at FFT size n should use: the configuration's factors, and
    the frequency columns ``kept_columns`` gives there (N2 for a dense filter)."""
    from kernels.fftconv import triton_bwd
    from kernels.fftconv.plan import keep_bins_for

    N1 = config["n1"] if config else triton_bwd.config_for(n, DTYPES[dtype]).n1
    keep = keep_bins_for(n, freq_keep) if freq_keep < 1 else None
    if not triton_bwd.skips_columns(N1, n // N1, DTYPES[dtype]):
        keep = None
    return N1, n // N1, sum(triton_bwd.kept_columns(n, keep, N1=N1))


@pytest.mark.parametrize("case", list(CASES))
def test_interpreter_backward(interpreted, case):
    from kernels.fftconv import triton_bwd
    from kernels.fftconv.plan import make_plan

    c = CASES[case]
    res = interpreted[case]
    assert res["fused"], "the fused backward was not taken"
    assert res["ok"], "a gradient is missing, unexpected or of the wrong dtype"
    assert set(res["errs"]) <= set(c.wants)
    for name, err in res["errs"].items():
        assert err < TOL[DTYPES[c.dtype]], (name, err)
    Lk = 2 * c.Lk - 1 if c.pair else c.Lk
    n = make_plan(c.mode, c.L, Lk, c.freq_keep).fft_size
    want = _expected_columns(n, c.freq_keep, c.dtype)
    assert res["columns"] and all(tuple(x) == want for x in res["columns"]), res["columns"]
    if c.freq_keep <= 0.25:  # n >= 2048 here: N2 >= 32
        skips = triton_bwd.skips_columns(want[0], want[1], DTYPES[c.dtype])
        assert skips == (case.endswith("-sparse75") or case.endswith("-sparse94")), case
        assert (want[2] < want[1]) == skips, "the case should skip frequency columns"


@pytest.mark.parametrize("case", list(LAUNCHER_CASES))
def test_interpreter_launcher_poisoned(interpreted, case):
    from kernels.fftconv import triton_bwd

    c = LAUNCHER_CASES[case]
    res = interpreted[case]
    assert res["ok"], "a gradient is missing or unexpected, or out tensors were not returned"
    errs = dict(res["errs"])
    assert errs.pop("unwritten") == 0
    assert set(errs) == set(c.wants or (NAMES if c.gated else ("u", "k")))
    for name, err in errs.items():
        assert err < TOL[DTYPES[c.dtype]], (name, err)
    want = _expected_columns(c.n, c.freq_keep, c.dtype, c.config)
    assert res["columns"] and all(tuple(x) == want for x in res["columns"]), res["columns"]
    skips = c.freq_keep < 1 and triton_bwd.skips_columns(want[0], want[1], DTYPES[c.dtype])
    assert (want[2] < want[1]) == skips, "sparse cases skip columns, dense do not"


def test_interpreter_spectrum_for_longer_length(interpreted):
    res = interpreted[SPECTRUM_CASE]
    assert res["ok"] and res["fused"]
    for name, err in res["errs"].items():
        assert err < TOL[torch.float32], (name, err)


def test_interpreter_deterministic(interpreted):
    res = interpreted[DETERMINISM_CASE]
    assert res["fused"] and res["ok"], "two identical backward passes differ"


# ---------------------------------------------------------------------------------------------
# CPU: validation (raised before any launch, so no interpreter needed)


def _launch_args(n=512, B=3, H=2, L=300, dtype=torch.float32):
    u, k, pre, post, bias = make_inputs(B, H, L, L, dtype, True)
    return [u.clone(), u, torch.fft.rfft(k, n=n), pre, post, bias, n, (True,) * 5]


@pytest.mark.parametrize("variant", ["default", "split-q-a-hold-s8p2-b-s4p2"])
def test_backward_fits_sm90_shared_memory(variant):
    """n = 8192's default backward and its pipelined kernel (b) variant, gated with z from the
    forward, compiled for sm_90 as ``benchmarks.fftconv_bwd --static`` compiles them: both
    kernels of the split build and fit one block's shared memory."""
    pytest.importorskip("triton")
    from benchmarks.fftconv import SHARED_PER_BLOCK
    from benchmarks.fftconv_bwd import static_stats, variants
    from kernels.fftconv import triton_bwd

    config = variants(8192)[variant].get("config") or triton_bwd.config_for(8192)
    try:
        stats = static_stats(8192, config)
    except (FileNotFoundError, RuntimeError) as err:  # no ptxas / no NVIDIA backend here
        pytest.skip(f"no sm_90 compile on this machine: {err}")
    for part in ("a", "b"):
        assert 0 < stats[f"shared_bytes_{part}"] <= SHARED_PER_BLOCK, stats


@pytest.mark.parametrize(
    ("options", "match"),
    [
        pytest.param({"keep_bins": 0}, r"keep_bins must be None or >= 1; got 0", id="keep-0"),
        pytest.param(
            {"keep_bins": 200, "blocked": True},
            r"keep_bins: a blocked plan keeps every frequency \(None or >= 257\); got 200",
            id="blocked-sparse",
        ),
    ],
)
def test_launch_rejects_bad_keep_bins(options, match):
    from kernels.fftconv import triton_bwd

    with pytest.raises(ValueError, match=match):
        triton_bwd.launch(*_launch_args(), **options)
    if options.get("blocked"):
        with pytest.raises(ValueError, match=match):
            triton_bwd.dot_flops(3, 2, 300, 512, blocked=True, keep_bins=200)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        pytest.param({6: 128}, r"n in \[256, 8192\].*n=128", id="n-too-small"),
        pytest.param({6: 16384}, r"n in \[256, 8192\].*n=16384", id="n-too-large"),
        pytest.param({6: 256}, r"L <= n.*L=300", id="L-past-n"),
        pytest.param({0: torch.zeros(3, 2, 299)}, r"dy must have the shape of u", id="dy-shape"),
        pytest.param({2: torch.zeros(2, 129, dtype=torch.complex64)}, r"kf must be", id="kf"),
        pytest.param({3: None}, r"gradient of pregate, but pregate is None", id="needs-pre"),
        pytest.param({5: None}, r"gradient of bias, but bias is None", id="needs-bias"),
    ],
)
def test_launch_rejects_bad_input(change, match):
    from kernels.fftconv import triton_bwd

    args = _launch_args()
    for index, value in change.items():
        args[index] = value
    with pytest.raises(ValueError, match=match):
        triton_bwd.launch(*args)


@pytest.mark.parametrize(
    ("z", "match"),
    [
        pytest.param(torch.zeros(3, 2, 299), r"z must be torch.float32 of u's shape", id="shape"),
        pytest.param(
            torch.zeros(3, 2, 300, dtype=torch.float16),
            r"got torch.float16 \(3, 2, 300\)",
            id="dtype",
        ),
    ],
)
def test_launch_rejects_bad_z(z, match):
    from kernels.fftconv import triton_bwd

    with pytest.raises(ValueError, match=match):
        triton_bwd.launch(*_launch_args(), z=z)


def test_launch_rejects_fp64_and_bad_config():
    from kernels.fftconv import triton_bwd

    args = _launch_args()
    args[1] = args[1].double()
    with pytest.raises(ValueError, match=r"dtypes.*torch.float64"):
        triton_bwd.launch(*args)
    with pytest.raises(ValueError, match=r"config.n1 must be.*got n1=16"):
        triton_bwd.launch(*_launch_args(), config=triton_bwd.Config(16, 4))
    with pytest.raises(ValueError, match=r"config.num_warps.*got 3"):
        triton_bwd.launch(*_launch_args(), config=triton_bwd.Config(32, 3))
    with pytest.raises(ValueError, match=r"pairs_per_program must be >= 1; got 0"):
        triton_bwd.launch(*_launch_args(), pairs_per_program=0)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        pytest.param({"steps": 3}, r"config.steps must be a power of two >= 1; got 3", id="steps"),
        pytest.param({"steps": 0}, r"config.steps must be a power of two >= 1; got 0", id="steps0"),
        pytest.param({"stages": 0}, r"config.stages must be >= 1; got 0", id="stages"),
        pytest.param({"split": "dk"}, r"config.split must be one of .*; got 'dk'", id="split"),
        pytest.param({"dk_num_warps": 3}, r"config.dk_num_warps must be .*; got 3", id="dk-warps"),
        pytest.param(
            {"b": _cfg(16, 2), "split": "store_q"},
            r"config.b.n1 must be config.n1 \(32\).*got 16",
            id="b-n1",
        ),
        pytest.param(
            {"b": _cfg(32, 2, steps=3), "split": "store_q"},
            r"config.steps must be .*got 3",
            id="b-steps",
        ),
        pytest.param(
            {"b": _cfg(32, 2, dk_num_warps=4), "split": "store_q"},
            r"config.b is kernel \(b\)'s own",
            id="b-nested",
        ),
        pytest.param(
            {"dbias_in_b": True}, r"config.dbias_in_b .* needs split .*got 'fused'", id="dbias-b"
        ),
        pytest.param({"b": _cfg(32, 2)}, r"config.b .* needs split .*got 'fused'", id="b-fused"),
    ],
)
def test_launch_rejects_bad_variant(options, match):
    from kernels.fftconv import triton_bwd

    with pytest.raises(ValueError, match=match):
        triton_bwd.launch(*_launch_args(), config=_config(_cfg(32, 2, **options)))


@pytest.mark.parametrize(
    ("per_program", "steps", "want"),
    [(5, 8, (4, 8)), (1, 8, (1, 1)), (8, 4, (4, 8)), (3, 1, (1, 3)), (16, 8, (8, 16))],
)
def test_block_steps(per_program, steps, want):
    """Blocks of at most ``steps`` pairs, no longer than the chunk (few masked pairs), and the
    chunk a whole number of blocks."""
    from kernels.fftconv import triton_bwd

    assert triton_bwd.block_steps(per_program, steps) == want


def test_fused_backward_declines_uncovered_plans():
    """n < 256 and fp64 are left to the primitives (None), before any kernel runs."""
    from kernels.fftconv import triton as backend
    from kernels.fftconv.plan import make_plan

    u, k, *_ = make_inputs(2, 3, 97, 31, torch.float32, False)
    plan = make_plan("causal", 97, 31)
    kf = torch.fft.rfft(k, n=plan.fft_size)
    assert plan.fft_size < 256
    needs = (True, True, False, False, False)
    assert backend.fused_backward(u, u, k, kf, None, None, None, plan, needs) is None
    plan = make_plan("causal", 300, 300)
    kf = torch.fft.rfft(k.double(), n=plan.fft_size)
    assert (
        backend.fused_backward(u.double(), u.double(), k, kf, None, None, None, plan, needs) is None
    )


def test_dk_from_spectrum_matches_torch_fft():
    """The host half of the filter gradient: kernel layout -> natural order -> real part, with
    the frequency cut-off, against the same correlation by torch.fft."""
    from kernels.fftconv import triton_bwd

    n, m, keep, N1, N2 = 512, 300, 97, 32, 16
    g = torch.Generator().manual_seed(7)
    dz, v = torch.randn(2, 3, n, generator=g, dtype=torch.float64)
    P, Q = torch.fft.fft(v) / n**0.5, torch.fft.fft(dz) / n**0.5  # complex: a pair of rows each
    S = Q * P.conj()  # [3, n] natural order
    layout = S.reshape(3, N2, N1).transpose(1, 2)  # bin k1 + N1*k2 at [k1, k2]
    spec = torch.stack([layout.real, layout.imag], dim=1).float()
    want_full = torch.fft.ifft(S * n).real
    V, DZ = torch.fft.rfft(v), torch.fft.rfft(dz)
    V[:, keep:] = 0
    want_keep = torch.fft.irfft(DZ * V.conj(), n=n)
    assert rel_err(triton_bwd.dk_from_spectrum(spec, m, n // 2 + 1), want_full[:, :m]) < 1e-6
    assert rel_err(triton_bwd.dk_from_spectrum(spec, m, keep), want_keep[:, :m]) < 1e-6


def _factors(n: int) -> list[int]:
    """Every first factor N1 the backward takes at size n (``N1 >= N2 >= 16``)."""
    return [N1 for N1 in (16, 32, 64, 128, 256, 512) if N1 >= n // N1 >= 16]


@pytest.mark.parametrize("n", [256, 512, 1024, 2048, 4096, 8192])
def test_kept_columns_cover_the_kept_bins(n):
    """On every factorisation and every cut-off ``plan.keep_bins_for`` gives: the default
    factors keep the forward's columns; the kept columns are all N2, or a power of two >= 16
    below N2; and the skipped ones hold only bins ``keep .. n - keep``, which
    ``dk_from_spectrum`` zeroes: a filter-gradient spectrum zeroed in the skipped columns gives
    the same filter gradient, bit for bit."""
    from kernels.fftconv import triton_bwd, triton_fwd
    from kernels.fftconv.plan import FREQ_STEPS, keep_bins_for

    g = torch.Generator().manual_seed(8)
    spectrum = torch.randn(2, 2, n, generator=g)  # [H, 2, n]: any spectrum, natural order
    for steps in range(1, FREQ_STEPS + 1):
        keep = keep_bins_for(n, steps / FREQ_STEPS)
        assert triton_bwd.kept_columns(n, keep) == triton_fwd.kept_columns(n, keep)
        for N1 in _factors(n):
            N2 = n // N1
            low, high = triton_bwd.kept_columns(n, keep, N1=N1)
            K2 = low + high
            assert K2 == N2 and high == 0 or 16 <= K2 < N2 and K2 & (K2 - 1) == 0, (N1, K2)
            bins = torch.arange(n).reshape(N2, N1).T  # bin k1 + N1 k2 at [k1, k2]
            kept = torch.zeros(N2, dtype=torch.bool)
            kept[:low] = True
            kept[N2 - high :] = True
            skipped = bins[:, ~kept]
            assert ((skipped >= keep) & (skipped <= n - keep)).all(), (N1, keep)
            tile = spectrum.reshape(2, 2, N2, N1).transpose(2, 3)  # kernel order
            dense = triton_bwd.dk_from_spectrum(tile, n, keep)
            zeroed = triton_bwd.dk_from_spectrum(tile * kept, n, keep)
            assert torch.equal(dense, zeroed), (N1, keep)


def test_dot_flops_counts_the_kept_columns():
    """n = 2048 on 64 x 32, L = 1000: 32 rows; 1/4 of the bins kept is 16 of the 32 columns,
    so each transform's second stage halves (the column count of ``kept_columns``)."""
    from kernels.fftconv import triton_bwd
    from kernels.fftconv.plan import keep_bins_for

    B, H, L, n = 5, 3, 1000, 2048
    keep = keep_bins_for(n, 0.25)
    assert triton_bwd.kept_columns(n, keep, N1=64) == (12, 4)
    per_transform = 8 * n * (32 + 16)
    assert triton_bwd.dot_flops(B, H, L, n, keep_bins=keep) == H * 3 * 4 * per_transform
    assert triton_bwd.dot_flops(B, H, L, n, needs_z=False, keep_bins=keep) == (
        H * 3 * 3 * per_transform
    )
    assert triton_bwd.dot_flops(B, H, L, n, keep_bins=n // 2 + 1) == H * 3 * 4 * 8 * n * 64
    # n = 4096 on 128 x 32: 64 rows, 16 of 32 columns
    keep = keep_bins_for(4096, 1 / 16)
    assert triton_bwd.kept_columns(4096, keep, N1=128) == (15, 1)
    flops = triton_bwd.dot_flops(2, 1, 2000, 4096, n1=128, keep_bins=keep)
    assert flops == 4 * 8 * 4096 * (64 + 16)
    # the default there, 64 x 64 (square: the dense columns in bf16, 16 of 64 in fp32): 32 rows
    assert triton_bwd.config_for(4096).n1 == 64
    assert triton_bwd.dot_flops(2, 1, 2000, 4096, keep_bins=keep) == 4 * 8 * 4096 * (32 + 64)
    fp32 = triton_bwd.dot_flops(2, 1, 2000, 4096, n1=64, keep_bins=keep, dtype=torch.float32)
    assert fp32 == 4 * 8 * 4096 * (32 + 16)


# ---------------------------------------------------------------------------------------------
# GPU


def _full_filter_len(L, mode):
    return 2 * L - 1 if mode == "bidirectional" else L


def _fused_taken(monkeypatch):
    from kernels.fftconv import triton_bwd

    calls = []
    fused = triton_bwd.fftconv_bwd

    def counted(*args, **kwargs):
        calls.append(1)
        return fused(*args, **kwargs)

    monkeypatch.setattr(triton_bwd, "fftconv_bwd", counted)
    return calls


GPU_SHAPES = [  # (B, H, L); L = 1 and 97 (n < 256) go to the primitives
    pytest.param(2, 111, 1, id="B2-H111-L1"),
    pytest.param(3, 111, 97, id="B3-H111-L97"),
    pytest.param(3, 111, 256, id="B3-H111-L256"),
    pytest.param(1, 111, 256, id="B1-H111-L256"),
    pytest.param(2, 111, 1000, id="B2-H111-L1000"),
    pytest.param(3, 111, 1024, id="B3-H111-L1024"),
    pytest.param(5, 111, 4096, id="B5-H111-L4096"),
]


@pytest.mark.gpu
@pytest.mark.parametrize("gated", [False, True], ids=["plain", "gated"])
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("mode", ["causal", "bidirectional", "circular"])
@pytest.mark.parametrize(("B", "H", "L"), GPU_SHAPES)
def test_gpu_backward(B, H, L, mode, dtype, gated, monkeypatch):
    """Every plan gets right gradients; the fused kernel takes exactly the non-fold plans with
    256 <= n <= 8192 (folded circular plans go to triton_long, n < 256 to the primitives)."""
    from kernels.fftconv.plan import make_plan

    calls = _fused_taken(monkeypatch)
    Lk = _full_filter_len(L, mode)
    errs, ok = grads_vs_reference(B, H, L, Lk, mode, dtype, gated, device="cuda")
    assert ok
    plan = make_plan(mode, L, Lk)
    assert bool(calls) == (256 <= plan.fft_size <= 8192 and not plan.fold), "fused path choice"
    for name, err in errs.items():
        assert err < TOL[dtype], (name, err)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize(
    ("B", "H", "L", "Lk", "mode", "pair", "freq_keep"),
    [
        pytest.param(3, 111, 1000, 300, "causal", False, 1.0, id="B3-H111-L1000-K300-causal"),
        pytest.param(2, 7, 1000, 300, "bidirectional", True, 1.0, id="B2-H7-L1000-M300-pair"),
        pytest.param(3, 5, 4096, 100, "causal", False, 1.0, id="B3-H5-L4096-K100-causal"),
        pytest.param(4, 9, 2000, 2000, "causal", False, 0.25, id="B4-H9-L2000-sparse"),
    ],
)
def test_gpu_backward_partial(B, H, L, Lk, mode, pair, freq_keep, dtype, monkeypatch):
    calls = _fused_taken(monkeypatch)
    errs, ok = grads_vs_reference(
        B, H, L, Lk, mode, dtype, True, pair=pair, freq_keep=freq_keep, device="cuda"
    )
    assert ok and calls
    for name, err in errs.items():
        assert err < TOL[dtype], (name, err)


# (L, freq_keep): causal L = Lk, n = 2048, 4096, 8192 (the backward's 64 x 32, 64 x 64 and
# 128 x 64); 3/4 and 15/16 of the bins zero: 16 columns computed (on the square 64 x 64 tile
# in fp32 only: fp16/bf16 run its dense columns, skips_columns)
GPU_SPARSE = [
    pytest.param(L, keep, id=f"n{n}-L{L}-sparse{name}")
    for n, L in ((2048, 1000), (4096, 2000), (8192, 4000))
    for keep, name in ((0.25, "75"), (1 / 16, "94"))
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize(("L", "freq_keep"), GPU_SPARSE)
def test_gpu_backward_sparse_skips_columns(L, freq_keep, dtype, monkeypatch):
    """The public call with a frequency-sparse filter, gated: all five gradients against
    float64 autograd through torch.fft with the same cut-off, and the kernel ran on the kept
    frequency columns only (K2 < N2) where the tile skips them (``skips_columns``)."""
    from kernels.fftconv import triton_bwd
    from kernels.fftconv.plan import make_plan

    calls = _fused_taken(monkeypatch)
    launched = _record_columns(triton_bwd, monkeypatch.setattr)
    errs, ok = grads_vs_reference(
        3, 33, L, L, "causal", dtype, True, freq_keep=freq_keep, seed=9, device="cuda"
    )
    assert ok and calls and set(errs) == set(NAMES)
    for name, err in errs.items():
        assert err < TOL[dtype], (name, err)
    n = make_plan("causal", L, L, freq_keep).fft_size
    want = _expected_columns(n, freq_keep, {v: k for k, v in DTYPES.items()}[dtype])
    assert (want[2] < want[1]) == triton_bwd.skips_columns(want[0], want[1], dtype), want
    assert launched and all(tuple(x) == want for x in launched), launched


# (n, L, config): the defaults (n = 8192: the split with Q through memory) and the variants that
# hold other tiles: 64 x 64 at n = 4096, blocks of pairs pipelined, Q recomputed, 16 warps
GPU_SPARSE_LAUNCH = [
    pytest.param(2048, 1027, None, id="n2048-L1027"),
    pytest.param(2048, 1000, _cfg(64, 4, steps=8, stages=3, split="store_q"), id="n2048-split-q"),
    pytest.param(4096, 2051, None, id="n4096-L2051"),
    pytest.param(4096, 2048, _cfg(64, 4), id="n4096-64x64-w4"),
    pytest.param(4096, 2000, _cfg(128, 8), id="n4096-128x32-fused"),
    pytest.param(4096, 2000, _cfg(128, 8, steps=8, stages=2), id="n4096-pipe-s8p2"),
    pytest.param(8192, 5000, None, id="n8192-L5000"),
    pytest.param(8192, 4096, _cfg(128, 8, acc_in_memory=True, split="recompute"), id="n8192-rec"),
    pytest.param(8192, 4096, _cfg(256, 16, acc_in_memory=True), id="n8192-256x32-w16"),
]


@pytest.mark.gpu
@pytest.mark.parametrize("freq_keep", [0.25, 1 / 16], ids=["sparse75", "sparse94"])
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize(("n", "L", "config"), GPU_SPARSE_LAUNCH)
def test_gpu_launcher_sparse_poisoned(n, L, config, dtype, freq_keep):
    """The bare launch with ``keep_bins``: every output element written, the five gradients
    right, fewer matrix-product flops than dense. Pipelined fp32 at n >= 4096 needs more shared
    memory than an SM has (as dense), so fp32 takes the unpipelined ones only."""
    from kernels.fftconv import triton_bwd
    from kernels.fftconv.plan import keep_bins_for

    if dtype == torch.float32 and config and config.get("stages", 1) > 1 and n >= 4096:
        pytest.skip("pipelined fp32 at n >= 4096 does not fit in shared memory")
    name = {v: k for k, v in DTYPES.items()}[dtype]
    case = LaunchCase(5, 7, L, n, name, config, freq_keep=freq_keep)
    errs, ok = _run_launcher_case(case, device="cuda")
    assert ok
    assert errs.pop("unwritten") == 0
    for grad, err in errs.items():
        assert err < TOL[dtype], (grad, err)
    n1 = config["n1"] if config else triton_bwd.config_for(n, dtype).n1
    keep = keep_bins_for(n, freq_keep)
    sparse = triton_bwd.dot_flops(5, 7, L, n, n1=n1, keep_bins=keep, dtype=dtype)
    dense = triton_bwd.dot_flops(5, 7, L, n, n1=n1, dtype=dtype)
    # square tiles run dense columns in fp16/bf16 (skips_columns: a miscompile on sm_90)
    assert (sparse < dense) == triton_bwd.skips_columns(n1, n // n1, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize(
    "wants",
    [("u",), ("k",), ("pregate",), ("postgate", "bias"), ("u", "k"), ("k", "postgate")],
    ids=lambda w: "+".join(w),
)
def test_gpu_backward_needs(wants):
    errs, ok = grads_vs_reference(
        3, 111, 1000, 1000, "causal", torch.bfloat16, True, wants, device="cuda"
    )
    assert ok and set(errs) == set(wants)
    for name, err in errs.items():
        assert err < TOL[torch.bfloat16], (name, err)


@pytest.mark.gpu
@pytest.mark.parametrize("L", [256, 1000, 4096])
def test_gpu_fp32_within_twice_torch_error(L):
    """flash-attention's rule: at most 2x the torch.fft path's error in the same precision (a
    floor at a fifth of the tolerance: tf32x3 dots sit near 1e-6)."""
    from kernels import fftconv

    u, k, pre, post, bias = make_inputs(3, 16, L, L, torch.float32, True, device="cuda")
    dy = torch.randn(3, 16, L, generator=torch.Generator().manual_seed(1)).cuda()
    grads = {}
    for backend in ("triton", "torch"):
        leaves = [x.clone().requires_grad_() for x in (u, k, pre, post, bias)]
        fftconv(
            leaves[0], leaves[1], pregate=leaves[2], postgate=leaves[3], bias=leaves[4],
            backend=backend,
        ).backward(dy)  # fmt: skip
        grads[backend] = [x.grad for x in leaves]
    refs = [x.double().requires_grad_() for x in (u, k, pre, post, bias)]
    conv_torch64(*refs).backward(dy.double())
    for name, a, b, ref in zip(NAMES, grads["triton"], grads["torch"], refs, strict=True):
        err, err_torch = rel_err(a, ref.grad), rel_err(b, ref.grad)
        assert err <= max(2 * err_torch, TOL[torch.float32] / 5), (name, err, err_torch)


# (n, L, config) covering every tile-row count of the default tiles and the alternatives
GPU_LAUNCH = [
    pytest.param(512, 300, None, id="n512-L300"),
    pytest.param(1024, 200, None, id="n1024-L200-rows16"),
    pytest.param(2048, 1027, None, id="n2048-L1027-rows64"),
    pytest.param(2048, 1000, _cfg(64, 4, hoist=True), id="n2048-hoist"),
    pytest.param(2048, 1000, _cfg(64, 4, acc_in_memory=True), id="n2048-acc-in-memory"),
    pytest.param(4096, 300, None, id="n4096-L300"),
    pytest.param(4096, 2051, None, id="n4096-L2051"),
    pytest.param(4096, 2048, _cfg(64, 4), id="n4096-64x64-w4"),
    pytest.param(4096, 2000, _cfg(128, 8), id="n4096-128x32-fused"),
    pytest.param(4096, 2048, _cfg(128, 8), id="n4096-128x32-acc-in-registers"),
    pytest.param(8192, 1500, None, id="n8192-L1500"),
    pytest.param(8192, 5000, None, id="n8192-L5000"),
    pytest.param(8192, 4096, _cfg(256, 16, acc_in_memory=True), id="n8192-256x32-w16"),
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize(("n", "L", "config"), GPU_LAUNCH)
def test_gpu_launcher_poisoned(n, L, config, dtype):
    """Every output element written, every tile-row count and configuration right."""
    from kernels.fftconv import triton_bwd

    name = {v: k for k, v in DTYPES.items()}[dtype]
    errs, ok = _run_launcher_case(LaunchCase(5, 7, L, n, name, config), device="cuda")
    assert ok
    assert errs.pop("unwritten") == 0
    for name, err in errs.items():
        assert err < TOL[dtype], (name, err)
    assert triton_bwd.dot_flops(5, 7, L, n) > 0


def _benchmark_variants():
    """Every launch variant the backward benchmark times (benchmarks/fftconv_bwd.py), at B = 5
    (a half-empty pair), an odd L just under n/2 (every tile row), bf16 and fp16, and fp32 up to
    n = 2048 (pipelined fp32 at n >= 4096 needs more shared memory than an SM has)."""
    from benchmarks.fftconv_bwd import variants

    cases = []
    for n in (512, 1024, 2048, 4096, 8192):
        for name, options in variants(n).items():
            if "config" not in options:
                continue
            for dtype in ("bf16", "fp16", "fp32"):
                if dtype == "fp32" and n > 2048:
                    continue
                config = vars(options["config"])
                case = LaunchCase(5, 7, n // 2 - 5, n, dtype, config, pairs_per_program=2)
                cases.append(pytest.param(case, id=f"n{n}-{name}-{dtype}"))
    return cases


@pytest.mark.gpu
@pytest.mark.parametrize("case", _benchmark_variants())
def test_gpu_benchmark_variants_poisoned(case):
    """The pipelined, split and accumulator-in-memory variants at real sizes: every output
    element written, the five gradients right (2 pairs per program: a chunk of one block)."""
    errs, ok = _run_launcher_case(case, device="cuda")
    assert ok
    assert errs.pop("unwritten") == 0
    for name, err in errs.items():
        assert err < TOL[DTYPES[case.dtype]], (name, err)


@pytest.mark.gpu
@pytest.mark.parametrize(
    "config",
    [
        pytest.param(_cfg(128, 8, steps=8, stages=3, split="store_q"), id="store-q-pipelined"),
        pytest.param(_cfg(128, 8, acc_in_memory=True, split="store_q"), id="store-q-acc-memory"),
        pytest.param(_cfg(128, 8, steps=8, stages=2), id="fused-pipelined"),
    ],
)
def test_gpu_variants_deterministic_and_bounded(config):
    """A variant gives the same bits twice, with several chunks per channel and several pairs
    per block (B = 64, H = 256: 32 pairs per channel in 4 chunks of 8)."""
    from kernels.fftconv import triton_bwd

    B, H = 64, 256
    u, k, pre, post, bias = make_inputs(B, H, 2000, 2000, torch.bfloat16, True, device="cuda")
    dy = torch.randn_like(u)
    kf = torch.fft.rfft(k, n=4096)
    cfg = triton_bwd.Config(**config)
    steps, per_program = triton_bwd.block_steps(
        triton_bwd.pairs_per_program_for(B, H, u.device), cfg.steps
    )
    assert per_program % steps == 0 and B // 2 > per_program  # several chunks
    assert steps > 1 or cfg.steps == 1
    runs = [
        triton_bwd.launch(dy, u, kf, pre, post, bias, 4096, (True,) * 5, config=cfg)
        for _ in range(2)
    ]
    for name, a, b in zip(NAMES, *runs, strict=True):
        assert torch.equal(a, b), name


def _compiled_step(u, k, pre, post, bias, dy):
    from kernels import fftconv

    y = fftconv(u, k, pregate=pre, postgate=post, bias=bias, backend="triton")
    (y * dy).sum().backward()


@pytest.mark.gpu
def test_gpu_compile_fullgraph_and_autocast(monkeypatch):
    """torch.compile(fullgraph=True) and autocast run the fused backward and agree with eager."""
    from kernels import fftconv

    calls = _fused_taken(monkeypatch)
    u, k, pre, post, bias = make_inputs(3, 64, 1000, 1000, torch.float32, True, device="cuda")
    dy = torch.randn(3, 64, 1000, generator=torch.Generator().manual_seed(1)).cuda()

    def run(fn, autocast):
        leaves = [x.clone().requires_grad_() for x in (u, k, pre, post, bias)]
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            y = fn(*leaves)
        (y.float() * dy).sum().backward()
        return [x.grad for x in leaves]

    def conv(u, k, pre, post, bias):
        return fftconv(u, k, pregate=pre, postgate=post, bias=bias, backend="triton")

    compiled = torch.compile(conv, fullgraph=True)
    for autocast in (False, True):
        eager, graph = run(conv, autocast), run(compiled, autocast)
        # the reference sees u and the gates rounded as autocast rounds them
        low = (u, pre, post) if autocast else ()
        refs = [
            (x.to(torch.bfloat16) if any(x is y for y in low) else x).double().requires_grad_()
            for x in (u, k, pre, post, bias)
        ]
        conv_torch64(*refs).backward(dy.double())
        tol = TOL[torch.bfloat16 if autocast else torch.float32]
        for name, a, b, ref in zip(NAMES, eager, graph, refs, strict=True):
            assert a.dtype == torch.float32 and b.dtype == torch.float32, name
            assert rel_err(a, ref.grad) < tol, (name, autocast, rel_err(a, ref.grad))
            assert rel_err(b, ref.grad) < tol, (name, autocast, rel_err(b, ref.grad))
    assert calls


@pytest.mark.gpu
def test_gpu_deterministic():
    from kernels import fftconv

    u, k, pre, post, bias = make_inputs(64, 32, 2048, 2048, torch.bfloat16, True, device="cuda")
    dy = torch.randn_like(u)
    runs = []
    for _ in range(2):
        leaves = [x.clone().requires_grad_() for x in (u, k, pre, post, bias)]
        fftconv(
            leaves[0], leaves[1], pregate=leaves[2], postgate=leaves[3], bias=leaves[4],
            backend="triton",
        ).backward(dy)  # fmt: skip
        runs.append([x.grad for x in leaves])
    for name, a, b in zip(NAMES, *runs, strict=True):
        assert torch.equal(a, b), name


@pytest.mark.gpu
def test_gpu_offsets_past_2_31():
    """B*H*L > 2^31: the last sequences' gradients land where 32-bit offsets would wrap."""
    from kernels.fftconv import triton_bwd

    B, H, L, n = 64, 131073, 256, 512
    assert B * H * L > 2**31
    g = torch.Generator(device="cuda").manual_seed(0)
    u = torch.randn(B, H, L, device="cuda", dtype=torch.bfloat16, generator=g)
    dy = torch.randn(B, H, L, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(H, L, device="cuda", generator=g) / 16
    kf = torch.fft.rfft(k, n=n)
    d_u, *_ = triton_bwd.launch(dy, u, kf, None, None, None, n, (True, False, False, False, False))
    tail = (slice(-1, None), slice(-4, None))
    ref = _launcher_reference(dy[tail], u[tail], kf[-4:], None, None, None, n)[0]
    assert rel_err(d_u[tail], ref) < TOL[torch.bfloat16]


def test_sparse_plans_at_n8192_keep_the_filter_gradient_in_memory():
    """At n = 8192 (fp16/bf16) kernel (b) accumulates the filter gradient in registers for a
    dense spectrum, in memory where the sparse columns are skipped (in registers there it came
    out wrong on an H100: ``config_for``); fp32 and other sizes are unchanged by keep_bins."""
    from kernels.fftconv import triton_bwd
    from kernels.fftconv.plan import keep_bins_for

    n = 8192
    for dtype in (torch.float16, torch.bfloat16):
        dense = triton_bwd.config_for(n, dtype)
        assert dense.b is not None and not dense.b.acc_in_memory
        assert triton_bwd.config_for(n, dtype, keep_bins=n // 2 + 1) == dense
        for freq_keep in (0.25, 1 / 16):
            sparse = triton_bwd.config_for(n, dtype, keep_bins=keep_bins_for(n, freq_keep))
            assert sparse.b.acc_in_memory
            assert sparse.n1 == dense.n1 and sparse.split == dense.split
    for n, dtype in ((4096, torch.bfloat16), (8192, torch.float32), (2048, torch.float16)):
        assert triton_bwd.config_for(n, dtype, keep_bins=n // 16) == triton_bwd.config_for(n, dtype)


if __name__ == "__main__":
    _interpreter_main()
