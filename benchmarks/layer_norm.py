"""Times ``add_layer_norm`` on a GPU: the fused residual add + LayerNorm of the LM blocks against
what the blocks did before it, in eager PyTorch.

    python -m benchmarks.layer_norm --out benchmarks/results/layer-norm-<gpu>-<date>.json
        [--shapes 65536x864 16384x4096 ...] [--compile] [--model-step] [--no-variants]
    python -m benchmarks.layer_norm --static --out <file>.json    (no GPU needed)

Per shape ``[N, d]`` (the training case: a bf16 branch ``x``, the fp32 stream ``residual``,
fp32 weight and bias, y in bf16 for the next matmul; the default shape is hyena-s's
16 x 4096 tokens at d = 864):

- correctness first: every path's outputs and gradients against the torch backend in fp32 on
  the same inputs (bf16 outputs within 1e-2, fp32 ones within 1e-4); a path over tolerance gets
  no time;
- ``triton.testing.do_bench`` medians (inputs built outside the timed region) of the forward
  and of forward + backward (``torch.autograd.backward`` of y and the stream with bf16 ``dy``
  and fp32 ``d_residual_out``, as the next block sends them) for ``eager`` (``residual + x``,
  ``F.layer_norm``, ``.to(bf16)``: the blocks before the fused op), ``triton``
  (``add_layer_norm``) and, with ``--compile``, ``compiled`` (the eager function under
  ``torch.compile``: inductor's own fusion, the bar for a hand-written kernel; first shape
  only);
- the bare launchers per launch variant (rows per tile x warps; the backward's rows per program
  too), each checked on NaN-poisoned outputs first, for tuning the defaults (``--no-variants``
  skips them; shapes after the first time the defaults only).

Reports ms, the speedups and the multiple of the HBM floor: 12 bytes per element forward (x 2,
residual 4, stream 4, y 2), 16 backward (dy 2, d_residual_out 4, stream 4, dx 2, d_residual 4).

``--model-step`` adds one hyena-s training step (``benchmarks.train_throughput.make_step``: bf16
autocast, fused loss, AdamW; 16 x 4096 tokens, triton fftconv) per ``norm_backend``: "unfused"
(``nn.LayerNorm`` and the adds, as before) and "auto" (``add_layer_norm``), median ms over the
timed steps. ``--static`` compiles both kernels for sm_90 at the default launch and every variant
and reports the registers and spill bytes ``ptxas -v`` gives. Writes JSON after every row.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import triton

from benchmarks.common import (
    best_variants,
    copy_bandwidth,
    fmt,
    gpu_run_meta,
    median_ms,
    ratio,
)
from benchmarks.common import compile_sm90 as common_compile_sm90
from kernels.layer_norm import add_layer_norm, reference
from kernels.layer_norm import triton as triton_backend

SHAPES = ("65536x864", "65536x1024", "16384x4096", "8192x8192")
STATIC_DIMS = (864, 1024, 2048, 4096, 8192)
EPS = 1e-5
TOL = {"bf16": 1e-2, "fp32": 1e-4}
FWD_BYTES, BWD_BYTES = 12, 16  # per element, see the module docstring
# launch variants: name -> (rows per tile, warps); the backward adds its tiles per program
FWD_VARIANTS = {
    "m1-w4": (1, 4),
    "m2-w4": (2, 4),
    "m4-w4": (4, 4),
    "m4-w8": (4, 8),
    "m8-w8": (8, 8),
    "m8-w16": (8, 16),
}
BWD_VARIANTS = {
    "m1-w4-t16": (1, 4, 16),
    "m1-w4-t32": (1, 4, 32),
    "m1-w4-t64": (1, 4, 64),
    "m1-w8-t32": (1, 8, 32),
    "m2-w4-t16": (2, 4, 16),
    "m2-w8-t16": (2, 8, 16),
    "m4-w8-t8": (4, 8, 8),
}
LEAVES = ("x", "residual", "weight", "bias")  # the differentiable inputs, in call order
DEVICE = "cuda"
MODEL_STEP = {
    "preset": "hyena-s",
    "seq_len": 4096,
    "batch": 16,
    "fftconv_backend": "triton",
    "warmup": 3,
    "steps": 10,
}


def parse_shape(text: str) -> tuple[int, int]:
    try:
        n, d = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a shape is NxD, e.g. 65536x864; got {text!r}") from None
    if n < 1 or d < 1:
        raise argparse.ArgumentTypeError(f"N and D must be >= 1; got {text!r}")
    return n, d


def floor_ms(elements: int, bytes_per_element: int) -> float:
    return bytes_per_element * elements / copy_bandwidth() * 1e3


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.double()
    return ((out.double() - ref).norm() / ref.norm()).item()


# ---------------------------------------------------------------------------------------------
# The paths


def eager(x, residual, weight, bias):
    """The blocks before the fused op: the residual add in fp32 (type promotion), the norm in
    fp32, the cast the next matmul's autocast would make."""
    r = residual + x
    return F.layer_norm(r, (x.shape[-1],), weight, bias, EPS).to(torch.bfloat16), r


