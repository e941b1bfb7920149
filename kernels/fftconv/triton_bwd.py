"""Fused backward FFT convolution in Triton: every gradient of the gated convolution in one
kernel (or, as a launch variant, two lighter ones), u, dy and the gates read once, the spectra
recomputed in registers.

The forward (``triton_fwd.py``) computes, per row, ``v = u * pregate``,
``z = irfft(rfft(v, n) * kf)[:L]``, ``y = postgate * z + bias * v``. Its gradients
(``core.py``, README section 2) for a non-fold plan:

    dz = dy * postgate                       dpostgate = dy * z    (z kept or recomputed)
    dv = irfft(rfft(dz, n) * conj(kf))[:L] + bias * dy
    du = dv * pregate                        dpregate = dv * u
    dbias[h] = sum_{b,t} dy * v              dkc = irfft(sum_b rfft(dz) * conj(rfft(v)))[:m]

(The public call keeps z from the forward when the postgate wants a gradient and hands it to
these kernels (``launch``'s ``z``): dpostgate is then ``dy * z`` loaded, not recomputed.)

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

Blocked plan (``blocked``: a causal filter of ``m <= S = n/2`` taps, any L, n >= 512): each row
is cut into ``NB = cdiv(L, S)`` blocks, and block j of batch row b is a sequence of its own,
``q = b * NB + j`` (a pair q, q+1 may span two rows). With ``v_j = v[jS : jS + S]`` zero-padded
to n and the dz window ``w_j = dz[jS : jS + 2S]`` (this block and the next, zero past L):

    dv[jS + i] = Inv(Fwd(w_j) * conj(K))[i]  (i < S)   lags s < m <= S: i + s < 2S, no wrap
    dk = sum_j corr(w_j, v_j)[:m]                      S += Fwd(w_j) * conj(Fwd(v_j))

so P and dv use the first N1/2 rows (the zero-row skip with ROWS = N1/2) and Q all N1 (a second
first-stage table: F_N1 whole); dbias sums over the block's own positions. z for dpostgate
needs the previous block of v, which this kernel does not transform: it comes from the
forward (kept), or the launcher has the blocked forward kernel (``triton_fwd``) compute it, and
the kernel multiplies it by dy. The default
configurations compile for sm_90 as they are (every n, bf16/fp16/fp32); the dz window doubles
the input buffers that pipelining adds per stage, so of the benchmark's other variants the
pipelined splits at n = 4096 (3 stages) and 8192 (2 stages) ask for 240 and 256 KB of shared
memory in kernel (a) (bf16), more than an SM has (227 KB).

Design choices:

- One program per (channel h, chunk of the channel's batch); it loops over the chunk's
  sequence pairs in blocks of ``STEPS`` pairs: an outer ``while`` loop with runtime bounds (no
  recompilation per batch size) around an inner loop with a constexpr trip count, which Triton
  software-pipelines ``STAGES`` deep (the next pairs' u, gates and dy copied to shared memory
  during this pair's products, as in the forward); the chunk is a whole number of blocks and
  the pairs past its end are masked out. Per pair, in this order, so that few tiles are live
  at once: load v (u * pregate), ``P = Fwd(v)`` (8 ``tl.dot``s), ``z = Inv(P * K)`` and
  dpostgate (8 dots, only when the postgate wants a gradient and the forward kept no z), P
  kept in the operand dtype;
  then load dz, ``Q = Fwd(dz)`` (8), ``S += Q * conj(P)``, ``dv = Inv(Q * conj(K))`` (8), du and
  dpregate. Inputs are loaded again where they are used (the repeat loads hit L1/L2) instead
  of being held across the transforms, and so are the tables that are not held (``hoist``):
  each at its use. The forward issues 16 dots per pair, the backward 24 or 32, and reads 2-4
  tensors to the forward's 1-3.
- Pipelining, made to fit: the pipeliner would give every load in the loop that feeds a
  product a shared-memory buffer per stage, tables included (741 KB at n = 8192), so table
  loads in a pipelined loop sit behind a runtime branch (``_table``), out of its reach; their
  pointers are made loop-variant so that they are not hoisted and held (``_rebase``).
- ``split`` (a variant): kernel (a) computes Q, dv, du, dpregate and dbias, kernel (b) P, z,
  dpostgate and the filter gradient, each with the forward's 16 dots per pair and fewer live
  tiles. (b) needs Q too: ``"store_q"`` has (a) write it per pair in the operand dtype
  (``[H, B/2, 2, N1, K2]``, 4n bytes per pair written and read back: 1.1 GB, 0.26 ms of HBM at
  n = 8192, B*H*L = 2^27), ``"recompute"`` transforms dz again in (b) (8 more dots per pair:
  1.4e11 flops, 0.18 ms at the bf16 peak but ~0.9 ms at the 150 TFLOP/s this kernel reaches),
  so ``"store_q"`` is the one timed first. In (b), with Q from memory, S is updated right after
  P, while P is fp32.
- The filter gradient is deterministic: each program writes its partial spectrum to its own
  slot of a ``[H, chunks, 2, N1, K2]`` fp32 buffer, summed by ``torch.sum`` on the host (no
  atomics: the same inputs give the same bits). The chunk count is set from the device's SM
  count (``PROGRAMS_PER_SM`` programs per SM, no more), so the buffer stays near
  ``max(H, 8 * SMs) * 8n`` bytes however large the batch. The host then undoes the
  permutation, takes one complex inverse FFT per channel (``H * n`` work, not ``B * H * n``),
  keeps the real part and the first ``m`` samples, and applies the frequency cut-off (a
  symmetric low-pass, so it commutes with taking the real part). K is zero above the cut-off,
  so dv and z need no mask.
- ``Config`` (per FFT size, ``config_for``; a split's kernel (b) may take its own, ``Config.b``):
  the Monarch split ``N1 x N2``, warps, ``hoist``
  (DFT matrices, twiddles and filter spectrum loaded once before the loop and held, or
  loaded from L1/L2 at each use), ``acc_in_memory`` (``S`` read-modified-written in the
  program's slot every pair, with a barrier, instead of held in registers: 2 fewer fp32 tiles
  live, L1/L2 traffic of ``16n`` bytes per pair; in a pipelined loop behind the same kind of
  branch, and Triton then leaves that loop unpipelined), ``steps``/``stages``, ``split``. The
  defaults were picked by the spills of the sm_90 compile (``ptxas -v``, bf16, causal
  L = n/2; registers / spill-store bytes; ``python -m benchmarks.fftconv_bwd --static``), then
  timed (benchmarks/NOTES.md, backward v1; these are v1's, ``config_for`` has today's):

      n     default (v1)                    regs / spills
      512   32x16, 2 warps, hoist           216 / 0
      1024  32x32, 2 warps, hoist           255 / 128
      2048  64x32, 4 warps, acc in memory   255 / 4
      4096  128x32, 8 warps                 255 / 532
      8192  128x64, 8 warps                 255 / 2172

  From n = 4096 the split follows the warps (``N1 = 16 * warps``): Triton lays chained dots
  out with every warp along the first tile dimension, so a tile with fewer rows than
  ``16 * warps`` is replicated across warps instead of shared (a 64x64 tile costs 8 warps as
  many registers as 4). fp32 (tf32x3 dots split every operand in two) spills more: no hoist
  up to n = 1024, 1.4-5.1 KB from 2048 on.
- Frequency-sparse filters (``keep_bins``): K is zero outside the first and last frequency
  columns ``k2`` of the tile (``kept_columns``, on the backward's own factors, which differ
  from the forward's from n = 4096 on), so P * K and Q * conj(K) are too: the forward
  transforms' second stage computes only those ``K2`` columns (``C @ F_N2[:, kept]``), the
  inverse's first stage sums over them only (``S @ conj(F_N2)[kept, :]``), and P, Q, the
  filter-gradient accumulator, its partial slots and the split's Q buffer are [N1, K2]. The
  host puts the summed spectrum back on all N2 columns, zero in the skipped ones: those hold
  only bins ``keep_bins .. n - keep_bins``, which ``dk_from_spectrum``'s low-pass zeroes
  anyway, so the filter gradient is the one the dense spectrum gives. With 3/4 of the bins
  zero, 16 of 32 columns (n = 1024-4096 on the default factors) or of 64 (n = 8192): those two
  stages do half or a quarter of their work (``dot_flops``). At least 16 columns (``tl.dot``),
  so only from N2 = 32; a dense filter (K2 = N2) compiles to the same kernel as before (PTX
  compared for the defaults and the benchmark's variants, n = 512-8192). Spill stores of the
  sm_90 compile, bf16 defaults, dense -> 1/4 kept: 184 -> 20 bytes at n = 2048, 532 -> 384 at
  4096, 364 / 348 -> 396 / 280 at 8192 (the split's two kernels); fp32 at 4096 2840 -> 3316
  (the kept columns' offsets are tiles of their own, held beside the full tile's). Not timed
  yet: ``benchmarks.fftconv_bwd`` times it next to the dense filter.
- Always paired: B = 1 (or the last sequence of an odd batch) runs as a half-empty pair.
- Sizes, dtypes and the zero-row skip (``ROWS``) as in the forward (``supports`` is the
  forward's); the DFT tables are the forward's where the split is, else built here (``prepare``
  builds them before CUDA graph capture).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..backends import device_guard, sm_count
from . import triton_fwd
from .triton_fwd import (
    DTYPES,
    MAX_FFT,
    MIN_BLOCKED_FFT,
    MIN_FFT,
    _complex_dot,
    _dot,
    _load_complex,
    _load_row,
    _odd_half_twiddles,
    _twiddle,
    all_columns,
    dot_precision,
    kept_columns,
    select_columns,
    spectrum_layout,
    split,
    supports,
)

__all__ = [
    "SPLITS",
    "Config",
    "block_steps",
    "config_for",
    "dk_from_spectrum",
    "dot_flops",
    "fftconv_bwd",
    "kept_columns",
    "launch",
    "prepare",
    "select_columns",
    "spectrum_layout",
    "split_needs",
    "supports",
]

PROGRAMS_PER_SM = 8

# ---------------------------------------------------------------------------------------------
# Kernel


@triton.jit
def _table(handle, live, after, HOIST: tl.constexpr, GUARD: tl.constexpr):
    """The real and imaginary planes of a table, from its handle ``(held_re, held_im, ptr_re,
    ptr_im, offs)``: the planes loaded before the loop (HOIST), or loaded here, at their use.

    ``GUARD`` (a software-pipelined loop): the loads sit behind a runtime branch on ``live``,
    in a nested block, which Triton's pipeliner does not look into: pipelined, every table
    load of the loop would get a shared-memory buffer per stage (741 KB at n = 8192), where
    only the input rows should. The other branch (a masked-out pair, whose outputs are all
    masked) gives zeros computed from ``after``, the tile just computed before the use: that
    dependence keeps the pipeliner's schedule from moving the branch (and with it the table's
    registers) to the top of the loop body, where the canonicalizer merges all of them."""
    if HOIST:
        x_re = handle[0]
        x_im = handle[1]
    elif GUARD:
        offs = handle[4]
        if live:
            x_re = tl.load(handle[2] + offs)
            x_im = tl.load(handle[3] + offs)
        else:
            # a finite tile (the pair's inputs were masked to zero) times zero: zero
            zero = tl.zeros(offs.shape, tl.float32) + tl.sum(tl.sum(after, axis=1), axis=0) * 0.0
            x_re = zero.to(handle[2].dtype.element_ty)
            x_im = x_re
    else:
        x_re = tl.load(handle[2] + handle[4])
        x_im = tl.load(handle[3] + handle[4])
    return x_re, x_im


@triton.jit
def _handle(ptr, offs, PLANE: tl.constexpr, HOIST: tl.constexpr):
    """A table's handle for ``_table``: with HOIST its planes loaded now (and held)."""
    if HOIST:
        x_re, x_im = _load_complex(ptr, offs, PLANE)
    else:
        x_re = 0.0
        x_im = 0.0
    return x_re, x_im, ptr, ptr + PLANE, offs


