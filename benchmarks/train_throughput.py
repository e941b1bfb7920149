"""Training throughput: tokens/s and peak memory of hyena-s (triton and torch fftconv backends)
and of gpt-s, a GPT of the same size with PyTorch SDPA (flash) attention, per sequence length.

    python -m benchmarks.train_throughput --out benchmarks/results/<name>.json
        [--lengths 2048 4096 ...] [--models hyena-triton hyena-torch gpt-sdpa]
        [--tokens-per-step 65536] [--warmup 3 --steps 10] [--compile [MODE]]
        [--loss fused fused-torch unfused] [--filter-len 2048]
    python -m benchmarks.train_throughput --smoke --out <file>   # tiny models, CPU or GPU

Each (model, length, loss) is one real training step as ``train.py`` runs it with
``trainer=gpu`` (Lightning's ``bf16-mixed``: fp32 weights, the forward and the loss under
``torch.autocast`` bf16, the backward outside it): the model's fused loss ``model.loss`` (head +
cross-entropy without logits, as ``LanguageModelTask`` trains), backward, gradient clipping at
1.0 (``configs/trainer/default.yaml``), AdamW over ``models.tasks.param_groups``
(``configs/task/lm.yaml``'s settings, PyTorch's default foreach implementation), ``zero_grad``.
A fixed number of tokens per step: batch = tokens / L (at least 1). Times are CUDA events
around each step after the warm-up steps; the reported time is the median over the timed steps
(mean and every step are in the JSON). Before the timed steps, one forward + backward checks
that every trainable parameter gets a nonzero gradient: a row that fails is timed but marked
``wrong-gradients``, left out of the ratios and targets, and the exit status is 1 (a compiled
step once passed as faster while it skipped the Hyena mixers' gradients). Peak memory is
``torch.cuda.max_memory_allocated`` from just before the model is built to the last step:
weights, gradients, optimizer state and activations. An out-of-memory configuration is recorded
as such and the sweep goes on. The GPT runs with SDPA restricted to the flash kernel on CUDA:
it fails (recorded as an error) rather than silently timing a slower kernel.

``--loss`` picks the loss path, several at once for a comparison: ``fused`` (the default, what
training runs: ``linear_cross_entropy`` with backend "auto", i.e. liger-kernel on CUDA),
``fused-torch`` (the chunked PyTorch backend of the same function) and ``unfused`` (the logits
[B, L, V], cast to fp32, ``F.cross_entropy``: the path before the fused loss). The target
ratios are computed on the first one named.

Prints a markdown table with the ratios the targets are about (hyena-triton / hyena-torch and
hyena-triton / gpt-sdpa tokens/s per length) and writes JSON after every configuration.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import gc
import json
import math
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from benchmarks.common import fmt
from kernels.fftconv.interface import resolve_backend
from models.gpt import GPTLM
from models.lm import HyenaLM
from models.tasks import COMPILE_MODES, GRAPH_MODES, param_groups

LENGTHS = (2048, 4096, 8192, 16384, 32768)
SMOKE_LENGTHS = (64, 128)
TOKENS_PER_STEP = 65536
SMOKE_TOKENS_PER_STEP = 128
WARMUP, STEPS = 3, 10
SMOKE_WARMUP, SMOKE_STEPS = 1, 2
# configs/task/lm.yaml's AdamW and configs/trainer/default.yaml's clipping
ADAMW = {"lr": 3e-3, "betas": (0.9, 0.98), "weight_decay": 0.1}
GRAD_CLIP = 1.0
GIB = 2**30
# loss paths: name -> linear_cross_entropy backend, or None for the logits + F.cross_entropy path
LOSSES: dict[str, str | None] = {"fused": "auto", "fused-torch": "torch", "unfused": None}
# row states that carry timings: "wrong-gradients" is timed but kept out of ratios and targets
TIMED = ("ok", "wrong-gradients")


@dataclass(frozen=True)
class ModelSpec:
    family: str  # "hyena" or "gpt"
    preset: str  # full-size preset
    smoke_preset: str  # the tiny twin for --smoke
    overrides: dict[str, Any]

    def build(self, smoke: bool, seq_len: int, filter_len: int | None = None) -> nn.Module:
        preset = self.smoke_preset if smoke else self.preset
        if self.family == "hyena":
            # a partial filter (filter_len < seq_len) takes the blocked plan where it pays
            taps = {"filter_len": min(filter_len, seq_len)} if filter_len else {}
            return HyenaLM.from_name(preset, l_max=seq_len, **self.overrides, **taps)
        return GPTLM.from_name(preset, l_max=seq_len, **self.overrides)


MODELS: dict[str, ModelSpec] = {
    "hyena-triton": ModelSpec("hyena", "hyena-s", "hyena-tiny", {"fftconv_backend": "triton"}),
    "hyena-torch": ModelSpec("hyena", "hyena-s", "hyena-tiny", {"fftconv_backend": "torch"}),
    "gpt-sdpa": ModelSpec("gpt", "gpt-s", "gpt-tiny", {}),
}
# (name, numerator model, denominator model, length, threshold): the targets
TARGETS = (
    ("Hyena triton >= 1.7x Hyena torch at 4K", "hyena-triton", "hyena-torch", 4096, 1.7),
    ("Hyena >= 1.5x the Transformer at 16K", "hyena-triton", "gpt-sdpa", 16384, 1.5),
)


def unusable_reason(name: str, device: torch.device) -> str | None:
    """Why ``name`` cannot run on ``device`` (the triton backend off CUDA without the
    interpreter), or None."""
    backend = MODELS[name].overrides.get("fftconv_backend")
    if backend is None:
        return None
    try:
        resolve_backend(backend, device)
    except ValueError as e:
        return str(e)
    return None


def sdpa_context(name: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The GPT on CUDA gets the flash kernel only; everything else runs as it would."""
    if MODELS[name].family != "gpt" or device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION])


