"""Train a model: ``python train.py [experiment=<task>/<name>] [debug=fast] [key=value ...]``.

With no arguments it trains ``hyena-tiny`` on the Python standard library's source (present on
every machine) on CPU. Resume a run with ``python train.py ckpt_path=<run>/checkpoints/last.ckpt``
(same step, same data position). ``train(cfg)`` is a plain function; ``main`` wraps it for Hydra.

Several processes: ``trainer=ddp`` or ``trainer=fsdp`` (GPUs; ``trainer=fsdp_cpu`` and
``trainer=ddp trainer.accelerator=cpu`` run gloo processes on CPU). Lightning launches the other
ranks by re-running this command; only rank 0 prints, writes the export and the checkpoints.
``global_batch_size`` (sequences per optimizer step, over all ranks) sets
``trainer.accumulate_grad_batches`` from ``data.batch_size`` and the number of processes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.accelerators import CPUAccelerator, CUDAAccelerator, MPSAccelerator
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.loggers import Logger
from lightning.pytorch.strategies import FSDPStrategy as LightningFSDPStrategy
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn
from torch.distributed.fsdp import (
    FullOptimStateDictConfig,
    FullStateDictConfig,
    FullyShardedDataParallel,
    OptimStateKeyType,
    StateDictType,
)

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


class FSDPStrategy(LightningFSDPStrategy):
    """Lightning's ``FSDPStrategy`` (``trainer=fsdp``), with two fixes and CPU support.

    - ``trainer.test`` after ``trainer.fit``: Lightning hands the strategy the bare module
      again, finds the blocks already wrapped and skips wrapping the root, leaving the root's
      own parameters (embeddings, final norm) as flat shards ("'weight' must be 2-D",
      Lightning issue #19015). This strategy reuses the root wrapper it made for ``fit``.
    - CPU processes over gloo (``trainer=fsdp_cpu``): Lightning refuses FSDP without a GPU
      and passes ``device_id=None``, which torch's FSDP rejects on a machine with no
      accelerator; given ``device_id=torch.device("cpu")``, FSDP runs on CPU. So on CPU this
      wraps the model itself with that device id and the strategy's settings (auto-wrap
      policy, sharding, CPU offload), and lets Lightning finish the setup of a wrapped model.
      Lightning's FSDP mixed precision autocasts on CUDA only: CPU runs use ``32-true``.
    - Full (one-file) checkpoints on CPU gather the state without ``offload_to_cpu``: torch's
      FSDP "moves" the gathered parameters to the CPU they are already on and then frees that
      very memory (a crash in torch 2.11 and 2.13), and Lightning always asks for the offload.

    On GPUs everything else is Lightning's strategy unchanged.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._root: FullyShardedDataParallel | None = None  # the wrapper made at first setup

    def _setup_model(self, model: nn.Module) -> nn.Module:
        if self._root is not None and model is self._root.module:
            model = self._root
        elif self.root_device.type == "cpu" and not any(
            isinstance(m, FullyShardedDataParallel) for m in model.modules()
        ):
            precision = self.precision_plugin.precision
            if precision.endswith("-mixed"):
                raise ValueError(
                    f"trainer.precision={precision} is not supported by FSDP on CPU (Lightning's "
                    "FSDP mixed precision autocasts on CUDA); use trainer.precision=32-true"
                )
            model = FullyShardedDataParallel(
                module=model,
                cpu_offload=self.cpu_offload,
                mixed_precision=self.mixed_precision_config,
                sharding_strategy=self.sharding_strategy,
                device_id=self.root_device,
                **self.kwargs,
            )
        if not isinstance(model, FullyShardedDataParallel):
            model = super()._setup_model(model)  # Lightning wraps
        else:
            # wrapped here: hide the wrap policy, which Lightning would otherwise warn about and
            # drop for good
            kwargs = self.kwargs
            self.kwargs = {k: v for k, v in kwargs.items() if k != "auto_wrap_policy"}
            try:
                model = super()._setup_model(model)
            finally:
                self.kwargs = kwargs
        if isinstance(model, FullyShardedDataParallel):
            self._root = model
        return model

    def _full_state_on_cpu(self) -> AbstractContextManager | None:
        """Lightning's full-state-dict context, without the offload, when running on CPU."""
        if self.root_device.type != "cpu" or self._state_dict_type != "full":
            return None
        return FullyShardedDataParallel.state_dict_type(
            self.model,
            StateDictType.FULL_STATE_DICT,
            FullStateDictConfig(offload_to_cpu=False, rank0_only=True),
            FullOptimStateDictConfig(offload_to_cpu=False, rank0_only=True),
        )

    def lightning_module_state_dict(self) -> dict[str, Any]:
        context = self._full_state_on_cpu()
        if context is None:
            return super().lightning_module_state_dict()
        with context:
            return self.model.state_dict()

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        context = self._full_state_on_cpu()
        if context is None:
            return super().optimizer_state(optimizer)
        if isinstance(optimizer, LightningOptimizer):
            optimizer = optimizer._optimizer
        with context:
            state = FullyShardedDataParallel.optim_state_dict(self.model, optimizer)
            if self.global_rank == 0:  # keyed by parameter index, as Lightning stores it
                state = FullyShardedDataParallel.rekey_optim_state_dict(
                    state, OptimStateKeyType.PARAM_ID, self.model
                )
        return state


