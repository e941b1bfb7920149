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
):
    n: tl.constexpr = N1 * N2 * N3
    pid = tl.program_id(0).to(tl.int64)
    i1 = tl.arange(0, N1)
    i2 = tl.arange(0, N2)
    i3 = tl.arange(0, N3)
    x_ptr += pid * 2 * n
    out_ptr += pid * 2 * n

    # stage 1 over t1: [k1, (t2, t3)]
    offs = i1[:, None] * (N2 * N3) + tl.arange(0, N2 * N3)[None, :]
    x_re = tl.load(x_ptr + offs)
    x_im = tl.load(x_ptr + n + offs)
    f1 = i1[:, None] * N1 + i1[None, :]
    a_re, a_im = _complex_dot(
        tl.load(f1_ptr + f1), tl.load(f1_ptr + N1 * N1 + f1), x_re, x_im, OPERAND
    )

    # twiddle [k1, t2] over t3, then stage 2 over t2: [(k1, t3), t2] @ F_N2 -> [(k1, t3), k2]
    t1 = i1[:, None] * N2 + i2[None, :]
    w_re = tl.load(tw1_ptr + t1)[:, :, None]
    w_im = tl.load(tw1_ptr + N1 * N2 + t1)[:, :, None]
    a_re = tl.reshape(a_re, (N1, N2, N3))
    a_im = tl.reshape(a_im, (N1, N2, N3))
    b_re = tl.reshape(tl.permute(a_re * w_re - a_im * w_im, (0, 2, 1)), (N1 * N3, N2))
    b_im = tl.reshape(tl.permute(a_re * w_im + a_im * w_re, (0, 2, 1)), (N1 * N3, N2))
    f2 = i2[:, None] * N2 + i2[None, :]
    c_re, c_im = _complex_dot(
        b_re, b_im, tl.load(f2_ptr + f2), tl.load(f2_ptr + N2 * N2 + f2), OPERAND
    )

    # twiddle [k1, t3, k2], then stage 3 over t3: [(k1, k2), t3] @ F_N3 -> [(k1, k2), k3]
    c_re = tl.reshape(c_re, (N1, N3, N2))
    c_im = tl.reshape(c_im, (N1, N3, N2))
    t2 = (i1[:, None, None] * N2 + i2[None, None, :]) * N3 + i3[None, :, None]
    v_re = tl.load(tw2_ptr + t2)
    v_im = tl.load(tw2_ptr + n + t2)
    d_re = tl.reshape(tl.permute(c_re * v_re - c_im * v_im, (0, 2, 1)), (N1 * N2, N3))
    d_im = tl.reshape(tl.permute(c_re * v_im + c_im * v_re, (0, 2, 1)), (N1 * N2, N3))
    f3 = i3[:, None] * N3 + i3[None, :]
    e_re, e_im = _complex_dot(
        d_re, d_im, tl.load(f3_ptr + f3), tl.load(f3_ptr + N3 * N3 + f3), OPERAND
    )

    # natural order: k = k1 + N1 k2 + N1 N2 k3 at row k1 * N2 + k2, column k3
    rows = tl.arange(0, N1 * N2)
    out = (rows // N2)[:, None] + N1 * (rows % N2)[:, None] + (N1 * N2) * i3[None, :]
    tl.store(out_ptr + out, e_re)
    tl.store(out_ptr + n + out, e_im)


def _planes(z: torch.Tensor, device) -> torch.Tensor:
    return torch.stack([z.real, z.imag]).to(torch.float32).to(device).contiguous()


def tables(n: int, device) -> tuple[torch.Tensor, ...]:
    """The three DFT matrices and the two twiddle tables of ``FACTORS[n]``, fp32 planes."""
    N1, N2, N3 = FACTORS[n]

    def dft(m):
        j = torch.arange(m, dtype=torch.float64)
        return torch.exp(-2j * math.pi * torch.outer(j, j) / m)

    k1 = torch.arange(N1, dtype=torch.float64)
    k2 = torch.arange(N2, dtype=torch.float64)
    t3 = torch.arange(N3, dtype=torch.float64)
    tw1 = torch.exp(-2j * math.pi * torch.outer(k1, k2) / (N1 * N2))
    lows = k1[:, None, None] + N1 * k2[None, :, None]  # [k1, k2, 1]
    tw2 = torch.exp(-2j * math.pi * lows * t3[None, None, :] / n)  # [k1, k2, t3]
    return tuple(_planes(t, device) for t in (dft(N1), dft(N2), dft(N3), tw1, tw2))


def dft(x: torch.Tensor, operand: torch.dtype = torch.float32) -> torch.Tensor:
    """The DFT of each row of complex ``x`` ``[S, n]`` (n in ``FACTORS``) by the kernel;
    ``operand``: the products' operand dtype (fp32 accumulation either way)."""
    S, n = x.shape
    if n not in FACTORS:
        raise ValueError(f"n must be one of {sorted(FACTORS)}; got {n}")
    N1, N2, N3 = FACTORS[n]
    planes = torch.stack([x.real, x.imag], 1).to(torch.float32).contiguous()
    out = torch.empty_like(planes)
    three_stage_dft_kernel[(S,)](
        planes, *tables(n, x.device), out, N1=N1, N2=N2, N3=N3, OPERAND=_OPERAND[operand]
    )
    return torch.complex(out[:, 0], out[:, 1])


def static_rows() -> list[dict]:
    """The kernel compiled for sm_90 per size, operand dtype and warps: ``ptxas`` registers and
    spills, shared memory, the layout conversions (the permutes and the products' operand
    layouts) and how many products became wgmma."""
    rows = []
    kernel = three_stage_dft_kernel
    pointers = {name: "*fp32" for name in kernel.arg_names if name.endswith("_ptr")}
    for n, (N1, N2, N3) in FACTORS.items():
        for operand, name in ((torch.float16, "fp16"), (torch.bfloat16, "bf16")):
            for warps in (4, 8):
                constexprs = {"N1": N1, "N2": N2, "N3": N3, "OPERAND": _OPERAND[operand]}
                compiled, stats = compile_sm90(kernel, constexprs, pointers, warps, divisible=())
                ttgir = compiled.asm["ttgir"]
                rows.append(
                    {
                        "n": n, "factors": [N1, N2, N3], "operand": name, "num_warps": warps,
                        **stats,
                        "layout_conversions": ttgir.count("convert_layout"),
                        "dots": ttgir.count("tt.dot ") + ttgir.count("warp_group_dot "),
                        "wgmma": ttgir.count("warp_group_dot "),
                    }
                )  # fmt: skip
    return rows


def time_rows(sequences: int = 1 << 15) -> list[dict]:
    """Per size: the kernel's error against float64 and its time on ``sequences`` sequences
    (fp32 planes in and out: 16 bytes per element moved), against torch.fft.fft on the same
    complex64 input and the copy floor of those bytes."""
    rows = []
    for n in FACTORS:
        S = max(1, sequences * 4096 // n)
        gen = torch.Generator(device="cuda").manual_seed(n)
        x = torch.randn(S, n, device="cuda", dtype=torch.complex64, generator=gen)
        want = torch.fft.fft(x[:64].to(torch.complex128))
        torch_ms = median_ms(lambda x=x: torch.fft.fft(x))
        floor = 16 * S * n / copy_bandwidth() * 1e3
        for operand in (torch.float16, torch.bfloat16):
            got = dft(x[:64], operand).to(torch.complex128)
            err = ((got - want).norm() / want.norm()).item()
            ms = median_ms(lambda x=x, operand=operand: dft(x, operand))
            rows.append(
                {
                    "n": n, "sequences": S, "operand": str(operand), "rel_err": err, "ms": ms,
                    "torch_fft_ms": torch_ms, "floor_ms": floor, "x_floor": ms / floor,
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
