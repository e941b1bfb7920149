"""Times ``short_conv`` on a GPU: triton vs the torch backend vs cuDNN's grouped ``F.conv1d``,
both layouts, bf16, B*D*L ~ 2^27, forward and forward+backward.

    python -m benchmarks.short_conv --out benchmarks/results/short_conv-<gpu>-<date>.json

Per (layout, D, L, K): correctness first (each path's bf16 output and gradients against the
torch backend in fp32 on the same inputs; a path over tolerance gets no time), then
``triton.testing.do_bench`` medians (inputs built outside the timed region) of the public call
(forward; forward+backward with dx, dw, dbias), and of the bare Triton launchers in a few
launch variants (tile elements x warps), for tuning the defaults. Reports ms, speedups, the
multiple of the HBM floor (bytes that must move at 2 bytes per element: x and y forward;
+ dy, x, dx backward) and the achieved GB/s. Writes JSON after every row.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.common import (
    best_variants,
    copy_bandwidth,
    fmt,
    gpu_run_meta,
    median_ms,
    ratio,
    rel_err,
)
from kernels import short_conv
from kernels.short_conv import reference
from kernels.short_conv import triton as triton_backend

TOTAL = 2**27  # B * D * L, approximately
CHANNELS = (1024, 2592)  # 2592 = 3 * 864: hyena-s's short-conv width (in_proj to 3 * d_model)
LENGTHS = (1024, 2048, 8192)
TAPS = (3, 4)
TOL_BF16 = 1e-2
# bare-kernel launch variants: name -> (tile elements, warps)
KERNEL_VARIANTS = {
    "t2048-w4": (2048, 4),
    "t4096-w4": (4096, 4),
    "t4096-w8": (4096, 8),
    "t8192-w8": (8192, 8),
}


def _bwd(tile: int, warps: int, tiles: int | None = None, elementwise: bool = False) -> dict:
    """A backward launch with every knob explicit (``tiles=None``: launch_plan's own chunks)."""
    return {"tile": tile, "num_warps": warps, "tiles": tiles, "elementwise": elementwise}


# backward launch variants with an input bias (Hyena's call: all four gradients), name ->
# launcher options: tile elements, warps, time tiles per program, per-element sums (K <= 4)
BWD_VARIANTS = {
    "default": {},
    "t2048-w4": _bwd(2048, 4),
    "t1024-w4": _bwd(1024, 4),
    "t1024-w2": _bwd(1024, 2),
    "t2048-w4-x4": _bwd(2048, 4, 4),
    "t2048-w4-x4-ew": _bwd(2048, 4, 4, True),
    "t1024-w4-x8-ew": _bwd(1024, 4, 8, True),
    "t1024-w2-x8-ew": _bwd(1024, 2, 8, True),
    "t2048-w8-x4-ew": _bwd(2048, 8, 4, True),
    "t4096-w8-x2-ew": _bwd(4096, 8, 2, True),
}


def conv1d_path(x, w, bias, layout: str):
    """cuDNN's grouped convolution, causal; "bld" pays the transposes a caller would."""
    K = w.shape[1]
    D = w.shape[0]
    xt = x if layout == "bdl" else x.transpose(1, 2)
    y = F.conv1d(xt, w[:, None].to(x.dtype), bias.to(x.dtype), padding=K - 1, groups=D)
    y = y[..., : xt.shape[-1]]
    return y if layout == "bdl" else y.transpose(1, 2)


def paths(layout: str) -> dict:
    """name -> fn(x, w, bias): the public call per backend, and F.conv1d."""
    return {
        "triton": lambda x, w, b: short_conv(x, w, b, layout=layout, backend="triton"),
        "torch": lambda x, w, b: short_conv(x, w, b, layout=layout, backend="torch"),
        "conv1d": lambda x, w, b: conv1d_path(x, w, b, layout),
    }


def floor_ms(elements: int, tensors: int) -> float:
    return tensors * 2 * elements / copy_bandwidth() * 1e3


def make_inputs(B, D, L, K, layout, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    shape = (B, D, L) if layout == "bdl" else (B, L, D)
    x = torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=gen)
    w = torch.randn(D, K, device="cuda", generator=gen) / K**0.5
    bias = torch.randn(D, device="cuda", generator=gen)
    dy = torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=gen)
    return x, w, bias, dy


def grads_of(fn, x, w, bias, dy):
    leaves = [t.detach().clone().requires_grad_() for t in (x, w, bias)]
    y = fn(*leaves)
    return (y, *torch.autograd.grad(y, leaves, dy))


