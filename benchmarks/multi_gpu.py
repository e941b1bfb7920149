"""Multi-GPU scaling of Hyena LM training: tokens/s per GPU, scaling efficiency, peak memory.

    python -m benchmarks.multi_gpu --out benchmarks/results/multi-gpu-<kind>-<date>.json
    python -m benchmarks.multi_gpu --smoke --out /tmp/multi-gpu-smoke.json  # CPU, gloo

Trains ``hyena-s`` at L = 4096 (``model=hyena-s-4k``, bf16-mixed) on synthetic tokens for a
fixed number of steps, once per setting: one GPU (``trainer=gpu``), DDP over the N GPUs of the
machine (``trainer=ddp``) and FSDP over them (``trainer=fsdp``). The trainers come from the same
Hydra configs as ``train.py``. Each setting runs in a process of its own (``--worker``), and
Lightning launches its other ranks, as it does for ``train.py``.

- Throughput: every rank synchronizes its GPU and meets the others at a barrier before the first
  timed step and after the last; warmup steps are not timed. tokens/s per GPU = micro-batch x
  L x timed steps / seconds (every rank runs the same micro-batch).
- Scaling efficiency: tokens/s per GPU with N GPUs over tokens/s on one GPU, at the same
  micro-batch per GPU (weak scaling; 1.0 = perfect).
- Peak memory per GPU: ``torch.cuda.max_memory_allocated`` on each rank over the whole run,
  gathered to rank 0 (on CPU, ``--smoke``: each process's peak resident set size instead).
- Gradient clipping at 1.0 as in training (``--gradient-clip-val``; under FSDP the task clips
  through FSDP's ``clip_grad_norm_``).

``--smoke``: ``hyena-tiny`` at L = 64 on two CPU processes over gloo (``trainer=cpu``,
``trainer=ddp trainer.accelerator=cpu``, ``trainer=fsdp_cpu``), a few steps; exercises the
harness, its numbers mean nothing. Writes the JSON and a markdown table next to it (``.md``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs"
SETTINGS = ("single", "ddp", "fsdp")


# -------------------------------------------------------------------------------------------------
# Worker: one setting, in its own processes


class SyntheticTokens(torch.utils.data.Dataset):
    """Random token windows (inputs, targets) of ``seq_len``, the same for a given index."""

    def __init__(self, num_samples: int, seq_len: int, vocab_size: int) -> None:
        self.num_samples, self.seq_len, self.vocab_size = num_samples, seq_len, vocab_size

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(index)
        tokens = torch.randint(0, self.vocab_size, (self.seq_len + 1,), generator=generator)
        return tokens[:-1], tokens[1:]


def _throughput_callback(warmup: int, steps: int):
    from lightning.pytorch.callbacks import Callback

    class Throughput(Callback):
        """Wall time of the timed steps, between barriers; peak memory; gathered on rank 0."""

        def __init__(self) -> None:
            self.seconds: float | None = None
            self.peak_bytes: list[int] = []
            self.last_loss: float | None = None
            self._start = 0.0

        def _sync(self, trainer) -> None:
            if trainer.strategy.root_device.type == "cuda":
                torch.cuda.synchronize(trainer.strategy.root_device)
            trainer.strategy.barrier()

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if batch_idx == warmup:
                self._sync(trainer)
                self._start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if batch_idx == warmup + steps - 1:
                self._sync(trainer)
                self.seconds = time.perf_counter() - self._start
                self.last_loss = float(outputs["loss"])

        def on_train_end(self, trainer, pl_module) -> None:
            device = trainer.strategy.root_device
            if device.type == "cuda":
                peak = torch.cuda.max_memory_allocated(device)
            else:  # ru_maxrss is in KiB on Linux
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            gathered = trainer.strategy.all_gather(torch.tensor([peak], device=device))
            self.peak_bytes = [int(x) for x in gathered.flatten().tolist()]

    return Throughput()


def setting_overrides(setting: str, args: argparse.Namespace) -> list[str]:
    """Hydra overrides of ``configs/train.yaml`` for one setting."""
    common = [f"model={args.model}", f"model.l_max={args.seq_len}", "paths.output_dir=."]
    if args.smoke:
        trainer = {
            "single": ["trainer=cpu"],
            "ddp": ["trainer=ddp", "trainer.accelerator=cpu", f"trainer.devices={args.devices}"],
            "fsdp": ["trainer=fsdp_cpu", f"trainer.devices={args.devices}"],
        }[setting]
        return common + trainer + ["trainer.precision=32-true"]
    trainer = {
        "single": ["trainer=gpu"],
        "ddp": ["trainer=ddp", "trainer.accelerator=gpu", f"trainer.devices={args.devices}"],
        "fsdp": ["trainer=fsdp", f"trainer.devices={args.devices}"],
    }[setting]
    return common + trainer + [f"trainer.precision={args.precision}"]


def run_worker(setting: str, args: argparse.Namespace) -> None:
    import hydra
    from hydra import compose, initialize_config_dir
    from torch.utils.data import DataLoader

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=setting_overrides(setting, args))
    torch.manual_seed(0)
    net = hydra.utils.instantiate(cfg.model)
    parameters = sum(p.numel() for p in net.parameters())  # before FSDP shards them
    task = hydra.utils.instantiate(cfg.task, net=net)
    timer = _throughput_callback(args.warmup, args.steps)
    total_steps = args.warmup + args.steps
    trainer = hydra.utils.instantiate(
        cfg.trainer,
        max_steps=total_steps,
        max_epochs=1,
        limit_train_batches=total_steps,
        limit_val_batches=0,
        val_check_interval=None,
        check_val_every_n_epoch=1,
        gradient_clip_val=args.gradient_clip_val,
        logger=False,
        callbacks=[timer],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=args.scratch,
    )
    world = trainer.world_size
    vocab = net.config.vocab_size
    data = SyntheticTokens(total_steps * args.batch_size * world, args.seq_len, vocab)
    on_gpu = trainer.strategy.root_device.type == "cuda"
    loader = DataLoader(data, batch_size=args.batch_size, drop_last=True, pin_memory=on_gpu)
    trainer.fit(task, train_dataloaders=loader)
    if not trainer.is_global_zero:
        return
    if timer.seconds is None:
        raise RuntimeError(f"the {setting} run ended before its last timed step")
    tokens = args.batch_size * args.seq_len * args.steps  # per rank
    result = {
        "setting": setting,
        "strategy": type(trainer.strategy).__name__,
        "devices": world,
        "device_name": torch.cuda.get_device_name(0) if on_gpu else "cpu",
        "precision": str(trainer.precision),
        "model": args.model,
        "parameters": parameters,
        "seq_len": args.seq_len,
        "micro_batch_per_device": args.batch_size,
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "seconds": timer.seconds,
        "seconds_per_step": timer.seconds / args.steps,
        "tokens_per_s_per_device": tokens / timer.seconds,
        "tokens_per_s": tokens * world / timer.seconds,
        "peak_memory_bytes": timer.peak_bytes,
        "peak_memory_kind": "cuda_max_memory_allocated" if on_gpu else "cpu_max_rss",
        "last_loss": timer.last_loss,
    }
    Path(args.result).write_text(json.dumps(result, indent=2) + "\n")


# -------------------------------------------------------------------------------------------------
# Driver: every setting, then the report


def worker_command(setting: str, args: argparse.Namespace, result: Path, scratch: str) -> list:
    command = [sys.executable, "-m", "benchmarks.multi_gpu", "--worker", setting]
    command += ["--result", str(result), "--scratch", scratch]
    command += ["--model", args.model, "--seq-len", str(args.seq_len)]
    command += ["--batch-size", str(args.batch_size), "--devices", str(args.devices)]
    command += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    command += ["--precision", args.precision]
    if args.gradient_clip_val is not None:
        command += ["--gradient-clip-val", str(args.gradient_clip_val)]
    if args.smoke:
        command.append("--smoke")
    return command


def run_settings(args: argparse.Namespace) -> list[dict[str, Any]]:
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    }
    if args.smoke:
        env.setdefault("OMP_NUM_THREADS", "1")  # two processes on a small CPU machine
    results = []
    with tempfile.TemporaryDirectory(prefix="multi-gpu-") as scratch:
        for setting in args.settings:
            result = Path(scratch) / f"{setting}.json"
            command = worker_command(setting, args, result, scratch)
            print(f"[{setting}] {' '.join(command[1:])}", flush=True)
            started = time.perf_counter()
            try:
                proc = subprocess.run(
                    command,
                    cwd=ROOT,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=args.timeout,
                )
                failed = proc.returncode != 0 or not result.is_file()
                log = proc.stdout[-4000:] + proc.stderr[-8000:]
            except subprocess.TimeoutExpired as err:
                failed, log = True, f"timed out after {args.timeout} s\n{err.stderr or ''}"[-8000:]
            wall = time.perf_counter() - started
            if failed:
                print(f"[{setting}] FAILED after {wall:.0f} s\n{log}", flush=True)
                results.append({"setting": setting, "error": log})
                continue
            entry = json.loads(result.read_text()) | {"wall_seconds_with_startup": wall}
            results.append(entry)
            print(
                f"[{setting}] {entry['tokens_per_s_per_device']:.0f} tokens/s per device "
                f"({wall:.0f} s with startup)",
                flush=True,
            )
    baseline = next((r for r in results if r["setting"] == "single" and "error" not in r), None)
    for r in results:
        if "error" not in r and baseline is not None:
            r["scaling_efficiency"] = (
                r["tokens_per_s_per_device"] / baseline["tokens_per_s_per_device"]
            )
    return results


def markdown_table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| setting | strategy | devices | micro-batch | s/step | tokens/s per device "
        "| tokens/s | scaling efficiency | peak memory per device (GiB) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['setting']} | failed (see JSON) | | | | | | | |")
            continue
        memory = ", ".join(f"{b / 2**30:.2f}" for b in r["peak_memory_bytes"])
        efficiency = r.get("scaling_efficiency")
        lines.append(
            f"| {r['setting']} | {r['strategy']} | {r['devices']} "
            f"| {r['micro_batch_per_device']} | {r['seconds_per_step']:.3f} "
            f"| {r['tokens_per_s_per_device']:,.0f} | {r['tokens_per_s']:,.0f} "
            f"| {'' if efficiency is None else f'{efficiency:.2f}'} | {memory} |"
        )
    return "\n".join(lines) + "\n"


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        )
    except OSError:
        return None
    return out.stdout.strip() or None


def default_out(results: list[dict[str, Any]], smoke: bool) -> Path:
    date = datetime.date.today().isoformat()
    if smoke:  # not a result to commit
        return Path(tempfile.gettempdir()) / f"multi-gpu-smoke-{date}.json"
    ok = [r for r in results if "error" not in r]
    name = ok[0]["device_name"].split()[-1].lower() if ok else "gpu"
    count = max((r["devices"] for r in ok), default=0)
    return ROOT / "benchmarks" / "results" / f"multi-gpu-{count}x{name}-{date}.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, help="JSON path (a .md table is written next to it)")
    parser.add_argument("--smoke", action="store_true", help="CPU: 2 gloo processes, hyena-tiny")
    parser.add_argument("--settings", default=",".join(SETTINGS), help="of single,ddp,fsdp")
    parser.add_argument("--model", help="a configs/model name (default hyena-s-4k)")
    parser.add_argument("--seq-len", type=int, help="tokens per sequence (default 4096)")
    parser.add_argument("--batch-size", type=int, help="micro-batch per device (default 4)")
    parser.add_argument("--devices", type=int, help="devices for DDP/FSDP (default: all GPUs)")
    parser.add_argument("--steps", type=int, help="timed steps (default 20)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default 5)")
    parser.add_argument("--precision", default="bf16-mixed", help="GPU precision")
    parser.add_argument("--gradient-clip-val", type=float, default=1.0)
    parser.add_argument("--timeout", type=int, default=600, help="seconds per setting")
    parser.add_argument("--worker", choices=SETTINGS, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--scratch", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    defaults = dict(model="hyena-s-4k", seq_len=4096, batch_size=4, steps=20, warmup=5)
    if args.smoke:
        defaults = dict(model="hyena-tiny", seq_len=64, batch_size=2, steps=3, warmup=1, devices=2)
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.devices is None:
        args.devices = torch.cuda.device_count()
    args.settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    unknown = sorted(set(args.settings) - set(SETTINGS))
    if unknown:
        parser.error(f"--settings: unknown {unknown}; choose from {list(SETTINGS)}")
    for name in ("seq_len", "batch_size", "steps", "devices"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1; got {getattr(args, name)}")
    if args.warmup < 0:
        parser.error(f"--warmup must be >= 0; got {args.warmup}")
    if not args.smoke and args.worker is None and args.devices < 2:
        parser.error(f"needs 2 or more GPUs for DDP/FSDP (found {args.devices}); or use --smoke")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        run_worker(args.worker, args)
        return 0
    results = run_settings(args)
    out = args.out or default_out(results, args.smoke)
    report = {
        "benchmark": "multi_gpu",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(
            [Path(sys.executable).name, "-m", "benchmarks.multi_gpu", *sys.argv[1:]]
        ),
        "git_commit": git_commit(),
        "smoke": args.smoke,
        "torch": torch.__version__,
        "lightning": __import__("lightning").__version__,
        "settings": results,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    table = markdown_table(results)
    out.with_suffix(".md").write_text(f"# {out.stem}\n\n`{report['command']}`\n\n{table}")
    print(table)
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
