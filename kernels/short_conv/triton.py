"""The ``triton`` backend: the short depthwise convolution as two Triton kernels (GPU; CPU under
TRITON_INTERPRET=1). The design is in README.md next to this file.

- ``_short_conv_fwd_kernel``: one program per (batch, channel block, time block) tile,
  ``y = bias + sum_j w[:, j] * x[t - P + j]`` accumulated in fp32 (fp64 for fp64 inputs).
- ``_short_conv_bwd_kernel``: one program per (batch, channel block, time chunk); per tile of
  the chunk it writes ``dx`` and adds the tile's ``dw``/``dbias`` to per-program sums held in
  registers (per tile, or per element with ``ELEMENTWISE`` and reduced once), written at the
  end to a ``[programs, K + 1, D]`` fp32 workspace that the host reduces with one ``sum``:
  deterministic (no atomics). The chunk is ``TILES`` tiles: 8 in "bld" by default, else as
  many as make ``CHUNK`` time steps where that leaves enough programs, so the workspace stays
  a few % of a tensor's elements.

Both index a tile as ``[BLOCK_T, BLOCK_D]`` for layout "bld" (channels contiguous) and
``[BLOCK_D, BLOCK_T]`` for "bdl" (time contiguous), so the contiguous axis is the tile's last:
loads and stores are coalesced in either layout. Each tap is one shifted, masked load of the
tile (the halo rows come with the shift; the zero padding is the mask alone); the K shifted
loads of a tile hit L1/L2 after the first, so HBM sees the tile plus its halo once.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..backends import check_triton_device, device_guard
from .reference import LAYOUTS, PADDINGS, pad_left

MAX_TAPS = 32  # K is unrolled in the kernels; Hyena and M2 use 3, Mamba-style blocks 4
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
TILE = 4096  # elements per tile (forward and backward) for K <= 4; fewer for wider filters
CHUNK = 256  # time steps per backward program (fewer when that leaves too few programs)
MIN_PROGRAMS = 1024  # the backward shortens its chunks until it has at least this many programs
NUM_WARPS = 4  # the forward's warps: 32 elements of a 4096-element tile per thread
# the backward's defaults (benchmarks/NOTES.md, "short conv backward v2"; timed on an H200 with
# an input bias, all four gradients): 1024-element tiles on 2 warps in both layouts; in "bld"
# with K <= 4, chunks of 8 tiles summed per element (``elementwise``)
BWD_TILE = 1024
BWD_NUM_WARPS = 2
BWD_BLD_TILES = 8
_INT32_MAX = 2**31 - 1


# ---------------------------------------------------------------------------------------------
# Kernels


@triton.jit
def _tile_start(pid_b, d0, t0, D, L, BLD: tl.constexpr):
    """The 64-bit element offset of the tile's corner (batch ``pid_b``, channel d0, time t0)."""
    if BLD:
        return (pid_b.to(tl.int64) * L + t0) * D + d0
    else:
        return (pid_b.to(tl.int64) * D + d0) * L + t0


@triton.jit
def _tile_offsets(offs_d, offs_t, D, L, BLD: tl.constexpr, WIDE: tl.constexpr):
    """Offsets from the tile's corner: [BLOCK_T, BLOCK_D] for "bld", [BLOCK_D, BLOCK_T] for
    "bdl". ``WIDE``: the row offsets need 64 bits (a row stride times the rows passes 2^31)."""
    if BLD:
        rows = offs_t[:, None]
        if WIDE:
            rows = rows.to(tl.int64)
        return rows * D + offs_d[None, :]
    else:
        rows = offs_d[:, None]
        if WIDE:
            rows = rows.to(tl.int64)
        return rows * L + offs_t[None, :]


@triton.jit
def _tile_mask(mask_d, mask_t, BLD: tl.constexpr):
    if BLD:
        return mask_t[:, None] & mask_d[None, :]
    else:
        return mask_d[:, None] & mask_t[None, :]