@triton.jit
def _rebase(handle, zero, REBASE: tl.constexpr):
    """The handle with ``zero`` added to its pointers (see the kernel's loop)."""
    if REBASE:
        handle = handle[0], handle[1], handle[2] + zero, handle[3] + zero, handle[4]
    return handle


@triton.jit
def _forward_transform(
    x_re, x_im, F1, TW, F2, live, HOIST: tl.constexpr, GUARD: tl.constexpr,
    PRECISION: tl.constexpr,
):  # fmt: skip
    """``Fwd(x_re + i x_im)``: x [R, N2] in the operand dtype (the first R rows of the tile;
    the rest is zero padding, skipped) -> the spectrum [N1, K2] fp32, permuted layout, on the
    kept frequency columns (all N2 for a dense filter). F1, TW, F2: the handles of
    F_N1[:, :R], the twiddles and F_N2[:, kept] [N2, K2] (R: ROWS, or N1 for the blocked
    backward's dz window)."""
    f1_re, f1_im = _table(F1, live, x_re, HOIST, GUARD)
    op_dtype = f1_re.dtype
    b_re, b_im = _complex_dot(f1_re, f1_im, x_re, x_im, PRECISION)  # [N1, N2]
    tw_re, tw_im = _table(TW, live, b_re, HOIST, GUARD)
    c_re = (b_re * tw_re - b_im * tw_im).to(op_dtype)
    c_im = (b_re * tw_im + b_im * tw_re).to(op_dtype)
    f2_re, f2_im = _table(F2, live, c_re, HOIST, GUARD)
    return _complex_dot(c_re, c_im, f2_re, f2_im, PRECISION)


@triton.jit
def _inverse_transform(
    s_re, s_im, G1, TW, G2, live, HOIST: tl.constexpr, GUARD: tl.constexpr,
    PRECISION: tl.constexpr,
):  # fmt: skip
    """``Inv(s_re + i s_im)`` restricted to the first ROWS rows: s [N1, K2] in the operand
    dtype, zero outside the kept frequency columns -> real and imaginary parts [ROWS, N2]
    fp32. G1: the handle of conj(F_N1)'s first ROWS rows (stored as F_N1: the conjugation is
    in the signs); G2: of F_N2[kept, :] [K2, N2]. Written with the tables as given (no negated
    operand: see the note on the forward's last stage in triton_fwd.py)."""
    op_dtype = s_re.dtype
    # S @ conj(F_N2)[kept, :]: the skipped columns of S are zero
    f2_re, f2_im = _table(G2, live, s_re, HOIST, GUARD)
    d_re = tl.dot(s_re, f2_re, acc=_dot(s_im, f2_im, PRECISION), input_precision=PRECISION)
    d_im = _dot(s_im, f2_re, PRECISION) - _dot(s_re, f2_im, PRECISION)
    tw_re, tw_im = _table(TW, live, d_re, HOIST, GUARD)
    e_re = (d_re * tw_re + d_im * tw_im).to(op_dtype)  # times conj(T)
    e_im = (d_im * tw_re - d_re * tw_im).to(op_dtype)
    # conj(F_N1)[:ROWS] @ E
    g1_re, g1_im = _table(G1, live, e_re, HOIST, GUARD)
    out_re = tl.dot(g1_re, e_re, acc=_dot(g1_im, e_im, PRECISION), input_precision=PRECISION)
    out_im = _dot(g1_re, e_im, PRECISION) - _dot(g1_im, e_re, PRECISION)
    return out_re, out_im