class StepTimer:
    """Per-step milliseconds: CUDA events on the GPU (no host sync inside the timed steps),
    wall clock on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._marks: list[Any] = []

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        if self.cuda:
            start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
            start.record()
            yield
            end.record()
            self._marks.append((start, end))
        else:
            t0 = time.perf_counter()
            yield
            self._marks.append(time.perf_counter() - t0)

    def ms(self) -> list[float]:
        if self.cuda:
            torch.cuda.synchronize()
            return [s.elapsed_time(e) for s, e in self._marks]
        return [1e3 * t for t in self._marks]


def make_step(
    model: nn.Module, device: torch.device, loss: str = "fused", compile: str | None = None
) -> Callable[[Tensor, Tensor], Tensor]:
    """One training step on (inputs, targets) [B, L]; returns the loss (not synced).

    ``loss`` is a ``LOSSES`` key: the model's fused ``loss`` method (as training runs it) or the
    unfused logits path. ``compile`` (a ``torch.compile`` mode, or None for eager) compiles the
    model's trunk (``model.hidden``: embedding, blocks, final norm) for the fused loss, whose
    liger kernels stay eager (dynamo cannot trace them), or the model's whole forward for the
    unfused path. In the modes that replay CUDA graphs (``models.tasks.GRAPH_MODES``:
    ``"reduce-overhead"``, ``"max-autotune"``) the compiled part replays as CUDA graphs (its
    forward and its backward), so its host work per step is one graph launch each way."""
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {list(LOSSES)}; got {loss!r}")
    optimizer = torch.optim.AdamW(param_groups(model), **ADAMW)
    backend = LOSSES[loss]
    if backend is None:
        forward = torch.compile(model, mode=compile) if compile else model

        def loss_of(inputs: Tensor, targets: Tensor) -> Tensor:
            logits = forward(inputs)  # [B, L, V]
            return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())

    else:
        if compile:  # an instance attribute: model.loss calls the compiled trunk
            model.hidden = torch.compile(model.hidden, mode=compile)
        loss_of = functools.partial(model.loss, reduction="mean", backend=backend)

    graphs = compile in GRAPH_MODES

    def forward_backward(inputs: Tensor, targets: Tensor) -> Tensor:
        if graphs:  # a new iteration: the graphs may reuse the last step's output memory
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = loss_of(inputs, targets)
        loss.backward()
        return loss.detach()

    def step(inputs: Tensor, targets: Tensor) -> Tensor:
        loss = forward_backward(inputs, targets)
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    def dead_gradients(inputs: Tensor, targets: Tensor) -> list[str]:
        """The trainable parameters whose gradient from one forward + backward (no update) is
        missing or all zero: a step that computes those is not the training step it claims
        to be, however fast (torch.compile of hyena-s's trunk on CUDA: benchmarks/NOTES.md,
        training step v5)."""
        forward_backward(inputs, targets)
        dead = [
            n
            for n, p in model.named_parameters()
            if p.requires_grad and (p.grad is None or not bool(p.grad.any()))
        ]
        optimizer.zero_grad(set_to_none=True)
        return dead

    step.dead_gradients = dead_gradients  # type: ignore[attr-defined]
    return step


def measure(
    name: str,
    seq_len: int,
    batch: int,
    args: argparse.Namespace,
    device: torch.device,
    row: dict[str, Any],
) -> None:
    """Builds the model, runs the warm-up and timed steps with the loss path ``row["loss"]``;
    fills ``row`` as it goes (so that an out-of-memory error still leaves what was known)."""
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with torch.device(device):
        model = MODELS[name].build(args.smoke, seq_len, args.filter_len)
    row["params"] = sum(p.numel() for p in model.parameters())
    row["preset"] = model.config.name
    vocab = model.config.vocab_size
    model.train()
    step = make_step(model, device, row.get("loss", "fused"), compile=args.compile)
    tokens = torch.randint(0, vocab, (batch, seq_len + 1), device=device)
    inputs, targets = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
    row["build_s"] = time.perf_counter() - t0

    losses = []
    with sdpa_context(name, device):
        for i in range(args.warmup):
            t0 = time.perf_counter()
            losses.append(step(inputs, targets))
            if i == 0:  # the first step carries Triton JIT and torch.compile time
                if device.type == "cuda":
                    torch.cuda.synchronize()
                row["first_step_s"] = time.perf_counter() - t0
        # checked before timing: a step that leaves a parameter without gradient is refused
        dead = step.dead_gradients(inputs, targets)
        row["dead_gradients"] = dead
        timer = StepTimer(device)
        for _ in range(args.steps):
            with timer.step():
                losses.append(step(inputs, targets))
        step_ms = timer.ms()
    row["step_ms"] = step_ms
    row["ms_per_step"] = statistics.median(step_ms)
    row["ms_mean"] = statistics.fmean(step_ms)
    row["tokens_per_s"] = batch * seq_len / (row["ms_per_step"] * 1e-3)
    row["losses"] = [float(x) for x in losses]
    if device.type == "cuda":
        row["peak_gib"] = torch.cuda.max_memory_allocated(device) / GIB
    if not all(math.isfinite(x) for x in row["losses"]):
        raise FloatingPointError(f"non-finite loss in {name} at L={seq_len}: {row['losses']}")
    # timed anyway (what it costs is worth knowing), but kept out of the ratios and targets
    row["status"] = "wrong-gradients" if dead else "ok"


def run_config(
    name: str, seq_len: int, args: argparse.Namespace, device: torch.device, loss: str = "fused"
) -> dict[str, Any]:
    batch = max(1, args.tokens_per_step // seq_len)
    row: dict[str, Any] = {
        "model": name,
        "L": seq_len,
        "loss": loss,
        "batch": batch,
        "tokens_per_step": batch * seq_len,
        "status": "running",
    }
    reason = unusable_reason(name, device)
    if reason is not None:
        row |= {"status": "skipped", "error": reason}
        return row
    if args.compile:  # a fresh model per config: drop the last one's graphs (and cache slots)
        torch.compiler.reset()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        row["allocated_before_gib"] = torch.cuda.memory_allocated(device) / GIB
    try:
        measure(name, seq_len, batch, args, device, row)
    except torch.cuda.OutOfMemoryError as e:
        row |= {"status": "oom", "error": str(e).splitlines()[0]}
    except Exception as e:
        # one broken configuration must not cost the rest of the sweep; the exit status says it
        traceback.print_exc()
        row |= {"status": "error", "error": f"{type(e).__name__}: {e}"[:2000]}
    finally:
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def environment(device: torch.device, args: argparse.Namespace, argv: list[str]) -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    meta: dict[str, Any] = {
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton_version,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python -m benchmarks.train_throughput", *argv]),
        "smoke": args.smoke,
        "compile": args.compile,
        "filter_len": args.filter_len,
        "autocast_dtype": "bf16",
        "tokens_per_step": args.tokens_per_step,
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "timing": "median over the timed steps of the ms per training step ("
        + ("CUDA events)" if device.type == "cuda" else "wall clock)"),
        "step": "autocast forward + loss, backward, clip_grad_norm 1.0, AdamW, zero_grad",
        "losses": list(args.loss),
        "optimizer": {"name": "AdamW", **ADAMW, "betas": list(ADAMW["betas"])},
        "gpt_sdpa_backend": "flash only" if device.type == "cuda" else "default",
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        meta["gpu_memory_gib"] = props.total_memory / GIB
        meta["gpu_capability"] = f"{props.major}.{props.minor}"
        meta["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
    return meta


def primary_loss(rows: list[dict]) -> str:
    """The loss path the target ratios are computed on: the first one measured."""
    return rows[0].get("loss", "fused") if rows else "fused"


def find_row(rows: list[dict], model: str, seq_len: int, loss: str) -> dict | None:
    return next(
        (
            r
            for r in rows
            if r["model"] == model and r["L"] == seq_len and r.get("loss", "fused") == loss
        ),
        None,
    )


def tokens_per_s(rows: list[dict], model: str, seq_len: int, loss: str) -> float | None:
    r = find_row(rows, model, seq_len, loss)
    return r["tokens_per_s"] if r is not None and r.get("status") == "ok" else None


def ratio(
    rows: list[dict], num: str, den: str, seq_len: int, loss: str | None = None
) -> float | None:
    loss = primary_loss(rows) if loss is None else loss
    a, b = tokens_per_s(rows, num, seq_len, loss), tokens_per_s(rows, den, seq_len, loss)
    return a / b if a and b else None


def targets(rows: list[dict]) -> list[dict]:
    out = []
    for text, num, den, seq_len, threshold in TARGETS:
        r = ratio(rows, num, den, seq_len)
        out.append(
            {
                "target": text,
                "numerator": num,
                "denominator": den,
                "L": seq_len,
                "loss": primary_loss(rows),
                "threshold": threshold,
                "ratio": r,
                "met": None if r is None else r >= threshold,
            }
        )
    return out


def cell(r: dict | None, key: str, spec: str) -> str:
    if r is None:
        return "-"
    return fmt(r.get(key), spec) if r.get("status") == "ok" else r["status"]


def loss_table(
    rows: list[dict], names: list[str], lengths: list[int], losses: list[str]
) -> list[str]:
    """Per model and length: tokens/s and peak memory of each loss path, and the speed of the
    first path relative to each other one."""
    first, others = losses[0], losses[1:]
    lines = [
        "",
        "| model | L | "
        + " | ".join(f"{x} tokens/s" for x in losses)
        + " | "
        + " | ".join(f"{x} peak GiB" for x in losses)
        + " | "
        + " | ".join(f"{first} / {x}" for x in others)
        + " |",
        "| --- | ---: |" + " ---: |" * (2 * len(losses) + len(others)),
    ]
    for n in names:
        for seq_len in lengths:
            found = [find_row(rows, n, seq_len, x) for x in losses]
            speed = [cell(r, "tokens_per_s", ",.0f") for r in found]
            peak = [cell(r, "peak_gib", ".1f") for r in found]
            base = tokens_per_s(rows, n, seq_len, first)
            rel = []
            for x in others:
                other = tokens_per_s(rows, n, seq_len, x)
                rel.append(f"{fmt(base / other if base and other else None, '.2f')}x")
            lines.append(f"| {n} | {seq_len} | {' | '.join(speed + peak + rel)} |")
    return lines


def markdown(rows: list[dict], names: list[str], lengths: list[int], meta: dict) -> str:
    losses = meta.get("losses") or [primary_loss(rows)]
    lines = [
        f"Training step of {'tiny models (smoke)' if meta['smoke'] else 'hyena-s / gpt-s'} on "
        f"{meta['gpu'] or meta['device']}, {meta['autocast_dtype']} autocast, "
        f"{meta['tokens_per_step']} tokens per step, median of {meta['timed_steps']} steps"
        f"{', torch.compile ' + str(meta['compile']) if meta['compile'] else ''}",
        "",
        "| model | loss | L | batch | ms/step | tokens/s | peak GiB | params |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        if r.get("status") in TIMED:
            cells = (
                fmt(r["ms_per_step"], ".1f")
                + (" (wrong gradients)" if r["status"] == "wrong-gradients" else ""),
                fmt(r["tokens_per_s"], ",.0f"),
                fmt(r.get("peak_gib"), ".1f"),
            )
        else:
            cells = (r["status"], "-", "-")
        params = fmt(r.get("params", 0) / 1e6 if r.get("params") else None, ".1f")
        lines.append(
            f"| {r['model']} | {r.get('loss', 'fused')} | {r['L']} | {r['batch']} | "
            f"{' | '.join(cells)} | {params}M |"
        )
    primary = losses[0]
    lines += [
        "",
        f"Loss path: {primary}",
        "",
        "| L | " + " | ".join(f"{n} tokens/s" for n in names) + " | triton / torch | hyena / gpt |",
        "| ---: | " + " | ".join("---:" for _ in names) + " | ---: | ---: |",
    ]
    for seq_len in lengths:
        tps = [cell(find_row(rows, n, seq_len, primary), "tokens_per_s", ",.0f") for n in names]
        tt = fmt(ratio(rows, "hyena-triton", "hyena-torch", seq_len, primary), ".2f")
        hg = fmt(ratio(rows, "hyena-triton", "gpt-sdpa", seq_len, primary), ".2f")
        lines.append(f"| {seq_len} | {' | '.join(tps)} | {tt}x | {hg}x |")
    if len(losses) > 1:
        lines += loss_table(rows, names, lengths, losses)
    lines.append("")
    for t in targets(rows):
        verdict = {True: "met", False: "NOT met", None: "not measured"}[t["met"]]
        lines.append(f"- {t['target']}: {fmt(t['ratio'], '.2f')}x, {verdict}")
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--lengths", type=int, nargs="+", help=f"default {list(LENGTHS)}")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument(
        "--tokens-per-step", type=int, help=f"batch = this / L (default {TOKENS_PER_STEP})"
    )
    parser.add_argument("--warmup", type=int, help=f"untimed steps first (default {WARMUP})")
    parser.add_argument("--steps", type=int, help=f"timed steps (default {STEPS})")
    parser.add_argument(
        "--compile",
        nargs="?",
        const="default",
        choices=COMPILE_MODES,
        help="torch.compile each model's trunk, in this mode (default: 'default'; "
        "'reduce-overhead' replays it as CUDA graphs)",
    )
    parser.add_argument(
        "--filter-len",
        type=int,
        help="taps of the Hyena models' long filters (a partial convolution; default: L)",
    )
    parser.add_argument(
        "--loss",
        nargs="+",
        choices=list(LOSSES),
        default=["fused"],
        help="loss paths to time, each a row (default fused: model.loss, as training runs; "
        "unfused: the logits and F.cross_entropy); the targets use the first",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help=f"tiny models (hyena-tiny, gpt-tiny), L {list(SMOKE_LENGTHS)}, "
        f"{SMOKE_STEPS} steps; runs on CPU",
    )
    args = parser.parse_args(argv)
    defaults = (
        (SMOKE_LENGTHS, SMOKE_TOKENS_PER_STEP, SMOKE_WARMUP, SMOKE_STEPS)
        if args.smoke
        else (LENGTHS, TOKENS_PER_STEP, WARMUP, STEPS)
    )
    for key, default in zip(
        ("lengths", "tokens_per_step", "warmup", "steps"), defaults, strict=True
    ):
        if getattr(args, key) is None:
            setattr(args, key, list(default) if key == "lengths" else default)
    for key, least in (("tokens_per_step", 1), ("warmup", 1), ("steps", 1)):
        if getattr(args, key) < least:
            parser.error(f"--{key.replace('_', '-')} must be >= {least}; got {getattr(args, key)}")
    if min(args.lengths) < 1:
        parser.error(f"--lengths must all be >= 1; got {args.lengths}")
    if args.filter_len is not None and args.filter_len < 1:
        parser.error(f"--filter-len must be >= 1; got {args.filter_len}")
    if len(set(args.loss)) != len(args.loss):
        parser.error(f"--loss names a path twice; got {args.loss}")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.smoke:
        sys.exit("benchmarks.train_throughput needs a CUDA device (or --smoke for a CPU run)")
    meta = environment(device, args, argv)
    print(
        f"{meta['gpu'] or meta['device']}  torch {meta['torch']}  triton {meta['triton']}  "
        f"bf16 autocast  {args.tokens_per_step} tokens/step  "
        f"{args.warmup} warm-up + {args.steps} timed steps",
        flush=True,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    configs = [(n, length, x) for length in args.lengths for n in args.models for x in args.loss]
    rows: list[dict] = []
    start = time.perf_counter()
    for i, (name, seq_len, loss) in enumerate(configs, 1):
        t0 = time.perf_counter()
        row = run_config(name, seq_len, args, device, loss)
        row["config_s"] = time.perf_counter() - t0
        rows.append(row)
        if row["status"] in TIMED:
            result = (
                f"{row['ms_per_step']:.1f} ms/step  {row['tokens_per_s']:,.0f} tokens/s  "
                f"peak {fmt(row.get('peak_gib'), '.1f')} GiB"
            )
            if row["status"] == "wrong-gradients":
                dead = row["dead_gradients"]
                result += f"  WRONG GRADIENTS: {len(dead)} parameters without one, e.g. {dead[:3]}"
        else:
            result = f"{row['status']}: {row.get('error', '')[:200]}"
        print(
            f"[{i}/{len(configs)}] {name} L={seq_len} loss={loss} batch={row['batch']}: {result}  "
            f"({row['config_s']:.1f} s, {time.perf_counter() - start:.0f} s total)",
            flush=True,
        )
        # written after every configuration: a run cut short still leaves its numbers
        doc = {"meta": meta, "rows": rows, "targets": targets(rows)}
        args.out.write_text(json.dumps(doc, indent=1) + "\n")
    table = markdown(rows, args.models, args.lengths, meta)
    doc = {"meta": meta, "rows": rows, "targets": targets(rows), "table": table}
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print()
    print(table)
    print(f"\nwrote {args.out}")
    return 1 if any(r["status"] in ("error", "wrong-gradients") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
