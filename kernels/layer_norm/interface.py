"""Public entry point: ``add_layer_norm``.

Three tiers, as in the rest of ``kernels``: the public function validates and documents shapes
and resolves the output dtype (autocast) and the backend; a ``torch.library`` custom op (with a
fake implementation and a registered backward) makes the add and the norm one opaque node for
autograd and ``torch.compile``; the backend does the math on ``[N, d]`` rows.

Aliasing: a custom op may not return one tensor twice, nor an input. The forward always writes
the stream as a new tensor (also without a residual). The backward's ``dx`` and ``d_residual``
are the same values; when x and the residual have the same dtype the op returns them once and
the autograd wrapper hands that tensor to both inputs.
"""

from __future__ import annotations

import importlib
import numbers
from types import ModuleType

import torch
from torch import Tensor

from ..backends import (
    FLOAT_DTYPES,
    autograd_function,
    check_float_tensor,
    check_same_device,
    custom_op,
    triton_unusable,
)
from .reference import acc_dtype

BACKENDS = ("auto", "torch", "triton")
_BACKEND_MODULES = {
    "torch": "kernels.layer_norm.reference",
    "triton": "kernels.layer_norm.triton",  # imports triton: loaded on first use only
}
_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _backend_module(name: str) -> ModuleType:
    return importlib.import_module(_BACKEND_MODULES[name])


@torch.compiler.assume_constant_result
def _triton_max_d() -> int:
    return _backend_module("triton").MAX_D


def resolve_backend(
    backend: str, device: torch.device, d: int, dtypes: tuple[torch.dtype, ...]
) -> str:
    """The backend that runs: ``"auto"`` is Triton on CUDA for the inputs it takes (x and
    residual in fp16/bf16/fp32, ``d <= MAX_D``) and torch otherwise; an explicit ``"triton"``
    that cannot run raises."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}")
    if backend == "torch" or (backend == "auto" and device.type != "cuda"):
        return "torch"
    reason = triton_unusable(device.type, _BACKEND_MODULES["triton"])
    if reason is None and d > _triton_max_d():
        reason = f"it takes rows of up to {_triton_max_d()} features; got d={d}"
    if reason is None and any(t not in _TRITON_DTYPES for t in dtypes):
        reason = f"it takes fp16, bf16 or fp32 x and residual; got {', '.join(map(str, dtypes))}"
    if reason is None:
        return "triton"
    if backend == "triton":
        raise ValueError(f"backend='triton' is not usable here: {reason}; use backend='torch'")
    return "torch"


def default_out_dtype(x: Tensor) -> torch.dtype:
    """The dtype of y when none is asked for: the autocast dtype under ``torch.autocast`` (what
    the next matmul computes in; fp64 is never autocast), else x's dtype."""
    if torch.is_autocast_enabled(x.device.type) and x.dtype != torch.float64:
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


# ---------------------------------------------------------------------------------------------
# Validation


def _check_inputs(x, residual, weight, bias, eps, out_dtype) -> None:
    x = check_float_tensor("x", x)
    if x.dim() < 1 or x.shape[-1] < 1:
        raise ValueError(
            f"x must have shape [..., d] with d >= 1 features; got shape {tuple(x.shape)}"
        )
    d = x.shape[-1]
    if residual is not None:
        check_float_tensor("residual", residual)
        if residual.shape != x.shape:
            raise ValueError(
                f"residual must have the shape of x {tuple(x.shape)}; got {tuple(residual.shape)}"
            )
        check_same_device("residual", residual, x)
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None:
            check_float_tensor(name, t)
            if t.shape != (d,):
                raise ValueError(f"{name} must have shape (d,) = ({d},); got {tuple(t.shape)}")
            check_same_device(name, t, x)
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps must be a real number; got {type(eps).__name__}")
    if not 0.0 <= float(eps) < float("inf"):
        raise ValueError(f"eps must be a finite number >= 0; got {eps}")
    if out_dtype is not None and (
        not isinstance(out_dtype, torch.dtype) or out_dtype not in FLOAT_DTYPES
    ):
        raise TypeError(f"out_dtype must be None or one of {FLOAT_DTYPES}; got {out_dtype!r}")


