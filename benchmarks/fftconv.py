"""Times ``fftconv`` per backend on a GPU: causal, bf16, B*H*L = 2^27, plain and gated.

    python -m benchmarks.fftconv --out benchmarks/results/<gpu>-<date>.json [--compile]

For each length: correctness first (each backend's bf16 output against the torch.fft path in
fp32 on the same inputs; a backend over tolerance gets no time), then
``triton.testing.do_bench`` medians (inputs built outside the timed region) of the public call
``fftconv(u, k, backend=...)`` forward and forward+backward, and of the bare fused kernel
(spectrum already laid out) in a few launch variants; the filter spectrum's layout in one
kernel pass against the torch ops it replaced, alone and in the public call; torch.fft and
triton replayed as a CUDA graph too (device time alone), forward and forward+backward.
Reports ms, speedup over torch, the multiple of the HBM floor (bytes that must move at 2
bytes per element, over the copy bandwidth measured in the run), and the kernel's
matrix-product TFLOP/s. Writes JSON (and a PNG when matplotlib is there).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from benchmarks.common import compile_sm90 as common_compile_sm90
from benchmarks.common import (
    copy_bandwidth,
    fmt,
    gpu_run_meta,
    graph_median_ms,
    matmul_rate,
    median_ms,
    ratio,
    rel_err,
    time_forward_backward,
)
from kernels import fftconv
from kernels.fftconv import triton_fwd
from kernels.fftconv.plan import make_plan

TOTAL = 2**27  # B * H * L
H = 1024
LENGTHS = (256, 512, 1024, 2048, 4096, 8192, 16384)
TOL_BF16 = 1e-2
# bare-kernel launch variants: name -> (pair, num_warps, steps per program, pipeline stages,
# which n[, more launch options, gated only]); None: the launcher's default
KERNEL_VARIANTS = {
    "default": (True, None, None, None, lambda n: True),
    "pair-s1-p1": (True, None, 1, 1, lambda n: n >= 4096),
    "pair-s8-p1": (True, None, 8, 1, lambda n: True),
    "pair-s16-p1": (True, None, 16, 1, lambda n: n <= 4096),
    "pair-s8-p2": (True, None, 8, 2, lambda n: True),
    "pair-s16-p2": (True, None, 16, 2, lambda n: n <= 8192),
    "pair-s16-p3": (True, None, 16, 3, lambda n: n <= 2048),
    # n = 1024-2048: more warps, a deeper pipeline, longer programs
    "pair-s16-p3-w8": (True, 8, 16, 3, lambda n: 1024 <= n <= 2048),
    "pair-s16-p4": (True, None, 16, 4, lambda n: 1024 <= n <= 2048),
    "pair-s32-p3": (True, None, 32, 3, lambda n: 1024 <= n <= 2048),
    # n = 2048: 2 stages on 32 pairs; the 4-warp default before v12 (2 warps since); n = 1024:
    # the 4-warp default before v13 (2 warps since)
    "pair-s32-p2": (True, None, 32, 2, lambda n: n == 2048),
    "pair-s32-p3-w4": (True, 4, 32, 3, lambda n: n == 2048),
    "pair-s16-p3-w4": (True, 4, 16, 3, lambda n: n == 1024),
    # n = 8192: a third stage fits (225 KB of shared memory gated, 176 plain) with the skip
    # term's input held; with it loaded again (the gated default since v13) it needs 252 KB
    # and fails to launch (recorded as the variant's error)
    "pair-s8-p3": (True, None, 8, 3, lambda n: n == 8192),
    # the skip term's input loaded again at the output instead of held in registers across the
    # products (sm_90, bf16 gated: spills 296 -> 204 B at n = 4096, 656 -> 588 at 8192, 120 ->
    # 88 at 2048 on 2 warps; +8-16 KB of shared memory for the pipelined reload): the default
    # from n = 4096 on since v13, so there the variant is the input held
    "reload": (True, None, None, None, lambda n: n == 2048, {"skip_input": "reload"}),
    "held": (True, None, None, None, lambda n: n >= 4096, {"skip_input": "held"}),
    # the transform in three Monarch stages (16 x 16 x 16 at 4096, 32 x 16 x 16 at 8192: a
    # third of the products, two register-tile permutations per direction), plain and gated;
    # steps and stages the launcher's defaults, then more pipelining and 4 warps at 8192
    "three": (True, None, None, None, lambda n: n in (4096, 8192), {"transform": "three"}),
    "three-s16-p3": (True, None, 16, 3, lambda n: n in (4096, 8192), {"transform": "three"}),
    "three-w4": (True, 4, None, None, lambda n: n == 8192, {"transform": "three"}),
    "three-w8": (True, 8, None, None, lambda n: n == 4096, {"transform": "three"}),
    # two stages where three are the default (n = 8192 with both gates, since v14)
    "two": (True, None, None, None, lambda n: n == 8192, {"transform": "two"}),
    # two stages with the filter spectrum loaded per step instead of held (frees its registers:
    # 64 per thread at n = 8192 on 8 warps)
    "two-load-k": (
        True,
        None,
        None,
        None,
        lambda n: n >= 2048,
        {"transform": "two", "hold_filter": False},
    ),
    # the filter's bins gathered by the kernel from its rfft (no layout pass; the bare kernel
    # then includes the gather, the public call saves the pass: time_filter_layouts)
    "kf-raw": (True, None, None, None, lambda n: True, {"filter_layout": "kernel"}),
    # the filter spectrum loaded per step (from L2) instead of held across steps
    "three-load-k": (
        *(True, None, None, None, lambda n: n in (4096, 8192)),
        {"transform": "three", "hold_filter": False},
    ),
}


def kernel_variants(n: int, gated: bool, only: frozenset[str] | None = None) -> list[tuple]:
    """The variants worth timing at size n (unpaired only plain, to measure the pairing; those
    with more launch options only gated, unless they choose the transform; ``only``: these
    names and the default): ``(name, pair, warps, steps, stages, options)``."""
    out = []
    for name, (pair, warps, steps, stages, sizes, *more) in KERNEL_VARIANTS.items():
        if only is not None and name != "default" and name not in only:
            continue
        options = more[0] if more else {}
        # other options concern gated calls only
        plain_too = "transform" in options or "filter_layout" in options
        if sizes(n) and (pair or not gated) and (gated or not options or plain_too):
            out.append((name, pair, warps, steps, stages, options))
    return out


def torch_path_fp32(u, k, pre, post, bias):
    """The same convolution, torch.fft in fp32: the correctness reference at this size."""
    L = u.shape[-1]
    n = 2 * L
    v = u.float() * pre.float() if pre is not None else u.float()
    z = torch.fft.irfft(torch.fft.rfft(v, n=n) * torch.fft.rfft(k.float(), n=n), n=n)[..., :L]
    y = z * post.float() if post is not None else z
    return y + bias.float()[:, None] * v if bias is not None else y


# the inputs a "gated" row has (``--gated-inputs``): the default, every gate and the bias;
# Hyena's long convolution, for one, takes a pregate alone
GATED_INPUTS = ("pre", "post", "bias")


def floor_ms(
    L: int, gated: bool, backward: bool, gated_inputs: tuple[str, ...] = GATED_INPUTS
) -> float:
    """Bytes that must move at 2 bytes per element: forward u, y (+ the pregate and postgate
    of ``gated_inputs``); backward dy, u, du (+ each gate and its gradient)."""
    gates = sum(name in gated_inputs for name in ("pre", "post")) if gated else 0
    tensors = 2 + gates + ((3 + 2 * gates) if backward else 0)
    return tensors * 2 * TOTAL / copy_bandwidth() * 1e3


def bench_length(
    L: int,
    gated: bool,
    use_compile: bool,
    kernel_only: bool = False,
    only: frozenset[str] | None = None,
    gated_inputs: tuple[str, ...] = GATED_INPUTS,
) -> dict:
    """One row: the public call per backend, forward and forward+backward, the bare kernel's
    variants (``only``: these, ``kernel_variants``) and the spectrum layout; ``kernel_only``:
    the bare kernel's variants alone; ``gated_inputs``: what a gated row has."""
    B = TOTAL // (H * L)
    gen = torch.Generator(device="cuda").manual_seed(L)
    u = torch.randn(B, H, L, device="cuda", dtype=torch.bfloat16, generator=gen)
    k = (
        torch.randn(H, L, device="cuda", generator=gen)
        / (1 + torch.arange(L, device="cuda")) ** 0.5
    )
    pre = post = bias = None
    if gated:
        pre = torch.randn(B, H, L, device="cuda", dtype=torch.bfloat16, generator=gen)
        post = torch.randn(B, H, L, device="cuda", dtype=torch.bfloat16, generator=gen)
        bias = torch.randn(H, device="cuda", generator=gen)
        pre, post, bias = (
            x if name in gated_inputs else None
            for name, x in (("pre", pre), ("post", post), ("bias", bias))
        )
    plan = make_plan("causal", L, L)
    n = plan.fft_size
    fused = triton_fwd.supports(n, plan.fold, u.dtype)
    row = {"B": B, "H": H, "L": L, "n": n, "gated": gated, "fused": fused}
    if gated:
        row["gated_inputs"] = list(gated_inputs)
    row["floor_fwd_ms"] = floor_ms(L, gated, False, gated_inputs)
    row["floor_fwdbwd_ms"] = floor_ms(L, gated, True, gated_inputs)

    inputs = (u, k, pre, post, bias)
    if kernel_only:
        return row | (
            time_kernel(inputs, n, only) | time_filter_layouts(inputs, n) if fused else {}
        )
    row.update(time_forward(inputs, use_compile))
    # forward + backward through the public call (the forward alone: time_forward)
    row.update(
        time_forward_backward(public, ("torch", "triton"), inputs, row["ok"], False, graph=True)
    )
    if fused:
        row.update(time_kernel(inputs, n, only))
        row.update(time_layout(inputs, n, ok=row["ok"]))
    return row


