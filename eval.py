"""Evaluate a model: ``python eval.py ckpt_path=<ckpt or exported dir> [split=val] [seq_len=N]``.

``ckpt_path`` is a Lightning checkpoint written by ``train.py`` (its run's model and data config
travel inside it; ``model.*``/``data.*`` on the command line still apply) or a
``save_pretrained`` folder (the data comes from this run's config).
Prints the split's loss and perplexity. ``seq_len`` evaluates at another length; past the model's
``l_max`` that needs a partial convolution: ``filter_len=<taps>``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from models.hub import from_pretrained, is_pretrained_dir
from train import instantiate_callbacks, register_resolvers

register_resolvers()

SPLITS = ("test", "val")


def _run_sections(
    cfg: DictConfig, ckpt_path: Path
) -> tuple[DictConfig, DictConfig, DictConfig, dict[str, Any] | None]:
    """(model, data, task) configs and the checkpoint's state dict (None for an exported dir)."""
    if is_pretrained_dir(ckpt_path):
        return cfg.model, cfg.data, cfg.task, None
    if not ckpt_path.is_file():
        raise FileNotFoundError(
            f"ckpt_path={ckpt_path} is neither a checkpoint file nor a save_pretrained directory"
        )
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    run = checkpoint.get("run_config")
    if run is None:  # a checkpoint from elsewhere: this run's config describes it
        return cfg.model, cfg.data, cfg.task, checkpoint["state_dict"]
    # the command line still wins: e.g. data.eval_batch_size=4 or model.fftconv_backend=torch
    sections = (
        OmegaConf.merge(run[k], command_line_overrides(k)) for k in ("model", "data", "task")
    )
    return *sections, checkpoint["state_dict"]


def command_line_overrides(section: str) -> DictConfig:
    """This run's ``<section>.key=value`` command-line overrides, as a config of ``section``."""
    if not HydraConfig.initialized():
        return OmegaConf.create()
    prefix = f"{section}."
    dotlist = [
        o.removeprefix("+").removeprefix(prefix)
        for o in HydraConfig.get().overrides.task
        if o.removeprefix("+").startswith(prefix)
    ]
    return OmegaConf.from_dotlist(dotlist)


def evaluate(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Loads the model from ``cfg.ckpt_path`` and runs the ``cfg.split`` split."""
    if cfg.split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}; got {cfg.split!r}")
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    ckpt_path = Path(cfg.ckpt_path)
    model_cfg, data_cfg, task_cfg, state_dict = _run_sections(cfg, ckpt_path)

    overrides = {"filter_len": cfg.filter_len} if cfg.get("filter_len") else {}
    if state_dict is None:
        net = from_pretrained(ckpt_path, **overrides)
    else:
        model_cfg = OmegaConf.merge(model_cfg, overrides)
        net = hydra.utils.instantiate(model_cfg)
    task = hydra.utils.instantiate(task_cfg, net=net)
    if state_dict is not None:
        task.load_state_dict(state_dict)

    l_max = getattr(getattr(net, "config", None), "l_max", None)
    seq_len = cfg.get("seq_len")
    if seq_len and l_max and seq_len > l_max and getattr(net.config, "filter_len", None) is None:
        raise ValueError(
            f"seq_len={seq_len} exceeds the model's l_max={l_max}; set filter_len=<taps> (a "
            f"partial convolution, e.g. filter_len={l_max}) to evaluate past the training length"
        )

    data_cfg = OmegaConf.merge(data_cfg, {})
    with open_dict(data_cfg):
        if cfg.get("seq_len"):
            data_cfg.seq_len = cfg.seq_len
        elif state_dict is None and hasattr(net, "config"):
            data_cfg.seq_len = net.config.l_max
        if cfg.get("batch_size"):
            data_cfg.eval_batch_size = cfg.batch_size
    datamodule: L.LightningDataModule = hydra.utils.instantiate(data_cfg)

    trainer: L.Trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=instantiate_callbacks(cfg.get("callbacks")), logger=False
    )
    run = trainer.test if cfg.split == "test" else trainer.validate
    run(task, datamodule=datamodule)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    loss = metrics.get(f"{cfg.split}/loss", math.nan)
    print(
        f"{cfg.split}/loss: {loss:.4f}  {cfg.split}/ppl: {math.exp(loss):.4f}  "
        f"(seq_len {data_cfg.seq_len}, {ckpt_path})",
        flush=True,
    )
    return metrics, {"net": net, "task": task, "datamodule": datamodule, "trainer": trainer}


@hydra.main(version_base="1.3", config_path="configs", config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
