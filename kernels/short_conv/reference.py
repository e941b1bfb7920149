"""The ``torch`` backend: the short depthwise convolution as a sum of K shifted slices.

Notation: the time axis is ``t_dim`` (-1 for layout "bdl", -2 for "bld"); ``pad_left`` zeros
go before the sequence and ``K - 1 - pad_left`` after it, so with ``xp`` the padded input

    y[t] = bias + sum_{j<K} w[j] * xp[t + j]                 (t < L, per channel)

Backward (``dyp`` is dy padded the other way round: ``K - 1 - pad_left`` before, ``pad_left``
after, so the correlation with the filter lines up):

    dx[t]  = sum_{j<K} w[j] * dyp[t + K - 1 - j]
    dw[j]  = sum_{b,t} dy[t] * xp[t + j]
    dbias  = sum_{b,t} dy[t]

An ``input_bias`` (the bias of a linear layer before the convolution, folded in) is added to x
inside the sequence, not to the padding: ``xp`` pads ``x + input_bias``, and its gradient is
``sum_{b,t} dx[t]``.

K is small (Hyena: 3), so K fused multiply-adds over the whole tensor beat an im2col or a
grouped convolution; ``K > L`` is allowed (the taps that fall outside the sequence see zeros).
Everything runs in fp32 (fp64 for fp64 inputs); callers cast the results back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

PADDINGS = ("causal", "same")
LAYOUTS = ("bdl", "bld")


def pad_left(padding: str, K: int) -> int:
    """Zeros before the sequence: all K - 1 for causal; for same, PyTorch's split, the extra
    zero of an even K going after the sequence (``conv1d(padding="same")``)."""
    return K - 1 if padding == "causal" else (K - 1) // 2


def compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _pad_time(x: Tensor, before: int, after: int, layout: str) -> Tensor:
    pads = (before, after) if layout == "bdl" else (0, 0, before, after)
    return F.pad(x, pads)


def _per_channel(v: Tensor, layout: str) -> Tensor:
    """A [D] vector shaped to broadcast against the layout: [D, 1] for "bdl", [D] for "bld"."""
    return v[:, None] if layout == "bdl" else v


def _tap(w: Tensor, j: int, layout: str) -> Tensor:
    return _per_channel(w[:, j], layout)


def _window(xp: Tensor, start: int, L: int, layout: str) -> Tensor:
    return xp.narrow(-1 if layout == "bdl" else -2, start, L)


def _time_dims(layout: str) -> tuple[int, int]:
    """The dims summed to reduce to channels: (batch, time)."""
    return (0, 2) if layout == "bdl" else (0, 1)


def _biased(x: Tensor, input_bias: Tensor | None, dtype: torch.dtype, layout: str) -> Tensor:
    x = x.to(dtype)
    return x if input_bias is None else x + _per_channel(input_bias.to(dtype), layout)


def forward(
    x: Tensor,
    w: Tensor,
    bias: Tensor | None,
    padding: str,
    layout: str,
    input_bias: Tensor | None = None,
) -> Tensor:
    """y in ``compute_dtype(x)``; x ``[B, D, L]`` or ``[B, L, D]``, w ``[D, K]``, bias and
    input_bias ``[D]``."""
    dtype = compute_dtype(x)
    K = w.shape[1]
    L = x.shape[-1] if layout == "bdl" else x.shape[-2]
    before = pad_left(padding, K)
    xp = _pad_time(_biased(x, input_bias, dtype, layout), before, K - 1 - before, layout)
    wc = w.to(dtype)
    y = _tap(wc, 0, layout) * _window(xp, 0, L, layout)
    for j in range(1, K):
        y = y + _tap(wc, j, layout) * _window(xp, j, L, layout)
    if bias is not None:
        y = y + _per_channel(bias.to(dtype), layout)
    return y


def backward(
    dy: Tensor,
    x: Tensor,
    w: Tensor,
    padding: str,
    layout: str,
    needs: tuple[bool, bool, bool, bool],
    input_bias: Tensor | None = None,
) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    """(dx, dw, dbias, d input_bias) in ``compute_dtype(x)``; None where ``needs`` (the same
    four) says not wanted."""
    need_x, need_w, need_bias, need_ib = needs
    dtype = compute_dtype(x)
    K = w.shape[1]
    L = x.shape[-1] if layout == "bdl" else x.shape[-2]
    before = pad_left(padding, K)
    after = K - 1 - before
    dy = dy.to(dtype)
    reduce_dims = _time_dims(layout)

    dx = dw = dbias = dib = None
    if need_x or need_ib:
        dyp = _pad_time(dy, after, before, layout)
        wc = w.to(dtype)
        dx = _tap(wc, K - 1, layout) * _window(dyp, 0, L, layout)
        for j in range(K - 1):
            dx = dx + _tap(wc, j, layout) * _window(dyp, K - 1 - j, L, layout)
        if need_ib:
            dib = dx.sum(dim=reduce_dims)
        if not need_x:
            dx = None
    if need_w:
        xp = _pad_time(_biased(x, input_bias, dtype, layout), before, after, layout)
        dw = torch.stack(
            [(dy * _window(xp, j, L, layout)).sum(dim=reduce_dims) for j in range(K)], dim=1
        )
    if need_bias:
        dbias = dy.sum(dim=reduce_dims)
    return dx, dw, dbias, dib
