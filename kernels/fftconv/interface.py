"""Public entry points: ``fftconv``, ``FFTConv``, ``FilterSpectrum``.

Three tiers, as in the rest of ``kernels``: the public function validates and documents shapes;
a ``torch.library`` custom op (with a fake implementation and a registered backward) makes the
convolution one opaque node for autograd and ``torch.compile``; the backends do the math. The
public call differentiates through an autograd Function that runs the op's implementation
directly in plain eager mode and the op itself whenever something traces
(``backends.custom_op``): the same values, less host time per call.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..backends import (
    autograd_function,
    check_float_tensor,
    check_same_device,
    custom_op,
    triton_unusable,
)
from . import core
from .plan import MODES, ConvPlan, make_plan

BACKENDS = ("auto", "torch", "monarch", "triton")
_BACKEND_MODULES = {
    "torch": "kernels.fftconv.reference",
    "monarch": "kernels.fftconv.monarch",
    "triton": "kernels.fftconv.triton",
}


def _backend_module(name: str) -> ModuleType:
    return importlib.import_module(_BACKEND_MODULES[name])


def resolve_backend(backend: str, device: torch.device) -> str:
    """The backend that runs: ``"auto"`` is Triton on CUDA when it can run, torch otherwise; an
    explicit ``"triton"`` that cannot run raises."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}")
    if backend == "triton" or (backend == "auto" and device.type == "cuda"):
        reason = triton_unusable(device.type, _BACKEND_MODULES["triton"])
        if reason is None:
            return "triton"
        if backend == "triton":
            raise ValueError(f"backend='triton' is not usable here: {reason}")
    return "torch" if backend == "auto" else backend


class FilterSpectrum(NamedTuple):
    """A filter prepared once for a sequence length and reused across calls.

    ``kc`` is the filter in circular order and carries the gradient; ``kf`` is its spectrum,
    computed without gradient, so the forward and the backward skip the filter's FFT.
    Valid for any sequence length up to ``plan.seq_len`` (exactly that length in circular mode;
    any length at all for a blocked plan, whose FFT size is the filter's, not the sequence's).
    """

    kc: Tensor  # [H, m]
    kf: Tensor  # [H, n // 2 + 1] complex
    plan: ConvPlan
    backend: str


# ---------------------------------------------------------------------------------------------
# Validation


def _check_tensor(name: str, x: object, *, ndim: int | None = None) -> Tensor:
    x = check_float_tensor(name, x)
    if ndim is not None and x.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions; got shape {tuple(x.shape)}")
    return x


def _check_u(u: object) -> Tensor:
    u = _check_tensor("u", u)
    if u.dim() != 3:
        raise ValueError(f"u must have shape (B, H, L); got shape {tuple(u.shape)}")
    if u.device.type == "meta":
        raise ValueError("u must be on a device that holds values (cpu or cuda); got meta")
    B, H, L = u.shape
    if L < 1:
        raise ValueError(f"u must have a sequence length L >= 1; got L={L}")
    if H < 1:
        raise ValueError(f"u must have H >= 1 channels; got H={H}")
    return u


def _check_gates(u: Tensor, pregate: Tensor | None, postgate: Tensor | None, bias: Tensor | None):
    for name, g in (("pregate", pregate), ("postgate", postgate)):
        if g is None:
            continue
        _check_tensor(name, g)
        if g.shape != u.shape:
            raise ValueError(
                f"{name} must have the shape of u {tuple(u.shape)}; got {tuple(g.shape)}"
            )
        check_same_device(name, g, u, "u")
    if bias is not None:
        _check_tensor("bias", bias)
        if bias.shape != (u.shape[1],):
            raise ValueError(
                f"bias must have shape (H,) = ({u.shape[1]},); got {tuple(bias.shape)}"
            )
        check_same_device("bias", bias, u, "u")


