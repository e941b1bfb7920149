"""Sizes and layouts shared by every backend: FFT size, filter layout, frequency cut-off.

Every mode is reduced to one computation: a circular convolution of length ``n`` (a power of
two) between the zero-padded input and a filter laid out in "circular order" (lag ``s`` at
index ``s mod n``), followed by taking the first ``out_len`` samples and, for circular
convolutions of a length that is not a power of two, folding the tail back onto the head.

A causal *partial* convolution (a filter much shorter than the sequence) may instead be
**blocked**: the output is cut into blocks of ``S = n / 2`` samples, and each block is one
circular convolution of size ``n`` of the window of the previous and the current input block
(overlap-save). With ``taps <= S`` no lag wraps around into the kept half, so the result is the
exact causal convolution, at the cost of ``L / S`` transforms of size ``2S`` instead of one of
size about ``2L`` (README section 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MODES = ("causal", "circular", "bidirectional")

# The frequency-sparse cut-off moves in steps of 1/FREQ_STEPS of the spectrum, so that the
# kept bins cover whole Monarch blocks and the skipped blocks are never partly needed.
FREQ_STEPS = 16

# Blocked partial convolutions: block lengths S (FFT size 2S) from BLOCK_MIN (the fused kernels'
# output half must have >= 16 tile rows: n = 512 is 32 x 16) to BLOCK_MAX (n = 8192, the largest
# in-register size); chosen when the FFT shrinks enough (min_block_gain).
BLOCK_MIN = 256
BLOCK_MAX = 4096


def next_pow2(x: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1, x))))


def is_pow2(x: int) -> bool:
    return x >= 1 and (x & (x - 1)) == 0


@dataclass(frozen=True)
class ConvPlan:
    """Static description of one convolution: everything but the tensors."""

    mode: str
    seq_len: int  # L: length of u and y
    filter_len: int  # effective taps per side after truncation (causal/circular: Lk, bidir: M)
    fft_size: int  # n: power of two
    fold: bool  # circular mode computed as a linear convolution folded back onto itself
    keep_bins: int  # rfft bins [0, keep_bins) kept; the rest of the filter spectrum is zero
    blocked: bool = False  # causal, cut into output blocks of n // 2 samples (overlap-save)

    @property
    def block(self) -> int:
        """Output samples per block of a blocked plan (``n // 2``)."""
        return self.fft_size // 2

    @property
    def num_blocks(self) -> int:
        """Blocks per row: 1 for a dense plan."""
        return -(-self.seq_len // self.block) if self.blocked else 1

    @property
    def out_len(self) -> int:
        """Samples of the length-n circular result that the output is built from."""
        return 2 * self.seq_len - 1 if self.fold else self.seq_len

    @property
    def kc_len(self) -> int:
        """Length of the filter in circular order (the rest up to n is zero)."""
        return self.filter_len if self.mode != "bidirectional" else self.fft_size


def min_block_gain(dense_fft: int) -> int:
    """How many times smaller than the dense FFT a block's FFT must be for the default to block.

    Measured forward+backward on an H200 (bf16, B*H*L = 2^27, pregate, postgate and bias;
    ``benchmarks/NOTES.md``, partial convolutions v1): blocking pays from a 2x smaller FFT when
    the dense one would leave the in-register kernels (n > 8192: 1.8-2.2x), from 4x up to
    n = 8192 (1.16-1.32x; 2x there: 0.86-0.96x), and from 8x at n <= 2048, where the dense
    backward is cheapest (4x at n = 2048: 0.77x)."""
    if dense_fft > 2 * BLOCK_MAX:
        return 2
    return 4 if dense_fft > 2048 else 8


def block_for(taps: int) -> int:
    """The block length S of a blocked plan for ``taps`` lags (FFT size 2S), or 0 if none fits."""
    S = max(BLOCK_MIN, next_pow2(taps))
    return S if S <= BLOCK_MAX else 0


def make_plan(
    mode: str,
    seq_len: int,
    filter_len: int,
    freq_keep: float = 1.0,
    blocked: bool | None = None,
) -> ConvPlan:
    """``filter_len`` is the user's filter length: Lk (causal, circular) or 2M-1 (bidirectional).

    ``blocked``: cut a causal convolution into blocks (overlap-save). None (the default) blocks
    a partial filter of ``taps <= BLOCK_MAX`` when that makes the FFT ``min_block_gain`` times
    smaller than the dense plan's, and there is no frequency cut-off (a cut-off is defined on
    the dense FFT's bins, so it keeps the dense plan). True forces it where it is possible and
    raises where not; False never blocks.
    """
    L = seq_len
    if blocked not in (None, True, False):
        raise ValueError(f"blocked must be None, True or False; got {blocked!r}")
    if mode == "causal":
        taps = min(filter_len, L)
        n = max(2, next_pow2(L + taps - 1))
        fold = False
        S = block_for(taps) if freq_keep >= 1.0 else 0
        if blocked is None:
            blocked = S > 0 and min_block_gain(n) * 2 * S <= n
        elif blocked and not S:
            raise ValueError(
                f"blocked=True needs a causal filter of at most {BLOCK_MAX} taps and no "
                f"frequency cut-off; got taps={taps}, freq_keep={freq_keep}"
            )
        if blocked:
            return ConvPlan(mode, L, taps, 2 * S, False, S + 1, True)
    elif mode == "circular":
        taps = L
        fold = not (is_pow2(L) and L >= 2)
        n = max(2, next_pow2(2 * L - 1)) if fold else L
    elif mode == "bidirectional":
        taps = min((filter_len + 1) // 2, L)
        n = max(2, next_pow2(L + taps - 1))
        fold = False
    else:
        raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
    if blocked:
        raise ValueError(f"blocked=True needs mode='causal'; got mode={mode!r}")
    return ConvPlan(mode, L, taps, n, fold, keep_bins_for(n, freq_keep))


def keep_bins_for(n: int, freq_keep: float) -> int:
    """Number of low-frequency rfft bins kept for a fraction ``freq_keep`` of the spectrum."""
    bins = n // 2 + 1
    if freq_keep >= 1.0:
        return bins
    step = max(1, (n // 2) // FREQ_STEPS)
    keep = math.ceil(freq_keep * (n // 2) / step) * step
    return max(1, min(bins, keep))
