"""The convolution, forward and backward, written once on a backend's rfft/irfft.

Notation (shapes): u, pregate, postgate, y ``[B, H, L]``; kc ``[H, m]`` the filter in
circular order (lag s at index s mod n, m <= n); bias ``[H]``; kf ``[H, n//2+1]``.

    v = u * pregate
    z = window(irfft(rfft(v) * kf))          window: first L samples, or fold for circular
    y = postgate * z + bias * v

A backend may also provide ``fused_forward(u, kf, pregate, postgate, bias, plan)`` and
``fused_backward(dy, u, kc, kf, pregate, postgate, bias, plan, needs[, z=])``: whole-convolution
kernels that return None for plans they do not cover, which then fall back to the primitives;
and ``fused_forward_z`` (same arguments), returning ``(y, z)``.

When the postgate wants a gradient the forward may keep z (``forward_with_z``): the backward
then takes ``dpostgate = dy * z`` from it instead of transforming v again (8 of the fused
backward's 32 products per pair), for one more saved tensor of u's size; a fused backward
that is handed z (keyword ``z``) computes the product where it loads dy.

Conjugates are taken with ``torch.conj_physical``: inside a compiled graph the custom op runs
with the Conjugate dispatch key off, where a lazy ``.conj()`` is silently dropped.

Backward recomputes the spectra instead of storing them (the memory of a long convolution
is its input, not its spectrum):

    dz = dy * postgate          dpostgate = dy * z          dbias = sum_{b,t} dy * v
    dlin = window^T(dz)         DL = rfft(dlin)
    dv = irfft(DL * conj(kf))[:L] + bias * dy               (correlation with the filter)
    dkc = irfft(sum_b DL * conj(rfft(v)))[:m]               (correlation with the input)
    du = dv * pregate           dpregate = dv * u

A blocked plan (``plan.blocked``, a causal partial filter, overlap-save with blocks of
``S = n / 2``) runs the same formulas per block on windows of two blocks: the forward
transforms the window ``v[(j-1)S : (j+1)S]`` and keeps the second half of the circular result;
the backward transforms ``dz[jS : (j+2)S]`` for dv (its first half) and correlates it with
``v[jS : (j+1)S]`` for dkc, summed over the blocks as over the batch (README section 1).
"""

from __future__ import annotations

from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor

from .plan import ConvPlan


def compute_dtype(u: Tensor) -> torch.dtype:
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def filter_spectrum(kc: Tensor, plan: ConvPlan, backend: ModuleType, dtype: torch.dtype) -> Tensor:
    return backend.rfft(kc.to(dtype), plan.fft_size, plan.keep_bins)


def _as_compute(kf: Tensor, dtype: torch.dtype) -> Tensor:
    """A prepared spectrum in the call's precision (fp64 calls get complex128)."""
    return kf.to(torch.complex128 if dtype == torch.float64 else torch.complex64)


def window(z_lin: Tensor, plan: ConvPlan) -> Tensor:
    if not plan.fold:
        return z_lin
    L = plan.seq_len
    head, tail = z_lin[..., :L], z_lin[..., L:]
    return torch.cat([head[..., : L - 1] + tail, head[..., L - 1 :]], dim=-1)


def window_adjoint(dz: Tensor, plan: ConvPlan) -> Tensor:
    if not plan.fold:
        return dz
    return torch.cat([dz, dz[..., : plan.seq_len - 1]], dim=-1)


def blocks(x: Tensor, plan: ConvPlan, ahead: bool) -> Tensor:
    """``[B, H, L]`` -> the windows of a blocked plan ``[B, H, NB, 2S]`` (a strided view of one
    padded copy): ``x[(j-1)S : (j+1)S]`` (the forward's, ``ahead=False``) or
    ``x[jS : (j+2)S]`` (the backward's ``dz``, ``ahead=True``), zero outside ``[0, L)``."""
    S, NB, L = plan.block, plan.num_blocks, x.shape[-1]
    left = 0 if ahead else S
    padded = F.pad(x, (left, (NB + 1) * S - left - L))
    return padded.unfold(-1, 2 * S, S)


def unblock(z: Tensor, L: int) -> Tensor:
    """``[B, H, NB, S]`` block outputs -> ``[B, H, L]``."""
    return z.reshape(*z.shape[:-2], -1)[..., :L]


