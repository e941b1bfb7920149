"""Several processes on CPU over gloo: DDP and FSDP through Lightning from ``train.py``'s command
line, the data sharding they rely on, resuming under DDP, ``global_batch_size``, and the smoke
mode of ``benchmarks.multi_gpu``.

The command-line runs record every training step on every rank with ``StepProbe``, a callback
given on the command line (``+callbacks.probe._target_=tests.test_distributed.StepProbe``): the
global step, the rank, a fingerprint of each sample and the rank's own loss.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.precision import FSDPPrecision
from omegaconf import OmegaConf
from torch.distributed.fsdp import ShardingStrategy
from torch.distributed.fsdp.wrap import ModuleWrapPolicy

import train as train_entry
from data.resumable import ResumableDataLoader, ResumableSampler
from data.stdlib_text import StdlibTextDataModule
from models import HyenaLM
from models.lm import HyenaBlock
from tests.helpers import ROOT, make_cfg, subprocess_env

SEQ_LEN = 64
B = 2  # sequences per rank and step on 2 ranks; the single-process reference takes 2 * B
STEPS = 8
CKPT_EVERY = 4  # validation and last.ckpt every 4 steps
KILL_AT = 6  # the killed run dies after step 6: its last.ckpt holds step 4
LOSS_RTOL = 1e-5  # one process vs two: the same math, summed in another order


# -------------------------------------------------------------------------------------------------
# Recording steps


def fingerprint(sample: torch.Tensor) -> str:
    return hashlib.blake2b(sample.cpu().numpy().tobytes(), digest_size=8).hexdigest()


class StepProbe(Callback):
    """Appends one JSON line per training batch to ``<out_dir>/rank<r>.jsonl``: the optimizer
    step the batch counts towards, the samples, the batch's mean loss. With ``kill_at``, every
    rank SIGKILLs its own process once that optimizer step is done."""

    def __init__(self, out_dir: str, kill_at: int | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.kill_at = kill_at

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        accumulate = trainer.accumulate_grad_batches
        stepped = (batch_idx + 1) % accumulate == 0  # the optimizer stepped after this batch
        step = trainer.global_step if stepped else trainer.global_step + 1
        record = {
            "step": step,
            "batch_idx": batch_idx,
            "rank": trainer.global_rank,
            "world": trainer.world_size,
            "samples": [fingerprint(row) for row in batch[0]],
            "loss": float(outputs["loss"]) * accumulate,  # Lightning divides it by accumulate
        }
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / f"rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if stepped and step == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)


def read_probe(out_dir: Path) -> dict[int, list[dict]]:
    """rank -> its records in order."""
    records = {}
    for path in sorted(out_dir.glob("rank*.jsonl")):
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        records[rows[0]["rank"]] = rows
    return records


def global_steps(records: dict[int, list[dict]]) -> dict[int, tuple[list[str], float]]:
    """Optimizer step -> (every sample of that step over all ranks and accumulated batches,
    sorted; the mean loss over them), which is what the optimizer step trained on."""
    samples, losses = defaultdict(list), defaultdict(list)
    for rows in records.values():
        for row in rows:
            samples[row["step"]] += row["samples"]
            losses[row["step"]].append(row["loss"])
    return {s: (sorted(samples[s]), sum(losses[s]) / len(losses[s])) for s in sorted(samples)}


def probe_overrides(out_dir: Path, kill_at: int | None = None) -> list[str]:
    overrides = [
        f"+callbacks.probe._target_={StepProbe.__module__}.StepProbe",
        f"+callbacks.probe.out_dir={out_dir}",
    ]
    if kill_at is not None:
        overrides.append(f"+callbacks.probe.kill_at={kill_at}")
    return overrides


# -------------------------------------------------------------------------------------------------
# Running train.py


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    """The token cache, built once here so that no two processes race to build it."""
    path = tmp_path_factory.mktemp("token-cache")
    StdlibTextDataModule(seq_len=SEQ_LEN, max_bytes=1_000_000, cache_dir=str(path)).prepare_data()
    return path


def common_overrides(cache_dir: Path, accelerator: str = "cpu") -> list[str]:
    return [
        f"model.l_max={SEQ_LEN}",
        "data.max_bytes=1000000",
        f"paths.cache_dir={cache_dir}",
        f"trainer.accelerator={accelerator}",
        f"trainer.max_steps={STEPS}",
        f"trainer.val_check_interval={CKPT_EVERY}",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "trainer.log_every_n_steps=1",
        "callbacks.rich_progress_bar=null",
        "callbacks.rich_model_summary=null",
        "+trainer.enable_progress_bar=false",
        "test=false",
        "export=false",
    ]


def run_in_process(overrides: list[str], out: Path) -> dict[int, list[dict]]:
    """train.py's ``train(cfg)`` in this process (one rank); returns the probe's records."""
    train_entry.train(make_cfg("train", [*overrides, *probe_overrides(out / "probe")], out))
    return read_probe(out / "probe")


def run_cli(overrides: list[str], out: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python train.py`` in a new session (Lightning starts the other ranks in it), killed as
    a group if it outlives ``timeout``."""
    env = subprocess_env(OMP_NUM_THREADS="1")
    command = [sys.executable, "train.py", f"hydra.run.dir={out}", *overrides]
    proc = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"train.py ran past {timeout} s:\n{stderr[-3000:]}")
    finally:
        try:  # the other ranks, should any outlive rank 0
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


