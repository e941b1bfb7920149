"""Hyena language model: token embeddings, pre-norm blocks (Hyena mixer + MLP), tied head.

As in the Hyena paper's GPT-style models (safari ``ConvLMHeadModel``): LayerNorm, GELU (tanh)
MLP, dropout on the embeddings, GPT-2 initialisation (normal(0, 0.02) for every linear and
embedding, the residual output projections scaled by 1/sqrt(2 n_layer)).

Design choices:
- Named sizes (``HyenaConfig.from_name``) and HF-style ``save_pretrained`` /
  ``from_pretrained`` (``config.json`` + ``model.safetensors``); the tied head is stored once.
- The vocabulary is padded to a multiple of ``pad_vocab_multiple`` (faster matmuls); the padded
  logits are trained down like any unused token.
- ``filter_len`` can be changed when loading (``from_pretrained(dir, filter_len=...)``): it does
  not change any parameter, only how many filter taps are used.
- ``generate`` runs the prompt through the model once, then decodes each new token from a
  cache (``HyenaOperator.decode``: the short conv's last inputs and each long convolution's
  last ``filter_len`` or ``l_max`` gated inputs, summed against the filter directly); its
  context is cropped to ``context_window`` (see there). On CUDA a decoding step takes every
  position from the device, so after one eager step the rest replay it as a CUDA graph
  (``_DecodeGraph``).
- Training takes ``loss(idx, targets)``, the head and the cross-entropy fused
  (``models.loss.linear_cross_entropy``): the [B, L, V] logits are never materialized.
  ``forward`` still returns logits for whoever needs them (evaluation, sampling).
- The blocks pass the residual stream alongside the branch output, ``(x, residual) ->
  (x, residual)``, so that each residual add and the LayerNorm after it are one fused op
  (``kernels.layer_norm.add_layer_norm``): the stream in fp32, the normed output written in the
  dtype of the next matmul (bf16 under autocast). The same math as ``x + branch`` then
  ``nn.LayerNorm``, which ``norm_backend="unfused"`` still runs; the ``nn.LayerNorm`` modules
  hold the parameters, so checkpoints are unchanged.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_model, save_model
from torch import Tensor, nn
from torch.nn import functional as F

from kernels.fftconv.interface import BACKENDS
from kernels.layer_norm import add_layer_norm
from kernels.layer_norm.interface import BACKENDS as LAYER_NORM_BACKENDS

from .hyena import HyenaOperator
from .loss import linear_cross_entropy

# "unfused": the residual add and nn.LayerNorm as separate ops (the blocks before the fused op)
NORM_BACKENDS = (*LAYER_NORM_BACKENDS, "unfused")
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
MODEL_TYPE = "hyena-lm"


class LMConfig:
    """What the LM configs (dataclasses) share: presets by name, plain dicts for export, and the
    padded vocabulary. A subclass sets ``presets`` (its named configurations)."""

    presets: ClassVar[dict[str, dict[str, Any]]] = {}

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_multiple
        return (self.vocab_size + m - 1) // m * m

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> LMConfig:
        if name not in cls.presets:
            raise ValueError(f"unknown model name {name!r}; known: {sorted(cls.presets)}")
        return cls(**(cls.presets[name] | {"name": name} | overrides))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def _check_sizes(self, names: tuple[str, ...]) -> None:
        """``d_inner``'s default (4 d_model), then each of ``names`` a positive int."""
        if self.d_inner is None:
            self.d_inner = 4 * self.d_model
        for name in names:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"model.{name} must be a positive int; got {value!r}")

    def _check_rates(self, dropouts: tuple[str, ...]) -> None:
        """Each of ``dropouts`` in [0, 1), and the norm backend one of ``NORM_BACKENDS``."""
        for name in dropouts:
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"model.{name} must be in [0, 1); got {getattr(self, name)}")
        check_norm_backend(self.norm_backend)

    @classmethod
    def from_dict(cls, d: dict[str, Any], **overrides: Any) -> LMConfig:
        known = {f.name for f in fields(cls)}
        return cls(**({k: v for k, v in d.items() if k in known} | overrides))


