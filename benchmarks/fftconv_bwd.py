"""Times the fused backward of ``fftconv`` on a GPU: causal, bf16, B*H*L = 2^27, plain and gated.

    python -m benchmarks.fftconv_bwd --out benchmarks/results/<gpu>-<date>-bwd.json
        [--lengths 256 512 1024 2048 4096] [--no-variants | --variants NAME ...] [--parts]
    python -m benchmarks.fftconv_bwd --static --out <file>.json    (no GPU needed)

For each length: correctness first (the triton backend's five gradients, and the bare kernel's
in every launch variant, against the same gradients computed by torch.fft in fp32 on the same
bf16 inputs; anything over the bf16 tolerance gets no time), then ``triton.testing.do_bench``
medians (inputs built outside the timed region) of

- the public call per backend: forward alone, and forward + backward (``.backward(dy)``);
- the fused backward alone (``triton_bwd.fftconv_bwd``: spectrum layout, kernel, filter
  gradient's inverse FFT) and the bare kernel (``triton_bwd.launch``) per launch variant
  (``variants``: the default and the ``triton_bwd.Config`` alternatives per FFT size:
  pipelined blocks of pairs, the split into two kernels configured together or apart, the
  accumulator in memory; ``--variants`` picks some). The variants of a row are compiled
  first, in parallel threads;
- the same filter made frequency-sparse (``freq_keep=SPARSE_KEEP``, 75% of the bins zero;
  ``--no-sparse`` leaves it out), checked against torch.fft with the same cut-off: the public
  call (forward, forward + backward), the fused backward alone and the bare kernel in its
  default configuration, which then computes only the kept frequency columns
  (``triton_bwd.kept_columns``): the ``sparse_*`` keys, next to the dense ones;
- with ``--parts``, the bare kernel's default launch asked for all gradients but the filter's
  and for the filter's alone (``part_ms_*``: where a split's time goes).

Reports ms, the ratio forward+backward / forward of the triton backend (the target is at most
2.5), the speedup over torch, the multiple of the HBM floor (bytes that must move at 2 bytes per
element over the copy bandwidth measured in the run) and the kernel's matrix-product TFLOP/s.
Writes JSON after every row (each variant's configuration, errors, ms and TFLOP/s).

``--static`` instead compiles every launch variant for sm_90 (bf16 and fp32, gated, all five
gradients, causal L = n/2; the default also with the sparse filter's column count) and
reports, per kernel, the registers and spill bytes ``ptxas -v``
gives, the shared memory and the loads the software pipeliner made asynchronous: the numbers
the variants were chosen by, available on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path

import torch
import triton

from benchmarks.common import compile_sm90 as common_compile_sm90
from benchmarks.common import (
    copy_bandwidth,
    fmt,
    gpu_run_meta,
    graph_forward_backward_ms,
    matmul_rate,
    median_ms,
    rel_err,
)
from kernels import fftconv
from kernels.fftconv import core, interface, reference, triton_bwd, triton_fwd
from kernels.fftconv.plan import keep_bins_for, make_plan

TOTAL = 2**27  # B * H * L
H = 1024
LENGTHS = (256, 512, 1024, 2048, 4096)
TOL_BF16 = 1e-2
TARGET_RATIO = 2.5  # forward+backward at most 2.5x the forward
SPARSE_KEEP = 0.25  # the frequency-sparse filter's kept fraction of the spectrum
NAMES = ("u", "k", "pregate", "postgate", "bias")


def variants(n: int) -> dict[str, dict]:
    """Launch options worth timing at FFT size n: the default first, then the alternatives,
    picked by the spills of the sm_90 compile (``--static``; benchmarks/NOTES.md, backward v2,
    v4, v5): the pair loop in blocks of 8 pairs, software-pipelined 2 or 3 stages deep
    (``pipe-s8p3``), and the split into two kernels with Q handed over through memory
    (``split-q``), with the filter-gradient accumulator of kernel (b) in memory (``accmem``);
    from backward v5 the split's kernels configured apart (``Config.b``: ``a-hold-s8p2`` is
    kernel (a) with its tables held and 8 pairs pipelined 2 deep, ``b-regs`` kernel (b) with
    its accumulator in registers) and the bias gradient moved to (b) (``dbias-b``). Every
    variant compiles gated in fp16/bf16 on sm_90 (``test_gpu_benchmark_variants_poisoned``
    runs them all)."""
    C = triton_bwd.Config
    out = {"default": {}}
    if n <= 512:
        N1 = triton_bwd.config_for(n).n1
        out["pipe-s8p2"] = C(N1, 2, hoist=True, steps=8, stages=2)
        out["pipe-s8p3"] = C(N1, 2, hoist=True, steps=8, stages=3)
        out["split-q-pipe-s8p3"] = C(N1, 2, hoist=True, steps=8, stages=3, split="store_q")
    elif n == 1024:
        out["pipe-s8p2"] = C(32, 2, hoist=True, steps=8, stages=2)
        out["w4-pipe-s8p3"] = C(32, 4, hoist=True, steps=8, stages=3)
        out["split-q-w4-pipe-s8p3"] = C(32, 4, hoist=True, steps=8, stages=3, split="store_q")
        # 4 warps, 2 stages: no spills in the sm_90 compile (bf16 gated, z from the forward)
        out["w4-pipe-s8p2"] = C(32, 4, hoist=True, steps=8, stages=2)
    elif n == 2048:
        out["hoist-pipe-s8p3"] = C(64, 4, hoist=True, steps=8, stages=3)
        out["hoist-pipe-s16p3"] = C(64, 4, hoist=True, steps=16, stages=3)
        # kernel (a) as the forward runs (tables held, pipelined), (b) with its accumulator in
        # memory (backward v5)
        out["split-q-a-hold-s16p3"] = C(
            64, 4, hoist=True, steps=16, stages=3, split="store_q",
            b=C(64, 4, acc_in_memory=True),
        )  # fmt: skip
        out["split-q-accmem"] = C(64, 4, acc_in_memory=True, split="store_q")
        out["split-q-pipe-s8p3"] = C(64, 4, steps=8, stages=3, split="store_q")
        out["split-q-accmem-pipe-s8p3"] = C(
            64, 4, acc_in_memory=True, steps=8, stages=3, split="store_q"
        )
    elif n == 4096:
        out["n128-fused"] = C(128, 8)  # the default before backward v4
        out["pipe-s8p2"] = C(128, 8, steps=8, stages=2)
        out["split-q"] = C(128, 8, split="store_q")
        out["split-q-pipe-s8p3"] = C(128, 8, steps=8, stages=3, split="store_q")
        out["split-q-accmem-pipe-s8p3"] = C(
            128, 8, acc_in_memory=True, steps=8, stages=3, split="store_q"
        )
        # 64 x 64 tiles, split, the accumulator in memory: no spills in the sm_90 compile
        out["n64-split-q-accmem-w8-pipe-s8p2"] = C(
            64, 8, acc_in_memory=True, steps=8, stages=2, split="store_q"
        )
        out["n64-split-q-accmem-pipe-s8p3"] = C(
            64, 4, acc_in_memory=True, steps=8, stages=3, split="store_q"
        )
        # backward v5: the split's two kernels configured apart (``Config.b``): (a) pipelined
        # (its tables reloaded, or held), (b) as the default, or with its accumulator in
        # registers, or on 8 warps
        b_default = C(64, 4, acc_in_memory=True)
        out["n64-split-q-accmem"] = C(64, 4, acc_in_memory=True, split="store_q")  # v4's default
        for name, a in (
            ("a-s8p2", C(64, 4, steps=8, stages=2)),
            ("a-s8p3", C(64, 4, steps=8, stages=3)),
            ("a-s16p2", C(64, 4, steps=16, stages=2)),
            ("a-hold-s8p2", C(64, 4, hoist=True, steps=8, stages=2)),
        ):
            out[f"n64-split-q-{name}"] = replace(a, split="store_q", b=b_default)
        out["n64-split-q-b-w8"] = C(64, 4, split="store_q", b=C(64, 8, acc_in_memory=True))
        out["n64-split-q-b-regs"] = C(64, 4, split="store_q", b=C(64, 4))
        out["n64-split-q-a-s8p2-b-regs"] = C(64, 4, steps=8, stages=2, split="store_q", b=C(64, 4))
        held = C(64, 4, hoist=True, steps=8, stages=2, split="store_q", b=b_default)
        out["n64-split-q-a-hold-s8p2-b-regs"] = replace(held, b=C(64, 4))
        out["n64-split-q-a-hold-s16p2"] = replace(held, steps=16)
        out["n64-split-q-a-hold-s8p3"] = replace(held, stages=3)
        # the bias gradient in kernel (b): two fewer input tiles in (a)'s pipeline
        out["n64-split-q-a-hold-s8p2-b-regs-dbias-b"] = replace(held, b=C(64, 4), dbias_in_b=True)
    else:
        out["split-q-accmem"] = C(128, 8, acc_in_memory=True, split="store_q")
        out["split-q-pipe-s8p2"] = C(128, 8, steps=8, stages=2, split="store_q")
        out["split-q-accmem-pipe-s8p2"] = C(
            128, 8, acc_in_memory=True, steps=8, stages=2, split="store_q"
        )
        out["split-recompute-accmem"] = C(128, 8, acc_in_memory=True, split="recompute")
        # backward v5: kernel (a) pipelined (tables reloaded) or with its tables held
        b_default = C(128, 8, acc_in_memory=True)
        for name, a in (
            ("a-s8p2", C(128, 8, steps=8, stages=2)),
            ("a-s4p2", C(128, 8, steps=4, stages=2)),
            ("a-hold-s8", C(128, 8, hoist=True, steps=8)),
        ):
            out[f"split-q-{name}"] = replace(a, split="store_q", b=b_default)
        # the held pipeline fits the shared memory once the bias gradient moves to kernel (b)
        # (196 KB against 228, bf16 gated, sm_90 compile)
        out["split-q-a-hold-s8p2-dbias-b"] = C(
            128, 8, hoist=True, steps=8, stages=2, split="store_q", b=b_default, dbias_in_b=True
        )
        # kernel (b) with its accumulator in memory: the default of backward v6, before z came
        # from the forward (the default since v7 holds it in registers)
        out["split-q-a-hold-s8p2-b-accmem"] = C(
            128, 8, hoist=True, steps=8, stages=2, split="store_q",
            b=C(128, 8, acc_in_memory=True), dbias_in_b=True,
        )  # fmt: skip
        # kernel (b) pipelined, its accumulator in registers: Q's and v's loads made
        # asynchronous (20 copies), 232-244 B of spills against the default's 192, 144 KB of
        # shared memory (sm_90 compile, bf16 gated, z from the forward); or its tables held
        default = triton_bwd.config_for(n)
        for name, b in (
            ("b-s2p2", C(128, 8, steps=2, stages=2)),
            ("b-s4p2", C(128, 8, steps=4, stages=2)),
            ("b-hold", C(128, 8, hoist=True)),
        ):
            out[f"split-q-a-hold-s8p2-{name}"] = replace(default, b=b)
    return {name: opt if isinstance(opt, dict) else {"config": opt} for name, opt in out.items()}


def floor_ms(gated: bool, backward: bool) -> float:
    """Bytes that must move at 2 bytes per element: forward u, y (+ pregate, postgate);
    backward dy, u, du (+ pregate, postgate, dpregate, dpostgate)."""
    tensors = (7 if gated else 3) if backward else (4 if gated else 2)
    return tensors * 2 * TOTAL / copy_bandwidth() * 1e3


def make_case(L: int, gated: bool, device: str = "cuda", dtype=torch.bfloat16):
    B = TOTAL // (H * L)
    gen = torch.Generator(device=device).manual_seed(L)

    def randn(*shape, dtype=dtype):
        return torch.randn(*shape, device=device, dtype=dtype, generator=gen)

    u = randn(B, H, L)
    k = randn(H, L, dtype=torch.float32) / (1 + torch.arange(L, device=device)) ** 0.5
    pre = post = bias = None
    if gated:
        pre, post, bias = randn(B, H, L), randn(B, H, L), randn(H, dtype=torch.float32)
    return (u, k, pre, post, bias), randn(B, H, L)


def reference_grads(inputs, dy, plan, needs) -> list:
    """The five gradients by torch.fft in fp32 on the same (bf16) inputs."""
    u, k, pre, post, bias = (x.float() if x is not None else None for x in inputs)
    return list(core.backward(dy.float(), u, k, None, pre, post, bias, plan, reference, needs))


def bench_length(
    L: int,
    gated: bool,
    with_variants: bool,
    only: tuple[str, ...] = (),
    sparse: bool = True,
    z_twins: bool = False,
    parts: bool = False,
    **case_options,
) -> dict:
    inputs, dy = make_case(L, gated, **case_options)
    u, k, pre, post, bias = inputs
    B = u.shape[0]
    plan = make_plan("causal", L, L)
    n = plan.fft_size
    needs = (True, True, gated, gated, gated)
    row = {"B": B, "H": H, "L": L, "n": n, "gated": gated}
    row["fused"] = triton_bwd.supports(n, plan.fold, u.dtype)
    row["floor_fwd_ms"] = floor_ms(gated, False)
    row["floor_bwd_ms"] = floor_ms(gated, True)
    row["floor_fwdbwd_ms"] = row["floor_fwd_ms"] + row["floor_bwd_ms"]

    ref = reference_grads(inputs, dy, plan, needs)
    row.update(time_public(inputs, dy, ref, needs))
    if row["fused"]:
        kf = torch.fft.rfft(k, n=n)
        row.update(time_fused(inputs, dy, kf, ref, n, needs, with_variants, only, z_twins, parts))
    del ref
    if sparse:
        row.update(time_sparse(inputs, dy, needs))
    return row


@contextlib.contextmanager
def keeping_no_z():
    """The public call as it was before the forward kept z for the postgate's gradient: every
    plan's forward keeps none (``interface._keeps_z`` answers False)."""
    saved = interface._keeps_z
    interface._keeps_z = lambda *args: False
    try:
        yield
    finally:
        interface._keeps_z = saved


