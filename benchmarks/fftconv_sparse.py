"""Frequency-sparse filters on a GPU: the time the column skip saves, on the in-register kernels
(L <= 4K) and on the long path (L >= 8K). Causal, bf16, B*H*L = 2^27 with B >= 8, gated (pregate,
postgate, bias).

    python -m benchmarks.fftconv_sparse --out benchmarks/results/sparse-<gpu>-<date>.json \
        [--lengths 1024 ...] [--keep 0.25]

A filter whose rfft bins from ``keep_bins = keep * (n/2 + 1)`` on are zero (``freq_keep``) has
whole frequency columns of zeros in the kernels' tiles; the kernels compute only the others
(``triton_fwd.kept_columns``; on the long path the rows kernel's ``inner_kept_columns``, in
the forward and in d_u's correlation). Per length, each public call (filter spectrum included)
is checked against the torch.fft fp32 path on the same cut first (relative error, bf16
tolerance), then timed (``triton.testing.do_bench`` medians): forward and forward+backward, the
dense filter and the cut one on the triton backend, and the cut one on torch.fft in fp32. The
difference between dense and sparse on the triton backend is the skip's saving: the two calls
do the same work otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from benchmarks.common import fmt, gpu_run_meta, ratio, rel_err, time_forward_backward
from benchmarks.fftconv_long import make_inputs
from kernels import fftconv
from kernels.fftconv import triton_fwd, triton_long
from kernels.fftconv.plan import make_plan

TOL_BF16 = 1e-2
LENGTHS = (1024, 2048, 4096, 8192, 16384, 32768, 1 << 20, 1 << 22)
KEEP = 0.25  # 75% of the bins zero


def columns(L: int, keep: float) -> dict:
    """Which kernel runs and how many of its frequency columns the cut keeps."""
    plan = make_plan("causal", L, L, keep)
    n = plan.fft_size
    if triton_fwd.supports(n, plan.fold, torch.bfloat16):
        low, high = triton_fwd.kept_columns(n, plan.keep_bins)
        return {"path": "fused", "n": n, "columns": triton_fwd.split(n)[1], "kept": low + high}
    split = triton_long.make_split(n, dtype=torch.bfloat16)
    low, high = triton_long.inner_kept_columns(split, plan.keep_bins)
    total = triton_fwd.split(split.m)[1]
    return {"path": f"long {split.n0}x{split.m}", "n": n, "columns": total, "kept": low + high}


def bench_length(L: int, keep: float) -> dict:
    # benchmarks.fftconv_long's inputs: B >= 8 (a batch of one would ride the kernels'
    # sequence pairs half empty), H = clamp(2^27 / (8 L), 1, 1024)
    u, k, pre, post, bias = make_inputs(L, gated=True)
    B, H, _ = u.shape
    row = {"L": L, "B": B, "H": H, "freq_keep": keep, **columns(L, keep)}
    calls = {"dense": ("triton", 1.0), "sparse": ("triton", keep), "torch_sparse": ("torch", keep)}
    inputs = (u, k, pre, post, bias)

    def run(backend, freq_keep, u, k, pre, post, bias):
        if backend == "torch":  # the fp32 baseline
            u, k, pre, post, bias = (x.float() for x in (u, k, pre, post, bias))
        return fftconv(
            u, k, pregate=pre, postgate=post, bias=bias, freq_keep=freq_keep, backend=backend
        )

    def call(name, *xs):
        return run(*calls[name], *xs)

    # torch.fft in fp32 on the same cut
    refs = {freq_keep: run("torch", freq_keep, *inputs) for freq_keep in (1.0, keep)}
    ok = {}
    for name, (_, freq_keep) in calls.items():
        row[f"err_{name}"] = rel_err(call(name, *inputs), refs[freq_keep])
        ok[name] = row[f"err_{name}"] < TOL_BF16  # NaN fails too
    del refs
    return row | time_forward_backward(call, calls, inputs, ok)


def print_table(rows: list[dict]) -> None:
    print(
        "| L | path | columns kept | fwd dense / sparse (ms) | saved | fwd+bwd dense / sparse "
        "(ms) | saved | torch.fft sparse fwd / fwd+bwd (ms) |"
    )
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:

        def saved(kind, r=r):
            d, s = r.get(f"{kind}_ms_dense"), r.get(f"{kind}_ms_sparse")
            return fmt(100 * (1 - s / d) if d and s else None, ".0f") + "%"

        print(
            f"| {r['L']} | {r['path']} | {r['kept']} / {r['columns']} | "
            f"{fmt(r.get('fwd_ms_dense'))} / {fmt(r.get('fwd_ms_sparse'))} | {saved('fwd')} | "
            f"{fmt(r.get('fwdbwd_ms_dense'))} / {fmt(r.get('fwdbwd_ms_sparse'))} | "
            f"{saved('fwdbwd')} | {fmt(r.get('fwd_ms_torch_sparse'))} / "
            f"{fmt(r.get('fwdbwd_ms_torch_sparse'))} |"
        )
    speedups = [ratio(r.get("fwd_ms_torch_sparse"), r.get("fwd_ms_sparse")) for r in rows]
    print("sparse forward speedup over torch.fft:", ", ".join(speedups))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--lengths", type=int, nargs="*", default=list(LENGTHS))
    parser.add_argument("--keep", type=float, default=KEEP, help="freq_keep of the cut filter")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("benchmarks.fftconv_sparse needs a CUDA GPU")
    if not 0.0 < args.keep < 1.0:
        sys.exit(f"--keep must be in (0, 1); got {args.keep}")
    meta = gpu_run_meta("benchmarks.fftconv_sparse", argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for L in args.lengths:
        rows.append(bench_length(L, args.keep))
        print(json.dumps(rows[-1]), flush=True)
        # written after every row: a run cut short still leaves its numbers
        args.out.write_text(json.dumps({**meta, "rows": rows}, indent=1))
        torch.cuda.empty_cache()
    print_table(rows)


if __name__ == "__main__":
    main()