def fused(x, residual, weight, bias):
    return add_layer_norm(
        x, residual, weight, bias, EPS, out_dtype=torch.bfloat16, backend="triton"
    )


def make_inputs(N: int, D: int, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator(device=DEVICE).manual_seed(seed)

    def randn(*shape, dtype=torch.float32):
        return torch.randn(*shape, device=DEVICE, generator=gen).to(dtype)

    return {
        "x": randn(N, D, dtype=torch.bfloat16),
        "residual": randn(N, D),
        "weight": 1 + 0.1 * randn(D),
        "bias": 0.1 * randn(D),
        "dy": randn(N, D, dtype=torch.bfloat16),
        "dr": randn(N, D),
    }


def run_path(fn, inp: dict) -> list[torch.Tensor]:
    """[y, stream, dx, d_residual, dweight, dbias] of one path."""
    leaves = [inp[k].detach().clone().requires_grad_() for k in LEAVES]
    y, r = fn(*leaves)
    torch.autograd.backward([y, r], [inp["dy"], inp["dr"]])
    return [y.detach(), r.detach(), *(t.grad for t in leaves)]


def reference_outputs(inp: dict) -> list[torch.Tensor]:
    """The torch backend in fp32 on the same values (x and dy exactly as bf16 holds them)."""
    leaves = [inp[k].float() for k in LEAVES]
    y, r, mean, rstd = reference.forward(*leaves[:2], *leaves[2:], EPS, torch.float32)
    d_pre, dw, db = reference.backward(
        inp["dy"].float(), inp["dr"], r, mean, rstd, leaves[2], (True, True, True)
    )
    return [y, r, d_pre, d_pre, dw, db]


def check(outs: list[torch.Tensor], refs: list[torch.Tensor]) -> tuple[float, bool]:
    """The largest error and whether each output is within the tolerance of its dtype."""
    errs = [rel_err(o, r) for o, r in zip(outs, refs, strict=True)]
    ok = all(
        e < TOL["bf16" if o.dtype == torch.bfloat16 else "fp32"]
        for e, o in zip(errs, outs, strict=True)
    )  # NaN fails too
    return max(errs), ok


def bench_shape(N: int, D: int, paths: dict, variants: bool) -> dict:
    inp = make_inputs(N, D, seed=N + D)
    row = {"N": N, "D": D, "elements": N * D}
    row["floor_fwd_ms"] = floor_ms(N * D, FWD_BYTES)
    row["floor_fwdbwd_ms"] = floor_ms(N * D, FWD_BYTES + BWD_BYTES)
    refs = reference_outputs(inp)
    ok = {}
    for name, fn in paths.items():
        row[f"err_{name}"], ok[name] = check(run_path(fn, inp), refs)
    leaves = [inp[k].detach().clone().requires_grad_() for k in LEAVES]
    for name, fn in paths.items():
        if not ok[name]:
            row[f"fwd_ms_{name}"] = row[f"fwdbwd_ms_{name}"] = None
            continue
        with torch.no_grad():
            row[f"fwd_ms_{name}"] = median_ms(lambda fn=fn: fn(*(inp[k] for k in LEAVES)))

        def step(fn=fn):
            y, r = fn(*leaves)
            torch.autograd.backward([y, r], [inp["dy"], inp["dr"]])

        row[f"fwdbwd_ms_{name}"] = median_ms(step, grad_to_none=leaves)
    plan_f = triton_backend.launch_plan(N, D)
    plan_b = triton_backend.launch_plan(N, D, backward=True)
    row["default_fwd"] = f"m{plan_f.block_m}-w{plan_f.num_warps}"
    row["default_bwd"] = f"m{plan_b.block_m}-w{plan_b.num_warps}-t{plan_b.tiles}"
    row.update(time_kernels(inp, refs, variants))
    return row


def time_kernels(inp: dict, refs: list[torch.Tensor], variants: bool) -> dict:
    """The bare launchers: the default launch, and every variant when ``variants``; each
    checked on NaN-poisoned outputs first."""
    x, residual, weight, bias = (inp[k] for k in LEAVES)
    N, D = x.shape
    f32 = torch.float32
    nan = float("nan")
    outs = (
        torch.empty_like(x),
        torch.empty(N, D, device=x.device),
        *torch.empty(2, N, device=x.device),
    )
    _, r_ref, dpre_ref, _, dw_ref, db_ref = refs
    fwd_options = {"default": {}}
    bwd_options = {"default": {}}
    if variants:
        fwd_options |= {k: {"block_m": m, "num_warps": w} for k, (m, w) in FWD_VARIANTS.items()}
        bwd_options |= {
            k: {"block_m": m, "num_warps": w, "tiles": t} for k, (m, w, t) in BWD_VARIANTS.items()
        }
    row = {}
    for name, opts in fwd_options.items():
        for t in outs:
            t.fill_(nan)

        def fwd(opts=opts):
            triton_backend.forward(x, residual, weight, bias, EPS, torch.bfloat16, out=outs, **opts)

        fwd()
        err = max(rel_err(outs[0], refs[0]), rel_err(outs[1], r_ref))
        row[f"err_kernel_fwd_{name}"] = err
        row[f"kernel_fwd_ms_{name}"] = median_ms(fwd) if err < TOL["bf16"] else None
    y, stream, mean, rstd = outs
    triton_backend.forward(x, residual, weight, bias, EPS, torch.bfloat16, out=outs)
    dx, d_res = torch.empty_like(x), torch.empty(N, D, device=x.device)
    needs = (True, True, True, True)
    for name, opts in bwd_options.items():
        if N < opts.get("block_m", 1) * opts.get("tiles", 1):
            continue
        workspace = torch.full(
            triton_backend.workspace_shape(N, D, needs, **opts), nan, device=x.device
        )
        dx.fill_(nan)
        d_res.fill_(nan)

        def bwd(opts=opts, workspace=workspace):
            return triton_backend.backward(
                inp["dy"], inp["dr"], stream, mean, rstd, weight, x.dtype, f32, needs,
                dx_out=dx, d_residual_buf=d_res, workspace=workspace, **opts,
            )  # fmt: skip

        _, _, dw, db = bwd()
        errs = [rel_err(dx, dpre_ref), rel_err(d_res, dpre_ref)]
        errs += [rel_err(dw, dw_ref), rel_err(db, db_ref)]
        unwritten = bool(workspace.isnan().any())
        row[f"err_kernel_bwd_{name}"] = max(errs)
        good = errs[0] < TOL["bf16"] and max(errs[1:]) < TOL["fp32"] and not unwritten
        row[f"kernel_bwd_ms_{name}"] = median_ms(bwd) if good else None
    return row


# ---------------------------------------------------------------------------------------------
# One hyena-s training step per norm backend


def model_step_rows(spec: dict = MODEL_STEP, device: str = DEVICE) -> list[dict]:
    """One training step per norm backend, as ``benchmarks.train_throughput`` times it."""
    from benchmarks.train_throughput import StepTimer, make_step
    from models.lm import HyenaLM

    device = torch.device(device)
    shape = (spec["batch"], spec["seq_len"])
    rows = []
    for norm_backend in ("unfused", "auto"):
        torch.manual_seed(0)
        model = HyenaLM.from_name(
            spec["preset"],
            l_max=spec["seq_len"],
            fftconv_backend=spec["fftconv_backend"],
            norm_backend=norm_backend,
        ).to(device)
        step = make_step(model, device)
        vocab = model.config.vocab_size
        gen = torch.Generator(device=device).manual_seed(0)
        inputs = torch.randint(0, vocab, shape, device=device, generator=gen)
        targets = torch.randint(0, vocab, shape, device=device, generator=gen)
        losses = [float(step(inputs, targets)) for _ in range(spec["warmup"])]
        timer = StepTimer(device)
        for _ in range(spec["steps"]):
            with timer.step():
                step(inputs, targets)
        ms = sorted(timer.ms())
        row = {"model_step": spec["preset"], "norm_backend": norm_backend, **spec}
        row |= {"ms_per_step": ms[len(ms) // 2], "step_ms": ms, "first_losses": losses}
        row["tokens_per_s"] = spec["batch"] * spec["seq_len"] / row["ms_per_step"] * 1e3
        rows.append(row)
        print(json.dumps(row), flush=True)
        del model, step
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


# ---------------------------------------------------------------------------------------------
# Registers and spills of an sm_90 compile (no GPU needed)


def compile_sm90(D: int, backward: bool, block_m: int, num_warps: int, tiles: int = 1) -> dict:
    """``ptxas -v``'s registers and spills of one kernel compiled for sm_90: the training case
    (bf16 x, dy, y and dx; fp32 stream, residual, weight, bias), every gradient, D as the
    runtime specialises it (divisible by 16 when it is)."""

    block_d = triton.next_power_of_2(D)
    if backward:
        kernel = triton_backend._add_layer_norm_bwd_kernel
        constexprs = dict(
            HAS_DRESIDUAL_OUT=True,
            HAS_WEIGHT=True,
            NEED_DX=True,
            NEED_DRESIDUAL=True,
            NEED_DW=True,
            NEED_DB=True,
            ROWS=2,
            BLOCK_M=block_m,
            BLOCK_D=block_d,
            TILES=tiles,
        )
        bf16_ptrs = ("dy_ptr", "dx_ptr")
    else:
        kernel = triton_backend._add_layer_norm_fwd_kernel
        constexprs = dict(
            HAS_RESIDUAL=True, HAS_WEIGHT=True, HAS_BIAS=True, BLOCK_M=block_m, BLOCK_D=block_d
        )
        bf16_ptrs = ("x_ptr", "y_ptr")
    pointer_types = {
        name: "*bf16" if name in bf16_ptrs else "*fp32"
        for name in kernel.arg_names
        if name.endswith("_ptr")
    }
    divisible = ("D",) if D % 16 == 0 else ()
    _, stats = common_compile_sm90(
        kernel,
        constexprs,
        pointer_types,
        num_warps,
        scalar_types={"eps": "fp32"},
        divisible=divisible,
    )
    return stats


def static_row(D: int, backward: bool, variant: str, block_m: int, warps: int, tiles: int) -> dict:
    stats = compile_sm90(D, backward, block_m, warps, tiles)
    row = {"kernel": "bwd" if backward else "fwd", "D": D, "variant": variant}
    row |= {"block_m": block_m, "num_warps": warps, "tiles": tiles}
    return row | {k: v for k, v in stats.items() if k != "shared_bytes"}


def run_static(dims: list[int], out: Path) -> None:
    rows = []
    for D in dims:
        N = 65536
        f, b = triton_backend.launch_plan(N, D), triton_backend.launch_plan(N, D, backward=True)
        configs = [(False, "default", f.block_m, f.num_warps, 1)]
        configs += [(True, "default", b.block_m, b.num_warps, b.tiles)]
        for name, (m, w) in FWD_VARIANTS.items():
            if m * triton.next_power_of_2(D) <= 8192:
                configs.append((False, name, m, w, 1))
        for name, (m, w, t) in BWD_VARIANTS.items():
            if m * triton.next_power_of_2(D) <= 8192:
                configs.append((True, name, m, w, t))
        for backward, name, m, w, t in configs:
            try:
                row = static_row(D, backward, name, m, w, t)
            except Exception as err:  # a failed compile is data too
                row = {"kernel": "bwd" if backward else "fwd", "D": D, "variant": name}
                row["error"] = repr(err)[:300]
            rows.append(row)
            print(json.dumps(row), flush=True)
            out.write_text(json.dumps({"rows": rows}, indent=1))
    print("| kernel | D | variant | rows x warps (x tiles) | registers | spill bytes |")
    print("| --- | ---: | --- | --- | ---: | ---: |")
    for r in rows:
        if "error" in r:
            print(f"| {r['kernel']} | {r['D']} | {r['variant']} | error | | |")
            continue
        launch = f"{r['block_m']} x {r['num_warps']}" + (
            f" x {r['tiles']}" if r["tiles"] > 1 else ""
        )
        spill = r["spill_store_bytes"] + r["spill_load_bytes"]
        print(
            f"| {r['kernel']} | {r['D']} | {r['variant']} | {launch} | {r['registers']} | {spill} |"
        )


# ---------------------------------------------------------------------------------------------
# Report


def print_table(rows: list[dict], paths: list[str]) -> None:
    cols = [("N x D", lambda r: f"{r['N']}x{r['D']}")]
    for kind in ("fwd", "fwdbwd"):
        for name in paths:
            cols.append((f"{kind} {name}", lambda r, k=kind, n=name: fmt(r.get(f"{k}_ms_{n}"))))
        cols.append(
            (
                f"{kind} eager / triton",
                lambda r, k=kind: ratio(r[f"{k}_ms_eager"], r[f"{k}_ms_triton"]),
            )
        )
        cols.append(
            (
                f"{kind} x floor",
                lambda r, k=kind: ratio(r[f"{k}_ms_triton"], r[f"floor_{k}_ms"], ".1f"),
            )
        )
    cols.append(("best kernel fwd / bwd", lambda r: r.get("kernel_best", "-")))
    cols.append(("err triton", lambda r: fmt(r["err_triton"], ".1e")))
    print("| " + " | ".join(name for name, _ in cols) + " |")
    print("|" + " --- |" * len(cols))
    for r in rows:
        print("| " + " | ".join(fn(r) for _, fn in cols) + " |")
    print(
        "ms: do_bench medians; bf16 x and y, fp32 stream, weight and bias; x floor: multiple of "
        f"the HBM floor ({FWD_BYTES} B/element forward, {FWD_BYTES + BWD_BYTES} forward+backward)"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--shapes", type=parse_shape, nargs="*", default=None, help="NxD ...")
    parser.add_argument("--compile", action="store_true", help="time torch.compile of eager too")
    parser.add_argument("--model-step", action="store_true", help="a hyena-s step per backend")
    parser.add_argument("--no-variants", action="store_true", help="default launches only")
    parser.add_argument(
        "--static", action="store_true", help="registers and spills of an sm_90 compile, no GPU"
    )
    parser.add_argument("--dims", type=int, nargs="*", default=list(STATIC_DIMS))
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.static:
        run_static(args.dims, args.out)
        return
    if not torch.cuda.is_available():
        sys.exit("benchmarks.layer_norm needs a CUDA device (or --static)")
    shapes = args.shapes or [parse_shape(s) for s in SHAPES]

    meta = {
        **gpu_run_meta("benchmarks.layer_norm", argv),
        "hbm_floor_bytes_per_s": copy_bandwidth(),
        "copy_bytes_per_s_measured": copy_bandwidth(),
        "defaults": {
            "fwd_tile": triton_backend.FWD_TILE,
            "fwd_elements_per_thread": triton_backend.FWD_ELEMENTS_PER_THREAD,
            "bwd_tile": triton_backend.BWD_TILE,
            "bwd_elements_per_thread": triton_backend.BWD_ELEMENTS_PER_THREAD,
            "min_programs": triton_backend.MIN_PROGRAMS,
            "max_tiles": triton_backend.MAX_TILES,
        },
    }
    print(
        f"{meta['gpu']}  torch {meta['torch']}  triton {meta['triton']}  copy "
        f"{meta['copy_bytes_per_s_measured'] / 1e12:.2f} TB/s",
        flush=True,
    )
    paths = {"eager": eager, "triton": fused}
    if args.compile:
        paths["compiled"] = torch.compile(eager, dynamic=False)
    rows: list[dict] = []
    doc = {"meta": meta, "rows": rows}
    for i, (N, D) in enumerate(shapes):
        # the first shape (the training one) gets the launch variants and torch.compile
        first = i == 0
        row_paths = paths if first else {k: v for k, v in paths.items() if k != "compiled"}
        row = bench_shape(N, D, row_paths, variants=first and not args.no_variants)
        row["kernel_best"] = best_variants(row)
        rows.append(row)
        print(json.dumps(row), flush=True)
        # written after every row: a run cut short still leaves its numbers
        args.out.write_text(json.dumps(doc, indent=1))
        torch.cuda.empty_cache()
    print_table(rows, list(paths))
    if args.model_step:
        doc["model_step"] = model_step_rows()
        args.out.write_text(json.dumps(doc, indent=1))
        by = {r["norm_backend"]: r["ms_per_step"] for r in doc["model_step"]}
        print(
            f"hyena-s step (16 x 4096, bf16): unfused {by['unfused']:.1f} ms, fused "
            f"{by['auto']:.1f} ms ({by['unfused'] - by['auto']:+.1f} ms)"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