def bench_shape(layout: str, D: int, L: int, K: int) -> dict:
    B = max(1, round(TOTAL / (D * L)))
    n = B * D * L
    x, w, bias, dy = make_inputs(B, D, L, K, layout, seed=L + K)
    row = {"layout": layout, "B": B, "D": D, "L": L, "K": K, "elements": n}
    row["floor_fwd_ms"] = floor_ms(n, 2)
    row["floor_fwdbwd_ms"] = floor_ms(n, 5)

    # the reference: the torch backend in fp32 on the same (bf16-valued) inputs
    ref = grads_of(paths(layout)["torch"], x.float(), w, bias, dy.float())
    fns = paths(layout)
    ok = {}
    for name, fn in fns.items():
        got = grads_of(fn, x, w, bias, dy)
        errs = [rel_err(a, b) for a, b in zip(got, ref, strict=True)]
        row[f"err_{name}"] = max(errs)
        ok[name] = row[f"err_{name}"] < TOL_BF16  # NaN fails too
    del ref, got

    leaves = [t.detach().clone().requires_grad_() for t in (x, w, bias)]
    for name, fn in fns.items():
        if not ok[name]:
            row[f"fwd_ms_{name}"] = row[f"fwdbwd_ms_{name}"] = None
            continue
        with torch.no_grad():
            row[f"fwd_ms_{name}"] = median_ms(lambda fn=fn: fn(x, w, bias))

        def step(fn=fn):
            fn(*leaves).backward(dy)

        row[f"fwdbwd_ms_{name}"] = median_ms(step, grad_to_none=leaves)
    row.update(time_kernels(x, w, bias, dy, layout))
    return row


def time_kernels(x, w, bias, dy, layout: str) -> dict:
    """The bare launchers per variant, each checked on NaN-poisoned outputs first."""
    y_ref = reference.forward(x, w, bias, "causal", layout)  # fp32
    needs = (True, True, True, False)
    dx_ref, dw_ref, db_ref, _ = reference.backward(dy, x, w, "causal", layout, needs)
    y, dx = torch.empty_like(x), torch.empty_like(x)
    row = {}
    for name, (tile, warps) in KERNEL_VARIANTS.items():
        opts = {"tile": tile, "num_warps": warps}

        def fwd(opts=opts):
            triton_backend.forward(x, w, bias, "causal", layout, out=y, **opts)

        def bwd(opts=opts):  # per-tile sums, launch_plan's chunks: the kernel as first tuned
            return triton_backend.backward(
                dy, x, w, "causal", layout, needs, dx_out=dx, elementwise=False, tiles=None, **opts
            )

        y.fill_(float("nan"))
        dx.fill_(float("nan"))
        fwd()
        _, dw, db, _ = bwd()
        err = max(rel_err(y, y_ref), rel_err(dx, dx_ref), rel_err(dw, dw_ref), rel_err(db, db_ref))
        row[f"err_kernel_{name}"] = err
        if not err < TOL_BF16:
            row[f"kernel_fwd_ms_{name}"] = row[f"kernel_bwd_ms_{name}"] = None
            continue
        row[f"kernel_fwd_ms_{name}"] = median_ms(fwd)
        row[f"kernel_bwd_ms_{name}"] = median_ms(bwd)
    row.update(time_bwd_variants(x, w, dy, layout))
    return row


def time_bwd_variants(x, w, dy, layout: str) -> dict:
    """The bare backward with an input bias, all four gradients (what a Hyena block's short
    conv asks for), per ``BWD_VARIANTS``, each checked on a NaN-poisoned dx first; variants
    that do not apply (per-element sums past 4 taps) are skipped."""
    D = w.shape[0]
    ib = torch.randn(D, device=x.device, generator=torch.Generator(x.device).manual_seed(7))
    needs = (True, True, True, True)
    refs = reference.backward(dy, x, w, "causal", layout, needs, input_bias=ib)
    dx = torch.empty_like(x)
    row = {}
    for name, opts in BWD_VARIANTS.items():
        if opts.get("elementwise") and w.shape[1] > 4:
            continue

        def bwd(opts=opts):
            return triton_backend.backward(
                dy, x, w, "causal", layout, needs, input_bias=ib, dx_out=dx, **opts
            )

        dx.fill_(float("nan"))
        got = bwd()
        err = max(rel_err(g, r) for g, r in zip(got, refs, strict=True))
        row[f"err_bwd_ib_{name}"] = err
        row[f"kernel_bwd_ib_ms_{name}"] = median_ms(bwd) if err < TOL_BF16 else None
    timed = {k: v for k, v in row.items() if k.startswith("kernel_bwd_ib_ms_") and v}
    if timed:
        best = min(timed, key=timed.get)
        row["bwd_ib_best"] = f"{best.removeprefix('kernel_bwd_ib_ms_')} {timed[best]:.3f}"
    return row


