"""Benchmarks end to end at tiny sizes: ``python -m benchmarks.train_throughput --smoke`` writes
its JSON and table (CPU, or the GPU when there is one); the target verdicts from made-up rows."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import train_throughput as tt
from tests.helpers import ROOT, subprocess_env

HAS_CUDA = torch.cuda.is_available()


def run_benchmark(out: Path, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = subprocess_env(OMP_NUM_THREADS="2")
    env.pop("TRITON_INTERPRET", None)  # the interpreted kernel is far too slow for a smoke run
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.train_throughput", *args, "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def test_train_throughput_smoke(tmp_path) -> None:
    out = tmp_path / "smoke.json"
    proc = run_benchmark(out, "--smoke")
    doc = json.loads(out.read_text())
    meta = doc["meta"]
    assert meta["smoke"] and meta["torch"] == torch.__version__ and meta["date"]
    assert "--smoke" in meta["command"] and meta["autocast_dtype"] == "bf16"

    rows = {(r["model"], r["L"]): r for r in doc["rows"]}
    assert sorted(rows) == sorted((m, L) for m in tt.MODELS for L in tt.SMOKE_LENGTHS)
    for (model, L), r in rows.items():
        assert r["batch"] == max(1, tt.SMOKE_TOKENS_PER_STEP // L)
        if model == "hyena-triton" and not HAS_CUDA:
            assert r["status"] == "skipped" and "TRITON_INTERPRET" in r["error"]
            continue
        assert r["status"] == "ok", r
        assert r["dead_gradients"] == []  # checked before timing, every parameter learns
        assert len(r["step_ms"]) == tt.SMOKE_STEPS and all(ms > 0 for ms in r["step_ms"])
        assert r["tokens_per_s"] == pytest.approx(r["batch"] * L / r["ms_per_step"] * 1e3)
        # random tokens through a fresh model: the loss starts near ln(vocab) = ln(256)
        assert all(math.isfinite(x) for x in r["losses"])
        assert abs(r["losses"][0] - math.log(256)) < 1.0, r["losses"]
        assert (r.get("peak_gib") is not None) == HAS_CUDA
    n_gpt, n_hyena = rows[("gpt-sdpa", 64)]["params"], rows[("hyena-torch", 64)]["params"]
    assert abs(n_gpt / n_hyena - 1) < 0.1  # the tiny twins are of a size too

    assert [t["L"] for t in doc["targets"]] == [4096, 16384]
    assert all(t["met"] is None for t in doc["targets"])  # lengths not in a smoke run
    assert "| L | hyena-triton tokens/s |" in proc.stdout and doc["table"] in proc.stdout


def fake_row(model: str, L: int, tokens_per_s: float | None, status: str = "ok") -> dict:
    row = {"model": model, "L": L, "batch": 65536 // L, "status": status}
    if status == "ok":
        row |= {"tokens_per_s": tokens_per_s, "ms_per_step": 65536 / tokens_per_s * 1e3}
    return row


def test_target_verdicts_and_table() -> None:
    rows = [
        fake_row("hyena-triton", 4096, 180_000.0),
        fake_row("hyena-torch", 4096, 100_000.0),
        fake_row("gpt-sdpa", 4096, 150_000.0),
        fake_row("hyena-triton", 16384, 120_000.0),
        fake_row("hyena-torch", 16384, 110_000.0),
        fake_row("gpt-sdpa", 16384, None, status="oom"),
    ]
    verdicts = {t["L"]: t for t in tt.targets(rows)}
    assert verdicts[4096]["ratio"] == pytest.approx(1.8) and verdicts[4096]["met"] is True
    assert verdicts[16384]["ratio"] is None and verdicts[16384]["met"] is None  # GPT ran out

    rows[-1] = fake_row("gpt-sdpa", 16384, 100_000.0)
    verdicts = {t["L"]: t for t in tt.targets(rows)}
    assert verdicts[16384]["ratio"] == pytest.approx(1.2) and verdicts[16384]["met"] is False

    meta = {
        "smoke": False,
        "gpu": "GPU",
        "device": "cuda",
        "autocast_dtype": "bf16",
        "tokens_per_step": 65536,
        "timed_steps": 10,
        "compile": False,
    }
    table = tt.markdown(rows, list(tt.MODELS), [4096, 16384], meta)
    assert "| 4096 | 180,000 | 100,000 | 150,000 | 1.80x | 1.20x |" in table
    assert "1.7x Hyena torch at 4K: 1.80x, met" in table
    assert "Transformer at 16K: 1.20x, NOT met" in table


def test_bad_arguments_are_refused(capsys) -> None:
    with pytest.raises(SystemExit):
        tt.parse_args(["--out", "x.json", "--steps", "0"])
    assert "--steps must be >= 1; got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tt.parse_args(["--out", "x.json", "--models", "gpt-flash"])
    args = tt.parse_args(["--out", "x.json", "--smoke", "--lengths", "32"])
    assert args.lengths == [32] and args.steps == tt.SMOKE_STEPS  # explicit flags win
    with pytest.raises(SystemExit):
        tt.parse_args(["--out", "x.json", "--filter-len", "0"])
    assert "--filter-len must be >= 1; got 0" in capsys.readouterr().err


def test_filter_len_builds_a_partial_filter_model() -> None:
    """``--filter-len``: the Hyena models get that many taps (capped at L), the GPT nothing."""
    hyena = tt.MODELS["hyena-torch"].build(True, 512, 128)
    assert hyena.config.filter_len == 128
    assert tt.MODELS["hyena-torch"].build(True, 64, 128).config.filter_len == 64
    assert tt.MODELS["hyena-torch"].build(True, 512).config.filter_len is None
    assert tt.MODELS["gpt-sdpa"].build(True, 64, 128).config.l_max == 64


def test_out_of_memory_and_errors_are_recorded(monkeypatch) -> None:
    """An OOM is a result (status "oom"), any other failure an error; the sweep goes on."""
    args = tt.parse_args(["--out", "x.json", "--smoke"])
    cpu = torch.device("cpu")

    def oom(name, seq_len, batch, args, device, row):
        row["params"] = 123
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB\nmore")

    monkeypatch.setattr(tt, "measure", oom)
    row = tt.run_config("gpt-sdpa", 64, args, cpu)
    assert row["status"] == "oom" and row["params"] == 123
    assert row["error"] == "CUDA out of memory. Tried to allocate 80.00 GiB"

    def broken(*_):
        raise RuntimeError("kernel failed")

    monkeypatch.setattr(tt, "measure", broken)
    row = tt.run_config("hyena-torch", 128, args, cpu)
    assert row["status"] == "error" and row["error"] == "RuntimeError: kernel failed"
    assert row["batch"] == 1 and row["tokens_per_step"] == 128


def test_train_throughput_refuses_a_step_that_leaves_a_parameter_without_gradient() -> None:
    """The probe run before timing names a parameter whose gradient is missing or all zero:
    one the loss does not reach (None), and one the loss reaches through a zero factor."""
    torch.manual_seed(0)
    model = tt.MODELS["hyena-torch"].build(True, 64)
    step = tt.make_step(model, torch.device("cpu"), "fused")
    inputs, targets = torch.randint(0, 256, (2, 2, 64))
    assert step.dead_gradients(inputs, targets) == []

    model.unused = torch.nn.Parameter(torch.ones(3))  # never in the graph: no gradient
    gain = model.blocks[0].norm1
    with torch.no_grad():
        model.blocks[1].norm2.weight.zero_()  # the MLP of block 1 is cut off: zero gradients
    dead = step.dead_gradients(inputs, targets)
    assert "unused" in dead and "blocks.1.mlp.fc1.weight" in dead
    assert "blocks.0.norm1.weight" not in dead and gain.weight.grad is None  # zeroed after


@pytest.mark.gpu
def test_train_throughput_full_size_models_on_gpu(tmp_path) -> None:
    """hyena-s (both backends) and gpt-s (flash only) through the real step at a short length."""
    out = tmp_path / "gpu.json"
    args = ["--lengths", "1024", "--tokens-per-step", "8192", "--warmup", "1", "--steps", "2"]
    run_benchmark(out, *args, timeout=300)
    doc = json.loads(out.read_text())
    assert doc["meta"]["gpu"] and doc["meta"]["gpt_sdpa_backend"] == "flash only"
    for r in doc["rows"]:
        assert r["status"] == "ok", r
        assert r["peak_gib"] > 0.5 and 1.4e8 < r["params"] < 1.6e8
        assert abs(r["losses"][0] - math.log(50257)) < 1.0


def test_long_context_smoke(tmp_path, capsys) -> None:
    """``benchmarks.long_context --smoke``: both plans per length, the same loss, a table."""
    from benchmarks import long_context

    out = tmp_path / "long.json"
    assert long_context.main(["--smoke", "--lengths", "700", "--reps", "1", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["preset"] == "hyena-tiny" and doc["filter_len"] == 256
    rows = {r["plan"]: r for r in doc["rows"]}
    assert set(rows) == {"blocked", "dense"}
    assert all(r["status"] == "ok" and r["layers"] > 0 and r["ms"] > 0 for r in rows.values())
    # the plan changes rounding only
    assert math.isclose(rows["blocked"]["loss"], rows["dense"]["loss"], rel_tol=1e-4)
    assert "| 700 |" in capsys.readouterr().out


def test_sparse_benchmark_reports_the_columns_the_kernels_keep() -> None:
    """``benchmarks.fftconv_sparse`` names the path and the kept frequency columns of each
    length at 75% of the bins zero (no GPU needed for this part): half or a quarter of the
    columns on the in-register kernels and on the long path's rows kernel alike."""
    from benchmarks import fftconv_sparse

    assert fftconv_sparse.columns(1024, 0.25) == {
        "path": "fused", "n": 2048, "columns": 32, "kept": 16,
    }  # fmt: skip
    assert fftconv_sparse.columns(4096, 0.25)["kept"] == 16
    long_1m = fftconv_sparse.columns(1 << 20, 0.25)
    assert long_1m["path"].startswith("long") and (long_1m["columns"], long_1m["kept"]) == (64, 16)
    dense = fftconv_sparse.columns(32768, 1.0)
    assert dense["kept"] == dense["columns"] == 64


