"""The ``torch`` backend: torch.fft, the ground truth every other backend is compared with.

A backend provides two primitives on the real-input FFT of size ``n`` (a power of two):

- ``rfft(x, n, keep_bins)``: x ``[..., m]`` real with ``m <= n`` (implicitly zero-padded to n)
  -> ``[..., n // 2 + 1]`` complex, bins ``>= keep_bins`` set to zero;
- ``irfft(X, n, out_len, keep_bins)``: X ``[..., n // 2 + 1]`` whose bins ``>= keep_bins`` are
  zero -> the first ``out_len`` samples of the length-n inverse, real.

The convolution itself (modes, gates, bias, backward) is written once on top of these in
``core.py``, so a backend that gets these two right gets the whole contract right.
"""

from __future__ import annotations

import torch
from torch import Tensor


def rfft(x: Tensor, n: int, keep_bins: int) -> Tensor:
    X = torch.fft.rfft(x, n=n)
    if keep_bins < X.shape[-1]:
        X[..., keep_bins:] = 0
    return X


def irfft(X: Tensor, n: int, out_len: int, keep_bins: int) -> Tensor:
    if keep_bins < X.shape[-1]:
        X = X.clone()
        X[..., keep_bins:] = 0
    return torch.fft.irfft(X, n=n)[..., :out_len]


def prepare(n: int, device: torch.device, dtype: torch.dtype) -> None:
    """Nothing to precompute: torch.fft plans its own transforms."""
