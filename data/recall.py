"""Associative recall: the synthetic in-context task of the Hyena paper (Poli et al., 2023, 4.1).

An example is a string of key-value pairs, then a query key; the answer is the value that key
was paired with earlier in the same string. The mapping is drawn afresh for every example, so
it cannot be memorized: the model has to look the key up in its context.

Following the reference generator (safari ``generate_assoc_recall``, ``allow_dot=False``):
- ``vocab_size`` counts every token. Two are special (a separator before the query, as the
  reference's ``=>``, and a pad); of the others the first half are keys, the rest values,
  so keys and values never share a token.
- Per example: every key gets a value (uniform, with replacement); the pairs' keys are drawn
  uniformly with replacement; the query is drawn uniformly from the keys present.
- Layout of the ``seq_len + 1`` tokens (inputs are the first ``seq_len``, targets the same
  shifted by one): ``[pad]* k v k v ... k v  =>  q  answer``. ``num_pairs`` defaults to as many
  pairs as fit (at most one pad); fewer pairs are left-padded.

What differs from the reference, and why:
- Targets are -100 (ignored) except at answer positions. Val and test supervise only the
  query's answer, so ``val/acc`` is the recall accuracy the paper reports. For training,
  ``train_targets="recalls"`` also supervises every value whose key already appeared earlier
  in the string (each is a recall of its own): about ``num_pairs`` times the signal of the
  query alone, which is what lets a small model learn the task in minutes. The reference
  trains next-token prediction on the whole string, whose other targets (fresh keys, first
  values) are unpredictable noise.
- Examples are generated on the fly, each from its own ``(seed, split, index)`` random stream:
  no arrays are stored, any split size costs nothing, and an example never depends on which
  others were drawn. The training order is ``data.resumable``'s (exact resume mid-epoch).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .resumable import SplitDataModule

IGNORE_INDEX = -100
SPLITS = ("train", "val", "test")
TRAIN_TARGETS = ("answer", "recalls")
SEPARATOR, PAD = "=>", "_"


class RecallTokenizer:
    """Names the recall vocabulary: keys ``k0..``, values ``v0..``, ``=>`` and ``_``.

    ``encode("k3 v1 k0 v2 => k3")`` gives token ids; ``decode`` joins names with spaces.
    """

    name = "recall"
    eos_id = None  # no end-of-sequence token: generation runs its full length

    def __init__(self, vocab_size: int) -> None:
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 4:
            raise ValueError(
                f"data.vocab_size must be an int >= 4 (a key, a value, separator and pad); "
                f"got {vocab_size!r}"
            )
        self.vocab_size = vocab_size
        self.num_keys = (vocab_size - 2) // 2
        self.num_values = vocab_size - 2 - self.num_keys
        self.value_offset = self.num_keys
        self.sep_id = vocab_size - 2
        self.pad_id = vocab_size - 1
        self.names = [f"k{i}" for i in range(self.num_keys)]
        self.names += [f"v{i}" for i in range(self.num_values)] + [SEPARATOR, PAD]
        self.ids = {name: i for i, name in enumerate(self.names)}

    def encode(self, text: str) -> list[int]:
        ids = []
        for name in text.split():
            if name not in self.ids:
                raise ValueError(
                    f"unknown recall token {name!r}; expected k0..k{self.num_keys - 1}, "
                    f"v0..v{self.num_values - 1}, {SEPARATOR!r} or {PAD!r}"
                )
            ids.append(self.ids[name])
        return ids

    def decode(self, ids: Sequence[int] | np.ndarray | Tensor) -> str:
        out = []
        for i in np.asarray(ids).reshape(-1).tolist():
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"recall token ids must be in [0, {self.vocab_size}); got {i}")
            out.append(self.names[i])
        return " ".join(out)

    def __len__(self) -> int:
        return self.vocab_size


def max_pairs(seq_len: int) -> int:
    """Pairs that fit in ``seq_len`` inputs next to the separator, query and answer."""
    return (seq_len - 2) // 2


class RecallDataset(Dataset):
    """``num_examples`` examples of one split: ``(inputs, targets)`` int64 tensors [seq_len]."""

    def __init__(
        self,
        tokenizer: RecallTokenizer,
        seq_len: int,
        num_examples: int,
        *,
        num_pairs: int | None = None,
        split: str = "train",
        seed: int = 0,
        targets: str = "answer",
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}; got {split!r}")
        if targets not in TRAIN_TARGETS:
            raise ValueError(f"targets must be one of {TRAIN_TARGETS}; got {targets!r}")
        if seq_len < 4:
            raise ValueError(f"data.seq_len must be >= 4 (one pair and a query); got {seq_len}")
        fit = max_pairs(seq_len)
        num_pairs = fit if num_pairs is None else num_pairs
        if not 1 <= num_pairs <= fit:
            raise ValueError(
                f"data.num_pairs must be in [1, {fit}] at seq_len={seq_len} (or null: as many as "
                f"fit); got {num_pairs}"
            )
        self.tokenizer, self.seq_len, self.num_examples = tokenizer, seq_len, num_examples
        self.num_pairs, self.split, self.seed, self.targets = num_pairs, split, seed, targets
        self.offset = seq_len + 1 - (2 * num_pairs + 3)  # left padding

    def __len__(self) -> int:
        return self.num_examples

    def tokens(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The example's ``seq_len + 1`` tokens and the mask of the inputs whose next token is
        supervised."""
        if not 0 <= index < self.num_examples:
            raise IndexError(f"index {index} out of range for {self.num_examples} examples")
        tok, n, p = self.tokenizer, self.num_pairs, self.offset
        rng = np.random.default_rng([self.seed, SPLITS.index(self.split), index])
        mapping = rng.integers(0, tok.num_values, size=tok.num_keys) + tok.value_offset
        keys = rng.integers(0, tok.num_keys, size=n)
        present, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        query = present[rng.integers(len(present))]

        seq = np.full(self.seq_len + 1, tok.pad_id, dtype=np.int64)
        seq[p : p + 2 * n : 2] = keys
        seq[p + 1 : p + 2 * n : 2] = mapping[keys]
        seq[-3:] = (tok.sep_id, query, mapping[query])
        supervised = np.zeros(self.seq_len, dtype=bool)
        supervised[-1] = True  # the query: its next token is the answer
        if self.targets == "recalls":
            seen_before = np.arange(n) > first[inverse]  # pair j's key also opens an earlier pair
            supervised[p : p + 2 * n : 2] = seen_before
        return seq, supervised

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        seq, supervised = self.tokens(index)
        targets = np.where(supervised, seq[1:], IGNORE_INDEX)
        return torch.from_numpy(seq[:-1]), torch.from_numpy(targets)


