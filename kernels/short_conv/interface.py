"""Public entry point: ``short_conv``.

Three tiers, as in the rest of ``kernels``: the public function validates and documents shapes;
a ``torch.library`` custom op (with a fake implementation and a registered backward) makes the
convolution one opaque node for autograd and ``torch.compile``; the backend does the math.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch
from torch import Tensor

from ..backends import (
    autograd_function,
    check_float_tensor,
    check_same_device,
    custom_op,
    triton_unusable,
)
from .reference import LAYOUTS, PADDINGS

BACKENDS = ("auto", "torch", "triton")
_BACKEND_MODULES = {
    "torch": "kernels.short_conv.reference",
    "triton": "kernels.short_conv.triton",  # imports triton: loaded on first use only
}


def _backend_module(name: str) -> ModuleType:
    return importlib.import_module(_BACKEND_MODULES[name])


@torch.compiler.assume_constant_result
def _triton_max_taps() -> int:
    return _backend_module("triton").MAX_TAPS


def resolve_backend(backend: str, device: torch.device, taps: int) -> str:
    """The backend that runs: ``"auto"`` is Triton on CUDA for the filters it takes (up to
    ``MAX_TAPS`` taps) and torch otherwise; an explicit ``"triton"`` that cannot run raises."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}")
    if backend == "torch" or (backend == "auto" and device.type != "cuda"):
        return "torch"
    reason = triton_unusable(device.type, _BACKEND_MODULES["triton"])
    if reason is None and taps > _triton_max_taps():
        reason = f"it takes filters of up to {_triton_max_taps()} taps; got w with K={taps} taps"
    if reason is None:
        return "triton"
    if backend == "triton":
        raise ValueError(f"backend='triton' is not usable here: {reason}; use backend='torch'")
    return "torch"


# ---------------------------------------------------------------------------------------------
# Validation


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}; got {value!r}")


def _check_x(x: Tensor, layout: str) -> tuple[int, int, int]:
    """Returns (B, D, L) whatever the layout."""
    shape_name = "(B, D, L)" if layout == "bdl" else "(B, L, D)"
    if x.dim() != 3:
        raise ValueError(
            f"x must have shape {shape_name} for layout={layout!r}; got shape {tuple(x.shape)}"
        )
    B, D, L = x.shape if layout == "bdl" else (x.shape[0], x.shape[2], x.shape[1])
    if L < 1:
        raise ValueError(
            f"x must have a sequence length L >= 1; got L={L} (shape {tuple(x.shape)})"
        )
    if D < 1:
        raise ValueError(f"x must have D >= 1 channels; got D={D} (shape {tuple(x.shape)})")
    return B, D, L


def _check_w(w: Tensor, D: int) -> None:
    if w.dim() != 2:
        raise ValueError(f"w must have shape (D, K) = ({D}, K); got shape {tuple(w.shape)}")
    if w.shape[0] != D:
        raise ValueError(
            f"w must have D={D} rows to match x's channels; got w of shape {tuple(w.shape)}"
        )
    if w.shape[1] < 1:
        raise ValueError(f"w must have at least one tap (K >= 1); got shape {tuple(w.shape)}")


def _check_bias(bias: Tensor, D: int, name: str = "bias") -> None:
    if bias.shape != (D,):
        raise ValueError(f"{name} must have shape (D,) = ({D},); got {tuple(bias.shape)}")


# ---------------------------------------------------------------------------------------------
# Custom ops


def _short_conv_impl(
    x: Tensor,
    w: Tensor,
    bias: Tensor | None,
    input_bias: Tensor | None,
    padding: str,
    layout: str,
    backend: str,
) -> Tensor:
    with torch.autocast(x.device.type, enabled=False):
        y = _backend_module(backend).forward(x, w, bias, padding, layout, input_bias=input_bias)
    return y.to(x.dtype).contiguous()


_short_conv_op, _short_conv = custom_op("longconv::short_conv", _short_conv_impl, mutates_args=())


@_short_conv_op.register_fake
def _(x, w, bias, input_bias, padding, layout, backend):
    return x.new_empty(x.shape)


def _short_conv_backward_impl(
    dy: Tensor,
    x: Tensor,
    w: Tensor,
    bias: Tensor | None,
    input_bias: Tensor | None,
    padding: str,
    layout: str,
    backend: str,
    needs: list[bool],
) -> list[Tensor]:
    with torch.autocast(x.device.type, enabled=False):
        grads = _backend_module(backend).backward(
            dy, x, w, padding, layout, tuple(needs), input_bias=input_bias
        )
    # custom ops return tensors only: an unneeded gradient travels as an empty tensor
    return [
        g.to(like.dtype).contiguous() if g is not None else dy.new_empty(0)
        for g, like in zip(grads, (x, w, bias, input_bias), strict=True)
    ]


_short_conv_backward_op, _short_conv_backward = custom_op(
    "longconv::short_conv_backward", _short_conv_backward_impl, mutates_args=()
)


