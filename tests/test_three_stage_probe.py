"""``benchmarks.three_stage_probe``: the three-stage DFT kernel against float64 under the
interpreter (fp32 and fp16 operands; the interpreter's bf16 products are wrong), its input
checks, and its sm_90 compile."""

from __future__ import annotations

import json

import pytest
import torch

from tests.kernels.interpreted import run_interpreted, start_interpreter

# (n, operand) -> relative error bound (fp16 operands: the DFT tables rounded to fp16)
CASES = {(4096, "fp32"): 1e-5, (4096, "fp16"): 3e-3, (8192, "fp32"): 1e-5, (8192, "fp16"): 3e-3}
OPERANDS = {"fp32": torch.float32, "fp16": torch.float16}


def _interpreter_main() -> None:
    start_interpreter()
    from benchmarks.three_stage_probe import dft

    results = {}
    for (n, operand), _ in CASES.items():
        g = torch.Generator().manual_seed(n)
        x = torch.complex(torch.randn(3, n, generator=g), torch.randn(3, n, generator=g))
        want = torch.fft.fft(x.to(torch.complex128))
        got = dft(x, OPERANDS[operand]).to(torch.complex128)
        results[f"{n}-{operand}"] = ((got - want).norm() / want.norm()).item()
    print(json.dumps(results))


@pytest.fixture(scope="module")
def interpreted():
    return run_interpreted("tests.test_three_stage_probe")


@pytest.mark.parametrize(("n", "operand"), list(CASES))
def test_three_stage_dft_matches_float64(interpreted, n, operand):
    assert interpreted[f"{n}-{operand}"] < CASES[(n, operand)]


def test_three_stage_dft_rejects_other_sizes():
    pytest.importorskip("triton")
    from benchmarks.three_stage_probe import dft

    with pytest.raises(ValueError, match=r"n must be one of \[4096, 8192\]; got 2048"):
        dft(torch.zeros(2, 2048, dtype=torch.complex64))


def test_three_stage_dft_compiles_for_sm90():
    """Both sizes compile for sm_90 with 12 products (8 of them wgmma), within one SM's shared
    memory, and without spills on 8 warps."""
    pytest.importorskip("triton")
    from benchmarks.fftconv import SHARED_PER_BLOCK
    from benchmarks.three_stage_probe import static_rows

    try:
        rows = static_rows()
    except (FileNotFoundError, RuntimeError) as err:  # no ptxas / no NVIDIA backend here
        pytest.skip(f"no sm_90 compile on this machine: {err}")
    assert {row["n"] for row in rows} == {4096, 8192}
    for row in rows:
        assert row["dots"] == 12 and row["wgmma"] == 8, row
        assert 0 < row["shared_bytes"] <= SHARED_PER_BLOCK, row
        if row["num_warps"] == 8:
            assert row["spill_store_bytes"] == 0, row


if __name__ == "__main__":
    _interpreter_main()
