"""Tokenizers: text <-> token ids."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class ByteTokenizer:
    """UTF-8 bytes as tokens: vocabulary of 256, no unknown token, lossless on any text.

    Byte 0 (NUL, absent from source text) doubles as the end-of-document separator.
    """

    name = "bytes"
    vocab_size = 256
    eos_id = 0

    def encode(self, text: str | bytes) -> list[int]:
        return list(self.encode_bytes(text))

    def encode_bytes(self, text: str | bytes) -> np.ndarray:
        """Token ids as a uint8 array (no copy of the bytes beyond the encoding)."""
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        return np.frombuffer(data, dtype=np.uint8)

    def decode(self, ids: Sequence[int] | np.ndarray, errors: str = "replace") -> str:
        """Invalid UTF-8 (e.g. a multi-byte character cut by a sequence boundary) decodes with
        ``errors`` ("replace" by default, "strict" to raise)."""
        arr = np.asarray(ids)
        if arr.size and (arr.min() < 0 or arr.max() >= self.vocab_size):
            raise ValueError(
                f"byte token ids must be in [0, {self.vocab_size}); got min {arr.min()}, "
                f"max {arr.max()}"
            )
        return arr.astype(np.uint8).tobytes().decode("utf-8", errors=errors)

    def __len__(self) -> int:
        return self.vocab_size
