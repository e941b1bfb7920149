"""Long-context evaluation of a Hyena LM with a partial filter: a model trained at 2K run on up
to millions of tokens, its long convolutions blocked or in one FFT of the whole sequence.

    python -m benchmarks.long_context --out benchmarks/results/long-context-<gpu>-<date>.json
        [--lengths 16384 65536 262144 1048576] [--filter-len 2048] [--preset hyena-s]
    python -m benchmarks.long_context --smoke --out <file>     # hyena-tiny, CPU or GPU

Per length (batch 1) and plan: the loss of a random token sequence as ``eval.py`` computes it
(``model.loss``: the head fused into the cross-entropy, so the [L, vocab] logits never exist),
under ``torch.no_grad`` and bf16 autocast on CUDA. ``blocked`` and ``dense`` set every
``FFTConv`` layer's ``blocked`` to True or False (``kernels.fftconv.plan``: blocks of the
filter's size, or one FFT of the whole sequence). Reported: median milliseconds of the
forward (CUDA events, after a warm-up call), tokens/s, the peak memory of the forward, and
the two plans' losses (they must agree: the plan changes rounding only).
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
from pathlib import Path

import torch

from benchmarks.common import fmt, ratio
from benchmarks.train_throughput import StepTimer
from kernels.fftconv import FFTConv
from models.lm import HyenaLM

LENGTHS = (16384, 65536, 262144, 1 << 20)
SMOKE_LENGTHS = (512, 2048)
PLANS = ("blocked", "dense")
GIB = 2**30


def set_plan(model: torch.nn.Module, plan: str) -> int:
    """Every ``FFTConv`` of the model to the plan; returns how many there are."""
    layers = [m for m in model.modules() if isinstance(m, FFTConv)]
    for layer in layers:
        layer.blocked = plan == "blocked"
    return len(layers)


def measure(model: HyenaLM, L: int, plan: str, device: torch.device, reps: int) -> dict:
    row: dict = {"L": L, "plan": plan, "layers": set_plan(model, plan)}
    gen = torch.Generator(device=device).manual_seed(L)
    tokens = torch.randint(0, model.config.vocab_size, (1, L + 1), device=device, generator=gen)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def forward() -> torch.Tensor:
        with torch.no_grad(), autocast:
            return model.loss(inputs, targets, reduction="mean")

    try:
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        row["loss"] = float(forward())  # warm-up: Triton compiles, tables built
        timer = StepTimer(device)
        for _ in range(reps):
            with timer.step():
                forward()
        ms = timer.ms()
    except torch.OutOfMemoryError as e:
        row["status"] = f"out of memory: {str(e).splitlines()[0]}"
        return row
    row["ms"] = statistics.median(ms)
    row["ms_all"] = ms
    row["tokens_per_s"] = L / (row["ms"] * 1e-3)
    if device.type == "cuda":
        row["peak_gib"] = torch.cuda.max_memory_allocated(device) / GIB
    row["status"] = "ok"
    return row


def print_table(rows: list[dict], lengths: list[int]) -> None:
    print("| L | blocked ms | dense ms | blocked vs dense | blocked tokens/s | peak GiB b / d |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for L in lengths:
        b = next((r for r in rows if r["L"] == L and r["plan"] == "blocked"), {})
        d = next((r for r in rows if r["L"] == L and r["plan"] == "dense"), {})
        peak = f"{fmt(b.get('peak_gib'), '.1f')} / {fmt(d.get('peak_gib'), '.1f')}"
        print(
            f"| {L} | {fmt(b.get('ms'), '.1f')} | {fmt(d.get('ms'), '.1f')} | "
            f"{ratio(d.get('ms'), b.get('ms'))}x | {fmt(b.get('tokens_per_s'), '.0f')} | {peak} |"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--lengths", type=int, nargs="+", help=f"default {list(LENGTHS)}")
    parser.add_argument("--filter-len", type=int, default=2048, help="taps of the long filters")
    parser.add_argument("--preset", default="hyena-s", help="HyenaLM preset (trained context)")
    parser.add_argument("--reps", type=int, default=3, help="timed forwards per configuration")
    parser.add_argument("--smoke", action="store_true", help="hyena-tiny, short lengths")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    preset = "hyena-tiny" if args.smoke else args.preset
    lengths = args.lengths or list(SMOKE_LENGTHS if args.smoke else LENGTHS)
    if args.smoke:
        args.filter_len = min(args.filter_len, 256)
    if any(L < 1 for L in lengths) or args.reps < 1:
        parser.error("--lengths and --reps must be positive")
    torch.manual_seed(0)
    with torch.device(device):
        model = HyenaLM.from_name(preset, filter_len=args.filter_len)
    model.eval()
    meta = {
        "date": datetime.date.today().isoformat(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "command": "python -m benchmarks.long_context " + " ".join(argv or sys.argv[1:]),
        "torch": torch.__version__,
        "preset": preset,
        "params": sum(p.numel() for p in model.parameters()),
        "filter_len": args.filter_len,
        "l_max": model.config.l_max,
    }
    rows = []
    for L in lengths:
        for plan in PLANS:
            rows.append(measure(model, L, plan, device, args.reps))
            print(json.dumps(rows[-1]), flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({**meta, "rows": rows}, indent=1))
    print_table(rows, lengths)
    return 0


if __name__ == "__main__":
    sys.exit(main())
