"""Times the long-sequence Triton path (``triton_long``) on a GPU against torch.fft: causal, bf16,
B*H*L = 2^27, plain and gated, and the rows kernel's launch variants (``ROWS_VARIANTS``).

    python -m benchmarks.fftconv_long --out benchmarks/results/<gpu>-<date>-long.json \
        [--lengths 8192 16384 ...] [--rows-variants v1 held ...] [--splits] [--l2] \
        [--splits-rows held ...] \
        [--no-torch] [--no-backward]
    python -m benchmarks.fftconv_long --static --out <file>.json     (no GPU needed)

Per length (n = 2L): correctness first (every path's bf16 output, or gradients, against torch.fft
in fp32 on the same inputs, relative error < 1e-2; a path over it gets no time), then
``triton.testing.do_bench`` medians, inputs built outside the timed region, of

- ``torch_fp32``: ``fftconv(backend="torch")`` on fp32 copies of the inputs (the baseline);
- ``triton``: the public call, ``backend="triton"`` (filter rfft and spectrum layout included),
  with the default rows kernel; ``triton@<variant>``: the same with the rows kernel as that
  variant says (``triton_long.use_rows_variant``); ``triton@<variant>+layout``: and the
  spectrum laid out by ``spectrum_layout_kernel`` (``use_layout_kernel``);
- plain rows only: ``layout_torch`` and ``layout_kernel``, ``spectrum_layout`` alone both ways
  (``exact_*``: bit-identical results);
- ``kernel``: ``conv_long`` on a spectrum already laid out (the three kernels alone, default
  launch), with its per-kernel split from the profiler; ``--l2``: ``kernel_l2``, the same in
  chunks of an intermediate that fits the L2 cache (24 MiB); ``--splits``: ``kernel_n0=<N0>``,
  other outer sizes, and ``kernel_n0=<N0>@<variant>`` with the rows variants of
  ``--splits-rows`` (the rows kernel's cost moves the best split);
- plain rows only: ``rows@<variant>``: the rows kernel alone (``triton_long.launch_rows``) in
  place on an intermediate of the run's size, under a unit-modulus spectrum so that repeated
  runs keep the values' scale; checked against the v1 kernel on the same intermediate;
- gated rows only, unless ``--no-backward``: ``bwd@<variant>``: ``long_backward`` with all five
  gradients, and ``bwd_no_dk@<variant>`` without the filter gradient (its part is the
  difference); ``dk_torch`` and ``dk_kernels``: ``long_backward``'s filter gradient alone, by
  torch.fft in fp32 (the old path) and by the cross-spectrum kernels (``filter_grad_long``);
  ``fwd_bwd_triton`` and ``fwd_bwd_triton_dk_torch``: the public call's forward + backward (all
  five gradients, ``torch.autograd.grad``) with each, and ``fwd_bwd_torch_fp32`` the same on
  ``backend="torch"`` in fp32 (unless ``--no-torch``).

Each time is also given as a multiple of the memory floor: the bytes of u and y (plus pregate
and postgate when gated) at 2 bytes each, over the copy bandwidth measured in the same run.
The spectrum, one fp32 complex per bin per channel, is listed separately (``spectrum_mb``).
Shapes: H = clamp(2^27 / (8 L), 1, 1024) channels, B = 2^27 / (H L) >= 8 sequences. Default
lengths 8K, 16K, 32K, 1M, 4M (the inner sizes m = 1024, 2048, 4096, 8192 of the rows kernel);
most of the run is compiling (about 60 kernels), a few minutes on an H200.

``--static`` instead compiles the rows kernel in every variant (bf16, and fp32 up to m = 4096,
clipped to an H200's shared memory as ``launch_rows`` does) and the column kernels of each
length's default split for sm_90, and reports registers, spill bytes (``ptxas -v``) and
shared memory: the numbers the variants were chosen by, on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import triton

from benchmarks.common import (
    compile_sm90,
    fmt,
    gpu_run_meta,
    measure_copy_bandwidth,
    median_ms,
    rel_err,
)
from benchmarks.fftconv import torch_path_fp32
from kernels import fftconv, filter_spectrum
from kernels.fftconv import core, reference, triton_fwd, triton_long, triton_long_kernels
from kernels.fftconv.plan import make_plan

TOTAL = 2**27  # B * H * L
LENGTHS = (2**13, 2**14, 2**15, 2**20, 2**22)  # 8K, 16K, 32K, 1M, 4M
TOL_BF16 = 1e-2
L2_CHUNK_BYTES = 24 * 2**20
KERNEL_NAMES = ("cols_fwd", "rows", "cols_inv")
H200_SHARED_BYTES = 232448  # shared memory per block (opt-in) of an H200
GRAD_NAMES = ("u", "k", "pregate", "postgate", "bias")


def shape_for(L: int) -> tuple[int, int]:
    """(B, H) with B * H * L = TOTAL and at least 8 sequences per channel (4 pairs)."""
    H = max(1, min(1024, TOTAL // (8 * L)))
    return TOTAL // (H * L), H


def make_inputs(L: int, gated: bool):
    B, H = shape_for(L)
    g = torch.Generator(device="cuda").manual_seed(L)
    u = torch.randn(B, H, L, device="cuda", generator=g).to(torch.bfloat16)
    k = torch.randn(H, L, device="cuda", generator=g)
    k = k / (1 + torch.arange(L, device="cuda")) ** 0.5  # decaying, as trained filters
    pre = post = bias = None
    if gated:
        pre = torch.randn(B, H, L, device="cuda", generator=g).to(torch.bfloat16)
        post = torch.randn(B, H, L, device="cuda", generator=g).to(torch.bfloat16)
        bias = torch.randn(H, device="cuda", generator=g)
    return u, k, pre, post, bias


def kernel_split_ms(run) -> dict:
    """Per-kernel CUDA time of one call (ms), from the profiler, averaged over 5 calls."""
    run()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            run()
        torch.cuda.synchronize()
    out = dict.fromkeys(KERNEL_NAMES, 0.0)
    for event in prof.key_averages():
        for name in KERNEL_NAMES:
            if event.key.startswith(name):
                out[name] += event.device_time_total / 1e3 / 5  # us -> ms, per call
    return out


def rows_variants_for(m: int, dtype: torch.dtype, names, shared_limit: int | None) -> dict:
    """The named rows variants as they would run at inner size m (``fit_rows_config``), without
    the ones that clip to the same launch as an earlier name."""
    out, seen = {}, set()
    for name in names:
        config = triton_long.fit_rows_config(triton_long.rows_config(name), m, dtype, shared_limit)
        if config not in seen:
            seen.add(config)
            out[name] = config
    return out


def time_checked(row: dict, name: str, fn, check) -> None:
    """``err_<name>`` from ``check(fn())`` (NaN fails too), then ``ms_<name>`` if it passed."""
    err = check(fn())
    row[f"err_{name}"] = err
    row[f"ms_{name}"] = median_ms(fn, warmup=10, rep=60) if err < TOL_BF16 else None


def bench_rows(row: dict, u, k, split, variants: dict) -> None:
    """The rows kernel alone per variant, in place on an intermediate of the run's size."""
    B, H, _ = u.shape
    n, nbp = split.n, triton.cdiv(B, 2)
    g = torch.Generator(device="cuda").manual_seed(0)
    buf = torch.randn(H * nbp, 2, split.n0, split.m, device="cuda", generator=g).to(u.dtype)
    kf = torch.fft.rfft(k, n=n)
    unit = triton_long.spectrum_layout(kf / kf.abs().clamp_min(1e-30), split)
    start = buf.clone()
    want = buf.clone()
    triton_long.launch_rows(want, unit, split, 0, H, nbp, rows="v1")
    for name, config in variants.items():

        def run(config=config):
            triton_long.launch_rows(buf, unit, split, 0, H, nbp, rows=config)

        def check(_, name=name):
            buf.copy_(start)
            run()
            return rel_err(buf, want.float())

        time_checked(row, f"rows@{name}", run, check)
        row[f"rows_config@{name}"] = vars(config)


