"""Embedded default corpus: the Python standard library's own source code.

Present on every machine with Python, so the default training run needs no download.

- Files: every ``.py`` under ``sysconfig.get_paths()["stdlib"]`` (site-packages excluded),
  listed in sorted order.
- Split: by a hash of the path relative to the stdlib root (stable across machines and runs):
  ``val_fraction`` of the files go to val, ``test_fraction`` to test, the rest to train.
- Cap: each split keeps its files in hash order until its share of ``max_bytes`` is filled
  (the last file cut to fit), so the splits stay proportional at any cap and a larger cap only
  adds files.
- Tokens: byte-level (``data.tokenizers.ByteTokenizer``), documents separated by the EOS byte,
  written once per split as a token file under ``cache_dir`` in a folder keyed by every input
  (file list with sizes and mtimes, Python version, cap, fractions, tokenizer); reused after.
- Batches: non-overlapping windows of ``seq_len + 1`` tokens (``data.packed``); the training
  order is seeded and resumes mid-epoch (``data.resumable``).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .packed import PackedDataset, token_dtype, write_token_file
from .resumable import SplitDataModule
from .tokenizers import ByteTokenizer

SPLITS = ("train", "val", "test")
CACHE_FORMAT = 1
EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__"})


def default_stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def default_cache_dir() -> Path:
    base = os.environ.get("LONGCONV_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "longconv",
    )
    return Path(base)


def list_source_files(root: str | Path) -> list[str]:
    """Sorted POSIX paths, relative to ``root``, of the ``.py`` files under it."""
    root = Path(root)
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDED_DIRS)
        rel = Path(dirpath).relative_to(root)
        found += [(rel / f).as_posix() for f in filenames if f.endswith(".py")]
    return sorted(found)


def _unit_hash(relpath: str) -> float:
    digest = hashlib.sha1(relpath.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_of(relpath: str, val_fraction: float, test_fraction: float) -> str:
    u = _unit_hash(relpath)
    if u < val_fraction:
        return "val"
    if u < val_fraction + test_fraction:
        return "test"
    return "train"


class StdlibTextDataModule(SplitDataModule):
    """Byte-level language modelling on the Python standard library's source.

    Args:
        seq_len: tokens per training window (inputs and targets).
        batch_size: windows per training batch (per device).
        eval_batch_size: windows per val/test batch; None = batch_size.
        max_bytes: cap on the bytes of text read, over all splits.
        val_fraction, test_fraction: fractions of the files held out.
        seed: seed of the training order.
        num_workers, pin_memory: DataLoader settings.
        cache_dir: where token files go; None = $LONGCONV_CACHE or ~/.cache/longconv.
        stdlib_dir: source root; None = this interpreter's standard library.
    """

    def __init__(
        self,
        seq_len: int = 256,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        max_bytes: int = 16_000_000,
        val_fraction: float = 0.02,
        test_fraction: float = 0.02,
        seed: int = 0,
        num_workers: int = 0,
        pin_memory: bool = False,
        cache_dir: str | None = None,
        stdlib_dir: str | None = None,
    ) -> None:
        super().__init__()
        if seq_len < 1 or batch_size < 1:
            raise ValueError(
                f"data.seq_len and data.batch_size must be >= 1; got {seq_len}, {batch_size}"
            )
        if max_bytes < 1:
            raise ValueError(f"data.max_bytes must be >= 1; got {max_bytes}")
        if not (0 < val_fraction and 0 < test_fraction and val_fraction + test_fraction < 1):
            raise ValueError(
                "data.val_fraction and data.test_fraction must be > 0 with a sum < 1; got "
                f"{val_fraction}, {test_fraction}"
            )
        self.save_hyperparameters(logger=False)
        self.tokenizer = ByteTokenizer()
        self.root = Path(stdlib_dir) if stdlib_dir else default_stdlib_dir()
        self.cache_root = Path(cache_dir) if cache_dir else default_cache_dir()
        self.datasets: dict[str, PackedDataset] = {}

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    # -----------------------------------------------------------------------------------------
    # Token cache

    def cache_path(self) -> Path:
        """The folder of this configuration's token files (depends on every input)."""
        hp = self.hparams
        files = list_source_files(self.root)
        stats = []
        for rel in files:
            st = (self.root / rel).stat()
            stats.append((rel, st.st_size, st.st_mtime_ns))
        key = {
            "format": CACHE_FORMAT,
            "python": sys.version,
            "root": str(self.root.resolve()),
            "files": stats,
            "max_bytes": hp.max_bytes,
            "val_fraction": hp.val_fraction,
            "test_fraction": hp.test_fraction,
            "tokenizer": [self.tokenizer.name, self.tokenizer.vocab_size],
        }
        digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        return self.cache_root / f"stdlib_text-{digest}"

    def build_cache(self) -> tuple[Path, bool]:
        """Tokenizes the corpus unless already cached; returns (folder, whether it was built)."""
        path = self.cache_path()
        meta_file = path / "meta.json"
        if meta_file.is_file():
            return path, False
        hp = self.hparams
        dtype = token_dtype(self.tokenizer.vocab_size)
        by_split: dict[str, list[str]] = {s: [] for s in SPLITS}
        for rel in sorted(list_source_files(self.root), key=_unit_hash):
            by_split[split_of(rel, hp.val_fraction, hp.test_fraction)].append(rel)
        shares = {"val": hp.val_fraction, "test": hp.test_fraction}
        shares["train"] = 1.0 - hp.val_fraction - hp.test_fraction
        meta = {"dtype": dtype.name, "vocab_size": self.tokenizer.vocab_size, "splits": {}}
        for split in SPLITS:
            budget = max(1, int(hp.max_bytes * shares[split]))
            used: list[str] = []
            count = write_token_file(
                path / f"{split}.bin", self._documents(by_split[split], budget, used), dtype
            )
            meta["splits"][split] = {"tokens": count, "files": len(used)}
        tmp = meta_file.with_name(f"meta.json.tmp{os.getpid()}")
        tmp.write_text(json.dumps(meta, indent=2))
        os.replace(tmp, meta_file)  # written last: its presence marks a complete cache
        return path, True

    def _documents(self, files: list[str], budget: int, used: list[str]) -> Iterator[np.ndarray]:
        eos = np.array([self.tokenizer.eos_id], dtype=np.uint8)
        for rel in files:
            if budget <= 0:
                return
            data = (self.root / rel).read_bytes()[:budget]
            budget -= len(data)
            used.append(rel)
            yield self.tokenizer.encode_bytes(data)
            yield eos

    # -----------------------------------------------------------------------------------------
    # LightningDataModule

    def prepare_data(self) -> None:
        self.build_cache()

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        path, _ = self.build_cache()
        meta = json.loads((path / "meta.json").read_text())
        seq_len = self.hparams.seq_len
        for split in SPLITS:
            self.datasets[split] = PackedDataset(path / f"{split}.bin", meta["dtype"], seq_len)
        for split in SPLITS:
            if len(self.datasets[split]) == 0:
                raise ValueError(
                    f"the {split} split has fewer than seq_len + 1 = {seq_len + 1} tokens; "
                    "increase data.max_bytes or lower data.seq_len"
                )
        if len(self.datasets["train"]) < self.hparams.batch_size:
            raise ValueError(
                f"the train split has {len(self.datasets['train'])} windows, fewer than "
                f"data.batch_size={self.hparams.batch_size}; increase data.max_bytes"
            )