@triton.jit
def _accumulate(
    dk_re, dk_im, q_re, q_im, p_re, p_im, dk_slot_ptr, offs_spec, PLANE: tl.constexpr, live,
    ACC_IN_MEMORY: tl.constexpr, GUARD: tl.constexpr,
):  # fmt: skip
    """The filter-gradient spectrum ``S += Q * conj(P)``: in registers, or (ACC_IN_MEMORY) in
    the program's slot of the partial buffer. In a pipelined loop (GUARD) the slot's
    read-modify-write sits behind a branch on ``live``, out of the pipeliner's reach, so that
    no read of the slot can be moved before the previous pair's write."""
    if ACC_IN_MEMORY:
        if GUARD:
            if live:
                _add_to_slot(dk_slot_ptr, offs_spec, PLANE, q_re, q_im, p_re, p_im)
        else:
            _add_to_slot(dk_slot_ptr, offs_spec, PLANE, q_re, q_im, p_re, p_im)
    else:
        dk_re += q_re * p_re + q_im * p_im
        dk_im += q_im * p_re - q_re * p_im
    return dk_re, dk_im


@triton.jit
def _add_to_slot(dk_slot_ptr, offs_spec, PLANE: tl.constexpr, q_re, q_im, p_re, p_im):
    # the barrier orders the last pair's stores (by whichever threads held those elements)
    # before these loads
    tl.debug_barrier()
    a_re = tl.load(dk_slot_ptr + offs_spec)
    a_im = tl.load(dk_slot_ptr + PLANE + offs_spec)
    tl.store(dk_slot_ptr + offs_spec, a_re + q_re * p_re + q_im * p_im)
    tl.store(dk_slot_ptr + PLANE + offs_spec, a_im + q_im * p_re - q_re * p_im)