@dataclass
class HyenaConfig(LMConfig):
    name: str = "custom"  # preset this config came from (informational)
    vocab_size: int = 256  # tokens of the tokenizer
    pad_vocab_multiple: int = 8  # embedding rows padded up to a multiple of this
    n_layer: int = 2  # number of blocks
    d_model: int = 128  # residual width
    d_inner: int | None = None  # MLP hidden width; None = 4 * d_model
    l_max: int = 256  # longest sequence without filter_len; grid of the implicit filters
    order: int = 2  # Hyena recurrence depth (order - 1 long convolutions)
    filter_order: int = 64  # width of the implicit filter MLP
    emb_dim: int = 3  # positional features of the filter (odd: time + sin/cos pairs)
    short_filter: int = 3  # taps of the short causal depthwise conv
    filter_len: int | None = None  # long filter taps (partial conv, any sequence length)
    sin_freq: float = 1.0  # initial frequency of the filter MLP's Sin activations
    modulate: bool = True  # exponential decay window on the filters
    filter_lr: float | None = None  # learning rate of the filter MLP; None = the base lr
    filter_weight_decay: float = 0.0  # weight decay of the filter MLP
    embed_dropout: float = 0.1  # dropout on the token embeddings
    resid_dropout: float = 0.0  # dropout on each mixer and MLP output
    mixer_dropout: float = 0.0  # dropout inside the Hyena recurrence
    norm_eps: float = 1e-5  # LayerNorm epsilon
    initializer_range: float = 0.02  # std of the GPT-2 initialisation
    tie_embeddings: bool = True  # the output head shares the embedding matrix
    fftconv_backend: str = "auto"  # kernels.fftconv backend
    norm_backend: str = "auto"  # add_layer_norm backend, or "unfused" (NORM_BACKENDS)

    def __post_init__(self) -> None:
        self._check_sizes(
            (
                "vocab_size",
                "pad_vocab_multiple",
                "n_layer",
                "d_model",
                "d_inner",
                "l_max",
                "filter_order",
                "short_filter",
            )
        )
        if self.order < 2:
            raise ValueError(f"model.order must be >= 2; got {self.order}")
        if self.emb_dim < 3 or self.emb_dim % 2 == 0:
            raise ValueError(f"model.emb_dim must be odd and >= 3; got {self.emb_dim}")
        if self.filter_len is not None and not 1 <= self.filter_len <= self.l_max:
            raise ValueError(
                f"model.filter_len must be null or in [1, l_max={self.l_max}]; "
                f"got {self.filter_len}"
            )
        if self.fftconv_backend not in BACKENDS:
            raise ValueError(
                f"model.fftconv_backend must be one of {BACKENDS}; got {self.fftconv_backend!r}"
            )
        self._check_rates(("embed_dropout", "resid_dropout", "mixer_dropout"))


# Hyena paper's 153M GPT-style model on the Pile (GPT-2 tokenizer), 2K context
_HYENA_S: dict[str, Any] = dict(
    vocab_size=50257,
    n_layer=18,
    d_model=864,
    d_inner=1728,
    l_max=2048,
    filter_order=64,
    emb_dim=33,
    sin_freq=14.0,
    embed_dropout=0.1,
)

PRESETS: dict[str, dict[str, Any]] = {
    # CPU demos and tests: a byte-level model that learns visibly within a few hundred steps
    "hyena-tiny": dict(
        vocab_size=256,
        n_layer=2,
        d_model=128,
        d_inner=256,
        l_max=256,
        filter_order=32,
        emb_dim=5,
        sin_freq=1.0,
        embed_dropout=0.0,
    ),
    "hyena-s": _HYENA_S,
    # the paper's Hyena-s-4K/8K: the same model trained at a longer context
    "hyena-s-4k": _HYENA_S | {"l_max": 4096},
    "hyena-s-8k": _HYENA_S | {"l_max": 8192},
}
HyenaConfig.presets = PRESETS


