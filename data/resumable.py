"""Deterministic, resumable training order.

Lightning 2.x saves the ``state_dict()`` of every training DataLoader that has one in the
checkpoint (``loops.fit_loop.state_dict.combined_loader``) and calls ``load_state_dict`` before
it iterates again on resume. ``ResumableDataLoader`` records how many batches of the current
epoch it has handed out; on resume its ``ResumableSampler`` skips exactly those samples, so
training continues at the same step on the same data as a run that was never interrupted.

The order of an epoch is a permutation seeded by ``(seed, epoch)``, sharded across ranks as
``DistributedSampler`` does (it is one: Lightning then leaves it in place under DDP/FSDP):
rank ``r`` of ``W`` takes positions ``r, r + W, r + 2W, ...`` of the permutation. So at every
step the ranks' batches of ``B`` together are positions ``[s W B, (s + 1) W B)`` of the same
permutation: the batch of one process with batch size ``W B`` (the same global batch), and an
epoch visits each sample at most once over all ranks (``drop_last`` drops fewer than ``W B``).
Counting happens where batches leave the loader, in the main process, so worker prefetching
does not move the saved position. Loaders with a length are not prefetched by Lightning.
A checkpoint resumes only with the same number of ranks: the saved position counts batches of
this rank, and Lightning's own loop counters count them too.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import lightning as L
from torch.utils.data import DataLoader, Dataset, DistributedSampler


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (explicit rank and world size) that can start mid-epoch."""

    def __init__(
        self,
        dataset: Dataset,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = True,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        super().__init__(
            dataset,
            num_replicas=num_replicas,
            rank=rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
        )
        self.start = 0  # samples of this rank's epoch to skip on the next iteration

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        start, self.start = self.start, 0
        return iter(indices[start:])


class ResumableDataLoader(DataLoader):
    """A DataLoader over a ``ResumableSampler`` whose position is checkpointed by Lightning."""

    def __init__(self, dataset: Dataset, *, sampler: ResumableSampler, **kwargs: Any) -> None:
        if not isinstance(sampler, ResumableSampler):
            raise TypeError(f"sampler must be a ResumableSampler; got {type(sampler).__name__}")
        super().__init__(dataset, sampler=sampler, **kwargs)
        self.batches_done = 0  # batches of the sampler's current epoch handed out so far
        self._resume: tuple[int, int] | None = None  # (epoch, batches) to skip on next iter

    def __iter__(self) -> Iterator[Any]:
        return self._iterate()

    def _iterate(self) -> Iterator[Any]:
        # a generator: runs at the first next(), after Lightning's set_epoch for this epoch
        skip = 0
        if self._resume is not None:
            epoch, batches = self._resume
            self._resume = None
            if epoch == self.sampler.epoch:
                skip = batches
        self.sampler.start = skip * self.batch_size
        self.batches_done = skip
        for batch in super().__iter__():
            self.batches_done += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {
            "epoch": self.sampler.epoch,
            "batches": self.batches_done,
            "batch_size": self.batch_size,
            "seed": self.sampler.seed,
            "num_samples": len(self.dataset),
            "num_replicas": self.sampler.num_replicas,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        mismatch = {
            key: (state[key], now)
            for key, now in (
                ("batch_size", self.batch_size),
                ("seed", self.sampler.seed),
                ("num_samples", len(self.dataset)),
                ("num_replicas", self.sampler.num_replicas),
            )
            if key in state and state[key] != now
        }
        if mismatch:
            hint = ""
            if "num_replicas" in mismatch:
                hint = "; resume on as many processes (trainer.devices x trainer.num_nodes)"
            raise ValueError(
                "cannot resume the data order: the checkpoint's loader differs in "
                + ", ".join(f"{k} (checkpoint {a}, now {b})" for k, (a, b) in mismatch.items())
                + hint
            )
        self.sampler.set_epoch(state["epoch"])
        self._resume = (state["epoch"], state["batches"])


class SplitDataModule(L.LightningDataModule):
    """The loaders every datamodule here shares: a seeded, resumable, rank-sharded training
    loader and plain in-order val/test loaders over ``self.datasets[split]``.

    Subclasses fill ``self.datasets`` ({"train", "val", "test"}) in ``setup`` and have the
    hyperparameters ``batch_size``, ``eval_batch_size``, ``seed``, ``num_workers`` and
    ``pin_memory``.
    """

    datasets: dict[str, Dataset]

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def train_dataloader(self) -> ResumableDataLoader:
        hp = self.hparams
        num_replicas, rank = self._world()
        dataset = self.datasets["train"]
        sampler = ResumableSampler(
            dataset,
            shuffle=True,
            seed=hp.seed,
            drop_last=True,
            num_replicas=num_replicas,
            rank=rank,
        )
        return ResumableDataLoader(
            dataset,
            sampler=sampler,
            batch_size=hp.batch_size,
            drop_last=True,
            num_workers=hp.num_workers,
            pin_memory=hp.pin_memory,
            persistent_workers=hp.num_workers > 0,
        )

    def _eval_dataloader(self, split: str) -> DataLoader:
        hp = self.hparams
        return DataLoader(
            self.datasets[split],
            batch_size=hp.eval_batch_size or hp.batch_size,
            shuffle=False,
            num_workers=hp.num_workers,
            pin_memory=hp.pin_memory,
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_dataloader("test")