def time_filter_layouts(inputs, n: int) -> dict:
    """The public forward with the filter's spectrum laid out by a pass of its own
    (``filter_layout="pass"``) and gathered by the kernel from the rfft (``"kernel"``):
    ``fwd_ms_filter_<layout>`` (eager) and ``fwd_graph_ms_filter_<layout>`` (a CUDA graph), each
    after a check against the fp32 torch.fft path."""
    ref = torch_path_fp32(*inputs)
    row = {}
    for layout in triton_fwd.FILTER_LAYOUTS:

        def call(layout=layout):
            with triton_fwd.use_filter_layout(layout):
                return public("triton", *inputs)

        err = row[f"err_filter_{layout}"] = rel_err(call(), ref)
        if not err < TOL_BF16:
            continue
        row[f"fwd_ms_filter_{layout}"] = median_ms(call)
        row[f"fwd_graph_ms_filter_{layout}"] = graph_median_ms(call)
    return row


def time_layout(inputs, n: int, ok: dict) -> dict:
    """The filter spectrum's layout, one pass of ``spectrum_layout_kernel`` against the torch
    ops it replaced (``layout_ms_*``, on the rfft), and the public call, forward and
    forward+backward, with the torch ops (``*_ms_triton_torch_layout``): the kernel's share of
    the public call."""
    kf = torch.fft.rfft(inputs[1], n=n)
    row = {}
    for name, kernel in (("torch", False), ("kernel", True)):
        row[f"layout_ms_{name}"] = median_ms(
            lambda kernel=kernel: triton_fwd.spectrum_layout(kf, n, kernel=kernel)
        )
    if not ok["triton"]:
        return row
    with triton_fwd.use_layout_kernel(False):
        row |= time_forward_backward(
            lambda _name, *xs: public("triton", *xs), ("triton_torch_layout",), inputs,
            {"triton_torch_layout": True},
        )  # fmt: skip
    return row