def time_public(inputs, dy, ref, needs) -> dict:
    """The public call per backend: the gradients' errors, then forward and forward+backward."""
    leaves = [x.clone().requires_grad_() if x is not None else None for x in inputs]
    grads = [x for x in leaves if x is not None]
    row = {}
    # gated: the triton backend also without the kept z (the postgate's gradient from a
    # transform of v in the backward, the route before the forward kept z): "triton_recompute"
    names = ("torch", "triton") + (("triton_recompute",) if inputs[3] is not None else ())
    for name in names:
        backend = name.removesuffix("_recompute")
        keeping = contextlib.nullcontext if name == backend else keeping_no_z

        def forward(backend=backend, keeping=keeping):
            u, k, pre, post, bias = leaves
            with keeping():
                return fftconv(u, k, pregate=pre, postgate=post, bias=bias, backend=backend)

        def step(forward=forward):
            forward().backward(dy)

        for x in grads:
            x.grad = None
        step()
        errs = {
            nm: rel_err(x.grad, r)
            for nm, x, r, need in zip(NAMES, leaves, ref, needs, strict=True)
            if need
        }
        row[f"grad_err_{name}"] = errs
        ok = all(e < TOL_BF16 for e in errs.values())  # NaN fails too
        row[f"ok_{name}"] = ok
        with torch.no_grad():
            row[f"fwd_ms_{name}"] = median_ms(forward) if ok else None
        row[f"fwdbwd_ms_{name}"] = median_ms(step, grad_to_none=grads) if ok else None
        if ok:
            row.update(graph_forward_backward_ms(name, forward, grads, dy))
    fwd, fb = row["fwd_ms_triton"], row["fwdbwd_ms_triton"]
    row["ratio_fwdbwd_over_fwd_triton"] = fb / fwd if fwd and fb else None
    row["meets_target"] = bool(fwd and fb and fb / fwd <= TARGET_RATIO)
    fwd, fb = row.get("fwd_graph_ms_triton"), row.get("fwdbwd_graph_ms_triton")
    row["ratio_graph_fwdbwd_over_fwd_triton"] = fb / fwd if fwd and fb else None
    return row