# ---------------------------------------------------------------------------------------------
# Custom ops


def _add_layer_norm_impl(
    x: Tensor,
    residual: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    out_dtype: torch.dtype,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    with torch.autocast(x.device.type, enabled=False):
        y, r, mean, rstd = _backend_module(backend).forward(
            x, residual, weight, bias, eps, out_dtype
        )
    return y.contiguous(), r.contiguous(), mean.contiguous(), rstd.contiguous()


_add_layer_norm_op, _add_layer_norm = custom_op(
    "longconv::add_layer_norm", _add_layer_norm_impl, mutates_args=()
)


@_add_layer_norm_op.register_fake
def _(x, residual, weight, bias, eps, out_dtype, backend):
    acc = acc_dtype(x, residual)
    stats = x.new_empty(x.shape[0], dtype=acc)
    return (
        x.new_empty(x.shape, dtype=out_dtype),
        x.new_empty(x.shape, dtype=acc),
        stats,
        torch.empty_like(stats),
    )


def _add_layer_norm_backward_impl(
    dy: Tensor | None,
    d_residual_out: Tensor | None,
    residual_out: Tensor,
    mean: Tensor,
    rstd: Tensor,
    weight: Tensor | None,
    x_dtype: torch.dtype,
    residual_dtype: torch.dtype,
    bias_dtype: torch.dtype | None,
    needs: list[bool],
    backend: str,
) -> list[Tensor]:
    need_x, need_res, need_w, need_b = needs
    with torch.autocast(residual_out.device.type, enabled=False):
        if backend == "triton" and dy is not None:
            dx, d_res, dw, db = _backend_module("triton").backward(
                dy, d_residual_out, residual_out, mean, rstd, weight, x_dtype, residual_dtype,
                tuple(needs),
            )  # fmt: skip
        else:  # the torch math (also the triton backend's, when y had no gradient)
            d_pre, dw, db = _backend_module("torch").backward(
                dy, d_residual_out, residual_out, mean, rstd, weight,
                (need_x or need_res, need_w, need_b),
            )  # fmt: skip
            dx = d_pre.to(x_dtype) if need_x else None
            # a copy only where the two would be one tensor (outputs may not alias)
            d_res = d_pre.to(residual_dtype, copy=need_x) if need_res else None
    # custom ops return tensors only: an unneeded gradient travels as an empty tensor
    empty = residual_out.new_empty(0)
    return [
        dx.contiguous() if need_x else empty,
        d_res.contiguous() if need_res else empty.clone(),
        dw.to(weight.dtype) if need_w else empty.clone(),
        db.to(bias_dtype) if need_b else empty.clone(),
    ]


_add_layer_norm_backward_op, _add_layer_norm_backward = custom_op(
    "longconv::add_layer_norm_backward", _add_layer_norm_backward_impl, mutates_args=()
)


@_add_layer_norm_backward_op.register_fake
def _(dy, d_residual_out, residual_out, mean, rstd, weight, x_dtype, residual_dtype, bias_dtype,
      needs, backend):  # fmt: skip
    need_x, need_res, need_w, need_b = needs
    shape, d = residual_out.shape, residual_out.shape[-1]
    return [
        residual_out.new_empty(shape, dtype=x_dtype) if need_x else residual_out.new_empty(0),
        residual_out.new_empty(shape, dtype=residual_dtype)
        if need_res
        else residual_out.new_empty(0),
        weight.new_empty(d) if need_w else residual_out.new_empty(0),
        residual_out.new_empty(d, dtype=bias_dtype) if need_b else residual_out.new_empty(0),
    ]


def _setup_context(ctx, inputs, output):
    x, residual, weight, bias, _eps, _out_dtype, backend = inputs
    _y, residual_out, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    # an unused y or stream (the final norm's stream) arrives as None, not as zeros
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(residual_out, mean, rstd, weight)
    ctx.x_dtype = x.dtype
    ctx.residual_dtype = residual.dtype if residual is not None else None
    ctx.bias_dtype = bias.dtype if bias is not None else None
    ctx.backend = backend


def _backward(ctx, dy, d_residual_out, _d_mean, _d_rstd):
    residual_out, mean, rstd, weight = ctx.saved_tensors
    n = ctx.needs_input_grad
    need_x, need_res, need_w, need_b = n[0], n[1], n[2], n[3]
    if dy is None and d_residual_out is None or not any((need_x, need_res, need_w, need_b)):
        return (None,) * 7
    # dx and d_residual are the same values: computed once when their dtypes agree
    shared = need_x and need_res and ctx.x_dtype == ctx.residual_dtype
    grads = _add_layer_norm_backward(
        dy.contiguous() if dy is not None else None,
        d_residual_out.contiguous() if d_residual_out is not None else None,
        residual_out,
        mean,
        rstd,
        weight,
        ctx.x_dtype,
        ctx.residual_dtype or ctx.x_dtype,
        ctx.bias_dtype,
        [need_x, need_res and not shared, need_w, need_b],
        ctx.backend,
    )
    dx = grads[0] if need_x else None
    d_res = dx if shared else (grads[1] if need_res else None)
    return dx, d_res, grads[2] if need_w else None, grads[3] if need_b else None, None, None, None


# the op's autograd formula, and the Function the public call runs with it
_AddLayerNormFunction = autograd_function(
    "_AddLayerNormFunction", _add_layer_norm_op, _add_layer_norm, _setup_context, _backward
)


# ---------------------------------------------------------------------------------------------
# Public API


def add_layer_norm(
    x: Tensor,
    residual: Tensor | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
    *,
    out_dtype: torch.dtype | None = None,
    backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """The residual add and the LayerNorm of a pre-norm block, fused: ``(y, residual_out)``.

        residual_out = residual + x            (fp32; x alone when residual is None)
        y = LayerNorm(residual_out) * weight + bias      (biased variance, eps inside the sqrt)

    What a pre-norm block does between branches: ``x`` is the branch that just ran (after its
    dropout), ``residual`` the stream it joins, ``y`` the next branch's input, written directly
    in the dtype its first matmul computes in. The backward is one kernel too:
    ``d_pre = LayerNorm_backward(dy) + d_residual_out`` is both ``dx`` (in x's dtype) and
    ``d_residual`` (in the residual's), with the weight and bias gradients summed without
    atomics (the same bits on every run).

    Args:
        x: ``[..., d]``, any float dtype.
        residual: like x (any float dtype; fp32 in the blocks), or None for the first block.
        weight, bias: ``[d]`` (any float dtype) or None (then 1 and 0).
        eps: added to the variance.
        out_dtype: y's dtype. Default: the autocast dtype under ``torch.autocast`` (bf16 for
            the next matmul), else x's dtype.
        backend: "auto", "torch" (the math in torch ops, any device) or "triton" (one fused
            kernel each way; CUDA, or CPU under TRITON_INTERPRET=1; fp16/bf16/fp32 x and
            residual, d up to ``kernels.layer_norm.triton.MAX_D``). "auto" picks triton on
            CUDA for the inputs it takes and torch otherwise.

    Returns:
        ``y`` (x's shape, ``out_dtype``) and ``residual_out`` (x's shape, fp32; fp64 when x or
        the residual is fp64), both differentiable; an unused ``residual_out`` (the last norm's)
        costs the backward nothing. Gradients come back in each input's dtype.
    """
    _check_inputs(x, residual, weight, bias, eps, out_dtype)
    if out_dtype is None:
        out_dtype = default_out_dtype(x)
    d = x.shape[-1]
    dtypes = (x.dtype,) if residual is None else (x.dtype, residual.dtype)
    name = resolve_backend(backend, x.device, d, dtypes)
    rows = x.contiguous().view(-1, d)
    res_rows = residual.contiguous().view(-1, d) if residual is not None else None
    y, residual_out, _, _ = _AddLayerNormFunction.apply(
        rows, res_rows, weight, bias, float(eps), out_dtype, name
    )
    return y.view(x.shape), residual_out.view(x.shape)


__all__ = ["add_layer_norm", "default_out_dtype", "resolve_backend"]