def print_table(rows: list[dict]) -> None:
    cols = [
        ("layout BxDxL K", lambda r: f"{r['layout']} {r['B']}x{r['D']}x{r['L']} {r['K']}"),
        ("fwd torch", lambda r: fmt(r["fwd_ms_torch"])),
        ("fwd conv1d", lambda r: fmt(r["fwd_ms_conv1d"])),
        ("fwd triton", lambda r: fmt(r["fwd_ms_triton"])),
        ("vs torch", lambda r: ratio(r["fwd_ms_torch"], r["fwd_ms_triton"])),
        ("vs conv1d", lambda r: ratio(r["fwd_ms_conv1d"], r["fwd_ms_triton"])),
        ("x floor", lambda r: ratio(r["fwd_ms_triton"], r["floor_fwd_ms"], ".1f")),
        ("fwd+bwd torch", lambda r: fmt(r["fwdbwd_ms_torch"])),
        ("fwd+bwd conv1d", lambda r: fmt(r["fwdbwd_ms_conv1d"])),
        ("fwd+bwd triton", lambda r: fmt(r["fwdbwd_ms_triton"])),
        ("vs torch", lambda r: ratio(r["fwdbwd_ms_torch"], r["fwdbwd_ms_triton"])),
        ("vs conv1d", lambda r: ratio(r["fwdbwd_ms_conv1d"], r["fwdbwd_ms_triton"])),
        ("x floor", lambda r: ratio(r["fwdbwd_ms_triton"], r["floor_fwdbwd_ms"], ".1f")),
        ("best kernel fwd / bwd", lambda r: r.get("kernel_best", "-")),
        ("bwd+ib default", lambda r: fmt(r.get("kernel_bwd_ib_ms_default"))),
        ("best bwd+ib", lambda r: r.get("bwd_ib_best", "-")),
        ("err", lambda r: fmt(r["err_triton"], ".1e")),
    ]
    print("| " + " | ".join(name for name, _ in cols) + " |")
    print("|" + " --- |" * len(cols))
    for r in rows:
        print("| " + " | ".join(fn(r) for _, fn in cols) + " |")
    print("ms: do_bench medians, bf16, causal, bias; x floor: multiple of the HBM floor")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--channels", type=int, nargs="*", default=list(CHANNELS))
    parser.add_argument("--lengths", type=int, nargs="*", default=list(LENGTHS))
    parser.add_argument("--taps", type=int, nargs="*", default=list(TAPS))
    parser.add_argument("--layouts", nargs="*", default=["bdl", "bld"], choices=["bdl", "bld"])
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("benchmarks.short_conv needs a CUDA device")

    meta = {
        **gpu_run_meta("benchmarks.short_conv", argv),
        "total_elements": TOTAL,
        "hbm_floor_bytes_per_s": copy_bandwidth(),
        "copy_bytes_per_s_measured": copy_bandwidth(),
        "defaults": {
            "tile": triton_backend.TILE,
            "num_warps": triton_backend.NUM_WARPS,
            "chunk": triton_backend.CHUNK,
            "bwd_tile": triton_backend.BWD_TILE,
            "bwd_num_warps": triton_backend.BWD_NUM_WARPS,
            "bwd_bld_tiles": triton_backend.BWD_BLD_TILES,
        },
    }
    print(
        f"{meta['gpu']}  torch {meta['torch']}  triton {meta['triton']}  copy "
        f"{meta['copy_bytes_per_s_measured'] / 1e12:.2f} TB/s",
        flush=True,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for layout in args.layouts:
        for D in args.channels:
            for L in args.lengths:
                for K in args.taps:
                    row = bench_shape(layout, D, L, K)
                    row["kernel_best"] = best_variants(row)
                    if row["fwd_ms_triton"]:
                        row["fwd_gb_per_s_triton"] = (
                            4 * row["elements"] / row["fwd_ms_triton"] / 1e6
                        )
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    # written after every row: a run cut short still leaves its numbers
                    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
                    torch.cuda.empty_cache()
    print_table(rows)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