def sparse_variants(n: int) -> dict[str, triton_bwd.Config]:
    """Launch configurations worth timing for a frequency-sparse filter besides the default:
    at n = 4096 the forward's 64 x 64 split, where the column skip removes 3/4 of the second
    stages (16 of 64 columns) instead of half (16 of 32 on the default 128 x 32), and which
    spills less than the default there with the skip (sm_90 compile, bf16: 256 bytes against
    384)."""
    return {"64x64-w4": triton_bwd.Config(64, 4)} if n == 4096 else {}


def time_sparse(inputs, dy, needs) -> dict:
    """The filter cut to ``SPARSE_KEEP`` of its spectrum: the triton backend's public call
    (forward, forward + backward), the fused backward alone and the bare kernel (default
    configuration and ``sparse_variants``, NaN-poisoned outputs), each checked against
    torch.fft in fp32 with the same cut-off first; ``sparse_*`` keys."""
    u, k, pre, post, bias = inputs
    B, H_, L = u.shape
    plan = make_plan("causal", L, L, SPARSE_KEEP)
    n, keep = plan.fft_size, plan.keep_bins
    ref = reference_grads(inputs, dy, plan, needs)
    row = {"sparse_freq_keep": SPARSE_KEEP, "sparse_keep_bins": keep}
    row.update(_time_sparse_public(inputs, dy, ref, needs))
    if not triton_bwd.supports(n, plan.fold, u.dtype):
        return row
    kf = torch.fft.rfft(k, n=n)
    kf[:, keep:] = 0

    def whole():
        return triton_bwd.fftconv_bwd(dy, u, k, kf, pre, post, bias, n, keep, needs)

    row["sparse_fused_bwd_err"] = errs = _errors(whole(), ref)
    ok = all(e < TOL_BF16 for e in errs.values())
    row["sparse_fused_bwd_ms"] = median_ms(whole) if ok else None

    out = tuple(torch.empty_like(u) if x is not None else None for x in (u, pre, post))
    configs = {"default": triton_bwd.config_for(n, u.dtype), **sparse_variants(n)}
    for name, config in configs.items():

        def kernel(config=config):
            return triton_bwd.launch(
                dy, u, kf, pre, post, bias, n, needs, config=config, out=out, keep_bins=keep
            )

        row[f"sparse_config_{name}"] = vars(config)
        row[f"sparse_columns_{name}"] = sum(triton_bwd.kept_columns(n, keep, N1=config.n1))
        ms = _check_and_time(row, "sparse_", name, kernel, out, ref, L, keep)
        if "sparse_kernel_error_" + name in row:
            continue
        flops = triton_bwd.dot_flops(B, H_, L, n, post is not None, n1=config.n1, keep_bins=keep)
        row[f"sparse_dot_flops_{name}"] = flops
        row[f"sparse_kernel_tflops_{name}"] = flops / (ms * 1e-3) / 1e12 if ms else None
    return row


