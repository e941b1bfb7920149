"""Linear layers that change layout: [B, L, d] (what matmuls, norms and the residual stream
use) to and from [B, d, L] (what the convolutions use: the sequence contiguous).

A Hyena operator written with ``nn.Linear`` and ``transpose`` pays for each change of layout
with a transposed copy in both directions of the pass: the view that ``transpose`` returns is
copied by the next kernel that needs contiguous memory (``short_conv``, ``fftconv``, the
``out_proj`` matmul, and in the backward the matmuls of both projections). On hyena-s at
L = 4096 (H200) those copies took about 60 ms of a 345 ms training step, more than the FFT
convolutions. A matmul does not need a copy to read or write a transposed operand: cuBLAS
takes the layout as a flag. So both projections are batched matmuls over the batch with the
weight broadcast, each gradient written straight into the layout its consumer wants:

    to_channels:    z[b] = W x[b]^T + bias          [d_out, L]   (x: [B, L, d_in])
                    dx[b] = dz[b]^T W              [L, d_in]
    from_channels:  y[b] = v[b]^T W^T + bias        [L, d_out]   (v: [B, d_in, L])
                    dv[b] = W^T dy[b]^T            [d_in, L]
    dW = sum_b of the per-sequence products (a batched matmul, then a sum in fp32)

Under ``torch.autocast`` the matmuls run in the autocast dtype (as ``nn.Linear`` does) and the
gradients come back in each input's own dtype. The weights stay in ``nn.Linear`` modules, so
checkpoints and initialisation are unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["linear_from_channels", "linear_to_channels"]


def _compute_dtype(x: Tensor) -> torch.dtype:
    if torch.is_autocast_enabled(x.device.type) and x.dtype == torch.float32:
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def _weight_grad(a: Tensor, b: Tensor, dtype: torch.dtype) -> Tensor:
    """sum_b a[b] @ b[b]: one batched matmul, the partial products summed in fp32 or wider."""
    acc = torch.promote_types(a.dtype, torch.float32)
    return torch.bmm(a, b).sum(0, dtype=acc).to(dtype)


class _ToChannels(torch.autograd.Function):
    """``chunks`` outputs, row blocks of W: each its own contiguous [B, d_out / chunks, L]
    tensor, so that consumers of one block (a gate, the value) need no slice copy."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, chunks: int):
        dtype = _compute_dtype(x)
        xc, wc = x.to(dtype), weight.to(dtype)
        batch = x.shape[0]
        biases = bias.to(dtype).chunk(chunks) if bias is not None else (None,) * chunks
        outs = []
        with torch.autocast(x.device.type, enabled=False):
            for w_i, b_i in zip(wc.chunk(chunks), biases, strict=True):
                w_b, x_t = w_i.expand(batch, -1, -1), xc.transpose(1, 2)
                # the bias through the matmul's beta, never added in place to an output:
                # dynamo then traces the Function's forward with its outputs mutated, and
                # the compiled graph (CUDA, torch 2.11) gave every input a zero gradient
                outs.append(
                    torch.bmm(w_b, x_t) if b_i is None else torch.baddbmm(b_i[:, None], w_b, x_t)
                )
        ctx.save_for_backward(xc, wc)
        ctx.dtypes = (x.dtype, weight.dtype, None if bias is None else bias.dtype)
        ctx.set_materialize_grads(False)
        return tuple(outs)

    @staticmethod
    def backward(ctx, *dzs: Tensor | None) -> tuple[Tensor | None, ...]:
        xc, wc = ctx.saved_tensors
        x_dtype, w_dtype, b_dtype = ctx.dtypes
        w_blocks = wc.chunk(len(dzs))
        dzs = [dz.to(wc.dtype) if dz is not None else None for dz in dzs]
        dx = dw = db = None
        with torch.autocast(xc.device.type, enabled=False):
            if ctx.needs_input_grad[0]:
                # sum_i dz_i^T W_i, accumulated in place by the matmuls (beta = 1)
                for dz, w_i in zip(dzs, w_blocks, strict=True):
                    if dz is None:
                        continue
                    w_b = w_i.expand(dz.shape[0], -1, -1)
                    if dx is None:
                        dx = torch.bmm(dz.transpose(1, 2), w_b)
                    else:
                        dx.baddbmm_(dz.transpose(1, 2), w_b)
                if dx is None:
                    dx = torch.zeros_like(xc)
                dx = dx.to(x_dtype)
            if ctx.needs_input_grad[1]:
                dw = torch.cat(
                    [
                        _weight_grad(dz, xc, w_dtype)
                        if dz is not None
                        else w_i.new_zeros(w_i.shape, dtype=w_dtype)
                        for dz, w_i in zip(dzs, w_blocks, strict=True)
                    ]
                )  # [d_out, d_in]
            if b_dtype is not None and ctx.needs_input_grad[2]:
                db = torch.cat(
                    [
                        dz.sum((0, 2), dtype=torch.promote_types(dz.dtype, torch.float32))
                        if dz is not None
                        else w_i.new_zeros(w_i.shape[0], dtype=torch.float32)
                        for dz, w_i in zip(dzs, w_blocks, strict=True)
                    ]
                ).to(b_dtype)
        return dx, dw, db, None


