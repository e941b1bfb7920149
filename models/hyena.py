"""The Hyena operator: gated long convolutions with implicitly parametrized filters.

Follows Poli et al., "Hyena Hierarchy" (2023) and its reference implementation (safari):
in_proj to (order + 1) * d, causal short depthwise conv, an implicit filter per recurrence
step (positional features -> MLP with Sin activations -> exponential decay window), order - 1
gated long convolutions with a D skip, out_proj.

Design choices that differ from the reference, and why:
- ``in_proj`` and ``out_proj`` are matmuls that write and read the convolutions' [B, D, L]
  layout directly (``models.projections``), ``in_proj`` one contiguous tensor per stream, and
  ``in_proj``'s bias is added by the short conv's kernel: the operator makes no transposed
  copy and no slice copy of its activations.
- Every long convolution is one fused ``kernels.fftconv`` call (pregate, skip and
  convolution in one kernel). The paper's last step gates the skip too
  (``y = x0 * (h * v + D v)``); on that step we add ``D`` to lag 0 of the filter instead,
  which is the same sum, and multiply by ``x0`` outside the kernel: autograd then keeps the
  convolution's output for x0's gradient, so the backward kernel need not recompute it (a
  quarter of its matrix products). Measured on hyena-s (H200, bf16): +3.5% training tokens/s
  at 2K and 4K against the postgate fused into the kernel, for 1.9 GB more peak memory.
- ``filter_len`` (partial convolution): the filter is generated for its first ``filter_len``
  taps only, on the positional grid of ``l_max``. The model then runs on any sequence length
  (the cost of the filter does not grow with it). Without it, sequences are capped at
  ``l_max`` and a longer one is an error, not a silent truncation as in the reference.
- Positional features and the decay rates are fixed buffers (the reference's default
  ``lr_pos_emb=0`` / ``modulation_lr=0``), recomputed from the config rather than stored.
- Each Sin layer of the filter MLP has its own learnable frequency (the reference shares one
  module, hence one frequency vector, across the MLP).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from kernels import FFTConv
from kernels.short_conv import short_conv
from models.projections import linear_from_channels, linear_to_channels


def check_seq_len(seq_len: int, l_max: int, filter_len: int | None) -> int:
    """Number of filter taps for a sequence of ``seq_len``; raises past ``l_max`` without a
    partial convolution."""
    if filter_len is None:
        if seq_len > l_max:
            raise ValueError(
                f"sequence length {seq_len} exceeds l_max={l_max}; set model.filter_len to run "
                "past the training length"
            )
        return seq_len
    return min(seq_len, filter_len)


def _last(x: Tensor, m: int) -> Tensor:
    """The last ``m`` positions of ``x`` [..., L], zeros before the first (causal padding)."""
    kept = x[..., max(x.shape[-1] - m, 0) :]
    return torch.nn.functional.pad(kept, (m - kept.shape[-1], 0))


class PositionalFeatures(nn.Module):
    """Features of the filter position t in [0, l_max): normalized time and sin/cos bands."""

    def __init__(self, emb_dim: int, l_max: int) -> None:
        super().__init__()
        if emb_dim < 3 or emb_dim % 2 == 0:
            raise ValueError(f"emb_dim must be odd and >= 3 (time + sin/cos pairs); got {emb_dim}")
        bands = (emb_dim - 1) // 2
        t = torch.linspace(0, 1, l_max)[:, None]  # [l_max, 1]
        w = 2 * math.pi * torch.arange(l_max, dtype=torch.float32)[:, None] / l_max
        f = torch.linspace(1e-4, bands - 1, bands)[None, :]  # [1, bands]
        # z = exp(-i f w) split into real and imaginary parts, as in the reference
        z = torch.cat([t, torch.cos(f * w), -torch.sin(f * w)], dim=-1)  # [l_max, emb_dim]
        self.register_buffer("z", z, persistent=False)
        self.register_buffer("t", t, persistent=False)

    def forward(self, n: int) -> tuple[Tensor, Tensor]:
        return self.z[:n], self.t[:n]


class Sin(nn.Module):
    """sin(freq * x) with a learnable frequency per feature."""

    def __init__(self, dim: int, w: float) -> None:
        super().__init__()
        self.freq = nn.Parameter(torch.full((dim,), float(w)))

    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(self.freq * x)


class ExponentialModulation(nn.Module):
    """Multiplies channel c of the filter by exp(-|delta_c| t): a decay window whose rate is
    spread across channels, from a slow decay (reaching ``target`` at ``slow_decay_pct`` of
    l_max) to a fast one (reaching it at ``fast_decay_pct``)."""

    def __init__(
        self,
        channels: int,
        fast_decay_pct: float = 0.3,
        slow_decay_pct: float = 1.5,
        target: float = 1e-2,
        shift: float = 0.0,
    ) -> None:
        super().__init__()
        max_decay = math.log(target) / fast_decay_pct
        min_decay = math.log(target) / slow_decay_pct
        self.register_buffer(
            "deltas", torch.linspace(min_decay, max_decay, channels)[None, :], persistent=False
        )
        self.shift = shift

    def forward(self, t: Tensor, h: Tensor) -> Tensor:
        return h * (torch.exp(-t * self.deltas.abs()) + self.shift)  # [n, channels]


class HyenaFilter(nn.Module):
    """Implicit long filters: ``channels`` filters of up to ``l_max`` taps from a small MLP of the
    position, plus the D skip term (``bias``) of each channel.

    The MLP's parameters carry ``_optim`` (own learning rate and weight decay, 0 by default),
    which ``models.tasks`` turns into an optimizer parameter group.
    """

    def __init__(
        self,
        channels: int,
        l_max: int,
        *,
        emb_dim: int = 3,
        filter_order: int = 64,
        num_inner_mlps: int = 2,
        sin_freq: float = 1.0,
        modulate: bool = True,
        lr: float | None = None,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__()
        self.channels, self.l_max = channels, l_max
        self.pos = PositionalFeatures(emb_dim, l_max)
        layers: list[nn.Module] = [nn.Linear(emb_dim, filter_order), Sin(filter_order, sin_freq)]
        for _ in range(num_inner_mlps):
            layers += [nn.Linear(filter_order, filter_order), Sin(filter_order, sin_freq)]
        layers.append(nn.Linear(filter_order, channels, bias=False))
        self.mlp = nn.Sequential(*layers)
        self.modulation = ExponentialModulation(channels) if modulate else None
        self.bias = nn.Parameter(torch.randn(channels))  # D skip

        optim = {"weight_decay": weight_decay} | ({"lr": lr} if lr is not None else {})
        for p in self.mlp.parameters():
            p._optim = optim

    def forward(self, n: int) -> Tensor:
        """The first ``n`` taps of every filter: [channels, n]."""
        if n > self.l_max:
            raise ValueError(
                f"filter of {n} taps requested; the filter grid ends at l_max={self.l_max}"
            )
        z, t = self.pos(n)  # [n, emb_dim], [n, 1]
        h = self.mlp(z)  # [n, channels]
        if self.modulation is not None:
            h = self.modulation(t, h)
        return h.transpose(0, 1)


class HyenaOperator(nn.Module):
    """Hyena mixer: [B, L, d_model] -> [B, L, d_model], causal.

    Args:
        d_model: width of the input and output.
        l_max: longest sequence (and grid of the implicit filter).
        order: depth of the recurrence; order - 1 long convolutions and order gates.
        filter_order: width of the implicit filter MLP.
        short_filter: taps of the causal depthwise conv after in_proj.
        filter_len: taps of the long filters (partial convolution); None = the sequence length,
            capped at l_max.
        emb_dim: size of the positional features (odd: time + sin/cos pairs).
        sin_freq: initial frequency of the filter MLP's Sin activations.
        modulate: apply the exponential decay window to the filters.
        dropout: dropout on the gated input of each long convolution (disables gate fusion).
        filter_lr, filter_weight_decay: optimizer settings of the filter MLP (None = base lr).
        fftconv_backend: ``kernels.fftconv`` backend ("auto", "torch", "monarch", "triton").
    """

    def __init__(
        self,
        d_model: int,
        l_max: int,
        order: int = 2,
        filter_order: int = 64,
        short_filter: int = 3,
        filter_len: int | None = None,
        emb_dim: int = 3,
        sin_freq: float = 1.0,
        modulate: bool = True,
        dropout: float = 0.0,
        filter_lr: float | None = None,
        filter_weight_decay: float = 0.0,
        fftconv_backend: str = "auto",
    ) -> None:
        super().__init__()
        if order < 2:
            raise ValueError(f"order must be >= 2 (at least one long convolution); got {order}")
        if filter_len is not None and not 1 <= filter_len <= l_max:
            raise ValueError(f"filter_len must be in [1, l_max={l_max}]; got {filter_len}")
        self.d_model, self.l_max, self.order, self.filter_len = d_model, l_max, order, filter_len
        inner = (order + 1) * d_model
        self.in_proj = nn.Linear(d_model, inner)
        self.short_filter = nn.Parameter(torch.empty(inner, short_filter))  # [D, K] depthwise
        self.short_filter_bias = nn.Parameter(torch.empty(inner))
        bound = 1 / math.sqrt(short_filter)  # nn.Conv1d's default init, fan_in = K
        nn.init.uniform_(self.short_filter, -bound, bound)
        nn.init.uniform_(self.short_filter_bias, -bound, bound)
        self.filter = HyenaFilter(
            d_model * (order - 1),
            l_max,
            emb_dim=emb_dim,
            filter_order=filter_order,
            sin_freq=sin_freq,
            modulate=modulate,
            lr=filter_lr,
            weight_decay=filter_weight_decay,
        )
        self.fftconv = FFTConv(l_max, mode="causal", backend=fftconv_backend)
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(d_model, d_model)

    @property
    def history(self) -> int:
        """Past positions a long convolution reads: its taps (``filter_len``, else ``l_max``)."""
        return self.l_max if self.filter_len is None else self.filter_len

    def forward(self, u: Tensor, cache: dict | None = None) -> Tensor:
        """[B, L, d] -> [B, L, d]. ``cache`` (for ``HyenaLM.generate``): an empty dict (or one
        holding only ``static``, see ``decode``) makes this call a prefill that also leaves in it
        what decoding needs; a filled one decodes ``u``'s positions one by one after the ones it
        has seen."""
        if cache is not None and "k" in cache:
            return self.decode(u, cache)
        L = u.shape[1]
        taps = check_seq_len(L, self.l_max, self.filter_len)
        # in_proj writes each of its order + 1 streams as its own contiguous [B, d, L] tensor
        # (no transposed copy, no slice copies for the kernels); its bias is added inside the
        # short conv's kernel, its gradient too
        n = self.order + 1
        streams = linear_to_channels(u, self.in_proj.weight, chunks=n)
        filters = zip(
            streams,
            self.short_filter.chunk(n),
            self.short_filter_bias.chunk(n),
            self.in_proj.bias.chunk(n),
            strict=True,
        )
        *x, v = (  # order gates x0..x_{order-1} and the value v
            short_conv(z, w, b, input_bias=ib, padding="causal") for z, w, b, ib in filters
        )
        if cache is not None:
            self._check_decodable()
            cd = torch.float64 if u.dtype == torch.float64 else torch.float32
            kept = min(L, self.short_filter.shape[1] - 1)  # the short conv's last inputs
            biased = [
                z[..., L - kept :].to(cd) + ib.to(cd)[:, None]
                for z, ib in zip(streams, self.in_proj.bias.chunk(n), strict=True)
            ]
            cache["short"] = _last(torch.cat(biased, dim=1), self.short_filter.shape[1] - 1)
            cache["history"], cache["seen"] = [], L
            # the next position, on the device: a static cache's decoding takes its indices
            # from it, not from the host, so that a step can be captured in a CUDA graph and
            # replayed (the default on CUDA; elsewhere the window is a view at a host index)
            if cache.get("static") is None:
                cache["static"] = u.device.type == "cuda"
            if cache["static"]:
                cache["pos"] = torch.full((), L, dtype=torch.long, device=u.device)
                cache["lags"] = torch.arange(self.history, device=u.device)
            params = (self.in_proj.weight, self.in_proj.bias, self.short_filter)
            params += (self.short_filter_bias, self.out_proj.weight, self.out_proj.bias)
            cache["weights"] = [p.to(cd) for p in params]  # in the decoding dtype, once
        k = self.filter(taps).reshape(self.order - 1, self.d_model, taps)  # [order-1, d, taps]
        skip = self.filter.bias.view(self.order - 1, self.d_model)  # [order-1, d]
        fuse_pregate = not (self.training and self.dropout.p > 0)
        for step, gate in enumerate(reversed(x[1:])):
            if cache is not None:  # the convolution's last inputs, position p at p % history
                vin = _last(v, self.history).to(cd) * _last(gate, self.history).to(cd)
                cache["history"].append(vin.roll(L % self.history, dims=-1))
            pregate = gate if fuse_pregate else None
            if not fuse_pregate:
                v = self.dropout(v * gate)
            if step == self.order - 2:  # last step: x0 gates the skip too, so D joins lag 0
                k_last = torch.cat([k[step, :, :1] + skip[step, :, None], k[step, :, 1:]], dim=-1)
                v = x[0] * self.fftconv(v, k_last, pregate=pregate)
            else:
                v = self.fftconv(v, k[step], pregate=pregate, bias=skip[step])
        if cache is not None:
            if taps != self.history:  # the prompt was shorter than the filter
                k = self.filter(self.history).reshape(self.order - 1, self.d_model, -1)
            # lags 0 .. history - 1 twice, reversed: decode's window into it (see there)
            cache["k"] = k.to(cd).repeat(1, 1, 2).flip(-1)
            cache["skip"] = skip.to(cd)
        return linear_from_channels(v, self.out_proj.weight, self.out_proj.bias)  # [B, L, d]

    def _check_decodable(self) -> None:
        if self.training and self.dropout.p > 0:
            raise ValueError("a Hyena cache decodes in eval mode only (the mixer's dropout is on)")

    @torch.no_grad()
    def decode(self, u: Tensor, cache: dict) -> Tensor:
        """The operator on ``u`` [B, T, d], positions that follow those the cache has seen
        (a prefill's, then earlier decodes'), one position at a time: O(d * history) per
        position for the long convolutions (direct sums over the kept inputs) instead of a
        whole forward. Exactly the forward's math, in fp32 (fp64 for fp64 input), the result
        in u's dtype.

        The cache holds the short conv's last ``K - 1`` biased inputs, and per long
        convolution its last ``h = history`` gated inputs in a ring, the input of position p
        at ``p % h``; the filters as ``F``, lags 0 .. h - 1 twice over, reversed; the D skips;
        in a static cache the next position ``pos`` as a device scalar. Position t writes its
        input at ``a = t % h``, and its output
        ``sum_lag k[lag] x[t - lag] = sum_p ring[p] k[(a - p) % h]`` takes the filter as the
        window ``F[h - 1 - a : 2h - 1 - a]``. In a ``static`` cache (the
        default on CUDA) every index comes from ``pos`` on the device (the window gathered) and
        every update is in place, so that one step is the same work each time, with no host
        value in it: ``CausalLM.generate`` captures it as a CUDA graph. Otherwise a comes from
        the host's count and the window is a view (no copy of the filter: 20% less time a
        token for hyena-s on a CPU)."""
        self._check_decodable()
        n, hist, cd = self.order + 1, self.history, cache["k"].dtype
        w_in, b_in, w_short, b_short, w_out, b_out = cache["weights"]
        outs = []
        if self.filter_len is None and cache["seen"] + u.shape[1] > self.l_max:
            raise ValueError(
                f"decoding to position {cache['seen'] + u.shape[1]} exceeds l_max={self.l_max}; "
                "set model.filter_len to run past the training length"
            )
        static = cache["static"]
        for t in range(u.shape[1]):
            z = torch.nn.functional.linear(u[:, t].to(cd), w_in, b_in)  # [B, inner]
            window = torch.cat([cache["short"], z[..., None]], dim=-1)  # [B, inner, K]
            cache["short"].copy_(window[..., 1:])
            *x, v = ((window * w_short).sum(-1) + b_short).chunk(n, dim=-1)  # [B, d] each
            if static:
                at = cache["pos"].remainder(hist)
                taps = (hist - 1 - at) + cache["lags"]  # the filter's window, see above
            else:
                at = (cache["seen"] + t) % hist
            for step, gate in enumerate(reversed(x[1:])):
                vin = v * gate
                ring = cache["history"][step]  # [B, d, hist]
                if static:
                    ring.index_copy_(-1, at.view(1), vin[..., None])
                    k = cache["k"][step].index_select(-1, taps)
                else:
                    ring[..., at] = vin
                    k = cache["k"][step, :, hist - 1 - at : 2 * hist - 1 - at]
                v = torch.linalg.vecdot(ring, k) + cache["skip"][step] * vin
                if step == self.order - 2:
                    v = x[0] * v
            if static:
                cache["pos"].add_(1)
            outs.append(torch.nn.functional.linear(v, w_out, b_out))
        cache["seen"] += u.shape[1]
        return torch.stack(outs, dim=1).to(u.dtype)
