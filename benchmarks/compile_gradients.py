"""Whether ``torch.compile`` of a Hyena LM's trunk gives eager's gradients: one forward +
backward of the same model and batch, eager and compiled, per backend variant; the parameters
whose compiled gradient is missing or all zero and the largest relative differences.

    python -m benchmarks.compile_gradients --out benchmarks/results/<name>.json
        [--device cuda] [--seq-len 512] [--mode default] [--variants all fft-torch ...]

Variants switch one part of the step to its PyTorch version (the rest as ``auto`` picks it):
``all`` (nothing switched), ``fft-torch`` (fftconv), ``short-torch`` (short_conv),
``norm-torch`` (add + LayerNorm), ``norm-unfused`` (``nn.LayerNorm`` modules), ``loss-torch``
(the chunked fused loss instead of liger's). A correctness check, not a timing: the output
says which part a wrong gradient comes from (``benchmarks/NOTES.md``, training step v5).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import sys
from pathlib import Path

import torch

from models.lm import HyenaLM

VARIANTS = {
    "all": {},
    "fft-torch": {"fft": "torch"},
    "short-torch": {"short": "torch"},
    "norm-torch": {"norm": "torch"},
    "norm-unfused": {"norm": "unfused"},
    "loss-torch": {"loss": "torch"},
}


def gradients(variant: str, mode: str | None, args: argparse.Namespace) -> dict[str, torch.Tensor]:
    """One forward + backward of a fresh hyena-tiny (seed 0) on a fixed batch (seed 1)."""
    v = VARIANTS[variant]
    short_conv = importlib.import_module("kernels.short_conv.interface")
    resolve = short_conv.resolve_backend
    if v.get("short") == "torch":  # every short conv on its torch backend
        short_conv.resolve_backend = lambda backend, device, taps: "torch"
    try:
        torch._dynamo.reset()
        torch.manual_seed(0)
        fft = v.get("fft", "triton" if args.device == "cuda" else "torch")
        net = HyenaLM.from_name(
            "hyena-tiny",
            l_max=args.seq_len,
            vocab_size=61,
            n_layer=args.layers,
            fftconv_backend=fft,
            norm_backend=v.get("norm", "auto"),
        ).to(args.device)
        if mode is not None:  # as train_throughput --compile does: the trunk only
            net.hidden = torch.compile(net.hidden, mode=mode)
        gen = torch.Generator(args.device).manual_seed(1)
        tok = torch.randint(0, 61, (2, args.seq_len + 1), device=args.device, generator=gen)
        loss = net.loss(tok[:, :-1], tok[:, 1:], reduction="mean", backend=v.get("loss", "auto"))
        loss.backward()
        return {
            n: (p.grad.detach().float().cpu() if p.grad is not None else None)
            for n, p in net.named_parameters()
        } | {"__loss__": loss.detach().float().cpu()}
    finally:
        short_conv.resolve_backend = resolve
        torch._dynamo.reset()


def compare(eager: dict, compiled: dict) -> dict:
    dead = [n for n, g in compiled.items() if n != "__loss__" and (g is None or not g.any())]
    rel = {
        n: float((compiled[n] - g).norm() / g.norm())
        for n, g in eager.items()
        if n != "__loss__" and g is not None and compiled[n] is not None and g.norm() > 0
    }
    worst = sorted(rel.items(), key=lambda kv: -kv[1])[:5]
    return {
        "loss_eager": float(eager["__loss__"]),
        "loss_compiled": float(compiled["__loss__"]),
        "parameters": len(rel),
        "dead_in_compiled": dead,
        "worst_rel_err": worst,
        "ok": not dead and all(e < 0.05 for _, e in worst),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--mode", default="default", help="torch.compile mode")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    args = parser.parse_args(argv)
    rows = []
    for variant in args.variants:
        row = {"variant": variant} | compare(
            gradients(variant, None, args), gradients(variant, args.mode, args)
        )
        rows.append(row)
        print(
            f"{variant}: {'ok' if row['ok'] else 'WRONG'}  {len(row['dead_in_compiled'])} of "
            f"{row['parameters']} without gradient, worst {row['worst_rel_err'][:2]}",
            flush=True,
        )
    doc = {
        "device": args.device,
        "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python -m benchmarks.compile_gradients", *(argv or sys.argv[1:])]),
        "rows": rows,
    }
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
