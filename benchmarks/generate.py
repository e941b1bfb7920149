"""Sampling speed: ``generate`` with its decoding cache, eager and replayed as a CUDA graph,
against a whole forward per token (``use_cache=False``), on a randomly initialized named model
(``hyena-*`` or ``gpt-s``).

    python -m benchmarks.generate --out benchmarks/results/<name>.json
        [--model hyena-s] [--prompt 1024] [--new 32] [--batch 1] [--device cuda|cpu]
        [--dtype bf16|fp16|fp32] [--uncached-new 8] [--repeats 3]

Greedy decoding (temperature 0) after a random prompt of ``--prompt`` tokens, after one
untimed warm-up call of each mode. Modes: ``graph`` (the cache, each decoding step after the
first replayed as a CUDA graph: ``generate``'s default on CUDA), ``cached`` (the cache, eager
steps: ``cuda_graph=False``) and ``uncached`` (a whole forward per token); off CUDA the first
is left out. Each mode is timed making one new token (the prompt's forward, the prefill, and
a sample), a quarter of its tokens (at least ``GRAPH_MIN_STEPS + 2``, so that the graph is
captured there too) and all of them (``--new``, ``--uncached-new`` for the slow mode); the
time per token is the difference of the last two over the tokens between them, so that the
prefill and the graph's capture drop out (each call's time the median of ``--repeats``). On
CUDA the model runs in ``--dtype`` (bf16 by default) and every call ends in a
synchronisation. The graph replays the eager step's kernels:
its tokens must equal the eager cache's, and both modes must produce the same tokens as the
whole forward over the tokens they share in fp32 (the script exits 1 otherwise): the cache
computes the forward's math, in fp32. In bf16 the forward rounds its matmuls where decoding
sums in fp32, and a randomly initialized model's near-equal logits can then tip a greedy pick
either way (on an H100, hyena-s: different tokens in bf16, the same in fp32): printed, not an
error.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from models.gpt import GPTLM, GPTConfig
from models.lm import GRAPH_MIN_STEPS, HyenaLM

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _timed(fn, device: torch.device, repeats: int) -> tuple[torch.Tensor, float]:
    """fn's output and the median of ``repeats`` timings of it."""
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return out, statistics.median(times)


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    torch.manual_seed(0)
    net = GPTLM if args.model in GPTConfig.presets else HyenaLM
    model = net.from_name(args.model).to(device).eval()
    if device.type == "cuda":
        model = model.to(DTYPES[args.dtype])
    vocab = model.config.vocab_size
    prompt = torch.randint(0, vocab, (args.batch, args.prompt), device=device)
    modes = {"cached": (True, False, args.new), "uncached": (False, False, args.uncached_new)}
    if device.type == "cuda":
        modes = {"graph": (True, True, args.new), **modes}
    rows = {}
    for mode, (use_cache, graph, new) in modes.items():

        def call(new, use_cache=use_cache, graph=graph):
            return model.generate(
                prompt, new, temperature=0.0, use_cache=use_cache, cuda_graph=graph
            )

        short = min(new - 1, max(GRAPH_MIN_STEPS + 2, new // 4))
        call(short)  # warm-up (the graph's capture included)
        r = args.repeats
        _, first = _timed(lambda call=call: call(1), device, r)
        _, before = _timed(lambda call=call, short=short: call(short), device, r)
        out, seconds = _timed(lambda call=call, new=new: call(new), device, r)
        rows[mode] = {
            "new_tokens": new,
            "seconds": seconds,
            "first_token_s": first,  # the prompt's forward (the prefill) and one sample
            "short_new_tokens": short,
            "short_seconds": before,
            "ms_per_token": 1e3 * (seconds - before) / (new - short),  # tokens short+1..new
            "tokens": out[:, args.prompt :].tolist(),
        }

    def agree(a: str, b: str) -> bool:
        shared = min(rows[a]["new_tokens"], rows[b]["new_tokens"])
        pairs = zip(rows[a]["tokens"], rows[b]["tokens"], strict=True)
        return all(x[:shared] == y[:shared] for x, y in pairs)

    same = agree("cached", "uncached")
    extra = {}
    if "graph" in rows:
        extra = {
            "graph_same_tokens": agree("graph", "cached"),
            "graph_speedup_per_token": rows["cached"]["ms_per_token"]
            / rows["graph"]["ms_per_token"],
        }
    return {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python -m benchmarks.generate", *sys.argv[1:]]),
        "model": args.model,
        "parameters": model.num_parameters(),
        "dtype": args.dtype if device.type == "cuda" else "fp32",
        "batch": args.batch,
        "prompt": args.prompt,
        "repeats": args.repeats,
        "same_tokens": same,
        "speedup_per_token": rows["uncached"]["ms_per_token"] / rows["cached"]["ms_per_token"],
        **extra,
        **rows,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default="hyena-s")
    parser.add_argument("--prompt", type=int, default=1024)
    parser.add_argument("--new", type=int, default=32)
    parser.add_argument("--uncached-new", type=int, default=8)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    parser.add_argument("--repeats", type=int, default=3, help="timings per call (median)")
    args = parser.parse_args(argv)
    # --new: the graph captured in both timed calls (the shorter makes GRAPH_MIN_STEPS + 2)
    least_new = GRAPH_MIN_STEPS + 3
    for name, least in (
        ("prompt", 1),
        ("new", least_new),
        ("uncached_new", 2),
        ("batch", 1),
        ("repeats", 1),
    ):
        if getattr(args, name) < least:
            flag = "--" + name.replace("_", "-")
            parser.error(f"{flag} must be >= {least}; got {getattr(args, name)}")
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"{result['device']}  torch {result['torch']}  {result['date']}")
    print(f"command: {result['command']}")
    size = f"{result['parameters'] / 1e6:.1f}M"
    print(f"{args.model} ({size}), batch {args.batch}, prompt {args.prompt}")
    for mode in ("graph", "cached", "uncached"):
        if mode not in result:
            continue
        r = result[mode]
        print(
            f"{mode:<9} {r['new_tokens']:>4} tokens  {r['seconds']:8.2f} s  first token "
            f"{r['first_token_s']:7.2f} s  then {r['ms_per_token']:9.1f} ms/token "
            f"({1e3 * args.batch / r['ms_per_token']:.1f} tokens/s)"
        )
    print(
        f"per-token speedup of the cache: {result['speedup_per_token']:.1f}x; "
        f"same tokens: {result['same_tokens']}"
    )
    if "graph" in result:
        print(
            f"per-token speedup of the graph over eager decoding: "
            f"{result['graph_speedup_per_token']:.1f}x; same tokens: {result['graph_same_tokens']}"
        )
    # in bf16/fp16 the forward rounds its matmuls where decoding sums in fp32: a greedy pick
    # between near-equal logits (a random model's) can differ without anything being wrong;
    # the graph replays the eager step's own kernels
    if result.get("graph_same_tokens") is False or (
        not result["same_tokens"] and result["dtype"] == "fp32"
    ):
        sys.exit(1)


if __name__ == "__main__":
    main()
