"""Sampling speed: ``generate`` with its decoding cache against a whole forward per token
(``use_cache=False``), on a randomly initialized named model (``hyena-*`` or ``gpt-s``).

    python -m benchmarks.generate --out benchmarks/results/<name>.json
        [--model hyena-s] [--prompt 1024] [--new 32] [--batch 1] [--device cuda|cpu]
        [--dtype bf16|fp16|fp32] [--uncached-new 8]

Greedy decoding (temperature 0) after a random prompt of ``--prompt`` tokens, after one
untimed warm-up call of each mode: the time of one new token (the prompt's forward, the
prefill, and a sample) and of ``--new`` (``--uncached-new`` for the slow mode, a whole forward
each); the difference over the extra tokens is the time per token after the first, which is
what the two modes are compared on. On CUDA the model runs in ``--dtype`` (bf16 by default)
and every call ends in a synchronisation. Both modes must produce the same tokens over the
tokens they share in fp32 (the script exits 1 otherwise): the cache computes the forward's
math, in fp32. In bf16 the forward rounds its matmuls where decoding sums in fp32, and a
randomly initialized model's near-equal logits can then tip a greedy pick either way (on an
H100, hyena-s: different tokens in bf16, the same in fp32): printed, not an error.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import torch

from models.gpt import GPTLM, GPTConfig
from models.lm import HyenaLM

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _timed(fn, device: torch.device) -> tuple[torch.Tensor, float]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - start


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    torch.manual_seed(0)
    net = GPTLM if args.model in GPTConfig.presets else HyenaLM
    model = net.from_name(args.model).to(device).eval()
    if device.type == "cuda":
        model = model.to(DTYPES[args.dtype])
    vocab = model.config.vocab_size
    prompt = torch.randint(0, vocab, (args.batch, args.prompt), device=device)
    rows = {}
    for use_cache, new in ((True, args.new), (False, min(args.new, args.uncached_new))):

        def call(new, use_cache=use_cache):
            return model.generate(prompt, new, temperature=0.0, use_cache=use_cache)

        call(2)  # warm-up
        _, first = _timed(lambda call=call: call(1), device)
        out, seconds = _timed(lambda call=call, new=new: call(new), device)
        rows["cached" if use_cache else "uncached"] = {
            "new_tokens": new,
            "seconds": seconds,
            "first_token_s": first,  # the prompt's forward (the prefill) and one sample
            "ms_per_token": 1e3 * (seconds - first) / (new - 1),  # every later token
            "tokens": out[:, args.prompt :].tolist(),
        }
    shared = rows["uncached"]["new_tokens"]
    same = all(
        a[:shared] == b
        for a, b in zip(rows["cached"]["tokens"], rows["uncached"]["tokens"], strict=True)
    )
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
        "same_tokens": same,
        "speedup_per_token": rows["uncached"]["ms_per_token"] / rows["cached"]["ms_per_token"],
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
    args = parser.parse_args(argv)
    for name, least in (("prompt", 1), ("new", 2), ("uncached_new", 2), ("batch", 1)):
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
    for mode in ("cached", "uncached"):
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
    # in bf16/fp16 the forward rounds its matmuls where decoding sums in fp32: a greedy pick
    # between near-equal logits (a random model's) can differ without anything being wrong
    if not result["same_tokens"] and result["dtype"] == "fp32":
        sys.exit(1)


if __name__ == "__main__":
    main()