def _blocked_conv(v: Tensor, kf: Tensor, plan: ConvPlan, backend: ModuleType) -> Tensor:
    """z = causal conv(v, kc) of a blocked plan, on the primitives."""
    n, S, keep = plan.fft_size, plan.block, plan.keep_bins
    Z = backend.irfft(backend.rfft(blocks(v, plan, False), n, keep) * kf[:, None], n, n, keep)
    return unblock(Z[..., S:], v.shape[-1])


def postgate_grad(dy: Tensor, z: Tensor, dtype: torch.dtype) -> Tensor:
    """``dy * z`` in ``dtype``, rounded once: one elementwise product where the three dtypes
    agree (a half-precision product is computed in fp32 and rounded, the same bits as the fp32
    route), else in fp32 (or fp64) and converted. The fp32 route costs four passes over
    tensors of the batch's size in eager mode (1.2 ms of an H100 at B*H*L = 2^27, bf16,
    measured), the direct product one."""
    if dy.dtype == z.dtype == dtype:
        return dy * z
    wide = torch.promote_types(compute_dtype(dy), compute_dtype(z))
    return (dy.to(wide) * z.to(wide)).to(dtype)


def gated_input(u: Tensor, pregate: Tensor | None, dtype: torch.dtype) -> Tensor:
    v = u.to(dtype)
    return v * pregate.to(dtype) if pregate is not None else v


def forward(
    u: Tensor,
    kc: Tensor,
    kf: Tensor | None,
    pregate: Tensor | None,
    postgate: Tensor | None,
    bias: Tensor | None,
    plan: ConvPlan,
    backend: ModuleType,
) -> Tensor:
    return _forward(u, kc, kf, pregate, postgate, bias, plan, backend, False)[0]


def forward_with_z(
    u: Tensor,
    kc: Tensor,
    kf: Tensor | None,
    pregate: Tensor | None,
    postgate: Tensor | None,
    bias: Tensor | None,
    plan: ConvPlan,
    backend: ModuleType,
) -> tuple[Tensor, Tensor | None]:
    """``(y, z)``: the forward and z, the convolution before the postgate and the skip term,
    in u's dtype; z is None where the backend's kernel for the plan keeps none (the backward
    then computes it)."""
    return _forward(u, kc, kf, pregate, postgate, bias, plan, backend, True)


def _forward(u, kc, kf, pregate, postgate, bias, plan, backend, want_z):
    if u.shape[0] == 0:  # an empty batch: nothing to transform (as an empty conv1d batch)
        return torch.empty_like(u), (torch.empty_like(u) if want_z else None)
    dtype = compute_dtype(u)
    n, keep = plan.fft_size, plan.keep_bins
    kf = filter_spectrum(kc, plan, backend, dtype) if kf is None else _as_compute(kf, dtype)
    fused_z = getattr(backend, "fused_forward_z", None)
    if want_z and fused_z is not None:
        yz = fused_z(u, kf, pregate, postgate, bias, plan)
        if yz is not None:
            return yz
    fused = getattr(backend, "fused_forward", None)
    if fused is not None:  # a backend with a fused kernel for this plan takes the whole forward
        y = fused(u, kf, pregate, postgate, bias, plan)
        if y is not None:
            return y, None
    v = gated_input(u, pregate, dtype)
    if plan.blocked:
        z = _blocked_conv(v, kf, plan, backend)
    else:
        z = window(backend.irfft(backend.rfft(v, n, keep) * kf, n, plan.out_len, keep), plan)
    y = z * postgate.to(dtype) if postgate is not None else z
    if bias is not None:
        y = y + bias.to(dtype)[:, None] * v
    return y.to(u.dtype), (z.to(u.dtype) if want_z else None)


