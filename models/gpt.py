"""GPT baseline: the Hyena LM with multi-head causal self-attention in place of the Hyena mixer.

Built to be the same size as the Hyena LM it is compared with (``gpt-s`` vs ``hyena-s``: same
width, depth, MLP width, vocabulary, pre-norm LayerNorm blocks, GELU (tanh) MLP, tied head and
GPT-2 initialisation), so that a benchmark compares sequence mixers and nothing else. It plugs
into the same training stack: ``idx [B, L] -> logits [B, L, padded_vocab_size]``.

Design choices:
- Attention is ``torch.nn.functional.scaled_dot_product_attention(is_causal=True)``: PyTorch
  picks the kernel (flash attention on CUDA in fp16/bf16 with a head dim that is a multiple of
  8, e.g. ``gpt-s``'s 12 heads of 72; memory-efficient or math kernels otherwise).
- Rotary position embeddings (RoFormer, rotate-half layout as in GPT-NeoX), not learned
  absolute positions: no parameter depends on the sequence length, so one model runs at any
  length (a learned table would need ``l_max`` = the longest benchmark length and, at 32K,
  would add 28M parameters to ``gpt-s``: no longer the same size as ``hyena-s``). ``l_max`` is
  the training length (the data config's ``seq_len`` follows it); nothing caps a sequence at it.
- The rotary angles are computed in every forward from the sequence length (a few thousand
  values, shared by all layers), not stored: nothing to resize and nothing that a model built
  on the meta device would lose.
- Linear layers keep their biases, as GPT-2 and the Hyena LM's projections do.
- Named sizes (``GPTConfig.from_name``) and HF-style ``save_pretrained`` / ``from_pretrained``
  (``config.json`` with ``model_type: "gpt-lm"`` + ``model.safetensors``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from einops import rearrange
from torch import Tensor, nn
from torch.nn import functional as F

from .lm import MLP, CausalLM, LMConfig, add_norm

MODEL_TYPE = "gpt-lm"


@dataclass
class GPTConfig(LMConfig):
    name: str = "custom"  # preset this config came from (informational)
    vocab_size: int = 256  # tokens of the tokenizer
    pad_vocab_multiple: int = 8  # embedding rows padded up to a multiple of this
    n_layer: int = 2  # number of blocks
    d_model: int = 128  # residual width
    n_head: int = 4  # attention heads; d_model / n_head must be even (rotary pairs)
    d_inner: int | None = None  # MLP hidden width; None = 4 * d_model
    l_max: int = 256  # training sequence length (rotary positions run past it)
    rope_base: float = 10000.0  # rotary frequencies: base ** (-2i / head_dim)
    bias: bool = True  # biases in the attention and MLP linear layers
    embed_dropout: float = 0.1  # dropout on the token embeddings
    attn_dropout: float = 0.0  # dropout on the attention weights
    resid_dropout: float = 0.0  # dropout on each attention and MLP output
    norm_eps: float = 1e-5  # LayerNorm epsilon
    initializer_range: float = 0.02  # std of the GPT-2 initialisation
    tie_embeddings: bool = True  # the output head shares the embedding matrix
    norm_backend: str = "auto"  # add_layer_norm backend, or "unfused" (models.lm.NORM_BACKENDS)

    def __post_init__(self) -> None:
        self._check_sizes(
            ("vocab_size", "pad_vocab_multiple", "n_layer", "d_model", "n_head", "d_inner", "l_max")
        )
        if self.d_model % self.n_head != 0:
            raise ValueError(
                f"model.d_model={self.d_model} must be a multiple of model.n_head={self.n_head}"
            )
        if self.head_dim % 2 != 0:
            raise ValueError(
                f"head dim d_model / n_head = {self.head_dim} must be even (rotary embeddings "
                f"rotate pairs of features); change model.n_head={self.n_head}"
            )
        if not self.rope_base > 1.0:
            raise ValueError(f"model.rope_base must be > 1; got {self.rope_base}")
        self._check_rates(("embed_dropout", "attn_dropout", "resid_dropout"))

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head


PRESETS: dict[str, dict[str, Any]] = {
    # hyena-tiny's twin: CPU tests and the benchmark's smoke run
    "gpt-tiny": dict(
        vocab_size=256,
        n_layer=2,
        d_model=128,
        n_head=4,
        d_inner=256,
        l_max=256,
        embed_dropout=0.0,
    ),
    # hyena-s's twin (d_model 864, 18 layers, MLP 1728, GPT-2 vocabulary): 12 heads of 72
    "gpt-s": dict(
        vocab_size=50257,
        n_layer=18,
        d_model=864,
        n_head=12,
        d_inner=1728,
        l_max=2048,
        embed_dropout=0.1,
    ),
}
GPTConfig.presets = PRESETS


def rotary_angles(
    seq_len: int, head_dim: int, base: float, device: torch.device, start: int | Tensor = 0
) -> Tensor:
    """Angle t * base^(-2i / head_dim) of position t = start .. start + seq_len - 1 and feature
    pair i: [seq_len, head_dim/2], fp32 (positions past 2^24 would lose integers; far beyond
    any length here). ``start`` may be a device scalar (a decoding step's position, which a
    CUDA graph replays without the host)."""
    with torch.autocast(device.type, enabled=False):
        inv_freq = base ** (
            -torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim
        )
        t = torch.arange(seq_len, device=device, dtype=torch.float32) + start
        return torch.outer(t, inv_freq)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotates feature pairs (i, i + head_dim/2) of x [B, n_head, L, head_dim] by the angles
    whose cos and sin are [L, head_dim/2]."""
    x1, x2 = x.chunk(2, dim=-1)  # [B, nh, L, hd/2] each
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with rotary positions: [B, L, d] -> [B, L, d]."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head, self.head_dim = config.n_head, config.head_dim
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=config.bias)
        self.out_proj = nn.Linear(config.d_model, config.d_model, bias=config.bias)
        self.attn_dropout = config.attn_dropout

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: dict | None = None) -> Tensor:
        """``cache`` (for ``generate``): the keys and values of the positions before x's
        (rotated), which x's queries attend to as well; x's own are written into it.

        The cache's buffers have room for ``capacity`` positions (``_cache_capacity``, at least
        the prefill's; more room is made when a decoding call needs it). Decoding writes at the
        cache's next position ``pos``, a device scalar, and attends over the whole buffer with
        a mask (keys up to each query's own position), so that the step is the same work each
        time and ``CausalLM.generate`` can replay it as a CUDA graph."""
        qkv = rearrange(self.qkv(x), "b l (three h e) -> three b h l e", three=3, h=self.n_head)
        q, k, v = qkv.unbind(0)  # [B, nh, L, hd] each
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        dropout = self.attn_dropout if self.training else 0.0
        mask, causal = None, True
        if cache is not None:
            T = q.shape[2]
            if "k" in cache:  # queries at positions pos.. attend to keys 0..pos + their own
                if cache["seen"] + T > cache["k"].shape[2]:  # room for T more (host values)
                    grow = max(cache["seen"] + T, 2 * cache["k"].shape[2])
                    for name in ("k", "v"):
                        buf = cache[name]
                        cache[name] = buf.new_zeros(*buf.shape[:2], grow, buf.shape[3])
                        cache[name][:, :, : buf.shape[2]] = buf
                at = cache["pos"] + torch.arange(T, device=q.device)  # [T]
                cache["k"].index_copy_(2, at, k.to(cache["k"].dtype))
                cache["v"].index_copy_(2, at, v.to(cache["v"].dtype))
                k, v = cache["k"].to(q.dtype), cache["v"].to(q.dtype)
                mask = torch.arange(k.shape[2], device=q.device)[None, :] <= at[:, None]
                causal = False
                cache["pos"].add_(T)
            else:  # the prefill: the buffers, the prompt's keys and values at 0 .. T - 1
                room = max(cache.get("capacity") or 0, T)
                for name, new in (("k", k), ("v", v)):
                    cache[name] = new.new_zeros(*new.shape[:2], room, new.shape[3])
                    cache[name][:, :, :T] = new
                cache["pos"] = torch.full((), T, dtype=torch.long, device=q.device)
            cache["seen"] = cache.get("seen", 0) + T
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal
        )
        return self.out_proj(rearrange(y, "b h l e -> b l (h e)"))