def sample_logits(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One token per row of ``logits`` [B, V]: argmax at temperature 0, else a draw from the
    softmax at ``temperature`` restricted to the ``top_k`` most likely tokens and then to the
    smallest set of them whose probability reaches ``top_p``."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        top = torch.topk(logits, top_k, dim=-1)  # exactly k tokens, ties or not
        logits = torch.full_like(logits, -math.inf).scatter(-1, top.indices, top.values)
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # drop a token when the more likely ones alone already reach top_p (the first is kept)
        drop = probs.cumsum(dim=-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, -math.inf)
        logits = torch.full_like(logits, -math.inf).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


def check_norm_backend(norm_backend: str) -> None:
    if norm_backend not in NORM_BACKENDS:
        raise ValueError(f"model.norm_backend must be one of {NORM_BACKENDS}; got {norm_backend!r}")


def add_norm(
    norm: nn.LayerNorm, x: Tensor, residual: Tensor | None, backend: str
) -> tuple[Tensor, Tensor]:
    """The stream ``residual + x`` (x alone when ``residual`` is None) and its ``norm``:
    ``(normed, stream)``. ``backend`` is ``add_layer_norm``'s (the fused op: the stream in
    fp32, the normed output in the autocast dtype under autocast), or ``"unfused"``: the add
    and ``norm`` as separate ops (the stream in the promoted dtype of the add, the norm in fp32
    under autocast)."""
    if backend == "unfused":
        residual = x if residual is None else residual + x
        return norm(residual), residual
    return add_layer_norm(x, residual, norm.weight, norm.bias, norm.eps, backend=backend)


class MLP(nn.Module):
    def __init__(self, d_model: int, d_inner: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_inner)
        self.fc2 = nn.Linear(d_inner, d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class HyenaBlock(nn.Module):
    """Pre-norm block that passes the residual stream alongside: ``(x, residual) -> (x,
    residual)``.

    ``x`` is the last branch's output, not yet added to the stream (the embeddings before the
    first block), ``residual`` the stream (None before the first block). The block computes

        residual = residual + x;  x = dropout(mixer(norm1(residual)))
        residual = residual + x;  x = dropout(mlp(norm2(residual)))

    each add fused with the norm after it (``add_norm``), and leaves the last add to the next
    block or the final norm: the math of ``x + dropout(mixer(norm1(x)))``, then
    ``x + dropout(mlp(norm2(x)))``.
    """

    def __init__(self, config: HyenaConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        self.mixer = HyenaOperator(
            config.d_model,
            config.l_max,
            order=config.order,
            filter_order=config.filter_order,
            short_filter=config.short_filter,
            filter_len=config.filter_len,
            emb_dim=config.emb_dim,
            sin_freq=config.sin_freq,
            modulate=config.modulate,
            dropout=config.mixer_dropout,
            filter_lr=config.filter_lr,
            filter_weight_decay=config.filter_weight_decay,
            fftconv_backend=config.fftconv_backend,
        )
        self.norm2 = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        self.mlp = MLP(config.d_model, config.d_inner)
        self.dropout = nn.Dropout(config.resid_dropout)
        self.norm_backend = config.norm_backend

    def forward(
        self, x: Tensor, residual: Tensor | None, cache: dict | None = None
    ) -> tuple[Tensor, Tensor]:
        """``cache``: the mixer's (``HyenaOperator.forward``), for ``HyenaLM.generate``."""
        h, residual = add_norm(self.norm1, x, residual, self.norm_backend)
        x = self.dropout(self.mixer(h, cache))
        h, residual = add_norm(self.norm2, x, residual, self.norm_backend)
        return self.dropout(self.mlp(h)), residual


def init_gpt2(module: nn.Module, std: float, n_layer: int, mixer: type[nn.Module]) -> None:
    """GPT-2 init of one module (``model.apply``): linear and embedding weights normal(0, std),
    biases zero, and the projections that write into the residual stream (the ``mixer``'s
    ``out_proj``, the MLP's ``fc2``) at std / sqrt(2 n_layer)."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=std)
    if isinstance(module, (mixer, MLP)):
        proj = module.out_proj if isinstance(module, mixer) else module.fc2
        nn.init.normal_(proj.weight, mean=0.0, std=std / math.sqrt(2 * n_layer))


class CausalLM(nn.Module):
    """Token ids [B, L] -> logits [B, L, padded_vocab_size]: embedding, ``n_layer`` pre-norm
    blocks, final norm, head tied to the embedding, GPT-2 init, HF-style export.

    ``hidden(idx)`` is the trunk up to the final norm ([B, L, d]); ``forward(idx)`` applies the
    head to it, and ``loss(idx, targets)`` fuses the head with the cross-entropy.

    A subclass sets ``MODEL_TYPE`` (its ``config.json`` tag), ``CONFIG`` (its config class,
    with a ``norm_backend`` field) and ``MIXER`` (the sequence mixer whose ``out_proj`` writes
    into the residual stream), passes its block class to ``__init__`` and, when its blocks take
    more than the branch output and the stream (``block(x, residual) -> (x, residual)``, as
    ``HyenaBlock``), overrides ``block_args``.
    """

    MODEL_TYPE: ClassVar[str]
    CONFIG: ClassVar[type[LMConfig]]
    MIXER: ClassVar[type[nn.Module]]

    def __init__(self, config: LMConfig, block: type[nn.Module]) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.padded_vocab_size, config.d_model)
        self.drop = nn.Dropout(config.embed_dropout)
        self.blocks = nn.ModuleList(block(config) for _ in range(config.n_layer))
        self.norm_f = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.padded_vocab_size, bias=False)
        self.apply(self._init_weights)
        if config.tie_embeddings:
            self.lm_head.weight = self.wte.weight

    def _init_weights(self, module: nn.Module) -> None:
        init_gpt2(module, self.config.initializer_range, self.config.n_layer, self.MIXER)

    def block_args(self, idx: Tensor, start: int = 0) -> tuple[Tensor, ...]:
        """Extra arguments every block gets after the branch output and the residual stream,
        computed once per forward from the token ids, the first at position ``start`` (the
        GPT's rotary cos and sin); none by default."""
        return ()

    def hidden(self, idx: Tensor) -> Tensor:
        """Token ids [B, L] -> final-normed hidden states [B, L, d] (what the head reads), in
        the autocast dtype under ``torch.autocast`` (fp32 with ``norm_backend="unfused"``), else
        in the embeddings' dtype."""
        if not isinstance(idx, Tensor) or idx.ndim != 2:
            shape = tuple(idx.shape) if isinstance(idx, Tensor) else type(idx).__name__
            raise ValueError(f"idx must be [batch, seq_len] token ids; got shape {shape}")
        if idx.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"idx must be integer token ids (int64 or int32); got {idx.dtype}")
        x, residual = self._blocks(idx)
        h, _ = add_norm(self.norm_f, x, residual, self.config.norm_backend)
        return h

    def _blocks(
        self, idx: Tensor, start: int = 0, caches: list[dict] | None = None
    ) -> tuple[Tensor, Tensor]:
        """The embedding and every block on token ids [B, L] whose first is at position
        ``start``, with each block's decoding cache when given: the last branch output and the
        stream (fp32 [B, L, d]), not yet added and normed."""
        extra = self.block_args(idx, start=start)
        x, residual = self.drop(self.wte(idx)), None  # [B, L, d]; the stream from block one on
        for i, block in enumerate(self.blocks):
            x, residual = block(x, residual, *extra, cache=None if caches is None else caches[i])
        return x, residual

    def forward(self, idx: Tensor) -> Tensor:
        return self.lm_head(self.hidden(idx))  # [B, L, V]

    def loss(
        self,
        idx: Tensor,
        targets: Tensor,
        *,
        ignore_index: int = -100,
        reduction: str = "sum",
        backend: str = "auto",
        chunk_size: int | None = None,
    ) -> Tensor:
        """Cross-entropy of the next-token logits against ``targets`` [B, L] (int64 ids, or
        ``ignore_index`` for unsupervised positions), with the head fused into the loss so
        that the [B, L, V] logits never exist; the same value and gradients as
        ``F.cross_entropy(self(idx).flatten(0, 1).float(), targets.flatten(), ...)``, except
        that a "mean" over no supervised target is 0, not NaN. ``backend`` and ``chunk_size``
        are ``models.loss.linear_cross_entropy``'s."""
        if not isinstance(targets, Tensor) or not isinstance(idx, Tensor):
            raise TypeError("idx and targets must be torch.Tensors of token ids")
        if targets.shape != idx.shape:
            raise ValueError(
                f"targets must have the shape of idx {tuple(idx.shape)}; got {tuple(targets.shape)}"
            )
        h = self.hidden(idx)  # [B, L, d]
        return linear_cross_entropy(
            h.flatten(0, 1),
            self.lm_head.weight,
            targets.flatten(),
            ignore_index=ignore_index,
            reduction=reduction,
            backend=backend,
            chunk_size=chunk_size,
        )

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> CausalLM:
        return cls(cls.CONFIG.from_name(name, **overrides))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def save_pretrained(self, save_directory: str | Path) -> Path:
        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        config = {"model_type": self.MODEL_TYPE, "architectures": [type(self).__name__]}
        config |= self.config.to_dict()
        (out / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        save_model(self, str(out / WEIGHTS_NAME), metadata={"format": "pt"})
        return out

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, map_location: str | torch.device = "cpu", **overrides: Any
    ) -> CausalLM:
        """Loads a ``save_pretrained`` directory; ``overrides`` replace config fields that do not
        change parameter shapes (e.g. ``filter_len``, ``fftconv_backend``, dropouts)."""
        directory = Path(directory)
        config_file = directory / CONFIG_NAME
        if not config_file.is_file():
            raise FileNotFoundError(f"{config_file} not found: not a save_pretrained directory")
        raw = json.loads(config_file.read_text())
        if raw.get("model_type") != cls.MODEL_TYPE:
            raise ValueError(
                f"{config_file} has model_type={raw.get('model_type')!r}, "
                f"expected {cls.MODEL_TYPE!r}"
            )
        model = cls(cls.CONFIG.from_dict(raw, **overrides))
        load_model(model, str(directory / WEIGHTS_NAME), strict=True, device=str(map_location))
        return model

    # -----------------------------------------------------------------------------------------
    # Sampling

    @property
    def context_window(self) -> int | None:
        """Tokens of context that decide the next token, where ``generate`` crops; None: all
        of them (a subclass with a bounded window says how many)."""
        return None

    @torch.no_grad()
    def generate(
        self,
        idx: Tensor,
        max_new_tokens: int,
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
        cuda_graph: bool | None = None,
    ) -> Tensor:
        """Autoregressive sampling: token ids ``idx`` [B, T] -> [B, T + max_new_tokens].

        Each new token is sampled from the logits of the last position (only the
        ``vocab_size`` real tokens, never the padding rows of the embedding), computed on the
        last ``context_window`` tokens (all of them where it is None). With ``use_cache`` (the
        default) the prompt runs through the model once and every later token through one
        decoding step per block, which computes that position alone from what the blocks kept
        of the earlier ones: the keys and values of the attention (``GPTLM``); for Hyena
        (``HyenaLM``) the short conv's last inputs and each long convolution's last
        ``filter_len`` (else ``l_max``) gated inputs, summed against the filter directly
        (``HyenaOperator.decode``), O(n_layer * d * W) per token instead of a whole forward
        over the window W. The same math as the forward; where a cache cannot reproduce it
        (``_cache_serves``: a Hyena sequence past ``l_max`` without ``filter_len``, whose
        window slides so that every layer restarts at its first token) each token from there
        runs the whole forward again, as with ``use_cache=False``.

        Args:
            idx: prompts of equal length, int64 on the model's device.
            max_new_tokens: tokens to append (>= 0).
            temperature: softmax temperature; 0 = greedy (argmax; top_k/top_p do not apply).
            top_k: keep the k most likely tokens (None = all).
            top_p: nucleus sampling, keep the smallest set of tokens with probability >= top_p
                (None = all).
            eos_token_id: a row stops once it produced this token; later positions of that row
                hold ``pad_token_id``. Generation ends early when every row has stopped.
            pad_token_id: filler after eos (None = eos_token_id).
            generator: torch.Generator on the model's device for reproducible sampling.
            use_cache: decode from a cache (above); False runs the whole forward per token.
            cuda_graph: with the cache on a CUDA device, run one decoding step eagerly, capture
                the next as a CUDA graph and replay it for every later token (a step is a few
                hundred small launches at batch 1, which the replay issues at once; the same
                math, ``_DecodeGraph``); only where at least ``GRAPH_MIN_STEPS`` steps are left.
                None (the default): on CUDA devices. True off CUDA is a ValueError.

        Runs in eval mode under ``torch.no_grad`` and restores the previous mode.
        """
        vocab = self.config.vocab_size
        device = self.wte.weight.device
        if not isinstance(idx, Tensor) or idx.ndim != 2 or idx.shape[1] < 1:
            shape = tuple(idx.shape) if isinstance(idx, Tensor) else type(idx).__name__
            raise ValueError(f"idx must be a [batch, length >= 1] tensor of token ids; got {shape}")
        if idx.dtype != torch.long:
            raise TypeError(f"idx must be int64 (torch.long) token ids; got {idx.dtype}")
        if idx.device != device:
            raise ValueError(f"idx is on {idx.device} but the model is on {device}")
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= vocab):
            raise ValueError(
                f"idx token ids must be in [0, vocab_size={vocab}); got min {int(idx.min())}, "
                f"max {int(idx.max())}"
            )
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int):
            raise TypeError(f"max_new_tokens must be an int; got {max_new_tokens!r}")
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0; got {max_new_tokens}")
        if not math.isfinite(temperature) or temperature < 0:
            raise ValueError(f"temperature must be a finite number >= 0; got {temperature}")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int)):
            raise TypeError(f"top_k must be None or an int; got {top_k!r}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be None or >= 1; got {top_k}")
        if top_p is not None and not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be None or in (0, 1]; got {top_p}")
        for name, token in (("eos_token_id", eos_token_id), ("pad_token_id", pad_token_id)):
            if token is not None and not 0 <= token < vocab:
                raise ValueError(f"{name} must be None or in [0, vocab_size={vocab}); got {token}")
        if generator is not None and generator.device.type != device.type:
            raise ValueError(
                f"generator is on {generator.device} but the model is on {device}; "
                f"use torch.Generator(device={str(device)!r})"
            )
        if not isinstance(use_cache, bool):
            raise TypeError(f"use_cache must be a bool; got {use_cache!r}")
        if cuda_graph is not None and not isinstance(cuda_graph, bool):
            raise TypeError(f"cuda_graph must be None or a bool; got {cuda_graph!r}")
        if cuda_graph and device.type != "cuda":
            raise ValueError(f"cuda_graph=True needs the model on a CUDA device; it is on {device}")
        graph = device.type == "cuda" if cuda_graph is None else cuda_graph
        pad = eos_token_id if pad_token_id is None else pad_token_id

        was_training = self.training
        self.eval()
        try:
            window = self.context_window
            total = idx.shape[1] + max_new_tokens
            finished = torch.zeros(idx.shape[0], dtype=torch.bool, device=device)
            caches = replay = None
            while idx.shape[1] < total:
                # a cache serves while the window has not slid past l_max without filter_len
                exact = self._cache_serves(idx.shape[1])
                context = idx if window is None else idx[:, -window:]
                if replay is not None and exact:
                    logits = replay(idx[:, -1:])
                elif caches is not None and exact:
                    logits = self._cached_logits(idx[:, -1:], caches)
                    # the step just run warmed up every kernel: capture the next one
                    if graph and total - idx.shape[1] - 1 >= GRAPH_MIN_STEPS:
                        replay = _DecodeGraph(self, caches, idx[:, -1:])
                elif use_cache and exact:
                    # the prefill fills it; static (device-indexed) steps only for the graph
                    caches = self._new_cache(capacity=total, static=graph)
                    logits = self._cached_logits(context, caches)
                else:
                    caches = replay = None
                    logits = self(context)[:, -1]
                token = sample_logits(
                    logits[:, :vocab].float(), temperature, top_k, top_p, generator
                )
                if eos_token_id is not None:
                    token = token.masked_fill(finished, pad)
                    finished |= token == eos_token_id
                idx = torch.cat([idx, token[:, None]], dim=1)
                if eos_token_id is not None and bool(finished.all()):
                    filler = idx.new_full((idx.shape[0], total - idx.shape[1]), pad)
                    idx = torch.cat([idx, filler], dim=1)
        finally:
            self.train(was_training)
        return idx

    def _new_cache(self, capacity: int | None = None, static: bool | None = None) -> dict:
        """An empty decoding cache: the positions it has seen (``pos`` on the host, ``step`` on
        the device once the prefill ran) and one dict per block, which the block fills on the
        first call (the prefill) and reads and extends after that. ``capacity``: the length the
        sequence will reach, for a block that sizes buffers by it (``GPTLM``). ``static``: every
        decoding step takes its positions from the device, replayable as a CUDA graph (None:
        on CUDA; ``HyenaOperator.decode``)."""
        layer = {} if static is None else {"static": static}
        return {"pos": 0, "step": None, "layers": [dict(layer) for _ in self.blocks]}

    @staticmethod
    def _advance_host(cache: dict, positions: int) -> None:
        """The host's counts of a cache, moved on by ``positions`` decoded without the host
        (a CUDA graph's replay): the model's and each block's (``seen``)."""
        cache["pos"] += positions
        for layer in cache["layers"]:
            layer["seen"] += positions

    def _cache_serves(self, length: int) -> bool:
        """Whether decoding from a cache gives the forward's logits for a sequence of
        ``length`` tokens (always, unless a subclass says otherwise)."""
        return True

    def _cached_logits(self, idx: Tensor, cache: dict) -> Tensor:
        """The last position's logits [B, padded_vocab] of ``idx``, the positions after those
        ``cache`` has seen, run through the blocks with their caches: a prefill where they are
        empty, decoding steps after that. Not through ``hidden``, which a task may have
        replaced with a compiled (CUDA-graph) trunk that must not write into the caches."""
        start = 0 if cache["step"] is None else cache["step"]  # a decoding step's on the device
        x, residual = self._blocks(idx, start, cache["layers"])
        if cache["step"] is None:
            cache["step"] = torch.full((), idx.shape[1], dtype=torch.long, device=idx.device)
        else:
            cache["step"].add_(idx.shape[1])
        cache["pos"] += idx.shape[1]
        h, _ = add_norm(self.norm_f, x[:, -1:], residual[:, -1:], self.config.norm_backend)
        return self.lm_head(h)[:, -1]