class _FromChannels(torch.autograd.Function):
    @staticmethod
    def forward(ctx, v: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        dtype = _compute_dtype(v)
        vc, wc = v.to(dtype), weight.to(dtype)
        batch = v.shape[0]
        with torch.autocast(v.device.type, enabled=False):
            v_t, w_b = vc.transpose(1, 2), wc.t().expand(batch, -1, -1)
            # [B, L, d_out]; the bias through beta, not in place (see _ToChannels)
            y = torch.bmm(v_t, w_b) if bias is None else torch.baddbmm(bias.to(dtype), v_t, w_b)
        ctx.save_for_backward(vc, wc)
        ctx.dtypes = (v.dtype, weight.dtype, None if bias is None else bias.dtype)
        return y

    @staticmethod
    def backward(ctx, dy: Tensor) -> tuple[Tensor | None, ...]:
        vc, wc = ctx.saved_tensors
        v_dtype, w_dtype, b_dtype = ctx.dtypes
        dy = dy.to(wc.dtype)
        dv = dw = db = None
        with torch.autocast(dy.device.type, enabled=False):
            if ctx.needs_input_grad[0]:
                batch = dy.shape[0]
                dv = torch.bmm(wc.t().expand(batch, -1, -1), dy.transpose(1, 2)).to(v_dtype)
            if ctx.needs_input_grad[1]:
                dw = _weight_grad(dy.transpose(1, 2), vc.transpose(1, 2), w_dtype)
            if b_dtype is not None and ctx.needs_input_grad[2]:
                db = dy.sum((0, 1), dtype=torch.promote_types(dy.dtype, torch.float32))
                db = db.to(b_dtype)
        return dv, dw, db


def _check(name: str, x: Tensor, weight: Tensor, bias: Tensor | None, d_in_dim: int) -> None:
    if x.dim() != 3:
        raise ValueError(f"{name}: x must be 3-D; got shape {tuple(x.shape)}")
    if weight.dim() != 2 or weight.shape[1] != x.shape[d_in_dim]:
        raise ValueError(
            f"{name}: weight must be [d_out, {x.shape[d_in_dim]}] for x of shape "
            f"{tuple(x.shape)}; got {tuple(weight.shape)}"
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"{name}: bias must be [{weight.shape[0]}]; got {tuple(bias.shape)}")


def linear_to_channels(
    x: Tensor, weight: Tensor, bias: Tensor | None = None, chunks: int | None = None
) -> Tensor | tuple[Tensor, ...]:
    """``F.linear(x, weight, bias).transpose(1, 2)``, contiguous, without a transposed copy.

    x: [B, L, d_in]; weight: [d_out, d_in]; bias: [d_out] -> [B, d_out, L]. With ``chunks``:
    ``chunks`` contiguous tensors [B, d_out / chunks, L] (what ``.chunk(chunks, dim=1)`` of
    the output would hold), so that each block's consumer gets it without a slice copy.
    """
    _check("linear_to_channels", x, weight, bias, 2)
    if chunks is not None and (chunks < 1 or weight.shape[0] % chunks):
        raise ValueError(
            f"linear_to_channels: chunks must divide d_out={weight.shape[0]}; got {chunks}"
        )
    outs = _ToChannels.apply(x, weight, bias, chunks or 1)
    return outs if chunks is not None else outs[0]


def linear_from_channels(v: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(v.transpose(1, 2), weight, bias)``, contiguous, without a transposed copy.

    v: [B, d_in, L]; weight: [d_out, d_in]; bias: [d_out] -> [B, L, d_out].
    """
    _check("linear_from_channels", v, weight, bias, 1)
    return _FromChannels.apply(v, weight, bias)
