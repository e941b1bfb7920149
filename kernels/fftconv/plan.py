"""Sizes and layouts shared by every backend: FFT size, filter layout, frequency cut-off.

Every mode is reduced to one computation: a circular convolution of length ``n`` (a power of
two) between the zero-padded input and a filter laid out in "circular order" (lag ``s`` at
index ``s mod n``), followed by taking the first ``out_len`` samples and, for circular
convolutions of a length that is not a power of two, folding the tail back onto the head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MODES = ("causal", "circular", "bidirectional")

# The frequency-sparse cut-off moves in steps of 1/FREQ_STEPS of the spectrum, so that the
# kept bins cover whole Monarch blocks and the skipped blocks are never partly needed.
FREQ_STEPS = 16


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

    @property
    def out_len(self) -> int:
        """Samples of the length-n circular result that the output is built from."""
        return 2 * self.seq_len - 1 if self.fold else self.seq_len

    @property
    def kc_len(self) -> int:
        """Length of the filter in circular order (the rest up to n is zero)."""
        return self.filter_len if self.mode != "bidirectional" else self.fft_size


def make_plan(mode: str, seq_len: int, filter_len: int, freq_keep: float = 1.0) -> ConvPlan:
    """``filter_len`` is the user's filter length: Lk (causal, circular) or 2M-1 (bidirectional)."""
    L = seq_len
    if mode == "causal":
        taps = min(filter_len, L)
        n = max(2, next_pow2(L + taps - 1))
        fold = False
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
    return ConvPlan(mode, L, taps, n, fold, keep_bins_for(n, freq_keep))


def keep_bins_for(n: int, freq_keep: float) -> int:
    """Number of low-frequency rfft bins kept for a fraction ``freq_keep`` of the spectrum."""
    bins = n // 2 + 1
    if freq_keep >= 1.0:
        return bins
    step = max(1, (n // 2) // FREQ_STEPS)
    keep = math.ceil(freq_keep * (n // 2) / step) * step
    return max(1, min(bins, keep))
