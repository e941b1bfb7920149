"""Times the two-halves forward kernel (``triton_fwd``, ``halves=True``: a plan of FFT size
n = 16384 whose u and y fit 8192 samples, as two size-8192 convolutions on the spectrum's even
and odd bins, in two launches by default or one program with ``halves_passes=1``) against the
long path it replaces there and torch.fft.

    python -m benchmarks.fftconv_halves --out benchmarks/results/<gpu>-<date>-halves.json \
        [--lengths 8192 5000] [--variants default load-k w16 ...] [--gated-inputs ...]

Per length (causal, bf16, B*H*L = 2^27, H = 1024 as ``benchmarks.fftconv``), plain and gated
(``--gated-inputs``: the gated rows' inputs, default pre- and postgate and bias): correctness
first (every path's output against float64, relative error < 1e-2; a path over it gets no
time), then ``triton.testing.do_bench`` medians, inputs built outside the timed region, of

- ``torch``: ``fftconv(backend="torch")`` on fp32 copies (the speedup's baseline);
- ``long`` and ``halves``: the public call, ``backend="triton"``, with the two-halves kernel off
  and on (``triton_fwd.use_halves``): filter rfft, layout and kernels included; also replayed
  as CUDA graphs (``graph_*``);
- ``kernel@<variant>``: ``triton_fwd.launch`` with ``halves=True`` on a spectrum already laid
  out, the launch options of ``VARIANTS``; ``long_kernel``: ``triton_long.conv_long`` on its
  own laid-out spectrum (the long path's kernels alone);
- with ``--tile``: ``kernel@tile``, the in-register kernel's size-n/2 circular convolution of
  the same sequences on the full tile (one half's work alone, checked against its own float64
  reference);
- with ``--backward``: the public forward + backward: ``long`` all on the long path;
  ``halves`` the two-halves forward (keeping z where the postgate wants a gradient) and the
  default backward, on the long path (``triton_fwd.halves_backward_for``); ``halves-both``
  the backward under ``use_halves(True)`` too: the input gradient's correlation on the
  two-halves forward kernel, the filter gradient on ``triton_bwd.filter_grad_halves``.
  (Session 14's ``halves`` ran its backward outside ``use_halves``, i.e. on the long path:
  5.81 ms plain at L = 8K on an H100; both on the halves measured 6.57 in session 15.)

Each time is also given as a multiple of the memory floor (``benchmarks.fftconv.floor_ms``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from benchmarks.common import (
    copy_bandwidth,
    gpu_run_meta,
    graph_median_ms,
    median_ms,
    rel_err,
)
from benchmarks.fftconv import GATED_INPUTS, TOTAL, H, floor_ms
from kernels.fftconv import fftconv, triton_fwd, triton_long
from kernels.fftconv.plan import make_plan

TOL = 1e-2
# launch options of the bare two-halves kernel (the launcher's defaults where not given)
VARIANTS = {
    "default": {},
    "one-pass": {"halves_passes": 1},
    "load-k": {"hold_filter": False},
    "w16": {"num_warps": 16},
    "s4": {"steps": 4},
    "s16": {"steps": 16},
    "held-x": {"skip_input": "held"},
}


def _inputs(L: int, gated: bool, gated_inputs: tuple[str, ...], seed: int):
    B = max(1, TOTAL // (H * L))
    gen = torch.Generator(device="cuda").manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, device="cuda", generator=gen)

    u = rand(B, H, L).bfloat16()
    k = rand(H, L) / (1 + torch.arange(L, device="cuda")) ** 0.5
    pre = rand(B, H, L).bfloat16() if gated and "pre" in gated_inputs else None
    post = rand(B, H, L).bfloat16() if gated and "post" in gated_inputs else None
    bias = rand(H) if gated and "bias" in gated_inputs else None
    return u, k, pre, post, bias


def _reference(u, k, pre, post, bias, n):
    v = u.double() * pre.double() if pre is not None else u.double()
    L = u.shape[-1]
    z = torch.fft.irfft(torch.fft.rfft(v, n=n) * torch.fft.rfft(k.double(), n=n), n=n)[..., :L]
    y = z * post.double() if post is not None else z
    return y + bias.double()[:, None] * v if bias is not None else y


def _public(u, k, pre, post, bias, backend="triton"):
    if backend == "torch":
        u, pre, post = (x.float() if x is not None else None for x in (u, pre, post))
    return fftconv(u, k, pregate=pre, postgate=post, bias=bias, backend=backend)


def bench_row(
    L: int,
    gated: bool,
    gated_inputs: tuple[str, ...],
    variants: list[str],
    backward: bool,
    tile: bool = False,
) -> dict:
    u, k, pre, post, bias = _inputs(L, gated, gated_inputs, seed=L + gated)
    n = make_plan("causal", L, L).fft_size
    row = {"L": L, "n": n, "B": u.shape[0], "H": H, "gated": gated}
    if gated:
        row["gated_inputs"] = list(gated_inputs)
    row["floor_fwd_ms"] = floor_ms(L, gated, False, gated_inputs)
    ref = _reference(u, k, pre, post, bias, n)

    def public(on: bool):
        def call():
            with triton_fwd.use_halves(on):
                return _public(u, k, pre, post, bias)

        return call

    # the long path and the two halves whatever triton_fwd.HALVES_AT says
    calls = {"torch": lambda: _public(u, k, pre, post, bias, "torch")}
    calls["long"], calls["halves"] = public(False), public(True)
    kf = torch.fft.rfft(k, n=n)
    spectrum = triton_fwd.outer_spectrum_layout(kf, n, 2)
    for name in variants:
        options = VARIANTS[name]

        def kernel(options=options):
            return triton_fwd.launch(u, spectrum, pre, post, bias, n, halves=True, **options)

        calls[f"kernel@{name}"] = kernel
    split = triton_long.make_split(n, dtype=u.dtype)
    long_spectrum = triton_long.spectrum_layout(kf, split)
    calls["long_kernel"] = lambda: triton_long.conv_long(
        u, long_spectrum, split, L, pregate=pre, postgate=post, bias=bias
    )
    refs = {}
    if tile:
        # one size-n/2 convolution of the same sequences on the full tile (a circular one, the
        # work of one half): what a half costs in the in-register kernel without the other
        m = n // 2
        tile_spectrum = triton_fwd.spectrum_layout(torch.fft.rfft(k, n=m), m)
        calls["kernel@tile"] = lambda: triton_fwd.launch(u, tile_spectrum, pre, post, bias, m)
        refs["kernel@tile"] = _reference(u, k, pre, post, bias, m)
    for name, fn in calls.items():
        try:
            out = fn()
            torch.cuda.synchronize()
            err = rel_err(out.double(), refs.get(name, ref))
        except Exception as exc:  # a launch out of resources, say: data too
            row[f"error_{name}"] = repr(exc)[:300]
            print(f"L={L} gated={gated} {name}: {row[f'error_{name}']}", flush=True)
            continue
        row[f"err_{name}"] = err
        if err >= TOL:
            print(f"L={L} gated={gated} {name}: error {err:.2e} >= {TOL}", flush=True)
            continue
        row[f"ms_{name}"] = median_ms(fn)
        if name in ("torch", "long", "halves"):
            try:
                row[f"graph_ms_{name}"] = graph_median_ms(fn)
            except Exception as exc:
                row[f"graph_error_{name}"] = repr(exc)[:300]
        print(f"L={L} gated={gated} {name}: {row[f'ms_{name}']:.3f} ms, err {err:.1e}", flush=True)
    if backward:
        row |= _forward_backward(u, k, pre, post, bias)
    return row


def _forward_backward(u, k, pre, post, bias) -> dict:
    leaves = [x.clone().requires_grad_() if x is not None else None for x in (u, k, pre, post)]
    grads = [x for x in leaves if x is not None]
    dy = torch.randn_like(u)
    out = {}
    # (forward, backward): use_halves's setting around each (None: the default)
    routes = {"long": (False, False), "halves": (True, None), "halves-both": (True, True)}
    for name, (forward, backward) in routes.items():

        def step(forward=forward, backward=backward):
            with triton_fwd.use_halves(forward):
                y = _public(*leaves, bias)
            with triton_fwd.use_halves(backward):
                return torch.autograd.grad(y, grads, dy)

        out[f"fwdbwd_ms_{name}"] = median_ms(step)
    return out


def print_table(rows: list[dict]) -> None:
    names = sorted({key[3:] for r in rows for key in r if key.startswith("ms_")})
    print(f"{'L':>6} {'gate':<8} {'path':<16} {'ms':>8} {'x floor':>8} {'speedup':>8} {'err':>8}")
    for r in rows:
        gate = "+".join(r.get("gated_inputs", [])) if r["gated"] else "plain"
        for name in names:
            ms = r.get(f"ms_{name}")
            if ms is None:
                continue
            speed = r.get("ms_torch", float("nan")) / ms
            graph = r.get(f"graph_ms_{name}")
            extra = f"  graph {graph:.3f}" if graph else ""
            print(
                f"{r['L']:>6} {gate:<8} {name:<16} {ms:8.3f} {ms / r['floor_fwd_ms']:8.2f} "
                f"{speed:7.2f}x {r[f'err_{name}']:8.1e}{extra}"
            )
        for name in ("long", "halves", "halves-both"):
            if f"fwdbwd_ms_{name}" in r:
                print(f"{r['L']:>6} {gate:<8} fwd+bwd {name:<11} {r[f'fwdbwd_ms_{name}']:8.3f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--lengths", type=int, nargs="*", default=[8192])
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument(
        "--gated-inputs", nargs="*", default=list(GATED_INPUTS), choices=list(GATED_INPUTS)
    )
    parser.add_argument("--backward", action="store_true")
    parser.add_argument(
        "--tile",
        action="store_true",
        help="also time one size-n/2 (circular) convolution on the full tile: one half's work",
    )
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("benchmarks.fftconv_halves needs a CUDA GPU")
    meta = gpu_run_meta("benchmarks.fftconv_halves", argv) | {"copy_tb_s": copy_bandwidth() / 1e12}
    rows = []
    for L in args.lengths:
        for gated in (False, True):
            rows.append(
                bench_row(
                    L, gated, tuple(args.gated_inputs), args.variants, args.backward, args.tile
                )
            )
            args.out.write_text(json.dumps(meta | {"rows": rows}, indent=1))
    print(f"{meta['gpu']}  torch {meta['torch']}  triton {meta['triton']}  {meta['date']}")
    print(f"command: {meta['command']}")
    print_table(rows)


if __name__ == "__main__":
    main()
