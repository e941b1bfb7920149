"""Loads any model exported with ``save_pretrained``, dispatching on ``config.json``'s
``model_type``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from .gpt import GPTLM
from .gpt import MODEL_TYPE as GPT_MODEL_TYPE
from .lm import CONFIG_NAME, MODEL_TYPE, HyenaLM

MODEL_TYPES: dict[str, type[nn.Module]] = {MODEL_TYPE: HyenaLM, GPT_MODEL_TYPE: GPTLM}


def is_pretrained_dir(path: str | Path) -> bool:
    return (Path(path) / CONFIG_NAME).is_file()


def from_pretrained(directory: str | Path, **overrides: Any) -> nn.Module:
    """``overrides`` replace config fields (those that do not change parameter shapes)."""
    config_file = Path(directory) / CONFIG_NAME
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} not found: not a save_pretrained directory")
    model_type = json.loads(config_file.read_text()).get("model_type")
    if model_type not in MODEL_TYPES:
        raise ValueError(
            f"{config_file}: unknown model_type {model_type!r}; known: {sorted(MODEL_TYPES)}"
        )
    return MODEL_TYPES[model_type].from_pretrained(directory, **overrides)
