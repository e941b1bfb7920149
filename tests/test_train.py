"""Configs, the training and evaluation entry points, checkpoints and resuming (CPU, small)."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig

import eval as eval_entry
import train as train_entry
from models import HyenaLM
from models.tasks import LanguageModelTask
from tests.helpers import CONFIG_DIR, ROOT, make_cfg, subprocess_env

HAS_CUDA = torch.cuda.is_available()
NEEDS_GPU = {("trainer", "gpu"), ("trainer", "fsdp")}

SMALL_DATA = ["data.max_bytes=1000000"]


def config_options() -> list[tuple[str, str]]:
    options = []
    for group in ("model", "data", "task", "trainer", "logger", "callbacks", "debug", "paths"):
        options += [(group, p.stem) for p in sorted((CONFIG_DIR / group).glob("*.yaml"))]
    experiments = CONFIG_DIR / "experiment"
    options += [
        ("experiment", p.relative_to(experiments).with_suffix("").as_posix())
        for p in sorted(experiments.rglob("*.yaml"))
    ]
    return options


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("token-cache")


@pytest.mark.parametrize("group, option", config_options(), ids=lambda x: str(x))
def test_every_config_composes_and_instantiates(group, option, tmp_path, cache_dir, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cfg = make_cfg("train", [f"{group}={option}"], tmp_path, cache_dir)
    assert cfg.model._target_ and cfg.data._target_ and cfg.task._target_

    datamodule = instantiate(cfg.data)
    assert datamodule.hparams.seq_len == cfg.model.l_max
    with torch.device("meta"):  # full-size models without allocating them
        net = instantiate(cfg.model)
    task = instantiate(cfg.task, net=net)
    optimizer = task.hparams.optimizer(params=net.parameters())
    assert optimizer.defaults["lr"] == cfg.task.optimizer.lr
    task.hparams.scheduler(optimizer=optimizer)

    callbacks = train_entry.instantiate_callbacks(cfg.get("callbacks"))
    if group == "logger" and option == "wandb":
        pytest.importorskip("wandb")  # an optional logger: absent on some machines (the GPU image)
    loggers = train_entry.instantiate_loggers(cfg.get("logger"))
    if group == "logger" and option == "wandb":
        assert loggers[0]._offline  # no API key: offline, never a login prompt
    if (group, option) in NEEDS_GPU and not HAS_CUDA:
        if cfg.trainer.get("strategy") and "_target_" in cfg.trainer.strategy:
            strategy = instantiate(cfg.trainer.strategy)
            assert type(strategy).__name__ == "FSDPStrategy"
        return
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    assert trainer.max_steps == cfg.trainer.max_steps


def test_eval_config_composes(tmp_path, cache_dir):
    cfg = make_cfg("eval", ["ckpt_path=some.ckpt"], tmp_path, cache_dir)
    assert cfg.split == "test" and cfg.trainer.limit_test_batches == 1.0
    instantiate(cfg.trainer, callbacks=train_entry.instantiate_callbacks(cfg.callbacks))


class Recorder(Callback):
    """(global step after the batch, hash of the batch's inputs, loss) for every training step."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, int, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        inputs = batch[0]
        fingerprint = hash(tuple(inputs.flatten().tolist()))
        self.steps.append((trainer.global_step, fingerprint, float(outputs["loss"])))


class Killed(Exception):
    pass


class KillAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise Killed


def run_train(cfg: DictConfig, monkeypatch, *extra: Callback) -> tuple[dict, dict]:
    original = train_entry.instantiate_callbacks
    monkeypatch.setattr(train_entry, "instantiate_callbacks", lambda c: original(c) + list(extra))
    try:
        return train_entry.train(cfg)
    finally:
        monkeypatch.setattr(train_entry, "instantiate_callbacks", original)


@pytest.fixture(scope="module")
def default_run(tmp_path_factory, cache_dir):
    """The default training run (no experiment), shortened."""
    out = tmp_path_factory.mktemp("default-run")
    cfg = make_cfg(
        "train",
        [
            "trainer.max_steps=60",
            "trainer.val_check_interval=30",
            "trainer.log_every_n_steps=1",
            "trainer.limit_val_batches=4",
            "trainer.limit_test_batches=4",
            *SMALL_DATA,
        ],
        out,
        cache_dir,
    )
    with pytest.MonkeyPatch.context() as mp:
        metrics, objects = run_train(cfg, mp)
    return out, metrics, objects


def test_default_run_learns_and_writes_checkpoints(default_run):
    out, metrics, objects = default_run
    rows = list(csv.DictReader(open(next(out.glob("csv/*/metrics.csv")))))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 60
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert losses[0] > 5.0  # starts near ln(256) = 5.55: uniform over bytes
    assert last < first - 1.5, (first, last)
    assert metrics["val/loss"] < 4.0 and math.isfinite(metrics["test/ppl"])

    last_ckpt = out / "checkpoints" / "last.ckpt"
    assert objects["last_ckpt"] == last_ckpt and last_ckpt.is_file()
    assert (out / "checkpoints" / "step000060.ckpt").is_file()  # best val/loss: the last one
    ckpt = torch.load(last_ckpt, map_location="cpu", weights_only=True)  # plain data only
    assert ckpt["global_step"] == 60
    assert ckpt["run_config"]["model"]["name"] == "hyena-tiny"
    assert ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["batches"] == 60
    assert ckpt["hyper_parameters"]["optimizer"]["_target_"] == "torch.optim.adamw.AdamW"

    # the checkpoint alone rebuilds the task, optimizer included (hparams are plain configs)
    task = LanguageModelTask.load_from_checkpoint(last_ckpt, net=HyenaLM.from_name("hyena-tiny"))
    assert isinstance(task.configure_optimizers()["optimizer"], torch.optim.AdamW)

    export = objects["export_dir"]
    net = objects["net"].eval()
    loaded = HyenaLM.from_pretrained(export).eval()
    idx = torch.randint(0, 256, (2, 64))
    assert torch.equal(net(idx), loaded(idx))


def test_eval_on_fresh_checkpoint_and_export(default_run, tmp_path, cache_dir, capsys):
    out, _, _ = default_run
    results = {}
    for name, path in (("ckpt", out / "checkpoints" / "last.ckpt"), ("export", out / "export")):
        cfg = make_cfg("eval", [f"ckpt_path={path}", *SMALL_DATA], tmp_path / name, cache_dir)
        metrics, _ = eval_entry.evaluate(cfg)
        results[name] = metrics
        assert math.isfinite(metrics["test/ppl"]) and 1.0 < metrics["test/ppl"] < 60.0
        assert metrics["test/ppl"] == pytest.approx(math.exp(metrics["test/loss"]), rel=1e-5)
    # the checkpoint and the export are the same weights on the same data
    assert results["ckpt"]["test/loss"] == pytest.approx(results["export"]["test/loss"], rel=1e-6)
    assert "test/ppl:" in capsys.readouterr().out

    cfg = make_cfg(
        "eval",
        [f"ckpt_path={out / 'export'}", "split=val", "seq_len=512", "filter_len=128", *SMALL_DATA],
        tmp_path / "long",
        cache_dir,
    )
    metrics, objects = eval_entry.evaluate(cfg)  # twice the training length: partial conv
    assert objects["net"].config.filter_len == 128 and math.isfinite(metrics["val/loss"])

    cfg = make_cfg(
        "eval",
        [f"ckpt_path={out / 'export'}", "seq_len=512", *SMALL_DATA],
        tmp_path / "too-long",
        cache_dir,
    )
    with pytest.raises(ValueError, match="exceeds the model's l_max=256; set filter_len="):
        eval_entry.evaluate(cfg)


def test_resume_continues_at_the_same_step_and_data(tmp_path, cache_dir, monkeypatch):
    n = 6
    # 4 batches per epoch: the kill lands mid-epoch, after an epoch boundary
    common = [
        "trainer.max_steps=12",
        f"trainer.val_check_interval={n}",
        "trainer.limit_train_batches=4",
        "trainer.limit_val_batches=1",
        "test=false",
        "export=false",
        "logger=csv",
        *SMALL_DATA,
    ]

    reference = Recorder()
    run_train(make_cfg("train", common, tmp_path / "ref", cache_dir), monkeypatch, reference)
    assert [s for s, _, _ in reference.steps] == list(range(1, 13))

    killed = Recorder()
    with pytest.raises(Killed):
        run_train(
            make_cfg("train", common, tmp_path / "killed", cache_dir),
            monkeypatch,
            killed,
            KillAt(n + 2),
        )
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == n  # last save before the kill

    resumed = Recorder()
    _, objects = run_train(
        make_cfg("train", [*common, f"ckpt_path={last}"], tmp_path / "resumed", cache_dir),
        monkeypatch,
        resumed,
    )
    assert [s for s, _, _ in resumed.steps] == list(range(n + 1, 13))
    assert objects["trainer"].global_step == 12
    ref_tail = reference.steps[n:]
    assert [f for _, f, _ in resumed.steps] == [f for _, f, _ in ref_tail]  # same batches
    assert [f for _, f, _ in killed.steps] == [f for _, f, _ in reference.steps[: n + 2]]
    for (_, _, got), (_, _, want) in zip(resumed.steps, ref_tail, strict=True):
        assert got == pytest.approx(want, rel=1e-5)  # same weights, optimizer and schedule


def test_finished_run_extends_at_the_same_data_position(tmp_path, cache_dir, monkeypatch):
    # the last step (5) falls between validations (every 3): last.ckpt must still hold step 5,
    # saved mid-epoch, so a longer run picks up the next batches of the same epoch
    common = [
        "trainer.val_check_interval=3",
        "trainer.limit_val_batches=1",
        "test=false",
        "export=false",
        *SMALL_DATA,
    ]
    reference = Recorder()
    cfg = make_cfg("train", [*common, "trainer.max_steps=8"], tmp_path / "ref", cache_dir)
    run_train(cfg, monkeypatch, reference)
    run_train(
        make_cfg("train", [*common, "trainer.max_steps=5"], tmp_path / "short", cache_dir),
        monkeypatch,
    )
    last = tmp_path / "short" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 5
    extended = Recorder()
    cfg = make_cfg(
        "train",
        [*common, "trainer.max_steps=8", f"ckpt_path={last}"],
        tmp_path / "extended",
        cache_dir,
    )
    run_train(cfg, monkeypatch, extended)
    assert [s for s, _, _ in extended.steps] == [6, 7, 8]
    assert [f for _, f, _ in extended.steps] == [f for _, f, _ in reference.steps[5:]]


def _run_cli(*argv: str) -> subprocess.CompletedProcess:
    """``python *argv`` from the repository root; fails the test on a non-zero exit."""
    env = subprocess_env()
    proc = subprocess.run(
        [sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_cli_train_then_eval(tmp_path, cache_dir):
    args = [f"paths.output_root={tmp_path}", f"paths.cache_dir={cache_dir}", *SMALL_DATA]
    proc = _run_cli("train.py", "debug=fast", *args)
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("checkpoint: "))
    ckpt = Path(line.removeprefix("checkpoint: "))
    assert ckpt.name == "last.ckpt" and ckpt.is_file() and str(ckpt).startswith(str(tmp_path))

    # eval.py as `python eval.py ...`, in an interpreter where wandb cannot be imported
    no_wandb = (
        "import runpy, sys; sys.modules['wandb'] = None; sys.argv = sys.argv[1:]; "
        "runpy.run_path('eval.py', run_name='__main__')"
    )
    proc = _run_cli("-c", no_wandb, "eval.py", f"ckpt_path={ckpt}", *args)
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("test/loss: "))
    ppl = float(line.split("test/ppl: ")[1].split()[0])
    assert math.isfinite(ppl) and 1.0 < ppl < 300.0


def experiments() -> list[str]:
    root = CONFIG_DIR / "experiment"
    names = [p.relative_to(root).with_suffix("").as_posix() for p in sorted(root.rglob("*.yaml"))]
    # the Pile experiments need the Pile and the GPT-2 tokenizer (neither is offline here):
    # tests/data/test_lm_corpus.py runs each for one step on a generated corpus and tokenizer
    return [n for n in names if not n.startswith("pile/")]


@pytest.mark.parametrize("experiment", experiments())
def test_every_experiment_runs_under_debug_fast(experiment, tmp_path, cache_dir, monkeypatch):
    overrides = [f"experiment={experiment}", "debug=fast", "trainer.max_steps=3"]
    cfg = make_cfg("train", overrides, tmp_path, cache_dir)
    if "max_bytes" in cfg.data:  # a corpus read from disk: a small slice of it
        cfg = make_cfg("train", [*overrides, *SMALL_DATA], tmp_path, cache_dir)
    metrics, objects = run_train(cfg, monkeypatch)
    assert objects["trainer"].global_step == 3
    assert math.isfinite(metrics["train/loss"]) and math.isfinite(metrics["test/loss"])
    # validation (and a checkpoint) at step 2; last.ckpt still ends at the final step
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 3
