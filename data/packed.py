"""Token files and fixed-length packing.

A corpus is tokenized once into a flat binary file of token ids (uint8/uint16/uint32, the
smallest that holds the vocabulary), read back as a memory map and cut into windows of
``seq_len + 1`` tokens: inputs are the first ``seq_len``, targets the same shifted by one.
Windows do not overlap (the last target of one window is the first input of the next).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset


def token_dtype(vocab_size: int) -> np.dtype:
    for dtype in (np.uint8, np.uint16, np.uint32):
        if vocab_size <= np.iinfo(dtype).max + 1:
            return np.dtype(dtype)
    raise ValueError(f"vocab_size {vocab_size} does not fit in uint32 token ids")


def write_token_file(path: str | Path, chunks: Iterable[np.ndarray], dtype: np.dtype) -> int:
    """Writes the concatenated ``chunks`` to ``path`` atomically; returns the token count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    count = 0
    with open(tmp, "wb") as f:
        for chunk in chunks:
            f.write(np.ascontiguousarray(chunk, dtype=dtype).tobytes())
            count += len(chunk)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return count


class PackedDataset(Dataset):
    """Non-overlapping ``(inputs, targets)`` windows of a token file, int64 tensors [seq_len].

    The memory map is opened lazily in each process (DataLoader workers included) and never
    pickled.
    """

    def __init__(self, path: str | Path, dtype: np.dtype | str, seq_len: int) -> None:
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1; got {seq_len}")
        self.path, self.dtype, self.seq_len = Path(path), np.dtype(dtype), seq_len
        self.num_tokens = self.path.stat().st_size // self.dtype.itemsize
        self._tokens: np.ndarray | None = None

    @property
    def tokens(self) -> np.ndarray:
        if self._tokens is None:
            if self.num_tokens == 0:
                self._tokens = np.zeros(0, dtype=self.dtype)
            else:
                self._tokens = np.memmap(self.path, dtype=self.dtype, mode="r")
        return self._tokens

    def __getstate__(self) -> dict:
        return self.__dict__ | {"_tokens": None}

    def __len__(self) -> int:
        return max(0, (self.num_tokens - 1) // self.seq_len)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} windows")
        start = index * self.seq_len
        window = torch.from_numpy(self.tokens[start : start + self.seq_len + 1].astype(np.int64))
        return window[:-1], window[1:]