def check_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stderr[-4000:]


def csv_losses(out: Path) -> dict[int, float]:
    (metrics,) = out.glob("csv/*/metrics.csv")  # one logger version: rank 0 alone writes
    rows = csv.DictReader(open(metrics))
    return {int(r["step"]) + 1: float(r["train/loss"]) for r in rows if r.get("train/loss")}


def assert_steps_match(got: dict, want: dict, steps, rtol: float) -> None:
    for s in steps:
        assert got[s][0] == want[s][0], f"step {s}: not the same samples"
        assert got[s][1] == pytest.approx(want[s][1], rel=rtol), f"step {s}"


DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", f"data.batch_size={B}"]


@pytest.fixture(scope="module")
def single_reference(tmp_path_factory, cache_dir):
    """One process, batch 2B: the reference for the two-rank runs."""
    out = tmp_path_factory.mktemp("single")
    overrides = [
        *common_overrides(cache_dir),
        f"data.batch_size={2 * B}",
        f"global_batch_size={2 * B}",
    ]
    records = run_in_process(overrides, out)
    return out, records


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, cache_dir):
    """Two ranks, B each, uninterrupted; writes the export too."""
    out = tmp_path_factory.mktemp("ddp")
    overrides = [*common_overrides(cache_dir), *DDP, f"global_batch_size={2 * B}", "export=true"]
    proc = run_cli([*overrides, *probe_overrides(out / "probe")], out)
    check_ok(proc)
    return out, proc, read_probe(out / "probe")


# -------------------------------------------------------------------------------------------------
# global_batch_size


def test_grad_accumulation_divides_or_names_all_three_numbers():
    assert train_entry.grad_accumulation(256, 8, 4) == 8
    assert train_entry.grad_accumulation(12, 3, 1) == 4
    with pytest.raises(
        ValueError, match=r"global_batch_size=100 .* data.batch_size=8 x world size 4"
    ):
        train_entry.grad_accumulation(100, 8, 4)
    with pytest.raises(ValueError, match="data.batch_size must be a positive int; got 0"):
        train_entry.grad_accumulation(8, 0, 1)


@pytest.mark.parametrize(
    "trainer, expected",
    [
        pytest.param({"accelerator": "cpu", "devices": 2}, 2, id="cpu-2"),
        pytest.param({"accelerator": "cpu", "devices": "3", "num_nodes": 2}, 6, id="cpu-3x2-nodes"),
        pytest.param({"accelerator": "cpu", "devices": "auto"}, 1, id="cpu-auto"),
        pytest.param(
            {"accelerator": "auto", "devices": "auto"},
            max(1, torch.cuda.device_count()),
            id="auto-auto",
        ),
    ],
)
def test_world_size_resolves_devices_as_lightning_does(trainer, expected):
    cfg = OmegaConf.create(trainer)
    assert train_entry.world_size(cfg) == expected


def test_global_batch_size_sets_accumulation_or_refuses_a_conflict(tmp_path, capsys):
    base = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "data.batch_size=4"]
    cfg = make_cfg("train", [*base, "global_batch_size=32"], tmp_path)
    assert train_entry.apply_global_batch_size(cfg) == 2
    assert cfg.trainer.accumulate_grad_batches == 4
    assert "global batch 32 = data.batch_size 4 x 2 process(es) x 4" in capsys.readouterr().out

    cfg = make_cfg(
        "train", [*base, "global_batch_size=32", "+trainer.accumulate_grad_batches=2"], tmp_path
    )
    with pytest.raises(ValueError, match="needs trainer.accumulate_grad_batches=4, but the config"):
        train_entry.apply_global_batch_size(cfg)
    cfg = make_cfg("train", [*base, "global_batch_size=20"], tmp_path)
    with pytest.raises(
        ValueError, match=r"global_batch_size=20 .* data.batch_size=4 x world size 2"
    ):
        train_entry.apply_global_batch_size(cfg)
    cfg = make_cfg("train", base, tmp_path)
    assert train_entry.apply_global_batch_size(cfg) is None
    assert "accumulate_grad_batches" not in cfg.trainer


