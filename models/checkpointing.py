"""Checkpoints a killed run can resume from.

``AtomicCheckpointIO``: Lightning's ``TorchCheckpointIO`` opens the destination and writes into
it, so a run killed during the write leaves a truncated ``last.ckpt`` and nothing to resume
from. This one writes a temporary file next to it, syncs it to disk and renames it over the
destination (``os.replace`` is atomic on POSIX and Windows): a checkpoint path always holds
either the previous complete checkpoint or the new one.

``ResumableCheckpoint``: Lightning's ``ModelCheckpoint`` writes ``last.ckpt`` at train end only
when it has saved nothing before, so a run whose last step falls between two validations ends
with a stale ``last.ckpt``; this one always leaves ``last.ckpt`` at the final step, saved
mid-epoch so that a longer run resumed from it sees the same data as one never stopped.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        if "://" in str(path):  # remote filesystems: fsspec decides what is atomic
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(
                "`Trainer.save_checkpoint(..., storage_options=...)` with `storage_options` arg "
                f"is not supported for `{type(self).__name__}`."
            )
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable
            fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


class ResumableCheckpoint(ModelCheckpoint):
    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        # At max_steps, save last.ckpt here, mid-epoch: a checkpoint saved at train end marks
        # the epoch as finished, and a longer run resumed from it would start a new epoch
        # instead of continuing at the same data position.
        final = 0 < trainer.max_steps <= trainer.global_step
        if final and self.save_last and not self._should_skip_saving_checkpoint(trainer):
            previous = self._last_global_step_saved
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            self._final_step_saved = trainer.global_step
            # a validation at this same step still saves (top-k, and last with its metrics)
            self._last_global_step_saved = previous

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        saved = (self._last_global_step_saved, getattr(self, "_final_step_saved", None))
        if self.save_last and trainer.global_step not in saved:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        else:
            super().on_train_end(trainer, pl_module)