@triton.jit
def _twist(v, w, rw_re, rw_im, cw_re, cw_im):
    """``(v + i w) * r * c`` (r a row factor, c a column factor, broadcast), fp32 planes."""
    re, im = _twiddle(v, w, rw_re, rw_im, False)
    return _twiddle(re, im, cw_re, cw_im, False)


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
    kf_ptr,  # [H, 2, N1, K2] fp32, the filter spectrum in the kernel's order (kept columns)
    dft1_ptr,  # [2, N1, N1] operand dtype
    dft2_ptr,  # [2, N2, K2] operand dtype: the columns of F_N2 that meet nonzero filter bins
    twiddle_ptr,  # [2, N1, N2] fp32
    du_ptr,  # [B, H, L] (unused unless NEED_DU)
    dpregate_ptr,  # [B, H, L] (unused unless NEED_DPREGATE)
    dpostgate_ptr,  # [B, H, L] (unused unless NEED_DPOSTGATE)
    dk_ptr,  # [H, chunks, 2, N1, K2] fp32 partial spectra (unused unless NEED_DK)
    dbias_ptr,  # [H, chunks] fp32 partial sums (unused unless NEED_DBIAS)
    q_ptr,  # [H, pairs, 2, N1, K2] operand dtype: Q per pair (unused unless STORE/LOAD_Q)
    z_ptr,  # [B, H, L] the forward's z (unused unless Z_IN)
    B,
    H,
    L,
    PAIRS_PER_PROGRAM,
    N1: tl.constexpr,
    N2: tl.constexpr,
    K2: tl.constexpr,
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
    STEPS: tl.constexpr,
    STAGES: tl.constexpr,
    STORE_Q: tl.constexpr,
    LOAD_Q: tl.constexpr,
    Z_IN: tl.constexpr,
    BLOCKED: tl.constexpr,
    PRECISION: tl.constexpr,
    TWIST: tl.constexpr = False,
):
    # TWIST (the filter gradient alone): v and dz twiddled by w_(2n)^t before their transforms
    # (a row factor, then a column factor), so that S sums the odd bins of their size-2n spectra
    # (the two-halves forward's odd half; ``filter_grad_halves``).
    # STEPS: the pairs of one block of the loop (a constexpr trip count, software-pipelined
    # STAGES deep; the chunk is a whole number of blocks, the pairs past its end masked out).
    # STORE_Q / LOAD_Q: the split backward's two kernels hand Q over through memory: the first
    # writes it, the second reads it instead of transforming dz again.
    # K2: the frequency columns the spectra are computed on (K2 < N2: a frequency-sparse
    # filter, whose spectrum K is zero outside them, so P * K, Q * conj(K) are too, and the
    # filter-gradient spectrum is low-passed on the host; K2 == N2: dense).
    # Z_IN: z comes from memory (the forward kept it): dpostgate = dy * z, no transform for it.
    NEED_DV: tl.constexpr = NEED_DU or NEED_DPREGATE
    NEED_Q: tl.constexpr = NEED_DV or NEED_DK or STORE_Q  # the spectrum of dz
    TRANSFORM_Z: tl.constexpr = NEED_DPOSTGATE and not Z_IN  # z = Inv(P * K) here
    NEED_P: tl.constexpr = NEED_DK or TRANSFORM_Z  # the spectrum of v
    GUARD: tl.constexpr = STAGES > 1  # table loads in the loop kept out of the pipeline
    if TWIST:
        tl.static_assert(
            not (NEED_DV or NEED_DPOSTGATE or NEED_DBIAS or BLOCKED),
            "a twisted backward computes the filter gradient alone (dense plans)",
        )
    # BLOCKED: every row cut into NB blocks of S = n/2 samples, one sequence per block (ROWS =
    # N1/2): v the block, dz the window of the block and the next (all N1 rows), dv the block
    S: tl.constexpr = ROWS * N2
    if BLOCKED:
        tl.static_assert(2 * ROWS == N1, "a blocked backward reads its blocks on N1/2 rows")
        tl.static_assert(not TRANSFORM_Z, "a blocked backward's z comes from the forward")
        NB = tl.cdiv(L, S)
        SEQS = B * NB  # sequences per channel, q = b * NB + j
    else:
        SEQS = B

    pid = tl.program_id(0)
    n_pairs = tl.cdiv(SEQS, 2)
    programs_per_channel = tl.cdiv(n_pairs, PAIRS_PER_PROGRAM)
    pid_h = pid // programs_per_channel
    pid_c = pid - pid_h * programs_per_channel  # the chunk of the batch
    pair_start = pid_c * PAIRS_PER_PROGRAM
    pair_end = tl.minimum(pair_start + PAIRS_PER_PROGRAM, n_pairs)

    offs_r = tl.arange(0, ROWS)  # t1 of the rows that hold the sequences
    offs_n1 = tl.arange(0, N1)
    offs_n2 = tl.arange(0, N2)
    offs_t = offs_r[:, None] * N2 + offs_n2[None, :]  # [ROWS, N2] time index
    mask_t = offs_t < L
    offs_tile = offs_n1[:, None] * N2 + offs_n2[None, :]  # [N1, N2]
    SPEC: tl.constexpr = N1 * K2  # a spectrum plane: the kept columns of the tile
    kf_ptr += pid_h.to(tl.int64) * (2 * SPEC)
    q_ptr += pid_h.to(tl.int64) * n_pairs * (2 * SPEC)
    HL = H.to(tl.int64) * L

    # the tables, as handles (with HOIST loaded here and held across the loop)
    offs_f1 = offs_n1[:, None] * N1 + offs_r[None, :]  # [N1, ROWS]
    offs_g1 = offs_r[:, None] * N1 + offs_n1[None, :]  # [ROWS, N1]
    if K2 < N2:
        offs_k2 = tl.arange(0, K2)  # the kept frequency columns k2
        offs_f2 = offs_n2[:, None] * K2 + offs_k2[None, :]  # [N2, K2]
        offs_g2 = offs_k2[:, None] + offs_n2[None, :] * K2  # [K2, N2]: F_N2 is symmetric
        offs_spec = offs_n1[:, None] * K2 + offs_k2[None, :]  # [N1, K2]
    else:
        offs_f2 = offs_n2[:, None] * N2 + offs_n2[None, :]  # [N2, N2]
        offs_g2 = offs_f2
        offs_spec = offs_tile
    F1 = _handle(dft1_ptr, offs_f1, N1 * N1, HOIST)  # F_N1[:, :ROWS]
    G1 = _handle(dft1_ptr, offs_g1, N1 * N1, HOIST)  # F_N1[:ROWS, :] (conjugated in the signs)
    F2 = _handle(dft2_ptr, offs_f2, N2 * K2, HOIST)  # F_N2[:, kept], the forward transforms'
    if K2 < N2:
        G2 = _handle(dft2_ptr, offs_g2, N2 * K2, HOIST)  # F_N2[kept, :], the inverse's
    else:
        G2 = F2
    TW = _handle(twiddle_ptr, offs_tile, N1 * N2, HOIST)  # [N1, N2]
    if TWIST:  # w_(2n)^t = w_(2n)^(N2 t1) w_(2n)^t2, t = N2 t1 + t2: row and column factors, fp32
        rw_re, rw_im, cw_re, cw_im = _odd_half_twiddles(offs_r, offs_n2, N1, N2)
        rw_re, rw_im = rw_re[:, None], rw_im[:, None]
        cw_re, cw_im = cw_re[None, :], cw_im[None, :]
    K = _handle(kf_ptr, offs_spec, SPEC, HOIST)  # the filter spectrum [N1, K2]
    if BLOCKED:
        offs_f1z = offs_n1[:, None] * N1 + offs_n1[None, :]  # [N1, N1]
        F1Z = _handle(dft1_ptr, offs_f1z, N1 * N1, HOIST)  # F_N1, for the dz window's N1 rows
    op_dtype = dft1_ptr.dtype.element_ty
    if HAS_BIAS:
        bias = tl.load(bias_ptr + pid_h).to(tl.float32)

    # the filter-gradient spectrum, sum over the pairs of Q * conj(P): in registers, or
    # (ACC_IN_MEMORY) in this program's slot of the partial buffer, read and written per pair
    dk_slot_ptr = dk_ptr + pid.to(tl.int64) * (2 * SPEC)  # slot [h, chunk] = [pid]
    dk_re = tl.zeros([N1, K2], dtype=tl.float32)
    dk_im = tl.zeros([N1, K2], dtype=tl.float32)
    if NEED_DK and ACC_IN_MEMORY:
        tl.store(dk_slot_ptr + offs_spec, dk_re)
        tl.store(dk_slot_ptr + SPEC + offs_spec, dk_im)
    dbias = tl.zeros([N2], dtype=tl.float32)

    # The chunk in blocks of STEPS pairs. The outer loop is a while loop: its bounds are
    # tensors, which the interpreter cannot take as range bounds under numpy 2, and a runtime
    # trip count keeps one compilation per batch size. The inner loop has a constexpr trip
    # count, so Triton software-pipelines it (STAGES > 1: the next pairs' inputs are loaded
    # during this pair's products, as in the forward). Each input is loaded again where it is
    # used rather than held across the transforms: the repeat loads hit L1/L2, while a held
    # pair of input rows costs the registers of a whole spectrum tile (ROWS = N1/2 for a
    # causal filter). Tables not held are loaded at their use, for the same reason.
    block = pair_start
    while block < pair_end:
        for step in tl.range(0, STEPS, num_stages=STAGES):
            pair = block + step
            live = pair < pair_end  # the last block of a chunk may run past it
            if BLOCKED:
                # sequences q and q + 1, (b, j) = divmod(q, NB): each its own row and block
                q = 2 * pair
                b_v = q // NB
                j_v = q - b_v * NB
                b_w = (q + 1) // NB
                j_w = q + 1 - b_w * NB
                row_v = (b_v.to(tl.int64) * H + pid_h) * L + j_v * S  # at the block's start
                row_w = (b_w.to(tl.int64) * H + pid_h) * L + j_w * S
                len_v = L - j_v * S  # the row's samples from the block's start on
                len_w = L - j_w * S
                live_w = live & (q + 1 < SEQS)
                mask_v = (offs_t < len_v) & live
                mask_w = (offs_t < len_w) & live_w
                offs_z = offs_tile  # the dz window: [N1, N2], this block and the next
                mask_zv = (offs_z < len_v) & live
                mask_zw = (offs_z < len_w) & live_w
            else:
                b = 2 * pair
                row_v = (b.to(tl.int64) * H + pid_h) * L  # 64-bit: B*H*L may pass 2^31
                row_w = row_v + HL
                mask_v = mask_t & live
                mask_w = mask_v & (b + 1 < B)
                offs_z = offs_t  # dz on the rows of v
                mask_zv = mask_v
                mask_zw = mask_w
            q_pair_ptr = q_ptr + pair.to(tl.int64) * (2 * SPEC)
            # pipelined: the tables' pointers made loop-variant by a zero the compiler cannot
            # prove (pair >= 0), else they are hoisted out of the loop and held, 64 bits per
            # loaded vector and plane (in the sm_90 compiles: fewer spills in the pipelined
            # loops from n = 2048 on, more in the v1 loop at n = 8192, so only there)
            zero = pair >> 31 if GUARD else 0
            F1_at = _rebase(F1, zero, GUARD)
            G1_at = _rebase(G1, zero, GUARD)
            F2_at = _rebase(F2, zero, GUARD)
            if K2 < N2:
                G2_at = _rebase(G2, zero, GUARD)
            else:
                G2_at = F2_at
            TW_at = _rebase(TW, zero, GUARD)
            K_at = _rebase(K, zero, GUARD)
            if BLOCKED:
                F1Z_at = _rebase(F1Z, zero, GUARD)
            else:
                F1Z_at = F1_at

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
            if NEED_P and TWIST:
                v, w = _twist(v, w, rw_re, rw_im, cw_re, cw_im)
            if NEED_P:
                p_re, p_im = _forward_transform(
                    v.to(op_dtype), w.to(op_dtype), F1_at, TW_at, F2_at, live, HOIST, GUARD,
                    PRECISION,
                )  # [N1, K2]  # fmt: skip
                if NEED_DK and LOAD_Q:
                    # Q from memory: the filter gradient at once, while P is still fp32
                    q_re = tl.load(q_pair_ptr + offs_spec, mask=live, other=0.0)
                    q_im = tl.load(q_pair_ptr + SPEC + offs_spec, mask=live, other=0.0)
                    dk_re, dk_im = _accumulate(
                        dk_re, dk_im, q_re.to(tl.float32), q_im.to(tl.float32), p_re, p_im,
                        dk_slot_ptr, offs_spec, SPEC, live, ACC_IN_MEMORY, GUARD,
                    )  # fmt: skip
                if TRANSFORM_Z:
                    k_re, k_im = _table(K_at, live, p_re, HOIST, GUARD)
                    y_re = (p_re * k_re - p_im * k_im).to(op_dtype)
                    y_im = (p_re * k_im + p_im * k_re).to(op_dtype)
                    z_v, z_w = _inverse_transform(
                        y_re, y_im, G1_at, TW_at, G2_at, live, HOIST, GUARD, PRECISION
                    )  # [ROWS, N2]
                    dy_v, dy_w = _load_pair(dy_ptr, row_v, row_w, offs_t, mask_v, mask_w)
                    z_v *= dy_v
                    z_w *= dy_w
                    _store_pair(dpostgate_ptr, row_v, row_w, offs_t, mask_v, mask_w, z_v, z_w)
                # held in the operand dtype until Q is ready (the tile that lives longest)
                p_re = p_re.to(op_dtype)
                p_im = p_im.to(op_dtype)

            if NEED_DPOSTGATE and Z_IN:
                dy_v, dy_w = _load_pair(dy_ptr, row_v, row_w, offs_t, mask_v, mask_w)
                z_v, z_w = _load_pair(z_ptr, row_v, row_w, offs_t, mask_v, mask_w)
                _store_pair(
                    dpostgate_ptr, row_v, row_w, offs_t, mask_v, mask_w, dy_v * z_v, dy_w * z_w
                )

            # 2. dz, its spectrum Q, the filter-gradient spectrum, dv = Inv(Q * conj(K))
            if NEED_Q and not LOAD_Q:
                dz_v, dz_w = _load_pair(dy_ptr, row_v, row_w, offs_z, mask_zv, mask_zw)
                if HAS_POSTGATE:
                    post_v, post_w = _load_pair(
                        postgate_ptr, row_v, row_w, offs_z, mask_zv, mask_zw
                    )
                    dz_v *= post_v
                    dz_w *= post_w
                if TWIST:
                    dz_v, dz_w = _twist(dz_v, dz_w, rw_re, rw_im, cw_re, cw_im)
                q_re, q_im = _forward_transform(
                    dz_v.to(op_dtype), dz_w.to(op_dtype), F1Z_at, TW_at, F2_at, live, HOIST, GUARD,
                    PRECISION,
                )  # [N1, K2]  # fmt: skip
                if STORE_Q:
                    tl.store(q_pair_ptr + offs_spec, q_re.to(op_dtype), mask=live)
                    tl.store(q_pair_ptr + SPEC + offs_spec, q_im.to(op_dtype), mask=live)
                if NEED_DK:
                    dk_re, dk_im = _accumulate(
                        dk_re, dk_im, q_re, q_im, p_re.to(tl.float32), p_im.to(tl.float32),
                        dk_slot_ptr, offs_spec, SPEC, live, ACC_IN_MEMORY, GUARD,
                    )  # fmt: skip
            if NEED_DV:
                k_re, k_im = _table(K_at, live, q_re, HOIST, GUARD)
                s_re = (q_re * k_re + q_im * k_im).to(op_dtype)  # Q * conj(K)
                s_im = (q_im * k_re - q_re * k_im).to(op_dtype)
                dv_v, dv_w = _inverse_transform(
                    s_re, s_im, G1_at, TW_at, G2_at, live, HOIST, GUARD, PRECISION
                )  # [ROWS, N2]
                if HAS_BIAS:
                    dy_v, dy_w = _load_pair(dy_ptr, row_v, row_w, offs_t, mask_v, mask_w)
                    dv_v += bias * dy_v
                    dv_w += bias * dy_w
                if NEED_DU:
                    if HAS_PREGATE:
                        pre_v, pre_w = _load_pair(pregate_ptr, row_v, row_w, offs_t, mask_v, mask_w)
                        _store_pair(
                            du_ptr, row_v, row_w, offs_t, mask_v, mask_w, dv_v * pre_v,
                            dv_w * pre_w,
                        )  # fmt: skip
                    else:
                        _store_pair(du_ptr, row_v, row_w, offs_t, mask_v, mask_w, dv_v, dv_w)
                if NEED_DPREGATE:
                    u_v, u_w = _load_pair(u_ptr, row_v, row_w, offs_t, mask_v, mask_w)
                    _store_pair(
                        dpregate_ptr, row_v, row_w, offs_t, mask_v, mask_w, dv_v * u_v,
                        dv_w * u_w,
                    )  # fmt: skip
        block += STEPS

    if NEED_DK and not ACC_IN_MEMORY:
        tl.store(dk_slot_ptr + offs_spec, dk_re)
        tl.store(dk_slot_ptr + SPEC + offs_spec, dk_im)
    if NEED_DBIAS:
        tl.store(dbias_ptr + pid, tl.sum(dbias, axis=0))


