"""Where one training step of a model spends its GPU time: ``torch.profiler`` over a few steps
of ``benchmarks.train_throughput``'s step (bf16 autocast, AdamW, clipping), kernels grouped.

    python -m benchmarks.profile_step --model hyena-triton --lengths 4096 8192 [--out f.json]

Prints, per (model, length), the top kernels by total CUDA time and the share of time in
each group (fftconv kernels, short conv, matmuls, elementwise/other).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.train_throughput import MODELS, make_step

GROUPS = (  # (group, substrings of kernel names), first match wins
    ("fftconv (triton)", ("_fftconv", "rows_kernel", "cols_", "_long")),
    ("short_conv (triton)", ("_short_conv",)),
    ("fft (cuFFT)", ("fft", "FFT", "regular_fft", "vector_fft")),
    ("matmul", ("gemm", "Gemm", "cutlass", "sm90_xmma", "nvjet", "cublas")),
    ("attention", ("flash", "fmha", "attention")),
)


def group_of(name: str) -> str:
    for group, keys in GROUPS:
        if any(k in name for k in keys):
            return group
    return "elementwise/other"


def profile_config(name: str, seq_len: int, tokens: int, steps: int) -> dict:
    device = torch.device("cuda")
    batch = max(1, tokens // seq_len)
    model = MODELS[name].build(False, seq_len).to(device)
    step = make_step(model, device)
    gen = torch.Generator(device=device).manual_seed(0)
    vocab = model.config.vocab_size
    inputs = torch.randint(0, vocab, (batch, seq_len), device=device, generator=gen)
    targets = torch.randint(0, vocab, (batch, seq_len), device=device, generator=gen)
    for _ in range(3):
        step(inputs, targets)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step(inputs, targets)
        torch.cuda.synchronize()
    kernels: dict[str, float] = {}
    for evt in prof.key_averages():
        us = getattr(evt, "device_time_total", None) or getattr(evt, "cuda_time_total", 0.0)
        if us > 0 and evt.key:
            kernels[evt.key] = kernels.get(evt.key, 0.0) + us / steps / 1e3  # ms per step
    # key_averages also lists the CPU-side ops that launched kernels: keep kernels only,
    # i.e. the entries whose time is not the sum of others (names without "aten::")
    kernels = {k: v for k, v in kernels.items() if not k.startswith(("aten::", "autograd::"))}
    total = sum(kernels.values())
    groups: dict[str, float] = {}
    for k, v in kernels.items():
        groups[group_of(k)] = groups.get(group_of(k), 0.0) + v
    del model, step
    torch.cuda.empty_cache()
    top = sorted(kernels.items(), key=lambda kv: -kv[1])[:15]
    return {
        "model": name,
        "L": seq_len,
        "batch": batch,
        "ms_per_step": total,
        "groups": groups,
        "top": top,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["hyena-triton"], choices=list(MODELS))
    parser.add_argument("--lengths", type=int, nargs="*", default=[4096, 8192])
    parser.add_argument("--tokens-per-step", type=int, default=65536)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("benchmarks.profile_step needs a CUDA device")
    rows = []
    for name in args.models:
        for L in args.lengths:
            row = profile_config(name, L, args.tokens_per_step, args.steps)
            rows.append(row)
            print(f"\n## {name} L={L} batch={row['batch']}: {row['ms_per_step']:.1f} ms of kernels")
            for g, ms in sorted(row["groups"].items(), key=lambda kv: -kv[1]):
                print(f"  {g:<22}{ms:8.1f} ms  {100 * ms / row['ms_per_step']:5.1f}%")
            for k, ms in row["top"][:10]:
                print(f"    {ms:7.2f} ms  {k[:100]}")
    if args.out:
        args.out.write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
