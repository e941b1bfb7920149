"""Fused linear + cross-entropy: the LM head and the loss without the full logits.

``linear_cross_entropy(hidden [N, d], weight [V, d], targets [N])`` equals
``F.cross_entropy(F.linear(hidden, weight).float(), targets, ignore_index=..., reduction=...)``
in value and in its gradients for ``hidden`` and ``weight``, but never holds the [N, V] logits:
at 65K tokens and the padded GPT-2 vocabulary (50304) those are 6.6 GB in bf16 and 13 GB in
fp32, and the casts and the fp32 softmax around them cost ~10% of a hyena-s training step.

Design choices:
- Two backends. ``"liger"`` is liger-kernel's fused linear cross-entropy (Triton, CUDA only).
  ``"torch"`` is our own chunked PyTorch version of the same algorithm: it runs anywhere and
  on the inputs liger does not take. ``"auto"`` picks liger on CUDA when it is importable and
  supports the inputs, torch otherwise.
- Both compute the gradients in the forward, chunk by chunk of tokens: the logits of a chunk
  (matmul in the compute dtype), their log-sum-exp and softmax in fp32, ``softmax - one_hot``
  scaled for the reduction, then ``grad_hidden = g @ W`` and ``grad_weight += g^T @ h`` with
  ``grad_weight`` accumulated in fp32. The backward only scales the stored gradients by the
  incoming gradient. We chose this over checkpointing each chunk's loss (recompute the
  logits in the backward, let autograd differentiate log_softmax) because it costs three
  matmuls per chunk instead of four, keeps one fp32 [chunk, V] buffer live instead of the
  several that autograd's log_softmax backward allocates, and behaves exactly like the liger
  path (same work in the forward, same precision), so the two backends are interchangeable.
  The price: a forward under grad mode does the gradient work even if no backward follows, so
  a forward that needs no gradient (``torch.no_grad``, or inputs that do not require grad)
  takes a separate loss-only path.
- ``torch.autocast``: as in the unfused path, the matmuls run in the autocast dtype and the
  softmax in fp32; the gradients come back in the dtypes of ``hidden`` and ``weight``.
- ``reduction="mean"`` is the sum over the supervised targets divided by their number, and 0
  (with zero gradients) when every target is ignored; ``F.cross_entropy`` returns NaN there.
  That is the one difference from the unfused reference, and it is deliberate: a batch with
  nothing to supervise (possible in associative recall) must not poison the weights.

What this relies on in liger-kernel (read from the 0.8.5 source; the pin is
``liger-kernel>=0.8.5``):
- ``liger_kernel.transformers.functional.liger_fused_linear_cross_entropy(input [BT, H],
  weight [V, H], target [BT], bias=None, ignore_index=..., reduction="mean"|"sum"|"none",
  accum_dtype=...)`` returns the loss alone (an fp32 scalar) when no z-loss, token accuracy or
  predicted tokens are asked for. The import pulls in torch._dynamo and parts of transformers
  (~4 s), so it happens on first use, never at import time, and never off CUDA.
- It is a ``torch.autograd.Function`` under ``torch.amp.custom_fwd``: the forward runs in the
  caller's autocast state, so under bf16 autocast with fp32 ``hidden`` and ``weight`` the
  chunk matmuls run in bf16 and its Triton kernel does the softmax in fp32.
- It computes ``grad_weight`` only when ``input.requires_grad``; a weight that needs a gradient
  with an input that does not is therefore sent to the torch backend. We pass
  ``accum_dtype=torch.float32`` so that ``grad_weight`` accumulates in fp32 even for bf16
  weights (with fp32 weights, as under AMP, that is what it does anyway).
- ``ignore_index`` rows get zero loss and zero gradient; "mean" divides by the number of
  non-ignored targets, and an all-ignored batch gives 0, not NaN, as here.
- No bias is needed (our head has none); the weight may be tied to the embedding (its
  gradient is returned like any other input's and autograd adds the embedding's).
- It syncs with the host twice a step: ``.item()`` on the number of supervised targets in the
  forward, and ``torch.equal(grad_output, 1.0)`` in the backward (it skips the rescaling of the
  stored gradients when the incoming gradient is exactly 1, e.g. for an unscaled "mean").
- Its backward rescales the stored gradients in place: a second backward through the same
  loss (``retain_graph=True``) would scale them twice. Nothing here does that.
- It does not check target ids: ids outside [0, V) other than ``ignore_index`` read out of
  bounds on the GPU. We check them on CPU tensors only (on CUDA the check would sync).
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable

import torch
from torch import Tensor

BACKENDS = ("auto", "liger", "torch")
REDUCTIONS = ("sum", "mean")
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_LIGER_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# torch backend: tokens per chunk such that one chunk's fp32 logits hold about this many values
# (2^26: 256 MiB, 1334 tokens at V = 50304)
_CHUNK_ELEMENTS = 1 << 25


@functools.cache
def _liger_loss_fn() -> Callable[..., Tensor] | str:
    """liger-kernel's fused linear cross-entropy, or why it cannot be imported."""
    if importlib.util.find_spec("liger_kernel") is None:
        return "liger-kernel is not installed (pip install 'liger-kernel>=0.8.5')"
    try:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
    except Exception as err:  # a broken install must not take the torch backend down with it
        return f"liger-kernel could not be imported ({type(err).__name__}: {err})"
    return liger_fused_linear_cross_entropy


