"""The ``triton`` backend: fused tensor-core FFT convolution kernels (GPU; CPU under
TRITON_INTERPRET=1).

What is fused so far (``fused_forward``): the whole forward of every non-fold plan (causal,
bidirectional, circular of a power-of-two length) with FFT size ``256 <= n <= 8192`` and u in
fp16/bf16/fp32; see ``triton_fwd.py``. Every other plan (n < 256, n > 8192, folded circular
convolutions, fp64), and the whole backward, run on the primitives below, which delegate to
torch.fft for now: correct everywhere, not yet fast.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import reference, triton_fwd
from .plan import ConvPlan


def rfft(x: Tensor, n: int, keep_bins: int) -> Tensor:
    return reference.rfft(x, n, keep_bins)


def irfft(X: Tensor, n: int, out_len: int, keep_bins: int) -> Tensor:
    return reference.irfft(X, n, out_len, keep_bins)


def prepare(n: int, device: torch.device, dtype: torch.dtype) -> None:
    """Builds the fused kernel's DFT matrices and twiddles for size n (before graph capture)."""
    if triton_fwd.supports(n, False, dtype):
        triton_fwd.constants(n, torch.device(device), dtype)


def fused_forward(
    u: Tensor,
    kf: Tensor,
    pregate: Tensor | None,
    postgate: Tensor | None,
    bias: Tensor | None,
    plan: ConvPlan,
) -> Tensor | None:
    """The whole forward in one kernel, or None for a plan the kernel does not cover."""
    n = plan.fft_size
    if not triton_fwd.supports(n, plan.fold, u.dtype) or kf.dtype != torch.complex64:
        return None
    return triton_fwd.fftconv_fwd(u, kf, pregate, postgate, bias, n)