class RecallDataModule(SplitDataModule):
    """Associative recall (see the module docstring).

    Args:
        seq_len: input tokens per example (the answer is the target of the last one).
        vocab_size: all tokens, the two special ones included (the paper: 10 to 40).
        num_pairs: key-value pairs per example; None = as many as fit.
        train_targets: "answer" (the query only) or "recalls" (also every value whose key
            appeared before); val and test always score the query's answer only.
        train_examples, val_examples, test_examples: examples per split.
        batch_size: examples per training batch (per device).
        eval_batch_size: examples per val/test batch; None = batch_size.
        seed: seed of the examples and of the training order.
        num_workers, pin_memory: DataLoader settings.
    """

    def __init__(
        self,
        seq_len: int = 256,
        vocab_size: int = 30,
        num_pairs: int | None = None,
        train_targets: str = "answer",
        train_examples: int = 100_000,
        val_examples: int = 512,
        test_examples: int = 1024,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        seed: int = 0,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        if train_targets not in TRAIN_TARGETS:
            raise ValueError(
                f"data.train_targets must be one of {TRAIN_TARGETS}; got {train_targets!r}"
            )
        for name, value in (
            ("train_examples", train_examples),
            ("val_examples", val_examples),
            ("test_examples", test_examples),
            ("batch_size", batch_size),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"data.{name} must be a positive int; got {value!r}")
        if eval_batch_size is not None and eval_batch_size < 1:
            raise ValueError(f"data.eval_batch_size must be null or >= 1; got {eval_batch_size}")
        if train_examples < batch_size:
            raise ValueError(
                f"data.train_examples={train_examples} is fewer than one batch "
                f"(data.batch_size={batch_size})"
            )
        self.save_hyperparameters(logger=False)
        self.tokenizer = RecallTokenizer(vocab_size)
        counts = {"train": train_examples, "val": val_examples, "test": test_examples}
        # built here (they hold no data) so that bad lengths fail at instantiation
        self.datasets = {
            split: RecallDataset(
                self.tokenizer,
                seq_len,
                counts[split],
                num_pairs=num_pairs,
                split=split,
                seed=seed,
                targets=train_targets if split == "train" else "answer",
            )
            for split in SPLITS
        }

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size