def liger_unusable(hidden: Tensor, weight: Tensor) -> str | None:
    """None when the liger backend takes these inputs, else the reason it does not."""
    if hidden.device.type != "cuda":
        return f"it runs on CUDA devices only; got {hidden.device.type}"
    for name, x in (("hidden", hidden), ("weight", weight)):
        if x.dtype not in _LIGER_DTYPES:
            return f"it takes fp16, bf16 or fp32 {name}; got {x.dtype}"
    if hidden.shape[0] == 0:
        return "it needs at least one token (hidden has 0 rows)"
    if torch.is_grad_enabled() and weight.requires_grad and not hidden.requires_grad:
        return "it computes the weight gradient only when hidden requires grad too"
    fn = _liger_loss_fn()
    return fn if isinstance(fn, str) else None


def resolve_backend(backend: str, hidden: Tensor, weight: Tensor) -> str:
    """The backend that runs: ``"auto"`` is liger when it takes the inputs, torch otherwise;
    an explicit ``"liger"`` that cannot take them raises."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}")
    if backend == "torch":
        return backend
    reason = liger_unusable(hidden, weight)
    if reason is None:
        return "liger"
    if backend == "liger":
        raise ValueError(f"backend='liger' is not usable here: {reason}")
    return "torch"


def _compute_dtype(hidden: Tensor, weight: Tensor) -> torch.dtype:
    """The dtype of the matmuls: the autocast dtype under autocast (fp64 is never autocast),
    else the inputs' common dtype."""
    device_type = hidden.device.type
    autocast = torch.is_autocast_enabled(device_type)
    if autocast and torch.float64 not in (hidden.dtype, weight.dtype):
        return torch.get_autocast_dtype(device_type)
    if hidden.dtype != weight.dtype:
        where = "under autocast with fp64" if autocast else "outside torch.autocast"
        raise ValueError(
            f"hidden and weight must have the same dtype {where}; got hidden {hidden.dtype}, "
            f"weight {weight.dtype}"
        )
    return hidden.dtype