def world_size(trainer_cfg: DictConfig) -> int:
    """Processes the trainer will run, ``devices x num_nodes``, with ``accelerator`` and
    ``devices`` resolved as Lightning resolves them ("auto": every GPU, else one CPU process)."""
    accelerator = trainer_cfg.get("accelerator") or "auto"
    if not isinstance(accelerator, str):
        raise TypeError(
            "global_batch_size needs trainer.accelerator given by name (cpu, gpu, cuda, mps or "
            f"auto); got {type(accelerator).__name__}"
        )
    accelerator = accelerator.lower()
    if accelerator in ("auto", "gpu"):
        if CUDAAccelerator.is_available():
            accelerator = "cuda"
        elif MPSAccelerator.is_available():
            accelerator = "mps"
        elif accelerator == "auto":
            accelerator = "cpu"
        else:
            raise ValueError("trainer.accelerator=gpu but no GPU is available")
    kinds = {"cpu": CPUAccelerator, "cuda": CUDAAccelerator, "mps": MPSAccelerator}
    if accelerator not in kinds:
        raise ValueError(
            f"global_batch_size supports trainer.accelerator in {sorted(kinds)}, gpu or auto; "
            f"got {accelerator!r}"
        )
    kind = kinds[accelerator]
    devices = trainer_cfg.get("devices", "auto")
    if OmegaConf.is_config(devices):
        devices = OmegaConf.to_container(devices)
    if devices == "auto":
        devices = kind.auto_device_count()
    num_nodes = trainer_cfg.get("num_nodes") or 1
    return len(kind.get_parallel_devices(kind.parse_devices(devices))) * int(num_nodes)


def grad_accumulation(global_batch_size: int, batch_size: int, world: int) -> int:
    """Batches each process accumulates so that one optimizer step sees ``global_batch_size``
    sequences: ``global_batch_size // (batch_size * world)``, which must divide exactly."""
    for name, value in (
        ("global_batch_size", global_batch_size),
        ("data.batch_size", batch_size),
        ("world size", world),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int; got {value!r}")
    per_step = batch_size * world
    if global_batch_size % per_step:
        raise ValueError(
            f"global_batch_size={global_batch_size} is not a multiple of data.batch_size="
            f"{batch_size} x world size {world} = {per_step}; change one of the three"
        )
    return global_batch_size // per_step


def apply_global_batch_size(cfg: DictConfig) -> int | None:
    """Sets ``cfg.trainer.accumulate_grad_batches`` from ``cfg.global_batch_size`` (when set);
    returns the number of processes it assumed."""
    global_batch_size = cfg.get("global_batch_size")
    if global_batch_size is None:
        return None
    world = world_size(cfg.trainer)
    accumulate = grad_accumulation(global_batch_size, cfg.data.get("batch_size"), world)
    given = cfg.trainer.get("accumulate_grad_batches")
    if given is not None and given != accumulate:
        raise ValueError(
            f"global_batch_size={global_batch_size} needs trainer.accumulate_grad_batches="
            f"{accumulate}, but the config sets {given}; set only one of them"
        )
    with open_dict(cfg.trainer):
        cfg.trainer.accumulate_grad_batches = accumulate
    _report(
        f"global batch {global_batch_size} = data.batch_size {cfg.data.batch_size} x {world} "
        f"process(es) x {accumulate} accumulated batch(es) per optimizer step"
    )
    return world


def export_pretrained(
    trainer: L.Trainer, net: nn.Module, directory: Path, rebuild: Callable[[], nn.Module]
) -> None:
    """``save_pretrained(directory)`` of the trained ``net`` on rank 0; every rank must call it.

    Under FSDP the parameters are sharded: they are gathered into a full state dict on rank 0,
    loaded into a fresh copy of the network (``rebuild()``, on CPU) and that copy is saved.
    """
    strategy = trainer.strategy
    if not isinstance(strategy, LightningFSDPStrategy):
        if trainer.is_global_zero:
            net.save_pretrained(directory)
        return
    on_gpu = strategy.root_device.type == "cuda"  # offloading on CPU crashes: see FSDPStrategy
    with FullyShardedDataParallel.state_dict_type(
        strategy.model,
        StateDictType.FULL_STATE_DICT,
        FullStateDictConfig(offload_to_cpu=on_gpu, rank0_only=True),
    ):
        state = strategy.model.state_dict()  # a collective: full on rank 0, empty elsewhere
    if trainer.is_global_zero:
        names = [n for n, m in trainer.lightning_module.named_children() if m is net]
        if not names:
            raise ValueError(
                f"cannot export: the network is not an attribute of the task "
                f"{type(trainer.lightning_module).__name__} (expected e.g. task.net)"
            )
        prefix = f"{names[0]}."
        copy = rebuild()
        copy.load_state_dict(
            {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
        )
        copy.save_pretrained(directory)


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
    world = apply_global_batch_size(cfg)

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
    if world is not None and trainer.world_size != world:
        raise RuntimeError(
            f"global_batch_size assumed {world} processes but the trainer runs "
            f"{trainer.world_size}; set trainer.devices and trainer.num_nodes explicitly"
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
            export_pretrained(
                trainer, net, export_dir, rebuild=lambda: hydra.utils.instantiate(cfg.model)
            )
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
