"""Long FFT convolutions in Triton: an outer Monarch step through HBM around a fused inner pass,
for FFT sizes past what one program holds on chip (``n > 8192``, up to ``2^23``: a causal
convolution of L = 4M), and the folded plans (circular convolutions of a length that is not a
power of two) at every size.

The math. A length-n circular convolution of the zero-padded input (every plan reduces to one,
``plan.py``), with ``n = N0 * m``: time ``t = m*t0 + t1`` (the signal viewed ``[N0, m]``
row-major), frequency ``k = k0 + N0*k1``. Since ``w_n^(t k) = w_N0^(t0 k0) w_n^(t1 k0)
w_m^(t1 k1)`` (the fourth factor, ``w^(m N0 t0 k1)``, is 1):

    FFT(x)[k0 + N0 k1] = sum_t1 w_m^(t1 k1) * ( w_n^(t1 k0) * sum_t0 w_N0^(t0 k0) x[t0, t1] )

and the inverse is the same steps conjugated, in reverse. Three kernels, one round trip of an
intermediate through HBM between each:

    (A)  columns:  C = U_N0 @ x   ([k0, t1])                           reads u (and pregate)
    (C)  rows:     per row k0: times w_n^(t1 k0), a length-m FFT, times the spectrum slice
                   K[k0 + N0 k1] over k1, the inverse FFT, times w_n^(-t1 k0)    in place
    (A') columns:  z = conj(U_N0) @ E, first out_len samples, postgate and bias fused: writes y

``U_N = F_N / sqrt(N)`` (unitary DFT matrices at every level, so the intermediates keep the
input's scale and the product of all the scalings is exactly the inverse's 1/n).

Design choices:

- Complex signals of two sequences. As in ``triton_fwd``'s PAIR mode, sequences b and b+1 of a
  channel travel as ``v + i w``: the filter is real, so ``conv(v + i w) = conv(v) + i conv(w)``
  and the real and imaginary parts of the output are the two results. The intermediate holds
  ``n`` complex values per two sequences (``2n`` reals in the operand dtype), the row step is a
  general complex FFT -> multiply -> inverse FFT (no Hermitian symmetry used), and an odd last
  sequence rides with ``w = 0`` (B = 1 therefore does twice the necessary work: real-input
  packing of one sequence is not done).
- A program takes ``STEPS`` pairs of one channel in a loop (as ``triton_fwd``'s steps;
  ``_steps_for``: as many as keep 8 programs per SM busy, at most 8). The column kernels load
  their DFT matrices once for all of them.
- The rows kernel runs as ``RowsConfig`` says (``rows=`` of ``conv_long``, or for every call
  in a block ``use_rows_variant``; named variants in ``ROWS_VARIANTS``; the default,
  ``held-p3``, was the fastest timed on the H200: benchmarks/NOTES.md, long path v2). Every
  table of a program (the DFT matrices with the row's twiddle, the inner twiddle, the filter
  slice) belongs to one (channel, row k0), so the pairs of that row share
  all of them; the rows of a pair would share only the DFT matrices and the inner twiddle.
  Hence the step loop runs over pairs. v1 (``rows_kernel``) loads the tables inside the loop,
  where Triton leaves them (every pair reloads them), and takes one pair per program from
  m = 4096. ``rows_kernel_held`` folds the row's twiddle into the tables (3 complex products
  per element per pair instead of 6), builds them before the loop (``hold``: the DFT
  matrices, which Triton then keeps in shared memory, and the fp32 twiddle and filter slice,
  in registers) and pipelines the loop (``stages``). sm_90 compiles (bf16, 4 pairs per
  program; ``benchmarks.fftconv_long --static``): m = 1024 255 -> 196 registers (165 with 3
  stages), m = 2048 226 -> 164, m = 4096 104 -> 8 bytes of spills, m = 8192 116 -> 72, with
  the held tables in 16-176 KB of shared memory; ``fit_rows_config`` drops stages, then held
  tables, where a device has less.
- Step (A) skips the zero padding: only the rows ``t0 < ceil(L / m)`` are read and enter the
  products (half of them for a causal convolution); (A') computes and writes only the rows that
  hold output samples. The rows step has no zero blocks (every row is dense after (A)).
- Outer size ``N0``: one ``tl.dot`` against ``U_N0`` (padded to 16 when ``N0 < 16``) up to
  ``N0 = 128``; from 256 on two levels ``N0 = P * Q`` (``t0 = Q a + b``, ``k0 = c + P d``) with
  the tile laid out ``[P, BT, Q]`` (column block in the middle), so the first level is a
  product on the left (``[P, P] @ [P, BT*Q]``) and the second on the right
  (``[P*BT, Q] @ [Q, Q]``) of the same row-major registers, with the twiddle ``w_N0^(b c)``
  between them. One level at N0 >= 256 would spend 8*N0/2 flops per element and be
  compute-bound.
- Inner size ``m`` (256..8192, two-stage Monarch ``M1 x M2`` as ``triton_fwd``, whose DFT
  matrices and twiddle tables it reuses): ``split_for`` keeps ``m <= 4096`` up to
  ``n = 2^20`` (the two-stage pass costs ``16 (M1 + M2)`` flops per element: at m = 8192 it is
  compute-bound) and ``N0 <= 1024``.
- The global twiddles ``w_n^(t1 k0)`` live in the rows kernel, where k0 is one number per
  program and the twiddle of a row factors into a column and a row vector of the ``[M1, M2]``
  tile: M1 + M2 cos/sin per program (integer exponent reduced to ``[-n/2, n/2]`` first, fp32
  angle), folded into the first DFT matrix and the fp32 products so that they add no rounding
  of the data. A table would be as large as the data; cos/sin per element would make the
  outer kernels compute-bound.
- Operands and the intermediate in the input's dtype for fp16/bf16 (rounded between stages, as
  in ``triton_fwd``); fp32 inputs keep an fp32 intermediate and tf32x3 dots on CUDA.
- Memory: one intermediate of ``2 n`` operand-dtype values per pair, reused in place by (C);
  the pairs are processed in chunks (whole channels, or runs of pairs of one channel) so that
  it stays under ``max_intermediate_bytes`` (default 1 GiB: 2^27 bf16 sequence elements of a
  causal convolution need 512 MiB). A chunk small enough for the L2 cache (tens of MiB) may
  keep the intermediate out of HBM; the benchmark times that variant.
- Traffic and work, bf16, causal (n = 2L), per sequence: u and y (4L bytes, the floor), plus the
  intermediate written and read twice (16L bytes): 5x the floor by construction, and the
  spectrum (8 bytes per bin and channel, shared by the pairs of a channel). Products: the rows
  pass costs ``16 (M1 + M2)`` flops per complex element, the outer passes ``8 ROWS`` each
  (``16 (ROWS + Q)`` for two levels); at m = 4096 the rows pass is compute-bound on an H200.
- Folded plans (circular, L not a power of two): the linear convolution's first ``2L - 1``
  samples (with the pregate, without postgate/bias) go to an fp32 buffer, which is then folded
  (``y[t] = lin[t] + lin[t + L]``) and gated by elementwise torch ops. n > 8192 uses the
  kernels here; n <= 8192 the fused kernel of ``triton_fwd`` on a zero-padded copy of the gated
  input; n < 256 the same at n = 256 with the filter's spectrum resampled there (the filter
  has only L taps). Cost: the padded copy and the extra ``2L - 1`` buffer round trip, several
  times the traffic of the unfolded fused forward.
- Backward (``long_backward``, the ``fused_backward`` hook's contract): d_u and d_pregate from
  the same machinery run on ``dz = dy * postgate`` with the conjugate spectrum (correlation),
  d_postgate from the recomputed z; d_bias by torch. Both ``conv_long`` calls take the rows
  configuration of the forward (``use_rows_variant``).
- The filter gradient (``filter_grad_long``): ``d_kc = irfft(sum_b rfft(dz) conj(rfft(v)))``
  with ``triton_bwd``'s pair trick: with ``P = FFT(v_b + i v_b+1)``, ``Q = FFT(dz_b + i dz_b+1)``,
  ``Re(IFFT(sum Q conj(P)))`` is the sum of both sequences' correlations (the cross terms are
  purely imaginary), so one accumulator per channel. Step (A) on v (pregate fused) and on dz
  (the postgate in the gate slot), then ``rows_cross_kernel``: per (channel, row k0, run of
  pairs) the forward half of the held rows kernel on both intermediates, ``Q conj(P)``
  accumulated in fp32 registers, one partial spectrum per run (``_parts_for``: enough runs for
  8 programs per SM), summed on the host in a fixed order (deterministic). The host lays the
  ``[H, n]`` sum out in natural order, applies the cut-off and takes one complex inverse FFT
  per channel (unnormalised: the unitary stages put the 1/n in S). Folded plans pass
  ``window^T(dz)`` (2L - 1 samples, gated on the host) instead of dy; folded plans at
  n <= 8192 without ``n0`` keep torch.fft, and so does everything under
  ``use_filter_grad_kernels(False)`` (the benchmark's old path). Traffic per pair: u, pregate,
  dy, postgate read once, two intermediates written and read once. sm_90 compiles (4 pairs
  per block, one stage): bf16 m = 1024 255 registers, 16 bytes of spills; 2048 166, none;
  4096 612 bytes; 8192 668 bytes; fp32 1.4, 0.5 and 2.5 KB at m = 1024, 2048, 4096 (196 KB of
  shared memory at 4096, which two stages would push past an H200's 227 KB).
- The intermediate is in the operand dtype already (bf16/fp16 for those inputs: 4 bytes per
  complex value); only fp32 inputs keep an fp32 one, which their 1e-5 tolerance needs.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch
import triton
from torch import Tensor

from ..backends import build_constants, canonical_device, device_guard, sm_count
from . import core, reference, triton_bwd, triton_fwd
from .plan import ConvPlan
from .triton_long_kernels import (
    cols_fwd2_kernel,
    cols_fwd_kernel,
    cols_inv2_kernel,
    cols_inv_kernel,
    rows_cross_kernel,
    rows_kernel,
    rows_kernel_held,
)

MIN_INNER = triton_fwd.MIN_FFT  # 256
MAX_INNER = triton_fwd.MAX_FFT  # 8192
MAX_FFT = 2**23  # N0 <= 1024 at m = 8192
MAX_OUTER = 1024
MAX_FFT_FP32 = MAX_OUTER * 4096  # fp32 keeps m <= 4096 (shared memory)
ONE_LEVEL_MAX = 128  # outer sizes from 256 on take two levels
DTYPES = triton_fwd.DTYPES
MAX_INTERMEDIATE_BYTES = 2**30
MAX_STEPS = 8
HOLD_MAX = 2048  # above this m the v1 rows kernel takes one step (its tables would spill)
PROGRAMS_PER_SM = 8


def _is_pow2(x: int) -> bool:
    return isinstance(x, int) and x >= 1 and (x & (x - 1)) == 0


@dataclass(frozen=True)
class LongSplit:
    """``n = n0 * m``; the outer size ``n0 = p * q`` (one level: ``p = n0``, ``q = 1``)."""

    n: int
    n0: int
    m: int
    p: int
    q: int

    @property
    def two_level(self) -> bool:
        return self.q > 1

    @property
    def n0_tile(self) -> int:
        """The one-level DFT tile: ``tl.dot`` needs 16 or more on every side."""
        return max(16, self.n0)


def split_for(n: int, dtype: torch.dtype | None = None) -> int:
    """The default outer size ``N0`` for FFT size ``n > 8192``. fp32 keeps ``m <= 4096``: its
    rows kernel at m = 8192 needs more shared memory than an H200 SM has (262 KB > 227 KB)."""
    if n <= 2**16:
        return 16  # m = 1024 .. 4096
    if n <= 2**19 or dtype == torch.float32:
        return n // 4096  # 32 .. 1024, m = 4096
    return max(256, n // 8192)  # two levels; m = 4096 at 2^20, then 8192


def make_split(n: int, n0: int | None = None, dtype: torch.dtype | None = None) -> LongSplit:
    """Validates ``n`` and the outer size (default ``split_for(n, dtype)``) into a
    ``LongSplit``."""
    if not _is_pow2(n) or n < MIN_INNER or n > MAX_FFT:
        raise ValueError(f"n must be a power of two in [{MIN_INNER}, {MAX_FFT}]; got {n!r}")
    if n0 is None:
        n0 = split_for(n, dtype) if n > MAX_INNER else max(1, n // 1024)
    if not _is_pow2(n0) or n0 > MAX_OUTER:
        raise ValueError(f"n0 must be a power of two in [1, {MAX_OUTER}]; got {n0!r}")
    m = n // n0
    if not MIN_INNER <= m <= MAX_INNER:
        raise ValueError(
            f"n0={n0} leaves an inner size m = n / n0 = {m} outside [{MIN_INNER}, {MAX_INNER}] "
            f"(n={n})"
        )
    if n0 <= ONE_LEVEL_MAX:
        return LongSplit(n, n0, m, n0, 1)
    q = 1 << ((n0.bit_length() - 1) // 2)
    return LongSplit(n, n0, m, n0 // q, q)


def supports(plan: ConvPlan, dtype: torch.dtype) -> bool:
    """The plans this module runs: n > 8192 (every mode), and folded plans of every size (below
    n = 256 only without a frequency cut-off, which would make the filter n taps long)."""
    n = plan.fft_size
    if dtype not in DTYPES or n > (MAX_FFT_FP32 if dtype == torch.float32 else MAX_FFT):
        return False
    if plan.fold:
        return n >= MIN_INNER or plan.keep_bins == n // 2 + 1
    return n > MAX_INNER


# ---------------------------------------------------------------------------------------------
# Constants: outer DFT matrices and the two-level twiddle, built on the device (capture-safe)

_CONSTANTS: dict[tuple, tuple[Tensor, ...]] = {}


def _unitary_dft(size: int, tile: int, device: torch.device) -> Tensor:
    """``U_size`` zero-padded to ``[2, tile, tile]`` (real and imaginary planes), float64."""
    j = torch.arange(size, dtype=torch.float64, device=device)
    angle = (-2.0 * math.pi / size) * torch.remainder(j[:, None] * j[None, :], size)
    out = torch.zeros(2, tile, tile, dtype=torch.float64, device=device)
    out[0, :size, :size] = angle.cos() / math.sqrt(size)
    out[1, :size, :size] = angle.sin() / math.sqrt(size)
    return out


def constants(split: LongSplit, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, ...]:
    """One level: ``(dft [2, T, T],)`` with ``T = n0_tile``; two levels:
    ``(dft_p [2, P, P], dft_q [2, Q, Q], twiddle [2, P, Q])``, the twiddle ``w_N0^(c b)`` fp32,
    the DFT matrices in ``dtype``. Cached per (outer sizes, device, dtype)."""
    device = canonical_device(device)
    key = (split.p, split.q, device, dtype)
    if key not in _CONSTANTS:

        def build() -> tuple[Tensor, ...]:
            if not split.two_level:
                return (_unitary_dft(split.n0, split.n0_tile, device).to(dtype).contiguous(),)
            P, Q = split.p, split.q
            c = torch.arange(P, dtype=torch.float64, device=device)
            b = torch.arange(Q, dtype=torch.float64, device=device)
            angle = (-2.0 * math.pi / split.n0) * (c[:, None] * b[None, :])
            return (
                _unitary_dft(P, P, device).to(dtype).contiguous(),
                _unitary_dft(Q, Q, device).to(dtype).contiguous(),
                torch.stack([angle.cos(), angle.sin()]).float().contiguous(),
            )

        what = f"Triton long-FFT tables for n={split.n} ({dtype})"
        _CONSTANTS[key] = build_constants(device, what, build)
    return _CONSTANTS[key]


def prepare(n: int, device: torch.device, dtype: torch.dtype) -> None:
    """Builds every table the default plans of size n use here (before CUDA graph capture)."""
    if dtype not in DTYPES or n > (MAX_FFT_FP32 if dtype == torch.float32 else MAX_FFT):
        return
    if n > MAX_INNER:
        split = make_split(n, dtype=dtype)
        constants(split, device, dtype)
        triton_fwd.constants(split.m, canonical_device(device), dtype)
    else:  # folded plans at n <= 8192 run triton_fwd's kernel at max(n, 256)
        triton_fwd.constants(max(n, MIN_INNER), canonical_device(device), dtype)


use_layout_kernel = triton_fwd.use_layout_kernel  # one switch for both layouts


def inner_kept_columns(split: LongSplit, keep_bins: int | None) -> tuple[int, int]:
    """The columns a2 of the rows kernel's ``[M1, M2]`` tile that hold the nonzero bins of a
    spectrum whose rfft bins ``>= keep_bins`` are zero (``triton_fwd.outer_kept_columns``)."""
    return triton_fwd.outer_kept_columns(split.n, split.n0, keep_bins)


def spectrum_layout(
    kf: Tensor,
    split: LongSplit,
    conj: bool = False,
    kernel: bool | None = None,
    keep_bins: int | None = None,
) -> Tensor:
    """kf ``[H, n//2+1]`` complex (rfft order) -> ``[H, N0, 2, M1, K2]`` fp32, the rows
    kernel's order (``triton_fwd.outer_spectrum_layout``): ``[h, k0, 0|1, a1, a2]`` =
    real|imag of bin ``k0 + N0 (a1 + M1 a2)`` of the full spectrum, conjugated when ``conj``
    (the correlation of the backward), the columns of ``inner_kept_columns``."""
    return triton_fwd.outer_spectrum_layout(
        kf, split.n, split.n0, conj=conj, kernel=kernel, keep_bins=keep_bins
    )


# ---------------------------------------------------------------------------------------------
# The rows kernel's launch configurations (issue 3: timed as variants before a default changes)


@dataclass(frozen=True)
class RowsConfig:
    """How the rows kernel (C) runs.

    ``held=False``: ``rows_kernel`` (v1, the default): its tables are loaded inside the step
    loop, where the compiler keeps them (the stores into the intermediate may alias them), so
    every pair reloads them; one pair per program from m = 4096 (``HOLD_MAX``).
    ``held=True``: ``rows_kernel_held``: the global twiddle folded into the tables (three
    complex products per element instead of six); ``hold`` of them built once per program
    before the loop (0 none, 1 the DFT matrices, 2 also the fp32 twiddle and filter slice);
    the loop software-pipelined over ``stages``.
    ``steps``: pairs of one (channel, row k0) per program (None: ``_steps_for``; v1: 1 from
    m = 4096); ``num_warps`` (None: ``triton_fwd.num_warps_for(m)``).
    """

    held: bool = False
    hold: int = 2
    steps: int | None = None
    stages: int = 1
    num_warps: int | None = None

    def __post_init__(self):
        if self.hold not in (0, 1, 2):
            raise ValueError(f"RowsConfig.hold must be 0, 1 or 2; got {self.hold!r}")
        if not isinstance(self.stages, int) or self.stages < 1:
            raise ValueError(f"RowsConfig.stages must be an int >= 1; got {self.stages!r}")
        if self.steps is not None and (not isinstance(self.steps, int) or self.steps < 1):
            raise ValueError(f"RowsConfig.steps must be None or an int >= 1; got {self.steps!r}")
        if self.num_warps is not None and self.num_warps not in (1, 2, 4, 8, 16):
            raise ValueError(
                f"RowsConfig.num_warps must be None or a power of two <= 16; got {self.num_warps!r}"
            )


# The variants the benchmark times (benchmarks/fftconv_long.py; ``--static`` prints the
# registers, spills and shared memory of each in the sm_90 compile). Each is clipped to the
# device's shared memory by ``fit_rows_config`` (fewer stages, then fewer tables held).
ROWS_VARIANTS: dict[str, RowsConfig] = {
    "v1": RowsConfig(),
    "held": RowsConfig(held=True, hold=2, stages=1),
    "held-p2": RowsConfig(held=True, hold=2, stages=2),
    "held-p3": RowsConfig(held=True, hold=2, stages=3),
    "matrices": RowsConfig(held=True, hold=1, stages=1),
}
DEFAULT_ROWS_VARIANT = "held-p3"  # fastest at m <= 2048, within 6% at 4096 (NOTES: long v2)
_default_rows = ROWS_VARIANTS[DEFAULT_ROWS_VARIANT]


def rows_config(rows: str | RowsConfig | None = None) -> RowsConfig:
    """A variant name (``ROWS_VARIANTS``) or a ``RowsConfig`` as a ``RowsConfig``; None: the
    current default (``DEFAULT_ROWS_VARIANT``, or what ``use_rows_variant`` set)."""
    if rows is None:
        return _default_rows
    if isinstance(rows, RowsConfig):
        return rows
    if rows not in ROWS_VARIANTS:
        raise ValueError(
            f"rows must be a RowsConfig or one of {sorted(ROWS_VARIANTS)}; got {rows!r}"
        )
    return ROWS_VARIANTS[rows]


@contextlib.contextmanager
def use_rows_variant(rows: str | RowsConfig) -> Iterator[RowsConfig]:
    """Within the block, every long convolution that does not name its own ``rows`` (the public
    call, forward and backward) runs the rows kernel as ``rows`` says: the benchmark's knob.
    Not thread-safe (a module-level default)."""
    global _default_rows
    previous, _default_rows = _default_rows, rows_config(rows)
    try:
        yield _default_rows
    finally:
        _default_rows = previous


def rows_shared_bytes(m: int, dtype: torch.dtype, hold: int, stages: int) -> int:
    """An upper estimate of the held rows kernel's shared memory (sm_90 compiles, Triton 3.6):
    the DFT matrices as matrix operands (``U_M1 alpha``, its transposed copy and ``U_M2``; twice
    for fp32, whose tf32x3 products split every operand), two data tiles, and per extra
    pipeline stage two more data tiles, plus what the loop then loads ahead: the fp32 twiddle
    and filter slice when they are not held, the matrices when they are not."""
    M1, M2 = triton_fwd.split(m)
    size = torch.empty(0, dtype=dtype).element_size()
    split = 2 if dtype == torch.float32 else 1
    matrices = split * size * (4 * M1 * M1 + 2 * M2 * M2)
    tile = split * size * 2 * m
    per_stage = 4 * size * m + (16 * m if hold < 2 else 0) + (matrices if hold < 1 else 0)
    return matrices + 2 * tile + per_stage * (stages - 1)


def fit_rows_config(
    config: RowsConfig, m: int, dtype: torch.dtype, shared_limit: int | None
) -> RowsConfig:
    """``config`` with fewer stages, then fewer held tables, until ``rows_shared_bytes`` fits
    ``shared_limit`` bytes of shared memory per program (None: no limit). A config that holds
    tables but has room for none runs v1 instead (``rows_kernel`` spills less than the held
    kernel without tables: fp32 at m = 4096, 2.0 KB against 3.0 KB in the sm_90 compile)."""
    if not config.held or shared_limit is None:
        return config
    hold, stages = config.hold, config.stages
    while stages > 1 and rows_shared_bytes(m, dtype, hold, stages) > shared_limit:
        stages -= 1
    while hold > 0 and rows_shared_bytes(m, dtype, hold, stages) > shared_limit:
        hold -= 1
    if hold == 0 < config.hold:
        return RowsConfig(steps=config.steps, num_warps=config.num_warps)
    return replace(config, hold=hold, stages=stages)


@functools.cache
def _shared_limit_of(index: int) -> int:
    return torch.cuda.get_device_properties(index).shared_memory_per_block_optin


def shared_limit(device: torch.device) -> int | None:
    """Shared memory one program may use on ``device`` (None off CUDA: no limit)."""
    return _shared_limit_of(canonical_device(device).index) if device.type == "cuda" else None


# ---------------------------------------------------------------------------------------------
# Host launcher


def _rows_for(length: int, split: LongSplit) -> int:
    """Rows of the outer tile (t0, or a for two levels) that cover ``[0, length)``."""
    t0_rows = triton.cdiv(length, split.m)
    if split.two_level:
        return min(split.p, max(16, triton.next_power_of_2(triton.cdiv(t0_rows, split.q))))
    return min(split.n0_tile, max(16, triton.next_power_of_2(t0_rows)))


def default_block_cols(split: LongSplit) -> int:
    """Columns t1 per program of the outer kernels: about 4096 complex values per tile (at least
    8 columns, 16 bytes of bf16 per row segment; at most 128)."""
    return min(split.m, 128, max(8 if split.two_level else 16, 4096 // split.n0_tile))


def default_num_warps(split: LongSplit, block_cols: int) -> int:
    """Warps of the outer kernels: 8 from 4096 complex values per tile (sm_90 compiles spill
    with 4 there), else 4."""
    return 8 if split.n0_tile * block_cols >= 4096 else 4


def _chunks(H: int, nbp: int, per_signal: int, limit: int):
    """Rectangles ``(h0, channels, b0, pairs)`` of signals whose intermediate fits ``limit``
    bytes: whole channels when one channel's pairs fit, else runs of pairs of one channel."""
    if nbp * per_signal <= limit:
        hc = max(1, min(H, limit // (nbp * per_signal)))
        for h0 in range(0, H, hc):
            yield h0, min(hc, H - h0), 0, nbp
        return
    bc = max(1, limit // per_signal)
    for h0 in range(H):
        for b0 in range(0, nbp, bc):
            yield h0, 1, b0, min(bc, nbp - b0)


def _steps_for(inner: int, channels: int, pairs: int, device: torch.device) -> int:
    """Pairs per program: the most (a power of two, at most ``MAX_STEPS`` and the pairs per
    channel) that keep ``PROGRAMS_PER_SM`` programs per SM; the interpreter takes all of them
    up to the next power of two (fewer programs run faster there)."""
    cap = min(MAX_STEPS, triton.next_power_of_2(pairs))
    if device.type != "cuda":
        return cap
    target = PROGRAMS_PER_SM * sm_count(device)
    steps = 1
    while steps * 2 <= cap and inner * channels * triton.cdiv(pairs, 2 * steps) >= target:
        steps *= 2
    return steps


def _check_gate(name: str, g: Tensor | None, shape: tuple, device: torch.device) -> None:
    if g is None:
        return
    if not isinstance(g, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None; got {type(g).__name__}")
    if tuple(g.shape) != shape or g.device != device:
        raise ValueError(
            f"{name} must have shape {shape} on {device}; got {tuple(g.shape)} on {g.device}"
        )


def _check_intermediate(name: str, buf: Tensor, split: LongSplit, signals: int) -> None:
    """A ValueError unless ``buf`` is an intermediate of (A): contiguous
    ``[>= signals, 2, N0, m]`` in one of ``DTYPES``."""
    n0, m = split.n0, split.m
    if buf.dtype not in DTYPES or buf.dim() != 4 or tuple(buf.shape[1:]) != (2, n0, m):
        raise ValueError(
            f"{name} must be [signals, 2, {n0}, {m}] in one of {DTYPES}; got {buf.dtype} "
            f"{tuple(buf.shape)}"
        )
    if not buf.is_contiguous() or buf.shape[0] < signals:
        raise ValueError(
            f"{name} must be contiguous with >= channels * pairs = {signals} signals; got "
            f"{buf.shape[0]} (contiguous: {buf.is_contiguous()})"
        )


def _row_tables(m: int, buf: Tensor, low: int, high: int) -> tuple[Tensor, Tensor, Tensor]:
    """The rows kernels' DFT matrices and twiddle for inner size m (``triton_fwd.constants``),
    with ``U_M2`` cut to the kept columns ``(low, high)``: ``[2, M2, K2]``."""
    dft1, dft2, twiddle = triton_fwd.constants(m, canonical_device(buf.device), buf.dtype)
    if low + high < dft2.shape[-1]:
        dft2 = triton_fwd.columns_of(dft2, low, high).contiguous()
    return dft1, dft2, twiddle


def launch_rows(
    buf: Tensor,
    spectrum: Tensor,
    split: LongSplit,
    h0: int,
    channels: int,
    pairs: int,
    *,
    rows: str | RowsConfig | None = None,
    precision: str | None = None,
    keep_bins: int | None = None,
) -> None:
    """The rows kernel (C) in place on ``buf`` (``[>= channels * pairs, 2, N0, m]``, operand
    dtype: ``pairs`` signals of each of the channels ``h0 + [0, channels)``, channel-major),
    with every channel's spectrum (``spectrum_layout`` with the same ``keep_bins``,
    ``[H, N0, 2, M1, K2]`` fp32). ``rows``: the launch configuration (``rows_config``),
    clipped to the device's shared memory (``fit_rows_config``). ``keep_bins``: the spectrum's
    bins from there on are zero, and the held kernel skips the columns that hold only those
    (``inner_kept_columns``; the v1 kernel has no skip, so a config that would run it runs the
    held kernel with nothing held instead). ``conv_long`` runs it between the column kernels;
    the benchmark times it alone."""
    n0, m = split.n0, split.m
    M1, M2 = triton_fwd.split(m)
    low, high = inner_kept_columns(split, keep_bins)
    K2 = low + high
    _check_intermediate("buf", buf, split, channels * pairs)
    if (
        spectrum.dim() != 5
        or tuple(spectrum.shape[1:]) != (n0, 2, M1, K2)
        or spectrum.dtype != torch.float32
        or not 0 <= h0 <= h0 + channels <= spectrum.shape[0]
    ):
        raise ValueError(
            f"spectrum must be fp32 [H >= h0 + channels = {h0 + channels}, {n0}, 2, {M1}, {K2}] "
            f"(keep_bins={keep_bins}); got {spectrum.dtype} {tuple(spectrum.shape)}"
        )
    spectrum = spectrum.contiguous()
    config = fit_rows_config(rows_config(rows), m, buf.dtype, shared_limit(buf.device))
    if K2 < M2 and not config.held:
        config = RowsConfig(held=True, hold=0, steps=config.steps, num_warps=config.num_warps)
    inner = _row_tables(m, buf, low, high)
    precision = precision or triton_fwd.dot_precision(buf)
    warps = config.num_warps or triton_fwd.num_warps_for(m)
    steps = config.steps
    if steps is None:
        default = config.held or m <= HOLD_MAX
        steps = _steps_for(n0, channels, pairs, buf.device) if default else 1
    grid = (n0 * channels * triton.cdiv(pairs, steps),)
    with device_guard(buf):
        if not config.held:
            rows_kernel[grid](
                buf, spectrum, *inner, h0, pairs, n0,
                M1=M1, M2=M2, STEPS=steps, PRECISION=precision,
                num_warps=warps, num_stages=config.stages,
            )  # fmt: skip
            return
        rows_kernel_held[grid](
            buf, spectrum, *inner, h0, pairs, n0,
            M1=M1, M2=M2, K2=K2, STEPS=steps, STAGES=config.stages, HOLD=config.hold,
            PRECISION=precision, num_warps=warps, num_stages=config.stages,
        )  # fmt: skip


def conv_long(
    x: Tensor,
    spectrum: Tensor,
    split: LongSplit,
    out_len: int | None = None,
    *,
    pregate: Tensor | None = None,
    postgate: Tensor | None = None,
    bias: Tensor | None = None,
    bias_gated: bool = True,
    out_dtype: torch.dtype | None = None,
    out: Tensor | None = None,
    block_cols: int | None = None,
    num_warps: int | None = None,
    rows_warps: int | None = None,
    steps: int | None = None,
    stages: int | None = None,
    rows: str | RowsConfig | None = None,
    precision: str | None = None,
    max_intermediate_bytes: int = MAX_INTERMEDIATE_BYTES,
    keep_bins: int | None = None,
) -> Tensor:
    """``y = postgate * irfft(rfft(x * pregate, n) * K, n)[:out_len] + bias * (x [* pregate])``.

    x, pregate: ``[B, H, L]`` fp16/bf16/fp32 with ``L <= n``; spectrum: ``spectrum_layout`` of
    the filter (``[H, N0, 2, M1, K2]`` fp32, with the same ``keep_bins``: the rfft bins from
    there on are zero, and the rows kernel skips the columns that hold only those); ``out_len``
    (default L) ``<= n``; postgate and bias (``[H]``) need ``out_len == L``;
    ``bias_gated=False`` takes the bias term from x alone.
    Returns ``[B, H, out_len]`` in ``out_dtype`` (default x's), or writes ``out``.
    Launch options: ``block_cols`` (t1 per program of the outer kernels), ``num_warps`` (outer
    kernels), ``rows`` (the rows kernel's ``RowsConfig`` or variant name, default
    ``rows_config()``), ``rows_warps`` (rows kernel, over ``rows``), ``steps`` (pairs of one
    channel per program, all three kernels, over ``rows``; default ``_steps_for``), ``stages``
    (software pipelining of that loop, all three kernels, over ``rows``; default 1 for the
    column kernels), ``precision`` (``tl.dot`` input precision), ``max_intermediate_bytes``
    (the intermediate's size: pairs per chunk).
    """
    if not isinstance(x, Tensor) or x.dim() != 3:
        raise ValueError(f"x must be a [B, H, L] tensor; got {getattr(x, 'shape', type(x))}")
    if x.dtype not in DTYPES:
        raise TypeError(f"x must have a dtype in {DTYPES}; got {x.dtype}")
    B, H, L = x.shape
    n, n0, m = split.n, split.n0, split.m
    out_len = L if out_len is None else out_len
    if not 1 <= L <= n or not 1 <= out_len <= n:
        raise ValueError(f"L and out_len must be in [1, n={n}]; got L={L}, out_len={out_len}")
    M1, _ = triton_fwd.split(m)
    K2 = sum(inner_kept_columns(split, keep_bins))
    if spectrum.shape != (H, n0, 2, M1, K2) or spectrum.dtype != torch.float32:
        raise ValueError(
            f"spectrum must be fp32 of shape {(H, n0, 2, M1, K2)} (keep_bins={keep_bins}); got "
            f"{spectrum.dtype} {tuple(spectrum.shape)}"
        )
    _check_gate("pregate", pregate, (B, H, L), x.device)
    _check_gate("postgate", postgate, (B, H, out_len), x.device)
    _check_gate("bias", bias, (H,), x.device)
    if (bias is not None or postgate is not None) and out_len != L:
        raise ValueError(f"postgate and bias need out_len == L={L}; got out_len={out_len}")
    out_dtype = x.dtype if out_dtype is None else out_dtype
    if out is not None and (
        out.shape != (B, H, out_len) or out.dtype != out_dtype or not out.is_contiguous()
    ):
        raise ValueError(f"out must be contiguous {out_dtype} of shape {(B, H, out_len)}")
    bt = block_cols or default_block_cols(split)
    if not _is_pow2(bt) or bt > m:
        raise ValueError(f"block_cols must be a power of two <= m={m}; got {bt!r}")
    if split.two_level and bt * split.p < 16:
        raise ValueError(f"block_cols * P must be >= 16; got {bt} * {split.p}")
    if steps is not None and (not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be an int >= 1; got {steps!r}")
    if stages is not None and (not isinstance(stages, int) or stages < 1):
        raise ValueError(f"stages must be an int >= 1; got {stages!r}")
    overrides = {"steps": steps, "stages": stages, "num_warps": rows_warps}
    rows = replace(rows_config(rows), **{k: v for k, v in overrides.items() if v is not None})
    stages = stages or 1
    if max_intermediate_bytes < 1:
        raise ValueError(f"max_intermediate_bytes must be >= 1; got {max_intermediate_bytes}")

    x = x.contiguous()
    spectrum = spectrum.contiguous()
    pregate, postgate, bias = (
        t.contiguous() if t is not None else None for t in (pregate, postgate, bias)
    )
    y = torch.empty(B, H, out_len, device=x.device, dtype=out_dtype) if out is None else out
    tables = constants(split, x.device, x.dtype)
    precision = precision or triton_fwd.dot_precision(x)
    num_warps = num_warps or default_num_warps(split, bt)

    nbp = triton.cdiv(B, 2)
    chunks = list(_chunks(H, nbp, 2 * n * x.element_size(), max_intermediate_bytes))
    buf = torch.empty(
        max(hc * nbc for _, hc, _, nbc in chunks), 2, n0, m, device=x.device, dtype=x.dtype
    )
    if split.two_level:
        cols_fwd, cols_inv = cols_fwd2_kernel, cols_inv2_kernel
        sizes = {"P": split.p, "Q": split.q, "M": m, "BT": bt}
    else:
        cols_fwd, cols_inv = cols_fwd_kernel, cols_inv_kernel
        sizes = {"N0": n0, "M": m, "N0T": split.n0_tile, "BT": bt}
    flags = {"HAS_PREGATE": pregate is not None, "PRECISION": precision}
    epilogue = {"HAS_POSTGATE": postgate is not None, "HAS_BIAS": bias is not None}
    epilogue["BIAS_GATED"] = bias_gated
    # absent optional tensors are passed as x (never read: their flags are off)
    pre_, post_, bias_ = (t if t is not None else x for t in (pregate, postgate, bias))
    with device_guard(x):
        for h0, hc, b0, nbc in chunks:
            cols_steps = steps or _steps_for(m // bt, hc, nbc, x.device)
            cols_grid = (m // bt * hc * triton.cdiv(nbc, cols_steps),)
            rect = (h0, b0, nbc)
            cols_fwd[cols_grid](
                x, pre_, buf, *tables, B, H, L, *rect,
                ROWS=_rows_for(L, split), STEPS=cols_steps, num_warps=num_warps,
                num_stages=stages,
                **sizes, **flags,
            )  # fmt: skip
            launch_rows(
                buf, spectrum, split, h0, hc, nbc, rows=rows, precision=precision,
                keep_bins=keep_bins,
            )  # fmt: skip
            cols_inv[cols_grid](
                buf, x, pre_, post_, bias_, y, *tables, B, H, out_len, *rect,
                ROWS=_rows_for(out_len, split), STEPS=cols_steps, num_warps=num_warps,
                num_stages=stages,
                **sizes, **flags, **epilogue,
            )  # fmt: skip
    return y


# ---------------------------------------------------------------------------------------------
# The filter gradient: the cross-spectrum of dz and v on the long kernels

_filter_grad_kernels = True  # long_backward's filter gradient (use_filter_grad_kernels)


@contextlib.contextmanager
def use_filter_grad_kernels(enabled: bool = True) -> Iterator[None]:
    """Within the block, ``long_backward`` computes the filter gradient with ``filter_grad_long``
    (True, the default) or with torch.fft in fp32 (False): the benchmark's knob. Not
    thread-safe (a module-level default)."""
    global _filter_grad_kernels
    previous, _filter_grad_kernels = _filter_grad_kernels, bool(enabled)
    try:
        yield
    finally:
        _filter_grad_kernels = previous


def _parts_for(n0: int, channels: int, pairs: int, device: torch.device) -> int:
    """Runs of pairs per channel of the cross-spectrum kernel: the fewest that give
    ``PROGRAMS_PER_SM`` programs per SM (each run adds a partial spectrum of 8n bytes to write
    and sum); 2 in the interpreter (the partial sums get exercised)."""
    if device.type != "cuda":
        return min(2, pairs)
    target = PROGRAMS_PER_SM * sm_count(device)
    return min(pairs, max(1, triton.cdiv(target, n0 * channels)))


def launch_rows_cross(
    buf_p: Tensor,
    buf_q: Tensor,
    split: LongSplit,
    channels: int,
    pairs: int,
    *,
    parts: int | None = None,
    steps: int | None = None,
    stages: int = 1,
    num_warps: int | None = None,
    precision: str | None = None,
    keep_bins: int | None = None,
) -> Tensor:
    """``rows_cross_kernel`` on two intermediates of (A) (``[>= channels * pairs, 2, N0, m]``,
    one dtype, channel-major as ``launch_rows``): returns the cross-spectrum
    ``sum over the pairs of Q * conj(P)`` per channel, ``[channels, N0, 2, M1, K2]`` fp32
    (``spectrum_layout``'s order, the columns ``inner_kept_columns(split, keep_bins)``: all
    M2 without a cut-off), summed over ``parts`` runs of pairs (default ``_parts_for``)
    in a fixed order. ``steps``: pairs per block of a run's loop (default: the run up to the
    next power of two, at most ``MAX_STEPS``), ``stages``: its software pipelining."""
    n0, m = split.n0, split.m
    M1, M2 = triton_fwd.split(m)
    low, high = inner_kept_columns(split, keep_bins)
    K2 = low + high
    for name, buf in (("buf_p", buf_p), ("buf_q", buf_q)):
        _check_intermediate(name, buf, split, channels * pairs)
    if buf_q.dtype != buf_p.dtype:
        raise ValueError(f"buf_q must have buf_p's dtype {buf_p.dtype}; got {buf_q.dtype}")
    parts = parts or _parts_for(n0, channels, pairs, buf_p.device)
    if not isinstance(parts, int) or not 1 <= parts <= max(1, pairs):
        raise ValueError(f"parts must be an int in [1, pairs={pairs}]; got {parts!r}")
    per_part = triton.cdiv(pairs, parts)
    parts = triton.cdiv(pairs, per_part)  # no empty run
    steps = steps or min(MAX_STEPS, triton.next_power_of_2(per_part))
    out = torch.empty(channels, parts, n0, 2, M1, K2, device=buf_p.device, dtype=torch.float32)
    dft1, dft2, twiddle = _row_tables(m, buf_p, low, high)
    precision = precision or triton_fwd.dot_precision(buf_p)
    warps = num_warps or triton_fwd.num_warps_for(m)
    grid = (n0 * channels * parts,)
    with device_guard(buf_p):
        rows_cross_kernel[grid](
            buf_p, buf_q, out, dft1, dft2, twiddle, pairs, n0, parts, per_part,
            M1=M1, M2=M2, K2=K2, STEPS=steps, STAGES=stages, PRECISION=precision,
            num_warps=warps, num_stages=stages,
        )  # fmt: skip
    return out.sum(dim=1) if parts > 1 else out[:, 0]


def cross_spectrum_to_filter_grad(spectrum: Tensor, split: LongSplit, taps: int, keep_bins: int):
    """``[H, N0, 2, M1, M2]`` fp32 (``launch_rows_cross``'s sum, bin ``k0 + N0 (a1 + M1 a2)``)
    -> the filter gradient ``[H, taps]`` fp32 in circular order: natural order, the frequency
    cut-off (bins ``keep_bins .. n - keep_bins`` zeroed: the low-pass of a real signal's
    spectrum, symmetric, so it commutes with taking the real part), one complex inverse FFT
    per channel, unnormalised (the unitary transforms of both signals already put the 1/n in
    S), the real part, the first ``taps`` samples. ``H * n`` torch work, as
    ``triton_bwd.dk_from_spectrum``."""
    H, n = spectrum.shape[0], split.n
    S = spectrum.permute(0, 4, 3, 1, 2).reshape(H, n, 2)  # natural order: k0 fastest
    S = torch.view_as_complex(S.contiguous())
    if keep_bins < n // 2 + 1:
        S[:, keep_bins : n - keep_bins + 1] = 0
    return torch.fft.ifft(S, norm="forward").real[:, :taps]


def filter_grad_long(
    dz: Tensor,
    u: Tensor,
    split: LongSplit,
    taps: int,
    keep_bins: int | None = None,
    *,
    pregate: Tensor | None = None,
    postgate: Tensor | None = None,
    block_cols: int | None = None,
    num_warps: int | None = None,
    rows_warps: int | None = None,
    steps: int | None = None,
    stages: int | None = None,
    parts: int | None = None,
    precision: str | None = None,
    max_intermediate_bytes: int = MAX_INTERMEDIATE_BYTES,
) -> Tensor:
    """The filter gradient ``d_kc[s] = sum_b sum_t (dz * postgate)[b, t] v[b, t - s]`` (length-n
    circular correlation, ``v = u * pregate``), ``s < taps``, as
    ``irfft(sum_b rfft(dz') * conj(rfft(v)), n)[:taps]`` with the cut-off ``keep_bins`` (default
    none): ``[H, taps]`` fp32.

    dz: ``[B, H, Lz]`` (dy; a folded plan passes ``window^T(dz)``, ``Lz = 2L - 1``) and u
    ``[B, H, L]`` in one fp16/bf16/fp32 dtype, ``Lz, L <= n``; postgate ``[B, H, Lz]``,
    pregate ``[B, H, L]``. Per chunk of pairs (under ``max_intermediate_bytes`` for both
    intermediates together): step (A) on v and on dz (its gate slot takes the postgate), then
    ``rows_cross_kernel`` (the forward half of the rows step on both and
    ``sum Q * conj(P)``, one partial spectrum per run of pairs), summed on the host in a fixed
    order (with a cut-off, on the columns ``inner_kept_columns`` keeps: the others hold only
    bins it zeroes); then ``cross_spectrum_to_filter_grad``. Options as ``conv_long``'s
    (``rows_warps`` and ``stages`` for the cross kernel too; ``parts``: runs of pairs per
    channel)."""
    for name, x in (("dz", dz), ("u", u)):
        if not isinstance(x, Tensor) or x.dim() != 3 or x.dtype not in DTYPES:
            raise ValueError(
                f"{name} must be a [B, H, L] tensor in one of {DTYPES}; got "
                f"{getattr(x, 'dtype', type(x))} {tuple(getattr(x, 'shape', ()))}"
            )
    B, H, L = u.shape
    Lz, n, n0, m = dz.shape[-1], split.n, split.n0, split.m
    if dz.shape[:2] != (B, H) or dz.dtype != u.dtype or dz.device != u.device:
        raise ValueError(
            f"dz must be [{B}, {H}, Lz] {u.dtype} on {u.device} (u's); got {dz.dtype} "
            f"{tuple(dz.shape)} on {dz.device}"
        )
    if not 1 <= L <= n or not 1 <= Lz <= n:
        raise ValueError(f"L and Lz must be in [1, n={n}]; got L={L}, Lz={Lz}")
    if not 1 <= taps <= n:
        raise ValueError(f"taps must be in [1, n={n}]; got {taps}")
    keep_bins = n // 2 + 1 if keep_bins is None else keep_bins
    if not 1 <= keep_bins <= n // 2 + 1:
        raise ValueError(f"keep_bins must be in [1, {n // 2 + 1}]; got {keep_bins}")
    _check_gate("pregate", pregate, (B, H, L), u.device)
    _check_gate("postgate", postgate, (B, H, Lz), u.device)
    bt = block_cols or default_block_cols(split)
    if not _is_pow2(bt) or bt > m or (split.two_level and bt * split.p < 16):
        raise ValueError(f"block_cols must be a power of two <= m={m} (* P >= 16); got {bt!r}")
    if max_intermediate_bytes < 1:
        raise ValueError(f"max_intermediate_bytes must be >= 1; got {max_intermediate_bytes}")

    u, dz = u.contiguous(), dz.contiguous()
    pregate, postgate = (t.contiguous() if t is not None else None for t in (pregate, postgate))
    tables = constants(split, u.device, u.dtype)
    precision = precision or triton_fwd.dot_precision(u)
    num_warps = num_warps or default_num_warps(split, bt)
    nbp = triton.cdiv(B, 2)
    chunks = list(_chunks(H, nbp, 4 * n * u.element_size(), max_intermediate_bytes))
    signals = max(hc * nbc for _, hc, _, nbc in chunks)
    buf_p = torch.empty(signals, 2, n0, m, device=u.device, dtype=u.dtype)
    buf_q = torch.empty_like(buf_p)
    if split.two_level:
        cols_fwd = cols_fwd2_kernel
        sizes = {"P": split.p, "Q": split.q, "M": m, "BT": bt}
    else:
        cols_fwd = cols_fwd_kernel
        sizes = {"N0": n0, "M": m, "N0T": split.n0_tile, "BT": bt}
    M1, M2 = triton_fwd.split(m)
    low, high = inner_kept_columns(split, keep_bins)  # the cut-off zeroes the other columns
    spectrum = torch.zeros(H, n0, 2, M1, low + high, device=u.device, dtype=torch.float32)
    sources = ((u, pregate, L, buf_p), (dz, postgate, Lz, buf_q))
    with device_guard(u):
        for h0, hc, b0, nbc in chunks:
            cols_steps = steps or _steps_for(m // bt, hc, nbc, u.device)
            cols_grid = (m // bt * hc * triton.cdiv(nbc, cols_steps),)
            for x, gate, length, buf in sources:
                cols_fwd[cols_grid](
                    x, gate if gate is not None else x, buf, *tables, B, H, length, h0, b0, nbc,
                    ROWS=_rows_for(length, split), STEPS=cols_steps, num_warps=num_warps,
                    num_stages=1, HAS_PREGATE=gate is not None, PRECISION=precision, **sizes,
                )  # fmt: skip
            spectrum[h0 : h0 + hc] += launch_rows_cross(
                buf_p, buf_q, split, hc, nbc, parts=min(parts, nbc) if parts else None,
                stages=stages or 1, num_warps=rows_warps, precision=precision,
                keep_bins=keep_bins,
            )  # fmt: skip
    spectrum = triton_fwd.all_columns(spectrum, low, high, M2)  # the skipped ones, as zeros
    return cross_spectrum_to_filter_grad(spectrum, split, taps, keep_bins)


# ---------------------------------------------------------------------------------------------
# Plans: the forward and the backward of every plan this module covers


def _inner_spectrum(kf: Tensor, plan: ConvPlan, conj: bool) -> tuple[Tensor, int]:
    """A folded plan at ``n <= 8192`` on ``triton_fwd``'s kernel: its spectrum layout and FFT
    size. Below 256 the L-tap filter is recovered and transformed again at 256 (filter-sized
    torch.fft work only: ``supports`` admits those plans without a frequency cut-off)."""
    n, L = plan.fft_size, plan.seq_len
    kf = kf.to(torch.complex64)
    if n < MIN_INNER:
        kf = torch.fft.rfft(torch.fft.irfft(kf, n=n)[:, :L], n=MIN_INNER)
        n = MIN_INNER
    if conj:
        kf = torch.conj_physical(kf)
    return triton_fwd.spectrum_layout(kf, n), n


def _linear(
    x: Tensor,
    kf: Tensor,
    plan: ConvPlan,
    out_len: int,
    *,
    conj: bool = False,
    pregate: Tensor | None = None,
    **options,
) -> Tensor:
    """``irfft(rfft(x * pregate, n) * kf (or conj), n)[:out_len]`` with no other gate, fp32 for
    the long kernels; x's dtype for ``triton_fwd``'s (it writes its input's dtype)."""
    if plan.fft_size > MAX_INNER or options.get("n0") is not None:
        split = make_split(plan.fft_size, options.pop("n0", None), x.dtype)
        keep = plan.keep_bins
        return conv_long(
            x,
            spectrum_layout(kf, split, conj, keep_bins=keep),
            split,
            out_len,
            pregate=pregate,
            out_dtype=torch.float32,
            keep_bins=keep,
            **options,
        )
    spectrum, n = _inner_spectrum(kf, plan, conj)
    v = x if pregate is None else (x.float() * pregate.float()).to(x.dtype)
    length = max(out_len, v.shape[-1])  # the kernel writes as many samples as it reads
    if length > v.shape[-1]:
        v = torch.nn.functional.pad(v, (0, length - v.shape[-1]))
    return triton_fwd.launch(v, spectrum, None, None, None, n)[..., :out_len]


def long_forward(
    u: Tensor,
    kf: Tensor,
    pregate: Tensor | None,
    postgate: Tensor | None,
    bias: Tensor | None,
    plan: ConvPlan,
    **options,
) -> Tensor | None:
    """The forward of a plan ``supports`` covers (``fused_forward``'s contract), else None.

    ``options``: ``n0`` (outer size, forcing the long kernels at any n >= 256 when given) and
    the launch options of ``conv_long``.
    """
    if not supports(plan, u.dtype) and options.get("n0") is None:
        return None
    if kf.dtype != torch.complex64:
        return None
    L = plan.seq_len
    if not plan.fold:
        split = make_split(plan.fft_size, options.pop("n0", None), u.dtype)
        spectrum = spectrum_layout(kf, split, keep_bins=plan.keep_bins)
        return conv_long(
            u, spectrum, split, pregate=pregate, postgate=postgate, bias=bias,
            keep_bins=plan.keep_bins, **options,
        )  # fmt: skip
    z = core.window(_linear(u, kf, plan, 2 * L - 1, pregate=pregate, **options).float(), plan)
    y = z * postgate.float() if postgate is not None else z
    if bias is not None:
        y = y + bias.float()[:, None] * core.gated_input(u, pregate, torch.float32)
    return y.to(u.dtype)


def long_backward(
    dy: Tensor,
    u: Tensor,
    kc: Tensor,
    kf: Tensor,
    pregate: Tensor | None,
    postgate: Tensor | None,
    bias: Tensor | None,
    plan: ConvPlan,
    needs: tuple[bool, bool, bool, bool, bool],
    **options,
) -> tuple[Tensor | None, ...] | None:
    """Gradients for (u, kc, pregate, postgate, bias), None where ``needs`` says not wanted
    (``fused_backward``'s contract; None for a plan ``supports`` does not cover).

    d_u, d_pregate: the correlation ``dv = irfft(rfft(window^T(dz)) * conj(kf))[:L] + bias dy``
    on the long (or, for small folded plans, the fused) kernels, or on the two-halves kernel
    where ``triton_fwd.halves_backward_for`` says (``use_halves(True)``); d_postgate = dy * z
    with z recomputed on the same kernels; d_bias by torch; d_kc, on the two-halves route, by
    ``triton_bwd.filter_grad_halves``, else by ``filter_grad_long`` where d_u's
    correlation runs on the long kernels (folded plans included: it reads ``window^T(dz)``)
    and B >= 2, unless ``use_filter_grad_kernels(False)``, else by torch.fft in fp32 (B = 1,
    folded plans at n <= 8192 without ``n0``). ``options`` as for ``long_forward``.
    """
    if not supports(plan, u.dtype) and options.get("n0") is None:
        return None
    if kf.dtype != torch.complex64:
        return None
    need_u, need_k, need_pre, need_post, need_bias = needs
    n, keep, L = plan.fft_size, plan.keep_bins, plan.seq_len
    out_lin = plan.out_len
    d_u = d_k = d_pre = d_post = d_bias = None

    # the filter gradient on the long kernels wherever d_u's correlation runs on them, for two
    # sequences or more: one sequence rides as a half-empty pair and the kernels do twice its
    # work, which measured slower than torch.fft's real transforms (B = 1, H = 128, L = 1M:
    # forward+backward 51.1 ms against 45.3; benchmarks/NOTES.md, long path v3)
    # on the two-halves route (use_halves(True); by default the long backward runs behind a
    # two-halves forward too: it measured faster), the filter gradient comes from two launches
    # of the in-register backward on the halves instead (triton_bwd.filter_grad_halves)
    halves = not options and triton_fwd.halves_backward_for(n, L, plan.fold, u.dtype)
    # the halves' filter gradient has at most n/2 taps (a causal filter's); a bidirectional
    # filter's wrap-around lags take the long kernels' route, as without the halves
    halves_k = halves and kc.shape[-1] <= n // 2
    dk_kernels = (
        _filter_grad_kernels
        and not halves_k
        and u.shape[0] >= 2
        and (n > MAX_INNER or options.get("n0") is not None)
    )
    dk_halves = need_k and halves_k
    dk_torch = need_k and not (dk_kernels or dk_halves)

    # dz and v in fp32, each computed once for whichever gradients need it
    dz = v = None
    if dk_torch or (plan.fold and (need_u or need_pre or need_k)):
        dz = dy.float() * postgate.float() if postgate is not None else dy.float()
    if need_bias or dk_torch:
        v = core.gated_input(u, pregate, torch.float32)
    if need_post:
        z = _linear(u, kf, plan, out_lin, pregate=pregate, **dict(options))
        d_post = (dy.float() * core.window(z.float(), plan)).to(postgate.dtype)
    if need_bias:
        d_bias = (dy.float() * v).sum(dim=(0, 2)).to(bias.dtype)
    if need_u or need_pre:
        if plan.fold:
            dlin = core.window_adjoint(dz, plan).to(u.dtype)
            dv = _linear(dlin, kf, plan, L, conj=True, **dict(options)).float()
            if bias is not None:
                dv = dv + bias.float()[:, None] * dy.float()
        elif halves:
            # where the forward runs the two-halves kernel, the correlation does too (the
            # conjugate spectrum), into an fp32 dv; the skip term's share added here (the
            # kernel's would be bias * dz)
            dv = torch.empty(u.shape, device=u.device, dtype=torch.float32)
            spectrum = triton_fwd.outer_spectrum_layout(kf, n, 2, conj=True, keep_bins=keep)
            triton_fwd.launch(
                dy.to(u.dtype), spectrum, postgate, None, None, n, keep_bins=keep, halves=True,
                out=dv,
            )  # fmt: skip
            if bias is not None:
                dv += bias.float()[:, None] * dy.float()
        else:
            split = make_split(n, options.get("n0"), u.dtype)
            launch = {key: val for key, val in options.items() if key != "n0"}
            dv = conv_long(
                dy.to(u.dtype),
                spectrum_layout(kf, split, conj=True, keep_bins=keep),
                split,
                pregate=postgate,
                bias=bias,
                bias_gated=False,
                out_dtype=torch.float32,
                keep_bins=keep,
                **launch,
            )
        if need_pre:
            d_pre = (dv * u.float()).to(pregate.dtype)
        if need_u:
            d_u = (dv * pregate.float() if pregate is not None else dv).to(u.dtype)
    if dk_halves:
        d_k = triton_bwd.filter_grad_halves(
            dy.to(u.dtype), u, kf, pregate, postgate, n, kc.shape[-1], keep
        ).to(kc.dtype)
    elif need_k and dk_kernels:
        split = make_split(n, options.get("n0"), u.dtype)
        launch = {key: val for key, val in options.items() if key not in ("n0", "rows")}
        if plan.fold:  # window^T(dz) is 2L - 1 samples long: gated here, read as it is
            dz_src, gates = core.window_adjoint(dz, plan).to(u.dtype), {}
        else:
            dz_src, gates = dy.to(u.dtype), {"postgate": postgate}
        d_k = filter_grad_long(
            dz_src, u, split, kc.shape[-1], keep, pregate=pregate, **gates, **launch
        ).to(kc.dtype)
    elif need_k:
        dlin = core.window_adjoint(dz, plan)
        spec = reference.rfft(dlin, n, keep) * torch.conj_physical(reference.rfft(v, n, keep))
        d_k = reference.irfft(spec.sum(dim=0), n, kc.shape[-1], keep).to(kc.dtype)
    return d_u, d_k, d_pre, d_post, d_bias