def test_fftconv_static_compiles_every_variant_without_a_gpu(tmp_path, capsys) -> None:
    """``benchmarks.fftconv --static`` at L = 128 (n = 256): the default and every bare-kernel
    variant of that size, bf16 and fp32 (the default only), plain and gated, compiled for sm_90
    with the launcher's choices; a row each in the JSON and the table."""
    pytest.importorskip("triton")
    from benchmarks import fftconv as bench

    out = tmp_path / "static.json"
    try:
        bench.main(["--static", "--lengths", "128", "--out", str(out)])
    except (FileNotFoundError, RuntimeError) as err:  # no ptxas / no NVIDIA backend here
        pytest.skip(f"no sm_90 compile on this machine: {err}")
    rows = json.loads(out.read_text())["rows"]
    assert not [r for r in rows if "error" in r], rows
    names = {name for name, *_ in bench.kernel_variants(256, True)}
    got = {(r["variant"], r["dtype"], r["gated"]) for r in rows}
    assert got == {(name, "bfloat16", gated) for name in names for gated in (False, True)} | {
        ("default", "float32", False), ("default", "float32", True)
    }  # fmt: skip
    default = next(r for r in rows if r["variant"] == "default" and r["dtype"] == "bfloat16")
    # the launcher's own choices at n = 256 on 132 SMs: 2 warps, 16 pairs, 3 stages
    assert (default["num_warps"], default["steps"], default["stages"]) == (2, 16, 3)
    assert all(0 < r["registers"] <= 255 and r["shared_bytes"] > 0 for r in rows)
    table = capsys.readouterr().out
    assert "smemKB" in table and table.count("  256 ") == len(rows)