@triton.jit
def _per_channel(v, BLD: tl.constexpr):
    """A [BLOCK_D] vector shaped to broadcast against the tile."""
    if BLD:
        return v[None, :]
    else:
        return v[:, None]


@triton.jit
def _sum_over_time(tile, BLD: tl.constexpr):
    if BLD:
        return tl.sum(tile, axis=0)
    else:
        return tl.sum(tile, axis=1)


@triton.jit
def _load_shifted(
    ptr,
    start,
    offs_d,
    offs_t,
    mask_d,
    t0,
    D,
    L,
    SHIFT: tl.constexpr,
    BLD: tl.constexpr,
    WIDE: tl.constexpr,
    ACC: tl.constexpr,
    offset=None,
    HAS_OFFSET: tl.constexpr = False,
):
    """The tile at times ``t0 + offs_t + SHIFT``, zero outside [0, L), in the ``ACC`` dtype;
    ``HAS_OFFSET``: plus ``offset`` ([BLOCK_D], per channel) inside [0, L) only."""
    offs_s = offs_t + SHIFT
    t = t0 + offs_s
    mask = _tile_mask(mask_d, (t >= 0) & (t < L), BLD)
    offs = _tile_offsets(offs_d, offs_s, D, L, BLD, WIDE)
    tile = tl.load(ptr + start + offs, mask=mask, other=0.0).to(ACC)
    if HAS_OFFSET:
        tile = tl.where(mask, tile + _per_channel(offset, BLD), 0.0)
    return tile


@triton.jit
def _load_tap(w_ptr, d0, offs_d, mask_d, j, K: tl.constexpr, ACC: tl.constexpr):
    """Tap j of the tile's channels: ``w[d0 + offs_d, j]``, [BLOCK_D]."""
    return tl.load(w_ptr + (d0 + offs_d) * K + j, mask=mask_d, other=0.0).to(ACC)