@_short_conv_backward_op.register_fake
def _(dy, x, w, bias, input_bias, padding, layout, backend, needs):
    return [
        t.new_empty(t.shape) if (need and t is not None) else dy.new_empty(0)
        for need, t in zip(needs, (x, w, bias, input_bias), strict=True)
    ]


def _setup_context(ctx, inputs, output):
    x, w, bias, input_bias, *static = inputs
    ctx.save_for_backward(x, w, bias, input_bias)
    ctx.static = static


def _backward(ctx, dy):
    x, w, bias, input_bias = ctx.saved_tensors
    n = ctx.needs_input_grad
    needs = [n[0], n[1], n[2] and bias is not None, n[3] and input_bias is not None]
    grads = _short_conv_backward(dy.contiguous(), x, w, bias, input_bias, *ctx.static, needs)
    dx, dw, dbias, dib = (g if need else None for g, need in zip(grads, needs, strict=True))
    return dx, dw, dbias, dib, *([None] * len(ctx.static))


# the op's autograd formula, and the Function the public call runs with it
_ShortConvFunction = autograd_function(
    "_ShortConvFunction", _short_conv_op, _short_conv, _setup_context, _backward
)


# ---------------------------------------------------------------------------------------------
# Public API


def short_conv(
    x: Tensor,
    w: Tensor,
    bias: Tensor | None = None,
    *,
    input_bias: Tensor | None = None,
    padding: str = "causal",
    layout: str = "bdl",
    backend: str = "auto",
) -> Tensor:
    """Short depthwise convolution: every channel of ``x`` with its own K-tap filter.

    Convention (PyTorch's and Hyena's: cross-correlation, no filter flip), with zeros outside
    the sequence and ``P`` zeros of padding before it:

        y[b, d, t] = bias[d] + sum_{j=0}^{K-1} w[d, j] * x[b, d, t - P + j]

    - ``padding="causal"``: ``P = K - 1``, so ``w[d, K-1]`` multiplies the current sample and
      ``w[d, 0]`` the one K-1 steps back; exactly
      ``F.conv1d(x, w[:, None], bias, padding=K-1, groups=D)[..., :L]``.
    - ``padding="same"``: ``P = (K - 1) // 2``, centred; exactly
      ``F.conv1d(x, w[:, None], bias, padding="same", groups=D)``: ``padding=K//2`` for odd K,
      and for even K the extra zero goes after the sequence (``w[d, K//2 - 1]`` is the
      current sample's tap).

    ``K > L`` is allowed: taps that fall outside the sequence see zeros.

    ``input_bias`` is added to ``x`` inside the sequence before the convolution (the padding
    stays zero): the bias of a linear layer that feeds the convolution, folded in so that
    its broadcast add and the reduction of its gradient cost nothing extra.

    Args:
        x: ``[B, D, L]`` (``layout="bdl"``) or ``[B, L, D]`` (``layout="bld"``), fp32/fp16/bf16
            (fp64 accepted, computed in fp64). ``L >= 1``.
        w: ``[D, K]`` depthwise filter, ``K >= 1`` (Hyena: 3), any float dtype.
        bias: ``[D]`` (any float dtype) or None.
        input_bias: ``[D]`` (any float dtype) or None, added to x before the convolution.
        padding: "causal" or "same".
        layout: "bdl" or "bld"; the output has the layout of ``x``.
        backend: "auto", "torch" (the reference: K fused multiply-adds over the tensor) or
            "triton" (one fused kernel each way; CUDA, or CPU under TRITON_INTERPRET=1; up to
            32 taps). "auto" picks triton on CUDA and torch elsewhere.

    Returns:
        The layout and shape of ``x``, in ``x.dtype``, accumulated in fp32. Gradients come back
        in each input's dtype. Under ``torch.autocast`` an fp32 ``x`` is first cast to the
        autocast dtype, like a convolution layer's input.
    """
    x = check_float_tensor("x", x)
    w = check_float_tensor("w", w)
    if bias is not None:
        bias = check_float_tensor("bias", bias)
    _check_choice("padding", padding, PADDINGS)
    _check_choice("layout", layout, LAYOUTS)
    _, D, _ = _check_x(x, layout)
    _check_w(w, D)
    name = resolve_backend(backend, x.device, w.shape[1])
    check_same_device("w", w, x)
    if bias is not None:
        _check_bias(bias, D)
        check_same_device("bias", bias, x)
    if input_bias is not None:
        input_bias = check_float_tensor("input_bias", input_bias)
        _check_bias(input_bias, D, "input_bias")
        check_same_device("input_bias", input_bias, x)

    if torch.is_autocast_enabled(x.device.type) and x.dtype == torch.float32:
        x = x.to(torch.get_autocast_dtype(x.device.type))
    return _ShortConvFunction.apply(x.contiguous(), w, bias, input_bias, padding, layout, name)


__all__ = ["short_conv", "resolve_backend"]