# ---------------------------------------------------------------------------------------------
# Host launcher


SPLITS = ("fused", "recompute", "store_q")


@dataclass(frozen=True)
class Config:
    """How the kernel runs at one FFT size (every choice leaves the result unchanged up to
    rounding):

    - ``n1``: the first Monarch factor (``N2 = n // n1``); ``num_warps``;
    - ``hoist``: tables held in registers across the batch loop (else reloaded at each use);
    - ``acc_in_memory``: the filter-gradient spectrum accumulated in the program's slot of the
      partial buffer instead of registers (in a split, by kernel (b), the one that holds it;
      Triton 3.6 then leaves that kernel's loop unpipelined);
    - ``steps``: the pair loop runs in blocks of up to ``steps`` pairs (a power of two) with a
      constexpr trip count, so that Triton can software-pipeline it; ``stages``: its
      pipelining depth (1: none). ``steps = stages = 1`` is the v1 loop, one pair at a time.
      Each stage buffers the inputs in shared memory: pipelined fp32 at n = 4096-8192 asks
      for 224-416 KB in the sm_90 compiles, where an SM has 227 (Triton's OutOfResources);
    - ``split``: ``"fused"`` (one kernel), or two lighter kernels when both halves are wanted:
      (a) dz's spectrum Q, dv, du, dpregate, dbias and (b) v's spectrum P, z, dpostgate and the
      filter gradient, for which (b) needs Q again: ``"recompute"`` transforms dz again in (b)
      (8 more dots per pair), ``"store_q"`` has (a) write Q per pair in the operand dtype
      (``4n`` bytes per pair written and read back) and (b) read it;
    - ``dk_num_warps``: warps of kernel (b) of a split (default ``num_warps``);
    - ``b``: kernel (b)'s own launch options in a split (``hoist``, ``acc_in_memory``,
      ``steps``, ``stages``, ``num_warps``; its ``n1`` must be this one's, its ``split`` and
      ``b`` are ignored), where the two kernels want different ones: (a) has the forward's
      shape (two transforms, no accumulator) and runs best as the forward does, tables held
      and the pair loop pipelined; (b) carries the filter-gradient accumulator. Default: this
      configuration with ``dk_num_warps``. ``acc_in_memory`` only ever concerns (b);
    - ``dbias_in_b``: a split sums the bias gradient in kernel (b), which reads v anyway, instead
      of (a), whose pipelined loop then buffers fewer input tiles per stage (held tables and 2
      stages at n = 8192 need 196 KB of shared memory then, 228 otherwise: more than an SM
      has).
    """

    n1: int
    num_warps: int
    hoist: bool = False
    acc_in_memory: bool = False
    steps: int = 1
    stages: int = 1
    split: str = "fused"
    dk_num_warps: int | None = None
    b: Config | None = None
    dbias_in_b: bool = False

    def kernel_b(self) -> Config:
        """The launch options of a split's kernel (b) (``b``, or these with ``dk_num_warps``)."""
        if self.b is not None:
            return self.b
        return replace(self, num_warps=self.dk_num_warps or self.num_warps, dk_num_warps=None)