@pytest.mark.skipif(HAS_CUDA, reason="checks the refusal without a GPU")
def test_gpu_benchmarks_refuse_without_cuda(tmp_path, capsys) -> None:
    from benchmarks import fftconv_halves, fftconv_sparse, host_overhead, spectrum_layout

    for module in (fftconv_halves, fftconv_sparse, host_overhead, spectrum_layout):
        with pytest.raises(SystemExit, match="needs a CUDA GPU"):
            module.main(["--out", str(tmp_path / "x.json")])
    from benchmarks import fftconv_bwd

    with pytest.raises(SystemExit, match="needs a CUDA device"):  # its options parsed first
        fftconv_bwd.main(["--out", str(tmp_path / "x.json"), "--parts", "--no-sparse"])


def test_compile_gradients_on_cpu(tmp_path) -> None:
    """``benchmarks.compile_gradients``: eager and compiled (inductor) gradients of a one-layer
    hyena-tiny agree on the CPU; its comparison flags a dead or a wrong gradient."""
    from benchmarks import compile_gradients as cg

    out = tmp_path / "cg.json"
    assert (
        cg.main(["--out", str(out), "--device", "cpu", "--seq-len", "32", "--variants", "all"]) == 0
    )
    row = json.loads(out.read_text())["rows"][0]
    assert row["ok"] and row["dead_in_compiled"] == [] and row["parameters"] > 20
    assert row["loss_compiled"] == pytest.approx(row["loss_eager"], rel=1e-5)

    g = {"a": torch.ones(3), "b": torch.ones(2), "__loss__": torch.tensor(1.0)}
    dead = cg.compare(g, g | {"a": torch.zeros(3)})
    assert not dead["ok"] and dead["dead_in_compiled"] == ["a"]
    wrong = cg.compare(g, g | {"b": torch.tensor([1.0, 2.0])})
    assert not wrong["ok"] and wrong["worst_rel_err"][0][0] == "b"


