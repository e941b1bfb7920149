"""The LM corpus pipeline (data.lm_corpus) and the Pile experiments, on a generated corpus.

Everything is made here: jsonl.zst / jsonl / parquet / txt shards of random documents, and a
small byte-level BPE tokenizer trained with ``tokenizers`` and saved as a tokenizer folder (the
same layout as the Hub's gpt2), loaded back through ``AutoTokenizer``. References tokenize each
document through ``transformers`` itself.
"""

from __future__ import annotations

import gzip
import itertools
import json
import math
import os
import threading
import time
import types
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import zstandard
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from data.lm_corpus import SPLITS, LMCorpusDataModule, carve_split
from data.tokenizers import ByteTokenizer, HFTokenizer, load_tokenizer

ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = ROOT / "configs"
EOS = "<|endoftext|>"
WORDS = "the of and to in is was for on that with as by at from his an were are which".split()
WORDS += ["naïve", "café", "λ", "→", "∞", "🐍", "x=1;", "\n", "\n\n", "  ", "http://a.b/c"]


def make_documents(n: int, seed: int, field: str = "text", max_words: int = 120) -> list[dict]:
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(n):
        words = rng.choice(WORDS, size=int(rng.integers(0, max_words)))
        text = " ".join(words)
        if i == 3:
            text = ""  # an empty document: skipped
        if i == 5:
            text = f"a page that quotes {EOS} as plain text"  # not a document boundary
        docs.append({field: text, "body": text.upper(), "meta": {"i": i, "set": "gen"}})
    return docs


def write_jsonl(path: Path, docs: list[dict]) -> Path:
    raw = "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs).encode()
    if path.name.endswith(".zst"):
        raw = zstandard.ZstdCompressor().compress(raw)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(raw)
    return path


