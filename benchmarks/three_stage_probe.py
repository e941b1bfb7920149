"""A probe for the next forward formulation: the FFT as three Monarch stages in one program.

    python -m benchmarks.three_stage_probe --static            (no GPU: the sm_90 compile)
    python -m benchmarks.three_stage_probe --out <file>.json   (GPU: time it)

The fused kernels factor an FFT of size n into two stages, ``n = N1 * N2`` (64 x 64 at
n = 4096), so a transform costs ``n (N1 + N2)`` multiply-adds per plane; NOTES ("What limits
the memory-floor targets") shows those products alone take 1.0-2.7x the memory floor from
L = 1K. Three stages, ``n = N1 * N2 * N3`` (16 x 16 x 16 at 4096, 32 x 16 x 16 at 8192),
cost ``n (N1 + N2 + N3)``: 3x fewer products at 4096, 3.2x at 8192. What they cost instead is
moving the tile between stages: the middle stage contracts the middle index, so the tile is
permuted (``tl.permute``, a layout conversion through shared memory) before the second and
the third product.

This is the complex DFT of one length-n sequence per program, nothing else (no real-input
packing, no filter, no inverse): the question it answers is whether Triton compiles the
three-stage tile well (registers, spills, shared memory, which products become wgmma) and how
close the transform alone gets to the copy floor. With
``t = t1 N2 N3 + t2 N3 + t3`` and ``k = k1 + N1 k2 + N1 N2 k3``:

    A[k1, t2, t3] = sum_t1 x[t1, t2, t3] w_N1^(t1 k1)                      stage 1: F_N1 @ X
    B[k1, k2, t3] = sum_t2 A[k1, t2, t3] w_(N1 N2)^(t2 k1) w_N2^(t2 k2)    stage 2, twiddled
    X[k]          = sum_t3 B[k1, k2, t3] w_n^(t3 (k1 + N1 k2)) w_N3^(t3 k3) stage 3, twiddled

Its twin, ``two_stage_dft_kernel``, is the same transform in the fused kernels' two stages
(64 x 64 at 4096, 128 x 64 at 8192), so both are timed in one run on one card. Both take a
``REPEAT``: the transform is applied that many times to the tile in registers (each result,
reshaped, is the next input; only ``REPEAT = 1`` is a DFT), so ``(t(R) - t(1)) / (R - 1)`` is
one transform's cost on chip with the loads and stores taken out: the number to compare with
the memory floor of the forward it would go into.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

from benchmarks.common import compile_sm90, copy_bandwidth, gpu_run_meta, median_ms

FACTORS = {4096: (16, 16, 16), 8192: (32, 16, 16)}
TWO_STAGE = {4096: (64, 64), 8192: (128, 64)}  # the fused kernels' factors
_OPERAND = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


@triton.jit
def _complex_dot(a_re, a_im, b_re, b_im, OPERAND: tl.constexpr):
    """(a_re + i a_im) @ (b_re + i b_im), operands cast to ``OPERAND``, fp32 accumulation."""
    a_re = a_re.to(OPERAND)
    a_im = a_im.to(OPERAND)
    b_re = b_re.to(OPERAND)
    b_im = b_im.to(OPERAND)
    return tl.dot(a_re, b_re) - tl.dot(a_im, b_im), tl.dot(a_re, b_im) + tl.dot(a_im, b_re)


@triton.jit
def three_stage_dft_kernel(
    x_ptr,  # [S, 2, n] fp32: real and imaginary planes
    f1_ptr,  # [2, N1, N1] DFT_N1
    f2_ptr,  # [2, N2, N2]
    f3_ptr,  # [2, N3, N3]
    tw1_ptr,  # [2, N1, N2]: w_(N1 N2)^(k1 t2)
    tw2_ptr,  # [2, N1, N2, N3]: w_n^(t3 (k1 + N1 k2)) at [k1, k2, t3]
    out_ptr,  # [S, 2, n] fp32, natural order
    N1: tl.constexpr,
    N2: tl.constexpr,
    N3: tl.constexpr,
    OPERAND: tl.constexpr,
    REPEAT: tl.constexpr,
):
    n: tl.constexpr = N1 * N2 * N3
    pid = tl.program_id(0).to(tl.int64)
    i1 = tl.arange(0, N1)
    i2 = tl.arange(0, N2)
    i3 = tl.arange(0, N3)
    x_ptr += pid * 2 * n
    out_ptr += pid * 2 * n

    offs = i1[:, None] * (N2 * N3) + tl.arange(0, N2 * N3)[None, :]
    x_re = tl.load(x_ptr + offs)
    x_im = tl.load(x_ptr + n + offs)
    f1 = i1[:, None] * N1 + i1[None, :]
    t1 = i1[:, None] * N2 + i2[None, :]
    f2 = i2[:, None] * N2 + i2[None, :]
    t2 = (i1[:, None, None] * N2 + i2[None, None, :]) * N3 + i3[None, :, None]
    f3 = i3[:, None] * N3 + i3[None, :]
    for _ in tl.range(REPEAT):
        # stage 1 over t1: [k1, (t2, t3)]
        a_re, a_im = _complex_dot(
            tl.load(f1_ptr + f1), tl.load(f1_ptr + N1 * N1 + f1), x_re, x_im, OPERAND
        )

        # twiddle [k1, t2] over t3, then stage 2 over t2: [(k1, t3), t2] @ F_N2 -> [(k1, t3), k2]
        w_re = tl.load(tw1_ptr + t1)[:, :, None]
        w_im = tl.load(tw1_ptr + N1 * N2 + t1)[:, :, None]
        a_re = tl.reshape(a_re, (N1, N2, N3))
        a_im = tl.reshape(a_im, (N1, N2, N3))
        b_re = tl.reshape(tl.permute(a_re * w_re - a_im * w_im, (0, 2, 1)), (N1 * N3, N2))
        b_im = tl.reshape(tl.permute(a_re * w_im + a_im * w_re, (0, 2, 1)), (N1 * N3, N2))
        c_re, c_im = _complex_dot(
            b_re, b_im, tl.load(f2_ptr + f2), tl.load(f2_ptr + N2 * N2 + f2), OPERAND
        )

        # twiddle [k1, t3, k2], then stage 3 over t3: [(k1, k2), t3] @ F_N3 -> [(k1, k2), k3]
        c_re = tl.reshape(c_re, (N1, N3, N2))
        c_im = tl.reshape(c_im, (N1, N3, N2))
        v_re = tl.load(tw2_ptr + t2)
        v_im = tl.load(tw2_ptr + n + t2)
        d_re = tl.reshape(tl.permute(c_re * v_re - c_im * v_im, (0, 2, 1)), (N1 * N2, N3))
        d_im = tl.reshape(tl.permute(c_re * v_im + c_im * v_re, (0, 2, 1)), (N1 * N2, N3))
        e_re, e_im = _complex_dot(
            d_re, d_im, tl.load(f3_ptr + f3), tl.load(f3_ptr + N3 * N3 + f3), OPERAND
        )
        # the next round's input (REPEAT > 1 times the work only: not a DFT any more)
        x_re = tl.reshape(e_re, (N1, N2 * N3))
        x_im = tl.reshape(e_im, (N1, N2 * N3))

    # natural order: k = k1 + N1 k2 + N1 N2 k3 at row k1 * N2 + k2, column k3
    rows = tl.arange(0, N1 * N2)
    out = (rows // N2)[:, None] + N1 * (rows % N2)[:, None] + (N1 * N2) * i3[None, :]
    tl.store(out_ptr + out, tl.reshape(x_re, (N1 * N2, N3)))
    tl.store(out_ptr + n + out, tl.reshape(x_im, (N1 * N2, N3)))


@triton.jit
def two_stage_dft_kernel(
    x_ptr,  # [S, 2, n] fp32
    f1_ptr,  # [2, N1, N1]
    f2_ptr,  # [2, N2, N2]
    tw_ptr,  # [2, N1, N2]: w_n^(k1 t2)
    out_ptr,  # [S, 2, n] fp32, natural order
    N1: tl.constexpr,
    N2: tl.constexpr,
    OPERAND: tl.constexpr,
    REPEAT: tl.constexpr,
):
    """The same DFT in two stages, ``t = t1 N2 + t2``, ``k = k1 + N1 k2``: F_N1 @ X, twiddle,
    @ F_N2 (the fused kernels' form)."""
    n: tl.constexpr = N1 * N2
    pid = tl.program_id(0).to(tl.int64)
    i1 = tl.arange(0, N1)
    i2 = tl.arange(0, N2)
    x_ptr += pid * 2 * n
    out_ptr += pid * 2 * n
    offs = i1[:, None] * N2 + i2[None, :]
    x_re = tl.load(x_ptr + offs)
    x_im = tl.load(x_ptr + n + offs)
    f1 = i1[:, None] * N1 + i1[None, :]
    f2 = i2[:, None] * N2 + i2[None, :]
    for _ in tl.range(REPEAT):
        a_re, a_im = _complex_dot(
            tl.load(f1_ptr + f1), tl.load(f1_ptr + N1 * N1 + f1), x_re, x_im, OPERAND
        )
        w_re = tl.load(tw_ptr + offs)
        w_im = tl.load(tw_ptr + n + offs)
        x_re, x_im = _complex_dot(
            a_re * w_re - a_im * w_im,
            a_re * w_im + a_im * w_re,
            tl.load(f2_ptr + f2),
            tl.load(f2_ptr + N2 * N2 + f2),
            OPERAND,
        )
    # [k1, k2] holds k = k1 + N1 k2
    tl.store(out_ptr + i1[:, None] + N1 * i2[None, :], x_re)
    tl.store(out_ptr + n + i1[:, None] + N1 * i2[None, :], x_im)


def _planes(z: torch.Tensor, device) -> torch.Tensor:
    return torch.stack([z.real, z.imag]).to(torch.float32).to(device).contiguous()


def _dft_matrix(m: int) -> torch.Tensor:
    j = torch.arange(m, dtype=torch.float64)
    return torch.exp(-2j * math.pi * torch.outer(j, j) / m)


def tables(n: int, device) -> tuple[torch.Tensor, ...]:
    """The three DFT matrices and the two twiddle tables of ``FACTORS[n]``, fp32 planes."""
    N1, N2, N3 = FACTORS[n]
    k1 = torch.arange(N1, dtype=torch.float64)
    k2 = torch.arange(N2, dtype=torch.float64)
    t3 = torch.arange(N3, dtype=torch.float64)
    tw1 = torch.exp(-2j * math.pi * torch.outer(k1, k2) / (N1 * N2))
    lows = k1[:, None, None] + N1 * k2[None, :, None]  # [k1, k2, 1]
    tw2 = torch.exp(-2j * math.pi * lows * t3[None, None, :] / n)  # [k1, k2, t3]
    mats = (_dft_matrix(N1), _dft_matrix(N2), _dft_matrix(N3), tw1, tw2)
    return tuple(_planes(t, device) for t in mats)


def two_stage_tables(n: int, device) -> tuple[torch.Tensor, ...]:
    """The two DFT matrices and the twiddle table of ``TWO_STAGE[n]``, fp32 planes."""
    N1, N2 = TWO_STAGE[n]
    k1 = torch.arange(N1, dtype=torch.float64)
    t2 = torch.arange(N2, dtype=torch.float64)
    tw = torch.exp(-2j * math.pi * torch.outer(k1, t2) / n)
    return tuple(_planes(t, device) for t in (_dft_matrix(N1), _dft_matrix(N2), tw))


def dft(
    x: torch.Tensor,
    operand: torch.dtype = torch.float32,
    *,
    stages: int = 3,
    repeat: int = 1,
    num_warps: int = 4,
) -> torch.Tensor:
    """The DFT of each row of complex ``x`` ``[S, n]`` (n in ``FACTORS``) by the kernel of
    ``stages`` (2 or 3); ``operand``: the products' operand dtype (fp32 accumulation either
    way); ``repeat`` > 1 applies the transform that many times on chip (timing only: the result
    is not a DFT)."""
    S, n = x.shape
    if n not in FACTORS:
        raise ValueError(f"n must be one of {sorted(FACTORS)}; got {n}")
    if stages not in (2, 3):
        raise ValueError(f"stages must be 2 or 3; got {stages}")
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1; got {repeat}")
    planes = torch.stack([x.real, x.imag], 1).to(torch.float32).contiguous()
    out = torch.empty_like(planes)
    tabs = tables(n, x.device) if stages == 3 else two_stage_tables(n, x.device)
    launch(planes, tabs, out, operand, stages=stages, repeat=repeat, num_warps=num_warps)
    return torch.complex(out[:, 0], out[:, 1])


def launch(
    planes: torch.Tensor,
    tabs: tuple[torch.Tensor, ...],
    out: torch.Tensor,
    operand: torch.dtype,
    *,
    stages: int,
    repeat: int,
    num_warps: int,
) -> None:
    """The kernel alone on fp32 planes ``[S, 2, n]`` with its tables built (what is timed)."""
    S, _, n = planes.shape
    common = {"OPERAND": _OPERAND[operand], "REPEAT": repeat, "num_warps": num_warps}
    if stages == 3:
        N1, N2, N3 = FACTORS[n]
        three_stage_dft_kernel[(S,)](planes, *tabs, out, N1=N1, N2=N2, N3=N3, **common)
    else:
        N1, N2 = TWO_STAGE[n]
        two_stage_dft_kernel[(S,)](planes, *tabs, out, N1=N1, N2=N2, **common)


def static_rows() -> list[dict]:
    """Both kernels compiled for sm_90 per size, stages, operand dtype and warps: ``ptxas``
    registers and spills, shared memory, the layout conversions (the permutes and the products'
    operand layouts) and how many products became wgmma."""
    rows = []
    for n in FACTORS:
        for stages in (3, 2):
            if stages == 3:
                kernel, factors = three_stage_dft_kernel, FACTORS[n]
                sizes = dict(zip(("N1", "N2", "N3"), factors, strict=True))
            else:
                kernel, factors = two_stage_dft_kernel, TWO_STAGE[n]
                sizes = dict(zip(("N1", "N2"), factors, strict=True))
            pointers = {name: "*fp32" for name in kernel.arg_names if name.endswith("_ptr")}
            for operand, name in ((torch.float16, "fp16"), (torch.bfloat16, "bf16")):
                for warps in (4, 8):
                    constexprs = {**sizes, "OPERAND": _OPERAND[operand], "REPEAT": 1}
                    compiled, stats = compile_sm90(
                        kernel, constexprs, pointers, warps, divisible=()
                    )
                    ttgir = compiled.asm["ttgir"]
                    rows.append(
                        {
                            "n": n, "stages": stages, "factors": list(factors), "operand": name,
                            "num_warps": warps, **stats,
                            "layout_conversions": ttgir.count("convert_layout"),
                            "dots": ttgir.count("tt.dot ") + ttgir.count("warp_group_dot "),
                            "wgmma": ttgir.count("warp_group_dot "),
                        }
                    )  # fmt: skip
    return rows


def time_rows(sequences: int = 1 << 15, repeat: int = 5) -> list[dict]:
    """Per size, stages and warps (bf16 operands): the kernel's error against float64 and its
    time on ``sequences`` sequences (fp32 planes in and out: 16 bytes per element moved),
    against torch.fft.fft on the same complex64 input and the copy floor of those bytes; and
    its time with the transform repeated ``repeat`` times on chip, from which one transform's
    on-chip cost, ``onchip_ms``. ``fwd_floor_ms``: the memory floor of the plain bf16 forward
    whose transforms these are (L = n / 2, two real sequences per complex transform, so
    B*H*L = sequences * n; u and y at 2 bytes), which spends two of them (forward, inverse)."""
    rows = []
    for n in FACTORS:
        S = max(1, sequences * 4096 // n)
        gen = torch.Generator(device="cuda").manual_seed(n)
        x = torch.randn(S, n, device="cuda", dtype=torch.complex64, generator=gen)
        want = torch.fft.fft(x[:64].to(torch.complex128))
        torch_ms = median_ms(lambda x=x: torch.fft.fft(x))
        floor = 16 * S * n / copy_bandwidth() * 1e3
        fwd_floor = 2 * 2 * S * n / copy_bandwidth() * 1e3
        planes = torch.stack([x.real, x.imag], 1).contiguous()
        out = torch.empty_like(planes)
        for stages in (2, 3):
            tabs = tables(n, x.device) if stages == 3 else two_stage_tables(n, x.device)
            for warps in (4, 8):
                errs = {}
                try:
                    for operand in (torch.float16, torch.bfloat16):
                        got = dft(x[:64], operand, stages=stages, num_warps=warps)
                        errs[str(operand)] = (
                            (got.to(torch.complex128) - want).norm() / want.norm()
                        ).item()
                    ms, ms_r = (
                        median_ms(
                            lambda r=r, s=stages, t=tabs, w=warps, p=planes, o=out: launch(
                                p, t, o, torch.bfloat16, stages=s, repeat=r, num_warps=w
                            )
                        )
                        for r in (1, repeat)
                    )
                except Exception as err:  # noqa: BLE001 - a launch that fails is a result
                    rows.append({"n": n, "stages": stages, "num_warps": warps, "error": repr(err)})
                    print(json.dumps(rows[-1]), flush=True)
                    continue
                onchip = (ms_r - ms) / (repeat - 1)
                rows.append(
                    {
                        "n": n, "stages": stages, "num_warps": warps, "sequences": S,
                        "rel_err": errs, "ms": ms, f"ms_repeat{repeat}": ms_r,
                        "onchip_ms": onchip, "torch_fft_ms": torch_ms, "floor_ms": floor,
                        "x_floor": ms / floor, "fwd_floor_ms": fwd_floor,
                        "onchip_x_fwd_floor": onchip / fwd_floor,
                    }
                )  # fmt: skip
                print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--static", action="store_true", help="the sm_90 compile, no GPU")
    parser.add_argument("--out", type=Path, help="JSON file to write")
    args = parser.parse_args(argv)
    if args.static:
        rows = static_rows()
        meta = {"command": "python -m benchmarks.three_stage_probe --static"}
    else:
        if not torch.cuda.is_available():
            sys.exit("benchmarks.three_stage_probe needs a CUDA device (or --static)")
        meta = gpu_run_meta("benchmarks.three_stage_probe", argv)
        rows = time_rows()
    for row in rows:
        print(json.dumps(row))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