# decoding steps left at least, for generate to capture one as a CUDA graph (the capture costs
# about what a few eager steps do)
GRAPH_MIN_STEPS = 4


class _DecodeGraph:
    """One decoding step of ``model`` (``CausalLM._cached_logits`` on one token per row)
    captured as a CUDA graph, for ``generate`` to replay: ``replay(token) -> logits``.

    The step's work does not depend on the host: the blocks take every position from the
    cache's device scalars and update the cache in place (``HyenaOperator.decode``,
    ``CausalSelfAttention.forward``), so a replay is the eager step. The capture runs the
    step's Python once without running its kernels; the host counts it moved on by one are
    moved back, and each replay moves them on by one (``_advance_host``). Built after an eager
    step (every kernel compiled and warmed up, as capture requires) under the caller's autocast
    state, without autocast's cast cache (a cast made during capture would live in the graph's
    memory). The token goes in through a static buffer, the logits come out in one; a
    replay's logits are valid until the next replay."""

    def __init__(self, model: CausalLM, cache: dict, token: Tensor) -> None:
        if not all(layer.get("static", True) for layer in cache["layers"]):
            raise ValueError("a CUDA graph replays a static decoding cache only (_new_cache)")
        self.model, self.cache = model, cache
        self.token = token.clone()
        device = token.device.type
        autocast = torch.autocast(
            device,
            dtype=torch.get_autocast_dtype(device),
            enabled=torch.is_autocast_enabled(device),
            cache_enabled=False,
        )
        self.graph = torch.cuda.CUDAGraph()
        with autocast, torch.cuda.graph(self.graph):
            self.logits = model._cached_logits(self.token, cache)
        model._advance_host(cache, -1)  # the capture's Python counted a step no kernel ran

    def __call__(self, token: Tensor) -> Tensor:
        self.token.copy_(token)
        self.graph.replay()
        self.model._advance_host(self.cache, 1)
        return self.logits