def _validate(
    hidden: object,
    weight: object,
    targets: object,
    ignore_index: object,
    reduction: object,
    chunk_size: object,
) -> None:
    for name, x in (("hidden", hidden), ("weight", weight), ("targets", targets)):
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor; got {type(x).__name__}")
    for name, x in (("hidden", hidden), ("weight", weight)):
        if x.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"{name} must be fp16, bf16, fp32 or fp64; got {x.dtype}")
        if x.ndim != 2:
            raise ValueError(f"{name} must be 2-D; got shape {tuple(x.shape)}")
    n, d = hidden.shape
    if weight.shape[1] != d:
        raise ValueError(
            f"weight must be [V, d] with d = hidden.shape[1] = {d}; got shape {tuple(weight.shape)}"
        )
    if weight.shape[0] < 1:
        raise ValueError(f"weight must have at least one row (class); got {tuple(weight.shape)}")
    if targets.shape != (n,):
        raise ValueError(
            f"targets must be [N] with N = hidden.shape[0] = {n}; got shape {tuple(targets.shape)}"
        )
    if targets.dtype != torch.long:
        raise TypeError(f"targets must be int64 (torch.long) class ids; got {targets.dtype}")
    for name, x in (("weight", weight), ("targets", targets)):
        if x.device != hidden.device:
            raise ValueError(
                f"{name} must be on the device of hidden ({hidden.device}); got {x.device}"
            )
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index must be an int; got {ignore_index!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}; got {reduction!r}")
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
    ):
        raise ValueError(f"chunk_size must be None or a positive int; got {chunk_size!r}")
    if targets.device.type == "cpu" and n > 0:  # on CUDA this check would wait on the device
        vocab = weight.shape[0]
        bad = (targets != ignore_index) & ((targets < 0) | (targets >= vocab))
        if bool(bad.any()):
            first = int(targets[bad][0])
            raise ValueError(
                f"targets must be class ids in [0, V={vocab}) or ignore_index={ignore_index}; "
                f"got {first}"
            )


