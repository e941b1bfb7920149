"""Language-model corpora (the Pile or any other): documents -> token files -> fixed windows.

- Sources, one per split (train, val, test):
  local shards: a path, a glob or a list of them (a folder stands for the supported files under
  it, sorted); ``.jsonl``, ``.jsonl.zst``, ``.jsonl.gz`` and ``.parquet`` hold one document per
  record (its ``text_field``), a ``.txt`` file is one document. Or an HF dataset
  (``hf.name``): a Hub name, a local dataset folder (``load_dataset``) or a ``save_to_disk``
  folder (``load_from_disk``), with ``hf.splits`` naming its split for each of ours.
  Everything is read through HF ``datasets`` (streaming for files and, by default, for the
  Hub), in batches: the corpus is never held in memory and nothing is converted on disk.
- A split without a source is carved out of the train documents by a hash of each document's
  text: stable across machines, runs and shard layouts, and exact duplicates share a split.
- Tokens: ``data.tokenizers.load_tokenizer`` ("bytes", a Hub name such as "gpt2", or a
  tokenizer folder); EOS after every document; empty documents are skipped. Caps
  (``max_documents``, ``max_tokens``) apply to each pass over a source; a larger cap only adds
  tokens (the last document is cut to fit).
- Cache: each pass over a source writes its splits' token files (the smallest of uint8,
  uint16 and uint32 that holds the vocabulary) into ``<cache_dir>/lm_corpus/<splits>-<key>``.
  The key hashes every input: the source's identity (resolved file paths with sizes and
  mtimes; or dataset name/config/split/revision, plus the files of a local dataset folder),
  the tokenizer's definition, the text field, the caps, the carve fractions and a format
  version. A pass is built in a temporary folder renamed into place when complete
  (``meta.json`` inside marks a finished cache: a killed build never looks valid), under a
  file lock, so concurrent ranks or processes wait for the first builder and reuse its files.
  ``prepare_data`` (rank 0 of each node) builds; ``setup`` (every rank) opens.
- Batches: non-overlapping windows of ``seq_len + 1`` tokens (``data.packed``); the training
  order is seeded, sharded by rank and resumes mid-epoch (``data.resumable``).
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock
from omegaconf import DictConfig, ListConfig, OmegaConf
from tqdm.auto import tqdm

from .packed import PackedDataset, token_dtype
from .resumable import SplitDataModule
from .stdlib_text import default_cache_dir
from .tokenizers import ByteTokenizer, HFTokenizer, load_tokenizer

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
CACHE_FORMAT = 1
META = "meta.json"
# file name ending -> the HF ``datasets`` packaged builder that reads it
FILE_BUILDERS = {
    ".jsonl": "json",
    ".jsonl.zst": "json",
    ".jsonl.gz": "json",
    ".parquet": "parquet",
    ".txt": "text",
}
HF_KEYS = ("name", "config", "revision", "streaming", "splits")
HF_DEFAULTS: dict[str, Any] = {
    "name": None,
    "config": None,
    "revision": None,
    "streaming": True,
    "splits": {"train": "train", "val": "validation", "test": "test"},
}


def builder_of(path: str | Path) -> str | None:
    name = str(path).lower()
    for suffix, builder in FILE_BUILDERS.items():
        if name.endswith(suffix):
            return builder
    return None


def carve_split(text: str, fractions: Mapping[str, float]) -> str:
    """The split of a train document: ``fractions`` (in SPLITS order) of the hash range go to
    the carved splits, the rest stays in train."""
    digest = hashlib.sha1(text.encode("utf-8", "surrogatepass")).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    edge = 0.0
    for split in SPLITS:
        if split in fractions:
            edge += fractions[split]
            if u < edge:
                return split
    return "train"


def _plain(value: Any) -> Any:
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _file_stats(paths: Sequence[Path]) -> list[tuple[str, int, int]]:
    out = []
    for p in paths:
        st = p.stat()
        out.append((str(p.resolve()), st.st_size, st.st_mtime_ns))
    return out


# ---------------------------------------------------------------------------------------------
# Sources


@dataclass(frozen=True)
class FileSource:
    """Local shards, read in the order given."""

    files: tuple[Path, ...]
    key: str  # the config key it came from, for error messages

    @classmethod
    def resolve(cls, spec: str | Sequence[str], key: str) -> FileSource:
        patterns = [spec] if isinstance(spec, (str, Path)) else spec
        if (
            not isinstance(patterns, (list, tuple))
            or not patterns
            or not all(isinstance(p, (str, Path)) for p in patterns)
        ):
            raise ValueError(f"{key} must be a path, a glob or a list of them; got {spec!r}")
        files: list[Path] = []
        for pattern in map(str, patterns):
            if any(c in pattern for c in "*?["):  # a glob
                matched = sorted(Path(p) for p in glob.glob(pattern, recursive=True))
                matched = [p for p in matched if p.is_file()]
                if not matched:
                    raise ValueError(f"{key}: no file matches {pattern!r}")
            elif Path(pattern).is_dir():
                matched = sorted(
                    p for p in Path(pattern).rglob("*") if p.is_file() and builder_of(p)
                )
                if not matched:
                    raise ValueError(
                        f"{key}: the folder {pattern!r} holds no {'/'.join(FILE_BUILDERS)} file"
                    )
            elif Path(pattern).is_file():
                matched = [Path(pattern)]
            else:
                raise ValueError(f"{key}: no such file or folder {pattern!r}")
            files += matched
        for f in files:
            if builder_of(f) is None:
                raise ValueError(
                    f"{key}: {str(f)!r} has an unsupported extension; expected one of "
                    f"{list(FILE_BUILDERS)}"
                )
        duplicates = sorted(str(f) for f, n in Counter(files).items() if n > 1)
        if duplicates:
            raise ValueError(f"{key} lists these files more than once: {duplicates}")
        return cls(tuple(files), key)

    def identity(self) -> dict[str, Any]:
        return {"kind": "files", "files": _file_stats(self.files)}

    def describe(self) -> str:
        return f"{len(self.files)} file(s) of {self.key}"

    def text_batches(self, text_field: str, batch_size: int) -> Iterator[list[str]]:
        from datasets import load_dataset

        for path in self.files:
            builder = builder_of(path)
            kwargs = {"sample_by": "document"} if builder == "text" else {}
            ds = load_dataset(
                builder, data_files=[str(path)], split="train", streaming=True, **kwargs
            )
            field = "text" if builder == "text" else text_field  # a .txt file is one document
            yield from _texts(ds, field, str(path), batch_size)


@dataclass(frozen=True)
class HFSource:
    """One split of an HF dataset: Hub name, local dataset folder or ``save_to_disk`` folder."""

    name: str
    split: str
    config: str | None
    revision: str | None
    streaming: bool
    key: str

    def _local(self) -> Path | None:
        path = Path(self.name)
        return path if path.is_dir() else None

    def identity(self) -> dict[str, Any]:
        ident: dict[str, Any] = {
            "kind": "hf",
            "name": self.name,
            "config": self.config,
            "split": self.split,
            "revision": self.revision,
        }
        local = self._local()
        if local is not None:
            ident["name"] = str(local.resolve())
            ident["files"] = _file_stats(sorted(p for p in local.rglob("*") if p.is_file()))
        return ident

    def describe(self) -> str:
        return f"{self.name} [{self.split}]"

    def text_batches(self, text_field: str, batch_size: int) -> Iterator[list[str]]:
        yield from _texts(self._open(), text_field, self.describe(), batch_size)

    def _open(self):
        import datasets

        local = self._local()
        if local is not None and (
            (local / "dataset_dict.json").is_file() or (local / "state.json").is_file()
        ):
            ds = datasets.load_from_disk(str(local))
            if isinstance(ds, datasets.DatasetDict):
                if self.split not in ds:
                    raise ValueError(
                        f"{self.key}={self.split!r}: no such split in {self.name}; it has "
                        f"{sorted(ds)}"
                    )
                return ds[self.split]
            if self.split != "train":
                raise ValueError(
                    f"{self.key}={self.split!r}: {self.name} holds a single dataset, usable "
                    "as the train split only (set the other splits to null to carve them)"
                )
            return ds
        try:
            return datasets.load_dataset(
                self.name,
                self.config,
                split=self.split,
                revision=self.revision,
                streaming=self.streaming,
            )
        except (KeyError, ValueError) as e:
            raise ValueError(
                f"{self.key}={self.split!r}: cannot load that split of data.hf.name="
                f"{self.name!r} (config {self.config!r}): {e}"
            ) from e


def _texts(ds, text_field: str, where: str, batch_size: int) -> Iterator[list[str]]:
    """Batches of document texts from a ``datasets`` Dataset or IterableDataset."""
    names = ds.column_names
    if names is not None:
        if text_field not in names:
            raise ValueError(
                f"data.text_field={text_field!r} is not a field of {where}; its fields: {names}"
            )
        ds = ds.select_columns([text_field])
    seen = 0
    for batch in ds.iter(batch_size=batch_size):
        if text_field not in batch:
            raise ValueError(
                f"data.text_field={text_field!r} is not a field of {where}; its fields: "
                f"{sorted(batch)}"
            )
        texts = batch[text_field]
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(
                    f"record {seen + i} of {where} has no text in data.text_field="
                    f"{text_field!r} (got {type(text).__name__})"
                )
        seen += len(texts)
        yield texts


# ---------------------------------------------------------------------------------------------
# The datamodule


@dataclass(frozen=True)
class Pass:
    """One read of a source, writing the token files of ``outputs`` (train and what is carved
    from it, or one split)."""

    source: FileSource | HFSource
    outputs: tuple[str, ...]
    carve: dict[str, float]


class LMCorpusDataModule(SplitDataModule):
    """Language modelling on any text corpus, tokenized once into cached token files.

    Args:
        train, val, test: local shards of each split (a path, glob or list; a folder stands
            for its supported files). A null val/test is carved from train. Not used when
            ``hf.name`` is set.
        hf: an HF dataset instead of files: ``name`` (Hub name, local dataset folder or
            ``save_to_disk`` folder), ``config``, ``revision``, ``streaming`` (Hub reads),
            ``splits`` (its split name for each of ours; null = carve from train).
        text_field: the record field holding a document's text.
        tokenizer: "bytes", a Hub name ("gpt2") or a tokenizer folder.
        eos_token: the end-of-document token; null = the tokenizer's EOS token.
        seq_len: tokens per window (inputs and targets).
        batch_size: windows per training batch (per device).
        eval_batch_size: windows per val/test batch; None = batch_size.
        val_fraction, test_fraction: share of the train documents carved out for a split
            that has no source.
        max_documents, max_tokens: caps on each pass over a source (null = all).
        tokenize_batch_size: documents per tokenizer call.
        seed: seed of the training order.
        num_workers, pin_memory: DataLoader settings.
        cache_dir: where token files go; None = $LONGCONV_CACHE or ~/.cache/longconv.
    """

    def __init__(
        self,
        train: str | Sequence[str] | None = None,
        val: str | Sequence[str] | None = None,
        test: str | Sequence[str] | None = None,
        hf: Mapping[str, Any] | None = None,
        text_field: str = "text",
        tokenizer: str = "gpt2",
        eos_token: str | None = None,
        seq_len: int = 2048,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        val_fraction: float = 0.005,
        test_fraction: float = 0.005,
        max_documents: int | None = None,
        max_tokens: int | None = None,
        tokenize_batch_size: int = 1000,
        seed: int = 0,
        num_workers: int = 0,
        pin_memory: bool = False,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        train, val, test, hf = _plain(train), _plain(val), _plain(test), _plain(hf)
        hf = self._check_hf(hf)
        if hf["name"] is None and train is None:
            raise ValueError("data.train (local shards) or data.hf.name must be set; got neither")
        for name, value in (("seq_len", seq_len), ("batch_size", batch_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"data.{name} must be an int >= 1; got {value!r}")
        for name, value in (
            ("max_documents", max_documents),
            ("max_tokens", max_tokens),
            ("eval_batch_size", eval_batch_size),
        ):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"data.{name} must be null or an int >= 1; got {value!r}")
        if not isinstance(tokenize_batch_size, int) or tokenize_batch_size < 1:
            raise ValueError(
                f"data.tokenize_batch_size must be an int >= 1; got {tokenize_batch_size!r}"
            )
        if not (
            0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1
        ):
            raise ValueError(
                "data.val_fraction and data.test_fraction must be in (0, 1) with a sum < 1; got "
                f"{val_fraction}, {test_fraction}"
            )
        if not isinstance(text_field, str) or not text_field:
            raise ValueError(f"data.text_field must be a non-empty string; got {text_field!r}")
        if not isinstance(tokenizer, str) or not tokenizer:
            raise ValueError(
                f"data.tokenizer must be 'bytes', a Hub name or a path; got {tokenizer!r}"
            )
        self.save_hyperparameters(logger=False)
        self.hf_config = hf
        self.cache_root = Path(cache_dir) if cache_dir else default_cache_dir()
        self.datasets: dict[str, PackedDataset] = {}
        self._tokenizer: ByteTokenizer | HFTokenizer | None = None

    @staticmethod
    def _check_hf(hf: Mapping[str, Any] | None) -> dict[str, Any]:
        if hf is None:
            return dict(HF_DEFAULTS)
        if not isinstance(hf, Mapping):
            raise ValueError(f"data.hf must be a mapping with keys {HF_KEYS}; got {hf!r}")
        unknown = sorted(set(hf) - set(HF_KEYS))
        if unknown:
            raise ValueError(
                f"unknown key(s) data.hf.{unknown[0]} (all: {unknown}); known: {HF_KEYS}"
            )
        out = dict(HF_DEFAULTS) | dict(hf)
        splits = out["splits"] if out["splits"] is not None else {}
        if not isinstance(splits, Mapping) or set(splits) - set(SPLITS):
            raise ValueError(
                f"data.hf.splits must map some of {SPLITS} to split names; got {splits!r}"
            )
        out["splits"] = {s: splits.get(s) for s in SPLITS}
        if out["name"] is not None and out["splits"]["train"] is None:
            raise ValueError(
                "data.hf.splits.train must name the dataset's training split; got null"
            )
        return out

    @property
    def tokenizer(self) -> ByteTokenizer | HFTokenizer:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.hparams.tokenizer, self.hparams.eos_token)
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    # -----------------------------------------------------------------------------------------
    # Token cache

    def passes(self) -> list[Pass]:
        """The reads this configuration needs (resolves files: call where they exist)."""
        hp, hf = self.hparams, self.hf_config
        sources: dict[str, FileSource | HFSource | None] = {}
        if hf["name"] is not None:
            if any(hp[s] is not None for s in SPLITS):
                log.info(
                    "data.hf.name is set: every split comes from it, data.train/val/test "
                    "are not used"
                )
            for split in SPLITS:
                name = hf["splits"][split]
                sources[split] = (
                    None
                    if name is None
                    else HFSource(
                        str(hf["name"]),
                        str(name),
                        hf["config"],
                        hf["revision"],
                        bool(hf["streaming"]),
                        f"data.hf.splits.{split}",
                    )
                )
        else:
            for split in SPLITS:
                spec = hp[split]
                sources[split] = None if spec is None else FileSource.resolve(spec, f"data.{split}")
        fractions = {"val": hp.val_fraction, "test": hp.test_fraction}
        carved = {s: fractions[s] for s in ("val", "test") if sources[s] is None}
        plan = [Pass(sources["train"], ("train", *carved), carved)]
        plan += [Pass(sources[s], (s,), {}) for s in ("val", "test") if sources[s] is not None]
        return plan

    def cache_folder(self, p: Pass) -> Path:
        hp = self.hparams
        key = {
            "format": CACHE_FORMAT,
            "source": p.source.identity(),
            "tokenizer": self.tokenizer.identity(),
            "text_field": hp.text_field,
            "outputs": list(p.outputs),
            "carve": p.carve,
            "max_documents": hp.max_documents,
            "max_tokens": hp.max_tokens,
        }
        digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        return self.cache_root / "lm_corpus" / f"{'+'.join(p.outputs)}-{digest}"

    def build_cache(self) -> tuple[dict[str, Path], list[str]]:
        """Tokenizes every source not cached yet; returns (token file of each split, names of
        the cache folders built by this call)."""
        files: dict[str, Path] = {}
        built: list[str] = []
        for p in self.passes():
            folder = self.cache_folder(p)
            if self._ensure(p, folder):
                built.append(folder.name)
            files |= {s: folder / f"{s}.bin" for s in p.outputs}
        return files, built

    def _ensure(self, p: Pass, folder: Path) -> bool:
        if (folder / META).is_file():
            return False
        folder.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(folder) + ".lock"):
            if (folder / META).is_file():  # another process built it while this one waited
                return False
            # leftovers of killed builds of this key (none can be running: the lock is ours)
            for stale in folder.parent.glob(f"{folder.name}.tmp-*"):
                shutil.rmtree(stale, ignore_errors=True)
            if folder.exists():
                shutil.rmtree(folder)
            tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
            tmp.mkdir()
            try:
                self._tokenize(p, tmp, folder.name)
                os.rename(tmp, folder)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        return True

    def _tokenize(self, p: Pass, out: Path, label: str) -> None:
        hp, tok = self.hparams, self.tokenizer
        dtype = token_dtype(tok.vocab_size)
        tokens = dict.fromkeys(p.outputs, 0)
        documents = dict.fromkeys(p.outputs, 0)
        read = total = 0
        capped = False
        start = time.perf_counter()
        log.info(f"tokenizing {p.source.describe()} into {out.parent / label}")
        handles = {s: open(out / f"{s}.bin", "wb") for s in p.outputs}
        bar = tqdm(desc=f"tokenizing {label}", unit=" docs", mininterval=1.0)
        try:
            for texts in p.source.text_batches(hp.text_field, hp.tokenize_batch_size):
                if hp.max_documents is not None:
                    texts = texts[: hp.max_documents - read]
                read += len(texts)
                texts = [t for t in texts if t]
                routes = [carve_split(t, p.carve) if p.carve else p.outputs[0] for t in texts]
                chunks: dict[str, list[int]] = {s: [] for s in p.outputs}
                for split, ids in zip(routes, tok.encode_batch(texts), strict=True):
                    doc = [*ids, tok.eos_id]
                    if hp.max_tokens is not None:
                        doc = doc[: hp.max_tokens - total]  # the last document is cut to fit
                    chunks[split] += doc
                    tokens[split] += len(doc)
                    documents[split] += 1
                    total += len(doc)
                    if total == hp.max_tokens:
                        break
                for split, ids in chunks.items():
                    if ids:
                        handles[split].write(np.asarray(ids, dtype=dtype).tobytes())
                bar.update(len(texts))
                bar.set_postfix_str(f"{total:,} tokens", refresh=False)
                capped = total == hp.max_tokens or read == hp.max_documents
                if capped:
                    break
            for f in handles.values():
                f.flush()
                os.fsync(f.fileno())
        finally:
            bar.close()
            for f in handles.values():
                f.close()
        seconds = time.perf_counter() - start
        meta = {
            "format": CACHE_FORMAT,
            "source": p.source.describe(),
            "seconds": round(seconds, 3),
            "dtype": np.dtype(dtype).name,
            "vocab_size": tok.vocab_size,
            "eos_id": tok.eos_id,
            "documents_read": read,
            "capped": capped,
            "splits": {s: {"tokens": tokens[s], "documents": documents[s]} for s in p.outputs},
        }
        with open(out / META, "w") as f:
            f.write(json.dumps(meta, indent=2))
            f.flush()
            os.fsync(f.fileno())
        log.info(
            f"wrote {total:,} tokens of {read:,} documents in {seconds:.0f} s "
            f"({total / max(seconds, 1e-9):,.0f} tokens/s): {meta['splits']}"
        )

    # -----------------------------------------------------------------------------------------
    # LightningDataModule

    def prepare_data(self) -> None:
        self.build_cache()

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        files, _ = self.build_cache()
        seq_len = self.hparams.seq_len
        for split in SPLITS:
            meta = json.loads((files[split].parent / META).read_text())
            dataset = PackedDataset(files[split], meta["dtype"], seq_len)
            if dataset.num_tokens != meta["splits"][split]["tokens"]:
                raise ValueError(
                    f"the token cache {files[split]} holds {dataset.num_tokens} tokens, its "
                    f"meta.json says {meta['splits'][split]['tokens']}: delete the folder "
                    f"{files[split].parent} to rebuild it"
                )
            if len(dataset) == 0:
                raise ValueError(
                    f"the {split} split has {dataset.num_tokens} tokens, fewer than seq_len + 1 = "
                    f"{seq_len + 1}; give it more data (data.max_tokens, data.max_documents, "
                    "data.val_fraction/test_fraction) or lower data.seq_len"
                )
            self.datasets[split] = dataset
        num_replicas, _ = self._world()
        if len(self.datasets["train"]) < self.hparams.batch_size * num_replicas:
            raise ValueError(
                f"the train split has {len(self.datasets['train'])} windows, fewer than "
                f"data.batch_size={self.hparams.batch_size} x {num_replicas} rank(s)"
            )