@triton.jit
def _short_conv_fwd_kernel(
    x_ptr,  # [B, D, L] ("bdl") or [B, L, D] ("bld")
    w_ptr,  # [D, K]
    bias_ptr,  # [D] (unused unless HAS_BIAS)
    input_bias_ptr,  # [D] (unused unless HAS_INPUT_BIAS)
    y_ptr,  # like x
    D,
    L,
    blocks_d,
    blocks_t,
    K: tl.constexpr,
    PAD: tl.constexpr,  # zeros before the sequence
    HAS_BIAS: tl.constexpr,
    HAS_INPUT_BIAS: tl.constexpr,  # added to x inside the sequence (not to the padding)
    BLD: tl.constexpr,
    WIDE: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_T: tl.constexpr,
    ACC: tl.constexpr,  # accumulation dtype: fp32, or fp64 for fp64 inputs
):
    # programs in memory order (the contiguous axis's blocks fastest), so programs running
    # together read neighbouring memory and share their halos in L2
    pid = tl.program_id(0)
    if BLD:
        pid_d = pid % blocks_d
        pid_t = (pid // blocks_d) % blocks_t
        pid_b = pid // (blocks_d * blocks_t)
    else:
        pid_t = pid % blocks_t
        pid_d = (pid // blocks_t) % blocks_d
        pid_b = pid // (blocks_t * blocks_d)
    d0 = pid_d * BLOCK_D
    t0 = pid_t * BLOCK_T
    offs_d = tl.arange(0, BLOCK_D)
    offs_t = tl.arange(0, BLOCK_T)
    mask_d = d0 + offs_d < D
    start = _tile_start(pid_b, d0, t0, D, L, BLD)
    ib = tl.zeros([BLOCK_D], dtype=ACC)
    if HAS_INPUT_BIAS:
        ib = tl.load(input_bias_ptr + d0 + offs_d, mask=mask_d, other=0.0).to(ACC)

    # y[t] = sum_j w[j] * (x + input_bias)[t - PAD + j]
    acc = _per_channel(_load_tap(w_ptr, d0, offs_d, mask_d, 0, K, ACC), BLD) * _load_shifted(
        x_ptr, start, offs_d, offs_t, mask_d, t0, D, L, -PAD, BLD, WIDE, ACC, ib, HAS_INPUT_BIAS
    )
    for j in tl.static_range(1, K):
        w_j = _load_tap(w_ptr, d0, offs_d, mask_d, j, K, ACC)
        x_j = _load_shifted(
            x_ptr,
            start,
            offs_d,
            offs_t,
            mask_d,
            t0,
            D,
            L,
            j - PAD,
            BLD,
            WIDE,
            ACC,
            ib,
            HAS_INPUT_BIAS,
        )
        acc += _per_channel(w_j, BLD) * x_j
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d0 + offs_d, mask=mask_d, other=0.0).to(ACC)
        acc += _per_channel(bias, BLD)

    mask = _tile_mask(mask_d, t0 + offs_t < L, BLD)
    offs = _tile_offsets(offs_d, offs_t, D, L, BLD, WIDE)
    tl.store(y_ptr + start + offs, acc.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_dx(
    dy,
    dy_ptr,
    w_ptr,
    dx_ptr,
    start,
    offs_d,
    offs_t,
    mask_d,
    d0,
    t0,
    D,
    L,
    K: tl.constexpr,
    PAD: tl.constexpr,
    NEED_DX: tl.constexpr,
    BLD: tl.constexpr,
    WIDE: tl.constexpr,
    ACC: tl.constexpr,
):
    """The tile's ``dx[t] = sum_j w[j] * dy[t + PAD - j]`` (tap PAD reuses the unshifted tile
    ``dy``), stored when ``NEED_DX``; returned zero past L (what d(input_bias) sums)."""
    dx = tl.zeros_like(dy)
    for j in tl.static_range(K):
        if j == PAD:
            dy_j = dy
        else:
            dy_j = _load_shifted(
                dy_ptr, start, offs_d, offs_t, mask_d, t0, D, L, PAD - j, BLD, WIDE, ACC
            )
        dx += _per_channel(_load_tap(w_ptr, d0, offs_d, mask_d, j, K, ACC), BLD) * dy_j
    mask = _tile_mask(mask_d, t0 + offs_t < L, BLD)
    if NEED_DX:
        offs = _tile_offsets(offs_d, offs_t, D, L, BLD, WIDE)
        tl.store(dx_ptr + start + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)
    return tl.where(mask, dx, 0.0)


@triton.jit
def _add_row(sums, offs_k, row, v):
    """``sums`` ([BLOCK_K, BLOCK_D]) with the [BLOCK_D] vector ``v`` added to row ``row``."""
    return sums + tl.where(offs_k[:, None] == row, v[None, :], 0.0)


@triton.jit
def _bwd_tile(
    dy_ptr,
    x_ptr,
    w_ptr,
    dx_ptr,
    sums,
    acc0,
    acc1,
    acc2,
    acc3,
    acc_bias,
    acc_ib,
    ib,
    start,
    offs_d,
    offs_t,
    offs_k,
    mask_d,
    d0,
    t0,
    D,
    L,
    K: tl.constexpr,
    PAD: tl.constexpr,
    NEED_DX: tl.constexpr,
    NEED_DW: tl.constexpr,
    NEED_DBIAS: tl.constexpr,
    HAS_INPUT_BIAS: tl.constexpr,
    NEED_DINPUT_BIAS: tl.constexpr,
    BLD: tl.constexpr,
    WIDE: tl.constexpr,
    ACC: tl.constexpr,
    ELEMENTWISE: tl.constexpr,
):
    """One tile of the backward: writes its dx and adds its dw, dbias and d(input_bias) to the
    program's sums, either summed over the tile's time steps into ``sums`` (rows < K, K and
    K + 1), or, with ``ELEMENTWISE`` (K <= 4), element by element into tile-shaped
    accumulators (``acc0..acc3`` one per tap, ``acc_bias``, ``acc_ib``) that the kernel
    reduces across its threads once, after its last tile."""
    dy = _load_shifted(dy_ptr, start, offs_d, offs_t, mask_d, t0, D, L, 0, BLD, WIDE, ACC)
    if NEED_DX or NEED_DINPUT_BIAS:
        dx = _bwd_dx(
            dy, dy_ptr, w_ptr, dx_ptr, start, offs_d, offs_t, mask_d, d0, t0, D, L,
            K, PAD, NEED_DX, BLD, WIDE, ACC,
        )  # fmt: skip
        if NEED_DINPUT_BIAS:
            # d(input_bias) = sum over the sequence of dx (zero past L: _bwd_dx)
            if ELEMENTWISE:
                acc_ib += dx
            else:
                sums = _add_row(sums, offs_k, K + 1, _sum_over_time(dx, BLD))
    if NEED_DW:
        # dw[j] = sum_t dy[t] * x[t - PAD + j]
        for j in tl.static_range(K):
            x_j = _load_shifted(
                x_ptr,
                start,
                offs_d,
                offs_t,
                mask_d,
                t0,
                D,
                L,
                j - PAD,
                BLD,
                WIDE,
                ACC,
                ib,
                HAS_INPUT_BIAS,
            )
            if not ELEMENTWISE:
                sums = _add_row(sums, offs_k, j, _sum_over_time(dy * x_j, BLD))
            elif j == 0:
                acc0 += dy * x_j
            elif j == 1:
                acc1 += dy * x_j
            elif j == 2:
                acc2 += dy * x_j
            else:
                acc3 += dy * x_j
    if NEED_DBIAS:
        if ELEMENTWISE:
            acc_bias += dy
        else:
            sums = _add_row(sums, offs_k, K, _sum_over_time(dy, BLD))
    return sums, acc0, acc1, acc2, acc3, acc_bias, acc_ib


@triton.jit
def _short_conv_bwd_kernel(
    dy_ptr,  # like x
    x_ptr,  # [B, D, L] ("bdl") or [B, L, D] ("bld")
    w_ptr,  # [D, K]
    input_bias_ptr,  # [D] (unused unless HAS_INPUT_BIAS)
    dx_ptr,  # like x (unused unless NEED_DX)
    # [B * chunks, ROWS, D] ACC: per-program dw (rows < K), dbias (row K) and, when
    # ROWS = K + 2, d(input_bias) (row K + 1)
    partial_ptr,
    D,
    L,
    blocks_d,
    chunks,
    K: tl.constexpr,
    PAD: tl.constexpr,
    NEED_DX: tl.constexpr,
    NEED_DW: tl.constexpr,
    NEED_DBIAS: tl.constexpr,
    HAS_INPUT_BIAS: tl.constexpr,
    NEED_DINPUT_BIAS: tl.constexpr,
    ROWS: tl.constexpr,  # K + 1, or K + 2 with an input bias
    BLD: tl.constexpr,
    WIDE: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_K: tl.constexpr,  # ROWS rounded up to a power of two
    TILES: tl.constexpr,  # time tiles per program: its chunk is TILES * BLOCK_T steps
    ACC: tl.constexpr,
    ELEMENTWISE: tl.constexpr = False,  # K <= 4: sums per element, reduced once at the end
):
    pid = tl.program_id(0)
    if BLD:
        pid_d = pid % blocks_d
        pid_c = (pid // blocks_d) % chunks
        pid_b = pid // (blocks_d * chunks)
    else:
        pid_c = pid % chunks
        pid_d = (pid // chunks) % blocks_d
        pid_b = pid // (chunks * blocks_d)
    d0 = pid_d * BLOCK_D
    offs_d = tl.arange(0, BLOCK_D)
    offs_t = tl.arange(0, BLOCK_T)
    offs_k = tl.arange(0, BLOCK_K)
    mask_d = d0 + offs_d < D
    ib = tl.zeros([BLOCK_D], dtype=ACC)
    if HAS_INPUT_BIAS:
        ib = tl.load(input_bias_ptr + d0 + offs_d, mask=mask_d, other=0.0).to(ACC)

    # the program's dw (rows j < K), dbias (row K) and d(input_bias) (row K + 1), summed over
    # its tiles in registers
    sums = tl.zeros([BLOCK_K, BLOCK_D], dtype=ACC)
    if BLD:
        acc0 = tl.zeros([BLOCK_T, BLOCK_D], dtype=ACC)
    else:
        acc0 = tl.zeros([BLOCK_D, BLOCK_T], dtype=ACC)
    acc1, acc2, acc3, acc_bias, acc_ib = acc0, acc0, acc0, acc0, acc0
    # a constexpr trip count (a runtime loop in the compiled kernel, one compilation per
    # count): the interpreter under NumPy 2 cannot loop over a bound that is a kernel argument
    # or derived from the program id. The last chunk skips its tiles past L.
    for i in range(TILES):
        t0 = (pid_c * TILES + i) * BLOCK_T
        if t0 < L:
            start = _tile_start(pid_b, d0, t0, D, L, BLD)
            sums, acc0, acc1, acc2, acc3, acc_bias, acc_ib = _bwd_tile(
                dy_ptr,
                x_ptr,
                w_ptr,
                dx_ptr,
                sums,
                acc0,
                acc1,
                acc2,
                acc3,
                acc_bias,
                acc_ib,
                ib,
                start,
                offs_d,
                offs_t,
                offs_k,
                mask_d,
                d0,
                t0,
                D,
                L,
                K,
                PAD,
                NEED_DX,
                NEED_DW,
                NEED_DBIAS,
                HAS_INPUT_BIAS,
                NEED_DINPUT_BIAS,
                BLD,
                WIDE,
                ACC,
                ELEMENTWISE,
            )

    if ELEMENTWISE:
        if NEED_DW:
            for j in tl.static_range(K):
                if j == 0:
                    dw_j = _sum_over_time(acc0, BLD)
                elif j == 1:
                    dw_j = _sum_over_time(acc1, BLD)
                elif j == 2:
                    dw_j = _sum_over_time(acc2, BLD)
                else:
                    dw_j = _sum_over_time(acc3, BLD)
                sums = _add_row(sums, offs_k, j, dw_j)
        if NEED_DBIAS:
            sums = _add_row(sums, offs_k, K, _sum_over_time(acc_bias, BLD))
        if NEED_DINPUT_BIAS:
            sums = _add_row(sums, offs_k, K + 1, _sum_over_time(acc_ib, BLD))

    if NEED_DW or NEED_DBIAS or NEED_DINPUT_BIAS:
        row = (pid_b.to(tl.int64) * chunks + pid_c) * ROWS
        offs = (row + offs_k[:, None]) * D + d0 + offs_d[None, :]
        mask = (offs_k[:, None] < ROWS) & mask_d[None, :]
        tl.store(partial_ptr + offs, sums, mask=mask)


# ---------------------------------------------------------------------------------------------
# Host launchers


def _dims(x: Tensor, layout: str) -> tuple[int, int, int]:
    """(B, D, L) whatever the layout."""
    return tuple(x.shape) if layout == "bdl" else (x.shape[0], x.shape[2], x.shape[1])


def _check(x: Tensor, w: Tensor, padding: str, layout: str) -> tuple[int, int, int, int]:
    """Validates what the kernels assume; returns (B, D, L, K)."""
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}; got {padding!r}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}; got {layout!r}")
    if x.dtype not in DTYPES:
        raise TypeError(f"x must be one of {DTYPES} for the Triton short_conv; got {x.dtype}")
    if x.dim() != 3:
        raise ValueError(f"x must be 3-dimensional ({layout}); got shape {tuple(x.shape)}")
    check_triton_device("short_conv", x)
    B, D, L = _dims(x, layout)
    if w.dim() != 2 or w.shape[0] != D:
        raise ValueError(f"w must have shape (D, K) = ({D}, K); got shape {tuple(w.shape)}")
    K = w.shape[1]
    if not 1 <= K <= MAX_TAPS:
        raise ValueError(
            f"the Triton short_conv takes 1 to {MAX_TAPS} taps; got w with K={K} "
            "(use backend='torch' for wider filters)"
        )
    if w.device != x.device:
        raise ValueError(f"w must be on the same device as x ({x.device}); got {w.device}")
    return B, D, L, K


def _check_out(name: str, out: Tensor, like: Tensor) -> None:
    if out.shape != like.shape or out.dtype != like.dtype or not out.is_contiguous():
        raise ValueError(
            f"{name} must be a contiguous {like.dtype} tensor of shape {tuple(like.shape)}; got "
            f"{out.dtype} {tuple(out.shape)} (contiguous: {out.is_contiguous()})"
        )


def default_tile(K: int) -> int:
    """Elements per tile: ``TILE`` up to 4 taps, then less, so the K shifted tiles a thread
    holds stay in registers (K = 32 at 4096 spilled in the sm_90 compile)."""
    return max(512, TILE * 4 // max(4, triton.next_power_of_2(K)))


def tile_shape(D: int, L: int, layout: str, tile: int = TILE) -> tuple[int, int]:
    """``(BLOCK_D, BLOCK_T)``, powers of two with about ``tile`` elements: the contiguous axis
    (channels for "bld", time for "bdl") gets up to 128 / 1024 of them, the other the rest."""
    if layout == "bld":
        block_d = min(128, triton.next_power_of_2(D))
        block_t = min(max(1, tile // block_d), triton.next_power_of_2(L))
    else:
        block_t = min(1024, tile, triton.next_power_of_2(L))
        block_d = min(max(1, tile // block_t), triton.next_power_of_2(D))
    return block_d, block_t


class LaunchPlan(NamedTuple):
    """Tiles and grid of both kernels for one shape."""

    block_d: int
    block_t: int
    blocks_d: int  # channel blocks
    blocks_t: int  # time tiles per sequence
    tiles: int  # time tiles per backward program
    chunks: int  # backward programs per (sequence, channel block)
    wide: bool  # offsets inside a tile (halo included) can pass 2^31: 64-bit row offsets


def launch_plan(
    B: int,
    D: int,
    L: int,
    K: int,
    layout: str,
    *,
    tile: int | None = None,
    tiles: int | None = None,
    wide: bool = False,
) -> LaunchPlan:
    """The launch for ``[B, D, L]`` (or ``[B, L, D]``) and K taps. ``tile``: elements per tile
    (default ``default_tile(K)``). ``tiles``: time tiles per backward program; by default
    as many as make ``CHUNK`` steps (a small dw workspace), fewer where that would leave
    under ``MIN_PROGRAMS`` programs. ``wide``: 64-bit tile offsets even where 32 bits do."""
    if tile is not None and (tile < 1 or tile & (tile - 1)):
        raise ValueError(f"tile must be a power of two; got {tile}")
    if tiles is not None and tiles < 1:
        raise ValueError(f"tiles must be >= 1; got {tiles}")
    block_d, block_t = tile_shape(D, L, layout, tile or default_tile(K))
    blocks_d, blocks_t = triton.cdiv(D, block_d), triton.cdiv(L, block_t)
    if tiles is None:
        tiles = min(CHUNK // block_t, blocks_t, B * blocks_d * blocks_t // MIN_PROGRAMS)
    tiles = max(1, min(tiles, blocks_t))
    extent = (block_t + K) * D + block_d if layout == "bld" else block_d * L + block_t + K
    return LaunchPlan(
        block_d=block_d,
        block_t=block_t,
        blocks_d=blocks_d,
        blocks_t=blocks_t,
        tiles=tiles,
        chunks=triton.cdiv(blocks_t, tiles),
        wide=wide or extent > _INT32_MAX,
    )


def backward_plan_options(layout: str, K: int, options: dict) -> dict:
    """``launch_plan``'s options for the backward: ``options`` with the backward's defaults
    where a key is absent (an explicit ``tiles=None`` keeps ``launch_plan``'s own rule)."""
    defaults = {"tile": min(BWD_TILE, default_tile(K))}
    if layout == "bld" and K <= 4:
        defaults["tiles"] = BWD_BLD_TILES
    return defaults | options


def workspace_shape(
    x: Tensor, w: Tensor, layout: str, input_bias: bool = False, **options: int | bool | None
) -> tuple[int, int, int]:
    """The shape ``[B * chunks, K + 1, D]`` (``K + 2`` rows with the gradient of an input
    bias) of the backward's dw workspace (``options``: those of ``launch_plan``, defaulted as
    the backward defaults them)."""
    B, D, L = _dims(x, layout)
    K = w.shape[1]
    plan = launch_plan(B, D, L, K, layout, **backward_plan_options(layout, K, options))
    return (B * plan.chunks, K + 1 + int(input_bias), D)


def _check_input_bias(input_bias: Tensor | None, D: int, x: Tensor) -> Tensor | None:
    if input_bias is None:
        return None
    if input_bias.shape != (D,) or input_bias.device != x.device:
        raise ValueError(
            f"input_bias must have shape ({D},) on {x.device}; got {tuple(input_bias.shape)} "
            f"on {input_bias.device}"
        )
    return input_bias.contiguous()


def _acc_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def forward(
    x: Tensor,
    w: Tensor,
    bias: Tensor | None,
    padding: str,
    layout: str,
    *,
    input_bias: Tensor | None = None,
    out: Tensor | None = None,
    num_warps: int = NUM_WARPS,
    **options: int | bool | None,
) -> Tensor:
    """``y = bias + sum_j w[:, j] * x[t - P + j]`` in ``x.dtype`` (the backend's forward).

    x ``[B, D, L]`` or ``[B, L, D]`` (per ``layout``), w ``[D, K]``, bias ``[D]`` or None, any
    float dtypes. ``input_bias`` ``[D]`` or None: added to x inside the sequence (the padding
    stays zero), as the bias of a linear layer before the convolution would be.
    ``out``: written in place when given (contiguous, x's shape and dtype).
    ``num_warps`` and ``options`` (those of ``launch_plan``): launch settings.
    No host synchronisation and no allocation beyond the output: safe to capture in a CUDA
    graph once compiled.
    """
    B, D, L, K = _check(x, w, padding, layout)
    x = x.contiguous()
    w = w.contiguous()
    if bias is not None:
        if bias.shape != (D,) or bias.device != x.device:
            raise ValueError(
                f"bias must have shape ({D},) on {x.device}; got {tuple(bias.shape)} on "
                f"{bias.device}"
            )
        bias = bias.contiguous()
    input_bias = _check_input_bias(input_bias, D, x)
    if out is not None:
        _check_out("out", out, x)
    y = torch.empty_like(x) if out is None else out
    if B == 0:
        return y
    plan = launch_plan(B, D, L, K, layout, **options)
    with device_guard(x):
        _short_conv_fwd_kernel[(B * plan.blocks_d * plan.blocks_t,)](
            x,
            w,
            bias if bias is not None else w,
            input_bias if input_bias is not None else w,
            y,
            D,
            L,
            plan.blocks_d,
            plan.blocks_t,
            K=K,
            PAD=pad_left(padding, K),
            HAS_BIAS=bias is not None,
            HAS_INPUT_BIAS=input_bias is not None,
            BLD=layout == "bld",
            WIDE=plan.wide,
            BLOCK_D=plan.block_d,
            BLOCK_T=plan.block_t,
            ACC=tl.float64 if x.dtype == torch.float64 else tl.float32,
            num_warps=num_warps,
        )
    return y


def backward(
    dy: Tensor,
    x: Tensor,
    w: Tensor,
    padding: str,
    layout: str,
    needs: tuple[bool, bool, bool, bool],
    *,
    input_bias: Tensor | None = None,
    dx_out: Tensor | None = None,
    workspace: Tensor | None = None,
    num_warps: int = BWD_NUM_WARPS,
    elementwise: bool | None = None,
    **options: int | bool | None,
) -> tuple[Tensor | None, ...]:
    """``(dx, dw, dbias, d input_bias)``, None where ``needs`` (the same four) says not wanted
    (the backend's backward).

    dx in ``x.dtype``; dw ``[D, K]``, dbias and d(input_bias) ``[D]`` in fp32 (fp64 for fp64
    inputs), summed per program in registers and over programs by one ``sum`` of the
    workspace: the same bits on every run. ``dx_out``, ``workspace`` (``workspace_shape``, the
    accumulation dtype): written in place when given. ``num_warps`` and ``options`` (those of
    ``launch_plan``; ``backward_plan_options`` fills in the backward's tile and chunk):
    launch settings. ``elementwise`` (K <= 4): each program sums its products element by
    element over its tiles and reduces across its threads once, instead of once per tile and
    gradient; None: in layout "bld" with K <= 4. Capture-safe like ``forward``.
    """
    need_x, need_w, need_bias, need_ib = needs
    B, D, L, K = _check(x, w, padding, layout)
    input_bias = _check_input_bias(input_bias, D, x)
    if need_ib and input_bias is None:
        raise ValueError("needs[3] asks for the gradient of input_bias, but input_bias is None")
    if dy.shape != x.shape or dy.device != x.device:
        raise ValueError(
            f"dy must have x's shape {tuple(x.shape)} on {x.device}; got {tuple(dy.shape)} on "
            f"{dy.device}"
        )
    dy = dy.contiguous()
    x = x.contiguous()
    w = w.contiguous()
    if elementwise is None:
        elementwise = layout == "bld" and K <= 4
    if elementwise and K > 4:
        raise ValueError(f"elementwise sums cover up to 4 taps; got K={K}")
    plan = launch_plan(B, D, L, K, layout, **backward_plan_options(layout, K, options))

    dx = None
    if need_x:
        if dx_out is not None:
            _check_out("dx_out", dx_out, x)
        dx = torch.empty_like(x) if dx_out is None else dx_out
    partial = None
    rows = K + 1 + int(need_ib)
    if need_w or need_bias or need_ib:
        shape = (B * plan.chunks, rows, D)
        acc_dtype = _acc_dtype(x)
        if workspace is not None and (
            workspace.shape != shape
            or workspace.dtype != acc_dtype
            or not workspace.is_contiguous()
        ):
            raise ValueError(
                f"workspace must be a contiguous {acc_dtype} tensor of shape {shape}; got "
                f"{workspace.dtype} {tuple(workspace.shape)}"
            )
        partial = x.new_empty(shape, dtype=acc_dtype) if workspace is None else workspace

    if B > 0 and (need_x or partial is not None):
        with device_guard(x):
            _short_conv_bwd_kernel[(B * plan.blocks_d * plan.chunks,)](
                dy,
                x,
                w,
                input_bias if input_bias is not None else w,
                dx if dx is not None else dy,
                partial if partial is not None else dy,
                D,
                L,
                plan.blocks_d,
                plan.chunks,
                K=K,
                PAD=pad_left(padding, K),
                NEED_DX=need_x,
                NEED_DW=need_w,
                NEED_DBIAS=need_bias,
                HAS_INPUT_BIAS=input_bias is not None,
                NEED_DINPUT_BIAS=need_ib,
                ROWS=rows,
                BLD=layout == "bld",
                WIDE=plan.wide,
                BLOCK_D=plan.block_d,
                BLOCK_T=plan.block_t,
                BLOCK_K=triton.next_power_of_2(rows),
                TILES=plan.tiles,
                ACC=tl.float64 if x.dtype == torch.float64 else tl.float32,
                ELEMENTWISE=elementwise,
                num_warps=num_warps,
            )
    sums = partial.sum(dim=0) if partial is not None else None  # [rows, D]
    dw = sums[:K].t() if need_w else None
    dbias = sums[K].clone() if need_bias else None  # not a view sharing dw's storage
    return dx, dw, dbias, (sums[K + 1].clone() if need_ib else None)
