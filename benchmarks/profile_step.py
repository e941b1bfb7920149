"""Where one training step of a model spends its GPU time: ``torch.profiler`` over a few steps
of ``benchmarks.train_throughput``'s step (bf16 autocast, AdamW, clipping), kernels grouped.

    python -m benchmarks.profile_step --model hyena-triton --lengths 4096 8192 [--out f.json]
        [--compile MODE] [--attribute]

Prints, per (model, length), the top kernels by total CUDA time and the share of time in
each group (fftconv kernels, short conv, matmuls, elementwise/other). ``--attribute`` also
charges each kernel to the operator that launched it: the op, its callers up the op tree
(``autograd::engine::evaluate_function: XBackward0`` for the backward), the input shapes and
the first frame in this repository's code, so that a copy kernel names its caller.
``--compile MODE`` profiles the step that ``train_throughput --compile MODE`` times (the trunk
compiled; ``default`` shows the same kernels as ``reduce-overhead`` without the graphs).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.train_throughput import COMPILE_MODES, MODELS, make_step

GROUPS = (  # (group, substrings of kernel names), first match wins
    ("inductor (fused elementwise)", ("triton_poi_", "triton_red_", "triton_per_")),
    ("fftconv (triton)", ("_fftconv", "rows_kernel", "cols_", "_long", "spectrum_layout")),
    ("short_conv (triton)", ("_short_conv",)),
    ("add_layer_norm (triton)", ("_add_layer_norm",)),
    ("loss (liger)", ("liger", "element_mul_kernel")),
    ("optimizer", ("multi_tensor_apply", "fused_adam", "FusedAdam")),
    ("fft (cuFFT)", ("fft", "FFT", "regular_fft", "vector_fft")),
    ("matmul", ("gemm", "Gemm", "cutlass", "sm90_xmma", "nvjet", "cublas")),
    ("attention", ("flash", "fmha", "attention")),
)


def group_of(name: str) -> str:
    for group, keys in GROUPS:
        if any(k in name for k in keys):
            return group
    return "elementwise/other"


OWN_CODE = ("models/", "kernels/", "benchmarks/", "data/")


def attribute(prof, steps: int, top: int = 30) -> list[dict]:
    """Kernel time per step, charged to (op chain, input shapes, first own frame)."""
    charged: dict[tuple, float] = {}
    for evt in prof.events():
        us = getattr(evt, "self_device_time_total", None)
        if us is None:
            us = getattr(evt, "self_cuda_time_total", 0.0)
        if not us or evt.device_type != torch.autograd.DeviceType.CPU:
            continue
        chain, parent = [evt.name], evt.cpu_parent
        while parent is not None and len(chain) < 5:
            chain.append(parent.name)
            parent = parent.cpu_parent
        frame = next((f for f in (evt.stack or []) if any(k in f for k in OWN_CODE)), "")
        key = (" < ".join(chain), str(evt.input_shapes)[:160], frame)
        charged[key] = charged.get(key, 0.0) + us / steps / 1e3
    rows = sorted(charged.items(), key=lambda kv: -kv[1])[:top]
    return [{"ms": ms, "ops": c, "shapes": sh, "frame": fr} for (c, sh, fr), ms in rows]


def profile_config(
    name: str,
    seq_len: int,
    tokens: int,
    steps: int,
    with_attribution: bool = False,
    compile: str | None = None,
) -> dict:
    device = torch.device("cuda")
    batch = max(1, tokens // seq_len)
    model = MODELS[name].build(False, seq_len).to(device)
    step = make_step(model, device, compile=compile)
    gen = torch.Generator(device=device).manual_seed(0)
    vocab = model.config.vocab_size
    inputs = torch.randint(0, vocab, (batch, seq_len), device=device, generator=gen)
    targets = torch.randint(0, vocab, (batch, seq_len), device=device, generator=gen)
    for _ in range(3):
        step(inputs, targets)
    torch.cuda.synchronize()
    activities = [ProfilerActivity.CUDA]
    if with_attribution:
        activities.append(ProfilerActivity.CPU)
    with profile(
        activities=activities, record_shapes=with_attribution, with_stack=with_attribution
    ) as prof:
        for _ in range(steps):
            step(inputs, targets)
        torch.cuda.synchronize()
    attributed = attribute(prof, steps) if with_attribution else []
    kernels: dict[str, float] = {}
    for evt in prof.key_averages():
        # with CPU activity on, CPU ops are listed too (their time is their kernels' sum)
        if evt.device_type != torch.autograd.DeviceType.CPU or not with_attribution:
            us = getattr(evt, "device_time_total", None) or getattr(evt, "cuda_time_total", 0.0)
            if us > 0 and evt.key:
                kernels[evt.key] = kernels.get(evt.key, 0.0) + us / steps / 1e3  # ms per step
    # without CPU activity, the ops that launched kernels still appear: keep kernels only
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
        "compile": compile,
        "ms_per_step": total,
        "groups": groups,
        "top": top,
        "attributed": attributed,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["hyena-triton"], choices=list(MODELS))
    parser.add_argument("--lengths", type=int, nargs="*", default=[4096, 8192])
    parser.add_argument("--tokens-per-step", type=int, default=65536)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--attribute", action="store_true", help="charge kernels to their ops")
    parser.add_argument("--compile", choices=COMPILE_MODES, help="torch.compile mode of the trunk")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("benchmarks.profile_step needs a CUDA device")
    rows = []
    for name in args.models:
        for L in args.lengths:
            row = profile_config(
                name, L, args.tokens_per_step, args.steps, args.attribute, args.compile
            )
            rows.append(row)
            print(f"\n## {name} L={L} batch={row['batch']}: {row['ms_per_step']:.1f} ms of kernels")
            for g, ms in sorted(row["groups"].items(), key=lambda kv: -kv[1]):
                print(f"  {g:<22}{ms:8.1f} ms  {100 * ms / row['ms_per_step']:5.1f}%")
            for k, ms in row["top"][:10]:
                print(f"    {ms:7.2f} ms  {k[:100]}")
            for a in row["attributed"][:25]:
                print(f"    {a['ms']:7.2f} ms  {a['ops'][:110]}  {a['shapes'][:70]}  {a['frame']}")
    if args.out:
        args.out.write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