def bench_backward(row: dict, inputs, variants: dict, no_torch: bool = False) -> None:
    """``long_backward`` per variant, with and without the filter gradient; the filter gradient
    alone, torch.fft against the cross-spectrum kernels (``use_filter_grad_kernels``); the
    public forward + backward with each, and torch.fft in fp32 (unless ``no_torch``)."""
    u, k, pre, post, bias = inputs
    L = u.shape[-1]
    plan = make_plan("causal", L, L)
    kf = torch.fft.rfft(k, n=plan.fft_size)
    dy = torch.randn(u.shape, device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    dy = dy.to(u.dtype)
    everything, no_dk = (True,) * 5, (True, False, True, True, True)
    fp32 = [x.float() for x in (u, k, pre, post, bias)]
    ref = core.backward(dy.float(), *fp32[:2], None, *fp32[2:], plan, reference, everything)

    def check(grads):
        return max(rel_err(g, r) for g, r in zip(grads, ref, strict=True) if g is not None)

    for name in variants:

        def run(needs, name=name):
            with triton_long.use_rows_variant(name):
                return triton_long.long_backward(dy, u, k, kf, pre, post, bias, plan, needs)

        time_checked(row, f"bwd@{name}", lambda run=run: run(everything), check)
        time_checked(row, f"bwd_no_dk@{name}", lambda run=run: run(no_dk), check)

    # the filter gradient alone, torch.fft (old) against the cross-spectrum kernels (new)
    only_dk = (False, True, False, False, False)
    for name, kernels in (("dk_torch", False), ("dk_kernels", True)):

        def dk(kernels=kernels):
            with triton_long.use_filter_grad_kernels(kernels):
                return triton_long.long_backward(dy, u, k, kf, pre, post, bias, plan, only_dk)

        time_checked(row, name, dk, lambda grads: rel_err(grads[1], ref[1]))

    # the public call, forward + backward (all five gradients), each way, and torch.fft in fp32
    leaves = [x.detach().requires_grad_() for x in (u, k, pre, post, bias)]
    fp32_leaves = [x.detach().float().requires_grad_() for x in (u, k, pre, post, bias)]

    def fwd_bwd(xs, backend, kernels=True):
        a, b, c, d, e = xs
        with triton_long.use_filter_grad_kernels(kernels):
            y = fftconv(a, b, pregate=c, postgate=d, bias=e, backend=backend)
            return torch.autograd.grad(y, xs, dy.to(y.dtype))

    def check_all(grads):
        return max(rel_err(g, r) for g, r in zip(grads, ref, strict=True))

    runs = {
        "fwd_bwd_triton": lambda: fwd_bwd(leaves, "triton"),
        "fwd_bwd_triton_dk_torch": lambda: fwd_bwd(leaves, "triton", kernels=False),
    }
    if not no_torch:
        runs["fwd_bwd_torch_fp32"] = lambda: fwd_bwd(fp32_leaves, "torch")
    for name, fn in runs.items():
        time_checked(row, name, fn, check_all)


def bench_length(L: int, gated: bool, args, copy_bw: float) -> dict:
    B, H = shape_for(L)
    inputs = make_inputs(L, gated)
    u, k, pre, post, bias = inputs
    n = 2 * L
    floor_ms = (4 if gated else 2) * 2 * TOTAL / copy_bw * 1e3
    row = {"L": L, "n": n, "B": B, "H": H, "gated": gated, "floor_ms": floor_ms}
    row["spectrum_mb"] = H * (n // 2 + 1) * 8 / 1e6
    default = triton_long.make_split(n)
    row["split"] = [default.n0, default.m]
    variants = rows_variants_for(
        default.m, u.dtype, args.rows_variants, triton_long.shared_limit(u.device)
    )
    ref = torch_path_fp32(*inputs)
    out = torch.empty_like(u)

    def check_y(result):
        return rel_err(out if result is None else result, ref)

    fns = {}
    if not args.no_torch:
        fp32 = [x.float() if x is not None else None for x in (u, pre, post)]
        fns["torch_fp32"] = lambda: fftconv(
            fp32[0], k, pregate=fp32[1], postgate=fp32[2], bias=bias, backend="torch"
        )
    fns["triton"] = lambda: fftconv(u, k, pregate=pre, postgate=post, bias=bias, backend="triton")
    for name in variants:
        for layout in (False, True):

            def public(name=name, layout=layout):
                with triton_long.use_rows_variant(name), triton_long.use_layout_kernel(layout):
                    return fftconv(u, k, pregate=pre, postgate=post, bias=bias, backend="triton")

            fns[f"triton@{name}" + ("+layout" if layout else "")] = public
    spec = filter_spectrum(k, L, backend="triton")
    fns["triton_spectrum"] = lambda: fftconv(
        u, spec, pregate=pre, postgate=post, bias=bias, backend="triton"
    )
    splits = {"kernel": (default, {})}
    if args.l2:
        splits["kernel_l2"] = (default, {"max_intermediate_bytes": L2_CHUNK_BYTES})
    if args.splits and not gated:
        for n0 in (16, 64, 256, 1024):
            if n0 != default.n0 and triton_long.MIN_INNER <= n // n0 <= triton_long.MAX_INNER:
                other = triton_long.make_split(n, n0)
                splits[f"kernel_n0={n0}"] = (other, {})
                for name in args.splits_rows:
                    splits[f"kernel_n0={n0}@{name}"] = (other, {"rows": name})
    for name, (split, options) in splits.items():
        laid = triton_long.spectrum_layout(torch.fft.rfft(k, n=n), split)

        def run(split=split, options=options, laid=laid):
            triton_long.conv_long(
                u, laid, split, pregate=pre, postgate=post, bias=bias, out=out, **options
            )

        fns[name] = run

    if not gated:  # the spectrum layout alone, torch ops and kernel (identical values)
        kf = torch.fft.rfft(k, n=n)
        want = triton_long.spectrum_layout(kf, default, kernel=False)
        for kernel in (False, True):

            def layout(kernel=kernel):
                return triton_long.spectrum_layout(kf, default, kernel=kernel)

            name = "layout_kernel" if kernel else "layout_torch"
            time_checked(row, name, layout, lambda got, want=want: rel_err(got, want))
            row[f"exact_{name}"] = torch.equal(layout(), want)
    for name, fn in fns.items():
        out.fill_(float("nan"))  # an unwritten element fails the check
        time_checked(row, name, fn, check_y)
        ms = row[f"ms_{name}"]
        row[f"floor_x_{name}"] = ms / floor_ms if ms else None
        if name == "kernel" and ms:
            row["kernel_split_ms"] = kernel_split_ms(fn)
    if not gated:
        bench_rows(row, u, k, default, variants)
    elif not args.no_backward:
        bench_backward(row, inputs, variants, args.no_torch)
    return row


# ---------------------------------------------------------------------------------------------
# --static: registers, spills and shared memory of sm_90 compiles, without a GPU


def compile_stats(kernel, constexprs: dict, pointer_types: dict, num_warps: int, num_stages=1):
    """``ptxas -v``'s registers and spills and the shared memory of ``kernel`` compiled for
    sm_90 (``benchmarks.common.compile_sm90``)."""
    _, stats = compile_sm90(kernel, constexprs, pointer_types, num_warps, num_stages=num_stages)
    return {**stats, "num_warps": num_warps}


def _pointer_types(kernel, operand: str, fp32: tuple[str, ...]) -> dict:
    return {
        name: "*fp32" if name in fp32 else operand
        for name in kernel.arg_names
        if name.endswith("_ptr")
    }


def rows_static(m: int, dtype: torch.dtype, config, steps: int) -> dict:
    M1, M2 = triton_fwd.split(m)
    operand = {torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.float32: "*fp32"}[dtype]
    precision = "tf32x3" if dtype == torch.float32 else "tf32"
    constexprs = {"M1": M1, "M2": M2, "STEPS": steps, "PRECISION": precision}
    kernel = triton_long_kernels.rows_kernel
    if config.held:
        kernel = triton_long_kernels.rows_kernel_held
        constexprs |= {"STAGES": config.stages, "HOLD": config.hold, "K2": M2}  # dense filter
    warps = config.num_warps or triton_fwd.num_warps_for(m)
    types = _pointer_types(kernel, operand, ("kf_ptr", "twiddle_ptr"))
    return compile_stats(kernel, constexprs, types, warps, config.stages)


def cols_static(L: int, inverse: bool) -> dict:
    """The column kernel of L's default split, bf16, gated (pregate; postgate and bias)."""
    split = triton_long.make_split(2 * L)
    bt = triton_long.default_block_cols(split)
    B, H = shape_for(L)
    steps = 4 if B >= 8 else 1  # what _steps_for gives on an H200 at these shapes
    constexprs = {"M": split.m, "BT": bt, "STEPS": steps, "HAS_PREGATE": True}
    constexprs |= {"PRECISION": "tf32", "ROWS": triton_long._rows_for(L, split)}
    if split.two_level:
        constexprs |= {"P": split.p, "Q": split.q}
        kernel = (
            triton_long_kernels.cols_inv2_kernel
            if inverse
            else triton_long_kernels.cols_fwd2_kernel
        )
    else:
        constexprs |= {"N0": split.n0, "N0T": split.n0_tile}
        kernel = (
            triton_long_kernels.cols_inv_kernel if inverse else triton_long_kernels.cols_fwd_kernel
        )
    if inverse:
        constexprs |= {"HAS_POSTGATE": True, "HAS_BIAS": True, "BIAS_GATED": True}
    types = _pointer_types(kernel, "*bf16", ("tw_ptr", "bias_ptr"))
    warps = triton_long.default_num_warps(split, bt)
    return compile_stats(kernel, constexprs, types, warps)


def run_static(lengths: list[int], names: list[str], out: Path) -> None:
    rows = []

    def emit(row):
        rows.append(row)
        print(json.dumps(row), flush=True)
        out.write_text(json.dumps({"rows": rows}, indent=1))

    inner = sorted({triton_long.make_split(2 * L).m for L in lengths})
    for m in inner:
        for dtype in (torch.bfloat16, torch.float32):
            if dtype == torch.float32 and m > 4096:
                continue  # fp32 keeps m <= 4096 (split_for)
            for name, config in rows_variants_for(m, dtype, names, H200_SHARED_BYTES).items():
                # 4 pairs per program from B = 8 (the benchmark's shapes); v1: 1 from m = 4096
                steps = config.steps or (4 if config.held or m <= triton_long.HOLD_MAX else 1)
                row = {"kernel": "rows", "m": m, "dtype": str(dtype).removeprefix("torch.")}
                row |= {
                    "variant": name,
                    "steps": steps,
                    "hold": config.hold if config.held else None,
                }
                row |= {"stages": config.stages, **rows_static(m, dtype, config, steps)}
                emit(row)
    for L in lengths:
        split = triton_long.make_split(2 * L)
        for inverse in (False, True):
            row = {"kernel": "cols_inv" if inverse else "cols_fwd", "L": L}
            row |= {"split": [split.n0, split.m], "dtype": "bfloat16", **cols_static(L, inverse)}
            emit(row)


# ---------------------------------------------------------------------------------------------
# Report


def print_table(rows: list[dict], names: list[str]) -> None:
    head = (
        f"{'L':>8} {'gate':<6}{'BxH':>10}{'N0xm':>11}{'floor':>7}{'t_fp32':>8}"
        f"{'triton':>8}{'kernel':>8}{'k/flr':>7}{'fwd/rows/inv ms':>20}{'err':>9}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        split = r.get("kernel_split_ms") or {}
        parts = "/".join(fmt(split.get(k), ".2f") for k in KERNEL_NAMES) if split else "-"
        shape, split_ = f"{r['B']}x{r['H']}", f"{r['split'][0]}x{r['split'][1]}"
        print(
            f"{r['L']:>8} {'gated' if r['gated'] else 'plain':<6}{shape:>10}{split_:>11}"
            f"{fmt(r['floor_ms'], '.3f'):>7}{fmt(r.get('ms_torch_fp32'), '.2f'):>8}"
            f"{fmt(r.get('ms_triton'), '.2f'):>8}{fmt(r.get('ms_kernel'), '.3f'):>8}"
            f"{fmt(r.get('floor_x_kernel'), '.1f'):>7}{parts:>20}"
            f"{fmt(r.get('err_kernel'), '.1e'):>9}"
        )
    print("ms: do_bench medians; floor: u, y (+ gates) at 2 B/element over the measured copy "
          "bandwidth; k/flr: kernel / floor")  # fmt: skip
    print()
    head = f"{'L':>8} {'gate':<6}" + "".join(f"{name:>22}" for name in names)
    print("per rows variant, ms: public call (torch layout / layout kernel) | rows kernel alone "
          "(plain) or long_backward (without dk) (gated)")  # fmt: skip
    print(head)
    print("-" * len(head))
    for r in rows:
        cells = []
        for name in names:
            pub = r.get(f"ms_triton@{name}")
            if r["gated"]:
                bwd, no_dk = r.get(f"ms_bwd@{name}"), r.get(f"ms_bwd_no_dk@{name}")
                other = f"{fmt(bwd, '.2f')} ({fmt(no_dk, '.2f')})"
            else:
                other = fmt(r.get(f"ms_rows@{name}"), ".3f")
            lay = r.get(f"ms_triton@{name}+layout")
            seen = f"err_triton@{name}" in r
            cells.append(f"{fmt(pub, '.2f')}/{fmt(lay, '.2f')} | {other}" if seen else "-")
        print(
            f"{r['L']:>8} {'gated' if r['gated'] else 'plain':<6}"
            + "".join(f"{c:>22}" for c in cells)
        )
    print("-: the variant clips to an earlier one at this length")
    print()
    head = (
        f"{'L':>8}{'dk torch':>10}{'dk new':>10}{'fwd+bwd torch32':>17}"
        f"{'fwd+bwd (dk torch)':>20}{'fwd+bwd':>10}"
    )
    print("filter gradient (long_backward, gated), ms: torch.fft | kernels; public fwd+bwd, ms")
    print(head)
    print("-" * len(head))
    for r in rows:
        if not r["gated"] or "err_dk_kernels" not in r:
            continue
        print(
            f"{r['L']:>8}{fmt(r.get('ms_dk_torch'), '.2f'):>10}"
            f"{fmt(r.get('ms_dk_kernels'), '.2f'):>10}"
            f"{fmt(r.get('ms_fwd_bwd_torch_fp32'), '.2f'):>17}"
            f"{fmt(r.get('ms_fwd_bwd_triton_dk_torch'), '.2f'):>20}"
            f"{fmt(r.get('ms_fwd_bwd_triton'), '.2f'):>10}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--lengths", type=int, nargs="*", default=list(LENGTHS))
    parser.add_argument(
        "--rows-variants",
        nargs="*",
        default=list(triton_long.ROWS_VARIANTS),
        choices=list(triton_long.ROWS_VARIANTS),
        help="rows kernel variants to time (default: all)",
    )
    parser.add_argument("--splits", action="store_true", help="also time other outer sizes")
    parser.add_argument(
        "--splits-rows",
        nargs="*",
        default=["held"],
        choices=list(triton_long.ROWS_VARIANTS),
        help="rows variants the other outer sizes are also timed with (default: held)",
    )
    parser.add_argument("--l2", action="store_true", help="also time L2-sized chunks")
    parser.add_argument("--no-torch", action="store_true", help="skip the torch.fft baseline")
    parser.add_argument("--no-backward", action="store_true", help="skip long_backward")
    parser.add_argument(
        "--static", action="store_true", help="registers and spills of sm_90 compiles, no GPU"
    )
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.static:
        run_static(args.lengths, args.rows_variants, args.out)
        return
    if not torch.cuda.is_available():
        sys.exit("benchmarks.fftconv_long needs a CUDA device (or --static)")
    copy_bw = measure_copy_bandwidth(warmup=10, rep=60)
    meta = {
        **gpu_run_meta("benchmarks.fftconv_long", argv),
        "total_elements": TOTAL,
        "copy_bytes_per_s_measured": copy_bw,
        "rows_variants": {name: vars(triton_long.rows_config(name)) for name in args.rows_variants},
        "default_rows_variant": triton_long.DEFAULT_ROWS_VARIANT,
    }
    print(f"{meta['gpu']}  torch {meta['torch']}  triton {meta['triton']}  copy "
          f"{copy_bw / 1e12:.2f} TB/s", flush=True)  # fmt: skip
    rows = []
    for L in args.lengths:
        for gated in (False, True):
            row = bench_length(L, gated, args, copy_bw)
            rows.append(row)
            print(json.dumps(row), flush=True)
            # written after every row: a run cut short still leaves its numbers
            args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
            torch.cuda.empty_cache()
    print_table(rows, args.rows_variants)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