def backward(
    dy: Tensor,
    u: Tensor,
    kc: Tensor,
    kf: Tensor | None,
    pregate: Tensor | None,
    postgate: Tensor | None,
    bias: Tensor | None,
    plan: ConvPlan,
    backend: ModuleType,
    needs: tuple[bool, bool, bool, bool, bool],
    z: Tensor | None = None,
) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    """Gradients for (u, kc, pregate, postgate, bias); None where ``needs`` says not wanted.
    ``z``: the forward's convolution before the postgate (``forward_with_z``), when it kept
    one: the postgate's gradient is then ``dy * z``, and nothing transforms v for it."""
    need_u, need_k, need_pre, need_post, need_bias = needs
    if u.shape[0] == 0:  # an empty batch: sums over it are zero, the rest is empty
        return (
            torch.empty_like(u) if need_u else None,
            torch.zeros_like(kc) if need_k else None,
            torch.empty_like(pregate) if need_pre else None,
            torch.empty_like(postgate) if need_post else None,
            torch.zeros_like(bias) if need_bias else None,
        )
    dtype = compute_dtype(u)
    n, keep, L = plan.fft_size, plan.keep_bins, plan.seq_len
    kf = filter_spectrum(kc, plan, backend, dtype) if kf is None else _as_compute(kf, dtype)
    z = z if need_post else None
    fused = getattr(backend, "fused_backward", None)
    if fused is not None:
        # a fused kernel takes the kept z itself (dy * z where it loads dy)
        grads = fused(dy, u, kc, kf, pregate, postgate, bias, plan, needs, **_kept(z))
        if grads is not None:
            return grads
    if z is not None:
        d_post = postgate_grad(dy, z, postgate.dtype)
        grads = backward(
            dy, u, kc, kf, pregate, postgate, bias, plan, backend, (*needs[:3], False, needs[4])
        )
        return (*grads[:3], d_post, grads[4])
    dy = dy.to(dtype)
    v = gated_input(u, pregate, dtype)
    if plan.blocked:
        return _blocked_backward(dy, u, v, kc, kf, pregate, postgate, bias, plan, backend, needs)
    V = backend.rfft(v, n, keep) if (need_k or need_post) else None

    d_post = None
    if need_post:
        z = window(backend.irfft(V * kf, n, plan.out_len, keep), plan)
        d_post = (dy * z).to(postgate.dtype)
    dz = dy * postgate.to(dtype) if postgate is not None else dy
    d_bias = (dy * v).sum(dim=(0, 2)).to(bias.dtype) if need_bias else None

    d_u = d_pre = d_k = None
    if need_u or need_pre or need_k:
        DL = backend.rfft(window_adjoint(dz, plan), n, keep)
        if need_k:
            d_k = backend.irfft((DL * torch.conj_physical(V)).sum(dim=0), n, kc.shape[-1], keep).to(
                kc.dtype
            )
        if need_u or need_pre:
            dv = backend.irfft(DL * torch.conj_physical(kf), n, L, keep)
            d_u, d_pre = _input_grads(dv, dy, u, pregate, bias, need_u, need_pre)
    return d_u, d_k, d_pre, d_post, d_bias


def _kept(z: Tensor | None) -> dict:
    """``fused_backward``'s keyword for a kept z: none without one (a backend's fused backward
    may take no ``z``, and then is never handed one: ``keeps_z`` says whether its forward keeps
    one)."""
    return {} if z is None else {"z": z}


def _input_grads(dv, dy, u, pregate, bias, need_u, need_pre):
    """``(d_u, d_pregate)`` from the correlation ``dv`` (compute dtype): the skip term's share
    added, then split between u and the pregate."""
    if bias is not None:
        dv = dv + bias.to(dv.dtype)[:, None] * dy
    d_pre = (dv * u.to(dv.dtype)).to(pregate.dtype) if need_pre else None
    d_u = None
    if need_u:
        d_u = (dv * pregate.to(dv.dtype) if pregate is not None else dv).to(u.dtype)
    return d_u, d_pre


def _blocked_backward(dy, u, v, kc, kf, pregate, postgate, bias, plan, backend, needs):
    """``backward`` for a blocked plan (dy and v in the compute dtype)."""
    need_u, need_k, need_pre, need_post, need_bias = needs
    dtype = v.dtype
    n, keep, S, L = plan.fft_size, plan.keep_bins, plan.block, plan.seq_len
    d_post = None
    if need_post:
        d_post = (dy * _blocked_conv(v, kf, plan, backend)).to(postgate.dtype)
    dz = dy * postgate.to(dtype) if postgate is not None else dy
    d_bias = (dy * v).sum(dim=(0, 2)).to(bias.dtype) if need_bias else None

    d_u = d_pre = d_k = None
    if need_u or need_pre or need_k:
        DL = backend.rfft(blocks(dz, plan, True), n, keep)  # [B, H, NB, n//2+1]
        if need_k:
            v_blocks = F.pad(v, (0, plan.num_blocks * S - L)).unflatten(-1, (-1, S))
            V = backend.rfft(v_blocks, n, keep)
            cross = (DL * torch.conj_physical(V)).sum(dim=(0, 2))
            d_k = backend.irfft(cross, n, kc.shape[-1], keep).to(kc.dtype)
        if need_u or need_pre:
            dv = unblock(backend.irfft(DL * torch.conj_physical(kf)[:, None], n, S, keep), L)
            d_u, d_pre = _input_grads(dv, dy, u, pregate, bias, need_u, need_pre)
    return d_u, d_k, d_pre, d_post, d_bias
