"""Times ``spectrum_layout_kernel`` (the filter spectrum's rfft -> the fused kernels' tile
order, once per fftconv call) per launch variant, against the bytes it must move.

    python -m benchmarks.spectrum_layout --out benchmarks/results/<name>.json [--heads 1024]

Per FFT size (the short path's n = 512 .. 8192, N0 = 1, and one long-path shape): each
variant's output is checked against the torch ops' layout (the same values bit for bit),
then timed replayed as a CUDA graph (median: the device's time; with ``do_bench`` a kernel
this short measures the host's launch latency, 7-50 us apart run to run); the floor is
reading the rfft (8 bytes a bin) and writing the layout (8 bytes an entry of the full
spectrum) at the measured copy bandwidth. At L = 1K
on the fftconv benchmark's shape (H = 1024) the layout took 41 us of a 520 us forward.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch

from benchmarks.common import copy_bandwidth, gpu_run_meta, graph_median_ms
from kernels.fftconv import triton_fwd, triton_long

SHORT_SIZES = (512, 1024, 2048, 4096, 8192)
LONG_SHAPE = (16, 64, 32)  # n0, M1, M2: a long-path layout (n = 32768)
VARIANTS = {
    f"j{bj}-a{ba}-w{w}": {"block_j": bj, "block_a": ba, "num_warps": w}
    for bj, ba, w in itertools.product((16, 32, 64), (16, 32), (2, 4, 8))
}


def shapes() -> list[tuple[int, int, int]]:
    return [(1, *triton_fwd.split(n)) for n in SHORT_SIZES] + [LONG_SHAPE]


def reference(kf: torch.Tensor, n0: int, M1: int, M2: int) -> torch.Tensor:
    """The layout by the torch ops (the long path's own, ``kernel=False``; with ``n0 = 1`` the
    short path's), [H, n0, 2, M1, M2]."""
    m = M1 * M2
    split = triton_long.LongSplit(n0 * m, n0, m, n0, 1)
    return triton_long.spectrum_layout(kf, split, kernel=False)


def run_shape(H: int, n0: int, M1: int, M2: int, copy_bps: float) -> dict:
    n = n0 * M1 * M2
    gen = torch.Generator(device="cuda").manual_seed(n)
    kf = torch.randn(H, n // 2 + 1, dtype=torch.complex64, device="cuda", generator=gen)
    ref = reference(kf, n0, M1, M2)
    bytes_moved = H * (n // 2 + 1) * 8 + H * n * 8
    row = {"H": H, "n": n, "n0": n0, "M1": M1, "M2": M2, "bytes": bytes_moved}
    row["floor_us"] = bytes_moved / copy_bps * 1e6

    def layout(**opts):
        return triton_fwd.launch_layout(kf, n0, M1, M2, M2, 0, **opts)

    row["default_us"] = graph_median_ms(layout) * 1e3
    for name, opts in VARIANTS.items():
        if opts["block_a"] > M2:
            continue
        out = layout(**opts)
        if not torch.equal(out, ref):
            row[f"us_{name}"] = None
            row[f"wrong_{name}"] = True
            continue
        row[f"us_{name}"] = (
            graph_median_ms(lambda o=opts: triton_fwd.launch_layout(kf, n0, M1, M2, M2, 0, **o))
            * 1e3
        )
    timed = {k: v for k, v in row.items() if k.startswith("us_") and v}
    best = min(timed, key=timed.get)
    row["best"] = best.removeprefix("us_")
    row["best_us"] = timed[best]
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--heads", type=int, default=1024)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("benchmarks.spectrum_layout needs a CUDA GPU")
    copy_bps = copy_bandwidth()
    doc = {**gpu_run_meta("benchmarks.spectrum_layout", argv), "copy_bytes_per_s": copy_bps}
    doc["defaults"] = {
        "block_j": triton_fwd.LAYOUT_BLOCK_J,
        "block_a": triton_fwd.LAYOUT_BLOCK_A,
        "num_warps": triton_fwd.LAYOUT_WARPS,
    }
    doc["rows"] = []
    print("| n (n0 x M1 x M2) | floor us | default us | best | best us |")
    print("| --- | ---: | ---: | --- | ---: |")
    for n0, M1, M2 in shapes():
        row = run_shape(args.heads, n0, M1, M2, copy_bps)
        doc["rows"].append(row)
        args.out.write_text(json.dumps(doc, indent=1) + "\n")
        print(
            f"| {row['n']} ({n0}x{M1}x{M2}) | {row['floor_us']:.1f} | {row['default_us']:.1f} | "
            f"{row['best']} | {row['best_us']:.1f} |",
            flush=True,
        )
    wrong = [k for r in doc["rows"] for k in r if k.startswith("wrong_")]
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
