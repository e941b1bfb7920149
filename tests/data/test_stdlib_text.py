"""Byte tokenizer, token files, the stdlib text corpus and the resumable training order."""

from __future__ import annotations

import hashlib
import itertools

import numpy as np
import pytest
import torch

from data.packed import PackedDataset, token_dtype, write_token_file
from data.resumable import ResumableDataLoader, ResumableSampler
from data.stdlib_text import StdlibTextDataModule, _unit_hash, list_source_files, split_of
from data.tokenizers import ByteTokenizer


@pytest.mark.parametrize(
    "text", ["def f(x):\n    return x + 1\n", "", "naïve café — λ → ∞ 🐍", "\x00\x7f"]
)
def test_byte_tokenizer_round_trip(text: str) -> None:
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8"))
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text
    assert tok.decode(tok.encode_bytes(text)) == text


def test_byte_tokenizer_rejects_bad_ids_and_handles_cut_characters() -> None:
    tok = ByteTokenizer()
    with pytest.raises(ValueError, match=r"\[0, 256\)"):
        tok.decode([65, 256])
    cut = tok.encode("é")[:1]  # half of a two-byte character
    assert tok.decode(cut) == "\ufffd"
    with pytest.raises(UnicodeDecodeError):
        tok.decode(cut, errors="strict")


def test_token_dtype() -> None:
    assert token_dtype(256) == np.uint8
    assert token_dtype(257) == np.uint16 and token_dtype(50257) == np.uint16
    assert token_dtype(65537) == np.uint32


def test_packed_dataset_windows(tmp_path) -> None:
    tokens = np.arange(23, dtype=np.uint16)
    path = tmp_path / "t.bin"
    assert write_token_file(path, [tokens[:10], tokens[10:]], np.dtype(np.uint16)) == 23
    ds = PackedDataset(path, "uint16", seq_len=5)
    assert len(ds) == 4  # (23 - 1) // 5
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.dtype == torch.int64 and x.shape == (5,)
        assert x.tolist() == list(range(5 * i, 5 * i + 5))
        assert y.tolist() == list(range(5 * i + 1, 5 * i + 6))
    with pytest.raises(IndexError):
        ds[4]


