"""``benchmarks.three_stage_probe``: the three-stage DFT kernel and its two-stage twin against
float64 under the interpreter (fp32 and fp16 operands; the interpreter's bf16 products are
wrong), the repeated transform's on-chip loop, the input checks, and the sm_90 compile."""

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
        for stages in (2, 3):
            got = dft(x, OPERANDS[operand], stages=stages).to(torch.complex128)
            results[f"{n}-{operand}-{stages}"] = ((got - want).norm() / want.norm()).item()
    # two rounds on chip: the second round's input is the first's [N1 N2, N3] tile read as
    # [N1, N2 N3] (three stages) or the [k1, k2] tile itself (two stages); check both against
    # float64 rounds done the same way
    from benchmarks.three_stage_probe import FACTORS, TWO_STAGE

    n = 4096
    g = torch.Generator().manual_seed(7)
    x = torch.complex(torch.randn(2, n, generator=g), torch.randn(2, n, generator=g))
    for stages in (2, 3):
        y = x.to(torch.complex128)
        for _ in range(2):
            f = torch.fft.fft(y)
            if stages == 3:
                N1, N2, N3 = FACTORS[n]
                # natural k = k1 + N1 k2 + N1 N2 k3 sits at tile position (k1 N2 + k2) N3 + k3
                tile = f.reshape(-1, N3, N2, N1).permute(0, 3, 2, 1).reshape(-1, n)
            else:
                N1, N2 = TWO_STAGE[n]
                # k = k1 + N1 k2 at tile position k1 N2 + k2
                tile = f.reshape(-1, N2, N1).permute(0, 2, 1).reshape(-1, n)
            y = tile
        want = f  # the last round's natural order is what the kernel stores
        got = dft(x, torch.float32, stages=stages, repeat=2).to(torch.complex128)
        results[f"repeat-{stages}"] = ((got - want).norm() / want.norm()).item()
    print(json.dumps(results))


@pytest.fixture(scope="module")
def interpreted():
    return run_interpreted("tests.test_three_stage_probe")


@pytest.mark.parametrize("stages", [2, 3])
@pytest.mark.parametrize(("n", "operand"), list(CASES))
def test_dft_matches_float64(interpreted, n, operand, stages):
    assert interpreted[f"{n}-{operand}-{stages}"] < CASES[(n, operand)]


@pytest.mark.parametrize("stages", [2, 3])
def test_repeat_runs_the_transform_again_on_chip(interpreted, stages):
    """``repeat=2`` transforms the first round's tile again (what the timing's on-chip cost
    rests on): a loop that ran once, or fed the wrong tile back, misses the float64 rounds."""
    assert interpreted[f"repeat-{stages}"] < 1e-5


def test_three_stage_dft_rejects_other_sizes():
    pytest.importorskip("triton")
    from benchmarks.three_stage_probe import dft

    with pytest.raises(ValueError, match=r"n must be one of \[4096, 8192\]; got 2048"):
        dft(torch.zeros(2, 2048, dtype=torch.complex64))
    with pytest.raises(ValueError, match=r"stages must be 2 or 3; got 4"):
        dft(torch.zeros(2, 4096, dtype=torch.complex64), stages=4)
    with pytest.raises(ValueError, match=r"repeat must be >= 1; got 0"):
        dft(torch.zeros(2, 4096, dtype=torch.complex64), repeat=0)


def test_dft_kernels_compile_for_sm90():
    """Both kernels at both sizes compile for sm_90 within one SM's shared memory, with 4
    products per stage; the three-stage kernel's stages 2 and 3 as wgmma (8 products), and no
    spills on 8 warps."""
    pytest.importorskip("triton")
    from benchmarks.fftconv import SHARED_PER_BLOCK
    from benchmarks.three_stage_probe import static_rows

    try:
        rows = static_rows()
    except (FileNotFoundError, RuntimeError) as err:  # no ptxas / no NVIDIA backend here
        pytest.skip(f"no sm_90 compile on this machine: {err}")
    assert {(row["n"], row["stages"]) for row in rows} == {
        (n, s) for n in (4096, 8192) for s in (2, 3)
    }
    for row in rows:
        assert row["dots"] == 4 * row["stages"], row
        assert 0 < row["shared_bytes"] <= SHARED_PER_BLOCK, row
        if row["stages"] == 3:
            assert row["wgmma"] == 8, row
            if row["num_warps"] == 8:
                assert row["spill_store_bytes"] == 0, row


if __name__ == "__main__":
    _interpreter_main()