class HyenaLM(CausalLM):
    """Causal LM with Hyena mixers: token ids [B, L] -> logits [B, L, padded_vocab_size]."""

    MODEL_TYPE = MODEL_TYPE
    CONFIG = HyenaConfig
    MIXER = HyenaOperator

    def __init__(self, config: HyenaConfig) -> None:
        super().__init__(config, HyenaBlock)

    # -----------------------------------------------------------------------------------------
    # Sampling

    @property
    def context_window(self) -> int:
        """Tokens of context that decide the next token, and where ``generate`` crops.

        Without ``filter_len`` the model runs on at most ``l_max`` tokens (a sliding window past
        that). With a partial convolution every layer looks back a bounded number of positions:
        ``order - 1`` long convolutions of ``filter_len`` taps after a short conv of
        ``short_filter`` taps, so the last position depends on exactly the last
        ``n_layer * ((order - 1) * (filter_len - 1) + short_filter - 1) + 1`` tokens (no
        positional embeddings), and cropping to them changes nothing.
        """
        c = self.config
        if c.filter_len is None:
            return c.l_max
        per_layer = (c.order - 1) * (c.filter_len - 1) + c.short_filter - 1
        return c.n_layer * per_layer + 1

    def _cache_serves(self, length: int) -> bool:
        """A cache gives the forward's logits with a partial filter at any length, and without
        one up to ``l_max``; past it the window slides and restarts every layer at its first
        token, which no cache reproduces."""
        return self.config.filter_len is not None or length <= self.config.l_max
