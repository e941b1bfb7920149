"""Train a model: ``python train.py [experiment=<task>/<name>] [debug=fast] [key=value ...]``.

With no arguments it trains ``hyena-tiny`` on the Python standard library's source (present on
every machine) on CPU. Resume a run with ``python train.py ckpt_path=<run>/checkpoints/last.ckpt``
(same step, same data position). ``train(cfg)`` is a plain function; ``main`` wraps it for Hydra.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from models.checkpointing import AtomicCheckpointIO

log = logging.getLogger(__name__)


def register_resolvers() -> None:
    # ${env_unset:NAME}: true when the environment variable is missing or empty
    OmegaConf.register_new_resolver(
        "env_unset", lambda name: not os.environ.get(name), replace=True
    )


register_resolvers()


def instantiate_callbacks(cfg: DictConfig | None) -> list[Callback]:
    if not cfg:
        return []
    return [hydra.utils.instantiate(c) for c in cfg.values() if c and "_target_" in c]


def instantiate_loggers(cfg: DictConfig | None) -> list[Logger]:
    if not cfg:
        return []
    return [hydra.utils.instantiate(c) for c in cfg.values() if c and "_target_" in c]


def plain_config(cfg: DictConfig) -> dict[str, Any]:
    """The run's config without Hydra's own section, resolved to plain data."""
    keys = [k for k in cfg if k != "hydra"]
    return OmegaConf.to_container(OmegaConf.masked_copy(cfg, keys), resolve=True)


class RunConfigInCheckpoint(Callback):
    """Stores the run's resolved config in every checkpoint (``checkpoint["run_config"]``), so
    ``eval.py`` can rebuild the model and data from the checkpoint alone."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        checkpoint["run_config"] = self.config


def last_checkpoint(trainer: L.Trainer) -> Path | None:
    for cb in trainer.checkpoint_callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.last_model_path:
            return Path(cb.last_model_path)
    return None


def resume_command(ckpt: Path) -> str:
    """This run's command line with ``ckpt_path`` pointing at ``ckpt``."""
    overrides: list[str] = []
    if HydraConfig.initialized():
        task_overrides = HydraConfig.get().overrides.task
        overrides = [o for o in task_overrides if not o.startswith("ckpt_path=")]
    return " ".join(["python train.py", *overrides, f"ckpt_path={ckpt.resolve()}"])


def train(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Instantiates data, model, task, callbacks, loggers and trainer from ``cfg``; fits, tests
    and exports. Returns the final metrics and the objects it built."""
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)

    log.info(f"data <{cfg.data._target_}>")
    datamodule: L.LightningDataModule = hydra.utils.instantiate(cfg.data)
    log.info(f"model <{cfg.model._target_}>")
    net = hydra.utils.instantiate(cfg.model)
    vocab = getattr(datamodule, "vocab_size", None)
    net_vocab = getattr(getattr(net, "config", None), "vocab_size", None)
    if vocab is not None and net_vocab is not None and net_vocab < vocab:
        raise ValueError(f"model vocab_size={net_vocab} is smaller than the data's {vocab}")
    task: L.LightningModule = hydra.utils.instantiate(cfg.task, net=net)

    run_config = plain_config(cfg)
    callbacks = instantiate_callbacks(cfg.get("callbacks")) + [RunConfigInCheckpoint(run_config)]
    loggers = instantiate_loggers(cfg.get("logger"))
    trainer: L.Trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()]
    )
    for lg in loggers:
        lg.log_hyperparams(run_config)

    objects = {
        "cfg": cfg,
        "datamodule": datamodule,
        "net": net,
        "task": task,
        "callbacks": callbacks,
        "loggers": loggers,
        "trainer": trainer,
    }
    metrics: dict[str, float] = {}

    if cfg.get("train"):
        trainer.fit(task, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        metrics |= {k: float(v) for k, v in trainer.callback_metrics.items()}
        ckpt = last_checkpoint(trainer)
        objects["last_ckpt"] = ckpt
        if ckpt is not None:
            _report(f"checkpoint: {ckpt.resolve()}")
            _report(f"resume with: {resume_command(ckpt)}")
        if cfg.get("export") and hasattr(net, "save_pretrained"):
            export_dir = Path(cfg.paths.output_dir) / "export"
            if trainer.is_global_zero:
                net.save_pretrained(export_dir)
            objects["export_dir"] = export_dir
            _report(f"exported model: {export_dir.resolve()}")

    if cfg.get("test"):
        trainer.test(task, datamodule=datamodule)
        metrics |= {k: float(v) for k, v in trainer.callback_metrics.items()}

    return metrics, objects


@rank_zero_only
def _report(message: str) -> None:
    print(message, flush=True)


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    main()
