"""Lightning tasks: the only place that knows about losses, metrics and optimizers.

A task gets its network injected (``net``) and its optimizer and scheduler as partials
(``hydra.utils.instantiate`` of a ``_partial_: true`` config), as in lightning-hydra-template.

Parameter groups: a parameter that carries ``_optim`` (a dict of optimizer settings, e.g. the
Hyena filter MLP's ``{"weight_decay": 0.0, "lr": ...}``) goes to a group with those settings;
biases, norm weights and embeddings get no weight decay; everything else gets the optimizer's
weight decay.

Checkpoints hold only plain data (loadable with ``torch.load(weights_only=True)``): the
optimizer and scheduler partials are stored as their Hydra configs.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import hydra
import lightning as L
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.optim import Optimizer
from torchmetrics import MeanMetric

IGNORE_INDEX = -100  # targets with this value are not supervised (F.cross_entropy's default)
# torch.compile modes the task takes (``compile=``); those that replay CUDA graphs
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
GRAPH_MODES = ("reduce-overhead", "max-autotune")
NO_DECAY_MODULES = (nn.Embedding, nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.RMSNorm)


def param_groups(module: nn.Module) -> list[dict[str, Any]]:
    """Optimizer parameter groups: ``_optim``-flagged, no weight decay, default."""
    seen: set[int] = set()
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    special: dict[tuple, list[nn.Parameter]] = {}
    for mod in module.modules():
        for name, p in mod.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue  # tied weights appear once
            seen.add(id(p))
            if hasattr(p, "_optim"):
                special.setdefault(tuple(sorted(p._optim.items())), []).append(p)
            elif isinstance(mod, NO_DECAY_MODULES) or p.ndim < 2 or name.endswith("bias"):
                no_decay.append(p)
            else:
                decay.append(p)
    groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups += [{"params": ps, **dict(settings)} for settings, ps in special.items()]
    return [g for g in groups if g["params"]]


class WarmupCosine:
    """LR multiplier: linear warmup to 1, cosine decay to ``min_ratio`` at ``total_steps``.

    A plain object (not a closure) so that ``LambdaLR.state_dict`` saves its settings.
    """

    def __init__(self, warmup_steps: int, total_steps: int, min_ratio: float = 0.1) -> None:
        self.warmup_steps, self.total_steps, self.min_ratio = warmup_steps, total_steps, min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_cosine(
    optimizer: Optimizer,
    total_steps: int,
    warmup_steps: int | None = None,
    min_ratio: float = 0.1,
    warmup_fraction: float | None = None,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Scheduler factory for configs (``_partial_: true``); step it every optimizer step.

    The warmup is ``warmup_steps`` steps, or ``warmup_fraction`` of ``total_steps`` (the
    reference recipes' "1% warmup", which then follows ``trainer.max_steps``); not both.
    """
    if total_steps is None or total_steps < 1:
        raise ValueError(
            f"warmup_cosine needs total_steps >= 1 (set trainer.max_steps); got {total_steps}"
        )
    if (warmup_steps is None) == (warmup_fraction is None):
        raise ValueError(
            "warmup_cosine takes exactly one of warmup_steps and warmup_fraction; got "
            f"warmup_steps={warmup_steps}, warmup_fraction={warmup_fraction}"
        )
    if warmup_fraction is not None:
        if not 0.0 <= warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction must be in [0, 1); got {warmup_fraction}")
        warmup_steps = round(warmup_fraction * total_steps)
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0; got {warmup_steps}")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, WarmupCosine(warmup_steps, total_steps, min_ratio)
    )