def config_for(
    n: int,
    dtype: torch.dtype = torch.bfloat16,
    blocked: bool = False,
    keep_bins: int | None = None,
) -> Config:
    """The default configuration at FFT size n. fp16/bf16: the fastest variant timed on an H200
    (benchmarks/NOTES.md, backward v2: the pipelined pair loop, 8 pairs per block, 3 stages
    (2 at n = 1024), up to n = 2048; at 4096 the split with Q through memory on 64 x 64
    tiles (gated 3.18 against the fused kernel's 3.93 ms, backward v4), its kernel (a) with the
    tables held and 8 pairs per block pipelined 2 deep, its kernel (b) one pair at a time with
    the accumulator in registers (1.33 / 2.65 ms plain / gated against v4's 1.98 / 3.30, on an
    H100, backward v5); at 8192 the split on 128 x 64 tiles, (b) one pair at a time with its
    accumulator in memory, (a) with its tables held and 8 pairs pipelined 2 deep once the bias
    gradient moved to (b) (``dbias_in_b``: the held pipeline needs 196 KB of shared memory
    instead of 228; 2.44 / 5.26 ms plain / gated against 2.76 / 5.48 on an H100, backward v6),
    and (b)'s accumulator back in registers once z came from the forward (b's transform of v
    for z gone: plain 2.17 against 2.46 ms on an H100, backward v7; gated with z 2.86 against
    3.19 on an H200));
    fp32: the fewest spills of the sm_90 compile (fp32 tables take twice the registers and
    shared memory, and the pipelined loops need more shared memory than an SM has from
    n = 4096).

    ``blocked`` (fp16/bf16): the blocked mode's dz window doubles the first stage's input, and
    its own neighbours of the dense default timed faster from n = 2048
    (``benchmarks.fftconv_blocked_bwd``, Hyena's gates, 8 blocks): the split with Q through
    memory at 2048 (1.39 against 2.10 ms), the tables held at 4096 (2.62 against 3.36), the
    accumulator in registers at 8192 (3.56 against 3.87).

    ``keep_bins`` (a frequency-sparse spectrum): at n = 8192 fp16/bf16 with columns skipped,
    kernel (b) keeps its accumulator in memory (v6's). With it in registers on the skipped
    columns' [128, K2] tile the filter gradient came out wrong on an H100 (relative error
    0.73-0.81 in ``test_gpu_launcher_sparse_poisoned``, fp16 and bf16, 2026-12-07; dense and
    every other size right): a miscompile not isolated yet, the combination avoided."""
    N1, _ = split(n)
    if blocked and dtype != torch.float32 and n >= 2048:
        if n <= 2048:
            return Config(N1, 4, hoist=True, steps=8, stages=3, split="store_q")
        if n <= 4096:
            return Config(128, 8, hoist=True)
        return Config(128, 8, split="store_q")
    if dtype != torch.float32:
        if n <= 512:
            return Config(N1, 2, hoist=True, steps=8, stages=3)
        if n <= 1024:
            return Config(N1, 2, hoist=True, steps=8, stages=2)
        if n <= 2048:
            return Config(N1, 4, hoist=True, steps=8, stages=3)
        if n <= 4096:
            # the split's kernel (a) as the forward runs (tables held, 8 pairs per block, 2
            # stages), kernel (b) one pair at a time with its accumulator in registers
            # (backward v5)
            return Config(64, 4, hoist=True, steps=8, stages=2, split="store_q", b=Config(64, 4))
        # kernel (a) with its tables held and 8 pairs pipelined 2 deep, the bias gradient
        # summed in kernel (b) (which frees the shared memory the pipeline needs) (backward v6),
        # (b) one pair at a time with its accumulator in registers (backward v7: the public call
        # hands it z, so it transforms v only for the filter gradient); in memory where columns
        # are skipped (docstring)
        sparse = (
            skips_columns(128, n // 128, dtype)
            and sum(kept_columns(n, keep_bins, N1=128)) < n // 128
        )
        return Config(
            128, 8, hoist=True, steps=8, stages=2, split="store_q",
            b=Config(128, 8, acc_in_memory=sparse), dbias_in_b=True,
        )  # fmt: skip
    if n <= 1024:
        return Config(N1, 4 if n > 512 else 2)
    if n <= 2048:
        return Config(N1, 4, acc_in_memory=True)
    return Config(128, 8, acc_in_memory=True)


def _check_config(n: int, config: Config) -> None:
    N1, N2 = config.n1, n // config.n1
    if N1 * N2 != n or N1 < N2 or N2 < 16 or N1 & (N1 - 1):
        raise ValueError(
            f"config.n1 must be a power of two with n1 >= n // n1 >= 16 (n = {n}); got "
            f"n1={config.n1}"
        )
    for name in ("num_warps", "dk_num_warps"):
        warps = getattr(config, name)
        if warps not in (1, 2, 4, 8, 16) and not (name == "dk_num_warps" and warps is None):
            raise ValueError(f"config.{name} must be 1, 2, 4, 8 or 16; got {warps}")
    if config.steps < 1 or config.steps & (config.steps - 1):
        raise ValueError(f"config.steps must be a power of two >= 1; got {config.steps}")
    if config.stages < 1:
        raise ValueError(f"config.stages must be >= 1; got {config.stages}")
    if config.split not in SPLITS:
        raise ValueError(f"config.split must be one of {SPLITS}; got {config.split!r}")
    for name, what in (("dbias_in_b", "moves the bias gradient"), ("b", "configures kernel (b)")):
        if getattr(config, name) not in (None, False) and config.split == "fused":
            raise ValueError(
                f"config.{name} {what} of a split: it needs split 'store_q' or 'recompute'; "
                "got 'fused'"
            )
    if config.b is not None:
        if config.b.n1 != config.n1:
            raise ValueError(
                f"config.b.n1 must be config.n1 ({config.n1}): the kernels of a split share "
                f"the tile; got {config.b.n1}"
            )
        if config.b.dk_num_warps is not None or config.b.b is not None:
            raise ValueError("config.b is kernel (b)'s own: its dk_num_warps and b must be None")
        _check_config(n, config.b)


def prepare(n: int, device: torch.device, dtype: torch.dtype) -> None:
    """Builds the tables of size n's default configuration (before CUDA graph capture)."""
    if supports(n, False, dtype):
        N1 = config_for(n, dtype).n1
        triton_fwd.constants(n, torch.device(device), dtype, N1=N1)


def skips_columns(N1: int, N2: int, dtype: torch.dtype) -> bool:
    """Whether the kernel skips a sparse filter's zero frequency columns on an ``N1 x N2`` tile.
    Not on square tiles in fp16/bf16 (32 x 32 at n = 1024, the default there, and 64 x 64 at
    4096): compiled for sm_90 by Triton 3.6, that kernel returned d_u with a relative error of
    0.5-0.7 (fp32 and the interpreter right; benchmarks/NOTES.md, backward v3). Those run the
    dense columns, which is exact too (K is zero there; the host low-passes the filter
    gradient either way)."""
    return N1 != N2 or dtype == torch.float32


def _all_columns(spectrum: Tensor, n: int, keep_bins: int | None, N1: int) -> Tensor:
    """A ``[..., N1, K2]`` spectrum on the kept columns -> ``[..., N1, N2]``, zero in the
    skipped ones (the spectrum's own, when nothing was skipped)."""
    return all_columns(spectrum, *kept_columns(n, keep_bins, N1=N1), n // N1)


def _natural_order(spectrum: Tensor) -> Tensor:
    """The kernel's ``[H, 2, N1, N2]`` fp32 planes (bin ``k1 + N1 k2`` at ``[k1, k2]``) ->
    ``[H, N1 N2]`` complex in natural order."""
    H, _, N1, N2 = spectrum.shape
    S = torch.complex(spectrum[:, 0], spectrum[:, 1])
    return S.transpose(1, 2).reshape(H, N1 * N2)


def dk_from_spectrum(spectrum: Tensor, m: int, keep_bins: int) -> Tensor:
    """The accumulated ``S = sum Q * conj(P)`` ``[H, 2, N1, N2]`` (kernel order, fp32) -> the
    filter gradient ``[H, m]`` fp32 in circular order: natural order, one complex inverse FFT
    per channel (unnormalised: the two unitary transforms already put the 1/n in S), the real
    part, the frequency cut-off, the first m samples."""
    S = _natural_order(spectrum)
    n = S.shape[-1]
    if keep_bins < n // 2 + 1:
        # the low-pass of a real signal's spectrum: bins keep .. n - keep of the full one (it
        # is symmetric, so it commutes with taking the real part)
        S = S.clone()
        S[:, keep_bins : n - keep_bins + 1] = 0
    return torch.fft.ifft(S, norm="forward").real[:, :m]


def filter_grad_halves(
    dy: Tensor,
    u: Tensor,
    kf: Tensor,
    pregate: Tensor | None,
    postgate: Tensor | None,
    n: int,
    taps: int,
    keep_bins: int | None = None,
    **launch_options,
) -> Tensor:
    """The filter gradient ``[H, taps]`` fp32 of a dense size-n convolution of sequences of at
    most n/2 samples (the two-halves forward's plans, ``triton_fwd``), from two launches of
    the size-n/2 backward: its spectrum's even bins are the size-n/2 cross spectrum of dz and
    v, its odd bins that of ``dz w_n^t`` and ``v w_n^t`` (``launch(twist=True)``), and for
    ``s < n/2``

        d_kc[s] = ( ifft(S_even)[s] + w_n^-s ifft(S_odd)[s] ) / 2     (real parts)

    kf: the size-n rfft ``[H, n//2+1]`` (only its even bins' shape is used: the launches lay out
    a spectrum they do not read). ``keep_bins``: the frequency cut-off of a sparse filter,
    applied to the size-n bins of both halves before the inverse (the launches compute every
    column: their skip is defined on the size-n/2 spectrum's own symmetry)."""
    m = n // 2
    if u.shape[-1] > m or not 1 <= taps <= m:
        raise ValueError(
            f"filter_grad_halves: L and taps must be <= n/2 = {m}; got L={u.shape[-1]}, taps={taps}"
        )
    needs = (False, True, False, False, False)
    kf_even = kf[:, ::2].contiguous()  # [H, m/2 + 1]: the size-m rfft of the folded filter
    grads = []
    for twist in (False, True):
        spectrum = launch(
            dy, u, kf_even, pregate, postgate, None, m, needs, twist=twist, **launch_options
        )[1]
        S = _natural_order(spectrum)
        if keep_bins is not None and keep_bins < n // 2 + 1:
            k = 2 * torch.arange(m, device=S.device) + int(twist)  # the size-n bin of each
            S = torch.where((k >= keep_bins) & (k <= n - keep_bins), 0, S)
        g = torch.fft.ifft(S, norm="forward")[:, :taps]
        if twist:
            s = torch.arange(taps, device=g.device, dtype=torch.float64)
            g = g * torch.polar(torch.ones_like(s), (2.0 * math.pi / n) * s).to(g.dtype)
        grads.append(g.real)
    return 0.5 * (grads[0] + grads[1])


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 4  # the interpreter: a few chunks per channel, to exercise the partial sums
    return sm_count(device)


def pairs_per_program_for(B: int, H: int, device: torch.device) -> int:
    """Sequence pairs per program: the fewest that still give ``PROGRAMS_PER_SM`` programs per
    SM (each extra program adds a partial spectrum of 8n bytes to write and sum). B: the
    sequences per channel (the batch; ``B * NB`` blocks in a blocked plan)."""
    n_pairs = triton.cdiv(B, 2)
    chunks = min(n_pairs, max(1, triton.cdiv(PROGRAMS_PER_SM * _sm_count(device), H)))
    return triton.cdiv(n_pairs, chunks)


def block_steps(pairs_per_program: int, steps: int) -> tuple[int, int]:
    """``(STEPS, pairs per program)``: the block of the pair loop, ``steps`` or the largest
    power of two not above the chunk when that is shorter (so that few pairs are masked out),
    and the chunk rounded up to whole blocks."""
    STEPS = min(steps, 1 << (pairs_per_program.bit_length() - 1))
    return STEPS, triton.cdiv(pairs_per_program, STEPS) * STEPS


def _check_blocked_keep(n: int, keep_bins: int | None) -> None:
    if keep_bins is not None and keep_bins < n // 2 + 1:
        raise ValueError(
            f"keep_bins: a blocked plan keeps every frequency (None or >= {n // 2 + 1}); got "
            f"{keep_bins}"
        )


def _splits(config: Config, needs: tuple[bool, ...]) -> bool:
    need_u, need_k, need_pre, need_post, need_bias = needs
    return config.split != "fused" and (need_u or need_pre or need_bias) and (need_k or need_post)


def split_needs(
    config: Config, needs: tuple[bool, ...]
) -> tuple[tuple[bool, ...], tuple[bool, ...]]:
    """The gradients (u, k, pregate, postgate, bias) each kernel of a split computes: (a) those
    that follow from dv, (b) the filter's and the postgate's; the bias's in (a), or in (b)
    with ``config.dbias_in_b``."""
    need_u, need_k, need_pre, need_post, need_bias = needs
    bias_b = need_bias and config.dbias_in_b
    return (need_u, False, need_pre, False, need_bias and not bias_b), (
        False, need_k, False, need_post, bias_b,
    )  # fmt: skip


def dot_flops(
    B: int,
    H: int,
    L: int,
    n: int,
    needs_z: bool = True,
    n1: int | None = None,
    recompute_q: bool = False,
    blocked: bool = False,
    keep_bins: int | None = None,
    dtype: torch.dtype = torch.bfloat16,
) -> int:
    """Matrix-product flops the kernel issues (2 per multiply-add) for ``dtype``, zero-row skip
    and the frequency-column skip of a sparse filter (``keep_bins``, ``skips_columns``)
    included: per pair two forward transforms (Q, P) and one inverse (dv), plus z for the
    postgate, plus Q again in the second kernel of a ``"recompute"`` split; each transform 4
    complex products in each of its two stages, ``8 n (ROWS + K2)`` flops (``K2`` of the N2
    frequency columns, ``kept_columns``). ``blocked``: ``B * cdiv(L, n/2)`` sequences, P and
    dv on ``ROWS = N1/2`` rows, Q on all N1 (the dz window); z comes from the forward kernel
    (``triton_fwd.dot_flops``), so ``needs_z`` adds nothing there."""
    N1 = n1 or config_for(n).n1
    N2 = n // N1
    if blocked:
        _check_blocked_keep(n, keep_bins)
        seqs = B * triton.cdiv(L, n // 2)
        q_transforms = 2 if recompute_q else 1
        per_pair = 8 * n * (2 * (N1 // 2 + N2) + q_transforms * (N1 + N2))
        return H * triton.cdiv(seqs, 2) * per_pair
    rows = min(N1, max(16, triton.next_power_of_2(triton.cdiv(L, N2))))
    K2 = sum(kept_columns(n, keep_bins if skips_columns(N1, N2, dtype) else None, N1=N1))
    transforms = (4 if needs_z else 3) + (1 if recompute_q else 0)
    return H * triton.cdiv(B, 2) * transforms * 8 * n * (rows + K2)


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
    blocked: bool = False,
    keep_bins: int | None = None,
    z: Tensor | None = None,
    twist: bool = False,
) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    """The kernel (or the two kernels of a split ``config``): ``(d_u, dk_spectrum, d_pregate,
    d_postgate, d_bias)``, None where ``needs`` (for u, k, pregate, postgate, bias) is False.
    d_u and the gate gradients come in their tensors' dtypes, ``dk_spectrum`` ``[H, 2, N1, N2]``
    fp32 (``dk_from_spectrum`` turns it into the filter gradient), d_bias ``[H]`` fp32.

    kf: ``[H, n//2+1]`` complex64 (rfft order). ``keep_bins``: kf's bins from there on are
    zero (a frequency-sparse filter): the kernel computes the spectra on the frequency columns
    that hold the others only (``kept_columns``), and ``dk_spectrum`` is zero in the rest
    (``dk_from_spectrum`` with the same ``keep_bins`` low-passes it). ``config``,
    ``pairs_per_program``, ``precision``: override the defaults (``pairs_per_program`` is
    rounded up to whole blocks of ``config.steps``). ``out``: ``(d_u, d_pregate, d_postgate)``
    tensors to write in place (None entries are allocated). ``blocked``: the blocked plan of a
    causal filter of at most ``n/2`` taps (module docstring), any L, ``n >= 512``, no
    ``keep_bins`` cut-off. ``z``: the forward's convolution before the postgate, ``[B, H, L]``
    (``triton_fwd.launch``'s ``z_out``), when it kept one: the kernel that computes d_postgate
    then takes ``dy * z`` from it, with no transform of v for it (8 of the gated kernel's 32
    products per pair). A blocked plan needs one for d_postgate (z needs the previous block of
    v, which the backward does not transform): without it the blocked forward kernel computes
    it first. ``twist`` (the filter gradient alone, dense): v and dz twiddled by ``w_(2n)^t``
    first, so that the spectrum sums the odd bins of their size-2n spectra
    (``filter_grad_halves``).
    """
    B, H, L = u.shape
    if twist and (blocked or tuple(needs) != (False, True, False, False, False)):
        raise ValueError(
            f"twist: the filter gradient alone of a dense plan; got needs={tuple(needs)}, "
            f"blocked={blocked}"
        )
    if keep_bins is not None and keep_bins < 1:
        raise ValueError(f"keep_bins must be None or >= 1; got {keep_bins}")
    if blocked:
        _check_blocked_keep(n, keep_bins)
        if not supports(n, False, u.dtype) or n < MIN_BLOCKED_FFT or L < 1:
            raise ValueError(
                f"the blocked backward covers n in [{MIN_BLOCKED_FFT}, {MAX_FFT}], "
                f"L >= 1, dtypes {DTYPES}; got n={n}, L={L}, {u.dtype}"
            )
    elif not supports(n, False, u.dtype) or L > n:
        raise ValueError(
            f"the fused backward covers n in [{MIN_FFT}, {MAX_FFT}], L <= n, "
            f"dtypes {DTYPES}; got n={n}, L={L}, {u.dtype}"
        )
    if dy.shape != u.shape:
        raise ValueError(f"dy must have the shape of u {tuple(u.shape)}; got {tuple(dy.shape)}")
    if z is not None and (z.shape != u.shape or z.dtype != u.dtype or z.device != u.device):
        raise ValueError(
            f"z must be {u.dtype} of u's shape {tuple(u.shape)} on {u.device}; got {z.dtype} "
            f"{tuple(z.shape)} on {z.device}"
        )
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
    config = config or config_for(n, u.dtype, blocked, keep_bins)
    _check_config(n, config)
    N1, N2 = config.n1, n // config.n1
    if pairs_per_program is not None and pairs_per_program < 1:
        raise ValueError(f"pairs_per_program must be >= 1; got {pairs_per_program}")

    keep_bins = keep_bins if skips_columns(N1, N2, u.dtype) else None
    low, high = kept_columns(n, keep_bins, N1=N1)
    K2 = low + high
    dft1, dft2, twiddle = triton_fwd.constants(n, u.device, u.dtype, N1=N1)
    if K2 < N2:
        dft2 = select_columns(dft2, n, keep_bins, N1=N1).contiguous()  # [2, N2, K2]
    spectrum = spectrum_layout(kf, n, keep_bins, N1=N1)  # [H, 2, N1, K2]
    dy, u = dy.contiguous(), u.contiguous()
    z = z.contiguous() if z is not None else None
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

    # a blocked plan: NB blocks of S = n/2 samples per row, each its own sequence (ROWS = N1/2)
    seqs = B * triton.cdiv(L, n // 2) if blocked else B
    n_pairs = triton.cdiv(seqs, 2)
    pairs_per_program = pairs_per_program or pairs_per_program_for(seqs, H, u.device)
    config_b = config.kernel_b()
    # the chunk in whole blocks of the longer block of the two kernels (powers of two: the
    # shorter one divides it)
    block, pairs_per_program = block_steps(
        min(pairs_per_program, n_pairs), max(config.steps, config_b.steps)
    )
    chunks = triton.cdiv(n_pairs, pairs_per_program)
    rows = N1 // 2 if blocked else min(N1, max(16, triton.next_power_of_2(triton.cdiv(L, N2))))
    dk_parts = u.new_empty((H, chunks, 2, N1, K2), dtype=torch.float32) if need_k else None
    dbias_parts = u.new_empty((H, chunks), dtype=torch.float32) if need_bias else None

    def run(
        kernel_needs: tuple[bool, ...], kernel_config: Config, q: Tensor | None, store_q: bool
    ) -> None:
        k_u, k_k, k_pre, k_post, k_bias = kernel_needs
        z_in = z is not None and k_post  # this kernel computes dpostgate, from the kept z
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
            d_u if k_u else u,
            d_pre if k_pre else u,
            d_post if k_post else u,
            dk_parts if k_k else spectrum,
            dbias_parts if k_bias else spectrum,
            q if q is not None else u,
            z if z_in else u,
            B,
            H,
            L,
            pairs_per_program,
            N1=N1,
            N2=N2,
            K2=K2,
            ROWS=rows,
            HAS_PREGATE=pregate is not None,
            HAS_POSTGATE=postgate is not None,
            HAS_BIAS=bias is not None,
            NEED_DU=k_u,
            NEED_DK=k_k,
            NEED_DPREGATE=k_pre,
            NEED_DPOSTGATE=k_post,
            NEED_DBIAS=k_bias,
            HOIST=kernel_config.hoist,
            ACC_IN_MEMORY=kernel_config.acc_in_memory,
            STEPS=min(kernel_config.steps, block),
            STAGES=kernel_config.stages,
            STORE_Q=q is not None and store_q,
            LOAD_Q=q is not None and not store_q,
            Z_IN=z_in,
            BLOCKED=blocked,
            PRECISION=precision or dot_precision(u),
            TWIST=twist,
            num_warps=kernel_config.num_warps,
        )

    # z for the postgate: in a blocked plan it needs the previous block of v, which the backward
    # does not transform, so without the forward's the blocked forward kernel computes it
    # (ungated); the kernel then multiplies it by dy
    if blocked and need_post and z is None:
        z = triton_fwd.fftconv_fwd(u, kf, pregate, None, None, n, blocked=True)
    with device_guard(u):
        if _splits(config, needs):
            # (a) Q, dv and what follows from it; (b) P, z and the filter gradient
            q = None
            if config.split == "store_q" and need_k:
                q = u.new_empty((H, n_pairs, 2, N1, K2))
            needs_a, needs_b = split_needs(config, needs)
            if any(needs_a) or q is not None:  # (a) also writes the Q that (b) reads
                run(needs_a, config, q, True)
            run(needs_b, config_b, q, False)
        elif any(needs):
            run(needs, config, None, False)
    # fixed summation order over the chunks: deterministic
    dk_spectrum = None
    if dk_parts is not None:
        dk_spectrum = _all_columns(dk_parts.sum(dim=1), n, keep_bins, N1)
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
    blocked: bool = False,
    z: Tensor | None = None,
    **launch_options,
) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    """Gradients of ``y = postgate * irfft(rfft(u * pregate, n) * kf, n)[:L] + bias * (u *
    pregate)`` for (u, kc, pregate, postgate, bias), None where ``needs`` is False
    (``core.backward``'s contract for a non-fold plan).

    u, dy, gates: ``[B, H, L]`` with ``L <= n``; kc ``[H, m]`` the filter in circular order
    (only its length and dtype are used: the gradient has them); kf ``[H, n//2+1]`` complex64
    (rfft order, zero from ``keep_bins`` on: the kernel then skips the frequency columns that
    hold only zeros, ``launch``); bias ``[H]``. ``blocked``: the gradients of the
    causal convolution ``y = postgate * conv(u * pregate, kc)[:L] + bias * (u * pregate)`` by
    the blocked plan (module docstring): any L, ``m <= n/2``, ``n >= 512``, no frequency
    cut-off (kf is ``rfft(kc, n)``). ``z``: the forward's z, when it kept one (``launch``).
    ``launch_options``: those of ``launch``.
    """
    H = u.shape[1]
    max_taps = n // 2 if blocked else n  # a blocked plan: the filter fits in one block
    if kc.dim() != 2 or kc.shape[0] != H or not 1 <= kc.shape[1] <= max_taps:
        raise ValueError(
            f"kc must have shape ({H}, m) with 1 <= m <= {max_taps}; got {tuple(kc.shape)}"
        )
    if blocked and keep_bins != n // 2 + 1:
        raise ValueError(
            f"a blocked plan keeps every frequency: keep_bins must be {n // 2 + 1}; got {keep_bins}"
        )
    d_u, dk_spectrum, d_pre, d_post, d_bias = launch(
        dy, u, kf, pregate, postgate, bias, n, needs, blocked=blocked, keep_bins=keep_bins, z=z,
        **launch_options,
    )  # fmt: skip
    d_k = None
    if dk_spectrum is not None:
        d_k = dk_from_spectrum(dk_spectrum, kc.shape[1], keep_bins).to(kc.dtype)
    if d_bias is not None:
        d_bias = d_bias.to(bias.dtype)
    return d_u, d_k, d_pre, d_post, d_bias