def _check_freq_keep(freq_keep: float) -> None:
    if not isinstance(freq_keep, (int, float)) or not 0.0 < freq_keep <= 1.0:
        raise ValueError(f"freq_keep must be a number in (0, 1]; got {freq_keep!r}")


def _filter_taps(k: Tensor, mode: str, H: int, L: int) -> int:
    """Validates the filter against the mode; returns the user's filter length."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
    if mode == "bidirectional" and k.dim() == 3:
        if k.shape[0] != 2 or k.shape[1] != H:
            raise ValueError(
                f"a bidirectional filter pair must have shape (2, H, M) = (2, {H}, M); "
                f"got {tuple(k.shape)}"
            )
        if k.shape[2] < 1:
            raise ValueError(f"k must have at least one tap; got shape {tuple(k.shape)}")
        return 2 * k.shape[2] - 1
    if k.dim() != 2:
        raise ValueError(f"k must have shape (H, Lk) = ({H}, Lk); got shape {tuple(k.shape)}")
    if k.shape[0] != H:
        raise ValueError(f"k must have H={H} rows to match u; got k of shape {tuple(k.shape)}")
    Lk = k.shape[1]
    if Lk < 1:
        raise ValueError(f"k must have at least one tap; got shape {tuple(k.shape)}")
    if mode == "circular" and Lk != L:
        raise ValueError(f"mode='circular' needs a filter of length L={L}; got Lk={Lk}")
    if mode == "bidirectional" and Lk % 2 == 0:
        raise ValueError(
            f"mode='bidirectional' needs a centred filter of odd length 2M-1 (lag 0 at index "
            f"M-1) or a (2, H, M) forward/reverse pair; got Lk={Lk}"
        )
    return Lk


# ---------------------------------------------------------------------------------------------
# Filter layout: the user's filter -> circular order (differentiable torch ops)


def circular_filter(k: Tensor, plan: ConvPlan) -> Tensor:
    """The filter as the length-n circular convolution sees it: lag s at index s mod n."""
    taps = plan.filter_len
    if plan.mode != "bidirectional":
        return k[:, :taps]
    if k.dim() == 3:  # (2, H, M): forward lags 0..M-1, reverse lags 0..-(M-1); lag 0 summed
        fwd, rev = k[0], k[1]
        k = torch.cat([rev[:, 1:].flip(-1), fwd[:, :1] + rev[:, :1], fwd[:, 1:]], dim=-1)
    centre = (k.shape[-1] - 1) // 2
    pos = k[:, centre : centre + taps]  # lags 0 .. taps-1
    neg = k[:, centre - taps + 1 : centre]  # lags -(taps-1) .. -1
    gap = k.new_zeros(k.shape[0], plan.fft_size - pos.shape[-1] - neg.shape[-1])
    return torch.cat([pos, gap, neg], dim=-1)


# ---------------------------------------------------------------------------------------------
# Custom ops


def _fftconv_impl(
    u: Tensor,
    kc: Tensor,
    kf: Tensor | None,
    pregate: Tensor | None,
    postgate: Tensor | None,
    bias: Tensor | None,
    mode: str,
    filter_len: int,
    fft_size: int,
    fold: bool,
    keep_bins: int,
    blocked: bool,
    backend: str,
) -> Tensor:
    plan = ConvPlan(mode, u.shape[-1], filter_len, fft_size, fold, keep_bins, blocked)
    with torch.autocast(u.device.type, enabled=False):
        return core.forward(
            u, kc, kf, pregate, postgate, bias, plan, _backend_module(backend)
        ).contiguous()


_fftconv_op, _fftconv = custom_op("longconv::fftconv", _fftconv_impl, mutates_args=())


@_fftconv_op.register_fake
def _(u, kc, kf, pregate, postgate, bias, mode, filter_len, fft_size, fold, keep_bins, blocked,
      backend):  # fmt: skip
    return torch.empty_like(u)


def _fftconv_z_impl(
    u: Tensor,
    kc: Tensor,
    kf: Tensor | None,
    pregate: Tensor | None,
    postgate: Tensor | None,
    bias: Tensor | None,
    mode: str,
    filter_len: int,
    fft_size: int,
    fold: bool,
    keep_bins: int,
    blocked: bool,
    backend: str,
) -> list[Tensor]:
    """``[y, z]``: the forward and z, the convolution before the postgate and the skip term,
    kept for the postgate's gradient (only for plans whose backend keeps one: ``_keeps_z``)."""
    plan = ConvPlan(mode, u.shape[-1], filter_len, fft_size, fold, keep_bins, blocked)
    with torch.autocast(u.device.type, enabled=False):
        y, z = core.forward_with_z(
            u, kc, kf, pregate, postgate, bias, plan, _backend_module(backend)
        )
    if z is None:
        raise RuntimeError(f"backend {backend!r} kept no z for {plan}: _keeps_z is wrong")
    return [y.contiguous(), z.contiguous()]


