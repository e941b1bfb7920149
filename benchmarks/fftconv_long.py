"""Times the long-sequence Triton forward (``triton_long``) on a GPU against torch.fft: causal,
bf16, B*H*L = 2^27, L = 8K .. 4M, plain and gated.

    python -m benchmarks.fftconv_long --out benchmarks/results/<gpu>-<date>-long.json \
        [--lengths 8192 65536 ...] [--splits] [--no-torch]

Per length (n = 2L): correctness first (the bf16 output of every path against the torch.fft
path in fp32 on the same inputs, relative error < 1e-2; a path over it gets no time), then
``triton.testing.do_bench`` medians, inputs built outside the timed region, of

- ``torch_fp32``: ``fftconv(backend="torch")`` on fp32 copies of the inputs;
- ``torch_bf16``: the same on the bf16 inputs (cast to fp32 inside: the paper's baseline);
- ``triton``: the public call, ``backend="triton"`` (filter rfft and spectrum layout included);
- ``kernel``: ``conv_long`` on a spectrum already laid out (the three kernels alone), with its
  per-kernel split from the profiler; ``kernel_l2``: the same in chunks of an intermediate that
  fits the L2 cache (24 MiB); with ``--splits``, ``kernel_n0=<N0>``: other outer sizes.

Each time is also given as a multiple of the memory floor: the bytes of u and y (plus pregate
and postgate when gated) at 2 bytes each, over the copy bandwidth measured in the same run.
The spectrum, one fp32 complex per bin per channel, is listed separately (``spectrum_mb``): a
channel's spectrum is read once per program that needs it, so it is not in the floor.
Shapes: H = clamp(2^27 / (8 L), 1, 1024) channels, B = 2^27 / (H L) >= 8 sequences.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import torch
import triton

from benchmarks.common import fmt, measure_copy_bandwidth, median_ms, rel_err
from kernels import fftconv, filter_spectrum
from kernels.fftconv import triton_long

TOTAL = 2**27  # B * H * L
LENGTHS = tuple(2**k for k in range(13, 23))  # 8K .. 4M
TOL_BF16 = 1e-2
L2_CHUNK_BYTES = 24 * 2**20
KERNEL_NAMES = ("cols_fwd", "rows", "cols_inv")


def shape_for(L: int) -> tuple[int, int]:
    """(B, H) with B * H * L = TOTAL and at least 8 sequences per channel (4 pairs)."""
    H = max(1, min(1024, TOTAL // (8 * L)))
    return TOTAL // (H * L), H


def make_inputs(L: int, gated: bool):
    B, H = shape_for(L)
    g = torch.Generator(device="cuda").manual_seed(L)
    u = torch.randn(B, H, L, device="cuda", generator=g).to(torch.bfloat16)
    k = torch.randn(H, L, device="cuda", generator=g)
    k = k / (1 + torch.arange(L, device="cuda")) ** 0.5  # decaying, as trained filters
    pre = post = bias = None
    if gated:
        pre = torch.randn(B, H, L, device="cuda", generator=g).to(torch.bfloat16)
        post = torch.randn(B, H, L, device="cuda", generator=g).to(torch.bfloat16)
        bias = torch.randn(H, device="cuda", generator=g)
    return u, k, pre, post, bias


def torch_path_fp32(u, k, pre, post, bias):
    """The convolution through torch.fft in fp32 (the correctness reference at these sizes)."""
    L = u.shape[-1]
    n = 2 * L
    v = u.float() * pre.float() if pre is not None else u.float()
    z = torch.fft.irfft(torch.fft.rfft(v, n=n) * torch.fft.rfft(k.float(), n=n), n=n)[..., :L]
    y = z * post.float() if post is not None else z
    return y + bias.float()[:, None] * v if bias is not None else y


def kernel_split_ms(run) -> dict:
    """Per-kernel CUDA time of one call (ms), from the profiler, averaged over 5 calls."""
    run()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            run()
        torch.cuda.synchronize()
    out = dict.fromkeys(KERNEL_NAMES, 0.0)
    for event in prof.key_averages():
        for name in KERNEL_NAMES:
            if event.key.startswith(name):
                out[name] += event.device_time_total / 1e3 / 5  # us -> ms, per call
    return out


def bench_length(L: int, gated: bool, splits: bool, with_torch: bool, copy_bw: float) -> dict:
    B, H = shape_for(L)
    inputs = make_inputs(L, gated)
    u, k, pre, post, bias = inputs
    n = 2 * L
    floor_ms = (4 if gated else 2) * 2 * TOTAL / copy_bw * 1e3
    row = {"L": L, "n": n, "B": B, "H": H, "gated": gated, "floor_ms": floor_ms}
    row["spectrum_mb"] = H * (n // 2 + 1) * 8 / 1e6
    ref = torch_path_fp32(*inputs)

    fns = {}
    if with_torch:
        fp32 = [x.float() if x is not None else None for x in (u, pre, post)]
        fns["torch_fp32"] = lambda: fftconv(
            fp32[0], k, pregate=fp32[1], postgate=fp32[2], bias=bias, backend="torch"
        )
        fns["torch_bf16"] = lambda: fftconv(
            u, k, pregate=pre, postgate=post, bias=bias, backend="torch"
        )
    fns["triton"] = lambda: fftconv(u, k, pregate=pre, postgate=post, bias=bias, backend="triton")
    spec = filter_spectrum(k, L, backend="triton")
    fns["triton_spectrum"] = lambda: fftconv(
        u, spec, pregate=pre, postgate=post, bias=bias, backend="triton"
    )
    default = triton_long.make_split(n)
    row["split"] = [default.n0, default.m]
    variants = {
        "kernel": (default, {}),
        "kernel_l2": (default, {"max_intermediate_bytes": L2_CHUNK_BYTES}),
    }
    if splits:
        for n0 in (16, 64, 256, 1024):
            if n0 != default.n0 and triton_long.MIN_INNER <= n // n0 <= triton_long.MAX_INNER:
                variants[f"kernel_n0={n0}"] = (triton_long.make_split(n, n0), {})
    out = torch.empty_like(u)
    for name, (split, options) in variants.items():
        laid = triton_long.spectrum_layout(torch.fft.rfft(k, n=n), split)

        def run(split=split, options=options, laid=laid):
            triton_long.conv_long(
                u, laid, split, pregate=pre, postgate=post, bias=bias, out=out, **options
            )

        fns[name] = run

    for name, fn in fns.items():
        out.fill_(float("nan"))
        result = fn()
        err = rel_err(out if result is None else result, ref)
        row[f"err_{name}"] = err
        ms = (
            median_ms(fn, warmup=10, rep=60) if err < TOL_BF16 else None
        )  # NaN (unwritten) fails too
        row[f"ms_{name}"] = ms
        row[f"floor_x_{name}"] = ms / floor_ms if ms else None
        if name == "kernel" and ms:
            row["kernel_split_ms"] = kernel_split_ms(fn)
    del ref
    return row


def print_table(rows: list[dict]) -> None:
    head = (
        f"{'L':>8} {'gate':<6}{'BxH':>10}{'N0xm':>11}{'floor':>7}{'t_fp32':>8}{'t_bf16':>8}"
        f"{'triton':>8}{'kernel':>8}{'k/flr':>7}{'k_l2':>8}{'fwd/rows/inv ms':>20}{'err':>9}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        split = r.get("kernel_split_ms") or {}
        parts = "/".join(fmt(split.get(k), ".2f") for k in KERNEL_NAMES) if split else "-"
        shape, split_ = f"{r['B']}x{r['H']}", f"{r['split'][0]}x{r['split'][1]}"
        print(
            f"{r['L']:>8} {'gated' if r['gated'] else 'plain':<6}{shape:>10}{split_:>11}"
            f"{fmt(r['floor_ms'], '.3f'):>7}"
            f"{fmt(r.get('ms_torch_fp32'), '.2f'):>8}{fmt(r.get('ms_torch_bf16'), '.2f'):>8}"
            f"{fmt(r.get('ms_triton'), '.2f'):>8}{fmt(r.get('ms_kernel'), '.3f'):>8}"
            f"{fmt(r.get('floor_x_kernel'), '.1f'):>7}{fmt(r.get('ms_kernel_l2'), '.3f'):>8}"
            f"{parts:>20}{fmt(r.get('err_kernel'), '.1e'):>9}"
        )
    print(
        "ms: do_bench medians; floor: u, y (+ gates) at 2 B/element over the measured copy "
        "bandwidth; k/flr: kernel / floor; k_l2: chunks of 24 MiB"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--lengths", type=int, nargs="*", default=list(LENGTHS))
    parser.add_argument("--splits", action="store_true", help="also time other outer sizes")
    parser.add_argument("--no-torch", action="store_true", help="skip the torch.fft baselines")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("benchmarks.fftconv_long needs a CUDA device")
    copy_bw = measure_copy_bandwidth(warmup=10, rep=60)
    meta = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python -m benchmarks.fftconv_long", *(argv or sys.argv[1:])]),
        "total_elements": TOTAL,
        "copy_bytes_per_s_measured": copy_bw,
    }
    print(f"{meta['gpu']}  torch {meta['torch']}  triton {meta['triton']}  copy "
          f"{copy_bw / 1e12:.2f} TB/s", flush=True)  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for L in args.lengths:
        for gated in (False, True):
            row = bench_length(L, gated, args.splits and not gated, not args.no_torch, copy_bw)
            rows.append(row)
            print(json.dumps(row), flush=True)
            # written after every row: a run cut short still leaves its numbers
            args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
            torch.cuda.empty_cache()
    print_table(rows)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