def write_parquet(path: Path, docs: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = {k: [d[k] for d in docs] for k in ("text", "body")}
    pq.write_table(pa.table(columns), path)
    return path


def train_tokenizer(folder: Path, texts: list[str], vocab_size: int = 400) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> types.SimpleNamespace:
    """The Pile's layout: train/NN.* shards (zst, zst, parquet), val.jsonl.zst, test.jsonl."""
    root = tmp_path_factory.mktemp("corpus")
    train = make_documents(90, seed=1)
    val, test = make_documents(30, seed=2), make_documents(30, seed=3)
    write_jsonl(root / "train" / "00.jsonl.zst", train[:40])
    write_jsonl(root / "train" / "01.jsonl.zst", train[40:70])
    write_parquet(root / "train" / "02.parquet", train[70:])
    write_jsonl(root / "val.jsonl.zst", val)
    write_jsonl(root / "test.jsonl", test)
    texts = [d["text"] for d in train + val + test]
    tokenizer = train_tokenizer(root / "tokenizer", texts + [t.upper() for t in texts])
    return types.SimpleNamespace(
        root=root,
        train=[d["text"] for d in train],
        val=[d["text"] for d in val],
        test=[d["text"] for d in test],
        tokenizer=str(tokenizer),
        files={
            "train": str(root / "train" / "*"),
            "val": str(root / "val.jsonl.zst"),
            "test": str(root / "test.jsonl"),
        },
    )


def reference_tokens(tokenizer_dir: str, docs: list[str]) -> np.ndarray:
    """Each non-empty document + EOS, tokenized by transformers (special-token strings as
    text)."""
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(tokenizer_dir)
    ids: list[int] = []
    for doc in docs:
        if doc:
            ids += hf(doc, add_special_tokens=False, split_special_tokens=True)["input_ids"]
            ids.append(hf.eos_token_id)
    return np.array(ids)


def make_dm(corpus, cache_dir, **kw) -> LMCorpusDataModule:
    args = dict(corpus.files) | dict(
        tokenizer=corpus.tokenizer,
        seq_len=16,
        batch_size=4,
        tokenize_batch_size=16,
        cache_dir=str(cache_dir),
    )
    return LMCorpusDataModule(**(args | kw))


def read_tokens(path: Path) -> np.ndarray:
    meta = json.loads((path.parent / "meta.json").read_text())
    return np.fromfile(path, dtype=meta["dtype"])


# ---------------------------------------------------------------------------------------------
# Tokenizers


def test_hf_tokenizer_from_a_folder(corpus, tmp_path) -> None:
    tok = load_tokenizer(corpus.tokenizer)
    assert isinstance(tok, HFTokenizer)
    assert tok.eos_id == tok.hf.convert_tokens_to_ids(EOS) and 256 < tok.vocab_size <= 400
    text = "naïve café → 🐍 " + EOS + " x=1;"
    ids = tok.encode(text)
    assert tok.eos_id not in ids  # the special token's string is encoded as text
    assert tok.decode(ids) == text
    # identity: the definition, not where it was loaded from
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in Path(corpus.tokenizer).iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    assert load_tokenizer(str(copy)).identity() == tok.identity()
    other = train_tokenizer(tmp_path / "other", corpus.train, vocab_size=300)
    assert load_tokenizer(str(other)).identity() != tok.identity()
    assert isinstance(load_tokenizer("bytes"), ByteTokenizer)
    with pytest.raises(ValueError, match="data.eos_token"):
        load_tokenizer(corpus.tokenizer, eos_token="<no such token>")


# ---------------------------------------------------------------------------------------------
# Token files


def test_token_files_are_each_document_then_eos_in_order(corpus, tmp_path) -> None:
    dm = make_dm(corpus, tmp_path)
    files, built = dm.build_cache()
    assert len(built) == 3  # train, val and test each have a source: three passes
    for split in SPLITS:
        tokens = read_tokens(files[split])
        assert tokens.dtype == np.uint16  # a vocabulary of 400 does not fit in uint8
        expected = reference_tokens(corpus.tokenizer, getattr(corpus, split))
        np.testing.assert_array_equal(tokens, expected)
        docs = [d for d in getattr(corpus, split) if d]
        assert int((tokens == dm.tokenizer.eos_id).sum()) == len(docs)
    meta = json.loads((files["train"].parent / "meta.json").read_text())
    assert meta["documents_read"] == len(corpus.train) == 90
    assert meta["splits"]["train"]["documents"] == len([d for d in corpus.train if d]) < 90


def test_byte_tokenizer_and_text_field(corpus, tmp_path) -> None:
    dm = make_dm(corpus, tmp_path, tokenizer="bytes", text_field="body")
    files, _ = dm.build_cache()
    tokens = read_tokens(files["val"])
    assert tokens.dtype == np.uint8
    expected = b"".join(d.upper().encode() + b"\x00" for d in corpus.val if d)
    assert tokens.tobytes() == expected


def test_txt_and_gzip_shards(corpus, tmp_path) -> None:
    for i, doc in enumerate(corpus.val[:4]):
        (tmp_path / "txt" / f"{i}.txt").parent.mkdir(exist_ok=True)
        (tmp_path / "txt" / f"{i}.txt").write_text(doc, encoding="utf-8")
    raw = "".join(json.dumps({"text": d}) + "\n" for d in corpus.test).encode()
    (tmp_path / "test.jsonl.gz").write_bytes(gzip.compress(raw))
    # a folder stands for its .txt files, each one document
    dm = make_dm(corpus, tmp_path / "c", val=str(tmp_path / "txt"), test=[str(tmp_path / "*.gz")])
    files, _ = dm.build_cache()
    np.testing.assert_array_equal(
        read_tokens(files["val"]), reference_tokens(corpus.tokenizer, corpus.val[:4])
    )
    np.testing.assert_array_equal(
        read_tokens(files["test"]), reference_tokens(corpus.tokenizer, corpus.test)
    )


def test_a_record_without_text_names_the_field(corpus, tmp_path) -> None:
    records = [{"text": "one"}, {"text": "two"}, {"title": "no text"}, {"text": "four"}]
    write_jsonl(tmp_path / "val.jsonl", records)
    dm = make_dm(corpus, tmp_path / "c", val=str(tmp_path / "val.jsonl"))
    with pytest.raises(ValueError, match=r"record 2 of .*val.jsonl has no text in data.text_field"):
        dm.build_cache()
    left = [p.name for p in (tmp_path / "c" / "lm_corpus").glob("val-*") if p.suffix != ".lock"]
    assert left == []  # no val cache, complete or partial


def test_caps_cut_a_prefix(corpus, tmp_path) -> None:
    full = read_tokens(make_dm(corpus, tmp_path).build_cache()[0]["val"])
    for cap in (100, 257):
        files, _ = make_dm(corpus, tmp_path, max_tokens=cap).build_cache()
        np.testing.assert_array_equal(read_tokens(files["val"]), full[:cap])
    files, _ = make_dm(corpus, tmp_path, max_documents=7).build_cache()
    np.testing.assert_array_equal(
        read_tokens(files["val"]), reference_tokens(corpus.tokenizer, corpus.val[:7])
    )


# ---------------------------------------------------------------------------------------------
# Cache


def count_encodes(monkeypatch) -> list[int]:
    calls: list[int] = []
    original = HFTokenizer.encode_batch

    def counting(self, texts):
        calls.append(len(texts))
        return original(self, texts)

    monkeypatch.setattr(HFTokenizer, "encode_batch", counting)
    return calls


def test_cache_is_reused_and_keyed_by_every_input(corpus, tmp_path, monkeypatch) -> None:
    shards = tmp_path / "shards"
    for split in ("val", "test"):
        write_jsonl(shards / f"{split}.jsonl", make_documents(20, seed=7 if split == "val" else 8))
    files = {"val": str(shards / "val.jsonl"), "test": str(shards / "test.jsonl")}
    cache = tmp_path / "cache"
    calls = count_encodes(monkeypatch)
    first, built = make_dm(corpus, cache, **files).build_cache()
    assert len(built) == 3 and calls
    mtimes = {s: f.stat().st_mtime_ns for s, f in first.items()}

    calls.clear()  # another seq_len, batch size, seed: the same tokens
    again, built = make_dm(corpus, cache, **files, seq_len=8, batch_size=2, seed=5).build_cache()
    assert again == first and built == [] and calls == []
    assert {s: f.stat().st_mtime_ns for s, f in again.items()} == mtimes

    write_jsonl(shards / "val.jsonl", make_documents(21, seed=9))  # a shard edited
    edited, built = make_dm(corpus, cache, **files).build_cache()
    assert [b.split("-")[0] for b in built] == ["val"]  # only the pass that reads it
    assert edited["val"] != first["val"] and edited["train"] == first["train"]
    assert edited["test"] == first["test"]

    other_tok = train_tokenizer(tmp_path / "tok300", corpus.train, vocab_size=300)
    _, built = make_dm(corpus, cache, **files, tokenizer=str(other_tok)).build_cache()
    assert len(built) == 3
    _, built = make_dm(corpus, cache, **files, text_field="body").build_cache()
    assert len(built) == 3
    _, built = make_dm(corpus, cache, **files, max_tokens=500).build_cache()
    assert len(built) == 3


def test_interrupted_build_leaves_no_valid_looking_cache(corpus, tmp_path, monkeypatch) -> None:
    cache = tmp_path / "cache"
    original = HFTokenizer.encode_batch
    calls = []

    def dies_on_the_third_batch(self, texts):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(self, texts)

    monkeypatch.setattr(HFTokenizer, "encode_batch", dies_on_the_third_batch)
    with pytest.raises(KeyboardInterrupt):
        make_dm(corpus, cache).build_cache()
    folders = [p for p in (cache / "lm_corpus").iterdir() if not p.name.endswith(".lock")]
    assert folders == []  # the partial files went with their temporary folder
    monkeypatch.setattr(HFTokenizer, "encode_batch", original)

    # a build killed outright leaves its temporary folder, and maybe a folder without meta.json:
    # neither is taken for a cache, both are replaced
    dm = make_dm(corpus, cache)
    train_pass = dm.passes()[0]
    folder = dm.cache_folder(train_pass)
    (folder.parent / f"{folder.name}.tmp-99999").mkdir()
    (folder.parent / f"{folder.name}.tmp-99999" / "train.bin").write_bytes(b"\x01\x02" * 50)
    folder.mkdir()
    (folder / "train.bin").write_bytes(b"\x01\x02" * 50)
    files, built = dm.build_cache()
    assert folder.name in built
    assert not (folder.parent / f"{folder.name}.tmp-99999").exists()
    np.testing.assert_array_equal(
        read_tokens(files["train"]), reference_tokens(corpus.tokenizer, corpus.train)
    )


def test_concurrent_builders_share_one_build(corpus, tmp_path, monkeypatch) -> None:
    """Ranks (here threads) that reach an unbuilt cache together: one builds, the others wait
    for it and reuse its files."""
    calls = count_encodes(monkeypatch)
    make_dm(corpus, tmp_path / "alone").build_cache()
    one_build = len(calls)
    calls.clear()
    counting = HFTokenizer.encode_batch

    def slow(self, texts):
        time.sleep(0.02)  # the first builder holds each lock long enough for the other to wait
        return counting(self, texts)

    monkeypatch.setattr(HFTokenizer, "encode_batch", slow)
    dms = [make_dm(corpus, tmp_path / "shared") for _ in range(2)]
    results: list = [None, None]

    def build(i: int) -> None:
        try:
            results[i] = dms[i].build_cache()
        except BaseException as e:  # surfaced below
            results[i] = e

    threads = [threading.Thread(target=build, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(isinstance(r, BaseException) for r in results), results
    (files_a, built_a), (files_b, built_b) = results
    assert files_a == files_b
    assert (
        sorted(built_a + built_b) == sorted(set(built_a + built_b)) and len(built_a + built_b) == 3
    )
    assert len(calls) == one_build  # every document was tokenized once


# ---------------------------------------------------------------------------------------------
# Splits, windows, order


def test_carved_splits_are_disjoint_from_train_and_stable(corpus, tmp_path) -> None:
    fractions = {"val": 0.2, "test": 0.2}
    dm = make_dm(corpus, tmp_path, val=None, test=None, val_fraction=0.2, test_fraction=0.2)
    files, built = dm.build_cache()
    assert len(built) == 1 and files["val"].parent == files["train"].parent  # one pass
    docs_of = {s: [d for d in corpus.train if d and carve_split(d, fractions) == s] for s in SPLITS}
    assert all(len(docs_of[s]) >= 5 for s in SPLITS)  # each split got a share
    for split in SPLITS:
        expected = reference_tokens(corpus.tokenizer, docs_of[split])
        np.testing.assert_array_equal(read_tokens(files[split]), expected)
    texts = {s: set(docs_of[s]) for s in SPLITS}
    assert not texts["train"] & texts["val"] and not texts["train"] & texts["test"]
    assert not texts["val"] & texts["test"]

    # the split of a document is a hash of its text: the same in another shard order
    shards = sorted(Path(corpus.root, "train").iterdir())
    shuffled = make_dm(
        corpus, tmp_path, train=[str(p) for p in shards[::-1]], val=None, test=None,
        val_fraction=0.2, test_fraction=0.2,
    )  # fmt: skip
    files2, _ = shuffled.build_cache()
    tok = dm.tokenizer
    for split in ("val", "test"):
        decoded = tok.decode(read_tokens(files2[split])).split(EOS)[:-1]
        assert set(decoded) == texts[split]


def test_windows_and_resumable_order(corpus, tmp_path) -> None:
    dm = make_dm(corpus, tmp_path, seq_len=16, batch_size=4, seed=3)
    dm.setup()
    train = dm.datasets["train"]
    tokens = read_tokens(dm.build_cache()[0]["train"]).astype(np.int64)
    assert len(train) == (len(tokens) - 1) // 16 >= 30
    for i in (0, 1, len(train) - 1):
        x, y = train[i]
        assert x.tolist() == tokens[16 * i : 16 * i + 16].tolist()
        assert y.tolist() == tokens[16 * i + 1 : 16 * i + 17].tolist()

    def batches(loader, n=None):
        return [x.clone() for x, _ in itertools.islice(loader, n)]

    reference = batches(dm.train_dataloader())
    assert len(reference) == len(train) // 4
    again = make_dm(corpus, tmp_path, seq_len=16, batch_size=4, seed=3)
    again.setup()
    assert all(
        torch.equal(a, b) for a, b in zip(batches(again.train_dataloader()), reference, strict=True)
    )
    other_seed = make_dm(corpus, tmp_path, seq_len=16, batch_size=4, seed=4)
    other_seed.setup()
    assert not all(
        torch.equal(a, b)
        for a, b in zip(batches(other_seed.train_dataloader()), reference, strict=True)
    )

    first = dm.train_dataloader()
    head = batches(first, 3)
    state = first.state_dict()
    resumed = again.train_dataloader()
    resumed.load_state_dict(state)
    tail = batches(resumed)
    assert [b.tolist() for b in head + tail] == [b.tolist() for b in reference]

    # ranks: disjoint shards that cover the epoch
    seen = []
    for rank in range(2):
        dm.trainer = types.SimpleNamespace(world_size=2, global_rank=rank)
        seen += [row for b in batches(dm.train_dataloader()) for row in b.tolist()]
    dm.trainer = None
    assert sorted(seen) == sorted(row for b in reference for row in b.tolist())

    val = dm.val_dataloader()
    x, y = next(iter(val))
    assert torch.equal(x[0], dm.datasets["val"][0][0])


def test_hf_datasets_on_local_folders(corpus, tmp_path) -> None:
    from datasets import Dataset, DatasetDict

    by_files = make_dm(corpus, tmp_path / "c1", val=None, test=None).build_cache()[0]

    # a save_to_disk Dataset: the train split; val/test carved as for the files
    Dataset.from_dict({"text": corpus.train}).save_to_disk(tmp_path / "saved")
    hf = {"name": str(tmp_path / "saved"), "splits": {"train": "train", "val": None, "test": None}}
    files, _ = make_dm(corpus, tmp_path / "c2", hf=hf).build_cache()
    for split in SPLITS:
        np.testing.assert_array_equal(read_tokens(files[split]), read_tokens(by_files[split]))

    # a save_to_disk DatasetDict, the datasets naming (validation)
    DatasetDict(
        {s: Dataset.from_dict({"text": getattr(corpus, k)}) for s, k in
         (("train", "train"), ("validation", "val"), ("test", "test"))}
    ).save_to_disk(tmp_path / "saved_dict")  # fmt: skip
    files, _ = make_dm(
        corpus, tmp_path / "c3", hf={"name": str(tmp_path / "saved_dict")}
    ).build_cache()
    np.testing.assert_array_equal(
        read_tokens(files["val"]), reference_tokens(corpus.tokenizer, corpus.val)
    )

    # a dataset folder of json files, loaded by load_dataset(path)
    folder = tmp_path / "json_dataset"
    for split, name in (("train", "train"), ("val", "validation"), ("test", "test")):
        write_jsonl(folder / f"{name}.jsonl", [{"text": t} for t in getattr(corpus, split)])
    files, _ = make_dm(corpus, tmp_path / "c4", hf={"name": str(folder)}).build_cache()
    np.testing.assert_array_equal(
        read_tokens(files["test"]), reference_tokens(corpus.tokenizer, corpus.test)
    )

    with pytest.raises(ValueError, match="data.hf.splits.val='dev'"):
        hf = {"name": str(tmp_path / "saved_dict"), "splits": {"train": "train", "val": "dev"}}
        make_dm(corpus, tmp_path / "c5", hf=hf).build_cache()


@pytest.mark.parametrize(
    "overrides, match",
    [
        pytest.param({"text_field": "content"}, "data.text_field='content'", id="unknown-field"),
        pytest.param({"train": "{root}/nothing/*.jsonl.zst"}, "data.train: no file", id="no-match"),
        pytest.param({"val": "{root}/missing.jsonl.zst"}, "data.val: no such file", id="missing"),
        pytest.param({"test": "{root}/notes.csv"}, "data.test: .*unsupported extension", id="ext"),
        pytest.param({"train": None}, "data.train", id="no-train"),
        pytest.param({"train": 5}, "data.train must be a path", id="spec-type"),
        pytest.param({"hf": {"nme": "x"}}, "data.hf.nme", id="hf-key"),
        pytest.param({"seq_len": 0}, "data.seq_len", id="seq-len"),
        pytest.param({"max_tokens": -5}, "data.max_tokens", id="cap"),
        pytest.param({"eos_token": "<none>"}, "data.eos_token", id="eos"),
    ],
)
def test_bad_config_names_the_key(corpus, tmp_path, overrides, match) -> None:
    (corpus.root / "notes.csv").write_text("a,b\n")
    kw = {k: v.format(root=corpus.root) if isinstance(v, str) else v for k, v in overrides.items()}
    with pytest.raises(ValueError, match=match):
        make_dm(corpus, tmp_path, **kw).build_cache()


def test_too_little_data_names_the_knobs(corpus, tmp_path) -> None:
    dm = make_dm(corpus, tmp_path, max_tokens=40, seq_len=64)
    with pytest.raises(ValueError, match="data.max_tokens"):
        dm.setup()


# ---------------------------------------------------------------------------------------------
# The Pile experiments, one optimizer step each (two accumulated batches), offline on CPU

PILE_EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment" / "pile").glob("*.yaml"))
TOKENS_PER_STEP = 256 * 2048  # the recipe: 256 sequences of 2K tokens


def compose_experiment(name: str, overrides: list[str], out: Path, cache: Path):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=[f"experiment=pile/{name}", *overrides],
            return_hydra_config=True,
        )
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
        cfg.paths.cache_dir = str(cache)
    return cfg


@pytest.mark.parametrize("name", PILE_EXPERIMENTS)
def test_pile_experiment_recipe(name, tmp_path) -> None:
    cfg = compose_experiment(name, [], tmp_path, tmp_path)
    assert cfg.data._target_ == "data.lm_corpus.LMCorpusDataModule"
    assert cfg.data.tokenizer == "gpt2" and cfg.data.text_field == "text"
    assert cfg.data.train.endswith("pile/train/*.jsonl.zst")
    l_max = {"hyena-s": 2048, "hyena-s-4k": 4096, "hyena-s-8k": 8192}[name]
    assert cfg.data.seq_len == cfg.model.l_max == l_max
    assert cfg.global_batch_size * cfg.data.seq_len == TOKENS_PER_STEP
    assert cfg.global_batch_size % cfg.data.batch_size == 0
    opt, sched = cfg.task.optimizer, cfg.task.scheduler
    assert opt._target_ == "torch.optim.AdamW" and opt.lr == 6e-4 and opt.weight_decay == 0.1
    assert list(opt.betas) == [0.9, 0.98]
    assert sched.warmup_fraction == 0.01 and sched.warmup_steps is None
    assert sched.min_ratio == 0.1 and sched.total_steps == cfg.trainer.max_steps
    assert cfg.trainer.max_steps * TOKENS_PER_STEP >= 15e9
    assert cfg.data.max_tokens >= cfg.trainer.max_steps * TOKENS_PER_STEP  # tokenized enough
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.gradient_clip_val == 1.0
    assert "csv" in cfg.logger and cfg.callbacks.model_checkpoint.save_last


@pytest.mark.parametrize("name", PILE_EXPERIMENTS)
def test_pile_experiment_runs_one_step_on_a_generated_corpus(
    name, corpus, tmp_path, tmp_path_factory, monkeypatch
) -> None:
    import train as train_entry

    cache = tmp_path_factory.getbasetemp() / "pile-token-cache"  # shared by the experiments
    overrides = [
        "debug=fast",
        f"data.train={corpus.files['train']}",
        f"data.val={corpus.files['val']}",
        f"data.test={corpus.files['test']}",
        f"data.tokenizer={corpus.tokenizer}",
        "data.batch_size=2",
        "global_batch_size=4",  # 2 accumulated batches per optimizer step
        "model.l_max=32",
        "+model.n_layer=1",
        "+model.d_model=32",
        "+model.d_inner=64",
        "+model.filter_order=8",
        "+model.emb_dim=3",
        "trainer.max_steps=1",
        "trainer.val_check_interval=2",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "logger=csv",
        "data.pin_memory=false",
    ]
    cfg = compose_experiment(name, overrides, tmp_path, cache)
    assert cfg.task.optimizer.lr == 6e-4  # the recipe survives debug=fast
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    metrics, objects = train_entry.train(cfg)
    trainer = objects["trainer"]
    assert trainer.global_step == 1 and trainer.accumulate_grad_batches == 2
    assert objects["datamodule"].vocab_size == len(objects["datamodule"].tokenizer.hf)
    assert math.isfinite(metrics["train/loss"]) and math.isfinite(metrics["test/loss"])
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 1
    assert last["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["batches"] == 2
    assert os.path.isdir(tmp_path / "export")


@pytest.mark.gpu
@pytest.mark.parametrize("name", PILE_EXPERIMENTS)
def test_pile_experiment_full_size_on_gpu(name, corpus, tmp_path, monkeypatch) -> None:
    """The real model and sequence length at the recipe's per-GPU batch size, bf16-mixed: two
    optimizer steps of two accumulated batches each, on a generated corpus (about 300K tokens
    per split). Prints the peak GPU memory; it must leave a tenth of the device free."""
    import train as train_entry

    data = tmp_path / "data"
    for split, seed in (("train", 11), ("val", 12), ("test", 13)):
        write_jsonl(data / f"{split}.jsonl.zst", make_documents(400, seed=seed, max_words=1200))
    batch_size = compose_experiment(name, [], tmp_path, tmp_path).data.batch_size
    overrides = [
        f"data.train={data / 'train.jsonl.zst'}",
        f"data.val={data / 'val.jsonl.zst'}",
        f"data.test={data / 'test.jsonl.zst'}",
        f"data.tokenizer={corpus.tokenizer}",
        f"global_batch_size={2 * batch_size}",
        "trainer.accelerator=gpu",
        "trainer.devices=1",
        "trainer.max_steps=2",
        "trainer.val_check_interval=4",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "logger=csv",
    ]
    cfg = compose_experiment(name, overrides, tmp_path / "run", tmp_path / "cache")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    torch.cuda.reset_peak_memory_stats()
    metrics, objects = train_entry.train(cfg)
    peak = torch.cuda.max_memory_allocated()
    total = torch.cuda.get_device_properties(0).total_memory
    print(
        f"{name}: data.batch_size={batch_size} x seq_len={cfg.data.seq_len}, peak "
        f"{peak / 2**30:.1f} GiB of {total / 2**30:.0f} GiB, train/loss "
        f"{metrics['train/loss']:.3f}, test/loss {metrics['test/loss']:.3f}"
    )
    assert objects["trainer"].global_step == 2 and objects["trainer"].precision == "bf16-mixed"
    assert math.isfinite(metrics["train/loss"]) and math.isfinite(metrics["test/loss"])
    assert peak < 0.9 * total


def test_tokenizer_that_cannot_be_loaded_is_named(tmp_path) -> None:
    """Offline (HF_HUB_OFFLINE, in a child process: no test touches the network), a Hub name
    that is not cached and a missing folder fail with errors that name data.tokenizer."""
    import subprocess
    import sys

    from tests.helpers import ROOT, subprocess_env

    probe = (
        "from data.tokenizers import load_tokenizer\n"
        "for name in ('no-such-org/no-such-tokenizer', './no/such/folder'):\n"
        "    try:\n"
        "        load_tokenizer(name)\n"
        "    except OSError as err:\n"
        "        print(type(err).__name__, '|', err)\n"
    )
    env = subprocess_env(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    hub, folder = out.stdout.strip().splitlines()
    assert hub.startswith("OSError | data.tokenizer='no-such-org/no-such-tokenizer' could not")
    assert "neither in the local Hugging Face cache nor reachable" in hub
    assert folder.startswith("FileNotFoundError | data.tokenizer='./no/such/folder' is a path")