def _check_and_time(row: dict, prefix: str, name: str, run, out, ref, L: int, keep: int):
    """One launch variant ``run`` of the bare backward: its outputs ``out`` NaN-poisoned, run
    once, its gradients' errors against ``ref`` (an unwritten element fails too) or its
    failure recorded (a variant that does not compile, e.g. for shared memory, is data too),
    then timed if right. Keys ``<prefix>kernel_{err,error,ms}_<name>``; returns the ms or
    None."""
    for x in out:
        if x is not None:
            x.fill_(float("nan"))
    try:
        d_u, dk_spec, d_pre, d_post, d_bias = run()
    except Exception as err:
        row[f"{prefix}kernel_error_{name}"] = repr(err)[:300]
        row[f"{prefix}kernel_ms_{name}"] = None
        return None
    d_k = triton_bwd.dk_from_spectrum(dk_spec, L, keep) if dk_spec is not None else None
    errs = row[f"{prefix}kernel_err_{name}"] = _errors((d_u, d_k, d_pre, d_post, d_bias), ref)
    ms = median_ms(run) if all(e < TOL_BF16 for e in errs.values()) else None
    row[f"{prefix}kernel_ms_{name}"] = ms
    return ms


def _errors(got, ref) -> dict:
    return {nm: rel_err(g, r) for nm, g, r in zip(NAMES, got, ref, strict=True) if g is not None}


