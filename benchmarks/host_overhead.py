"""The host's share of a public ``fftconv`` call on a GPU: how long Python, the dispatcher and
the launches take per call when the device work is negligible.

    python -m benchmarks.host_overhead --out benchmarks/results/host-overhead-<gpu>-<date>.json

At B*H*L = 2^27 a call at L <= 1K moves 0.3-0.5 ms of device work, about what the host needs
to issue it, so the public calls there vary with the host (benchmarks.fftconv's notes). Here
the shapes are tiny (B = 2, H = 8), so a loop of calls without a synchronisation measures
the host: the mean wall time per call over ``--calls`` calls (after a warm-up), for the public
call forward and forward + backward (plain and gated, triton and torch backends) and for its
parts (the plan, the filter's rfft, the spectrum layout, the bare kernel launch), and the
forward + backward of ``short_conv`` and ``add_layer_norm`` on the same input. Then a
``cProfile`` of the gated public forward and of forward + backward (the functions with the
most cumulative time) and torch.profiler's per-op host times of forward + backward, as text
in the JSON.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import gpu_run_meta
from kernels import add_layer_norm, fftconv, short_conv
from kernels.fftconv import triton_fwd
from kernels.fftconv.interface import circular_filter
from kernels.fftconv.plan import make_plan

LENGTHS = (256, 1024, 4096)
B, H = 2, 8


def host_us(fn, calls: int) -> float:
    """Mean wall time per call of ``calls`` calls issued back to back (microseconds)."""
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / calls * 1e6


def profile_text(fn, calls: int, lines: int = 30) -> str:
    fn()
    torch.cuda.synchronize()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(lines)
    return out.getvalue()


def op_table(fn, calls: int, rows: int = 40) -> str:
    """torch.profiler's per-op host time of ``calls`` calls, by self CPU time: which aten ops,
    Triton launches and dispatches the host spends its time on, and how many of each."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def other_ops(u, calls: int) -> dict:
    """Forward + backward host time of the other two ops of a Hyena block on the same small
    input: ``short_conv`` (3 taps, input bias) and ``add_layer_norm`` (rows of H), both
    through their public calls (the same autograd route as ``fftconv``)."""
    gen = torch.Generator(device="cuda").manual_seed(1)
    x = u.clone().requires_grad_()
    w, ib = (torch.randn(*shape, device="cuda", generator=gen, requires_grad=True)
             for shape in ((H, 3), (H,)))  # fmt: skip
    rows = u.transpose(1, 2).reshape(-1, H).clone().requires_grad_()
    res = torch.randn(rows.shape, device="cuda", generator=gen, requires_grad=True)
    weight, bias = (torch.randn(H, device="cuda", generator=gen, requires_grad=True)
                    for _ in range(2))  # fmt: skip
    dx, d_rows = torch.randn_like(u), torch.randn_like(rows)

    def conv_step():
        short_conv(x, w, input_bias=ib).backward(dx)
        x.grad = w.grad = ib.grad = None

    def norm_step():
        y, stream = add_layer_norm(rows, res, weight, bias)
        torch.autograd.backward((y, stream), (d_rows.to(y.dtype), d_rows.float()))
        rows.grad = res.grad = weight.grad = bias.grad = None

    return {
        "fwdbwd_us_short_conv": host_us(conv_step, calls),
        "fwdbwd_us_add_layer_norm": host_us(norm_step, calls),
    }


def bench_length(L: int, calls: int) -> dict:
    gen = torch.Generator(device="cuda").manual_seed(L)
    u, pre, post = (
        torch.randn(B, H, L, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(3)
    )
    k = torch.randn(H, L, device="cuda", generator=gen) / L
    bias = torch.randn(H, device="cuda", generator=gen)
    gates = {"pregate": pre, "postgate": post, "bias": bias}
    leaves = [x.clone().requires_grad_() for x in (u, k, pre, post, bias)]
    dy = torch.randn_like(u)
    plan = make_plan("causal", L, L)
    n = plan.fft_size
    kc = circular_filter(k, plan)
    kf = torch.fft.rfft(kc, n=n)
    spectrum = triton_fwd.spectrum_layout(kf, n)
    out = torch.empty_like(u)

    def fwd(backend, gated):
        return lambda: fftconv(u, k, **(gates if gated else {}), backend=backend)

    def fwd_bwd(backend, gated):
        def step():
            lu, lk, lpre, lpost, lbias = leaves
            extra = {"pregate": lpre, "postgate": lpost, "bias": lbias} if gated else {}
            fftconv(lu, lk, **extra, backend=backend).backward(dy)
            for x in leaves:
                x.grad = None

        return step

    row = {"L": L, "B": B, "H": H, "n": n, "calls": calls}
    for backend in ("triton", "torch"):
        for gated in (False, True):
            tag = f"{backend}_{'gated' if gated else 'plain'}"
            row[f"fwd_us_{tag}"] = host_us(fwd(backend, gated), calls)
            row[f"fwdbwd_us_{tag}"] = host_us(fwd_bwd(backend, gated), calls)
    parts = {
        "make_plan": lambda: make_plan("causal", L, L),
        "circular_filter": lambda: circular_filter(k, plan),
        "rfft": lambda: torch.fft.rfft(kc, n=n),
        "layout_kernel": lambda: triton_fwd.spectrum_layout(kf, n),
        "layout_torch": lambda: triton_fwd.spectrum_layout(kf, n, kernel=False),
        "kernel_launch": lambda: triton_fwd.launch(u, spectrum, None, None, None, n, out=out),
        "kernel_launch_gated": lambda: triton_fwd.launch(u, spectrum, pre, post, bias, n, out=out),
        "empty_like": lambda: torch.empty_like(u),
    }
    for name, fn in parts.items():
        row[f"part_us_{name}"] = host_us(fn, calls)
    row.update(other_ops(u, calls))
    if L == LENGTHS[0]:
        row["profile_fwd_gated"] = profile_text(fwd("triton", True), calls)
        row["profile_fwdbwd_gated"] = profile_text(fwd_bwd("triton", True), calls)
        row["ops_fwdbwd_gated"] = op_table(fwd_bwd("triton", True), calls)
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--lengths", type=int, nargs="*", default=list(LENGTHS))
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("benchmarks.host_overhead needs a CUDA GPU")
    rows = [bench_length(L, args.calls) for L in args.lengths]
    for r in rows:
        print(r["L"], json.dumps({k: round(v, 1) for k, v in r.items() if isinstance(v, float)}))
    if "profile_fwd_gated" in rows[0]:
        print(rows[0]["ops_fwdbwd_gated"])
        print(rows[0]["profile_fwdbwd_gated"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({**gpu_run_meta("benchmarks.host_overhead", argv), "rows": rows}, indent=1)
    )


if __name__ == "__main__":
    main()
