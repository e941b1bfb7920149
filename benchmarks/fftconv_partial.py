"""Partial convolutions on a GPU: the blocked plan against the dense one, and both against
torch.fft. Causal, bf16, B*H*L = 2^27, gated (pregate, postgate, bias; ``--gates hyena``:
pregate and bias).

    python -m benchmarks.fftconv_partial --out benchmarks/results/partial-<gpu>-<date>.json

A filter of ``taps`` lags on a sequence of L. Rows: the issue's ``taps = L/8`` from 2K to 32K,
fixed filters (1K, 4K taps) on 64K to 4M tokens (a model trained on short sequences run on
long ones), and a few sizes either side of the default's threshold. Per row:

- ``dense``: ``filter_spectrum(k, L, blocked=False)``, one FFT of size next_pow2(L + taps - 1)
  (the only plan before blocking);
- ``blocked``: ``blocked=True``, ``L / S`` transforms of size ``2S``, ``S = max(256,
  next_pow2(taps))``; what ``blocked=None`` (the default) picks is recorded too;
- ``torch.fft``: the fp32 torch.fft path of benchmarks.fftconv (``torch_path_fp32``, FFT size 2L).

Each public call (spectrum included) is checked against the torch.fft path first (relative
error, bf16 tolerance); then forward and forward+backward medians (``triton.testing.do_bench``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from benchmarks.common import fmt, gpu_run_meta, ratio, rel_err, time_forward_backward
from benchmarks.fftconv import torch_path_fp32
from kernels import fftconv, filter_spectrum
from kernels.fftconv.plan import make_plan

TOTAL = 2**27  # B * H * L
TOL_BF16 = 1e-2
ROWS = (
    # the filter = L/8
    *((L, L // 8) for L in (2048, 4096, 8192, 16384, 32768)),
    # short filters on long sequences
    *((L, taps) for L in (65536, 1 << 20, 1 << 22) for taps in (1024, 4096)),
    # either side of the default's threshold (plan.min_block_gain)
    (1024, 256),
    (2048, 256),
    (2048, 512),
    (2048, 1024),
    (4096, 1024),
    (4096, 2048),
    (8192, 4096),
)


GATES = ("full", "hyena")  # pregate, postgate, bias; or Hyena's pregate and bias


def inputs_for(L: int, taps: int, gates: str = "full") -> tuple:
    H = min(1024, TOTAL // L)
    B = TOTAL // (H * L)
    gen = torch.Generator(device="cuda").manual_seed(L + taps)
    u, pre, post = (
        torch.randn(B, H, L, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(3)
    )
    k = torch.randn(H, taps, device="cuda", generator=gen)
    k = k / (1 + torch.arange(taps, device="cuda")) ** 0.5
    bias = torch.randn(H, device="cuda", generator=gen)
    return u, k, pre, post if gates == "full" else None, bias


def bench_row(L: int, taps: int, gates: str = "full") -> dict:
    u, k, pre, post, bias = inputs_for(L, taps, gates)
    B, H, _ = u.shape
    dense_plan = make_plan("causal", L, taps, blocked=False)
    blocked_plan = make_plan("causal", L, taps, blocked=True)
    auto_plan = make_plan("causal", L, taps)
    row = {
        "L": L,
        "taps": taps,
        "B": B,
        "H": H,
        "n_dense": dense_plan.fft_size,
        "n_blocked": blocked_plan.fft_size,
        "blocks": blocked_plan.num_blocks,
        "default": "blocked" if auto_plan.blocked else "dense",
        "gates": gates,
    }

    def call(u, k, pre, post, bias, plan_kind):
        if plan_kind == "torch":
            return torch_path_fp32(u, k, pre, post, bias).to(u.dtype)
        spec = filter_spectrum(k, L, blocked=plan_kind == "blocked", backend="triton")
        return fftconv(u, spec, pregate=pre, postgate=post, bias=bias)

    ref = torch_path_fp32(u, k, pre, post, bias)
    kinds = ("torch", "dense", "blocked")
    ok = {}
    for kind in kinds:
        row[f"err_{kind}"] = rel_err(call(u, k, pre, post, bias, kind), ref)
        ok[kind] = row[f"err_{kind}"] < TOL_BF16  # NaN fails too
    del ref

    row |= time_forward_backward(
        lambda kind, *xs: call(*xs, kind), kinds, (u, k, pre, post, bias), ok
    )
    row["peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return row


def print_table(rows: list[dict]) -> None:
    print(
        "| L | taps | n dense / blocked | fwd torch.fft / dense / blocked (ms) | blocked vs dense "
        "| fwd+bwd torch.fft / dense / blocked (ms) | blocked vs dense | default |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        fwd = " / ".join(fmt(r.get(f"fwd_ms_{k}"), ".2f") for k in ("torch", "dense", "blocked"))
        both = " / ".join(
            fmt(r.get(f"fwdbwd_ms_{k}"), ".2f") for k in ("torch", "dense", "blocked")
        )
        print(
            f"| {r['L']} | {r['taps']} | {r['n_dense']} / {r['n_blocked']} | {fwd} | "
            f"{ratio(r.get('fwd_ms_dense'), r.get('fwd_ms_blocked'))}x | {both} | "
            f"{ratio(r.get('fwdbwd_ms_dense'), r.get('fwdbwd_ms_blocked'))}x | {r['default']} |"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument(
        "--rows", nargs="*", default=None, help="L:taps pairs (default: the module's ROWS)"
    )
    parser.add_argument(
        "--gates",
        choices=GATES,
        default="full",
        help="full: pregate, postgate, bias; hyena: "
        "pregate and bias (Hyena's long convolutions, whose x0 gate is applied outside)",
    )
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("benchmarks.fftconv_partial needs a CUDA GPU")
    rows_wanted = ROWS
    if args.rows:
        try:
            rows_wanted = tuple(tuple(int(x) for x in r.split(":")) for r in args.rows)
        except ValueError:
            sys.exit(f"--rows takes L:taps pairs of integers; got {args.rows}")
    rows = []
    for L, taps in rows_wanted:
        torch.cuda.reset_peak_memory_stats()
        rows.append(bench_row(L, taps, args.gates))
        print(json.dumps(rows[-1]), flush=True)
        torch.cuda.empty_cache()
    print_table(rows)
    result = {**gpu_run_meta("benchmarks.fftconv_partial", argv), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
