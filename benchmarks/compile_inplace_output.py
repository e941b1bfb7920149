"""Whether ``torch.compile`` keeps the gradients of an autograd Function whose forward adds a
bias in place into its own output (``y = x @ W^T; y += b``): the pattern that once zeroed every
gradient of the Hyena mixer branch under compile (``benchmarks/NOTES.md``, training step v6).

    python -m benchmarks.compile_inplace_output --out benchmarks/results/<name>.json

One row per device (cpu, and cuda when there is one), with and without an inner
``autocast(enabled=False)``, and per dynamo backend (``eager``: dynamo alone; ``aot_eager``:
with AOTAutograd): the relative error of the compiled gradients of x, W and b against eager.
On torch 2.11 every row gives 1.0 (all three gradients zero); torch 2.13 gives 0. The models
therefore never mutate a Function's output in place (``models.projections``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from contextlib import nullcontext
from pathlib import Path

import torch


class BiasedLinear(torch.autograd.Function):
    """[B, d_in, L] -> [B, L, d_out] with the bias added in place to the matmul's output."""

    @staticmethod
    def forward(ctx, v, w, b, autocast_off: bool):
        ctx.save_for_backward(v, w)
        off = torch.autocast(v.device.type, enabled=False) if autocast_off else nullcontext()
        with off:
            y = torch.bmm(v.transpose(1, 2), w.t().expand(v.shape[0], -1, -1))
            y += b
        return y

    @staticmethod
    def backward(ctx, dy):
        v, w = ctx.saved_tensors
        dv = torch.bmm(w.t().expand(dy.shape[0], -1, -1), dy.transpose(1, 2))
        dw = torch.bmm(dy.transpose(1, 2), v.transpose(1, 2)).sum(0)
        return dv, dw, dy.sum((0, 1)), None


def gradients(fn, v, w, b, autocast_off: bool) -> list[torch.Tensor]:
    leaves = [t.detach().requires_grad_() for t in (v, w, b)]
    out = fn(*leaves, autocast_off)
    gen = torch.Generator(v.device).manual_seed(3)
    weight = torch.randn(out.shape, device=v.device, generator=gen)
    return list(torch.autograd.grad((out * weight).sum(), leaves))


def rows(device: str) -> list[dict]:
    gen = torch.Generator(device).manual_seed(0)
    v = torch.randn(2, 8, 33, device=device, generator=gen)
    w = torch.randn(12, 8, device=device, generator=gen)
    b = torch.randn(12, device=device, generator=gen)
    out = []
    for autocast_off in (False, True):
        for backend in ("eager", "aot_eager"):
            torch._dynamo.reset()
            ref = gradients(BiasedLinear.apply, v, w, b, autocast_off)
            compiled = torch.compile(BiasedLinear.apply, backend=backend)
            got = gradients(compiled, v, w, b, autocast_off)
            errs = [float((g - r).norm() / r.norm()) for g, r in zip(got, ref, strict=True)]
            out.append(
                {
                    "device": device,
                    "autocast_off": autocast_off,
                    "backend": backend,
                    "rel_err_x_w_b": errs,
                    "ok": max(errs) < 1e-5,
                }
            )
            print(f"{device} autocast_off={autocast_off} {backend}: rel errors {errs}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    doc = {
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(
            ["python -m benchmarks.compile_inplace_output", *(argv or sys.argv[1:])]
        ),
        "rows": [r for d in devices for r in rows(d)],
    }
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
