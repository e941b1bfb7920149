"""Fused forward FFT convolution in Triton: the whole convolution (gate, FFT, filter, inverse
FFT, gate, skip term) in one program's registers, u read once and y written once.

The length-n circular convolution of the zero-padded input (every non-fold plan reduces to
it, see ``plan.py``) as a two-stage Monarch product, ``n = N1 * N2`` with ``N1 >= N2 >= 16``
(``tl.dot`` needs every dimension >= 16). Time index ``t = N2*t1 + t2``, frequency index
``k = k1 + N1*k2``; the signal is the row-major tile ``x[t1, t2]``. With ``F_N`` the unitary
DFT matrix of size N (``exp(-2 pi i jk / N) / sqrt(N)``) and the twiddle
``T[k1, t2] = exp(-2 pi i k1 t2 / n)``:

    forward   B = F_N1 @ x              [N1, N2] (k1, t2)
              X = (B * T) @ F_N2        [N1, N2] (k1, k2): X[k1, k2] = FFT(x)[k1 + N1 k2] / sqrt(n)
    filter    Y = X * K                 K[k1, k2] = kf[k1 + N1 k2] (full spectrum, host-permuted)
    inverse   E = (Y @ conj(F_N2)) * conj(T)
              z = conj(F_N1) @ E        [N1, N2] (t1, t2): the natural order again, real part

so the spectrum lives in a permuted order that only the filter has to follow (the host permutes
``kf`` once per call), and the output comes back in the input's row-major layout.

Design choices:

- Real input, complex transform, no real-input packing yet: 12 real ``tl.dot``s per sequence,
  fp32 accumulation. ``PAIR`` (the default for B >= 2) transforms sequences b and b+1 of one
  channel as the real and imaginary parts of one complex signal instead: the filter is real,
  so ``conv(v + i w, k) = conv(v, k) + i conv(w, k)`` and the two come out apart; 16 dots for
  two sequences instead of 24, and the filter, DFT matrices and twiddles are read once for
  both. The price: the rounding error of one sequence leaks into the other at the operand
  precision (a sequence much smaller than its partner gets a larger relative error).
- Operands in the input's dtype for fp16/bf16 (intermediates rounded to it between stages;
  the unitary scaling keeps them in range). fp32 inputs: fp32 operands with
  ``input_precision="tf32x3"`` on CUDA (three tf32 products per dot, near-fp32 accuracy on the
  tensor cores; plain tf32 would miss the 1e-5 fp32 tolerance, and "ieee" dots run on the FMA
  units and spill heavily from n = 4096), "ieee" in the interpreter (which ignores it).
- Zero-block skip: u occupies only the first ``cdiv(L, N2)`` rows of the tile and y needs only
  those rows, so the first forward stage reads and the last inverse stage writes ``ROWS``
  rows (that count rounded up to a power of two >= 16): half the work of those two stages
  for a causal convolution with a full-length filter and N1 >= 32.
- A program takes ``STEPS`` consecutive steps (pairs or single sequences) of one channel: the
  DFT matrices, twiddles and filter spectrum are loaded once and held across its loop
  (``steps_for`` picks as many as keep 8 programs per SM busy, at most 16), and the loop is
  software-pipelined (``STAGES`` 3 for fp16/bf16 up to n = 2048, then 2: the next steps'
  loads are issued during this one's products; measured 1.1-1.8x, most on the gated
  kernels). Programs are ordered channel-major so that consecutive programs share the filter
  spectrum in L2.
- Warps (measured on an H200, benchmarks/NOTES.md): 2 for n <= 512, 4 up to 4096, 8 at 8192
  (4 spill there). Pairing measured 1.7-1.8x faster than one sequence per program.
- Frequency-sparse filters (``keep_bins``): the nonzero bins ``k = k1 + N1 k2`` sit in the
  first and last columns ``k2`` of the spectrum tile, so the second forward stage computes
  only those columns (``C @ F_N2[:, kept]``) and the first inverse stage sums over them only
  (``S @ conj(F_N2)[kept, :]``): with 75% of the bins zero, those two stages do a quarter of
  the work (``kept_columns``; at least 16 columns, so from N2 = 32, i.e. n >= 2048).
- Blocked plans (``BLOCKED``, a causal partial convolution: a filter of at most S = n/2 taps,
  any L): each row is cut into ``NB = cdiv(L, S)`` blocks of S outputs and block j is one
  size-n circular convolution of the window ``v[(j-1) S : (j+1) S]`` (zero outside [0, L)),
  of which the second half is kept: for t in [S, 2S) and lags s < S, t - s stays inside the
  window, so there is no wrap-around and the result is the causal convolution exactly (only
  the rounding differs). A channel then has ``B * NB`` sequences (pairs may span two rows);
  the first stage reads all N1 rows, the last writes rows [N1/2, N1). Cost: NB sequences of
  size n = 2S per row, so the filter length, not L, sets the FFT size; u and pregate are read
  twice (each block in two windows), and once more at the output positions for the skip term
  (the positions the same step's window has just read).
- Three stages (``transform="three"``, ``_fftconv_fwd3_kernel``; dense plans with a dense
  spectrum at n = 4096 and 8192): ``n = N1 N2 N3`` with ``N2 = N3 = 16`` (16 x 16 x 16,
  32 x 16 x 16), ``t = t1 N2 N3 + t2 N3 + t3``, ``k = k1 + N1 k2 + N1 N2 k3``. The tile is
  ``[t1, (t2, t3)]``; stage 1 is ``F_N1 @ x`` on its rows (zero rows skipped as above), then
  the twiddle ``w_(N1 N2)^(k1 t2)``, the tile permuted to ``[(k1, t3), t2]`` for stage 2
  (``@ F_N2``), the twiddle ``w_n^(t3 (k1 + N1 k2))`` (the product of two small tables,
  ``w_n^(k1 t3)`` and ``w_(N2 N3)^(k2 t3)``), permuted to ``[(k1, k2), t3]`` for stage 3
  (``@ F_N3``): the spectrum tile ``[(k1, k2), k3]`` (``spectrum_layout3`` lays the filter out
  so). The inverse runs the same steps backwards with conjugates. A transform costs
  ``n (N1 + N2 + N3)`` multiply-adds per plane instead of ``n (N1 + N2)`` (3x fewer at 4096,
  3.2x at 8192), for two register-tile permutations per direction (layout conversions
  through shared memory) and one more rounding of the intermediate to the operand dtype.
- Two halves (``halves=True``, constexpr ``HALVES = 2``; the forward's default at
  ``HALVES_AT``, n = 16384, but not for a forward whose postgate keeps no z: ``halves_for``;
  its backward on the two halves only under ``use_halves(True)``): a dense
  plan of FFT size ``n = 2m`` whose input and output fit m samples (a causal L <= 8192 at
  n = 16384, which otherwise leaves the in-register kernel for the long path) as two size-m
  convolutions on the same ``[N1, N2] = split(m)`` tile. With ``w_n = exp(-2 pi i / n)`` and
  x zero past m, the even bins are ``X[2j] = FFT_m(x)[j]`` and the odd ones ``X[2j+1]
  = FFT_m(x w_n^t)[j]``, and for ``t < m``

      y[t] = ( IFFT_m(X_even K_even)[t] + w_n^-t IFFT_m(X_odd K_odd)[t] ) / 2

  (a cyclic and a negacyclic convolution of size m). Both halves use the same tables; the odd
  one twiddles the input by ``w_n^t = w_n^(N2 t1) w_n^t2`` (a row vector, then a column
  vector: cos/sin per program, no tile of twiddles) and its result back by ``w_n^-t``; the
  spectrum comes in two halves (``outer_spectrum_layout(kf, n, 2)``: bins ``k0 + 2 (k1 + N1
  k2)``, even then odd). Two ways to run it (``launch``'s ``halves_passes``):
  two launches (the default, constexpr ``HALF`` 0 then 1): the even half writes its raw z to
  y, in y's dtype; the odd half reads it back at the positions it then writes, adds its own
  and ends with the epilogue (z, gates, skip term) on the halved sum. u and the pregate are
  read twice, z once more through y: 8 more bytes per sample than the floor's 4, against the
  long path's 16 (its intermediate written and read twice). Each launch is the work of the
  in-register kernel on a full-height tile, which measured 0.544 ms for a size-8192 circular
  convolution of L = 8192 (B*H*L = 2^27, plain, bf16, H100) against the long path's 1.41.
  One launch (``HALF = 2``, ``halves_passes=1``): both halves in one program, u read once, the
  even half's E tile and the twiddled input live across the other half; the sm_90 compile
  (bf16, 8 warps, one stage: two ask for 248 KB of shared memory) spills 1.4-1.7 KB; with the
  twiddle as a tile (1.8-1.9 KB) it measured 2.6 ms plain (H100; NOTES, "The two-halves
  kernel"). The two-launch sm_90 compiles spill 0.36-0.59 KB (even) and 0.57-0.95 KB (odd, its
  column factor folded into the tile's twiddle, which it commutes with; one stage with a
  postgate or bias: two ask for 280 KB). fp32 spills 9 KB in one launch and is never the
  default.
- Sizes: ``MIN_FFT <= n <= MAX_FFT`` (blocked: ``n >= MIN_BLOCKED_FFT``; two halves: ``n/2``
  in that range). Smaller n would need a DFT factor below 16; larger n does not fit one
  program's registers. ``supports`` (``supports_halves``) says which plans run here; the
  caller falls back to the unfused primitives or the long path for the rest.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..backends import build_constants, canonical_device, device_guard, sm_count, triton_unusable
from .plan import BLOCK_MIN

MIN_FFT = 256
MAX_FFT = 8192
MIN_BLOCKED_FFT = 2 * BLOCK_MIN  # N1 >= 32 at n = 512, so the output half has >= 16 rows
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_STEPS = 16
# sizes whose dense plans measured faster with more steps (benchmarks/NOTES.md, v10): n = 2048,
# 32 steps, 0.497 against 0.521 ms plain and 0.771 against 0.801 gated at L = 1024
MAX_STEPS_AT = {2048: 32}
# dense plans whose programs per SM may fall lower: at n = 8192 one program fills an SM (8 warps
# at 255 registers), and 16 pairs per program (4 programs per SM at H = 1024, L = 4K) measured
# 0.827 against 8 pairs' 0.874 ms plain, 1.394 against 1.404 gated (NOTES, v10)
PROGRAMS_PER_SM_AT = {8192: 4}
# dense fp16/bf16 plans on 2 warps instead of 4 (NOTES, v12): at n = 2048 (32 pairs per program,
# 3 stages) 0.424 against 0.498 ms plain and 0.706 against 0.778 gated at L = 1024 on an H100,
# though the sm_90 compile spills 140 B where 4 warps spill none; and (v13) at n = 1024 (16
# pairs, 3 stages, no spills on 2 warps either) 0.381 against 0.453 ms plain and 0.554
# against 0.652 gated at L = 512 on an H100. fp32 and blocked plans keep 4 (fp32 spills 1.2 ->
# 3.1 KB at n = 2048).
TWO_WARPS_AT = (1024, 2048)
# where a dense plan's skip term bias * v takes v from (``launch``'s ``skip_input``), and the
# sizes whose fp16/bf16 default loads it again (v13: bare kernel, gated, H100, 0.813 against
# 0.869 ms at n = 4096 and 1.278 against 1.415 at 8192; 0.803 against 0.710 at 2048)
SKIP_INPUTS = {"held": 0, "reload": 1}
RELOAD_SKIP_AT = (4096, 8192)
PROGRAMS_PER_SM = 8
# the transform of a dense plan (``launch``'s ``transform``): "two" Monarch stages
# (``_fftconv_fwd_kernel``) or "three" (``_fftconv_fwd3_kernel``, n in ``THREE_STAGE_SIZES``).
# The fp16/bf16 sizes whose default is three stages when the call has a pregate, and where
# that default loads the filter spectrum per step instead of holding it (NOTES, v14: bare
# kernel, H200, bf16, pre- and postgate and bias, 1.155 against 1.244 ms at n = 8192; plain
# 0.888 against 0.826, and at n = 4096 1.34 against 0.815 gated: two stages there; v15: a
# pregate alone, Hyena's call, H100, 0.893 against 0.934 at n = 8192, 0.862 against 0.604 at
# 4096; a postgate alone not timed, two stages)
TRANSFORMS = ("two", "three")
THREE_STAGE_SIZES = (4096, 8192)
THREE_STAGE_GATED_AT: tuple[int, ...] = (8192,)
LOAD_FILTER_AT: tuple[int, ...] = (8192,)
# where the filter's spectrum reaches the kernel (``fftconv_fwd``'s ``filter_layout``): "pass",
# laid out in the kernel's order by a pass of its own (``spectrum_layout``), or "kernel", the
# rfft handed over as it is and gathered by the forward kernel; the sizes whose default is
# "kernel" for the two-stage transform (v15, public forward, H100, bf16: L = 4K plain 0.875
# against 0.911 ms, a pregate alone 1.003 against 1.015; L = 2K plain 0.565 against 0.570, both
# gates 0.837 against 0.856, a pregate 0.644 against 0.654; at L = 1K mixed, eager plain 0.481
# against 0.453; the three-stage kernel, which loads the filter per step, 2.09 against 1.22)
FILTER_LAYOUTS = ("pass", "kernel")
FILTER_IN_KERNEL_AT: tuple[int, ...] = (4096, 8192)
# the two-halves kernel (``launch``'s ``halves``; module docstring, "Two halves"): a plan of FFT
# size n whose input and output fit n/2 samples run as two size-n/2 convolutions in one program,
# on the spectrum's even and odd bins; n = 2 MAX_FFT (causal L <= 8192) has no other fused
# kernel (the long path's outer step goes through HBM). The FFT sizes it is the forward's
# default at (H100, L = 8K, bf16, public forward: plain 1.45 ms against the long path's 1.60,
# with a pregate 1.60 against 1.70; with both gates and the bias 2.48 against 2.05, which is
# why a postgate that keeps no z takes the long path: ``halves_for``). The backward stays on
# the long path (``halves_backward_for``).
HALVES_MAX_FFT = 2 * MAX_FFT
HALVES_AT: tuple[int, ...] = (HALVES_MAX_FFT,)
_halves: bool | None = None  # use_halves's override of the default
_filter_layout: str | None = None  # use_filter_layout's override of the default


def split(n: int) -> tuple[int, int]:
    """The Monarch factors ``(N1, N2)`` of ``n``: ``N1 >= N2``, both powers of two."""
    log2 = n.bit_length() - 1
    N2 = 1 << (log2 // 2)
    return n // N2, N2


def tile_rows(seq_len: int, n: int) -> int:
    """Rows of the [N1, N2] tile that hold the input / the output, as a power of two >= 16."""
    N1, N2 = split(n)
    return min(N1, max(16, triton.next_power_of_2(triton.cdiv(seq_len, N2))))


def supports(n: int, fold: bool, dtype: torch.dtype) -> bool:
    return not fold and MIN_FFT <= n <= MAX_FFT and (n & (n - 1)) == 0 and dtype in DTYPES


def supports_halves(n: int, seq_len: int, fold: bool, dtype: torch.dtype) -> bool:
    """Whether the two-halves kernel can run a dense plan of FFT size n on sequences of
    ``seq_len``: n/2 a size of the in-register kernel and ``seq_len <= n/2``."""
    return supports(n // 2, fold, dtype) and n % 2 == 0 and seq_len <= n // 2


def halves_for(
    n: int, seq_len: int, fold: bool, dtype: torch.dtype, *, postgate_without_z: bool = False
) -> bool:
    """Whether a dense plan runs on the two-halves kernel by default: fp16/bf16 at the sizes of
    ``HALVES_AT``, where it can (``supports_halves``; fp32 spills 9 KB there, sm_90 compile).

    ``postgate_without_z``: the question is asked for a forward with a postgate that keeps no z
    (no gradient wanted for it, as at inference). The default sends such a forward to the long
    path: with both gates and the bias the halves forward measured 21% slower (2.48 against
    2.05 ms, H100, L = 8K), while a postgate that wants a gradient gains on forward+backward
    (9.85 against 11.81 ms: the halves forward keeps z). ``use_halves`` overrides this too."""
    half = dtype in (torch.float16, torch.bfloat16)
    if _halves is None:
        at = n in HALVES_AT and not postgate_without_z
    else:
        at = _halves and n == HALVES_MAX_FFT
    return half and at and supports_halves(n, seq_len, fold, dtype)


def halves_backward_for(n: int, seq_len: int, fold: bool, dtype: torch.dtype) -> bool:
    """Whether the backward of a dense plan runs on the two-halves kernels (d_u's correlation
    on the forward's kernel, the filter gradient on the in-register backward's two halves):
    only where ``use_halves(True)`` says so. By default the long path's backward runs, also
    behind a two-halves forward (which hands it z where the postgate wants a gradient): on an
    H100 at L = 8K (plain, bf16, B*H*L = 2^27) forward+backward took 5.81 ms with the halves
    forward and the long backward, 6.57 with both on the halves (the halves' backward
    transforms dz four times a pair), 5.97 with both on the long path."""
    half = dtype in (torch.float16, torch.bfloat16)
    at = _halves is True and n == HALVES_MAX_FFT
    return half and at and supports_halves(n, seq_len, fold, dtype)


def split3(n: int) -> tuple[int, int, int]:
    """The three-stage factors ``(N1, N2, N3)`` of n in ``THREE_STAGE_SIZES``: ``N2 = N3 = 16``
    (``tl.dot``'s minimum), ``N1 = n / 256`` (16 x 16 x 16 at 4096, 32 x 16 x 16 at 8192)."""
    if n not in THREE_STAGE_SIZES:
        raise ValueError(f"n: three stages run at {THREE_STAGE_SIZES}; got {n}")
    return n // 256, 16, 16


def tile_rows3(seq_len: int, n: int) -> int:
    """Rows t1 of the three-stage [N1, N2 N3] tile that hold the input / the output."""
    N1, N2, N3 = split3(n)
    return min(N1, max(16, triton.next_power_of_2(triton.cdiv(seq_len, N2 * N3))))


# ---------------------------------------------------------------------------------------------
# Constants: DFT matrices and twiddles, built on the device (no host copy: capture-safe)

_CONSTANTS: dict[tuple[int, int, torch.device, torch.dtype], tuple[Tensor, Tensor, Tensor]] = {}


def _unitary_dft(size: int, device: torch.device) -> Tensor:
    j = torch.arange(size, dtype=torch.float64, device=device)
    angle = (-2.0 * math.pi / size) * torch.remainder(j[:, None] * j[None, :], size)
    return torch.stack([angle.cos(), angle.sin()]) / math.sqrt(size)  # [2, size, size]


def _twiddle_table(rows: int, cols: int, size: int, device: torch.device) -> Tensor:
    """``w_size^(a b)`` for a < rows, b < cols (``w_m = exp(-2 pi i / m)``): ``[2, rows, cols]``
    fp32 planes, the exponent reduced mod size in float64 first."""
    a = torch.arange(rows, dtype=torch.float64, device=device)
    b = torch.arange(cols, dtype=torch.float64, device=device)
    angle = (-2.0 * math.pi / size) * torch.remainder(a[:, None] * b[None, :], size)
    return torch.stack([angle.cos(), angle.sin()]).float().contiguous()


def constants(
    n: int, device: torch.device, dtype: torch.dtype, N1: int | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """``(dft1 [2, N1, N1], dft2 [2, N2, N2])`` in ``dtype`` and ``twiddle [2, N1, N2]`` fp32
    (real and imaginary planes) for the factors ``N1 x N2 = n`` (default ``split(n)``; the
    backward picks its own), cached per (N1, N2, device, dtype) and shared by every kernel."""
    device = canonical_device(device)  # "cuda" and "cuda:0": one entry
    N1, N2 = split(n) if N1 is None else (N1, n // N1)
    key = (N1, N2, device, dtype)
    if key not in _CONSTANTS:

        def build() -> tuple[Tensor, Tensor, Tensor]:
            twiddle = _twiddle_table(N1, N2, n, device)
            dft1 = _unitary_dft(N1, device).to(dtype).contiguous()
            dft2 = _unitary_dft(N2, device).to(dtype).contiguous()
            return dft1, dft2, twiddle

        _CONSTANTS[key] = build_constants(device, f"Triton FFT tables for n={n} ({dtype})", build)
    return _CONSTANTS[key]


_CONSTANTS3: dict[tuple[int, torch.device, torch.dtype], tuple[Tensor, ...]] = {}


def constants3(n: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, ...]:
    """The three-stage kernel's tables for ``split3(n)``, real and imaginary planes:
    ``(F_N1 [2, N1, N1], F_N2 [2, N2, N2], F_N3 [2, N3, N3])`` unitary in ``dtype`` and, fp32,
    ``tw1 [2, N1, N2] = w_(N1 N2)^(k1 t2)``, ``tw2a [2, N1, N3] = w_n^(k1 t3)``, ``tw2b [2, N2,
    N3] = w_(N2 N3)^(k2 t3)`` (``w_m = exp(-2 pi i / m)``; the second stage's twiddle
    ``w_n^(t3 (k1 + N1 k2))`` is ``tw2a * tw2b``, two small tables instead of one of size n)."""
    device = canonical_device(device)
    key = (n, device, dtype)
    if key not in _CONSTANTS3:
        N1, N2, N3 = split3(n)

        def build() -> tuple[Tensor, ...]:
            dfts = tuple(_unitary_dft(m, device).to(dtype).contiguous() for m in (N1, N2, N3))
            twiddles = ((N1, N2, N1 * N2), (N1, N3, n), (N2, N3, N2 * N3))
            return (*dfts, *(_twiddle_table(*shape, device) for shape in twiddles))

        _CONSTANTS3[key] = build_constants(
            device, f"Triton three-stage FFT tables for n={n} ({dtype})", build
        )
    return _CONSTANTS3[key]


def kept_columns(n: int, keep_bins: int | None, *, N1: int | None = None) -> tuple[int, int]:
    """The frequency columns ``k2`` of the [N1, N2] spectrum tile (the factors ``N1 x n/N1``,
    default ``split(n)``) that hold nonzero bins of a spectrum whose rfft bins ``>= keep_bins``
    are zero: ``(low, high)``, the first ``low`` and the last ``high`` columns, together a power
    of two >= 16 (``tl.dot``'s minimum; extra columns come from the zero middle). ``(N2, 0)``
    when that would not be fewer than N2.

    The columns in between hold only bins ``keep_bins .. n - keep_bins`` (column ``k2`` holds
    bins ``k1 + N1 k2``: ``low >= cdiv(keep_bins, N1)`` puts the first skipped one at or past
    ``keep_bins``, and ``N2 - high <= (n - keep_bins + 1) // N1`` the last one's at or below
    ``n - keep_bins``): the bins a low-pass at ``keep_bins`` zeroes."""
    return outer_kept_columns(n, 1, keep_bins, M1=N1)


def padded_columns(low: int, high: int, N2: int) -> tuple[int, int]:
    """The first ``low`` and last ``high`` of N2 columns, widened from the zero middle to a
    power of two >= 16 (``tl.dot``'s minimum): ``(low', high)``, or ``(N2, 0)`` when that
    would not be fewer than N2."""
    width = max(16, triton.next_power_of_2(low + high))
    if width >= N2:
        return N2, 0
    return width - high, high


def columns_of(t: Tensor, low: int, high: int) -> Tensor:
    """The columns ``(low, high)`` of a ``[..., N2]`` tile (the first ``low``, the last
    ``high``), by slicing (no index tensor: capture-safe)."""
    if high == 0:
        return t[..., :low]
    return torch.cat([t[..., :low], t[..., t.shape[-1] - high :]], dim=-1)


def all_columns(t: Tensor, low: int, high: int, N2: int) -> Tensor:
    """``columns_of`` undone: a ``[..., low + high]`` tile -> ``[..., N2]``, zero in the
    columns in between (``t`` itself when nothing was left out)."""
    if low == N2:
        return t
    full = t.new_zeros(*t.shape[:-1], N2)
    full[..., :low] = t[..., :low]
    full[..., N2 - high :] = t[..., low:]
    return full


def select_columns(t: Tensor, n: int, keep_bins: int | None, *, N1: int | None = None) -> Tensor:
    """The kept columns (``kept_columns``) of a [..., N2] tile (``columns_of``)."""
    return columns_of(t, *kept_columns(n, keep_bins, N1=N1))


_layout_kernel = True  # spectrum_layout's default (use_layout_kernel): the Triton kernel
# spectrum_layout_kernel's tile (bins j x columns a2) and warps
LAYOUT_BLOCK_J = 64
LAYOUT_BLOCK_A = 32
LAYOUT_WARPS = 4


@contextlib.contextmanager
def _overridden(name: str, value) -> Iterator[None]:
    """Within the block, this module's global ``name`` is ``value`` (the ``use_*`` switches)."""
    namespace = globals()
    previous, namespace[name] = namespace[name], value
    try:
        yield
    finally:
        namespace[name] = previous


def use_layout_kernel(enabled: bool = True) -> contextlib.AbstractContextManager[None]:
    """Within the block, spectrum layouts that do not say otherwise (this module's
    ``spectrum_layout`` and the long path's, forward and backward) run
    ``spectrum_layout_kernel`` (True) or the torch ops (False)."""
    return _overridden("_layout_kernel", bool(enabled))


def use_filter_layout(layout: str | None) -> contextlib.AbstractContextManager[None]:
    """Within the block, ``fftconv_fwd`` calls that do not say otherwise take ``layout`` as
    their ``filter_layout`` (None: the per-size default), e.g. the public call in a benchmark."""
    if layout is not None and layout not in FILTER_LAYOUTS:
        raise ValueError(f"layout must be one of {FILTER_LAYOUTS} or None; got {layout!r}")
    return _overridden("_filter_layout", layout)


def use_halves(enabled: bool | None) -> contextlib.AbstractContextManager[None]:
    """Within the block, dense plans of FFT size ``HALVES_MAX_FFT`` that the two-halves kernel
    can run take it (True) or the long path (False) whatever ``HALVES_AT`` says (None: as it
    says), e.g. the public call in a benchmark."""
    return _overridden("_halves", enabled)


def layout_kernel_enabled() -> bool:
    """What ``use_layout_kernel`` set (True unless a block turned it off)."""
    return _layout_kernel


def launch_layout(
    kf: Tensor,
    n0: int,
    M1: int,
    M2: int,
    low: int,
    high: int,
    conj: bool = False,
    *,
    block_j: int | None = None,
    block_a: int | None = None,
    num_warps: int | None = None,
) -> Tensor:
    """``spectrum_layout_kernel`` on kf ``[H, n//2+1]`` complex64, ``n = n0 M1 M2``: returns
    ``[H, n0, 2, M1, low + high]`` fp32, the columns ``a2 < low`` and ``a2 >= M2 - high``.
    ``block_j``, ``block_a``, ``num_warps``: the tile (``BJ`` x ``BA``, powers of two, BA <=
    M2) and warps per program, for tuning (``benchmarks/spectrum_layout.py``); by default
    ``LAYOUT_BLOCK_J`` x ``LAYOUT_BLOCK_A`` on ``LAYOUT_WARPS``, clipped to the shape."""
    H = kf.shape[0]
    out = torch.empty(H, n0, 2, M1, low + high, device=kf.device, dtype=torch.float32)
    for name, value in (("block_j", block_j), ("block_a", block_a)):
        if value is not None and (value < 1 or value & (value - 1)):
            raise ValueError(f"{name} must be a power of two; got {value}")
    ba = min(M2, block_a or LAYOUT_BLOCK_A)
    bj = min(block_j or LAYOUT_BLOCK_J, triton.next_power_of_2(n0 * M1))
    grid = (triton.cdiv(n0 * M1, bj) * (M2 // ba) * H,)
    with device_guard(kf):
        spectrum_layout_kernel[grid](
            torch.view_as_real(kf.contiguous()), out, n0,
            M1=M1, M2=M2, LOW=low, HIGH=high, BA=ba, BJ=bj, CONJ=conj,
            num_warps=num_warps or LAYOUT_WARPS,
        )  # fmt: skip
    return out


def full_spectrum(kf: Tensor, n: int) -> Tensor:
    """The full (Hermitian) spectrum ``[H, n]`` of an rfft ``[H, n//2 + 1]``: the bins past n/2
    are the conjugates of their mirrors."""
    return torch.cat([kf, torch.conj_physical(kf[:, 1 : n // 2].flip(-1))], dim=-1)


def spectrum_layout(
    kf: Tensor,
    n: int,
    keep_bins: int | None = None,
    N1: int | None = None,
    *,
    kernel: bool | None = None,
) -> Tensor:
    """kf ``[H, n//2+1]`` complex (rfft order) -> ``[H, 2, N1, K2]`` fp32, the kernel's order:
    ``[h, 0|1, k1, k2]`` = real|imag of bin ``k1 + N1*k2`` of the full (Hermitian) spectrum,
    for the kept columns of a frequency-sparse filter (``kept_columns``; all N2 if dense).
    ``N1``: the factors ``N1 x n / N1`` (default ``split(n)``).

    ``kernel`` (default True, or what ``use_layout_kernel`` set): one pass of
    ``spectrum_layout_kernel`` (read the rfft once, write the layout), instead of the torch ops
    (a concatenation with the mirrored half, a permuting copy and a stack of the planes: each a
    pass over the spectrum, the permuting one with reads that stride by ``8 N1`` bytes). The
    values are the same, bit for bit. Off CUDA the kernel needs TRITON_INTERPRET=1; without it
    the torch ops run."""
    N1 = split(n)[0] if N1 is None else N1
    out = outer_spectrum_layout(kf, n, 1, kernel=kernel, keep_bins=keep_bins, M1=N1)
    return out.view(kf.shape[0], 2, N1, out.shape[-1])  # the one row of n0 = 1


def outer_kept_columns(
    n: int, n0: int, keep_bins: int | None, *, M1: int | None = None
) -> tuple[int, int]:
    """The columns a2 of the ``[M1, M2]`` tiles of a size-n spectrum cut into ``n0`` rows
    (``M1 x M2 = split(n / n0)``; the long path's rows, the two-halves kernel's halves at
    ``n0 = 2``) that hold the nonzero bins of a spectrum whose rfft bins ``>= keep_bins`` are
    zero: ``(low, high)``, the first ``low`` and the last ``high`` columns, together a power of
    two >= 16 (extra columns from the zero middle), as ``kept_columns``; ``(M2, 0)`` when dense
    or when that would not be fewer than M2.

    Row k0 holds bins ``k = k0 + N0 j``, ``j = a1 + M1 a2``. The nonzero ones below the cut,
    ``k <= keep_bins - 1``, have ``j <= (keep_bins - 1) // N0``; their mirrors, ``k >= n -
    keep_bins + 1``, have ``j >= cdiv(n - keep_bins + 2 - N0, N0)`` (the largest k0 reaches
    lowest). ``M1``: the rows' factors ``M1 x n / (n0 M1)`` (default ``split(n / n0)``)."""
    M1, M2 = split(n // n0) if M1 is None else (M1, n // n0 // M1)
    if keep_bins is None or keep_bins >= n // 2 + 1:
        return M2, 0
    low = ((keep_bins - 1) // n0) // M1 + 1
    j_high = triton.cdiv(max(0, n - keep_bins + 2 - n0), n0)
    high = M2 - min(M2, j_high // M1)
    return padded_columns(low, high, M2)


def outer_spectrum_layout(
    kf: Tensor,
    n: int,
    n0: int,
    conj: bool = False,
    kernel: bool | None = None,
    keep_bins: int | None = None,
    M1: int | None = None,
) -> Tensor:
    """kf ``[H, n//2+1]`` complex (rfft order) -> ``[H, N0, 2, M1, K2]`` fp32, the spectrum
    cut into ``n0`` rows (``M1 x M2 = split(n / n0)``, or the ``M1`` given): ``[h, k0, 0|1, a1,
    a2]`` = real|imag of bin ``k0 + N0 (a1 + M1 a2)`` of the full (Hermitian) spectrum,
    conjugated when ``conj``.
    ``keep_bins``: kf's bins from there on are zero; only the columns a2 that hold the others
    are laid out (``outer_kept_columns``; all M2 = K2 when dense).

    ``kernel`` (default True, or what ``use_layout_kernel`` set): one pass of
    ``spectrum_layout_kernel`` (reads the rfft, writes the layout, tile by tile) instead of the
    torch ops (a concatenation and a permuting copy whose reads stride by ``8 N0 M1`` bytes).
    The values are the same, bit for bit. Off CUDA the kernel needs TRITON_INTERPRET=1; without
    it the torch ops run."""
    M1, M2 = split(n // n0) if M1 is None else (M1, n // n0 // M1)
    H = kf.shape[0]
    if kf.shape != (H, n // 2 + 1) or not kf.is_complex():
        raise ValueError(f"kf must be complex of shape (H, {n // 2 + 1}); got {tuple(kf.shape)}")
    kf = kf.to(torch.complex64)
    low, high = outer_kept_columns(n, n0, keep_bins, M1=M1)
    kernel = _layout_kernel if kernel is None else kernel
    if kernel and triton_unusable(kf.device.type, __name__) is None:
        return launch_layout(kf, n0, M1, M2, low, high, conj)
    if conj:
        kf = torch.conj_physical(kf)
    full = torch.view_as_real(full_spectrum(kf, n))  # [H, n, 2]
    full = full.reshape(H, M2, M1, n0, 2)  # bin k0 + N0 a1 + N0 M1 a2
    return columns_of(full.permute(0, 3, 4, 2, 1), low, high).contiguous()


def spectrum_layout3(kf: Tensor, n: int, *, kernel: bool | None = None) -> Tensor:
    """kf ``[H, n//2+1]`` complex (rfft order) -> ``[H, N1, 2, N2, N3]`` fp32, the three-stage
    kernel's order (``split3``): ``[h, k1, 0|1, k2, k3]`` = real|imag of bin ``k1 + N1 k2 +
    N1 N2 k3`` of the full spectrum (dense filters only). ``kernel``: as ``spectrum_layout``
    (``outer_spectrum_layout`` with ``N0 = N1``: its rows are ``N2 x N3 = split(n / N1)``)."""
    return outer_spectrum_layout(kf, n, split3(n)[0], kernel=kernel)


# ---------------------------------------------------------------------------------------------
# Kernel


@triton.jit
def _dot(a, b, PRECISION: tl.constexpr):
    return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def _complex_dot(a_re, a_im, b_re, b_im, PRECISION: tl.constexpr):
    """(a_re + i a_im) @ (b_re + i b_im), four real products accumulated in fp32."""
    out_re = _dot(a_re, b_re, PRECISION) - _dot(a_im, b_im, PRECISION)
    out_im = tl.dot(a_re, b_im, acc=_dot(a_im, b_re, PRECISION), input_precision=PRECISION)
    return out_re, out_im


@triton.jit
def _load_complex(ptr, offs, PLANE: tl.constexpr):
    """The real and imaginary planes of a [2, ...] table."""
    return tl.load(ptr + offs), tl.load(ptr + PLANE + offs)


@triton.jit
def _load_row(ptr, row, offs, mask):
    return tl.load(ptr + row + offs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _load_input(u_ptr, pregate_ptr, row, offs, mask, HAS_PREGATE: tl.constexpr):
    """v = u * pregate (or u) at ``row + offs``, zero where masked."""
    v = _load_row(u_ptr, row, offs, mask)
    if HAS_PREGATE:
        v *= _load_row(pregate_ptr, row, offs, mask)
    return v


@triton.jit
def _load_rfft_bins(kf_ptr, h, k, n: tl.constexpr):
    """Bins ``k`` (a tile of indices in ``[0, n)``) of channel h's full spectrum, read from its
    rfft (``kf_ptr``: ``[H, n//2 + 1, 2]`` fp32, real and imaginary interleaved); past n/2 the
    conjugate of the mirrored bin. fp32 planes, in k's layout."""
    mirrored = k > n // 2
    kf_ptr += h.to(tl.int64) * ((n // 2 + 1) * 2)  # 64-bit: the channel's start; 32-bit within
    src = tl.where(mirrored, n - k, k) * 2
    re = tl.load(kf_ptr + src)
    im = tl.load(kf_ptr + src + 1)
    return re, tl.where(mirrored, -im, im)


@triton.jit
def _load_filter(
    kf_ptr, h, kf_start, bins, offs_spec, PLANE: tl.constexpr, n: tl.constexpr, KF_RAW
):
    """Channel h's filter spectrum tile: gathered from its rfft at ``bins`` (KF_RAW) or read
    from the laid-out spectrum at ``kf_start + offs_spec``, planes ``PLANE`` apart."""
    if KF_RAW:
        k_re, k_im = _load_rfft_bins(kf_ptr, h, bins, n)
    else:
        k_re, k_im = _load_complex(kf_ptr + kf_start, offs_spec, PLANE)
    return k_re, k_im


@triton.jit
def _twiddle(a_re, a_im, w_re, w_im, CONJ: tl.constexpr):
    """``a * w`` (``a * conj(w)`` with CONJ), fp32."""
    if CONJ:
        return a_re * w_re + a_im * w_im, a_im * w_re - a_re * w_im
    return a_re * w_re - a_im * w_im, a_re * w_im + a_im * w_re


@triton.jit
def _odd_half_twiddles(offs_r, offs_n2, N1: tl.constexpr, N2: tl.constexpr):
    """The two-halves odd half's twiddle ``w_n^t`` (``n = 2 N1 N2``, ``t = N2 t1 + t2``) as a
    row factor ``w_n^(N2 t1)`` at the rows ``offs_r`` and a column factor ``w_n^t2`` at the
    columns ``offs_n2``, fp32: ``(row_re, row_im, col_re, col_im)``, 1-D (the backward's
    ``TWIST`` too)."""
    ANGLE: tl.constexpr = -6.283185307179586 / (2 * N1 * N2)
    angle_r = (offs_r * N2).to(tl.float32) * ANGLE
    angle_c = offs_n2.to(tl.float32) * ANGLE
    return tl.cos(angle_r), tl.sin(angle_r), tl.cos(angle_c), tl.sin(angle_c)


@triton.jit
def _last_inverse(g1_re, g1_im, e_re, e_im, PRECISION: tl.constexpr):
    """The last inverse stage on the output rows, complex: ``conj(F_N1)[rows] @ E`` with
    ``g1`` the table's rows (its real and imaginary planes)."""
    r_re = tl.dot(g1_re, e_re, acc=_dot(g1_im, e_im, PRECISION), input_precision=PRECISION)
    r_im = _dot(g1_re, e_im, PRECISION) - _dot(g1_im, e_re, PRECISION)
    return r_re, r_im


@triton.jit
def _spectral_product(
    xv, xw, f1_re, f1_im, tw_re, tw_im, f2_re, f2_im, g2_re, g2_im, k_re, k_im,
    PAIR: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """The two-stage kernel's step up to its last inverse stage, on the input tile x (``xv + i
    xw`` with PAIR, else the real ``xv``; operand dtype, its first ROWS rows): ``B = F_N1[:,
    :ROWS] @ x``, ``X = (B * T) @ F_N2``, ``Y = X * K``, ``E = (Y @ conj(F_N2)) * conj(T)``:
    E's planes ``[N1, N2]`` in the operand dtype (rounded to it between stages)."""
    op_dtype = xv.dtype
    if PAIR:
        b_re, b_im = _complex_dot(f1_re, f1_im, xv, xw, PRECISION)
    else:
        b_re = _dot(f1_re, xv, PRECISION)  # [N1, N2]
        b_im = _dot(f1_im, xv, PRECISION)
    c_re, c_im = _twiddle(b_re, b_im, tw_re, tw_im, False)
    c_re = c_re.to(op_dtype)
    c_im = c_im.to(op_dtype)
    # forward stage 2: X = C @ F_N2 (the kept columns of a sparse filter), times the filter
    x_re, x_im = _complex_dot(c_re, c_im, f2_re, f2_im, PRECISION)  # [N1, K2]
    s_re = (x_re * k_re - x_im * k_im).to(op_dtype)
    s_im = (x_re * k_im + x_im * k_re).to(op_dtype)
    # inverse stage 2: D = Y @ conj(F_N2), then the conjugate twiddle
    d_re, d_im = _complex_dot(s_re, s_im, g2_re, -g2_im, PRECISION)  # [N1, N2]
    e_re, e_im = _twiddle(d_re, d_im, tw_re, tw_im, True)
    return e_re.to(op_dtype), e_im.to(op_dtype)


@triton.jit
def _write_output(
    z, row, offs, mask, v, bias,
    y_ptr, z_ptr, postgate_ptr, u_ptr, pregate_ptr,
    STORE_Z: tl.constexpr, HAS_POSTGATE: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_PREGATE: tl.constexpr, RELOAD: tl.constexpr,
):  # fmt: skip
    """One sequence's output from its convolution z: z written (STORE_Z), then y = postgate * z
    + bias * v, with v the input tile held (``v``) or loaded again at ``offs`` (RELOAD)."""
    if STORE_Z:
        tl.store(z_ptr + row + offs, z.to(z_ptr.dtype.element_ty), mask=mask)
    if HAS_POSTGATE:
        z *= _load_row(postgate_ptr, row, offs, mask)
    if HAS_BIAS:
        if RELOAD:
            z += bias * _load_input(u_ptr, pregate_ptr, row, offs, mask, HAS_PREGATE)
        else:
            z += bias * v
    tl.store(y_ptr + row + offs, z.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["N0"])
def spectrum_layout_kernel(
    kf_ptr,  # [H, n//2 + 1, 2] fp32: the rfft, real and imaginary parts interleaved
    out_ptr,  # [H, N0, 2, M1, LOW + HIGH] fp32
    N0,
    M1: tl.constexpr,
    M2: tl.constexpr,
    LOW: tl.constexpr,  # the kept columns: a2 < LOW ...
    HIGH: tl.constexpr,  # ... and a2 >= M2 - HIGH (LOW = M2, HIGH = 0: all of them)
    BJ: tl.constexpr,  # values of j = a1 N0 + k0 per program
    BA: tl.constexpr,  # values of a2 per program
    CONJ: tl.constexpr,
):
    """``out[h, k0, :, a1, c]`` = bin ``k = k0 + N0 (a1 + M1 a2)`` of the full spectrum (its
    conjugate when CONJ), read from the rfft (``conj(kf[n - k])`` past n/2), for the kept
    columns ``a2`` (``c = a2`` below LOW, ``a2 - (M2 - LOW - HIGH)`` in the top HIGH): a tiled
    transpose of ``[M2, N0 M1]`` (bins) into ``[N0 M1, M2]``. The tile is read as
    ``[BJ, BA, 2]``: the (re, im) pairs of consecutive bins along the fastest axes (Triton's
    layout for it puts the threads of a warp along j: coalesced), and written along a2 (Triton
    converts the layout in between, through shared memory). The short path's layout is
    ``N0 = 1``, ``M1 x M2 = N1 x N2``; the long path's keeps every column."""
    # one grid axis (H can pass the 65535 of CUDA's other axes): a-blocks fastest, then j, h
    NA: tl.constexpr = M2 // BA
    pid = tl.program_id(0)
    pid_a = pid % NA
    pid_j = (pid // NA) % tl.cdiv(N0 * M1, BJ)
    pid_h = (pid // NA // tl.cdiv(N0 * M1, BJ)).to(tl.int64)
    N = N0 * M1 * M2
    HALF = N // 2
    K2: tl.constexpr = LOW + HIGH
    offs_j = pid_j * BJ + tl.arange(0, BJ)
    offs_a = pid_a * BA + tl.arange(0, BA)
    kept = (offs_a < LOW) | (offs_a >= M2 - HIGH)
    col = tl.where(offs_a < LOW, offs_a, offs_a - (M2 - K2))
    k = offs_j[:, None] + offs_a[None, :] * (N0 * M1)  # [BJ, BA]
    mask = (offs_j[:, None] < N0 * M1) & (offs_a[None, :] < M2) & kept[None, :]
    mirrored = k > HALF
    src = tl.where(mirrored, N - k, k).to(tl.int64) * 2 + pid_h * (HALF + 1) * 2
    pair = tl.load(
        kf_ptr + src[:, :, None] + tl.arange(0, 2)[None, None, :], mask=mask[:, :, None]
    )  # [BJ, BA, 2]
    re, im = tl.split(pair)
    if CONJ:
        im = tl.where(mirrored, im, -im)
    else:
        im = tl.where(mirrored, -im, im)
    k0 = offs_j % N0
    a1 = offs_j // N0
    dst = ((pid_h * N0 + k0[:, None]) * 2) * (M1 * K2) + a1[:, None] * K2 + col[None, :]
    tl.store(out_ptr + dst, re, mask=mask)
    tl.store(out_ptr + dst + M1 * K2, im, mask=mask)


# B and H only index programs and rows: no recompilation per batch size or width
@triton.jit(do_not_specialize=["B", "H"])
def _fftconv_fwd_kernel(
    u_ptr,  # [B, H, L]
    pregate_ptr,  # [B, H, L] (unused unless HAS_PREGATE)
    postgate_ptr,  # [B, H, L] (unused unless HAS_POSTGATE)
    bias_ptr,  # [H] (unused unless HAS_BIAS)
    kf_ptr,  # [H, 2, N1, K2] fp32, the filter spectrum in the kernel's order (kept columns)
    dft1_ptr,  # [2, N1, N1] operand dtype
    dft2_ptr,  # [2, N2, K2] operand dtype: the columns of F_N2 that meet nonzero filter bins
    twiddle_ptr,  # [2, N1, N2] fp32
    y_ptr,  # [B, H, L]
    z_ptr,  # [B, H, L]: the convolution before the postgate and bias (unused unless STORE_Z)
    B,
    H,
    L,
    N1: tl.constexpr,
    N2: tl.constexpr,
    K2: tl.constexpr,
    ROWS: tl.constexpr,
    PAIR: tl.constexpr,
    STEPS: tl.constexpr,
    STAGES: tl.constexpr,
    HAS_PREGATE: tl.constexpr,
    HAS_POSTGATE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCKED: tl.constexpr,
    SKIP_INPUT: tl.constexpr = 0,
    STORE_Z: tl.constexpr = False,
    KF_RAW: tl.constexpr = False,
    K_LOW: tl.constexpr = 0,
    HOLD_FILTER: tl.constexpr = True,
    HALVES: tl.constexpr = 1,
    HALF: tl.constexpr = 2,
):
    # PAIR: sequences q (v) and q+1 (w) of one channel as the real and imaginary parts of one
    # complex signal; otherwise one real sequence per step. STEPS: consecutive steps (sequences
    # or pairs of one channel) per program, the tables and the filter loaded once for all.
    # A channel's sequences: its B rows, or with BLOCKED its B * NB blocks of S = n/2 outputs,
    # q = b * NB + j (block j of row b; a pair may span two rows).
    # SKIP_INPUT (dense plans with a bias): where the skip term bias * v takes v from: 0 the
    # fp32 input tile held from its load to the output (two [ROWS, N2] fp32 tiles live across
    # every product of a pair), 1 loaded again at the output (as BLOCKED does).
    # STORE_Z: z (the convolution before the postgate and the skip term) written too, for a
    # backward that wants the postgate's gradient dy * z without transforming v again.
    # KF_RAW: kf_ptr is the filter's rfft ([H, n//2+1] complex as fp32 pairs), its bins
    # gathered into the kernel's order here (no layout pass); the kept columns are the first
    # K_LOW and the last K2 - K_LOW of N2. HOLD_FILTER: the filter spectrum held in registers
    # across the steps, else loaded per step (from L2, the channel's: its previous step read it).
    # HALVES == 2: the plan's FFT size is n = 2 N1 N2 and u, y fit the tile's N1 N2 samples; the
    # size-n convolution is the sum of two size-N1 N2 ones, on the spectrum's even bins (the
    # tables above) and on its odd bins (the input twiddled by w_n^t, folded into the odd
    # half's tables; the output twiddled back), both halves' last stages summed in one product
    # (module docstring, "Two halves"). kf_ptr then holds both halves' spectra, even first.
    # HALF (with HALVES == 2): 2 both halves in this program; 0 the even half alone, its z
    # written raw to y (no postgate or bias: the launcher passes none); 1 the odd half, which
    # reads the even half's z back from y and ends with the epilogue on the halved sum.
    SEQS: tl.constexpr = 2 if PAIR else 1
    S: tl.constexpr = N1 * N2 // 2
    pid = tl.program_id(0)
    if BLOCKED:
        NB = tl.cdiv(L, S)
        per_channel = B * NB
    else:
        per_channel = B
    programs_per_channel = tl.cdiv(per_channel, SEQS * STEPS)
    pid_h = pid // programs_per_channel
    first_q = (pid - pid_h * programs_per_channel) * (SEQS * STEPS)
    op_dtype = dft1_ptr.dtype.element_ty

    kf_start = pid_h.to(tl.int64) * (HALVES * 2 * N1 * K2)
    ODD_ONLY: tl.constexpr = HALVES == 2 and HALF == 1
    if ODD_ONLY:  # the filter this program holds or loads is the odd half's
        kf_start += 2 * N1 * K2
    offs_r = tl.arange(0, ROWS)  # t1 of the rows that hold u and y (BLOCKED: u, all N1)
    offs_n1 = tl.arange(0, N1)
    offs_n2 = tl.arange(0, N2)
    offs_t = offs_r[:, None] * N2 + offs_n2[None, :]  # [ROWS, N2] time index
    offs_tile = offs_n1[:, None] * N2 + offs_n2[None, :]  # [N1, N2]
    offs_f1 = offs_n1[:, None] * N1 + offs_r[None, :]  # [N1, ROWS]
    if BLOCKED:  # y: the window's second half, rows [N1/2, N1)
        offs_o = tl.arange(0, N1 // 2)
        offs_out = offs_o[:, None] * N2 + offs_n2[None, :]  # [N1/2, N2] position - j*S
        offs_g1 = (offs_o[:, None] + N1 // 2) * N1 + offs_n1[None, :]  # [N1/2, N1]
    else:
        offs_g1 = offs_r[:, None] * N1 + offs_n1[None, :]  # [ROWS, N1]
    offs_k2 = tl.arange(0, K2)  # the kept frequency columns k2 (all N2 for a dense filter)
    offs_f2 = offs_n2[:, None] * K2 + offs_k2[None, :]  # [N2, K2]
    offs_spec = offs_n1[:, None] * K2 + offs_k2[None, :]  # [N1, K2]

    # per channel, loaded once: DFT matrices, twiddles, the filter in the permuted order
    f1_re, f1_im = _load_complex(dft1_ptr, offs_f1, N1 * N1)  # [N1, ROWS]
    tw_re, tw_im = _load_complex(twiddle_ptr, offs_tile, N1 * N2)  # [N1, N2]
    f2_re, f2_im = _load_complex(dft2_ptr, offs_f2, N2 * K2)  # [N2, K2]
    if K2 < N2:  # frequency-sparse: the inverse stage sums over the kept columns only
        offs_g2 = offs_k2[:, None] + offs_n2[None, :] * K2  # [K2, N2]: F_N2 is symmetric
        g2_re, g2_im = _load_complex(dft2_ptr, offs_g2, N2 * K2)
    else:
        g2_re, g2_im = f2_re, f2_im
    cols = tl.where(offs_k2 < K_LOW, offs_k2, offs_k2 + (N2 - K2))  # k2 of kept column c
    # (KF_RAW) the rfft bins of the tile [N1, K2]: k1 + N1 k2, or with HALVES 2 (k1 + N1 k2)
    # (the even half) and 2 (k1 + N1 k2) + 1 (the odd half) of a size-2 N1 N2 spectrum
    bins = (offs_n1[:, None] + N1 * cols[None, :]) * HALVES
    if ODD_ONLY:
        bins += 1
    if HOLD_FILTER:
        k_re, k_im = _load_filter(
            kf_ptr, pid_h, kf_start, bins, offs_spec, N1 * K2, HALVES * N1 * N2, KF_RAW
        )
    g1_re, g1_im = _load_complex(dft1_ptr, offs_g1, N1 * N1)  # [ROWS, N1] (BLOCKED: N1/2)
    if HALVES == 2:
        # the odd half's twiddle w_n^t (n = 2 N1 N2) as w_n^(N2 t1) per row times w_n^t2 per
        # column, fp32
        rw_re, rw_im, cw_re, cw_im = _odd_half_twiddles(offs_r, offs_n2, N1, N2)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + pid_h).to(tl.float32)
    else:
        bias = 0.0

    for step in tl.range(0, STEPS, num_stages=STAGES):
        # the last program of a channel may run past its sequences: those steps are masked out
        q = first_q + step * SEQS
        if BLOCKED:
            # block j of row b: the window (j - 1) S + t, t in [0, 2S), reads the block before
            # and this one (positions outside [0, L) read as zero); y is its second half
            b_v = q // NB
            b_w = (q + 1) // NB
            start_v = (q - b_v * NB) * S
            start_w = (q + 1 - b_w * NB) * S
            # 64-bit: B*H*L may pass 2^31
            row_v = (b_v.to(tl.int64) * H + pid_h) * L
            row_w = (b_w.to(tl.int64) * H + pid_h) * L
            in_v = start_v - S + offs_t  # [N1, N2]
            in_w = start_w - S + offs_t
            mask_v = (in_v >= 0) & (in_v < L) & (q < per_channel)
            mask_w = (in_w >= 0) & (in_w < L) & (q + 1 < per_channel)
            out_v = start_v + offs_out  # [N1/2, N2]
            out_w = start_w + offs_out
            mask_out_v = (out_v < L) & (q < per_channel)
            mask_out_w = (out_w < L) & (q + 1 < per_channel)
        else:
            # 64-bit: B*H*L may pass 2^31
            row_v = (q.to(tl.int64) * H + pid_h) * L
            row_w = row_v + H.to(tl.int64) * L
            in_v = offs_t
            in_w = offs_t
            mask_v = (offs_t < L) & (q < B)
            mask_w = (offs_t < L) & (q + 1 < B)
            out_v = offs_t
            out_w = offs_t
            mask_out_v = mask_v
            mask_out_w = mask_w

        # the input, zero-padded by the mask alone (no padded copy)
        v = _load_input(u_ptr, pregate_ptr, row_v, in_v, mask_v, HAS_PREGATE)  # [ROWS, N2]
        if PAIR:
            w = _load_input(u_ptr, pregate_ptr, row_w, in_w, mask_w, HAS_PREGATE)

        # the spectrum of the input tile, times the filter, transformed back up to the last
        # stage (E, [N1, N2] in the operand dtype): first stage with its zero rows skipped
        xv = v.to(op_dtype)
        if PAIR:
            xw = w.to(op_dtype)
        else:
            xw = xv
        if HALVES == 2 and HALF != 0:
            # the odd half's input: x twiddled by w_n^t, rounded to the operand dtype
            # (by the row's factor, then the column's: no [ROWS, N2] twiddle tile to hold)
            if PAIR:
                xo_re, xo_im = _twiddle(v, w, rw_re[:, None], rw_im[:, None], False)
            else:
                xo_re = v * rw_re[:, None]
                xo_im = v * rw_im[:, None]
            if ODD_ONLY:
                # the column factor w_n^t2 folded into the tile's twiddle (it commutes with the
                # first stage and with the last inverse one): fewer spills in this launch
                two_re, two_im = _twiddle(tw_re, tw_im, cw_re[None, :], cw_im[None, :], False)
            else:
                xo_re, xo_im = _twiddle(xo_re, xo_im, cw_re[None, :], cw_im[None, :], False)
            xo_re = xo_re.to(op_dtype)
            xo_im = xo_im.to(op_dtype)
        if not HOLD_FILTER:
            k_re, k_im = _load_filter(
                kf_ptr, pid_h, kf_start, bins, offs_spec, N1 * K2, HALVES * N1 * N2, KF_RAW
            )
        P: tl.constexpr = PRECISION
        if ODD_ONLY:
            # the odd half alone: its z as below, plus the even half's, which the launch before
            # wrote to y (read back by the same positions before they are written again)
            eo_re, eo_im = _spectral_product(
                xo_re, xo_im, f1_re, f1_im, two_re, two_im, f2_re, f2_im, g2_re, g2_im,
                k_re, k_im, True, PRECISION,
            )  # fmt: skip
            r_re, r_im = _last_inverse(g1_re, g1_im, eo_re, eo_im, P)
            r_re, r_im = _twiddle(r_re, r_im, rw_re[:, None], rw_im[:, None], True)
            z_v = (r_re + _load_row(y_ptr, row_v, out_v, mask_out_v)) * 0.5
            if PAIR:
                z_w = (r_im + _load_row(y_ptr, row_w, out_w, mask_out_w)) * 0.5
        else:
            e_re, e_im = _spectral_product(
                xv, xw, f1_re, f1_im, tw_re, tw_im, f2_re, f2_im, g2_re, g2_im, k_re, k_im,
                PAIR, PRECISION,
            )  # fmt: skip

        # inverse stage 1, only the output rows: z = conj(F_N1)[:ROWS] @ E (y_w: its imag part;
        # BLOCKED: conj(F_N1)[N1/2:] @ E)
        if ODD_ONLY:
            pass
        elif HALVES == 2 and HALF == 2:
            # the odd bins: the twiddled input through the same steps with the odd bins'
            # spectrum, r = conj(F_N1)[:ROWS] @ E' (complex), twiddled back by w_n^-t; then the
            # even half's last stage on top: z = (conj(F_N1) @ E + r w_n^-t) / 2
            ko_re, ko_im = _load_filter(
                kf_ptr, pid_h, kf_start + 2 * N1 * K2, bins + 1, offs_spec, N1 * K2,
                2 * N1 * N2, KF_RAW,
            )  # fmt: skip
            eo_re, eo_im = _spectral_product(
                xo_re, xo_im, f1_re, f1_im, tw_re, tw_im,
                f2_re, f2_im, g2_re, g2_im, ko_re, ko_im, True, PRECISION,
            )  # fmt: skip
            r_re, r_im = _last_inverse(g1_re, g1_im, eo_re, eo_im, P)
            r_re, r_im = _twiddle(r_re, r_im, cw_re[None, :], cw_im[None, :], True)
            r_re, r_im = _twiddle(r_re, r_im, rw_re[:, None], rw_im[:, None], True)
            zo_v = r_re
            z_v = tl.dot(g1_im, e_im, acc=zo_v, input_precision=P)
            z_v = tl.dot(g1_re, e_re, acc=z_v, input_precision=P)
            z_v *= 0.5
            if PAIR:
                zo_w = r_im
                z_w = tl.dot(g1_re, e_im, acc=zo_w, input_precision=P) - _dot(g1_im, e_re, P)
                z_w *= 0.5
        else:
            z_v = tl.dot(g1_re, e_re, acc=_dot(g1_im, e_im, PRECISION), input_precision=PRECISION)
            if PAIR:
                # written out, not as _complex_dot(g1_re, -g1_im, ...): that form made the
                # negated table a register operand of the matrix product, and the fp16/bf16
                # kernel at n = 2048 with ROWS = 64 returned wrong results on sm_90 under
                # Triton 3.6 (relative error 0.6-0.7; fp32 and the interpreter right); this
                # form passes (benchmarks/NOTES.md, v3)
                z_w = _dot(g1_re, e_im, PRECISION) - _dot(g1_im, e_re, PRECISION)  # [ROWS, N2]

        # the skip term's v at the output positions loaded again (this step just read them;
        # BLOCKED: the window tile's second half, and a register tile has no slices)
        _write_output(
            z_v, row_v, out_v, mask_out_v, v, bias,
            y_ptr, z_ptr, postgate_ptr, u_ptr, pregate_ptr,
            STORE_Z, HAS_POSTGATE, HAS_BIAS, HAS_PREGATE, BLOCKED or SKIP_INPUT == 1,
        )  # fmt: skip
        if PAIR:
            _write_output(
                z_w, row_w, out_w, mask_out_w, w, bias,
                y_ptr, z_ptr, postgate_ptr, u_ptr, pregate_ptr,
                STORE_Z, HAS_POSTGATE, HAS_BIAS, HAS_PREGATE, BLOCKED or SKIP_INPUT == 1,
            )  # fmt: skip


@triton.jit(do_not_specialize=["B", "H"])
def _fftconv_fwd3_kernel(
    u_ptr,  # [B, H, L]
    pregate_ptr,  # [B, H, L] (unused unless HAS_PREGATE)
    postgate_ptr,  # [B, H, L] (unused unless HAS_POSTGATE)
    bias_ptr,  # [H] (unused unless HAS_BIAS)
    kf_ptr,  # [H, N1, 2, N2, N3] fp32: bin k1 + N1 k2 + N1 N2 k3 at [h, k1, plane, k2, k3]
    f1_ptr,  # [2, N1, N1] operand dtype: F_N1
    f2_ptr,  # [2, N2, N2]
    f3_ptr,  # [2, N3, N3]
    tw1_ptr,  # [2, N1, N2] fp32: w_(N1 N2)^(k1 t2)
    tw2a_ptr,  # [2, N1, N3] fp32: w_n^(k1 t3)
    tw2b_ptr,  # [2, N2, N3] fp32: w_(N2 N3)^(k2 t3); tw2a * tw2b = w_n^(t3 (k1 + N1 k2))
    y_ptr,  # [B, H, L]
    z_ptr,  # [B, H, L] (unused unless STORE_Z)
    B,
    H,
    L,
    N1: tl.constexpr,
    N2: tl.constexpr,
    N3: tl.constexpr,
    ROWS: tl.constexpr,
    PAIR: tl.constexpr,
    STEPS: tl.constexpr,
    STAGES: tl.constexpr,
    HAS_PREGATE: tl.constexpr,
    HAS_POSTGATE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    PRECISION: tl.constexpr,
    SKIP_INPUT: tl.constexpr = 0,
    STORE_Z: tl.constexpr = False,
    HOLD_FILTER: tl.constexpr = True,
    KF_RAW: tl.constexpr = False,
):
    # The dense forward of ``_fftconv_fwd_kernel`` with the transform in three Monarch stages,
    # n = N1 N2 N3, t = t1 N2 N3 + t2 N3 + t3, k = k1 + N1 k2 + N1 N2 k3 (module docstring,
    # "Three stages"). The tile is [t1, (t2, t3)]; the middle and last stages are reached by
    # permuting the register tile ([k1, t2, t3] -> [k1, t3, t2] -> [k1, k2, t3]), and the
    # spectrum lives as [(k1, k2), k3]. Pairs, steps, gates, skip term and z as there.
    # HOLD_FILTER: the filter spectrum held in registers across the steps (as there), else
    # loaded per step (from L2: the program's channel, read by its previous step). KF_RAW: the
    # filter given as its rfft, gathered here (as the two-stage kernel's KF_RAW).
    SEQS: tl.constexpr = 2 if PAIR else 1
    M: tl.constexpr = N2 * N3  # the tile's columns
    pid = tl.program_id(0)
    programs_per_channel = tl.cdiv(B, SEQS * STEPS)
    pid_h = pid // programs_per_channel
    first_q = (pid - pid_h * programs_per_channel) * (SEQS * STEPS)
    op_dtype = f1_ptr.dtype.element_ty

    offs_r = tl.arange(0, ROWS)
    i1 = tl.arange(0, N1)
    i2 = tl.arange(0, N2)
    i3 = tl.arange(0, N3)
    offs_t = offs_r[:, None] * M + tl.arange(0, M)[None, :]  # [ROWS, M] time index

    # per channel, loaded once: the DFT matrices, the twiddles, the filter
    f1_re, f1_im = _load_complex(f1_ptr, i1[:, None] * N1 + offs_r[None, :], N1 * N1)  # [N1, R]
    g1_re, g1_im = _load_complex(f1_ptr, offs_r[:, None] * N1 + i1[None, :], N1 * N1)  # [R, N1]
    f2_re, f2_im = _load_complex(f2_ptr, i2[:, None] * N2 + i2[None, :], N2 * N2)
    f3_re, f3_im = _load_complex(f3_ptr, i3[:, None] * N3 + i3[None, :], N3 * N3)
    tw1_re, tw1_im = _load_complex(
        tw1_ptr, i1[:, None, None] * N2 + i2[None, :, None], N1 * N2
    )  # [N1, N2, 1]
    tw1_inv_re, tw1_inv_im = _load_complex(
        tw1_ptr, i1[:, None, None] * N2 + i2[None, None, :], N1 * N2
    )  # [N1, 1, N2]
    # the second twiddle in the forward's [k1, t3, k2] order and the inverse's [k1, k2, t3]
    a_fwd_re, a_fwd_im = _load_complex(
        tw2a_ptr, i1[:, None, None] * N3 + i3[None, :, None], N1 * N3
    )  # [N1, N3, 1]
    b_fwd_re, b_fwd_im = _load_complex(
        tw2b_ptr, i2[None, None, :] * N3 + i3[None, :, None], N2 * N3
    )  # [1, N3, N2]
    a_inv_re, a_inv_im = _load_complex(
        tw2a_ptr, i1[:, None, None] * N3 + i3[None, None, :], N1 * N3
    )  # [N1, 1, N3]
    b_inv_re, b_inv_im = _load_complex(
        tw2b_ptr, i2[None, :, None] * N3 + i3[None, None, :], N2 * N3
    )  # [1, N2, N3]
    spec_rows = tl.arange(0, N1 * N2)  # k1 N2 + k2
    offs_spec = (spec_rows // N2)[:, None] * (2 * M) + (spec_rows % N2)[:, None] * N3 + i3[None, :]
    kf_start = pid_h.to(tl.int64) * (2 * N1 * M)
    # bin k1 + N1 k2 + N1 N2 k3 at [k1 N2 + k2, k3]
    bins = (spec_rows // N2 + N1 * (spec_rows % N2))[:, None] + (N1 * N2) * i3[None, :]
    if HOLD_FILTER:  # [N1 N2, N3]
        k_re, k_im = _load_filter(kf_ptr, pid_h, kf_start, bins, offs_spec, M, N1 * M, KF_RAW)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + pid_h).to(tl.float32)
    else:
        bias = 0.0

    for step in tl.range(0, STEPS, num_stages=STAGES):
        q = first_q + step * SEQS
        row_v = (q.to(tl.int64) * H + pid_h) * L  # 64-bit: B*H*L may pass 2^31
        row_w = row_v + H.to(tl.int64) * L
        mask_v = (offs_t < L) & (q < B)
        mask_w = (offs_t < L) & (q + 1 < B)
        v = _load_input(u_ptr, pregate_ptr, row_v, offs_t, mask_v, HAS_PREGATE)  # [ROWS, M]
        if PAIR:
            w = _load_input(u_ptr, pregate_ptr, row_w, offs_t, mask_w, HAS_PREGATE)

        # stage 1, zero rows skipped: [k1, (t2, t3)] = F_N1[:, :ROWS] @ x[:ROWS]
        if PAIR:
            a_re, a_im = _complex_dot(f1_re, f1_im, v.to(op_dtype), w.to(op_dtype), PRECISION)
        else:
            a_re = _dot(f1_re, v.to(op_dtype), PRECISION)
            a_im = _dot(f1_im, v.to(op_dtype), PRECISION)
        # twiddle [k1, t2], then [k1, t2, t3] -> [(k1, t3), t2] for stage 2
        a_re, a_im = _twiddle(
            tl.reshape(a_re, (N1, N2, N3)), tl.reshape(a_im, (N1, N2, N3)), tw1_re, tw1_im, False
        )
        b_re = tl.reshape(tl.permute(a_re.to(op_dtype), (0, 2, 1)), (N1 * N3, N2))
        b_im = tl.reshape(tl.permute(a_im.to(op_dtype), (0, 2, 1)), (N1 * N3, N2))
        c_re, c_im = _complex_dot(b_re, b_im, f2_re, f2_im, PRECISION)  # [(k1, t3), k2]
        # twiddle [k1, t3, k2], then -> [(k1, k2), t3] for stage 3
        c_re, c_im = _twiddle(
            tl.reshape(c_re, (N1, N3, N2)), tl.reshape(c_im, (N1, N3, N2)),
            a_fwd_re, a_fwd_im, False,
        )  # fmt: skip
        c_re, c_im = _twiddle(c_re, c_im, b_fwd_re, b_fwd_im, False)
        d_re = tl.reshape(tl.permute(c_re.to(op_dtype), (0, 2, 1)), (N1 * N2, N3))
        d_im = tl.reshape(tl.permute(c_im.to(op_dtype), (0, 2, 1)), (N1 * N2, N3))
        x_re, x_im = _complex_dot(d_re, d_im, f3_re, f3_im, PRECISION)  # [(k1, k2), k3]

        # the filter, in the same order
        if not HOLD_FILTER:
            k_re, k_im = _load_filter(kf_ptr, pid_h, kf_start, bins, offs_spec, M, N1 * M, KF_RAW)
        s_re = (x_re * k_re - x_im * k_im).to(op_dtype)
        s_im = (x_re * k_im + x_im * k_re).to(op_dtype)

        # inverse stage 3: [(k1, k2), t3] = S @ conj(F_N3), then the conjugate twiddle
        e_re = tl.dot(s_re, f3_re, acc=_dot(s_im, f3_im, PRECISION), input_precision=PRECISION)
        e_im = _dot(s_im, f3_re, PRECISION) - _dot(s_re, f3_im, PRECISION)
        e_re, e_im = _twiddle(
            tl.reshape(e_re, (N1, N2, N3)), tl.reshape(e_im, (N1, N2, N3)),
            a_inv_re, a_inv_im, True,
        )  # fmt: skip
        e_re, e_im = _twiddle(e_re, e_im, b_inv_re, b_inv_im, True)
        # [k1, k2, t3] -> [(k1, t3), k2]; inverse stage 2 -> [(k1, t3), t2]
        g_re = tl.reshape(tl.permute(e_re.to(op_dtype), (0, 2, 1)), (N1 * N3, N2))
        g_im = tl.reshape(tl.permute(e_im.to(op_dtype), (0, 2, 1)), (N1 * N3, N2))
        h_re = tl.dot(g_re, f2_re, acc=_dot(g_im, f2_im, PRECISION), input_precision=PRECISION)
        h_im = _dot(g_im, f2_re, PRECISION) - _dot(g_re, f2_im, PRECISION)
        # conjugate twiddle [k1, t2] over t3, then [k1, t3, t2] -> [k1, (t2, t3)]
        h_re, h_im = _twiddle(
            tl.reshape(h_re, (N1, N3, N2)), tl.reshape(h_im, (N1, N3, N2)),
            tw1_inv_re, tw1_inv_im, True,
        )  # fmt: skip
        o_re = tl.reshape(tl.permute(h_re.to(op_dtype), (0, 2, 1)), (N1, M))
        o_im = tl.reshape(tl.permute(h_im.to(op_dtype), (0, 2, 1)), (N1, M))

        # inverse stage 1, the output rows only: z = conj(F_N1)[:ROWS] @ O (w: the imaginary
        # part), written out as the two-stage kernel does (its NOTES v3 miscompile)
        z_v = tl.dot(g1_re, o_re, acc=_dot(g1_im, o_im, PRECISION), input_precision=PRECISION)
        if PAIR:
            z_w = _dot(g1_re, o_im, PRECISION) - _dot(g1_im, o_re, PRECISION)

        _write_output(
            z_v, row_v, offs_t, mask_v, v, bias,
            y_ptr, z_ptr, postgate_ptr, u_ptr, pregate_ptr,
            STORE_Z, HAS_POSTGATE, HAS_BIAS, HAS_PREGATE, SKIP_INPUT == 1,
        )  # fmt: skip
        if PAIR:
            _write_output(
                z_w, row_w, offs_t, mask_w, w, bias,
                y_ptr, z_ptr, postgate_ptr, u_ptr, pregate_ptr,
                STORE_Z, HAS_POSTGATE, HAS_BIAS, HAS_PREGATE, SKIP_INPUT == 1,
            )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Host launcher


def dot_precision(u: Tensor) -> str:
    """fp32 inputs: three tf32 products per dot (near-fp32 accuracy on the tensor cores; ieee
    fp32 dots run on the FMA units and spill at n >= 4096); ignored for fp16/bf16 operands."""
    if u.dtype != torch.float32:
        return "tf32"
    return "tf32x3" if u.is_cuda else "ieee"


def num_warps_for(n: int, dtype: torch.dtype | None = None, blocked: bool = False) -> int:
    """Measured on the H200 (benchmarks/NOTES.md): 2 warps for the small tiles, 8 where 4
    spill (n = 8192). Dense fp16/bf16 plans of ``TWO_WARPS_AT`` (``dtype`` given, not
    ``blocked``) run on 2 warps too (v12, v13)."""
    if n <= 512:
        return 2
    if dtype in (torch.float16, torch.bfloat16) and not blocked and n in TWO_WARPS_AT:
        return 2
    return 8 if n >= 8192 else 4


def skip_input_for(n: int, dtype: torch.dtype, blocked: bool = False) -> str:
    """Where a dense plan's skip term takes v from by default (``launch``'s ``skip_input``):
    loaded again for fp16/bf16 at the sizes of ``RELOAD_SKIP_AT``, where holding the input
    tile across the products spills (v13), else held. (A blocked plan's kernel loads it again
    whatever this says: its skip term is on the output block, not the transformed window.)"""
    half = dtype in (torch.float16, torch.bfloat16)
    return "reload" if half and not blocked and n in RELOAD_SKIP_AT else "held"


def transform_for(
    n: int,
    dtype: torch.dtype,
    blocked: bool = False,
    keep_bins: int | None = None,
    gates: tuple[bool, ...] = (False, False),
) -> str:
    """A plan's default transform (``launch``'s ``transform``): three stages for a dense
    fp16/bf16 plan with a dense spectrum and a pregate (``gates``: whether there is a pregate,
    a postgate[, a bias]) at the sizes of ``THREE_STAGE_GATED_AT``, else two."""
    half = dtype in (torch.float16, torch.bfloat16)
    gated = bool(gates[0])
    dense = _dense_plan(n, blocked, keep_bins)
    return "three" if half and dense and gated and n in THREE_STAGE_GATED_AT else "two"


def _dense_plan(n: int, blocked: bool, keep_bins: int | None) -> bool:
    """Whether a plan is dense with a dense spectrum (what three stages take)."""
    return not blocked and kept_columns(n, keep_bins) == (split(n)[1], 0)


def _check_transform(transform: str, n: int, blocked: bool, keep_bins: int | None) -> None:
    if transform not in TRANSFORMS:
        raise ValueError(f"transform must be one of {TRANSFORMS}; got {transform!r}")
    if transform == "three":
        if n not in THREE_STAGE_SIZES:
            raise ValueError(f"transform='three' runs at n in {THREE_STAGE_SIZES}; got n={n}")
        if not _dense_plan(n, blocked, keep_bins):
            raise ValueError(
                "transform='three' takes dense plans with a dense spectrum; got "
                f"blocked={blocked}, keep_bins={keep_bins}"
            )


def default_stages(n: int, dtype: torch.dtype, blocked: bool = False) -> int:
    """Software-pipelining depth of the step loop, measured on the H200 (benchmarks/NOTES.md,
    v6): fp16/bf16 3 up to n = 2048, then 2; fp32 1 (its tables leave no shared memory for a
    second stage); blocked at n = 8192 1 (the window's full-height input tiles: a second stage
    of a gated pair asked for 268 KB of shared memory, > 227 KB on an H200, with 8 steps)."""
    if dtype == torch.float32 or (blocked and n >= 8192):
        return 1
    return 3 if n <= 2048 else 2


def steps_for(
    n: int,
    H: int,
    per_channel: int,
    device: torch.device | None,
    blocked: bool = False,
    sms: int | None = None,
) -> int:
    """Steps per program: as many as keep at least ``PROGRAMS_PER_SM`` programs per SM (the
    tables and filter are then loaded once for several sequences), at most ``MAX_STEPS`` (for
    a dense plan at a size of ``MAX_STEPS_AT`` or ``PROGRAMS_PER_SM_AT``, those values).
    ``sms``: the SM count to plan for instead of ``device``'s (a compile without a GPU)."""
    if sms is None:
        if device is None or device.type != "cuda":
            return 1
        sms = sm_count(device)
    per_sm = PROGRAMS_PER_SM if blocked else PROGRAMS_PER_SM_AT.get(n, PROGRAMS_PER_SM)
    target = per_sm * sms
    most = MAX_STEPS if blocked else MAX_STEPS_AT.get(n, MAX_STEPS)
    steps = 1
    while steps < most and H * triton.cdiv(per_channel, 2 * steps) >= target:
        steps *= 2
    return steps


def fftconv_fwd(
    u: Tensor,
    kf: Tensor,
    pregate: Tensor | None,
    postgate: Tensor | None,
    bias: Tensor | None,
    n: int,
    keep_bins: int | None = None,
    blocked: bool = False,
    filter_layout: str | None = None,
    halves: bool | None = None,
    **launch_options,
) -> Tensor:
    """``y = postgate * irfft(rfft(u * pregate, n) * kf, n)[:L] + bias * (u * pregate)``.

    u, gates: ``[B, H, L]`` with ``L <= n``; kf: ``[H, n//2+1]`` complex64 (rfft order); bias
    ``[H]``. ``keep_bins``: kf's bins from there on are zero (a frequency-sparse filter): the
    kernel then skips the frequency columns that hold only zeros. ``blocked``: the causal
    convolution in blocks of ``S = n/2`` outputs, any L >= 1; kf must be the size-n rfft of a
    filter of at most S taps (the result is otherwise wrong, unchecked) and ``n >=
    MIN_BLOCKED_FFT``, no ``keep_bins`` cut-off. Returns y ``[B, H, L]`` in u's dtype.
    ``filter_layout``: ``"pass"`` lays kf out in the kernel's order first (``spectrum_layout``:
    a read of the rfft and a write of the layout, which the kernel reads), ``"kernel"`` hands
    the rfft to the kernel, which gathers the bins it needs (no pass, no layout tensor);
    default "kernel" at the sizes of ``FILTER_IN_KERNEL_AT`` for the two-stage transform, else
    "pass". ``halves``: the two-halves kernel (``launch``; the default past ``MAX_FFT``, where
    nothing else runs here).
    ``launch_options``: those of ``launch``.
    """
    H = u.shape[1]
    if kf.shape != (H, n // 2 + 1) or kf.dtype != torch.complex64:
        raise ValueError(
            f"kf must be complex64 of shape ({H}, {n // 2 + 1}); got {kf.dtype} {tuple(kf.shape)}"
        )
    if blocked:  # before the layout: a cut-off would be taken for kept columns
        _check_blocked(u, n, keep_bins)
    halves = n > MAX_FFT if halves is None else bool(halves)
    if halves:
        _check_halves(u, n, blocked)
    transform = launch_options.get("transform")
    if transform is None:
        gates = (pregate is not None, postgate is not None)
        transform = transform_for(n, u.dtype, blocked, keep_bins, gates)
        launch_options["transform"] = transform
    _check_transform(transform, n, blocked, keep_bins)
    if filter_layout is None:
        gathered = n in FILTER_IN_KERNEL_AT and transform == "two" and not halves
        filter_layout = _filter_layout or ("kernel" if gathered else "pass")
    if filter_layout not in FILTER_LAYOUTS:
        raise ValueError(f"filter_layout must be one of {FILTER_LAYOUTS}; got {filter_layout!r}")
    if filter_layout == "kernel":
        spectrum = kf  # the rfft itself: the kernel gathers its bins
    elif halves:
        spectrum = outer_spectrum_layout(kf, n, 2, keep_bins=keep_bins)
    elif transform == "three":
        spectrum = spectrum_layout3(kf, n)
    else:
        spectrum = spectrum_layout(kf, n, keep_bins)
    return launch(
        u,
        spectrum,
        pregate,
        postgate,
        bias,
        n,
        keep_bins=keep_bins,
        blocked=blocked,
        halves=halves,
        **launch_options,
    )


def _check_halves(u: Tensor, n: int, blocked: bool) -> None:
    if blocked or not supports_halves(n, u.shape[-1], False, u.dtype):
        raise ValueError(
            f"halves: the two-halves kernel takes dense plans with n/2 a power of two in "
            f"[{MIN_FFT}, {MAX_FFT}], L <= n/2 and dtypes {DTYPES}; got n={n}, "
            f"L={u.shape[-1]}, {u.dtype}, blocked={blocked}"
        )


def _check_blocked(u: Tensor, n: int, keep_bins: int | None) -> None:
    L = u.shape[-1]
    if not supports(n, False, u.dtype) or n < MIN_BLOCKED_FFT:
        raise ValueError(
            f"n: a blocked plan needs a power of two in [{MIN_BLOCKED_FFT}, {MAX_FFT}] and "
            f"dtypes {DTYPES}; got n={n}, {u.dtype}"
        )
    if keep_bins is not None and keep_bins < n // 2 + 1:
        raise ValueError(
            f"keep_bins: a blocked plan takes the full spectrum (None or >= {n // 2 + 1}); "
            f"got {keep_bins}"
        )
    if L < 1:
        raise ValueError(f"u: a blocked plan needs a sequence length L >= 1; got L={L}")


def launch(
    u: Tensor,
    spectrum: Tensor,
    pregate: Tensor | None,
    postgate: Tensor | None,
    bias: Tensor | None,
    n: int,
    *,
    keep_bins: int | None = None,
    blocked: bool = False,
    out: Tensor | None = None,
    pair: bool | None = None,
    steps: int | None = None,
    stages: int | None = None,
    num_warps: int | None = None,
    precision: str | None = None,
    skip_input: str | None = None,
    z_out: Tensor | None = None,
    transform: str | None = None,
    hold_filter: bool | None = None,
    halves: bool | None = None,
    halves_passes: int | None = None,
) -> Tensor:
    """The kernel on a spectrum already in its order (``spectrum_layout``, with the same
    ``keep_bins``; ``spectrum_layout3`` for three stages), or on the rfft itself (complex64
    ``[H, n//2 + 1]``, whose bins the kernel then gathers).

    ``blocked``: the blocked plan (``fftconv_fwd``): ``B * cdiv(L, n/2)`` sequences per
    channel, one per block, instead of B. ``out``: written in place when given (u's dtype, or
    fp32 for a y kept at the accumulators' precision). ``pair`` (default: at least 2 sequences
    per channel): two sequences of a channel per step. ``steps``: steps (sequences or pairs)
    of one channel per program (default ``steps_for``). ``stages``: software-pipelining depth
    of that loop (loads of the next step issued during this one; 1: none; default for
    fp16/bf16 3 up to n = 2048, then 2; 1 for fp32, whose tables leave no shared memory for a
    second stage). ``num_warps``, ``precision``: override the defaults.
    ``skip_input`` (dense plans with a bias): where the skip term ``bias * v`` takes v from:
    ``"held"`` the fp32 input tile kept in registers from its load to the output, ``"reload"``
    loaded again at the output positions (a second read, from L2, of what the step has just
    read; no registers held across the products, more shared memory for the pipeline);
    default ``skip_input_for``.
    ``z_out``: also written with z, the convolution before the postgate and the skip term (what
    the postgate's gradient multiplies dy by), in u's dtype, shaped and laid out as u.
    ``transform``: ``"two"`` Monarch stages or ``"three"`` (``_fftconv_fwd3_kernel``: dense
    plans with a dense spectrum at n in ``THREE_STAGE_SIZES``); default ``transform_for``.
    ``hold_filter``: the filter spectrum held in registers across a program's steps, or loaded
    per step (the default of the three-stage kernel at ``LOAD_FILTER_AT``; the two-stage
    kernel holds it by default).
    ``halves`` (default: n > MAX_FFT): the size-n convolution of sequences of at most n/2
    samples as two size-n/2 ones in one program, on the spectrum's even and odd bins (the
    spectrum laid out by ``outer_spectrum_layout(kf, n, 2)``: ``[H, 2, 2, N1, K2]``, the even
    half first; two stages; module docstring, "Two halves"). ``halves_passes``: 2 (the
    default) two launches, the even half's z written to the output and read back by the odd
    half's launch, which ends with the epilogue; 1 both halves in one program (u read once, but
    twice the live tiles: it spills; the default where ``out`` shares storage with u or a
    gate, which the first of two launches would overwrite).
    """
    B, H, L = u.shape
    halves = n > MAX_FFT if halves is None else bool(halves)
    if halves:
        _check_halves(u, n, blocked)
    elif blocked:
        _check_blocked(u, n, keep_bins)
    elif not supports(n, False, u.dtype) or L > n:
        raise ValueError(
            f"the fused forward covers n in [{MIN_FFT}, {MAX_FFT}], L <= n, "
            f"dtypes {DTYPES}; got n={n}, L={L}, {u.dtype}"
        )
    raw = spectrum.dtype == torch.complex64  # the rfft itself (``fftconv_fwd``'s "kernel")
    passes = 1 if not halves else (2 if halves_passes is None else halves_passes)
    if passes not in (1, 2):
        raise ValueError(f"halves_passes must be 1 or 2; got {halves_passes!r}")
    if passes == 2 and halves_passes is None and _shares_storage(out, u, pregate, postgate):
        passes = 1  # the first launch would overwrite an input the second one reads
    gates = (pregate is not None, postgate is not None, bias is not None)
    options = dict(
        raw_spectrum=raw, blocked=blocked, keep_bins=keep_bins, pair=pair, steps=steps,
        stages=stages, num_warps=num_warps, precision=precision or dot_precision(u),
        skip_input=skip_input, device=u.device, transform=transform, hold_filter=hold_filter,
        halves=halves,
    )  # fmt: skip
    wide_out = out is not None and out.dtype == torch.float32 and u.dtype != torch.float32
    metas = launch_metas(
        n, B, H, L, u.dtype, gates=gates, store_z=z_out is not None, passes=passes,
        wide_out=wide_out, **options,
    )  # fmt: skip
    meta = metas[-1][0]
    three = "N3" in meta
    if three:
        N1, N2, N3 = meta["N1"], meta["N2"], meta["N3"]
        want = (H, N1, 2, N2, N3)
    else:
        N1, N2, K2 = meta["N1"], meta["N2"], meta["K2"]
        want = (H, 2, 2, N1, K2) if halves else (H, 2, N1, K2)
    if raw:
        if spectrum.shape != (H, n // 2 + 1):
            raise ValueError(
                f"spectrum: an rfft must be complex64 of shape {(H, n // 2 + 1)}; got "
                f"{tuple(spectrum.shape)}"
            )
        spectrum = torch.view_as_real(spectrum.contiguous())
    elif spectrum.shape != want or spectrum.dtype != torch.float32:
        raise ValueError(
            f"spectrum must be fp32 of shape {want} (keep_bins={keep_bins}, "
            f"transform={'three' if three else 'two'}), or the complex64 rfft of shape "
            f"{(H, n // 2 + 1)}; got {spectrum.dtype} {tuple(spectrum.shape)}"
        )
    if three:
        tables = constants3(n, u.device, u.dtype)
    else:
        m = n // 2 if halves else n
        dft1, dft2, twiddle = constants(m, u.device, u.dtype)
        if K2 < N2:
            dft2 = columns_of(dft2, meta["K_LOW"], K2 - meta["K_LOW"]).contiguous()
        tables = (dft1, dft2, twiddle)
    u = u.contiguous()
    spectrum = spectrum.contiguous()
    pregate = pregate.contiguous() if pregate is not None else None
    postgate = postgate.contiguous() if postgate is not None else None
    bias = bias.contiguous() if bias is not None else None
    for name, given, dtypes in (
        ("out", out, (u.dtype, torch.float32)),  # fp32: y kept at the accumulators' precision
        ("z_out", z_out, (u.dtype,)),
    ):
        if given is not None and (
            given.shape != u.shape or given.dtype not in dtypes or not given.is_contiguous()
        ):
            raise ValueError(
                f"{name} must be contiguous, of dtype in {dtypes} and shape {tuple(u.shape)}; "
                f"got {given.dtype} {tuple(given.shape)}"
            )
    y = torch.empty_like(u) if out is None else out
    with device_guard(u):
        for meta, programs in metas:
            # a first pass of two takes no postgate, bias or z (its meta says so)
            post = postgate if meta["HAS_POSTGATE"] else None
            skip = bias if meta["HAS_BIAS"] else None
            z = z_out if meta["STORE_Z"] else None
            kernel_of(meta)[(H * programs,)](
                u,
                pregate if pregate is not None else u,
                post if post is not None else u,
                skip if skip is not None else u,
                spectrum,
                *tables,
                y,
                z if z is not None else y,
                B,
                H,
                L,
                **meta,
            )
    return y


def launch_metas(
    n: int,
    B: int,
    H: int,
    L: int,
    dtype: torch.dtype,
    *,
    gates: tuple[bool, bool, bool],
    store_z: bool = False,
    passes: int = 1,
    wide_out: bool = False,
    **options,
) -> list[tuple[dict, int]]:
    """``(kernel_meta, programs per channel)`` of each launch ``launch`` makes, in order: one,
    or for the two-halves kernel in two passes (``options["halves"]``, ``passes=2``) the even
    half's with the pregate alone (its raw z to the output), then the odd half's with every
    gate, the bias and z. ``wide_out``: the output is fp32 for a half-precision input (the odd
    half reads the even half's z back at that width). ``options``: ``kernel_meta``'s."""
    if passes == 1:
        return [kernel_meta(n, B, H, L, dtype, gates=gates, store_z=store_z, **options)]
    first = kernel_meta(n, B, H, L, dtype, gates=(gates[0], False, False), half=0, **options)
    second = kernel_meta(
        n, B, H, L, dtype, gates=gates, store_z=store_z, half=1, wide_out=wide_out, **options
    )
    return [first, second]


def _shares_storage(out: Tensor | None, *tensors: Tensor | None) -> bool:
    """Whether ``out`` lives in the storage of one of ``tensors`` (an in-place output)."""
    if out is None:
        return False
    ptr = out.untyped_storage().data_ptr()
    return any(t is not None and t.untyped_storage().data_ptr() == ptr for t in tensors)


def kernel_meta(
    n: int,
    B: int,
    H: int,
    L: int,
    dtype: torch.dtype,
    *,
    gates: tuple[bool, bool, bool],
    blocked: bool = False,
    keep_bins: int | None = None,
    pair: bool | None = None,
    steps: int | None = None,
    stages: int | None = None,
    num_warps: int | None = None,
    precision: str = "tf32",
    skip_input: str | None = None,
    store_z: bool = False,
    device: torch.device | None = None,
    sms: int | None = None,
    transform: str | None = None,
    hold_filter: bool | None = None,
    raw_spectrum: bool = False,
    halves: bool = False,
    half: int = 2,
    wide_out: bool = False,
) -> tuple[dict, int]:
    """What ``launch`` compiles the kernel with for ``[B, H, L]`` inputs of ``dtype`` at FFT
    size n (``gates``: whether there is a pregate, a postgate, a bias), the launcher's defaults
    in place of each None (``steps`` planned for ``device``'s SMs, or ``sms`` of them): the
    kernel's compile-time arguments with ``num_warps``, and the programs per channel. One
    place for the launch and the sm_90 compile of ``benchmarks.fftconv --static``. With
    ``transform="three"`` the arguments of ``_fftconv_fwd3_kernel`` (``N3`` among them: what
    tells the two kernels' apart, ``kernel_of``). ``raw_spectrum``: the kernel gathers the
    filter's bins from its rfft (``KF_RAW``). ``halves``: the two-halves kernel's
    (``HALVES = 2``: tables, steps and warps those of the tile's size n/2), ``half`` which of
    its launches (``HALF``: 2 both halves in one, 0 the even half, 1 the odd half after it);
    ``wide_out``: an fp32 output for a half-precision input (the odd half's read of the even
    half's z is buffered per stage at that width)."""
    if half not in (0, 1, 2):
        raise ValueError(f"half must be 0, 1 or 2; got {half!r}")
    if halves:
        if transform not in (None, "two"):
            raise ValueError(f"halves: the two-halves kernel has two stages; got {transform!r}")
        transform = "two"
        size, n = n, n // 2  # the tile's size from here on; the spectrum's is ``size``
    if transform is None:
        transform = transform_for(n, dtype, blocked, keep_bins, gates)
    if not halves:
        _check_transform(transform, n, blocked, keep_bins)
    skip_input = skip_input_for(n, dtype, blocked) if skip_input is None else skip_input
    if skip_input not in SKIP_INPUTS:
        raise ValueError(f"skip_input must be one of {tuple(SKIP_INPUTS)}; got {skip_input!r}")
    sequences = B * triton.cdiv(L, n // 2) if blocked else B  # per channel
    pair = sequences >= 2 if pair is None else pair
    per_channel = triton.cdiv(sequences, 2 if pair else 1)
    steps = steps_for(n, H, per_channel, device, blocked, sms) if steps is None else steps
    if steps < 1:
        raise ValueError(f"steps must be >= 1; got {steps}")
    # fp32 at n = 8192: the held fp32 tables need more shared memory than an SM has (295-490 KB
    # > 227 KB on an H200), so one step per program (tables reloaded per sequence); blocked,
    # already at n = 4096 (256 KB paired: the N1/2-row last stage holds its own tables)
    held_tables_fit = n < (4096 if blocked else 8192)
    steps = 1 if dtype == torch.float32 and not held_tables_fit else min(steps, per_channel)
    if stages is None:
        stages = default_stages(n, dtype, blocked)
        odd_big = gates[1] or gates[2] or (wide_out and gates[0])
        if halves and n >= 8192 and (half == 2 or (half == 1 and odd_big)):
            # on the 8192-sample tile a second stage asks for more shared memory than an SM
            # has (sm_90 compile, bf16): both halves in one program 248 KB; the odd half's
            # launch with a postgate or bias 280 KB, with a pregate alone 216 (248 with an
            # fp32 output: the halves' correlation in the backward, the postgate as its
            # pregate and dv in fp32), plain 184 (216 with an fp32 output)
            stages = 1
        if transform == "two" and hold_filter is False and n >= 8192 and (gates[0] or gates[1]):
            # the filter's per-step copy is buffered per stage too: two stages of a gated pair
            # at n = 8192 ask for 252 KB of shared memory (> 227 KB)
            stages = 1
    if stages < 1:
        raise ValueError(f"stages must be >= 1; got {stages}")
    N1, N2 = split(n)
    low, high = outer_kept_columns(size, 2, keep_bins) if halves else kept_columns(n, keep_bins)
    if transform == "three":
        N1, N2, N3 = split3(n)
        hold = n not in LOAD_FILTER_AT if hold_filter is None else bool(hold_filter)
        shape = dict(
            N1=N1, N2=N2, N3=N3, ROWS=tile_rows3(L, n), HOLD_FILTER=hold, KF_RAW=raw_spectrum
        )
    else:
        hold = True if hold_filter is None else bool(hold_filter)
        shape = dict(
            N1=N1, N2=N2, K2=low + high, ROWS=N1 if blocked else tile_rows(L, n), BLOCKED=blocked,
            KF_RAW=raw_spectrum, K_LOW=low, HOLD_FILTER=hold, HALVES=2 if halves else 1,
            HALF=half if halves else 2,
        )  # fmt: skip
    meta = dict(
        **shape,
        PAIR=pair,
        STEPS=steps,
        STAGES=stages,
        HAS_PREGATE=gates[0],
        HAS_POSTGATE=gates[1],
        HAS_BIAS=gates[2],
        PRECISION=precision,
        SKIP_INPUT=SKIP_INPUTS[skip_input],
        STORE_Z=store_z,
        num_warps=num_warps or num_warps_for(n, dtype, blocked),
    )
    return meta, triton.cdiv(per_channel, steps)


def kernel_of(meta: dict):
    """The kernel ``kernel_meta``'s arguments are for."""
    return _fftconv_fwd3_kernel if "N3" in meta else _fftconv_fwd_kernel


def dot_flops(
    B: int,
    H: int,
    L: int,
    n: int,
    pair: bool | None = None,
    keep_bins: int | None = None,
    blocked: bool = False,
    transform: str = "two",
    halves: bool = False,
) -> int:
    """Matrix-product flops the kernel issues (2 per multiply-add), zero-row skip and the
    frequency-column skip of a sparse filter (``keep_bins``) included. ``blocked``: B *
    cdiv(L, n/2) sequences per channel, the first stage on all N1 rows, the last on N1/2.
    ``transform="three"``: the three-stage kernel's (dense plans). ``halves``: the two-halves
    kernel's (two size-n/2 passes)."""
    if halves:
        m = n // 2
        rows = tile_rows(L, m)
        K2 = sum(outer_kept_columns(n, 2, keep_bins))
        pair = B >= 2 if pair is None else pair
        if pair:
            return H * triton.cdiv(B, 2) * 2 * 8 * m * (2 * rows + 2 * K2)
        return B * H * 2 * (8 * m * rows + 16 * m * K2)
    if transform == "three":
        _, N2, N3 = split3(n)
        rows = tile_rows3(L, n)
        pair = B >= 2 if pair is None else pair
        if pair:  # 4 dots per stage and direction, the first stage on ROWS rows
            return H * triton.cdiv(B, 2) * 16 * n * (rows + N2 + N3)
        return B * H * (8 * n * rows + 16 * n * (N2 + N3))
    N1 = split(n)[0]
    if blocked:
        sequences = B * triton.cdiv(L, n // 2)
        rows_in, rows_out = N1, N1 // 2
    else:
        sequences = B
        rows_in = rows_out = tile_rows(L, n)
    K2 = sum(kept_columns(n, keep_bins))
    pair = sequences >= 2 if pair is None else pair
    if pair:  # 16 dots per two sequences: 4 in each of the four stages
        per_step = 8 * n * (rows_in + rows_out + 2 * K2)
        return H * triton.cdiv(sequences, 2) * per_step
    return sequences * H * (4 * n * (rows_in + rows_out) + 16 * n * K2)  # 2 + 4 + 4 + 2 dots
