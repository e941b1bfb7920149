"""eval.py: sampling (byte, HF and recall tokenizers; checkpoints and exports), JSON output, and
evaluation past the training length."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf, open_dict

import eval as eval_entry
import train as train_entry
from data.recall import RecallDataModule
from data.stdlib_text import StdlibTextDataModule
from data.tokenizers import ByteTokenizer
from models.lm import HyenaLM
from tests.helpers import ROOT, make_cfg, subprocess_env

SMALL = ["data.max_bytes=300000", "model.l_max=64"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("token-cache")


@pytest.fixture(scope="module")
def partial_run(tmp_path_factory, cache_dir) -> Path:
    """Two training steps of hyena-tiny with a partial convolution (filter_len 16 < l_max 64)."""
    out = tmp_path_factory.mktemp("partial-run")
    cfg = make_cfg(
        "train",
        ["debug=fast", "trainer.max_steps=2", "model.filter_len=16", *SMALL],
        out,
        cache_dir,
    )
    train_entry.train(cfg)
    return out


def evaluate(tmp_path: Path, cache_dir: Path, *overrides: str) -> tuple[dict, dict]:
    cfg = make_cfg("eval", [*overrides], tmp_path, cache_dir)
    return eval_entry.evaluate(cfg)


def test_checkpoint_samples_are_printed_and_written(partial_run, tmp_path, cache_dir, capsys):
    ckpt = partial_run / "checkpoints" / "last.ckpt"
    out_file = tmp_path / "report.json"
    metrics, objects = evaluate(
        tmp_path,
        cache_dir,
        f"ckpt_path={ckpt}",
        "data.max_bytes=300000",
        "sample.prompts=['def ','']",
        "sample.num_samples=2",
        "sample.max_new_tokens=12",
        "sample.stop_at_eos=false",
        f"output={out_file}",
    )
    assert math.isfinite(metrics["test/loss"]) and "test/acc" in metrics  # the loss pass ran
    samples = objects["samples"]
    assert [(s["prompt"], s["sample"]) for s in samples] == [
        ("def ", 0),
        ("def ", 1),
        ("", 0),
        ("", 1),
    ]
    tok = ByteTokenizer()
    for s in samples:
        assert len(s["completion_ids"]) == 12 and max(s["completion_ids"]) < 256
        assert s["completion"] == tok.decode(s["completion_ids"])
    printed = capsys.readouterr().out
    assert "test/loss: " in printed and "test/acc: " in printed
    assert printed.count("--- sample ") == 4 and samples[0]["completion"] in printed

    report = json.loads(out_file.read_text())
    assert report["metrics"]["test/loss"] == pytest.approx(metrics["test/loss"])
    assert report["samples"] == samples and report["sample_config"]["max_new_tokens"] == 12
    assert report["filter_len"] == 16 and report["seq_len"] == 64


def test_sampling_is_seeded_and_greedy_is_generate(partial_run, tmp_path, cache_dir, capsys):
    export = partial_run / "export"
    common = [f"ckpt_path={export}", "sample_only=true", "sample.prompts='import '", *SMALL]
    common += ["sample.max_new_tokens=10", "sample.top_p=null", "sample.temperature=1.0"]
    draws = [
        evaluate(tmp_path / str(i), cache_dir, *common, f"sample.seed={seed}")
        for i, seed in enumerate((3, 3, 4))
    ]
    assert all(metrics == {} for metrics, _ in draws)  # sample_only: no loss pass
    assert "test/loss" not in capsys.readouterr().out
    ids = [objects["samples"][0]["completion_ids"] for _, objects in draws]
    assert ids[0] == ids[1] and ids[0] != ids[2]

    _, objects = evaluate(tmp_path / "greedy", cache_dir, *common, "sample.temperature=0")
    net = HyenaLM.from_pretrained(export)
    prompt = torch.tensor([ByteTokenizer().encode("import ")], dtype=torch.long)
    expected = net.generate(prompt, 10, temperature=0.0, eos_token_id=ByteTokenizer.eos_id)
    completion = expected[0, prompt.shape[1] :].tolist()
    if 0 in completion:
        completion = completion[: completion.index(0)]
    assert objects["samples"][0]["completion_ids"] == completion


def test_longer_than_trained_with_partial_convolution(partial_run, tmp_path, cache_dir):
    # the model was trained with filter_len 16 at 64 tokens: it runs at 4x without any flag
    ckpt = partial_run / "checkpoints" / "last.ckpt"
    metrics, objects = evaluate(
        tmp_path, cache_dir, f"ckpt_path={ckpt}", "seq_len=256", "split=val", *SMALL[:1]
    )
    assert math.isfinite(metrics["val/loss"]) and math.isfinite(metrics["val/ppl"])
    assert objects["datamodule"].hparams.seq_len == 256
    assert objects["net"].config.filter_len == 16 and objects["net"].config.l_max == 64


def test_longer_than_trained_without_partial_convolution(tmp_path, cache_dir):
    torch.manual_seed(0)
    export = HyenaLM.from_name("hyena-tiny", l_max=64).save_pretrained(tmp_path / "export")
    args = [f"ckpt_path={export}", "seq_len=192", *SMALL[:1]]
    with pytest.raises(
        ValueError, match="seq_len=192 exceeds the model's l_max=64; set filter_len"
    ):
        evaluate(tmp_path / "a", cache_dir, *args)
    # a partial convolution chosen at eval time lifts the limit
    metrics, objects = evaluate(tmp_path / "b", cache_dir, *args, "filter_len=32")
    assert math.isfinite(metrics["test/loss"]) and objects["net"].config.filter_len == 32


def test_export_takes_the_data_of_its_run(tmp_path, cache_dir):
    """An export next to its run's .hydra/config.yaml is sampled with that run's data module
    (here associative recall and its tokenizer), unless data= is given."""
    run = tmp_path / "run"
    train_cfg = make_cfg(
        "train",
        ["data=recall", "data.vocab_size=12", "+model.vocab_size=12", "model.l_max=32"],
        run,
        cache_dir,
    )
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(
        OmegaConf.masked_copy(train_cfg, [k for k in train_cfg if k != "hydra"]),
        run / ".hydra" / "config.yaml",
    )
    torch.manual_seed(0)
    HyenaLM.from_name("hyena-tiny", vocab_size=12, l_max=32).save_pretrained(run / "export")

    common = [f"ckpt_path={run / 'export'}", "sample.max_new_tokens=1", "sample.temperature=0"]
    common.append("sample.prompts='k1 v2 k0 v4 => k1'")
    metrics, objects = evaluate(
        tmp_path / "eval", cache_dir, *common, "++data.val_examples=64", "split=val"
    )
    dm = objects["datamodule"]
    assert isinstance(dm, RecallDataModule) and dm.hparams.val_examples == 64
    assert dm.hparams.seq_len == 32 and 0.0 <= metrics["val/acc"] <= 1.0
    (s,) = objects["samples"]
    assert s["completion"] == dm.tokenizer.decode(s["completion_ids"])
    assert len(s["completion_ids"]) == 1 and s["stopped_at_eos"] is False  # no EOS token

    _, objects = evaluate(
        tmp_path / "eval2",
        cache_dir,
        *common,
        "data=stdlib_text",
        "sample_only=true",
        "sample.prompts=[[1, 2]]",
    )
    assert isinstance(objects["datamodule"], StdlibTextDataModule)


class WordDataModule(L.LightningDataModule):
    """Holds a transformers tokenizer (word-level, built here: no download) and nothing else."""

    WORDS = ["[UNK]", "</s>", "the", "cat", "sat", "on", "mat", "a", "dog", "ran"]

    def __init__(self, seq_len: int = 32, eval_batch_size: int = 2) -> None:
        super().__init__()
        from tokenizers import Tokenizer, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast

        backend = Tokenizer(
            models.WordLevel({w: i for i, w in enumerate(self.WORDS)}, unk_token="[UNK]")
        )
        backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        self.tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=backend, unk_token="[UNK]", eos_token="</s>"
        )


def test_samples_decode_with_an_hf_tokenizer(tmp_path, cache_dir):
    torch.manual_seed(0)
    vocab = len(WordDataModule.WORDS)
    export = HyenaLM.from_name("hyena-tiny", vocab_size=vocab, l_max=32).save_pretrained(
        tmp_path / "export"
    )
    cfg = make_cfg(
        "eval",
        [
            f"ckpt_path={export}",
            "sample_only=true",
            "sample.prompts=[the cat, [2, 8]]",
            "sample.num_samples=3",
            "sample.max_new_tokens=8",
            "sample.top_p=null",
            "sample.temperature=2.0",  # flat: the rows hit EOS (id 1) at different steps
        ],
        tmp_path,
        cache_dir,
    )
    with open_dict(cfg):
        cfg.data = {"_target_": f"{__name__}.WordDataModule"}
    _, objects = eval_entry.evaluate(cfg)
    tok = objects["datamodule"].tokenizer
    samples = objects["samples"]
    assert [s["prompt"] for s in samples] == ["the cat"] * 3 + [[2, 8]] * 3
    for s in samples:
        assert s["completion"] == tok.decode(s["completion_ids"])
        assert tok.eos_token_id not in s["completion_ids"]  # cut at EOS
        assert s["stopped_at_eos"] or len(s["completion_ids"]) == 8


def test_bad_sample_settings_name_the_setting(tmp_path, cache_dir):
    torch.manual_seed(0)
    export = HyenaLM.from_name("hyena-tiny", l_max=64).save_pretrained(tmp_path / "export")
    base = [f"ckpt_path={export}", *SMALL[:1]]
    with pytest.raises(ValueError, match="sample_only=true needs sample.prompts"):
        evaluate(tmp_path / "a", cache_dir, *base, "sample_only=true")
    with pytest.raises(ValueError, match="sample.max_new_tokens must be an int >= 1; got 0"):
        evaluate(tmp_path / "b", cache_dir, *base, "sample.prompts=x", "sample.max_new_tokens=0")
    with pytest.raises(ValueError, match="top_p must be None or in"):
        evaluate(
            tmp_path / "c",
            cache_dir,
            *base,
            "sample_only=true",
            "sample.prompts=x",
            "sample.top_p=1.5",
        )


@pytest.mark.slow
def test_cli_sampling(partial_run, tmp_path, cache_dir):
    out_file = tmp_path / "samples.json"
    env = subprocess_env()
    proc = subprocess.run(
        [
            sys.executable,
            "eval.py",
            f"ckpt_path={partial_run / 'export'}",
            f"paths.output_root={tmp_path}",
            f"paths.cache_dir={cache_dir}",
            "sample_only=true",
            'sample.prompts=["def main(", "x = "]',
            "sample.max_new_tokens=8",
            f"output={out_file}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out_file.read_text())
    assert [s["prompt"] for s in report["samples"]] == ["def main(", "x = "]
    assert "--- sample 0 of 'def main('" in proc.stdout


@pytest.mark.gpu
def test_sampling_on_gpu_in_bf16(partial_run, tmp_path, cache_dir):
    args = [f"ckpt_path={partial_run / 'export'}", "trainer=gpu", "sample.prompts='def '"]
    args += ["sample.max_new_tokens=8", "sample.num_samples=2", *SMALL[:1]]
    metrics, objects = evaluate(tmp_path, cache_dir, *args)
    assert math.isfinite(metrics["test/loss"])
    assert next(objects["net"].parameters()).is_cuda
    assert all(len(s["completion_ids"]) <= 8 for s in objects["samples"])