def test_accumulated_batches_train_like_one_large_batch(single_reference, tmp_path, cache_dir):
    # batch B with global_batch_size 2B accumulates 2 batches per optimizer step: the same
    # samples and the same mean loss at every step as one batch of 2B
    _, reference = single_reference
    overrides = [*common_overrides(cache_dir), f"data.batch_size={B}", f"global_batch_size={2 * B}"]
    records = run_in_process(overrides, tmp_path)
    assert [r["batch_idx"] for r in records[0]] == list(range(2 * STEPS))
    assert_steps_match(
        global_steps(records), global_steps(reference), range(1, STEPS + 1), LOSS_RTOL
    )


# -------------------------------------------------------------------------------------------------
# Sharding


def loader(n: int, batch_size: int, world: int, rank: int, seed: int = 3) -> ResumableDataLoader:
    dataset = list(range(n))
    sampler = ResumableSampler(dataset, seed=seed, num_replicas=world, rank=rank)
    return ResumableDataLoader(dataset, sampler=sampler, batch_size=batch_size, drop_last=True)


@pytest.mark.parametrize("n, world, batch_size", [(101, 2, 4), (97, 3, 5), (64, 2, 8)])
def test_ranks_split_each_global_batch_and_the_epoch(n, world, batch_size):
    single = loader(n, world * batch_size, 1, 0)
    ranks = [loader(n, batch_size, world, r) for r in range(world)]
    orders = []
    for epoch in (0, 1):
        single.sampler.set_epoch(epoch)
        for r in ranks:
            r.sampler.set_epoch(epoch)
        per_rank = [[b.tolist() for b in r] for r in ranks]
        orders.append(per_rank[0])
        whole = [b.tolist() for b in single]
        assert len({len(batches) for batches in per_rank}) == 1  # ranks step together
        # step by step, the ranks' batches together are the single process's batch
        for step, batch in enumerate(whole):
            assert sorted(sum((p[step] for p in per_rank), [])) == sorted(batch)
        seen = [i for batches in per_rank for b in batches for i in b]
        assert len(seen) == len(set(seen))  # no sample twice in an epoch, over all ranks
        assert len(seen) == n - n % (world * batch_size)  # all but fewer than one global batch
    assert orders[0] != orders[1]  # a new order each epoch


def test_rank_loader_resumes_mid_epoch_and_refuses_another_world_size():
    full = [b.tolist() for b in loader(101, 4, 2, 1)]
    first = loader(101, 4, 2, 1)
    it = iter(first)
    head = [next(it).tolist() for _ in range(5)]
    state = first.state_dict()
    assert state["num_replicas"] == 2 and state["batches"] == 5
    resumed = loader(101, 4, 2, 1)
    resumed.load_state_dict(state)
    assert head + [b.tolist() for b in resumed] == full
    other = loader(101, 4, 3, 1)
    with pytest.raises(ValueError, match=r"num_replicas \(checkpoint 2, now 3\).*trainer.devices"):
        other.load_state_dict(state)


# -------------------------------------------------------------------------------------------------
# DDP from the command line


def test_ddp_matches_one_process_with_the_same_global_batch(ddp_run, single_reference):
    out, proc, records = ddp_run
    ref_out, reference = single_reference
    assert sorted(records) == [0, 1] and all(r[0]["world"] == 2 for r in records.values())
    assert "distributed_backend=gloo" in proc.stdout + proc.stderr
    assert [r["step"] for r in records[1]] == list(range(1, STEPS + 1))
    for rank in (0, 1):
        assert all(len(r["samples"]) == B for r in records[rank])
    # per step: rank 0 and rank 1 together trained on the reference's batch, to the same loss
    steps = global_steps(records)
    want = global_steps(reference)
    assert_steps_match(steps, want, range(1, STEPS + 1), LOSS_RTOL)
    assert csv_losses(ref_out) == pytest.approx({s: loss for s, (_, loss) in want.items()})

    # rank 0 alone prints, logs, checkpoints and exports
    assert proc.stdout.count("checkpoint: ") == 1 and proc.stdout.count("exported model: ") == 1
    assert proc.stdout.count("global batch 4 = data.batch_size 2 x 2 process(es) x 1") == 1
    assert len(list(out.glob("csv/*"))) == 1
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == STEPS
    loader_state = ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    assert loader_state["batches"] == STEPS and loader_state["num_replicas"] == 2
    exported = HyenaLM.from_pretrained(out / "export").state_dict()
    for key, value in exported.items():
        assert torch.equal(value, ckpt["state_dict"][f"net.{key}"]), key