def test_compile_inplace_output_on_cpu(tmp_path) -> None:
    """``benchmarks.compile_inplace_output``: one row per autocast setting and dynamo backend,
    each the compiled gradients' relative errors against eager (the torch version decides the
    values: 1.0 where dynamo drops the gradients, as torch 2.11 does)."""
    from benchmarks import compile_inplace_output as cio

    out = tmp_path / "cio.json"
    assert cio.main(["--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    cpu = [r for r in doc["rows"] if r["device"] == "cpu"]
    assert {(r["autocast_off"], r["backend"]) for r in cpu} == {
        (a, b) for a in (False, True) for b in ("eager", "aot_eager")
    }
    for r in cpu:
        assert len(r["rel_err_x_w_b"]) == 3
        assert r["ok"] == (max(r["rel_err_x_w_b"]) < 1e-5)
    # the Function itself is right in eager: its gradients against autograd through plain ops
    v, w, b = (torch.randn(s, dtype=torch.float64) for s in ((2, 4, 5), (3, 4), (3,)))
    leaves = [t.requires_grad_() for t in (v, w, b)]
    got = torch.autograd.grad(cio.BiasedLinear.apply(*leaves, True).sum(), leaves)
    ref = torch.autograd.grad((v.transpose(1, 2) @ w.t() + b).sum(), leaves)
    for g, r in zip(got, ref, strict=True):
        assert torch.allclose(g, r)


def test_graph_forward_backward_times_or_records_the_refusal() -> None:
    """Forward and forward + backward as CUDA graphs: two positive times on a GPU; without one
    the capture's refusal is recorded under ``graph_error_<name>``, not raised."""
    from benchmarks.common import graph_forward_backward_ms

    device = "cuda" if torch.cuda.is_available() else "cpu"
    x = torch.randn(4, 1024, device=device, requires_grad=True)
    row = graph_forward_backward_ms("sq", lambda: x * x, [x], torch.ones_like(x))
    if device == "cuda":
        assert set(row) == {"fwd_graph_ms_sq", "fwdbwd_graph_ms_sq"}
        assert all(ms > 0 for ms in row.values())
    else:
        assert set(row) == {"graph_error_sq"} and "CUDA" in row["graph_error_sq"]
    backward_only = graph_forward_backward_ms(
        "sq", lambda: x * x, [x], torch.ones_like(x), forward_too=False
    )
    assert "fwd_graph_ms_sq" not in backward_only


def test_halves_benchmark_table(capsys) -> None:
    """``benchmarks.fftconv_halves``'s table: one line per path that has a time, its multiple
    of the floor and speedup over torch.fft; forward + backward where timed."""
    from benchmarks import fftconv_halves

    row = {
        "L": 8192, "gated": True, "gated_inputs": ["pre"], "floor_fwd_ms": 0.5,
        "ms_torch": 6.0, "err_torch": 1e-7, "ms_long": 1.5, "err_long": 5e-3,
        "graph_ms_long": 1.4, "ms_halves": 3.0, "err_halves": 4e-3, "error_kernel@w16": "x",
        "fwdbwd_ms_long": 11.0, "fwdbwd_ms_halves-both": 12.5,
    }  # fmt: skip
    fftconv_halves.print_table([row])
    out = capsys.readouterr().out.splitlines()
    lines = {line.split()[2]: line.split() for line in out[1:] if "fwd+bwd" not in line}
    assert set(lines) == {"torch", "long", "halves"}
    assert lines["long"][3:6] == ["1.500", "3.00", "4.00x"]
    assert lines["halves"][3:6] == ["3.000", "6.00", "2.00x"]
    assert any("fwd+bwd" in line and "11.000" in line for line in out)
    assert any("fwd+bwd halves-both" in line and "12.500" in line for line in out)


def test_generate_benchmark_on_cpu(tmp_path, capsys) -> None:
    from benchmarks import generate

    out = tmp_path / "generate.json"
    args = ["--out", str(out), "--model", "hyena-tiny", "--prompt", "20", "--new", "9"]
    generate.main([*args, "--uncached-new", "4", "--batch", "2", "--device", "cpu"])
    doc = json.loads(out.read_text())
    assert doc["same_tokens"] is True and doc["model"] == "hyena-tiny" and doc["batch"] == 2
    assert doc["cached"]["new_tokens"] == 9 and doc["uncached"]["new_tokens"] == 4
    assert "graph" not in doc and "graph_same_tokens" not in doc  # CUDA only
    for mode in ("cached", "uncached"):
        r = doc[mode]
        assert len(r["tokens"]) == 2 and all(len(t) == r["new_tokens"] for t in r["tokens"])
        assert min(r["first_token_s"], r["short_seconds"], r["seconds"]) > 0
        assert 1 <= r["short_new_tokens"] < r["new_tokens"]
    assert doc["cached"]["short_new_tokens"] == 6 and doc["repeats"] == 3  # GRAPH_MIN_STEPS + 2
    assert [t[:4] for t in doc["cached"]["tokens"]] == doc["uncached"]["tokens"]
    assert "per-token speedup of the cache" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        generate.main([*args, "--new", "6"])  # below GRAPH_MIN_STEPS + 3
