"""Tokenizers: text <-> token ids.

Two kinds, one interface (``name``, ``vocab_size``, ``eos_id``, ``encode``, ``encode_batch``,
``decode``, ``identity``):

- ``ByteTokenizer``: UTF-8 bytes, no vocabulary file (the embedded default corpus).
- ``HFTokenizer``: any fast Hugging Face tokenizer, by Hub name (``"gpt2"``) or local folder,
  loaded with ``transformers.AutoTokenizer``.

``load_tokenizer(name_or_path)`` picks one: ``"bytes"`` is the byte tokenizer, anything else
goes to ``AutoTokenizer``. ``identity()`` is what a token cache is keyed by: everything that
decides which ids a text becomes, and nothing else (not the path it was loaded from).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [self.encode_bytes(t) for t in texts]

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

    def identity(self) -> dict[str, Any]:
        return {"kind": "bytes", "vocab_size": self.vocab_size, "eos_id": self.eos_id}

    def __len__(self) -> int:
        return self.vocab_size


class HFTokenizer:
    """A fast Hugging Face tokenizer (``transformers.AutoTokenizer``) for corpus tokenization.

    Documents are encoded as plain text: no BOS/EOS or other special tokens are added (the
    corpus pipeline writes ``eos_id`` after each document itself), and a special token's
    string inside a document (GPT-2's ``<|endoftext|>`` in a web page) is encoded as ordinary
    text, so every ``eos_id`` in a token file is a real document boundary. Truncation and
    padding settings shipped with a tokenizer are switched off. Batches are encoded by the
    Rust backend, which spreads them over all cores.

    Args:
        name_or_path: a Hub name (``"gpt2"``) or a folder with ``tokenizer.json`` (and
            ``tokenizer_config.json``), as ``save_pretrained`` writes.
        eos_token: the end-of-document token; None = the tokenizer's own EOS token.
    """

    def __init__(self, name_or_path: str, eos_token: str | None = None) -> None:
        from transformers import AutoTokenizer

        self.name = str(name_or_path)
        try:
            self.hf = AutoTokenizer.from_pretrained(self.name)
        except OSError as err:  # not a folder, not in the Hub cache, and no network
            raise OSError(
                f"data.tokenizer={self.name!r} could not be loaded: it is not a tokenizer folder "
                "here, and as a Hub name it is neither in the local Hugging Face cache nor "
                "reachable (no network?). Give a folder with tokenizer.json (a tokenizer's "
                "save_pretrained), or download it once where the Hub is reachable "
                f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
            ) from err
        backend = getattr(self.hf, "backend_tokenizer", None)
        if backend is None:
            raise TypeError(
                f"data.tokenizer={self.name!r} loads a slow tokenizer "
                f"({type(self.hf).__name__}); the corpus pipeline needs a fast (Rust) one: "
                "a folder with tokenizer.json, or a Hub name that has one"
            )
        from tokenizers import Tokenizer

        # a private copy: its settings below must not change the AutoTokenizer's behaviour
        self.backend = Tokenizer.from_str(backend.to_str())
        self.backend.no_truncation()
        self.backend.no_padding()
        self.backend.encode_special_tokens = True
        token = eos_token if eos_token is not None else self.hf.eos_token
        eos_id = self.backend.token_to_id(token) if token is not None else None
        if eos_id is None:
            raise ValueError(
                f"data.tokenizer={self.name!r} has no end-of-document token "
                f"(eos_token={token!r}); set data.eos_token to one of its tokens"
            )
        self.eos_id = int(eos_id)
        self.vocab_size = max(len(self.hf), self.backend.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        encode = getattr(self.backend, "encode_batch_fast", self.backend.encode_batch)
        return [e.ids for e in encode(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return self.hf.decode(np.asarray(ids).tolist())

    def identity(self) -> dict[str, Any]:
        """The parts of ``tokenizer.json`` that decide the ids (normalizer, pre-tokenizer,
        model with its vocabulary and merges, added tokens), hashed; plus the EOS id."""
        definition = json.loads(self.backend.to_str())
        parts = {k: definition.get(k) for k in ("normalizer", "pre_tokenizer", "model")}
        parts["added_tokens"] = definition.get("added_tokens")
        digest = hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()
        return {
            "kind": "hf",
            "definition_sha1": digest,
            "vocab_size": self.vocab_size,
            "eos_id": self.eos_id,
        }

    def __len__(self) -> int:
        return self.vocab_size


def load_tokenizer(name_or_path: str, eos_token: str | None = None) -> ByteTokenizer | HFTokenizer:
    """``"bytes"``: the byte tokenizer; else a Hugging Face tokenizer by Hub name or path."""
    if not isinstance(name_or_path, str) or not name_or_path:
        raise ValueError(
            f"data.tokenizer must be 'bytes', a Hub name or a path; got {name_or_path!r}"
        )
    if name_or_path == ByteTokenizer.name:
        if eos_token is not None:
            raise ValueError(
                f"data.eos_token must be null with the byte tokenizer; got {eos_token!r}"
            )
        return ByteTokenizer()
    path = Path(name_or_path).expanduser()
    if name_or_path.startswith(("/", "./", "../", "~")) and not path.is_dir():
        raise FileNotFoundError(
            f"data.tokenizer={name_or_path!r} is a path, and no folder is there "
            "(a tokenizer folder holds tokenizer.json, as save_pretrained writes it)"
        )
    return HFTokenizer(str(path) if path.is_dir() else name_or_path, eos_token=eos_token)