def to_plain(obj: Any) -> Any:
    """Plain-data version of a hyperparameter: partials become their Hydra config."""
    if isinstance(obj, functools.partial):
        func = obj.func
        target = f"{func.__module__}.{func.__qualname__}"
        return {"_target_": target, "_partial_": True, **to_plain(dict(obj.keywords))}
    if isinstance(obj, Mapping):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, Sequence) and not isinstance(obj, (str, bytes)):
        return [to_plain(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return repr(obj)


def as_factory(spec: Callable[..., Any] | Mapping[str, Any]) -> Callable[..., Any]:
    """A partial, or its stored Hydra config (what ``to_plain`` made of it in a checkpoint, so
    ``load_from_checkpoint(path, net=...)`` rebuilds the optimizer and scheduler)."""
    if isinstance(spec, Mapping):
        return hydra.utils.instantiate(dict(spec) | {"_partial_": True})
    return spec


class LanguageModelTask(L.LightningModule):
    """Next-token prediction: batches of (inputs [B, L], targets [B, L]) token ids.

    Targets equal to ``IGNORE_INDEX`` (-100, as in PyTorch and HF) are left out of the loss and
    of the accuracy: a synthetic task such as associative recall supervises only its answer
    positions, and ``val/acc`` is then exactly the accuracy on those. Loss and accuracy are
    means over the supervised targets (token-weighted across batches), so a batch of plain
    LM targets (no ignored position) is treated exactly as before.

    Training asks the network for the loss alone when it has a ``loss(inputs, targets, *,
    ignore_index, reduction)`` method (``models.lm.CausalLM``: the head fused with the
    cross-entropy, no [B, L, V] logits and no accuracy); a network without one is scored on its
    logits, as validation and test always are (they need the argmax for ``acc``).

    ``compile``: a ``torch.compile`` mode (``COMPILE_MODES``) for the network's trunk
    (``net.hidden`` when it has one, else its forward), applied when fitting, validating or
    testing starts; None (the default) runs eagerly. ``"reduce-overhead"`` replays the trunk's
    forward and backward as CUDA graphs: one launch each way instead of a few thousand, which
    is what a fast step needs once the kernels take less time than Python takes to launch them
    (hyena-s on an H200: ``benchmarks/NOTES.md``, training step v5). The fused loss stays
    eager (liger's kernels are not traceable). The first step compiles (tens of seconds on
    hyena-s). In the graph modes the gradients stay allocated and are zeroed in place (a
    replay reuses the memory of the last one's outputs, which a ``.grad`` must not be, e.g.
    across accumulated batches); FSDP is refused with a ``ValueError`` (its collectives would
    run inside the graphs).

    Logs ``train/loss``, ``val/loss``, ``val/ppl``, ``val/acc`` and the same for ``test/``.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., Optimizer],
        scheduler: Callable[[Optimizer], Any] | None = None,
        scheduler_interval: str = "step",
        compile: str | None = None,
    ) -> None:
        super().__init__()
        if compile is not None and compile not in COMPILE_MODES:
            raise ValueError(f"compile must be None or one of {COMPILE_MODES}; got {compile!r}")
        self.save_hyperparameters(ignore=["net"], logger=False)
        self.net = net
        self._compiled = False
        self.train_loss = MeanMetric()
        self.val_loss, self.val_acc = MeanMetric(), MeanMetric()
        self.test_loss, self.test_acc = MeanMetric(), MeanMetric()

    def forward(self, idx: Tensor) -> Tensor:
        return self.net(idx)

    # -----------------------------------------------------------------------------------------
    # torch.compile of the trunk

    def _compile_net(self) -> None:
        mode = self.hparams.get("compile")
        if mode is None or self._compiled:
            return
        if mode in GRAPH_MODES:
            strategy = self.trainer.strategy if self._trainer is not None else None
            if isinstance(strategy, L.pytorch.strategies.FSDPStrategy):
                raise ValueError(
                    f"task.compile={mode!r} replays CUDA graphs, which cannot hold FSDP's "
                    "collectives; use compile='default' or null with trainer=fsdp"
                )
        # an instance attribute: the module's state dict and its class are untouched
        name = "hidden" if callable(getattr(self.net, "hidden", None)) else "forward"
        setattr(self.net, name, torch.compile(getattr(self.net, name), mode=mode))
        self._compiled = True

    def _graphs(self) -> bool:
        return self._compiled and self.hparams.get("compile") in GRAPH_MODES

    def _graph_step_begin(self, training: bool = False) -> None:
        """A new step for the CUDA graphs: the last replay's outputs are dead (cudagraph trees
        would otherwise keep recording new graphs around them). Before a training batch, every
        gradient is made to exist: the backward then adds its outputs into it, so that no
        ``.grad`` is ever a graph's output memory, which the next replay overwrites (with
        accumulated batches, the gradients being summed). They are zeroed in place from then
        on (``zero_grad``, ``optimizer_zero_grad``)."""
        if not self._graphs():
            return
        torch.compiler.cudagraph_mark_step_begin()
        if training:
            for p in self.net.parameters():
                if p.requires_grad and p.grad is None:
                    p.grad = torch.zeros_like(p)

    def zero_grad(self, set_to_none: bool = True) -> None:
        # Lightning releases the gradients before each stage and each validation
        super().zero_grad(set_to_none=set_to_none and not self._graphs())

    def on_fit_start(self) -> None:
        self._compile_net()

    def on_validation_start(self) -> None:
        self._compile_net()

    def on_test_start(self) -> None:
        self._compile_net()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._graph_step_begin(training=True)

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: Optimizer) -> None:
        # under CUDA graphs the gradients stay allocated (``_graph_step_begin``)
        optimizer.zero_grad(set_to_none=not self._graphs())

    def on_validation_batch_start(
        self, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._graph_step_begin()

    def on_test_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._graph_step_begin()

    def _step(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """(mean loss, accuracy, number of supervised targets) of a batch; the count stays a
        tensor so that no step waits on the device."""
        inputs, targets = batch
        logits = self(inputs)  # [B, L, V]
        supervised = targets != IGNORE_INDEX  # [B, L]
        n = supervised.sum()
        loss_sum = F.cross_entropy(
            logits.flatten(0, 1).float(),
            targets.flatten(),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        # a batch with nothing to supervise gives loss 0 with weight 0, not NaN
        denom = n.clamp(min=1)
        loss = loss_sum / denom
        hits = (logits.argmax(-1) == targets) & supervised
        acc = hits.sum() / denom
        return loss, acc, n

    def _train_loss(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        """Mean loss over the supervised targets (0 when there is none), fused when the network
        can."""
        loss_fn = getattr(self.net, "loss", None)
        if not callable(loss_fn):
            return self._step(batch)[0]
        inputs, targets = batch
        return loss_fn(inputs, targets, ignore_index=IGNORE_INDEX, reduction="mean")

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss = self._train_loss(batch)
        self.train_loss(loss)
        self.log("train/loss", self.train_loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def _eval_step(self, batch: tuple[Tensor, Tensor], split: str) -> None:
        loss, acc, n = self._step(batch)
        getattr(self, f"{split}_loss").update(loss, weight=n)
        getattr(self, f"{split}_acc").update(acc, weight=n)

    def _eval_epoch_end(self, split: str) -> None:
        loss_metric, acc_metric = getattr(self, f"{split}_loss"), getattr(self, f"{split}_acc")
        if loss_metric.update_count == 0:
            return
        # compute() already reduces across processes; sync_dist only silences Lightning's check
        loss = loss_metric.compute()
        self.log(f"{split}/loss", loss, prog_bar=True, sync_dist=True)
        self.log(f"{split}/ppl", torch.exp(loss), prog_bar=split == "test", sync_dist=True)
        self.log(f"{split}/acc", acc_metric.compute(), sync_dist=True)
        loss_metric.reset()
        acc_metric.reset()

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def configure_gradient_clipping(
        self,
        optimizer: Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Under FSDP the gradients are sharded, so the norm is the wrapped model's
        ``clip_grad_norm_`` (one all-reduce across ranks); Lightning's FSDP refuses to clip."""
        strategy = self.trainer.strategy if self._trainer is not None else None
        if gradient_clip_val and isinstance(strategy, L.pytorch.strategies.FSDPStrategy):
            if gradient_clip_algorithm not in (None, "norm"):
                raise ValueError(
                    "FSDP clips gradients by norm only; got "
                    f"gradient_clip_algorithm={gradient_clip_algorithm!r}"
                )
            strategy.model.clip_grad_norm_(gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self) -> Any:
        optimizer = as_factory(self.hparams.optimizer)(params=param_groups(self.net))
        if self.hparams.scheduler is None:
            return optimizer
        scheduler = as_factory(self.hparams.scheduler)(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.hparams.scheduler_interval},
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "hyper_parameters" in checkpoint:
            checkpoint["hyper_parameters"] = to_plain(checkpoint["hyper_parameters"])