def _chunked(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    ignore_index: int,
    reduction: str,
    chunk_size: int,
    compute_dtype: torch.dtype,
    grad_hidden: bool,
    grad_weight: bool,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """(loss, d loss / d hidden, d loss / d weight) chunk by chunk of tokens; the gradients are
    None when not asked for. ``grad_weight`` comes back in the accumulation dtype (fp32, or fp64
    for fp64 inputs)."""
    acc_dtype = torch.float64 if compute_dtype == torch.float64 else torch.float32
    n = hidden.shape[0]
    with torch.autocast(hidden.device.type, enabled=False):  # every cast below is explicit
        h = hidden.to(compute_dtype)  # [N, d]
        w = weight.to(compute_dtype)  # [V, d]
        supervised = targets != ignore_index  # [N]
        safe_targets = targets.masked_fill(~supervised, 0)  # [N], an id that gathers anything
        count = supervised.sum()
        if reduction == "mean":  # stays on the device: no sync
            scale = 1.0 / count.clamp(min=1).to(acc_dtype)
        else:
            scale = torch.ones((), dtype=acc_dtype, device=hidden.device)
        loss = torch.zeros((), dtype=acc_dtype, device=hidden.device)
        d_hidden = torch.empty_like(hidden) if grad_hidden else None  # every row is written
        d_weight = (
            torch.zeros(weight.shape, dtype=acc_dtype, device=weight.device)
            if grad_weight
            else None
        )
        for start in range(0, n, chunk_size):
            rows = slice(start, min(start + chunk_size, n))
            h_c, t_c, m_c = h[rows], safe_targets[rows, None], supervised[rows]
            logits = (h_c @ w.T).to(acc_dtype)  # [c, V], the matmul in the compute dtype
            lse = torch.logsumexp(logits, dim=-1)  # [c]
            picked = logits.gather(1, t_c).squeeze(1)  # [c]
            loss = loss + torch.where(m_c, lse - picked, 0.0).sum()
            if not (grad_hidden or grad_weight):
                continue
            weight_c = m_c.to(acc_dtype) * scale  # [c]: 0 for ignored rows
            g = logits.sub_(lse[:, None]).exp_()  # [c, V] softmax, in place of the logits
            g.scatter_add_(1, t_c, -m_c.to(acc_dtype)[:, None])  # minus the one-hot target
            g = g.mul_(weight_c[:, None]).to(compute_dtype)  # d loss / d logits
            if d_hidden is not None:
                d_hidden[rows] = g @ w
            if d_weight is not None:
                if g.dtype == acc_dtype:
                    d_weight.addmm_(g.T, h_c)
                else:  # one rounding per chunk, summed in fp32
                    d_weight.add_(g.T @ h_c)
        return loss * scale, d_hidden, d_weight


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """The torch backend under autograd: gradients computed in the forward, scaled in the
    backward by the incoming gradient."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        hidden: Tensor,
        weight: Tensor,
        targets: Tensor,
        ignore_index: int,
        reduction: str,
        chunk_size: int,
        compute_dtype: torch.dtype,
    ) -> Tensor:
        need_hidden, need_weight = ctx.needs_input_grad[:2]
        loss, d_hidden, d_weight = _chunked(
            hidden,
            weight,
            targets,
            ignore_index,
            reduction,
            chunk_size,
            compute_dtype,
            need_hidden,
            need_weight,
        )
        ctx.save_for_backward(d_hidden, d_weight)
        ctx.weight_dtype = weight.dtype
        return loss

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad_loss: Tensor
    ) -> tuple[Tensor | None, ...]:
        d_hidden, d_weight = ctx.saved_tensors
        if d_hidden is not None:
            d_hidden = d_hidden * grad_loss.to(d_hidden.dtype)
        if d_weight is not None:
            d_weight = (d_weight * grad_loss.to(d_weight.dtype)).to(ctx.weight_dtype)
        return d_hidden, d_weight, None, None, None, None, None


def linear_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    *,
    ignore_index: int = -100,
    reduction: str = "sum",
    backend: str = "auto",
    chunk_size: int | None = None,
) -> Tensor:
    """Cross-entropy of the logits ``hidden @ weight.T`` against ``targets``, without the logits.

    Args:
        hidden: [N, d] features (fp16, bf16, fp32 or fp64), e.g. an LM's final-normed states.
        weight: [V, d] output projection without bias (e.g. a head tied to the embedding).
        targets: [N] int64 class ids in [0, V), or ``ignore_index`` for rows left out.
        ignore_index: target value whose rows add nothing to the loss or the gradients.
        reduction: "sum" over the supervised rows, or "mean" (that sum over their number;
            0 when there is none, where ``F.cross_entropy`` gives NaN).
        backend: "auto" (liger on CUDA when it takes the inputs, else torch), "liger" or
            "torch" (chunked PyTorch, any device).
        chunk_size: tokens per chunk of the torch backend (None: as many as keep one chunk's
            fp32 logits near 2^26 values); liger sizes its own chunks (about N * d logits).

    Returns:
        The loss, a scalar in fp32 (fp64 for fp64 inputs outside autocast), differentiable
        with respect to ``hidden`` and ``weight``. Under ``torch.autocast`` the matmuls run in
        the autocast dtype and the softmax in fp32, as ``F.linear`` + ``F.cross_entropy`` of
        the float logits would.
    """
    _validate(hidden, weight, targets, ignore_index, reduction, chunk_size)
    compute_dtype = _compute_dtype(hidden, weight)
    if resolve_backend(backend, hidden, weight) == "liger":
        liger = _liger_loss_fn()
        return liger(
            hidden.contiguous(),
            weight.contiguous(),
            targets.contiguous(),
            ignore_index=ignore_index,
            reduction=reduction,
            accum_dtype=torch.float32,
        )
    if chunk_size is None:
        chunk_size = max(1, _CHUNK_ELEMENTS // weight.shape[0])
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _ChunkedLinearCrossEntropy.apply(
            hidden, weight, targets, ignore_index, reduction, chunk_size, compute_dtype
        )
    loss, _, _ = _chunked(
        hidden, weight, targets, ignore_index, reduction, chunk_size, compute_dtype, False, False
    )
    return loss