def test_ddp_killed_run_resumes_at_the_same_step_and_data(ddp_run, tmp_path, cache_dir):
    _, _, uninterrupted = ddp_run
    overrides = [*common_overrides(cache_dir), *DDP, f"global_batch_size={2 * B}"]
    killed = tmp_path / "killed"
    proc = run_cli([*overrides, *probe_overrides(killed / "probe", kill_at=KILL_AT)], killed)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    last = killed / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == CKPT_EVERY
    killed_records = read_probe(killed / "probe")
    assert [r["step"] for r in killed_records[0]] == list(range(1, KILL_AT + 1))

    resumed = tmp_path / "resumed"
    proc = run_cli([*overrides, *probe_overrides(resumed / "probe"), f"ckpt_path={last}"], resumed)
    check_ok(proc)
    records = read_probe(resumed / "probe")
    for rank in (0, 1):
        rows, ref_rows = records[rank], uninterrupted[rank][CKPT_EVERY:]
        assert [r["step"] for r in rows] == list(range(CKPT_EVERY + 1, STEPS + 1))
        assert [r["samples"] for r in rows] == [r["samples"] for r in ref_rows]  # same data
        for got, want in zip(rows, ref_rows, strict=True):  # same weights, optimizer, schedule
            assert got["loss"] == pytest.approx(want["loss"], rel=1e-6)
    final = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)
    assert final["global_step"] == STEPS


# -------------------------------------------------------------------------------------------------
# FSDP


def test_fsdp_configs_build_the_intended_strategy(tmp_path):
    cfg = make_cfg("train", ["trainer=fsdp"], tmp_path)
    mixed = FSDPPrecision(cfg.trainer.precision).mixed_precision_config
    assert (mixed.param_dtype, mixed.reduce_dtype) == (torch.bfloat16, torch.bfloat16)
    strategy = instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, train_entry.FSDPStrategy)
    assert strategy.sharding_strategy == ShardingStrategy.FULL_SHARD
    assert strategy._state_dict_type == "full"  # last.ckpt: one file, loadable without FSDP
    policy = strategy.kwargs["auto_wrap_policy"]
    assert isinstance(policy, ModuleWrapPolicy) and policy._module_classes == {HyenaBlock}

    cfg = make_cfg("train", ["trainer=fsdp_cpu"], tmp_path)
    trainer = instantiate(cfg.trainer)
    assert isinstance(trainer.strategy, train_entry.FSDPStrategy)
    assert trainer.world_size == 2 and trainer.strategy.root_device.type == "cpu"
    assert trainer.precision == "32-true"


