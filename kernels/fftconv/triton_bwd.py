"""Fused backward FFT convolution in Triton: every gradient of the gated convolution in one
kernel, u, dy and the gates read once, the spectra recomputed in registers, nothing of size
``B * H * n`` written to memory.

The forward (``triton_fwd.py``) computes, per row, ``v = u * pregate``,
``z = irfft(rfft(v, n) * kf)[:L]``, ``y = postgate * z + bias * v``. Its gradients
(``core.py``, README section 2) for a non-fold plan:

    dz = dy * postgate                       dpostgate = dy * z           (z recomputed)
    dv = irfft(rfft(dz, n) * conj(kf))[:L] + bias * dy
    du = dv * pregate                        dpregate = dv * u
    dbias[h] = sum_{b,t} dy * v              dkc = irfft(sum_b rfft(dz) * conj(rfft(v)))[:m]

With the unitary two-stage Monarch transform of ``triton_fwd`` (``Fwd(x) = FFT(x) / sqrt(n)``
in the permuted layout ``[k1, k2]``, ``Inv`` its inverse, both on ``[N1, N2]`` tiles), and two
sequences ``b, b+1`` of a channel packed as one complex signal (``PAIR`` mode of the forward):

    P = Fwd(v_b + i v_b+1)      Q = Fwd(dz_b + i dz_b+1)
    dv_b + i dv_b+1 = Inv(Q * conj(K))            (conj(K) is the spectrum of a real filter)
    z_b + i z_b+1   = Inv(P * K)
    S += Q * conj(P)            Re(IFFT(n * S)) = sum over the pairs of corr(dz_b, v_b)

The last line holds because the cross terms ``corr(dz_b, v_b+1)`` enter as ``i (...)`` with
real correlations, so they are purely imaginary; the filter gradient therefore needs one
spectrum accumulator per channel, not per sequence, and no separation of the pair.

Design choices:

- One program per (channel h, chunk of the channel's batch); it loops over the chunk's
  sequence pairs (a ``while`` loop with runtime bounds: no recompilation per batch size, and
  none of a ``for`` loop's prefetch buffers). Per pair, in this order, so that few tiles are
  live at once: load v (u * pregate), ``P = Fwd(v)`` (8 ``tl.dot``s), ``z = Inv(P * K)`` and
  dpostgate (8 dots, only when the postgate wants a gradient), P kept in the operand dtype;
  then load dz, ``Q = Fwd(dz)`` (8), ``S += Q * conj(P)``, ``dv = Inv(Q * conj(K))`` (8), du and
  dpregate. Inputs are loaded again where they are used (the repeat loads hit L1/L2) instead
  of being held across the transforms. The forward issues 16 dots per pair, the backward 24 or
  32, and reads 2-4 tensors to the forward's 1-3.
- The filter gradient is deterministic: each program writes its partial spectrum to its own
  slot of a ``[H, chunks, 2, N1, N2]`` fp32 buffer, summed by ``torch.sum`` on the host (no
  atomics: the same inputs give the same bits). The chunk count is set from the device's SM
  count (``PROGRAMS_PER_SM`` programs per SM, no more), so the buffer stays near
  ``max(H, 8 * SMs) * 8n`` bytes however large the batch. The host then undoes the
  permutation, takes one complex inverse FFT per channel (``H * n`` work, not ``B * H * n``),
  keeps the real part and the first ``m`` samples, and applies the frequency cut-off (a
  symmetric low-pass, so it commutes with taking the real part). K is zero above the cut-off,
  so dv and z need no mask.
- ``Config`` (per FFT size, ``config_for``): the Monarch split ``N1 x N2``, warps, ``hoist``
  (DFT matrices, twiddles and filter spectrum loaded once before the loop and held, or
  reloaded from L1/L2 at each use) and ``acc_in_memory`` (``S`` read-modified-written in the
  program's slot every pair, with a barrier, instead of held in registers: 2 fewer fp32 tiles
  live, L1/L2 traffic of ``16n`` bytes per pair). The defaults minimise the spills of the
  sm_90 compile (``ptxas -v``, bf16, causal L = n/2; registers / spill-store bytes):

      n     config                          regs / spills   (alternatives)
      512   32x16, 2 warps, hoist           216 / 0         reload: 176 / 0
      1024  32x32, 4 warps, hoist           237 / 0         64x16, 8 warps: 236 / 0
      2048  64x32, 4 warps, acc in memory   255 / 72        acc in registers 212; 128x16 8w: 0
      4096  128x32, 8 warps, acc in memory  255 / 440       64x64 4w: 1284 (registers: 2196)
      8192  128x64, 8 warps, acc in memory  255 / 1188      registers: 2144; 256x32 16w: 1612

  From n = 4096 the split follows the warps (``N1 = 16 * warps``): Triton lays chained dots
  out with every warp along the first tile dimension, so a tile with fewer rows than
  ``16 * warps`` is replicated across warps instead of shared (a 64x64 tile costs 8 warps as
  many registers as 4). fp32 (tf32x3 dots split every operand in two) spills more: no hoist
  up to n = 1024 (84 / 40 bytes), 2.6-8 KB from 2048 on.
- Always paired: B = 1 (or the last sequence of an odd batch) runs as a half-empty pair.
- Sizes, dtypes and the zero-row skip (``ROWS``) as in the forward (``supports`` is the
  forward's); the DFT tables are the forward's where the split is, else built here (``prepare``
  builds them before CUDA graph capture).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..backends import sm_count
from . import triton_fwd
from .triton_fwd import (
    DTYPES,
    MAX_FFT,
    MIN_FFT,
    _complex_dot,
    _dot,
    _load_complex,
    _load_row,
    dot_precision,
    split,
    supports,
)

__all__ = [
    "Config",
    "config_for",
    "dk_from_spectrum",
    "dot_flops",
    "fftconv_bwd",
    "launch",
    "prepare",
    "supports",
]

PROGRAMS_PER_SM = 8

# ---------------------------------------------------------------------------------------------
# Kernel


@triton.jit
def _forward_transform(
    x_re, x_im, f1_re, f1_im, tw_re, tw_im, f2_re, f2_im, PRECISION: tl.constexpr
):
    """``Fwd(x_re + i x_im)``: x [ROWS, N2] in the operand dtype (the first ROWS rows of the
    tile; the rest is zero padding, skipped) -> the spectrum [N1, N2] fp32, permuted layout."""
    op_dtype = f2_re.dtype
    b_re, b_im = _complex_dot(f1_re, f1_im, x_re, x_im, PRECISION)  # [N1, N2]
    c_re = (b_re * tw_re - b_im * tw_im).to(op_dtype)
    c_im = (b_re * tw_im + b_im * tw_re).to(op_dtype)
    return _complex_dot(c_re, c_im, f2_re, f2_im, PRECISION)


@triton.jit
def _inverse_transform(
    s_re, s_im, g1_re, g1_im, tw_re, tw_im, f2_re, f2_im, PRECISION: tl.constexpr
):
    """``Inv(s_re + i s_im)`` restricted to the first ROWS rows: s [N1, N2] in the operand
    dtype -> real and imaginary parts [ROWS, N2] fp32. Written with the tables as given (no
    negated operand: see the note on the forward's last stage in triton_fwd.py)."""
    op_dtype = f2_re.dtype
    # S @ conj(F_N2)
    d_re = tl.dot(s_re, f2_re, acc=_dot(s_im, f2_im, PRECISION), input_precision=PRECISION)
    d_im = _dot(s_im, f2_re, PRECISION) - _dot(s_re, f2_im, PRECISION)
    e_re = (d_re * tw_re + d_im * tw_im).to(op_dtype)  # times conj(T)
    e_im = (d_im * tw_re - d_re * tw_im).to(op_dtype)
    # conj(F_N1)[:ROWS] @ E
    out_re = tl.dot(g1_re, e_re, acc=_dot(g1_im, e_im, PRECISION), input_precision=PRECISION)
    out_im = _dot(g1_re, e_im, PRECISION) - _dot(g1_im, e_re, PRECISION)
    return out_re, out_im


@triton.jit
def _forward_tables(dft1_ptr, dft2_ptr, twiddle_ptr, offs_f1, offs_f2, offs_tile, N1, N2):
    f1_re, f1_im = _load_complex(dft1_ptr, offs_f1, N1 * N1)  # [N1, ROWS]
    f2_re, f2_im = _load_complex(dft2_ptr, offs_f2, N2 * N2)  # [N2, N2]
    tw_re, tw_im = _load_complex(twiddle_ptr, offs_tile, N1 * N2)  # [N1, N2]
    return f1_re, f1_im, f2_re, f2_im, tw_re, tw_im


@triton.jit
def _inverse_tables(dft1_ptr, dft2_ptr, twiddle_ptr, kf_ptr, offs_g1, offs_f2, offs_tile, N1, N2):
    g1_re, g1_im = _load_complex(dft1_ptr, offs_g1, N1 * N1)  # [ROWS, N1]
    f2_re, f2_im = _load_complex(dft2_ptr, offs_f2, N2 * N2)  # [N2, N2]
    tw_re, tw_im = _load_complex(twiddle_ptr, offs_tile, N1 * N2)  # [N1, N2]
    k_re, k_im = _load_complex(kf_ptr, offs_tile, N1 * N2)  # [N1, N2]
    return g1_re, g1_im, f2_re, f2_im, tw_re, tw_im, k_re, k_im


@triton.jit
def _load_pair(ptr, row_v, row_w, offs, mask_v, mask_w):
    return _load_row(ptr, row_v, offs, mask_v), _load_row(ptr, row_w, offs, mask_w)


@triton.jit
def _store_pair(ptr, row_v, row_w, offs, mask_v, mask_w, x_v, x_w):
    tl.store(ptr + row_v + offs, x_v.to(ptr.dtype.element_ty), mask=mask_v)
    tl.store(ptr + row_w + offs, x_w.to(ptr.dtype.element_ty), mask=mask_w)


# B, H and the chunk length only index programs, rows and loop bounds: no recompilation
@triton.jit(do_not_specialize=["B", "H", "PAIRS_PER_PROGRAM"])
def _fftconv_bwd_kernel(
    dy_ptr,  # [B, H, L]
    u_ptr,  # [B, H, L]
    pregate_ptr,  # [B, H, L] (unused unless HAS_PREGATE)
    postgate_ptr,  # [B, H, L] (unused unless HAS_POSTGATE)
    bias_ptr,  # [H] (unused unless HAS_BIAS)
    kf_ptr,  # [H, 2, N1, N2] fp32, the filter spectrum in the kernel's order
    dft1_ptr,  # [2, N1, N1] operand dtype
    dft2_ptr,  # [2, N2, N2] operand dtype
    twiddle_ptr,  # [2, N1, N2] fp32
    du_ptr,  # [B, H, L] (unused unless NEED_DU)
    dpregate_ptr,  # [B, H, L] (unused unless NEED_DPREGATE)
    dpostgate_ptr,  # [B, H, L] (unused unless NEED_DPOSTGATE)
    dk_ptr,  # [H, chunks, 2, N1, N2] fp32 partial spectra (unused unless NEED_DK)
    dbias_ptr,  # [H, chunks] fp32 partial sums (unused unless NEED_DBIAS)
    B,
    H,
    L,
    PAIRS_PER_PROGRAM,
    N1: tl.constexpr,
    N2: tl.constexpr,
    ROWS: tl.constexpr,
    HAS_PREGATE: tl.constexpr,
    HAS_POSTGATE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    NEED_DU: tl.constexpr,
    NEED_DK: tl.constexpr,
    NEED_DPREGATE: tl.constexpr,
    NEED_DPOSTGATE: tl.constexpr,
    NEED_DBIAS: tl.constexpr,
    HOIST: tl.constexpr,
    ACC_IN_MEMORY: tl.constexpr,
    PRECISION: tl.constexpr,
):
    NEED_DV: tl.constexpr = NEED_DU or NEED_DPREGATE
    NEED_Q: tl.constexpr = NEED_DV or NEED_DK  # the spectrum of dz
    NEED_P: tl.constexpr = NEED_DK or NEED_DPOSTGATE  # the spectrum of v

    pid = tl.program_id(0)
    n_pairs = tl.cdiv(B, 2)
    programs_per_channel = tl.cdiv(n_pairs, PAIRS_PER_PROGRAM)
    pid_h = pid // programs_per_channel
    pid_c = pid - pid_h * programs_per_channel  # the chunk of the batch
    pair_start = pid_c * PAIRS_PER_PROGRAM
    pair_end = tl.minimum(pair_start + PAIRS_PER_PROGRAM, n_pairs)
    op_dtype = dft1_ptr.dtype.element_ty

    offs_r = tl.arange(0, ROWS)  # t1 of the rows that hold the sequences
    offs_n1 = tl.arange(0, N1)
    offs_n2 = tl.arange(0, N2)
    offs_t = offs_r[:, None] * N2 + offs_n2[None, :]  # [ROWS, N2] time index
    mask_v = offs_t < L
    offs_tile = offs_n1[:, None] * N2 + offs_n2[None, :]  # [N1, N2]
    offs_f1 = offs_n1[:, None] * N1 + offs_r[None, :]  # [N1, ROWS]
    offs_g1 = offs_r[:, None] * N1 + offs_n1[None, :]  # [ROWS, N1]
    offs_f2 = offs_n2[:, None] * N2 + offs_n2[None, :]  # [N2, N2]
    kf_ptr += pid_h.to(tl.int64) * (2 * N1 * N2)
    HL = H.to(tl.int64) * L

    if HOIST:
        f1_re, f1_im, f2_re, f2_im, tw_re, tw_im = _forward_tables(
            dft1_ptr, dft2_ptr, twiddle_ptr, offs_f1, offs_f2, offs_tile, N1, N2
        )
        g1_re, g1_im, f2_re, f2_im, tw_re, tw_im, k_re, k_im = _inverse_tables(
            dft1_ptr, dft2_ptr, twiddle_ptr, kf_ptr, offs_g1, offs_f2, offs_tile, N1, N2
        )
    if HAS_BIAS:
        bias = tl.load(bias_ptr + pid_h).to(tl.float32)

    # the filter-gradient spectrum, sum over the pairs of Q * conj(P): in registers, or
    # (ACC_IN_MEMORY) in this program's slot of the partial buffer, read and written per pair
    dk_slot_ptr = dk_ptr + pid.to(tl.int64) * (2 * N1 * N2)  # slot [h, chunk] = [pid]
    dk_re = tl.zeros([N1, N2], dtype=tl.float32)
    dk_im = tl.zeros([N1, N2], dtype=tl.float32)
    if NEED_DK and ACC_IN_MEMORY:
        tl.store(dk_slot_ptr + offs_tile, dk_re)
        tl.store(dk_slot_ptr + N1 * N2 + offs_tile, dk_im)
    dbias = tl.zeros([N2], dtype=tl.float32)

    # A while loop, not range(pair_start, pair_end): the interpreter cannot take a tensor as a
    # range bound under numpy 2 (a for loop would also be software-pipelined, with prefetch
    # buffers in shared memory; not tried). Each input is loaded again where it is used rather
    # than held across the transforms: the repeat loads hit L1/L2, while a held pair of input
    # rows costs the registers of a whole spectrum tile (ROWS = N1/2 for a causal filter).
    pair = pair_start
    while pair < pair_end:
        b = 2 * pair
        row_v = (b.to(tl.int64) * H + pid_h) * L  # 64-bit: B*H*L may pass 2^31
        row_w = row_v + HL
        mask_w = mask_v & (b + 1 < B)

        # 1. the gated input v, its spectrum P, z = Inv(P * K) for the postgate, dbias
        if NEED_P or NEED_DBIAS:
            v, w = _load_pair(u_ptr, row_v, row_w, offs_t, mask_v, mask_w)  # [ROWS, N2]
            if HAS_PREGATE:
                pre_v, pre_w = _load_pair(pregate_ptr, row_v, row_w, offs_t, mask_v, mask_w)
                v *= pre_v
                w *= pre_w
            if NEED_DBIAS:
                dy_v, dy_w = _load_pair(dy_ptr, row_v, row_w, offs_t, mask_v, mask_w)
                dbias += tl.sum(dy_v * v + dy_w * w, axis=0)
        if NEED_P:
            if not HOIST:
                f1_re, f1_im, f2_re, f2_im, tw_re, tw_im = _forward_tables(
                    dft1_ptr, dft2_ptr, twiddle_ptr, offs_f1, offs_f2, offs_tile, N1, N2
                )
            p_re, p_im = _forward_transform(
                v.to(op_dtype), w.to(op_dtype), f1_re, f1_im, tw_re, tw_im, f2_re, f2_im, PRECISION
            )  # [N1, N2]
            if NEED_DPOSTGATE:
                if not HOIST:
                    g1_re, g1_im, f2_re, f2_im, tw_re, tw_im, k_re, k_im = _inverse_tables(
                        dft1_ptr, dft2_ptr, twiddle_ptr, kf_ptr, offs_g1, offs_f2, offs_tile, N1, N2
                    )
                y_re = (p_re * k_re - p_im * k_im).to(op_dtype)
                y_im = (p_re * k_im + p_im * k_re).to(op_dtype)
                z_v, z_w = _inverse_transform(
                    y_re, y_im, g1_re, g1_im, tw_re, tw_im, f2_re, f2_im, PRECISION
                )  # [ROWS, N2]
                dy_v, dy_w = _load_pair(dy_ptr, row_v, row_w, offs_t, mask_v, mask_w)
                _store_pair(
                    dpostgate_ptr, row_v, row_w, offs_t, mask_v, mask_w, dy_v * z_v, dy_w * z_w
                )
            # held in the operand dtype until Q is ready (the tile that lives longest)
            p_re = p_re.to(op_dtype)
            p_im = p_im.to(op_dtype)

        # 2. dz, its spectrum Q, the filter-gradient spectrum, dv = Inv(Q * conj(K))
        if NEED_Q:
            dz_v, dz_w = _load_pair(dy_ptr, row_v, row_w, offs_t, mask_v, mask_w)
            if HAS_POSTGATE:
                post_v, post_w = _load_pair(postgate_ptr, row_v, row_w, offs_t, mask_v, mask_w)
                dz_v *= post_v
                dz_w *= post_w
            if not HOIST:
                f1_re, f1_im, f2_re, f2_im, tw_re, tw_im = _forward_tables(
                    dft1_ptr, dft2_ptr, twiddle_ptr, offs_f1, offs_f2, offs_tile, N1, N2
                )
            q_re, q_im = _forward_transform(
                dz_v.to(op_dtype),
                dz_w.to(op_dtype),
                f1_re,
                f1_im,
                tw_re,
                tw_im,
                f2_re,
                f2_im,
                PRECISION,
            )  # [N1, N2]
            if NEED_DK:
                pf_re = p_re.to(tl.float32)
                pf_im = p_im.to(tl.float32)
                if ACC_IN_MEMORY:
                    # the barrier orders the last pair's stores (by whichever threads held
                    # those elements) before these loads
                    tl.debug_barrier()
                    a_re = tl.load(dk_slot_ptr + offs_tile)
                    a_im = tl.load(dk_slot_ptr + N1 * N2 + offs_tile)
                    tl.store(dk_slot_ptr + offs_tile, a_re + q_re * pf_re + q_im * pf_im)
                    tl.store(dk_slot_ptr + N1 * N2 + offs_tile, a_im + q_im * pf_re - q_re * pf_im)
                else:
                    dk_re += q_re * pf_re + q_im * pf_im
                    dk_im += q_im * pf_re - q_re * pf_im
        if NEED_DV:
            if not HOIST:
                g1_re, g1_im, f2_re, f2_im, tw_re, tw_im, k_re, k_im = _inverse_tables(
                    dft1_ptr, dft2_ptr, twiddle_ptr, kf_ptr, offs_g1, offs_f2, offs_tile, N1, N2
                )
            s_re = (q_re * k_re + q_im * k_im).to(op_dtype)  # Q * conj(K)
            s_im = (q_im * k_re - q_re * k_im).to(op_dtype)
            dv_v, dv_w = _inverse_transform(
                s_re, s_im, g1_re, g1_im, tw_re, tw_im, f2_re, f2_im, PRECISION
            )  # [ROWS, N2]
            if HAS_BIAS:
                dy_v, dy_w = _load_pair(dy_ptr, row_v, row_w, offs_t, mask_v, mask_w)
                dv_v += bias * dy_v
                dv_w += bias * dy_w
            if NEED_DU:
                if HAS_PREGATE:
                    pre_v, pre_w = _load_pair(pregate_ptr, row_v, row_w, offs_t, mask_v, mask_w)
                    _store_pair(
                        du_ptr, row_v, row_w, offs_t, mask_v, mask_w, dv_v * pre_v, dv_w * pre_w
                    )
                else:
                    _store_pair(du_ptr, row_v, row_w, offs_t, mask_v, mask_w, dv_v, dv_w)
            if NEED_DPREGATE:
                u_v, u_w = _load_pair(u_ptr, row_v, row_w, offs_t, mask_v, mask_w)
                _store_pair(
                    dpregate_ptr, row_v, row_w, offs_t, mask_v, mask_w, dv_v * u_v, dv_w * u_w
                )
        pair += 1

    if NEED_DK and not ACC_IN_MEMORY:
        tl.store(dk_slot_ptr + offs_tile, dk_re)
        tl.store(dk_slot_ptr + N1 * N2 + offs_tile, dk_im)
    if NEED_DBIAS:
        tl.store(dbias_ptr + pid, tl.sum(dbias, axis=0))


# ---------------------------------------------------------------------------------------------
# Host launcher


@dataclass(frozen=True)
class Config:
    """How the kernel runs at one FFT size (every choice leaves the result unchanged up to
    rounding): ``n1`` the first Monarch factor (``N2 = n // n1``), ``num_warps``, ``hoist``
    (tables held in registers across the batch loop), ``acc_in_memory`` (the filter-gradient
    spectrum accumulated in the program's slot of the partial buffer instead of registers)."""

    n1: int
    num_warps: int
    hoist: bool = False
    acc_in_memory: bool = False


def config_for(n: int, dtype: torch.dtype = torch.bfloat16) -> Config:
    """The default configuration at FFT size n. fp16/bf16: the fastest variant timed on an H200
    (benchmarks/NOTES.md, backward v1: 2 warps at n = 1024, the filter-gradient accumulator in
    registers from n = 4096); fp32: the fewest spills of the sm_90 compile (fp32 tables take
    twice the registers and shared memory)."""
    N1, _ = split(n)
    half = dtype != torch.float32
    if n <= 512:
        return Config(N1, 2, hoist=half)
    if n <= 1024:
        return Config(N1, 2 if half else 4, hoist=half)
    if n <= 2048:
        return Config(N1, 4, acc_in_memory=True)
    return Config(128, 8, acc_in_memory=not half)


def _check_config(n: int, config: Config) -> None:
    N1, N2 = config.n1, n // config.n1
    if N1 * N2 != n or N1 < N2 or N2 < 16 or N1 & (N1 - 1):
        raise ValueError(
            f"config.n1 must be a power of two with n1 >= n // n1 >= 16 (n = {n}); got "
            f"n1={config.n1}"
        )
    if config.num_warps not in (1, 2, 4, 8, 16):
        raise ValueError(f"config.num_warps must be 1, 2, 4, 8 or 16; got {config.num_warps}")


def prepare(n: int, device: torch.device, dtype: torch.dtype) -> None:
    """Builds the tables of size n's default configuration (before CUDA graph capture)."""
    if supports(n, False, dtype):
        N1 = config_for(n, dtype).n1
        triton_fwd.constants(n, torch.device(device), dtype, N1=N1)


def dk_from_spectrum(spectrum: Tensor, m: int, keep_bins: int) -> Tensor:
    """The accumulated ``S = sum Q * conj(P)`` ``[H, 2, N1, N2]`` (kernel order, fp32) -> the
    filter gradient ``[H, m]`` fp32 in circular order: natural order, one complex inverse FFT
    per channel (unnormalised: the two unitary transforms already put the 1/n in S), the real
    part, the frequency cut-off, the first m samples."""
    H, _, N1, N2 = spectrum.shape
    n = N1 * N2
    S = torch.complex(spectrum[:, 0], spectrum[:, 1])  # [H, N1, N2]: bin k1 + N1*k2 at [k1, k2]
    S = S.transpose(1, 2).reshape(H, n)  # natural order
    if keep_bins < n // 2 + 1:
        # the low-pass of a real signal's spectrum: bins keep .. n - keep of the full one (it
        # is symmetric, so it commutes with taking the real part)
        S = S.clone()
        S[:, keep_bins : n - keep_bins + 1] = 0
    return torch.fft.ifft(S, norm="forward").real[:, :m]


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 4  # the interpreter: a few chunks per channel, to exercise the partial sums
    return sm_count(device)


def pairs_per_program_for(B: int, H: int, device: torch.device) -> int:
    """Sequence pairs per program: the fewest that still give ``PROGRAMS_PER_SM`` programs per
    SM (each extra program adds a partial spectrum of 8n bytes to write and sum)."""
    n_pairs = triton.cdiv(B, 2)
    chunks = min(n_pairs, max(1, triton.cdiv(PROGRAMS_PER_SM * _sm_count(device), H)))
    return triton.cdiv(n_pairs, chunks)


def dot_flops(B: int, H: int, L: int, n: int, needs_z: bool = True, n1: int | None = None) -> int:
    """Matrix-product flops the kernel issues (2 per multiply-add), zero-row skip included:
    per pair two forward transforms (Q, P) and one inverse (dv), plus z for the postgate; each
    transform 4 complex products, ``8 n (ROWS + N2)`` flops."""
    N1 = n1 or config_for(n).n1
    N2 = n // N1
    rows = min(N1, max(16, triton.next_power_of_2(triton.cdiv(L, N2))))
    transforms = 4 if needs_z else 3
    return H * triton.cdiv(B, 2) * transforms * 8 * n * (rows + N2)


def launch(
    dy: Tensor,
    u: Tensor,
    kf: Tensor,
    pregate: Tensor | None,
    postgate: Tensor | None,
    bias: Tensor | None,
    n: int,
    needs: tuple[bool, bool, bool, bool, bool],
    *,
    config: Config | None = None,
    pairs_per_program: int | None = None,
    precision: str | None = None,
    out: tuple[Tensor | None, Tensor | None, Tensor | None] | None = None,
) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    """The kernel: ``(d_u, dk_spectrum, d_pregate, d_postgate, d_bias)``, None where ``needs``
    (for u, k, pregate, postgate, bias) is False. d_u and the gate gradients come in their
    tensors' dtypes, ``dk_spectrum`` ``[H, 2, N1, N2]`` fp32 (``dk_from_spectrum`` turns it into
    the filter gradient), d_bias ``[H]`` fp32.

    kf: ``[H, n//2+1]`` complex64 (rfft order). ``config``, ``pairs_per_program``,
    ``precision``: override the defaults. ``out``: ``(d_u, d_pregate, d_postgate)`` tensors to
    write in place (None entries are allocated).
    """
    B, H, L = u.shape
    if not supports(n, False, u.dtype) or L > n:
        raise ValueError(
            f"the fused backward covers n in [{MIN_FFT}, {MAX_FFT}], L <= n, "
            f"dtypes {DTYPES}; got n={n}, L={L}, {u.dtype}"
        )
    if dy.shape != u.shape:
        raise ValueError(f"dy must have the shape of u {tuple(u.shape)}; got {tuple(dy.shape)}")
    if kf.shape != (H, n // 2 + 1) or kf.dtype != torch.complex64:
        raise ValueError(
            f"kf must be complex64 of shape ({H}, {n // 2 + 1}); got {kf.dtype} {tuple(kf.shape)}"
        )
    need_u, need_k, need_pre, need_post, need_bias = needs
    for name, need, x in (
        ("pregate", need_pre, pregate),
        ("postgate", need_post, postgate),
        ("bias", need_bias, bias),
    ):
        if need and x is None:
            raise ValueError(f"needs asks for the gradient of {name}, but {name} is None")
    config = config or config_for(n, u.dtype)
    _check_config(n, config)
    N1, N2 = config.n1, n // config.n1
    if pairs_per_program is not None and pairs_per_program < 1:
        raise ValueError(f"pairs_per_program must be >= 1; got {pairs_per_program}")

    dft1, dft2, twiddle = triton_fwd.constants(N1 * N2, u.device, u.dtype, N1=N1)
    spectrum = triton_fwd.spectrum_layout(kf, N1 * N2, N1=N1)
    dy, u = dy.contiguous(), u.contiguous()
    pregate = pregate.contiguous() if pregate is not None else None
    postgate = postgate.contiguous() if postgate is not None else None
    bias = bias.contiguous() if bias is not None else None

    def output(given: Tensor | None, like: Tensor, name: str) -> Tensor:
        if given is None:
            return torch.empty_like(like)
        if given.shape != like.shape or given.dtype != like.dtype or not given.is_contiguous():
            raise ValueError(
                f"out's {name} must be contiguous {like.dtype} of shape {tuple(like.shape)}; "
                f"got {given.dtype} {tuple(given.shape)}"
            )
        return given

    out_u, out_pre, out_post = out if out is not None else (None, None, None)
    d_u = output(out_u, u, "d_u") if need_u else None
    d_pre = output(out_pre, pregate, "d_pregate") if need_pre else None
    d_post = output(out_post, postgate, "d_postgate") if need_post else None

    pairs_per_program = pairs_per_program or pairs_per_program_for(B, H, u.device)
    chunks = triton.cdiv(triton.cdiv(B, 2), pairs_per_program)
    dk_parts = u.new_empty((H, chunks, 2, N1, N2), dtype=torch.float32) if need_k else None
    dbias_parts = u.new_empty((H, chunks), dtype=torch.float32) if need_bias else None

    with torch.cuda.device(u.device) if u.is_cuda else contextlib.nullcontext():
        _fftconv_bwd_kernel[(H * chunks,)](
            dy,
            u,
            pregate if pregate is not None else u,
            postgate if postgate is not None else u,
            bias if bias is not None else u,
            spectrum,
            dft1,
            dft2,
            twiddle,
            d_u if d_u is not None else u,
            d_pre if d_pre is not None else u,
            d_post if d_post is not None else u,
            dk_parts if dk_parts is not None else spectrum,
            dbias_parts if dbias_parts is not None else spectrum,
            B,
            H,
            L,
            pairs_per_program,
            N1=N1,
            N2=N2,
            ROWS=min(N1, max(16, triton.next_power_of_2(triton.cdiv(L, N2)))),
            HAS_PREGATE=pregate is not None,
            HAS_POSTGATE=postgate is not None,
            HAS_BIAS=bias is not None,
            NEED_DU=need_u,
            NEED_DK=need_k,
            NEED_DPREGATE=need_pre,
            NEED_DPOSTGATE=need_post,
            NEED_DBIAS=need_bias,
            HOIST=config.hoist,
            ACC_IN_MEMORY=config.acc_in_memory,
            PRECISION=precision or dot_precision(u),
            num_warps=config.num_warps,
        )
    # fixed summation order over the chunks: deterministic
    dk_spectrum = dk_parts.sum(dim=1) if dk_parts is not None else None
    d_bias = dbias_parts.sum(dim=1) if dbias_parts is not None else None
    return d_u, dk_spectrum, d_pre, d_post, d_bias


def fftconv_bwd(
    dy: Tensor,
    u: Tensor,
    kc: Tensor,
    kf: Tensor,
    pregate: Tensor | None,
    postgate: Tensor | None,
    bias: Tensor | None,
    n: int,
    keep_bins: int,
    needs: tuple[bool, bool, bool, bool, bool],
    **launch_options,
) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    """Gradients of ``y = postgate * irfft(rfft(u * pregate, n) * kf, n)[:L] + bias * (u *
    pregate)`` for (u, kc, pregate, postgate, bias), None where ``needs`` is False
    (``core.backward``'s contract for a non-fold plan).

    u, dy, gates: ``[B, H, L]`` with ``L <= n``; kc ``[H, m]`` the filter in circular order
    (only its length and dtype are used: the gradient has them); kf ``[H, n//2+1]`` complex64
    (rfft order, zero from ``keep_bins`` on); bias ``[H]``. ``launch_options``: those of
    ``launch``.
    """
    H = u.shape[1]
    if kc.dim() != 2 or kc.shape[0] != H or not 1 <= kc.shape[1] <= n:
        raise ValueError(f"kc must have shape ({H}, m) with 1 <= m <= {n}; got {tuple(kc.shape)}")
    d_u, dk_spectrum, d_pre, d_post, d_bias = launch(
        dy, u, kf, pregate, postgate, bias, n, needs, **launch_options
    )
    d_k = None
    if dk_spectrum is not None:
        d_k = dk_from_spectrum(dk_spectrum, kc.shape[1], keep_bins).to(kc.dtype)
    if d_bias is not None:
        d_bias = d_bias.to(bias.dtype)
    return d_u, d_k, d_pre, d_post, d_bias