@pytest.fixture
def fake_stdlib(tmp_path):
    root = tmp_path / "stdlib"
    files = {
        "a.py": "import os\n" * 40,
        "pkg/__init__.py": "",
        "pkg/b.py": "def b():\n    return 'b'\n" * 30,
        "pkg/c.py": "x = [i for i in range(3)]\n" * 30,
        "z.py": "# ünïcödé\n" * 30,
        "site-packages/skip.py": "never read\n",
        "notes.txt": "not python\n",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    return root, files


def test_file_list_is_sorted_and_excludes_site_packages(fake_stdlib) -> None:
    root, _ = fake_stdlib
    assert list_source_files(root) == ["a.py", "pkg/__init__.py", "pkg/b.py", "pkg/c.py", "z.py"]


def test_split_is_a_stable_hash_of_the_path() -> None:
    paths = [f"mod{i}/file{i}.py" for i in range(2000)]
    splits = [split_of(p, 0.05, 0.05) for p in paths]
    assert splits == [split_of(p, 0.05, 0.05) for p in paths]
    assert 0.03 < splits.count("val") / 2000 < 0.07 and 0.03 < splits.count("test") / 2000 < 0.07
    # the hash is sha1 of the relative path: the same on every machine and Python run
    digest = hashlib.sha1(b"asyncio/tasks.py").digest()
    assert _unit_hash("asyncio/tasks.py") == int.from_bytes(digest[:8], "big") / 2.0**64


def test_token_files_hold_the_documents_in_hash_order(fake_stdlib, tmp_path) -> None:
    root, files = fake_stdlib
    dm = StdlibTextDataModule(
        seq_len=16,
        batch_size=1,
        val_fraction=0.01,
        test_fraction=0.01,
        max_bytes=10**6,
        cache_dir=str(tmp_path / "cache"),
        stdlib_dir=str(root),
    )
    path, built = dm.build_cache()
    assert built
    by_split = {s: [] for s in ("train", "val", "test")}
    for rel in sorted(list_source_files(root), key=_unit_hash):
        by_split[split_of(rel, 0.01, 0.01)].append(rel)
    for split, rels in by_split.items():
        expected = b"".join(files[r].encode("utf-8") + b"\x00" for r in rels)
        assert (path / f"{split}.bin").read_bytes() == expected


def test_cap_cuts_each_split_to_its_share(fake_stdlib, tmp_path) -> None:
    root, _ = fake_stdlib
    dm = StdlibTextDataModule(
        max_bytes=500,
        val_fraction=0.1,
        test_fraction=0.1,
        cache_dir=str(tmp_path / "cache"),
        stdlib_dir=str(root),
    )
    path, _ = dm.build_cache()
    train = (path / "train.bin").read_bytes()
    assert len(train.replace(b"\x00", b"")) == 400  # 80% of the cap, the last file cut


@pytest.fixture(scope="module")
def stdlib_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def make_dm(cache_dir, **kw) -> StdlibTextDataModule:
    args = dict(seq_len=64, batch_size=4, max_bytes=300_000, cache_dir=str(cache_dir))
    return StdlibTextDataModule(**(args | kw))


def test_stdlib_dataset_is_deterministic_and_shifted(stdlib_cache) -> None:
    dm = make_dm(stdlib_cache)
    path, _ = dm.build_cache()
    dm.setup()
    train = dm.datasets["train"]
    assert len(train) == (train.num_tokens - 1) // 64 and len(train) > 1000
    tokens = np.fromfile(path / "train.bin", dtype=np.uint8)
    for i in (0, 1, len(train) - 1):
        x, y = train[i]
        assert torch.equal(x[1:], y[:-1])  # targets are the inputs shifted by one
        assert x.tolist() == tokens[64 * i : 64 * i + 64].tolist()
        assert y.tolist() == tokens[64 * i + 1 : 64 * i + 65].tolist()
    assert train[1][0][0] == train[0][1][-1]  # windows tile the stream
    text = dm.tokenizer.decode(tokens[:5000].tolist())
    assert "def " in text or "import " in text  # it is Python source
    first = text.split("\x00")[0]
    rel = sorted(
        (r for r in list_source_files(dm.root) if split_of(r, 0.02, 0.02) == "train"),
        key=_unit_hash,
    )[0]
    assert (dm.root / rel).read_bytes().decode("utf-8", "replace").startswith(first[:1000])

    again = make_dm(stdlib_cache)
    again.setup()
    assert torch.equal(again.datasets["val"][3][0], dm.datasets["val"][3][0])


def test_cache_is_reused_and_keyed_by_inputs(stdlib_cache) -> None:
    dm = make_dm(stdlib_cache)
    path, _ = dm.build_cache()
    mtime = (path / "train.bin").stat().st_mtime_ns
    path2, built = make_dm(stdlib_cache, seq_len=32, batch_size=2).build_cache()
    assert path2 == path and not built  # seq_len and batch size do not change the tokens
    assert (path / "train.bin").stat().st_mtime_ns == mtime
    other, built = make_dm(stdlib_cache, max_bytes=200_000).build_cache()
    assert other != path and built


def test_too_little_data_names_the_knob(stdlib_cache) -> None:
    dm = make_dm(stdlib_cache, max_bytes=3000, seq_len=256)
    with pytest.raises(ValueError, match="data.max_bytes"):
        dm.setup()


def _batches(loader, n=None):
    return [x.clone() for x, _ in itertools.islice(loader, n)]


def test_resumable_loader_continues_mid_epoch() -> None:
    dataset = torch.utils.data.TensorDataset(torch.arange(50)[:, None], torch.arange(50)[:, None])

    def loader(seed=3):
        sampler = ResumableSampler(dataset, seed=seed)
        return ResumableDataLoader(dataset, sampler=sampler, batch_size=4, drop_last=True)

    full = loader()
    full.sampler.set_epoch(1)
    reference = _batches(full)
    assert len(reference) == len(full) == 12
    assert sorted(torch.cat(reference).flatten().tolist()) == sorted(
        torch.cat(reference).flatten().unique().tolist()
    )  # a permutation: no sample twice

    first = loader()
    first.sampler.set_epoch(1)
    head = _batches(first, 5)
    state = first.state_dict()
    assert state["epoch"] == 1 and state["batches"] == 5

    resumed = loader()
    resumed.load_state_dict(state)
    tail = _batches(resumed)
    assert [b.tolist() for b in head + tail] == [b.tolist() for b in reference]
    assert resumed.state_dict()["batches"] == 12

    resumed.sampler.set_epoch(2)  # the next epoch starts from its beginning, in a new order
    epoch2 = _batches(resumed)
    assert len(epoch2) == 12 and [b.tolist() for b in epoch2] != [b.tolist() for b in reference]

    # a state from another epoch (saved right at an epoch's end) does not skip the next one
    stale = loader()
    stale.load_state_dict({"epoch": 1, "batches": 12})
    stale.sampler.set_epoch(2)
    assert [b.tolist() for b in _batches(stale)] == [b.tolist() for b in epoch2]

    with pytest.raises(ValueError, match="batch_size"):
        loader().load_state_dict(state | {"batch_size": 8})


def test_resumable_sampler_shards_like_distributed_sampler() -> None:
    dataset = list(range(40))
    shards = [list(ResumableSampler(dataset, seed=1, num_replicas=4, rank=r)) for r in range(4)]
    assert sorted(sum(shards, [])) == dataset
    assert all(len(s) == 10 for s in shards)