def time_forward(inputs, use_compile: bool) -> dict:
    """The public call per backend: error against the fp32 torch.fft path, then the time."""
    u, k, pre, post, bias = inputs
    L = u.shape[-1]
    k_partial = k[:, : max(1, L // 8)]

    def call(backend, kk=k, freq_keep=1.0):
        return lambda: fftconv(
            u, kk, pregate=pre, postgate=post, bias=bias, backend=backend, freq_keep=freq_keep
        )

    fns = {name: call(name) for name in ("torch", "monarch", "triton")}
    # partial convolution (filter L/8) and a frequency-sparse spectrum (75% of bins zero)
    variants = {"partial": {"kk": k_partial}, "sparse": {"freq_keep": 0.25}}
    for variant, kwargs in variants.items():
        for name in ("torch", "triton"):
            fns[f"{name}_{variant}"] = call(name, **kwargs)
    if use_compile:
        fns["compile"] = torch.compile(lambda: torch_path_fp32(*inputs).to(u.dtype))
    refs = {
        "": torch_path_fp32(*inputs),
        "partial": fns["torch_partial"]().float(),
        "sparse": fns["torch_sparse"]().float(),
    }
    row, ok = {}, {}
    for name, fn in fns.items():
        ref = refs[name.partition("_")[2] if "_" in name else ""]
        row[f"err_{name}"] = rel_err(fn(), ref)
        ok[name] = row[f"err_{name}"] < TOL_BF16  # NaN fails too
    del refs
    for name, fn in fns.items():
        row[f"fwd_ms_{name}"] = median_ms(fn) if ok[name] else None
    # replayed as a CUDA graph: the device's time, without the host's launch work (at short L
    # a public call's few kernels take less time than the host takes to launch them)
    for name in ("torch", "triton"):
        row[f"fwd_graph_ms_{name}"] = graph_median_ms(fns[name]) if ok[name] else None
    row["ok"] = ok
    return row


def public(backend: str, u, k, pre, post, bias):
    """The public call on ``backend``, in ``time_forward_backward``'s argument order."""
    return fftconv(u, k, pregate=pre, postgate=post, bias=bias, backend=backend)


def time_kernel(inputs, n: int, only: frozenset[str] | None = None) -> dict:
    """The bare fused kernel (spectrum already laid out) per launch variant, each checked on a
    NaN-poisoned output first."""
    u, k, pre, post, bias = inputs
    B, H, L = u.shape
    kf = torch.fft.rfft(k, n=n)
    spectra = {"two": triton_fwd.spectrum_layout(kf, n)}
    if n in triton_fwd.THREE_STAGE_SIZES:
        spectra["three"] = triton_fwd.spectrum_layout3(kf, n)
    default_transform = triton_fwd.transform_for(
        n, u.dtype, gates=(pre is not None, post is not None)
    )
    ref = torch_path_fp32(*inputs)
    out = torch.empty_like(u)
    row = {}
    for name, pair, warps, steps, stages, options in kernel_variants(n, pre is not None, only):
        spectrum = spectra[options.get("transform", default_transform)]
        if options.get("filter_layout") == "kernel":
            spectrum = kf  # the rfft: the kernel gathers its bins
        options = {key: value for key, value in options.items() if key != "filter_layout"}

        def run(
            pair=pair, warps=warps, steps=steps, stages=stages, options=options, spectrum=spectrum
        ):
            triton_fwd.launch(
                u,
                spectrum,
                pre,
                post,
                bias,
                n,
                out=out,
                pair=pair,
                num_warps=warps,
                steps=steps,
                stages=stages,
                **options,
            )

        out.fill_(float("nan"))
        try:
            run()
        except Exception as err:  # a variant that does not fit (shared memory, say) is data
            row[f"kernel_error_{name}"] = repr(err)[:300]
            row[f"kernel_ms_{name}"] = None
            continue
        row[f"err_kernel_{name}"] = rel_err(out, ref)
        if not row[f"err_kernel_{name}"] < TOL_BF16:  # NaN (unwritten) fails too
            row[f"kernel_ms_{name}"] = None
            continue
        ms = row[f"kernel_ms_{name}"] = median_ms(run)
        flops = triton_fwd.dot_flops(
            B, H, L, n, pair, transform=options.get("transform", default_transform)
        )
        row[f"kernel_tflops_{name}"] = flops / (ms * 1e-3) / 1e12
    row["dot_flops"] = triton_fwd.dot_flops(B, H, L, n, transform=default_transform)
    row["flop_floor_ms"] = row["dot_flops"] / matmul_rate() * 1e3
    return row


def accuracy_summary() -> dict:
    """Relative error of the fused forward against float64, per dtype (gated, B=4, H=64)."""
    out = {}
    for n in (2048, 8192):
        L = n // 2
        gen = torch.Generator(device="cuda").manual_seed(n)
        shape = (4, 64, L)
        u, pre, post = (torch.randn(shape, device="cuda", generator=gen) for _ in range(3))
        k = torch.randn(64, L, device="cuda", generator=gen) / (1 + torch.arange(L, device="cuda"))
        bias = torch.randn(64, device="cuda", generator=gen)
        kf64 = torch.fft.rfft(k.double(), n=n)
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            ud, pred, postd = (x.to(dtype) for x in (u, pre, post))
            vd = ud.double() * pred.double()
            zd = torch.fft.irfft(torch.fft.rfft(vd, n=n) * kf64, n=n)[..., :L]
            ref = zd * postd.double() + bias.double()[:, None] * vd
            y = fftconv(ud, k, pregate=pred, postgate=postd, bias=bias, backend="triton")
            y_torch = fftconv(ud, k, pregate=pred, postgate=postd, bias=bias, backend="torch")
            name = str(dtype).removeprefix("torch.")
            out[f"n{n}-{name}"] = {
                "triton": rel_err(y.double(), ref),
                "torch": rel_err(y_torch.double(), ref),
            }
    return out


def print_kernel_table(rows: list[dict]) -> None:
    """One line per (L, gating, variant): the bare kernel's ms, error, and multiple of the
    memory floor (``--kernel-only``); then the public forward per filter layout."""
    print(f"{'L':>6} {'gate':<6} {'variant':<16} {'ms':>7} {'x floor':>7} {'err':>8}")
    for r in rows:
        gate = "gated" if r["gated"] else "plain"
        if r["gated"] and len(r.get("gated_inputs", GATED_INPUTS)) < 3:
            gate = "+".join(r["gated_inputs"])  # e.g. "pre": a pregate alone
        for name in KERNEL_VARIANTS:
            ms = r.get(f"kernel_ms_{name}")
            err = r.get(f"err_kernel_{name}")
            if ms is None and f"kernel_error_{name}" not in r and err is None:
                continue
            shown = "failed" if ms is None else f"{ms:7.3f} {ms / r['floor_fwd_ms']:7.2f}"
            print(f"{r['L']:>6} {gate:<6} {name:<16} {shown} {fmt(err, '.1e'):>8}")
        for layout in triton_fwd.FILTER_LAYOUTS:
            ms = r.get(f"fwd_ms_filter_{layout}")
            if ms is None and f"err_filter_{layout}" not in r:
                continue
            name = f"public, filter {layout}"
            graph = r.get(f"fwd_graph_ms_filter_{layout}")
            shown = "failed" if ms is None else f"{ms:7.3f} {ms / r['floor_fwd_ms']:7.2f}"
            extra = "" if graph is None else f"  graph {graph:.3f}"
            print(
                f"{r['L']:>6} {gate:<6} {name:<16} {shown} "
                f"{fmt(r.get(f'err_filter_{layout}'), '.1e'):>8}{extra}"
            )


def print_table(rows: list[dict]) -> None:
    """Markdown: one line per (L, gating)."""
    cols = [
        (
            "shape (BxHxL)",
            lambda r: f"{r['B']}x{r['H']}x{r['L']} {'gated' if r['gated'] else 'plain'}",
        ),
        ("n", lambda r: str(r["n"])),
        ("torch fp32", lambda r: fmt(r.get("fwd_ms_torch"))),
        ("compile", lambda r: fmt(r.get("fwd_ms_compile"))),
        ("monarch", lambda r: fmt(r.get("fwd_ms_monarch"))),
        ("triton", lambda r: fmt(r.get("fwd_ms_triton"))),
        ("speedup", lambda r: ratio(r.get("fwd_ms_torch"), r.get("fwd_ms_triton"))),
        ("x floor", lambda r: ratio(r.get("fwd_ms_triton"), r["floor_fwd_ms"], ".1f")),
        (
            "graph torch / triton",
            lambda r: _pair(r, "fwd_graph_ms_torch", "fwd_graph_ms_triton"),
        ),
        (
            "graph speedup",
            lambda r: ratio(r.get("fwd_graph_ms_torch"), r.get("fwd_graph_ms_triton")),
        ),
        ("kernel", lambda r: fmt(r.get("kernel_ms_best"))),
        ("kernel x floor", lambda r: ratio(r.get("kernel_ms_best"), r["floor_fwd_ms"], ".1f")),
        ("TFLOP/s", lambda r: fmt(r.get("kernel_tflops_best"), ".0f")),
        (
            "partial L/8 torch / triton",
            lambda r: _pair(r, "fwd_ms_torch_partial", "fwd_ms_triton_partial"),
        ),
        (
            "sparse 75% torch / triton",
            lambda r: _pair(r, "fwd_ms_torch_sparse", "fwd_ms_triton_sparse"),
        ),
        ("fwd+bwd torch / triton", lambda r: _pair(r, "fwdbwd_ms_torch", "fwdbwd_ms_triton")),
        (
            "fwd+bwd / fwd",
            lambda r: ratio(r.get("fwdbwd_ms_triton"), r.get("fwd_ms_triton"), ".1f"),
        ),
        (
            "graph fwd+bwd torch / triton",
            lambda r: _pair(r, "fwdbwd_graph_ms_torch", "fwdbwd_graph_ms_triton"),
        ),
        (
            "graph fwd+bwd / fwd",
            lambda r: ratio(r.get("fwdbwd_graph_ms_triton"), r.get("fwd_graph_ms_triton"), ".1f"),
        ),
        ("err", lambda r: fmt(r.get("err_triton"), ".1e")),
    ]
    print("| " + " | ".join(name for name, _ in cols) + " |")
    print("|" + " --- |" * len(cols))
    for r in rows:
        print("| " + " | ".join(fn(r) for _, fn in cols) + " |")
    print(
        "ms: medians; speedup: torch.fft (fp32 compute) / triton; x floor: multiple of the HBM "
        "floor; kernel: bare fused kernel, best variant; fwd+bwd / fwd: triton's; graph: "
        "replayed as a CUDA graph (the device's time alone)"
    )


def _pair(r, a, b):
    return f"{fmt(r.get(a))} / {fmt(r.get(b))}"


def plot(rows: list[dict], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, gated in zip(axes, (False, True), strict=True):
        sel = [r for r in rows if r["gated"] == gated]
        Ls = [r["L"] for r in sel]
        for key, label in (
            ("fwd_ms_torch", "torch fwd"),
            ("fwd_ms_triton", "triton fwd"),
            ("kernel_ms_best", "fused kernel"),
            ("fwdbwd_ms_torch", "torch fwd+bwd"),
            ("fwdbwd_ms_triton", "triton fwd+bwd"),
            ("floor_fwd_ms", "HBM floor fwd"),
        ):
            pts = [(L, r.get(key)) for L, r in zip(Ls, sel, strict=True) if r.get(key)]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("L (B*H*L = 2^27, bf16, causal)")
        ax.set_ylabel("ms")
        ax.set_title("gated" if gated else "plain")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


# ---------------------------------------------------------------------------------------------
# --static: registers, spills and shared memory of sm_90 compiles, without a GPU

STATIC_SMS = 132  # the H100's and the H200's SMs: the steps a launch picks there by default
SHARED_PER_BLOCK = 232448  # bytes of shared memory one block may take on sm_90 (227 KB)


def static_stats(n: int, dtype: torch.dtype, gated: bool, blocked: bool = False, **options):
    """The forward kernel compiled for sm_90 as ``triton_fwd.launch`` compiles it for this
    benchmark's shapes (causal L = n/2, H = 1024, B * H * L = 2^27 on ``STATIC_SMS`` SMs; a
    blocked plan: the same B blocks), gated with pre- and postgate and bias: registers, spills,
    shared memory, and the loads the software pipeliner made asynchronous copies. ``options``:
    ``launch``'s (pair, steps, stages, num_warps, skip_input)."""
    L = n // 2
    B = TOTAL // (H * L)
    precision = "tf32x3" if dtype == torch.float32 else "tf32"
    if options.pop("filter_layout", "pass") == "kernel":
        options["raw_spectrum"] = True
    meta, _ = triton_fwd.kernel_meta(
        n, B, H, L, dtype, gates=(gated,) * 3, blocked=blocked, precision=precision,
        sms=STATIC_SMS, **options,
    )  # fmt: skip
    warps = meta.pop("num_warps")
    kernel = triton_fwd.kernel_of(meta)
    operand = {torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.float32: "*fp32"}[dtype]
    fp32 = ("bias_ptr", "kf_ptr", "twiddle_ptr", "tw1_ptr", "tw2a_ptr", "tw2b_ptr")
    pointer_types = {
        name: "*fp32" if name in fp32 else operand
        for name in kernel.arg_names
        if name.endswith("_ptr")
    }
    compiled, stats = common_compile_sm90(kernel, meta, pointer_types, warps)
    return {
        "n": n,
        "dtype": str(dtype).removeprefix("torch."),
        "gated": gated,
        "blocked": blocked,
        "num_warps": warps,
        **{key.lower(): meta[key] for key in ("PAIR", "STEPS", "STAGES", "ROWS", "SKIP_INPUT")},
        **stats,
        "async_copies": compiled.asm["ttgir"].count("async_copy_global_to_local"),
    }


def run_static(lengths: list[int], out: Path, only: frozenset[str] | None = None) -> None:
    """One row per (n, dtype, gating, variant): the default launch and every bare-kernel
    variant of the timed run, bf16 and fp32, dense; the default blocked plan too."""
    rows = []
    for L in lengths:
        n = make_plan("causal", L, L).fft_size
        if not triton_fwd.supports(n, False, torch.bfloat16):
            continue
        for dtype in (torch.bfloat16, torch.float32):
            for gated in (False, True):
                for name, pair, warps, steps, stages, options in kernel_variants(n, gated, only):
                    if dtype == torch.float32 and name != "default":
                        continue
                    launch = dict(pair=pair, num_warps=warps, steps=steps, stages=stages)
                    rows.append(_static_row(name, n, dtype, gated, False, launch | options))
                if n >= triton_fwd.MIN_BLOCKED_FFT:
                    rows.append(_static_row("blocked", n, dtype, gated, True, {}))
                out.write_text(json.dumps({"rows": rows}, indent=1))
    print_static_table(rows)


def _static_row(name: str, n: int, dtype, gated: bool, blocked: bool, options: dict) -> dict:
    try:
        row = {"variant": name, **static_stats(n, dtype, gated, blocked, **options)}
    except Exception as err:  # out of shared memory, say: data too
        row = {"variant": name, "n": n, "dtype": str(dtype), "gated": gated, "error": repr(err)}
    print(json.dumps(row), flush=True)
    return row


def print_static_table(rows: list[dict]) -> None:
    print(
        f"{'n':>5} {'dtype':<9} {'gate':<6} {'variant':<16} warps steps stages regs spill", end=""
    )
    print(" smemKB async")
    for r in rows:
        gate = "gated" if r["gated"] else "plain"
        head = f"{r['n']:>5} {r['dtype']:<9} {gate:<6} {r['variant']:<16}"
        if "error" in r:
            print(f"{head} {r['error'][:70]}")
            continue
        fits = "" if r["shared_bytes"] <= SHARED_PER_BLOCK else "  (over an SM's shared memory)"
        print(
            f"{head} {r['num_warps']:>5} {r['steps']:>5} {r['stages']:>6} {r['registers']:>4} "
            f"{r['spill_store_bytes']:>5} {r['shared_bytes'] / 1024:>6.0f} {r['async_copies']:>5}"
            f"{fits}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--lengths", type=int, nargs="*", default=list(LENGTHS))
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument(
        "--kernel-only", action="store_true", help="the bare kernel's launch variants alone"
    )
    parser.add_argument(
        "--variants", nargs="*", help="time these bare-kernel variants only (and the default)"
    )
    parser.add_argument(
        "--gated-inputs",
        default=",".join(GATED_INPUTS),
        help="what a gated row has, of pre,post,bias (default: all three; Hyena's call: pre)",
    )
    parser.add_argument(
        "--static", action="store_true", help="registers and spills of an sm_90 compile, no GPU"
    )
    args = parser.parse_args(argv)
    gated_inputs = tuple(x for x in args.gated_inputs.split(",") if x)
    if not gated_inputs or set(gated_inputs) - {"pre", "post", "bias"}:
        parser.error(
            f"--gated-inputs: a comma-separated subset of pre,post,bias; got {args.gated_inputs!r}"
        )
    only = None if args.variants is None else frozenset(args.variants)
    if only is not None and only - set(KERNEL_VARIANTS):
        unknown = sorted(only - set(KERNEL_VARIANTS))
        parser.error(f"--variants: unknown {unknown}; known: {sorted(KERNEL_VARIANTS)}")
    if args.static:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        run_static(args.lengths, args.out, only)
        return
    if not torch.cuda.is_available():
        sys.exit("benchmarks.fftconv needs a CUDA device")

    meta = {
        **gpu_run_meta("benchmarks.fftconv", argv),
        "total_elements": TOTAL,
        "hbm_floor_bytes_per_s": copy_bandwidth(),
        "matmul_flops_per_s": matmul_rate(),
        "copy_bytes_per_s_measured": copy_bandwidth(),
        "bf16_matmul_flops_per_s_measured": matmul_rate(),
    }
    print(
        f"{meta['gpu']}  torch {meta['torch']}  triton {meta['triton']}  copy "
        f"{meta['copy_bytes_per_s_measured'] / 1e12:.2f} TB/s  bf16 matmul "
        f"{meta['bf16_matmul_flops_per_s_measured'] / 1e12:.0f} TFLOP/s",
        flush=True,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta["accuracy_vs_float64"] = accuracy_summary()
    print("rel. error vs float64 (triton / torch):", json.dumps(meta["accuracy_vs_float64"]))
    rows = []
    for L in args.lengths:
        for gated in (False, True):
            row = bench_length(L, gated, args.compile, args.kernel_only, only, gated_inputs)
            times = {
                name: row[f"kernel_ms_{name}"]
                for name in KERNEL_VARIANTS
                if row.get(f"kernel_ms_{name}") is not None
            }
            if times:
                best = min(times, key=times.get)
                row["kernel_best"] = best
                row["kernel_ms_best"] = times[best]
                row["kernel_tflops_best"] = row[f"kernel_tflops_{best}"]
            rows.append(row)
            print(json.dumps(row), flush=True)
            # written after every row: a run cut short still leaves its numbers
            args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
            torch.cuda.empty_cache()
    if args.kernel_only:
        print_kernel_table(rows)
        print(f"wrote {args.out}")
        return
    print_table(rows)
    if plot(rows, args.out.with_suffix(".png")):
        print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    else:
        print(f"wrote {args.out} (no matplotlib: no plot)")


if __name__ == "__main__":
    main()