@pytest.fixture(scope="module")
def single_reference_short(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("single-short")
    overrides = [
        *common_overrides(cache_dir),
        f"data.batch_size={2 * B}",
        f"trainer.max_steps={CKPT_EVERY}",
    ]
    return run_in_process(overrides, out)


def test_fsdp_on_cpu_trains_like_one_process_checkpoints_exports_and_tests(
    single_reference_short, tmp_path, cache_dir
):
    # gradient clipping at the default 1.0: the task clips through FSDP's clip_grad_norm_
    overrides = [
        *common_overrides(cache_dir),
        "trainer=fsdp_cpu",
        f"data.batch_size={B}",
        f"trainer.max_steps={CKPT_EVERY}",
        "export=true",
        "test=true",
    ]
    proc = run_cli([*overrides, *probe_overrides(tmp_path / "probe")], tmp_path)
    check_ok(proc)
    records = read_probe(tmp_path / "probe")
    assert sorted(records) == [0, 1]
    steps, want = global_steps(records), global_steps(single_reference_short)
    assert_steps_match(steps, want, range(1, CKPT_EVERY + 1), LOSS_RTOL)

    # last.ckpt holds the full (unsharded) weights: loadable without FSDP; the export is them
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == CKPT_EVERY
    net = HyenaLM.from_name("hyena-tiny", l_max=SEQ_LEN)
    weights = {k.removeprefix("net."): v for k, v in ckpt["state_dict"].items()}
    net.load_state_dict(weights)
    exported = HyenaLM.from_pretrained(tmp_path / "export").state_dict()
    assert exported.keys() == net.state_dict().keys()
    for key, value in exported.items():
        assert torch.equal(value, weights[key]), key
    assert "test/loss" in proc.stdout  # trainer.test after fit on the same FSDP wrapper
    assert proc.stdout.count("exported model: ") == 1


# -------------------------------------------------------------------------------------------------
# The multi-GPU benchmark, on CPU


def run_benchmark(out: Path, *args: str) -> dict:
    env = subprocess_env(OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.multi_gpu", *args, "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=500,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    return json.loads(out.read_text())


@pytest.mark.slow  # six Python processes that each import Lightning: ~30 s of CPU
def test_multi_gpu_benchmark_smoke(tmp_path):
    out = tmp_path / "smoke.json"
    report = run_benchmark(out, "--smoke")
    assert report["smoke"] is True
    settings = {r["setting"]: r for r in report["settings"]}
    assert sorted(settings) == ["ddp", "fsdp", "single"]
    assert [settings[s]["devices"] for s in ("single", "ddp", "fsdp")] == [1, 2, 2]
    assert settings["fsdp"]["strategy"] == "FSDPStrategy"
    single = settings["single"]["tokens_per_s_per_device"]
    for r in settings.values():
        assert r["tokens_per_s_per_device"] > 0 and r["seconds"] > 0
        assert r["tokens_per_s"] == pytest.approx(r["tokens_per_s_per_device"] * r["devices"])
        assert r["scaling_efficiency"] == pytest.approx(r["tokens_per_s_per_device"] / single)
        assert len(r["peak_memory_bytes"]) == r["devices"] and min(r["peak_memory_bytes"]) > 0
    table = out.with_suffix(".md").read_text()
    assert "| ddp | DDPStrategy | 2 |" in table and "scaling efficiency" in table


# -------------------------------------------------------------------------------------------------
# On GPUs (NCCL): run with `python -m pytest -q -m gpu tests/test_distributed.py` on 2+ GPUs

TWO_GPUS = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")


@pytest.mark.gpu
@TWO_GPUS
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_gpus_train_like_one_checkpoint_export_and_test(strategy, tmp_path, cache_dir):
    common = [
        *common_overrides(cache_dir, accelerator="gpu"),
        f"trainer.max_steps={CKPT_EVERY}",
        "trainer.precision=bf16-mixed",
    ]
    single = [*common, "trainer=gpu", f"data.batch_size={2 * B}"]
    reference = global_steps(run_in_process(single, tmp_path / "single"))
    out = tmp_path / strategy
    overrides = [
        *common,
        f"trainer={strategy}",
        "trainer.devices=2",
        f"data.batch_size={B}",
        f"global_batch_size={2 * B}",
        "export=true",
        "test=true",
    ]
    proc = run_cli([*overrides, *probe_overrides(out / "probe")], out)
    check_ok(proc)
    assert "distributed_backend=nccl" in proc.stdout + proc.stderr
    # bf16: FSDP computes with bf16 weights where the reference autocasts fp32 weights
    steps = global_steps(read_probe(out / "probe"))
    assert_steps_match(steps, reference, range(1, CKPT_EVERY + 1), 2e-2)
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    exported = HyenaLM.from_pretrained(out / "export").state_dict()
    for key, value in exported.items():
        assert torch.equal(value, ckpt["state_dict"][f"net.{key}"].float()), key
    assert "test/loss" in proc.stdout


@pytest.mark.gpu
@TWO_GPUS
def test_multi_gpu_benchmark_on_gpus_with_a_tiny_model(tmp_path):
    out = tmp_path / "tiny.json"
    args = ["--model", "hyena-tiny", "--seq-len", "256", "--steps", "3", "--warmup", "1"]
    report = run_benchmark(out, *args, "--devices", "2")
    settings = {r["setting"]: r for r in report["settings"]}
    assert [settings[s]["devices"] for s in ("single", "ddp", "fsdp")] == [1, 2, 2]
    for r in settings.values():
        assert r["peak_memory_kind"] == "cuda_max_memory_allocated"
        assert r["tokens_per_s_per_device"] > 0 and min(r["peak_memory_bytes"]) > 0