def _time_sparse_public(inputs, dy, ref, needs) -> dict:
    """``time_sparse``'s public call: the gradients' errors, then forward and forward+backward."""
    leaves = [x.clone().requires_grad_() if x is not None else None for x in inputs]
    grads = [x for x in leaves if x is not None]

    def forward():
        u, k, pre, post, bias = leaves
        return fftconv(
            u, k, pregate=pre, postgate=post, bias=bias, freq_keep=SPARSE_KEEP, backend="triton"
        )

    def step():
        forward().backward(dy)

    step()
    errs = _errors([x.grad if x is not None else None for x in leaves], ref)
    row = {"sparse_grad_err_triton": errs}
    ok = set(errs) == {nm for nm, need in zip(NAMES, needs, strict=True) if need}
    ok &= all(e < TOL_BF16 for e in errs.values())
    with torch.no_grad():
        row["sparse_fwd_ms_triton"] = median_ms(forward) if ok else None
    row["sparse_fwdbwd_ms_triton"] = median_ms(step, grad_to_none=grads) if ok else None
    return row


def _attempt(run) -> None:
    try:
        run()
    except Exception:  # reported by the checked run that follows
        pass


def time_fused(
    inputs, dy, kf, ref, n, needs, with_variants, only=(), z_twins=False, parts=False
) -> dict:
    """``fftconv_bwd`` (the hook's whole work) and the bare kernel per launch variant (those
    named in ``only``, or all), each checked on NaN-poisoned outputs first. Gated, also with
    the forward's z handed over (the public call's route when the postgate wants a gradient:
    dpostgate = dy * z, no transform of v for it): ``fused_bwd_ms_z`` and the bare kernel's
    ``default+z`` (every variant's ``<name>+z`` with ``z_twins``)."""
    u, k, pre, post, bias = inputs
    B, H_, L = u.shape
    row = {}

    def whole(z=None):
        return triton_bwd.fftconv_bwd(dy, u, k, kf, pre, post, bias, n, n // 2 + 1, needs, z=z)

    z = None
    routes = [("", None)]
    if post is not None:  # z as the forward kernel keeps it (no postgate, no skip term)
        z = triton_fwd.fftconv_fwd(u, kf, pre, None, None, n)
        routes.append(("_z", z))
    for suffix, given in routes:
        got = whole(given)
        errs = {
            nm: rel_err(g, r) for nm, g, r in zip(NAMES, got, ref, strict=True) if g is not None
        }
        row[f"fused_bwd_err{suffix}"] = errs
        ok = all(e < TOL_BF16 for e in errs.values())
        row[f"fused_bwd_ms{suffix}"] = median_ms(lambda given=given: whole(given)) if ok else None
        del got

    outs = tuple(torch.empty_like(u) for _ in range(3))
    out = (outs[0], outs[1] if pre is not None else None, outs[2] if post is not None else None)
    needs_z = post is not None
    chosen = {
        name: options
        for name, options in variants(n).items()
        if name == "default" or (with_variants and (not only or name in only))
    }
    if z is not None:
        twins = chosen if z_twins else {"default": chosen["default"]}
        chosen |= {f"{name}+z": {**options, "z": z} for name, options in twins.items()}

    def launcher(options):
        def run():
            return triton_bwd.launch(dy, u, kf, pre, post, bias, n, needs, out=out, **options)

        return run

    # compile every variant first, in parallel threads (Triton releases the GIL while it
    # compiles; the launches themselves queue on the one stream); errors surface below
    with ThreadPoolExecutor(max_workers=min(len(chosen), os.cpu_count() or 1)) as pool:
        list(pool.map(_attempt, [launcher(o) for o in chosen.values()]))
    torch.cuda.synchronize()

    for name, options in chosen.items():
        run = launcher(options)
        config = options.get("config") or triton_bwd.config_for(n)
        row[f"config_{name}"] = vars(config)
        ms = _check_and_time(row, "", name, run, out, ref, L, n // 2 + 1)
        if ms is None:
            continue
        recompute = config.split == "recompute"
        transforms_z = needs_z and "z" not in options
        flops = triton_bwd.dot_flops(B, H_, L, n, transforms_z, n1=config.n1, recompute_q=recompute)
        row[f"kernel_tflops_{name}"] = flops / (ms * 1e-3) / 1e12
    times = {
        name.removeprefix("kernel_ms_"): ms
        for name, ms in row.items()
        if name.startswith("kernel_ms_") and ms is not None
    }
    if times:
        best = min(times, key=times.get)
        row["kernel_best"], row["kernel_ms_best"] = best, times[best]
    row["dot_flops"] = triton_bwd.dot_flops(B, H_, L, n, needs_z)
    row["flop_floor_ms"] = row["dot_flops"] / matmul_rate() * 1e3
    if parts:
        row |= time_parts(inputs, dy, kf, ref, n, needs, z, out)
    return row


def time_parts(inputs, dy, kf, ref, n, needs, z, out) -> dict:
    """Where the default launch's time goes (the whole: ``kernel_ms_default``, ``+z`` gated):
    the bare kernel (with the forward's z where gated, as the public call runs it) asked for
    every gradient but the filter's (``no-k``: a split's kernel (a) alone, with no Q to store)
    and for the filter's alone (``k-only``: a split's (a) transforming dz and storing Q, then
    (b)), each timed (``part_ms_<name>``) after the gradients it returns are checked against
    ``ref`` like the variants'."""
    u, _, pre, post, bias = inputs
    row = {}
    for name, want in (("no-k", (*needs[:1], False, *needs[2:])),
                       ("k-only", (False, True, False, False, False))):  # fmt: skip

        def run(want=want):
            return triton_bwd.launch(dy, u, kf, pre, post, bias, n, want, out=out, z=z)

        row[f"part_ms_{name}"] = _check_and_time(
            row, "part_", name, run, out, ref, u.shape[-1], n // 2 + 1
        )
    return row


def kernel_flags(config) -> dict[str, tuple[bool, ...]]:
    """The kernels a configuration launches (gated, every gradient wanted), as
    ``triton_bwd.launch`` assigns the gradients (``split_needs``): part ("" fused, "a", "b")
    -> (NEED_DU, NEED_DK, NEED_DPREGATE, NEED_DPOSTGATE, NEED_DBIAS, STORE_Q, LOAD_Q)."""
    every = (True,) * 5
    if config.split == "fused":
        return {"": (*every, False, False)}
    needs_a, needs_b = triton_bwd.split_needs(config, every)
    store_q = config.split == "store_q"
    return {"a": (*needs_a, store_q, False), "b": (*needs_b, False, store_q)}


def compile_sm90(
    n: int,
    config,
    dtype: torch.dtype,
    flags: tuple[bool, ...],
    num_warps: int,
    keep_bins: int | None = None,
    z_in: bool = True,
):
    """The kernel compiled for sm_90 (gated, causal L = n/2, 16-byte-aligned pointers and L as
    the runtime specialises them, ``config.steps`` pairs per block; ``keep_bins``: a
    frequency-sparse filter's kept columns only; ``z_in``: a kernel that computes dpostgate
    takes z from the forward, as in the public call, else transforms v for it): the compiled
    kernel and ``ptxas -v``'s registers and spills (``benchmarks.common.compile_sm90``)."""
    kernel = triton_bwd._fftconv_bwd_kernel
    N1, N2 = config.n1, n // config.n1
    rows = min(N1, max(16, triton.next_power_of_2(triton.cdiv(n // 2, N2))))
    need_u, need_k, need_pre, need_post, need_bias, store_q, load_q = flags
    constexprs = dict(
        N1=N1,
        N2=N2,
        K2=sum(triton_bwd.kept_columns(n, keep_bins, N1=N1)),
        ROWS=rows,
        BLOCKED=False,
        HAS_PREGATE=True,
        HAS_POSTGATE=True,
        HAS_BIAS=True,
        NEED_DU=need_u,
        NEED_DK=need_k,
        NEED_DPREGATE=need_pre,
        NEED_DPOSTGATE=need_post,
        NEED_DBIAS=need_bias,
        HOIST=config.hoist,
        ACC_IN_MEMORY=config.acc_in_memory,
        STEPS=config.steps,
        STAGES=config.stages,
        STORE_Q=store_q,
        LOAD_Q=load_q,
        Z_IN=z_in and need_post,
        PRECISION="tf32x3" if dtype == torch.float32 else "tf32",
        TWIST=False,
    )
    operand = {torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.float32: "*fp32"}[dtype]
    fp32_ptrs = ("bias_ptr", "kf_ptr", "twiddle_ptr", "dk_ptr", "dbias_ptr")
    pointer_types = {
        name: "*fp32" if name in fp32_ptrs else operand
        for name in kernel.arg_names
        if name.endswith("_ptr")
    }
    return common_compile_sm90(kernel, constexprs, pointer_types, num_warps)


def static_stats(
    n: int,
    config,
    dtype: torch.dtype = torch.bfloat16,
    keep_bins: int | None = None,
    z_in: bool = True,
) -> dict:
    """Registers, spills and shared memory of the kernel(s) of ``config`` compiled for sm_90
    (gated, every gradient, causal L = n/2, ``keep_bins``: a frequency-sparse filter, ``z_in``:
    z from the forward, as ``compile_sm90``); a split
    reports its kernels (a) and (b) with the suffixes ``_a``/``_b``, and
    ``async_copies``/``_a``/``_b`` counts the loads the software pipeliner turned into
    asynchronous copies."""
    row = {"n": n, "dtype": str(dtype).removeprefix("torch."), **asdict(config)}
    row["columns"] = sum(triton_bwd.kept_columns(n, keep_bins, N1=config.n1))
    for part, flags in kernel_flags(config).items():
        part_config = config.kernel_b() if part == "b" else config
        compiled, stats = compile_sm90(
            n, part_config, dtype, flags, part_config.num_warps, keep_bins, z_in
        )
        suffix = f"_{part}" if part else ""
        row |= {key + suffix: value for key, value in stats.items()}
        row["async_copies" + suffix] = compiled.asm["ttgir"].count("async_copy_global_to_local")
    return row


def run_static(lengths: list[int], out: Path) -> None:
    rows = []
    for L in lengths:
        n = make_plan("causal", L, L).fft_size
        if not triton_bwd.supports(n, False, torch.bfloat16):
            continue
        keep = keep_bins_for(n, SPARSE_KEEP)
        for dtype in (torch.bfloat16, torch.float32):
            default = triton_bwd.config_for(n, dtype)
            # z from the forward (the public call's route), and the default transforming v
            # for z (a forward that kept none)
            configs = {"default": (default, None, True), "default-no-z": (default, None, False)}
            if sum(triton_bwd.kept_columns(n, keep, N1=default.n1)) < n // default.n1:
                configs["default-sparse"] = (default, keep, True)
            for name, options in variants(n).items():
                if "config" in options:
                    configs[name] = (options["config"], None, True)
            for name, (config, keep_bins, z_in) in configs.items():
                try:
                    row = {"variant": name, **static_stats(n, config, dtype, keep_bins, z_in)}
                except Exception as err:  # out of shared memory, say: data too
                    row = {"variant": name, "n": n, "dtype": str(dtype), "error": repr(err)[:300]}
                rows.append(row)
                print(json.dumps(row), flush=True)
                out.write_text(json.dumps({"rows": rows}, indent=1))
    print_static_table(rows)


def print_static_table(rows: list[dict]) -> None:
    """One line per (n, dtype, variant): registers / spill-store bytes, shared memory (KB) and
    asynchronous copies of each kernel (a split: kernel (a), then (b))."""
    print(f"{'n':>5} {'dtype':<9} {'variant':<26} regs/spill  smem KB  async   (split: a | b)")
    for r in rows:
        if "error" in r:
            print(f"{r['n']:>5} {r['dtype']:<9} {r['variant']:<26} {r['error'][:60]}")
            continue
        cells = []
        for suffix in ("", "_a", "_b"):
            if f"registers{suffix}" in r:
                cells.append(
                    f"{r['registers' + suffix]:>3}/{r['spill_store_bytes' + suffix]:<5} "
                    f"{r['shared_bytes' + suffix] / 1024:>6.0f} {r['async_copies' + suffix]:>5}"
                )
        print(f"{r['n']:>5} {r['dtype']:<9} {r['variant']:<26} " + "  | ".join(cells))


def print_table(rows: list[dict]) -> None:
    head = (
        f"{'shape (BxHxL) gate':<24}{'n':>6}{'fwd trit':>9}{'fb torch':>9}{'fb trit':>9}"
        f"{'fb/fwd':>7}{'graph':>7}{'x':>6}{'bwd':>8}{'kern':>8}{'k/flr':>7}{'TF/s':>6}"
        f"{'sp fb':>8}{'sp bwd':>8}{'sp krn':>8}{'sp/dn':>6}{'no z':>8}{'graph':>7}  best variant"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        shape = f"{r['B']}x{r['H']}x{r['L']} {'gated' if r['gated'] else 'plain'}"
        fbt, fbf = r.get("fwdbwd_ms_torch"), r.get("fwdbwd_ms_triton")
        kern = r.get("kernel_ms_best")
        best = r.get("kernel_best")
        tflops = r.get(f"kernel_tflops_{best}") if best else None
        dense, sparse = r.get("kernel_ms_default"), r.get("sparse_kernel_ms_default")
        print(
            f"{shape:<24}{r['n']:>6}{fmt(r.get('fwd_ms_triton')):>9}{fmt(fbt):>9}{fmt(fbf):>9}"
            f"{fmt(r.get('ratio_fwdbwd_over_fwd_triton'), '.2f'):>7}"
            f"{fmt(r.get('ratio_graph_fwdbwd_over_fwd_triton'), '.2f'):>7}"
            f"{fmt(fbt / fbf if fbt and fbf else None, '.2f'):>6}"
            f"{fmt(r.get('fused_bwd_ms')):>8}{fmt(kern):>8}"
            f"{fmt(kern / r['floor_bwd_ms'] if kern else None, '.1f'):>7}"
            f"{fmt(tflops, '.0f'):>6}{fmt(r.get('sparse_fwdbwd_ms_triton')):>8}"
            f"{fmt(r.get('sparse_fused_bwd_ms')):>8}{fmt(sparse):>8}"
            f"{fmt(sparse / dense if sparse and dense else None, '.2f'):>6}"
            f"{fmt(r.get('fwdbwd_ms_triton_recompute')):>8}"
            f"{fmt(r.get('fwdbwd_graph_ms_triton_recompute')):>7}  {best or '-'}"
        )
    print(
        f"ms: medians; fb: forward+backward (public call); fb/fwd: triton's ratio (target <= "
        f"{TARGET_RATIO}); graph: the same ratio of the calls replayed as CUDA graphs (device "
        "time alone); x: speedup over torch; bwd: fused backward alone; kern: bare kernel, "
        "best variant; k/flr: multiple of the backward's HBM floor; sp: the filter cut to "
        f"freq_keep={SPARSE_KEEP} (fb, bwd, krn: as above, the kernel's default variant); "
        "no z: gated forward+backward with z not kept (recomputed in the backward), eager and "
        "graph; "
        "sp/dn: its kernel over the dense default's"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--lengths", type=int, nargs="*", default=list(LENGTHS))
    parser.add_argument("--no-variants", action="store_true", help="time the default launch only")
    parser.add_argument(
        "--variants", nargs="*", default=(), help="time only these variants (and the default)"
    )
    parser.add_argument(
        "--z-twins",
        action="store_true",
        help="gated: every timed variant also with the forward's z handed over (default+z only "
        "without it)",
    )
    parser.add_argument(
        "--no-sparse", action="store_true", help=f"leave out the freq_keep={SPARSE_KEEP} timings"
    )
    parser.add_argument(
        "--parts",
        action="store_true",
        help="also time the default launch asked for all but the filter gradient and for it "
        "alone (where a split's time goes)",
    )
    parser.add_argument(
        "--static", action="store_true", help="registers and spills of an sm_90 compile, no GPU"
    )
    args = parser.parse_args(argv)
    if args.static:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        run_static(args.lengths, args.out)
        return
    if not torch.cuda.is_available():
        sys.exit("benchmarks.fftconv_bwd needs a CUDA device")

    meta = {
        **gpu_run_meta("benchmarks.fftconv_bwd", argv),
        "total_elements": TOTAL,
        "hbm_floor_bytes_per_s": copy_bandwidth(),
        "matmul_flops_per_s": matmul_rate(),
        "target_ratio_fwdbwd_over_fwd": TARGET_RATIO,
        "sparse_freq_keep": None if args.no_sparse else SPARSE_KEEP,
        "default_configs": {
            str(n): vars(triton_bwd.config_for(n)) for n in (512, 1024, 2048, 4096, 8192)
        },
    }
    print(f"{meta['gpu']}  torch {meta['torch']}  triton {meta['triton']}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for L in args.lengths:
        for gated in (False, True):
            row = bench_length(
                L, gated, not args.no_variants, tuple(args.variants), not args.no_sparse,
                args.z_twins, args.parts,
            )  # fmt: skip
            rows.append(row)
            print(json.dumps(row, default=str), flush=True)
            # written after every row: a run cut short still leaves its numbers
            args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=str))
            torch.cuda.empty_cache()
    print_table(rows)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
