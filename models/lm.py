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
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from torch import Tensor, nn
from torch.nn import functional as F

from kernels.fftconv.interface import BACKENDS

from .hyena import HyenaOperator

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
MODEL_TYPE = "hyena-lm"


@dataclass
class HyenaConfig:
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

    def __post_init__(self) -> None:
        if self.d_inner is None:
            self.d_inner = 4 * self.d_model
        for name in (
            "vocab_size",
            "pad_vocab_multiple",
            "n_layer",
            "d_model",
            "d_inner",
            "l_max",
            "filter_order",
            "short_filter",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"model.{name} must be a positive int; got {value!r}")
        if self.order < 2:
            raise ValueError(f"model.order must be >= 2; got {self.order}")
        if self.emb_dim < 3 or self.emb_dim % 2 == 0:
            raise ValueError(f"model.emb_dim must be odd and >= 3; got {self.emb_dim}")
        if self.filter_len is not None and not 1 <= self.filter_len <= self.l_max:
            raise ValueError(
                f"model.filter_len must be null or in [1, l_max={self.l_max}]; "
                f"got {self.filter_len}"
            )
        for name in ("embed_dropout", "resid_dropout", "mixer_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"model.{name} must be in [0, 1); got {getattr(self, name)}")
        if self.fftconv_backend not in BACKENDS:
            raise ValueError(
                f"model.fftconv_backend must be one of {BACKENDS}; got {self.fftconv_backend!r}"
            )

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_multiple
        return (self.vocab_size + m - 1) // m * m

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> HyenaConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown model name {name!r}; known: {sorted(PRESETS)}")
        return cls(**(PRESETS[name] | {"name": name} | overrides))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], **overrides: Any) -> HyenaConfig:
        known = {f.name for f in fields(cls)}
        return cls(**({k: v for k, v in d.items() if k in known} | overrides))


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
    "hyena-s-4k": _HYENA_S | {"l_max": 4096},
}


class MLP(nn.Module):
    def __init__(self, d_model: int, d_inner: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_inner)
        self.fc2 = nn.Linear(d_inner, d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class HyenaBlock(nn.Module):
    """x + mixer(norm(x)), then x + mlp(norm(x))."""

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

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.dropout(self.mixer(self.norm1(x)))
        return x + self.dropout(self.mlp(self.norm2(x)))


class HyenaLM(nn.Module):
    """Causal LM: token ids [B, L] -> logits [B, L, padded_vocab_size]."""

    def __init__(self, config: HyenaConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.padded_vocab_size, config.d_model)
        self.drop = nn.Dropout(config.embed_dropout)
        self.blocks = nn.ModuleList(HyenaBlock(config) for _ in range(config.n_layer))
        self.norm_f = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.padded_vocab_size, bias=False)
        self.apply(self._init_weights)
        if config.tie_embeddings:
            self.lm_head.weight = self.wte.weight

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        # GPT-2: the projections that write into the residual stream shrink with depth
        if isinstance(module, (HyenaOperator, MLP)):
            proj = module.out_proj if isinstance(module, HyenaOperator) else module.fc2
            nn.init.normal_(proj.weight, mean=0.0, std=std / math.sqrt(2 * self.config.n_layer))

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> HyenaLM:
        return cls(HyenaConfig.from_name(name, **overrides))

    def forward(self, idx: Tensor) -> Tensor:
        x = self.drop(self.wte(idx))  # [B, L, d]
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.norm_f(x))  # [B, L, V]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -----------------------------------------------------------------------------------------
    # HF-style export

    def save_pretrained(self, save_directory: str | Path) -> Path:
        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        config = {"model_type": MODEL_TYPE, "architectures": [type(self).__name__]}
        config |= self.config.to_dict()
        (out / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        save_model(self, str(out / WEIGHTS_NAME), metadata={"format": "pt"})
        return out

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, map_location: str | torch.device = "cpu", **overrides: Any
    ) -> HyenaLM:
        """Loads a ``save_pretrained`` directory; ``overrides`` replace config fields that do not
        change parameter shapes (e.g. ``filter_len``, ``fftconv_backend``, dropouts)."""
        directory = Path(directory)
        config_file = directory / CONFIG_NAME
        if not config_file.is_file():
            raise FileNotFoundError(f"{config_file} not found: not a save_pretrained directory")
        raw = json.loads(config_file.read_text())
        if raw.get("model_type") != MODEL_TYPE:
            raise ValueError(
                f"{config_file} has model_type={raw.get('model_type')!r}, expected {MODEL_TYPE!r}"
            )
        model = cls(HyenaConfig.from_dict(raw, **overrides))
        load_model(model, str(directory / WEIGHTS_NAME), strict=True, device=str(map_location))
        return model
