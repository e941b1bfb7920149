"""The ``triton`` backend: the fused residual add + LayerNorm as two Triton kernels (GPU; CPU
under TRITON_INTERPRET=1). The math and the design are in README.md next to this file.

- ``_add_layer_norm_fwd_kernel``: one program per tile of ``BLOCK_M`` rows, each row whole in
  registers (``BLOCK_D >= d``): ``r = x + residual`` in fp32, written out as the new stream;
  mean and variance (two passes over the registers); ``y = (r - mean) * rstd * w + b`` stored
  in the output dtype; mean and rstd stored per row for the backward.
- ``_add_layer_norm_bwd_kernel``: one program per chunk of ``TILES`` consecutive row tiles;
  per tile it recomputes ``xhat`` from the saved stream and statistics, writes
  ``d_pre = rstd * (g - mean(g) - xhat * mean(g * xhat)) + d_residual_out`` (``g = dy * w``)
  in x's dtype and, where it differs, in the residual's, and adds the tile's ``dy * xhat`` and
  ``dy`` to per-program fp32 sums held in registers, written once at the end to a
  ``[programs, rows, d]`` workspace that the host reduces with one ``sum``: deterministic (no
  atomics; the grid depends on the shape only).

Both take rows of ``d`` contiguous elements (the launchers make them so) and compute in fp32.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..backends import check_triton_device, device_guard

MAX_D = 8192  # a row in registers; at 16384 the backward spills (sm_90 compile)
DTYPES = (torch.float16, torch.bfloat16, torch.float32)  # x and residual
# default tiles (rows x BLOCK_D elements) and elements per thread, which set the warps: the
# forward holds ~4 fp32 values per element, the backward ~8 (two of them accumulators), so
# the backward takes smaller tiles to stay near 80 registers (sm_90 compile: see README.md)
FWD_TILE, FWD_ELEMENTS_PER_THREAD = 4096, 16
BWD_TILE, BWD_ELEMENTS_PER_THREAD = 1024, 8
MAX_WARPS = 32
MIN_PROGRAMS = 1024  # the backward shortens its chunks until it has at least this many programs
MAX_TILES = 64  # row tiles per backward program, at most
_ACC = torch.float32


# ---------------------------------------------------------------------------------------------
# Kernels


@triton.jit
def _add_layer_norm_fwd_kernel(
    x_ptr,  # [N, D], any float dtype
    residual_ptr,  # [N, D], any float dtype (unused unless HAS_RESIDUAL)
    weight_ptr,  # [D] (unused unless HAS_WEIGHT)
    bias_ptr,  # [D] (unused unless HAS_BIAS)
    y_ptr,  # [N, D], the output dtype
    residual_out_ptr,  # [N, D] fp32
    mean_ptr,  # [N] fp32
    rstd_ptr,  # [N] fp32
    N,
    D,
    eps,
    HAS_RESIDUAL: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_m = tl.program_id(0)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < N
    mask_d = offs_d < D
    mask = mask_m[:, None] & mask_d[None, :]
    offs = offs_m.to(tl.int64)[:, None] * D + offs_d[None, :]  # [BLOCK_M, BLOCK_D]

    r = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        r += tl.load(residual_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(residual_out_ptr + offs, r, mask=mask)

    mean = tl.sum(r, axis=1) / D  # [BLOCK_M]
    centred = tl.where(mask, r - mean[:, None], 0.0)
    var = tl.sum(centred * centred, axis=1) / D
    rstd = 1.0 / tl.sqrt_rn(var + eps)
    y = centred * rstd[:, None]
    if HAS_WEIGHT:
        w = tl.load(weight_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
        y = y * w[None, :]
    if HAS_BIAS:
        b = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
        y = y + b[None, :]
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(mean_ptr + offs_m, mean, mask=mask_m)
    tl.store(rstd_ptr + offs_m, rstd, mask=mask_m)


@triton.jit
def _add_layer_norm_bwd_kernel(
    dy_ptr,  # [N, D], y's dtype
    d_residual_out_ptr,  # [N, D], any float dtype (unused unless HAS_DRESIDUAL_OUT)
    residual_out_ptr,  # [N, D] fp32: the stream saved by the forward
    mean_ptr,  # [N] fp32
    rstd_ptr,  # [N] fp32
    weight_ptr,  # [D] (unused unless HAS_WEIGHT)
    dx_ptr,  # [N, D], x's dtype (unused unless NEED_DX)
    d_residual_ptr,  # [N, D], the residual's dtype (unused unless NEED_DRESIDUAL)
    partial_ptr,  # [programs, ROWS, D] fp32: per-program dw and db
    N,
    D,
    HAS_DRESIDUAL_OUT: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    NEED_DX: tl.constexpr,
    NEED_DRESIDUAL: tl.constexpr,
    NEED_DW: tl.constexpr,
    NEED_DB: tl.constexpr,
    ROWS: tl.constexpr,  # rows of the workspace per program: NEED_DW + NEED_DB
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
    TILES: tl.constexpr,  # row tiles per program: its chunk is TILES * BLOCK_M rows
):
    pid = tl.program_id(0)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    if HAS_WEIGHT:
        w = tl.load(weight_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    # the program's dw and db, summed over its tiles in registers, reduced over rows at the end
    acc_dw = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    acc_db = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    # a constexpr trip count (a runtime loop in the compiled kernel): the interpreter under
    # NumPy 2 cannot loop over a bound derived from the program id. The last chunk skips its
    # tiles past N.
    for i in range(TILES):
        m0 = (pid * TILES + i) * BLOCK_M
        if m0 < N:
            offs_m = m0 + tl.arange(0, BLOCK_M)
            mask_m = offs_m < N
            mask = mask_m[:, None] & mask_d[None, :]
            offs = offs_m.to(tl.int64)[:, None] * D + offs_d[None, :]  # [BLOCK_M, BLOCK_D]
            mean = tl.load(mean_ptr + offs_m, mask=mask_m, other=0.0)
            rstd = tl.load(rstd_ptr + offs_m, mask=mask_m, other=0.0)
            r = tl.load(residual_out_ptr + offs, mask=mask, other=0.0)
            xhat = tl.where(mask, (r - mean[:, None]) * rstd[:, None], 0.0)
            dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            if NEED_DX or NEED_DRESIDUAL:
                if HAS_WEIGHT:
                    g = dy * w[None, :]
                else:
                    g = dy
                c1 = tl.sum(g * xhat, axis=1) / D  # [BLOCK_M]
                c2 = tl.sum(g, axis=1) / D
                d_pre = (g - c2[:, None] - xhat * c1[:, None]) * rstd[:, None]
                if HAS_DRESIDUAL_OUT:
                    d_res = tl.load(d_residual_out_ptr + offs, mask=mask, other=0.0)
                    d_pre += d_res.to(tl.float32)
                if NEED_DX:
                    tl.store(dx_ptr + offs, d_pre.to(dx_ptr.dtype.element_ty), mask=mask)
                if NEED_DRESIDUAL:
                    d_pre_res = d_pre.to(d_residual_ptr.dtype.element_ty)
                    tl.store(d_residual_ptr + offs, d_pre_res, mask=mask)
            if NEED_DW:
                acc_dw += dy * xhat
            if NEED_DB:
                acc_db += dy

    row = pid.to(tl.int64) * ROWS  # dw in the program's first row, db in its last
    if NEED_DW:
        tl.store(partial_ptr + row * D + offs_d, tl.sum(acc_dw, axis=0), mask=mask_d)
    if NEED_DB:
        tl.store(partial_ptr + (row + ROWS - 1) * D + offs_d, tl.sum(acc_db, axis=0), mask=mask_d)


# ---------------------------------------------------------------------------------------------
# Launch plans


class LaunchPlan(NamedTuple):
    """Tile and grid of one kernel for one shape."""

    block_m: int  # rows per tile
    block_d: int  # d rounded up to a power of two
    num_warps: int
    tiles: int  # row tiles per program (1 in the forward)
    programs: int


def _check_power_of_two(name: str, value: int | None) -> None:
    if value is not None and (value < 1 or value & (value - 1)):
        raise ValueError(f"{name} must be a power of two >= 1; got {value}")


def _prev_power_of_two(n: int) -> int:
    return 1 << (max(1, n).bit_length() - 1)


def default_warps(block_m: int, block_d: int, backward: bool = False) -> int:
    """Warps for a tile: ``FWD_ELEMENTS_PER_THREAD`` (``BWD_...``) elements per thread, 1 to
    ``MAX_WARPS``."""
    per_thread = BWD_ELEMENTS_PER_THREAD if backward else FWD_ELEMENTS_PER_THREAD
    return max(1, min(MAX_WARPS, block_m * block_d // (32 * per_thread)))


def launch_plan(
    N: int,
    D: int,
    *,
    backward: bool = False,
    block_m: int | None = None,
    tiles: int | None = None,
    num_warps: int | None = None,
) -> LaunchPlan:
    """The launch for ``[N, D]`` rows. ``block_m``: rows per tile (default: ``FWD_TILE`` or
    ``BWD_TILE`` elements per tile, at most the rows there are, rounded to a power of two).
    ``tiles`` (backward only): row tiles per program; by default as many as leave
    ``MIN_PROGRAMS`` programs, a power of two up to ``MAX_TILES`` (a few compilations across
    shapes, not one per N). ``num_warps``: default ``default_warps``."""
    if not 1 <= D <= MAX_D:
        raise ValueError(f"the Triton add_layer_norm takes 1 <= d <= {MAX_D}; got d={D}")
    _check_power_of_two("block_m", block_m)
    _check_power_of_two("tiles", tiles)
    _check_power_of_two("num_warps", num_warps)
    if tiles is not None and not backward:
        raise ValueError("tiles applies to the backward only")
    block_d = triton.next_power_of_2(D)
    if block_m is None:
        tile = BWD_TILE if backward else FWD_TILE
        block_m = min(max(1, tile // block_d), triton.next_power_of_2(max(1, N)))
    row_tiles = triton.cdiv(N, block_m)
    if tiles is None:
        tiles = min(MAX_TILES, _prev_power_of_two(row_tiles // MIN_PROGRAMS)) if backward else 1
    return LaunchPlan(
        block_m=block_m,
        block_d=block_d,
        num_warps=num_warps or default_warps(block_m, block_d, backward),
        tiles=tiles,
        programs=triton.cdiv(row_tiles, tiles),
    )


# ---------------------------------------------------------------------------------------------
# Host launchers


def _check_rows(name: str, t: Tensor, N: int, D: int, device: torch.device) -> Tensor:
    if t.shape != (N, D) or t.device != device:
        raise ValueError(
            f"{name} must have shape ({N}, {D}) on {device}; got {tuple(t.shape)} on {t.device}"
        )
    return t.contiguous()


def _check_vector(name: str, t: Tensor | None, D: int, device: torch.device) -> Tensor | None:
    if t is None:
        return None
    if t.shape != (D,) or t.device != device:
        raise ValueError(
            f"{name} must have shape ({D},) on {device}; got {tuple(t.shape)} on {t.device}"
        )
    return t.contiguous()


def _check_dtype(name: str, t: Tensor | None) -> None:
    if t is not None and t.dtype not in DTYPES:
        raise TypeError(
            f"{name} must be one of {DTYPES} for the Triton add_layer_norm; got {t.dtype}"
        )


def _check_out(name: str, out: Tensor | None, shape: tuple[int, ...], dtype, device) -> Tensor:
    if out is None:
        return torch.empty(shape, dtype=dtype, device=device)
    if out.shape != shape or out.dtype != dtype or out.device != device or not out.is_contiguous():
        raise ValueError(
            f"{name} must be a contiguous {dtype} tensor of shape {shape} on {device}; got "
            f"{out.dtype} {tuple(out.shape)} on {out.device} (contiguous: {out.is_contiguous()})"
        )
    return out


def forward(
    x: Tensor,
    residual: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    out_dtype: torch.dtype,
    *,
    out: tuple[Tensor, Tensor, Tensor, Tensor] | None = None,
    block_m: int | None = None,
    num_warps: int | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(y, residual_out, mean, rstd)`` for x ``[N, D]`` (the backend's forward): y in
    ``out_dtype``, the stream ``residual + x`` ``[N, D]`` and the row statistics ``[N]`` in fp32.

    x and residual (or None) fp16/bf16/fp32; weight and bias ``[D]`` (or None), any float dtype.
    ``out``: the four outputs written in place (contiguous, of those shapes and dtypes).
    ``block_m``, ``num_warps``: launch settings (``launch_plan``). No host synchronisation and
    no allocation beyond the outputs: capture-safe once compiled.
    """
    check_triton_device("add_layer_norm", x)
    _check_dtype("x", x)
    _check_dtype("residual", residual)
    if x.dim() != 2:
        raise ValueError(f"x must be [N, D]; got shape {tuple(x.shape)}")
    N, D = x.shape
    plan = launch_plan(N, D, block_m=block_m, num_warps=num_warps)
    x = x.contiguous()
    if residual is not None:
        residual = _check_rows("residual", residual, N, D, x.device)
    weight = _check_vector("weight", weight, D, x.device)
    bias = _check_vector("bias", bias, D, x.device)
    y, residual_out, mean, rstd = out if out is not None else (None,) * 4
    y = _check_out("y", y, (N, D), out_dtype, x.device)
    residual_out = _check_out("residual_out", residual_out, (N, D), _ACC, x.device)
    mean = _check_out("mean", mean, (N,), _ACC, x.device)
    rstd = _check_out("rstd", rstd, (N,), _ACC, x.device)
    if N == 0:
        return y, residual_out, mean, rstd
    with device_guard(x):
        _add_layer_norm_fwd_kernel[(plan.programs,)](
            x,
            residual if residual is not None else x,
            weight if weight is not None else x,
            bias if bias is not None else x,
            y,
            residual_out,
            mean,
            rstd,
            N,
            D,
            eps,
            HAS_RESIDUAL=residual is not None,
            HAS_WEIGHT=weight is not None,
            HAS_BIAS=bias is not None,
            BLOCK_M=plan.block_m,
            BLOCK_D=plan.block_d,
            num_warps=plan.num_warps,
        )
    return y, residual_out, mean, rstd


