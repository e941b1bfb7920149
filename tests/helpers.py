"""What the tests share: a run's config composed as the CLI would, and the environment of a
subprocess that runs this checkout."""

from __future__ import annotations

import os
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs"


def make_cfg(
    name: str, overrides: list[str], output_dir: Path, cache_dir: Path | None = None
) -> DictConfig:
    """``configs/<name>.yaml`` with ``overrides``; outputs in ``output_dir``, the token cache
    in ``cache_dir`` when given."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name=name, overrides=overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        if cache_dir is not None:
            cfg.paths.cache_dir = str(cache_dir)
    return cfg


def subprocess_env(**extra: str) -> dict[str, str]:
    """This process's environment with the repository first on PYTHONPATH (the caller's path
    kept after it: the GPU image's extra packages live there), plus ``extra``."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return os.environ | {"PYTHONPATH": path} | extra
