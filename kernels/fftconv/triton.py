"""The ``triton`` backend: fused tensor-core FFT convolution kernels (GPU; CPU under
TRITON_INTERPRET=1).

Blocked plans (causal partial filters cut into blocks, ``plan.py``) run the same two kernels
in their blocked mode (``blocked=True``, FFT sizes 512 to 8192).

The forward (``fused_forward``): every non-fold plan (causal, bidirectional, circular of a
power-of-two length) with FFT size ``256 <= n <= 8192`` runs in one in-register kernel
(``triton_fwd.py``); n > 8192 up to 2^23 (causal L = 4M) and every folded plan (circular, L not
a power of two) run on the outer Monarch step through HBM around the same kind of fused inner
kernel (``triton_long.py``); dense plans of n = 16384 whose input fits 8192 samples may instead
run the forward as two size-8192 convolutions on the in-register kernel (``triton_fwd``'s two
halves: where ``triton_fwd.HALVES_AT`` or ``use_halves`` says; by default not for a forward
whose postgate keeps no z), and their backward on the long path (on the two halves too,
``triton_bwd.filter_grad_halves``, only under ``use_halves(True)``). What is left
(n < 256 without a fold, folded plans below n = 256 with a frequency cut-off, n > 2^23, fp64)
runs on the primitives below, which delegate to torch.fft: correct everywhere.

The backward (``fused_backward``): the same plans (non-fold, ``256 <= n <= 8192``) take one
fused kernel for all five gradients (``triton_bwd.py``); the long and folded plans go to
``triton_long.long_backward``; the rest (n < 256, fp64) to the primitives.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import reference, triton_bwd, triton_fwd, triton_long
from .plan import ConvPlan


def rfft(x: Tensor, n: int, keep_bins: int) -> Tensor:
    return reference.rfft(x, n, keep_bins)


def irfft(X: Tensor, n: int, out_len: int, keep_bins: int) -> Tensor:
    return reference.irfft(X, n, out_len, keep_bins)


def prepare(n: int, device: torch.device, dtype: torch.dtype) -> None:
    """Builds the fused kernels' DFT matrices and twiddles for size n (before graph capture)."""
    device = torch.device(device)
    if triton_fwd.supports(n, False, dtype):
        triton_fwd.constants(n, device, dtype)
        if n in triton_fwd.THREE_STAGE_SIZES:  # the three-stage forward's (gated defaults)
            triton_fwd.constants3(n, device, dtype)
    if triton_fwd.halves_for(n, n // 2, False, dtype):  # the two-halves kernels', at n / 2
        triton_fwd.constants(n // 2, device, dtype)
    if triton_fwd.halves_backward_for(n, n // 2, False, dtype):
        triton_bwd.prepare(n // 2, device, dtype)
    if triton_bwd.supports(n, False, dtype):
        triton_bwd.prepare(n, device, dtype)
    triton_long.prepare(n, device, dtype)


def _in_register(plan: ConvPlan, dtype: torch.dtype) -> bool:
    """Whether the in-register forward kernel runs the plan (dense or blocked; a blocked plan
    is causal, never folded)."""
    return triton_fwd.supports(plan.fft_size, plan.fold, dtype)


def _halves(plan: ConvPlan, dtype: torch.dtype, postgate_without_z: bool = False) -> bool:
    """Whether the two-halves forward kernel runs the plan (``triton_fwd.halves_for``: a dense
    plan of n = 16384 whose input and output fit 8192 samples, by default not for a forward
    whose postgate keeps no z); its backward is ``triton_long.long_backward``'s, on the long
    kernels unless ``use_halves(True)`` (``triton_fwd.halves_backward_for``)."""
    return not plan.blocked and triton_fwd.halves_for(
        plan.fft_size, plan.seq_len, plan.fold, dtype, postgate_without_z=postgate_without_z
    )


def _forward_in_register(u, kf, pregate, postgate, bias, plan, z_out=None) -> Tensor:
    keep_bins = None if plan.blocked else plan.keep_bins
    return triton_fwd.fftconv_fwd(
        u, kf, pregate, postgate, bias, plan.fft_size,
        keep_bins=keep_bins, blocked=plan.blocked, z_out=z_out,
        halves=_halves(plan, u.dtype, postgate is not None and z_out is None),
    )  # fmt: skip


def fused_forward(
    u: Tensor,
    kf: Tensor,
    pregate: Tensor | None,
    postgate: Tensor | None,
    bias: Tensor | None,
    plan: ConvPlan,
) -> Tensor | None:
    """The whole forward on the fused kernels, or None for a plan they do not cover: one
    in-register kernel for n <= 8192 (``triton_fwd``), the outer Monarch step through HBM for
    n > 8192 and every folded plan (``triton_long``)."""
    if kf.dtype != torch.complex64:
        return None
    if _in_register(plan, u.dtype) or _halves(plan, u.dtype, postgate is not None):
        return _forward_in_register(u, kf, pregate, postgate, bias, plan)
    if plan.blocked:
        return None
    return triton_long.long_forward(u, kf, pregate, postgate, bias, plan)


def keeps_z(plan: ConvPlan, dtype: torch.dtype) -> bool:
    """Whether ``core.forward_with_z`` returns a z for the plan on this backend: every plan
    but those of the long path (n > 8192 and folded plans, ``triton_long``), whose kernels
    keep none; the in-register kernels write it (``fused_forward_z``; the two-halves forward
    too, whose long-path backward is then asked for the other gradients only: ``core.backward``
    multiplies dy by z), the primitives have it."""
    if dtype == torch.float64 or plan.blocked or _in_register(plan, dtype):
        return True
    if _halves(plan, dtype):
        return True
    return not triton_long.supports(plan, dtype)


def fused_forward_z(
    u: Tensor,
    kf: Tensor,
    pregate: Tensor | None,
    postgate: Tensor | None,
    bias: Tensor | None,
    plan: ConvPlan,
) -> tuple[Tensor, Tensor] | None:
    """``(y, z)``: the forward of ``fused_forward`` that also writes z, the convolution before
    the postgate and the skip term (in u's dtype), for a backward that wants the postgate's
    gradient; or None where the in-register kernel does not run the plan (the long path keeps
    no z: its backward transforms v again)."""
    if kf.dtype != torch.complex64:
        return None
    if not (_in_register(plan, u.dtype) or _halves(plan, u.dtype)):
        return None
    z = torch.empty_like(u)
    return _forward_in_register(u, kf, pregate, postgate, bias, plan, z_out=z), z


def fused_backward(
    dy: Tensor,
    u: Tensor,
    kc: Tensor,
    kf: Tensor,
    pregate: Tensor | None,
    postgate: Tensor | None,
    bias: Tensor | None,
    plan: ConvPlan,
    needs: tuple[bool, bool, bool, bool, bool],
    z: Tensor | None = None,
) -> tuple[Tensor | None, ...] | None:
    """Gradients for (u, kc, pregate, postgate, bias) on the fused kernels, None where ``needs``
    says not wanted; or None for a plan they do not cover (the primitives then run). ``z``:
    the forward's (``fused_forward_z``), when it kept one: the kernel takes the postgate's
    gradient ``dy * z`` from it instead of transforming v again."""
    if kf.dtype != torch.complex64:
        return None
    n = plan.fft_size
    if triton_bwd.supports(n, plan.fold, u.dtype):  # a blocked plan is never folded
        return triton_bwd.fftconv_bwd(
            dy, u, kc, kf, pregate, postgate, bias, n, plan.keep_bins, needs,
            blocked=plan.blocked, z=z,
        )  # fmt: skip
    if plan.blocked or z is not None:
        # a z the in-register kernels do not take (n < 256: the primitives kept it; the long
        # path keeps none, keeps_z): core.backward multiplies it by dy and asks again without
        return None
    return triton_long.long_backward(dy, u, kc, kf, pregate, postgate, bias, plan, needs)
