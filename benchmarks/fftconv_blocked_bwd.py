"""The blocked backward kernel per launch configuration on a GPU: is the dense plan's default
(``triton_bwd.config_for``) also the best for blocked plans?

    python -m benchmarks.fftconv_blocked_bwd --out benchmarks/results/<name>.json [--sizes ...]

Per FFT size n = 2S (512..8192): B*H*L = 2^27 in bf16 with L = 8S (eight blocks per row), Hyena's
gates (pregate and bias, no postgate: what a Hyena layer's convolution asks for), all four of
their gradients. The default configuration and its neighbours (warps, hoisted tables,
accumulator in memory, pipelining, split) are each checked against the default's output
(relative error; a launch that fails, e.g. for shared memory, is recorded) and timed
(``triton.testing.do_bench`` median of the bare launch).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

from benchmarks.common import gpu_run_meta, median_ms, rel_err
from kernels.fftconv import triton_bwd

TOTAL = 2**27
H = 1024
SIZES = (512, 1024, 2048, 4096, 8192)
NEEDS = (True, True, True, False, True)  # u, k, pregate, (postgate), bias


def variants(n: int) -> dict[str, triton_bwd.Config]:
    """The default and its one-step neighbours."""
    base = triton_bwd.config_for(n, torch.bfloat16)
    out = {"default": base}
    out["hoist" if not base.hoist else "no-hoist"] = dataclasses.replace(base, hoist=not base.hoist)
    out["acc-mem" if not base.acc_in_memory else "acc-regs"] = dataclasses.replace(
        base, acc_in_memory=not base.acc_in_memory
    )
    for warps in (base.num_warps // 2, base.num_warps * 2):
        if 2 <= warps <= 16:
            out[f"warps{warps}"] = dataclasses.replace(base, num_warps=warps)
    if base.stages > 1:
        out[f"stages{base.stages - 1}"] = dataclasses.replace(base, stages=base.stages - 1)
    else:
        out["steps8-stages2"] = dataclasses.replace(base, steps=8, stages=2)
    for split in ("fused", "store_q"):
        if split != base.split:
            out[f"split-{split}"] = dataclasses.replace(base, split=split)
            if base.stages > 1:
                out[f"split-{split}-stages{base.stages - 1}"] = dataclasses.replace(
                    base, split=split, stages=base.stages - 1
                )
                out[f"split-{split}-acc-mem"] = dataclasses.replace(
                    base, split=split, acc_in_memory=True
                )
    if n == 4096:
        out["n1-64"] = dataclasses.replace(base, n1=64, num_warps=4)
    return out


def bench_size(n: int) -> dict:
    S = n // 2
    L = 8 * S
    B = max(1, TOTAL // (H * L))
    gen = torch.Generator(device="cuda").manual_seed(n)
    u, pre, dy = (
        torch.randn(B, H, L, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(3)
    )
    taps = S // 2
    k = torch.randn(H, taps, device="cuda", generator=gen) / (1 + torch.arange(taps, device="cuda"))
    kf = torch.fft.rfft(k, n=n)
    bias = torch.randn(H, device="cuda", generator=gen)
    row: dict = {"n": n, "B": B, "H": H, "L": L, "blocks": 8, "taps": taps}
    ref = None
    for name, config in variants(n).items():
        row[f"config_{name}"] = dataclasses.asdict(config)

        def run(config=config):
            return triton_bwd.launch(
                dy, u, kf, pre, None, bias, n, NEEDS, config=config, blocked=True
            )

        try:
            got = list(run())
            got[1] = triton_bwd.dk_from_spectrum(got[1], taps, n // 2 + 1)  # any factors
        except Exception as e:  # noqa: BLE001 - recorded: e.g. OutOfResources for shared memory
            row[f"error_{name}"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            continue
        if ref is None:
            ref = [g.float().clone() if g is not None else None for g in got]
        errs = [rel_err(g, r) for g, r in zip(got, ref, strict=True) if g is not None]
        row[f"err_{name}"] = max(errs)
        row[f"ms_{name}"] = median_ms(run) if max(errs) < 1e-2 else None
    times = {k[3:]: v for k, v in row.items() if k.startswith("ms_") and v is not None}
    row["best"] = min(times, key=times.get) if times else None
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--sizes", type=int, nargs="*", default=list(SIZES))
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("benchmarks.fftconv_blocked_bwd needs a CUDA GPU")
    result = {**gpu_run_meta("benchmarks.fftconv_blocked_bwd", argv), "rows": []}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for n in args.sizes:
        row = bench_size(n)
        result["rows"].append(row)
        times = {k[3:]: round(v, 3) for k, v in row.items() if k.startswith("ms_") and v}
        print(n, "best", row["best"], times, flush=True)
        args.out.write_text(json.dumps(result, indent=1))  # after every size
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