_fftconv_z_op, _fftconv_z = custom_op("longconv::fftconv_z", _fftconv_z_impl, mutates_args=())


@_fftconv_z_op.register_fake
def _(u, kc, kf, pregate, postgate, bias, mode, filter_len, fft_size, fold, keep_bins, blocked,
      backend):  # fmt: skip
    return [torch.empty_like(u), torch.empty_like(u)]


def _keeps_z(backend: str, plan: ConvPlan, dtype: torch.dtype) -> bool:
    """Whether the forward on ``backend`` keeps z for ``plan`` (the backend's ``keeps_z``; one
    without a fused kernel runs the primitives, which always have it). Under torch.compile a
    constant of the call's static arguments: they go to ``_keeps_z_static`` field by field,
    since torch 2.11's dynamo cannot turn the frozen plan itself into a constant."""
    return _keeps_z_static(
        backend, plan.mode, plan.seq_len, plan.filter_len, plan.fft_size, plan.fold,
        plan.keep_bins, plan.blocked, dtype,
    )  # fmt: skip


@torch.compiler.assume_constant_result  # a function of the call's static arguments alone
def _keeps_z_static(
    backend: str,
    mode: str,
    seq_len: int,
    filter_len: int,
    fft_size: int,
    fold: bool,
    keep_bins: int,
    blocked: bool,
    dtype: torch.dtype,
) -> bool:
    keeps = getattr(_backend_module(backend), "keeps_z", None)
    if keeps is None:
        return True
    return keeps(ConvPlan(mode, seq_len, filter_len, fft_size, fold, keep_bins, blocked), dtype)


def _fftconv_backward_impl(
    dy: Tensor,
    u: Tensor,
    kc: Tensor,
    kf: Tensor | None,
    pregate: Tensor | None,
    postgate: Tensor | None,
    bias: Tensor | None,
    mode: str,
    filter_len: int,
    fft_size: int,
    fold: bool,
    keep_bins: int,
    blocked: bool,
    backend: str,
    needs: list[bool],
    z: Tensor | None = None,
) -> list[Tensor]:
    plan = ConvPlan(mode, u.shape[-1], filter_len, fft_size, fold, keep_bins, blocked)
    with torch.autocast(u.device.type, enabled=False):
        grads = core.backward(
            dy, u, kc, kf, pregate, postgate, bias, plan, _backend_module(backend), tuple(needs),
            z,
        )  # fmt: skip
    # custom ops return tensors only: an unneeded gradient travels as an empty tensor
    return [g.contiguous() if g is not None else dy.new_empty(0) for g in grads]


_fftconv_backward_op, _fftconv_backward = custom_op(
    "longconv::fftconv_backward", _fftconv_backward_impl, mutates_args=()
)