class GPTBlock(nn.Module):
    """``(x, residual, cos, sin) -> (x, residual)``: attention then MLP, each after the fused
    residual add and norm, as ``models.lm.HyenaBlock`` does with its mixer."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        self.attn = CausalSelfAttention(config)
        self.norm2 = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        self.mlp = MLP(config.d_model, config.d_inner)
        self.dropout = nn.Dropout(config.resid_dropout)
        self.norm_backend = config.norm_backend

    def forward(
        self,
        x: Tensor,
        residual: Tensor | None,
        cos: Tensor,
        sin: Tensor,
        cache: dict | None = None,
    ) -> tuple[Tensor, Tensor]:
        """``cache``: the attention's (``CausalSelfAttention.forward``), for ``generate``."""
        h, residual = add_norm(self.norm1, x, residual, self.norm_backend)
        x = self.dropout(self.attn(h, cos, sin, cache))
        h, residual = add_norm(self.norm2, x, residual, self.norm_backend)
        return self.dropout(self.mlp(h)), residual


class GPTLM(CausalLM):
    """Causal LM with attention mixers: token ids [B, L] -> logits [B, L, padded_vocab_size]."""

    MODEL_TYPE = MODEL_TYPE
    CONFIG = GPTConfig
    MIXER = CausalSelfAttention

    def __init__(self, config: GPTConfig) -> None:
        super().__init__(config, GPTBlock)

    def _new_cache(self, capacity: int | None = None, static: bool | None = None) -> dict:
        """``CausalLM._new_cache``, with ``capacity`` in each block's dict: the attention's
        key and value buffers are made that long at the prefill. Every GPT cache decodes as a
        static one (its steps take their positions from the device), whatever ``static`` says."""
        cache = super()._new_cache(capacity, static)
        for layer in cache["layers"]:
            layer["capacity"] = capacity
        return cache

    def block_args(self, idx: Tensor, start: int | Tensor = 0) -> tuple[Tensor, Tensor]:
        """The rotary cos and sin [L, hd/2] of positions ``start`` .. ``start + L - 1`` that
        every block's attention takes (``start`` an int, or a device scalar)."""
        angles = rotary_angles(
            idx.shape[1], self.config.head_dim, self.config.rope_base, idx.device, start=start
        )
        return angles.cos(), angles.sin()
