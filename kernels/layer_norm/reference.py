"""The ``torch`` backend: the fused residual add + LayerNorm written out in torch ops.

Notation: rows of ``d`` features; ``x`` the branch, ``residual`` the stream (or none), ``w``,
``b`` the affine weight and bias (1 and 0 when absent):

    r    = residual + x                       (the new stream, in the accumulation dtype)
    mean = sum_j r_j / d,   rstd = 1 / sqrt(sum_j (r_j - mean)^2 / d + eps)
    xhat = (r - mean) * rstd
    y    = xhat * w + b

Backward, with ``dy`` the gradient of y and ``dr`` that of the stream ``r`` (zero when absent),
``g = dy * w``:

    d_pre = rstd * (g - mean_j(g) - xhat * mean_j(g * xhat)) + dr
    dx = d_residual = d_pre,   dw = sum_rows dy * xhat,   db = sum_rows dy

The variance is the two-pass one (the mean subtracted before squaring), as the kernels compute
it. Everything runs in fp32 (fp64 when an input is fp64); callers cast the results.
"""

from __future__ import annotations

import torch
from torch import Tensor


def acc_dtype(*tensors: Tensor | None) -> torch.dtype:
    """fp64 when any input is fp64, else fp32: the dtype of the stream and of the statistics."""
    if any(t is not None and t.dtype == torch.float64 for t in tensors):
        return torch.float64
    return torch.float32


def forward(
    x: Tensor,
    residual: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    out_dtype: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(y, residual_out, mean, rstd)`` for x ``[N, d]``: y in ``out_dtype``, the stream
    ``[N, d]`` and the statistics ``[N]`` in ``acc_dtype``; every output a new tensor."""
    acc = acc_dtype(x, residual)
    if residual is None:
        r = x.to(acc, copy=True)  # never an alias of x: custom ops return new tensors
    else:
        r = x.to(acc) + residual.to(acc)
    mean = r.mean(dim=-1)
    centred = r - mean[:, None]
    rstd = torch.rsqrt(centred.square().mean(dim=-1) + eps)
    y = centred * rstd[:, None]
    if weight is not None:
        y = y * weight.to(acc)
    if bias is not None:
        y = y + bias.to(acc)
    return y.to(out_dtype), r, mean, rstd


def backward(
    dy: Tensor | None,
    d_residual_out: Tensor | None,
    residual_out: Tensor,
    mean: Tensor,
    rstd: Tensor,
    weight: Tensor | None,
    needs: tuple[bool, bool, bool],
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """``(d_pre, dw, db)`` in the accumulation dtype (that of ``residual_out``); ``needs`` says
    which are wanted (None where not). ``dy`` or ``d_residual_out`` None: zero."""
    need_pre, need_w, need_b = needs
    acc = residual_out.dtype
    d_pre = dw = db = None
    if dy is None:
        if need_pre:
            d_pre = (
                d_residual_out.to(acc, copy=True)
                if d_residual_out is not None
                else torch.zeros_like(residual_out)
            )
        zeros = residual_out.new_zeros(residual_out.shape[-1])
        return d_pre, (zeros if need_w else None), (zeros.clone() if need_b else None)
    dy = dy.to(acc)
    xhat = (residual_out - mean[:, None]) * rstd[:, None]
    if need_pre:
        g = dy * weight.to(acc) if weight is not None else dy
        c1 = (g * xhat).mean(dim=-1, keepdim=True)
        c2 = g.mean(dim=-1, keepdim=True)
        d_pre = (g - c2 - xhat * c1) * rstd[:, None]
        if d_residual_out is not None:
            d_pre = d_pre + d_residual_out.to(acc)
    if need_w:
        dw = (dy * xhat).sum(dim=0)
    if need_b:
        db = dy.sum(dim=0)
    return d_pre, dw, db