@_fftconv_backward_op.register_fake
def _(
    dy,
    u,
    kc,
    kf,
    pregate,
    postgate,
    bias,
    mode,
    filter_len,
    fft_size,
    fold,
    keep_bins,
    blocked,
    backend,
    needs,
    z=None,
):
    like = (u, kc, pregate, postgate, bias)
    return [
        torch.empty_like(x) if (need and x is not None) else dy.new_empty(0)
        for need, x in zip(needs, like, strict=True)
    ]


def _spectrum_impl(kc: Tensor, fft_size: int, keep_bins: int, backend: str) -> Tensor:
    """The filter's spectrum: a cache without gradient (the gradient flows through ``kc``)."""
    dtype = core.compute_dtype(kc)
    with torch.no_grad(), torch.autocast(kc.device.type, enabled=False):
        return _backend_module(backend).rfft(kc.to(dtype), fft_size, keep_bins).contiguous()


_spectrum_op, _spectrum = custom_op("longconv::filter_spectrum", _spectrum_impl, mutates_args=())


@_spectrum_op.register_fake
def _(kc, fft_size, keep_bins, backend):
    dtype = torch.complex128 if kc.dtype == torch.float64 else torch.complex64
    return kc.new_empty((*kc.shape[:-1], fft_size // 2 + 1), dtype=dtype)


def _setup_context(ctx, inputs, output):
    """Saves the inputs, and z where the forward kept one (``longconv::fftconv_z``'s output
    ``[y, z]``; z takes no gradient)."""
    u, kc, kf, pregate, postgate, bias, *static = inputs
    kept = output[1:] if isinstance(output, (list, tuple)) else ()
    ctx.save_for_backward(u, kc, kf, pregate, postgate, bias, *kept)
    if kept:
        ctx.mark_non_differentiable(*kept)
    ctx.static = static


def _backward(ctx, dy, *_):
    if isinstance(dy, (list, tuple)):  # the z op's registered formula: one list of gradients
        dy = dy[0]
    u, kc, kf, pregate, postgate, bias, *kept = ctx.saved_tensors
    n = ctx.needs_input_grad
    needs = [
        n[0],
        n[1],
        n[3] and pregate is not None,
        n[4] and postgate is not None,
        n[5] and bias is not None,
    ]
    d_u, d_k, d_pre, d_post, d_bias = _fftconv_backward(
        dy.contiguous(), u, kc, kf, pregate, postgate, bias, *ctx.static, needs, *kept
    )
    grads = [
        g if need else None
        for g, need in zip((d_u, d_k, d_pre, d_post, d_bias), needs, strict=True)
    ]
    d_u, d_k, d_pre, d_post, d_bias = grads
    return d_u, d_k, None, d_pre, d_post, d_bias, *([None] * len(ctx.static))


# the op's autograd formula, and the Function the public call runs with it
_FFTConvFunction = autograd_function(
    "_FFTConvFunction", _fftconv_op, _fftconv, _setup_context, _backward
)
# the same with z kept by the forward, for a postgate that wants a gradient: its backward
# takes dpostgate = dy * z instead of transforming v again
_FFTConvZFunction = autograd_function(
    "_FFTConvZFunction", _fftconv_z_op, _fftconv_z, _setup_context, _backward
)


# ---------------------------------------------------------------------------------------------
# Public API


def filter_spectrum(
    k: Tensor,
    seq_len: int,
    *,
    mode: str = "causal",
    freq_keep: float = 1.0,
    backend: str = "auto",
    blocked: bool | None = None,
) -> FilterSpectrum:
    """Prepares ``k`` ([H, Lk], or [2, H, M] for a bidirectional pair) for ``fftconv``.

    Compute it once per step and pass it as ``k`` to every call that uses the same filter.
    ``blocked``: how a causal partial filter runs (``plan.make_plan``): None picks, True cuts
    the sequence into blocks of the filter's size (raises where it cannot), False runs one
    dense FFT of the whole sequence.
    """
    k = _check_tensor("k", k)
    if not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"seq_len must be an int >= 1; got {seq_len!r}")
    H = k.shape[1] if k.dim() == 3 else k.shape[0]
    _check_freq_keep(freq_keep)
    Lk = _filter_taps(k, mode, H, seq_len)
    plan = make_plan(mode, seq_len, Lk, freq_keep, blocked)
    name = resolve_backend(backend, k.device)
    kc = circular_filter(k, plan)
    kf = _spectrum(kc.detach().contiguous(), plan.fft_size, plan.keep_bins, name)
    return FilterSpectrum(kc, kf, plan, name)


def fftconv(
    u: Tensor,
    k: Tensor | FilterSpectrum,
    *,
    pregate: Tensor | None = None,
    postgate: Tensor | None = None,
    bias: Tensor | None = None,
    mode: str = "causal",
    freq_keep: float = 1.0,
    backend: str = "auto",
    blocked: bool | None = None,
) -> Tensor:
    """Long convolution of every channel of ``u`` with its own filter, gated.

    ``y = postgate * conv(u * pregate, k) + bias[:, None] * (u * pregate)``

    Args:
        u: ``[B, H, L]`` fp32/fp16/bf16 (fp64 accepted, computed in fp64).
        k: ``[H, Lk]`` filter (any float dtype), or a ``FilterSpectrum`` from
            ``filter_spectrum``. Causal: lag s at ``k[:, s]``; ``Lk < L`` is a partial
            convolution, ``Lk > L`` is truncated. Circular: ``Lk == L``. Bidirectional:
            ``[H, 2M-1]`` centred (lag 0 at index M-1) or a ``[2, H, M]`` forward/reverse pair
            (lag 0 taken from both).
        pregate, postgate: ``[B, H, L]`` or None. bias: ``[H]`` (Hyena's D skip) or None.
        mode: "causal", "circular" or "bidirectional".
        freq_keep: fraction of the filter spectrum kept (low frequencies), in steps of 1/16;
            1.0 keeps all. Backends skip the work of the dropped blocks.
        backend: "auto", "torch", "monarch" or "triton".
        blocked: a causal partial filter (<= 4096 taps) cut into blocks of its size (True),
            one FFT of the whole sequence (False), or the faster of the two as measured (None).
            Ignored with a prepared ``FilterSpectrum``, whose plan is fixed.

    Returns:
        ``[B, H, L]`` in ``u.dtype``, accumulated in fp32. Under ``torch.autocast`` fp32 inputs
        and gates are first cast to the autocast dtype, like a convolution layer's.

    Memory: autograd saves u, the gates and the filter; with a postgate that wants a gradient
    also z, the convolution before it (one more tensor of u's size), so that the backward
    takes the postgate's gradient as ``dy * z`` instead of transforming the input again
    (except on the triton backend's long path, n > 8192 and folded plans, which keeps none).
    """
    u = _check_u(u)
    B, H, L = u.shape
    _check_gates(u, pregate, postgate, bias)
    if torch.is_autocast_enabled(u.device.type):
        low = torch.get_autocast_dtype(u.device.type)
        u, pregate, postgate = (
            x.to(low) if x is not None and x.dtype == torch.float32 else x
            for x in (u, pregate, postgate)
        )

    if isinstance(k, FilterSpectrum):
        spec = k
        if mode != spec.plan.mode:
            raise ValueError(f"mode={mode!r} does not match the spectrum's mode={spec.plan.mode!r}")
        if backend not in ("auto", spec.backend):
            raise ValueError(f"backend={backend!r} does not match the spectrum's {spec.backend!r}")
        if spec.kc.shape[0] != H:
            raise ValueError(f"the spectrum has H={spec.kc.shape[0]} filters; u has H={H}")
        # a blocked plan's blocks do not depend on L: its spectrum serves every length
        limit_ok = (
            L == spec.plan.seq_len
            if mode == "circular"
            else L <= spec.plan.seq_len or spec.plan.blocked
        )
        if not limit_ok:
            raise ValueError(
                f"sequence length L={L} does not fit a spectrum prepared for "
                f"seq_len={spec.plan.seq_len} (mode={mode!r}); prepare it for the longer length"
            )
        check_same_device("k", spec.kc, u, "u")
        kc, kf, plan, name = spec.kc, spec.kf, spec.plan, spec.backend
    else:
        k = _check_tensor("k", k)
        check_same_device("k", k, u, "u")
        _check_freq_keep(freq_keep)
        Lk = _filter_taps(k, mode, H, L)
        plan = make_plan(mode, L, Lk, freq_keep, blocked)
        name = resolve_backend(backend, u.device)
        kc, kf = circular_filter(k, plan), None

    args = (
        u.contiguous(),
        kc.contiguous(),
        kf,
        pregate.contiguous() if pregate is not None else None,
        postgate.contiguous() if postgate is not None else None,
        bias,
        plan.mode,
        plan.filter_len,
        plan.fft_size,
        plan.fold,
        plan.keep_bins,
        plan.blocked,
        name,
    )
    # a postgate that wants a gradient: keep z (the convolution before it) for dy * z, one
    # more saved tensor of u's size instead of a transform of v in the backward
    if (
        postgate is not None
        and postgate.requires_grad
        and torch.is_grad_enabled()
        and _keeps_z(name, plan, u.dtype)
    ):
        return _FFTConvZFunction.apply(*args)[0]
    return _FFTConvFunction.apply(*args)


class FFTConv(nn.Module):
    """A long-convolution layer's convolution: fixed mode, maximum length and backend.

    The DFT matrices and twiddles of the Monarch backends are built once per (size, device,
    dtype) and shared by every layer (one copy for a whole model, not one per layer);
    ``prepare`` builds them ahead of the first step.
    """

    def __init__(
        self,
        l_max: int,
        *,
        mode: str = "causal",
        freq_keep: float = 1.0,
        backend: str = "auto",
        blocked: bool | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(l_max, int) or l_max < 1:
            raise ValueError(f"l_max must be an int >= 1; got {l_max!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}")
        _check_freq_keep(freq_keep)
        if blocked not in (None, True, False):
            raise ValueError(f"blocked must be None, True or False; got {blocked!r}")
        self.l_max, self.mode, self.freq_keep, self.backend = l_max, mode, freq_keep, backend
        self.blocked = blocked

    def extra_repr(self) -> str:
        return (
            f"l_max={self.l_max}, mode={self.mode!r}, freq_keep={self.freq_keep}, "
            f"blocked={self.blocked}, backend={self.backend!r}"
        )

    def prepare(self, filter_len: int, device: torch.device | str, dtype=torch.float32) -> None:
        device = torch.device(device)
        plan = make_plan(self.mode, self.l_max, filter_len, self.freq_keep, self.blocked)
        _backend_module(resolve_backend(self.backend, device)).prepare(plan.fft_size, device, dtype)

    def filter_spectrum(self, k: Tensor, seq_len: int | None = None) -> FilterSpectrum:
        return filter_spectrum(
            k,
            seq_len or self.l_max,
            mode=self.mode,
            freq_keep=self.freq_keep,
            backend=self.backend,
            blocked=self.blocked,
        )

    def forward(
        self,
        u: Tensor,
        k: Tensor | FilterSpectrum,
        pregate: Tensor | None = None,
        postgate: Tensor | None = None,
        bias: Tensor | None = None,
    ) -> Tensor:
        return fftconv(
            u,
            k,
            pregate=pregate,
            postgate=postgate,
            bias=bias,
            mode=self.mode,
            freq_keep=self.freq_keep,
            backend=self.backend,
            blocked=self.blocked,
        )


__all__ = ["FFTConv", "FilterSpectrum", "fftconv", "filter_spectrum", "resolve_backend"]