def workspace_shape(N: int, D: int, needs: tuple[bool, ...], **options: int | None) -> tuple:
    """The shape ``[programs, rows, D]`` of the backward's dw/db workspace (rows: how many of
    dw and db ``needs`` asks for; ``options``: those of ``launch_plan``)."""
    plan = launch_plan(N, D, backward=True, **options)
    return (plan.programs, int(needs[2]) + int(needs[3]), D)


def backward(
    dy: Tensor,
    d_residual_out: Tensor | None,
    residual_out: Tensor,
    mean: Tensor,
    rstd: Tensor,
    weight: Tensor | None,
    x_dtype: torch.dtype,
    residual_dtype: torch.dtype,
    needs: tuple[bool, bool, bool, bool],
    *,
    dx_out: Tensor | None = None,
    d_residual_buf: Tensor | None = None,
    workspace: Tensor | None = None,
    block_m: int | None = None,
    tiles: int | None = None,
    num_warps: int | None = None,
) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    """``(dx, d_residual, dw, db)``, None where ``needs`` (the same four) says not wanted (the
    backend's backward).

    ``dx`` and ``d_residual`` are both ``d_pre`` (the gradient of the stream before the norm),
    written in ``x_dtype`` and ``residual_dtype``; dw and db come back in fp32, summed per
    program in registers and over programs by one ``sum`` of the workspace: the same bits on
    every run. ``dx_out``, ``d_residual_buf``, ``workspace`` (``workspace_shape``, fp32):
    written in place when given. ``block_m``, ``tiles``, ``num_warps``: launch settings.
    Capture-safe like ``forward``.
    """
    if len(needs) != 4:
        raise ValueError(f"needs must have 4 entries (dx, d_residual, dw, db); got {len(needs)}")
    need_x, need_res, need_w, need_b = needs
    check_triton_device("add_layer_norm", residual_out)
    if residual_out.dim() != 2 or residual_out.dtype != _ACC:
        raise ValueError(
            f"residual_out must be an fp32 [N, D] tensor; got {residual_out.dtype} "
            f"{tuple(residual_out.shape)}"
        )
    if need_w and weight is None:
        raise ValueError("needs[2] asks for the gradient of weight, but weight is None")
    N, D = residual_out.shape
    device = residual_out.device
    plan = launch_plan(N, D, backward=True, block_m=block_m, tiles=tiles, num_warps=num_warps)
    dy = _check_rows("dy", dy, N, D, device)
    if d_residual_out is not None:
        d_residual_out = _check_rows("d_residual_out", d_residual_out, N, D, device)
    residual_out = residual_out.contiguous()
    mean = _check_out("mean", mean.contiguous(), (N,), _ACC, device)
    rstd = _check_out("rstd", rstd.contiguous(), (N,), _ACC, device)
    weight = _check_vector("weight", weight, D, device)
    dx = _check_out("dx_out", dx_out, (N, D), x_dtype, device) if need_x else None
    d_res = (
        _check_out("d_residual_buf", d_residual_buf, (N, D), residual_dtype, device)
        if need_res
        else None
    )
    partial = None
    rows = int(need_w) + int(need_b)
    if rows:
        partial = _check_out("workspace", workspace, (plan.programs, rows, D), _ACC, device)
    if N > 0 and (need_x or need_res or rows):
        with device_guard(residual_out):
            _add_layer_norm_bwd_kernel[(plan.programs,)](
                dy,
                d_residual_out if d_residual_out is not None else dy,
                residual_out,
                mean,
                rstd,
                weight if weight is not None else residual_out,
                dx if dx is not None else dy,
                d_res if d_res is not None else dy,
                partial if partial is not None else residual_out,
                N,
                D,
                HAS_DRESIDUAL_OUT=d_residual_out is not None,
                HAS_WEIGHT=weight is not None,
                NEED_DX=need_x,
                NEED_DRESIDUAL=need_res,
                NEED_DW=need_w,
                NEED_DB=need_b,
                ROWS=rows,
                BLOCK_M=plan.block_m,
                BLOCK_D=plan.block_d,
                TILES=plan.tiles,
                num_warps=plan.num_warps,
            )
    dw = db = None
    if rows:
        sums = partial.sum(dim=0)  # [rows, D]: zeros when there are no rows
        dw = sums[0] if need_w else None
        db = sums[rows - 1].clone() if need_b else None  # not a view sharing dw's storage
    return dx, d_res, dw, db
