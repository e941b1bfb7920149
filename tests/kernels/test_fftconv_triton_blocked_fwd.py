"""The blocked ("overlap-save") forward of ``triton_fwd``: a causal partial convolution, filter
of ``taps <= S = n/2`` lags, computed as ``cdiv(L, S)`` size-n circular convolutions per row,
against the float64 causal linear convolution (``conv_torch64``: conv1d, no FFT).

CPU: the kernel under TRITON_INTERPRET=1 in a subprocess (this file run as a module, one JSON
line; see ``interpreted.py``), fp32 and fp16 (the interpreter's bf16 ``tl.dot`` is wrong).
GPU (``gpu`` marker): the compiled kernel, every dtype, every blocked FFT size.
"""

from __future__ import annotations

import json

import pytest
import torch

from .fftconv_reference import DTYPES, GPU_DTYPES, TOL, conv_torch64, make_inputs, rel_err
from .interpreted import run_interpreted, start_interpreter


def blocked_forward(B, H, L, taps, n, dtype, gated, seed=0, device="cpu", **options):
    """The blocked kernel on fresh inputs into a NaN-poisoned ``out``; returns (out, float64
    reference)."""
    from kernels.fftconv import triton_fwd

    u, k, pre, post, bias = make_inputs(B, H, L, taps, dtype, gated, seed=seed, device=device)
    kf = torch.fft.rfft(k, n=n)  # the filter's taps, zero-padded to n
    out = torch.full_like(u, float("nan"))
    triton_fwd.fftconv_fwd(u, kf, pre, post, bias, n, blocked=True, out=out, **options)
    ref = conv_torch64(*(None if x is None else x.double() for x in (u, k, pre, post, bias)))
    return out, ref


# ---------------------------------------------------------------------------------------------
# CPU: interpreter cases, run in a subprocess
#
# id -> (B, H, L, taps, dtype, gated, pair, steps, stages), all at n = 512 (S = 256 outputs
# per block, NB = cdiv(L, 256)); None: the launcher's default.

BLOCKED_CASES = {
    # one block (L < S): the window's first half all padding
    "B1-H3-L200-T100-fp32-gated-NB1": (1, 3, 200, 100, "fp32", True, None, None, None),
    "B3-H3-L200-T256-fp16-plain-NB1-pair": (3, 3, 200, 256, "fp16", False, True, None, None),
    # 9 sequences per channel: pairs span two rows, the last pair half empty
    "B3-H3-L700-T256-fp32-gated-pair": (3, 3, 700, 256, "fp32", True, True, None, None),
    "B3-H3-L700-T100-fp16-gated-pair": (3, 3, 700, 100, "fp16", True, True, None, None),
    "B3-H3-L1000-T200-fp32-plain-single": (3, 3, 1000, 200, "fp32", False, False, None, None),
    "B1-H3-L1000-T256-fp16-gated-single": (1, 3, 1000, 256, "fp16", True, False, None, None),
    # L a multiple of S: no partial block; one tap: a scaled identity
    "B1-H3-L1024-T1-fp32-gated-pair": (1, 3, 1024, 1, "fp32", True, True, None, None),
    "B3-H3-L1024-T100-fp16-plain-pair": (3, 3, 1024, 100, "fp16", False, True, None, None),
    # several steps per program, the last program's loop cut short: 5 pairs = 2 + 2 + 1,
    # 4 sequences = 3 + 1
    "B3-H3-L700-T256-fp32-gated-pair-steps2": (3, 3, 700, 256, "fp32", True, True, 2, 2),
    "B1-H3-L1000-T100-fp16-gated-single-steps3": (1, 3, 1000, 100, "fp16", True, False, 3, 3),
}


def _run_blocked_case(B, H, L, taps, dtype, gated, pair, steps, stages):
    options = {"pair": pair, "steps": steps, "stages": stages}
    options = {name: value for name, value in options.items() if value is not None}
    seed = B * L + taps
    out, ref = blocked_forward(B, H, L, taps, 512, DTYPES[dtype], gated, seed=seed, **options)
    return {"y": rel_err(out, ref), "unwritten": float(out.isnan().sum())}


def _interpreter_main() -> None:
    """Runs every CPU case under the interpreter; prints one JSON line of results."""
    start_interpreter()
    results = {cid: _run_blocked_case(*args) for cid, args in BLOCKED_CASES.items()}
    print(json.dumps(results))


@pytest.fixture(scope="module")
def interpreted():
    return run_interpreted("tests.kernels.test_fftconv_triton_blocked_fwd")


@pytest.mark.parametrize("case", list(BLOCKED_CASES))
def test_interpreter_blocked_forward(interpreted, case):
    dtype = BLOCKED_CASES[case][4]
    res = interpreted[case]
    assert res["unwritten"] == 0
    assert res["y"] < TOL[DTYPES[dtype]], res


# ---------------------------------------------------------------------------------------------
# CPU: argument checks (no kernel runs)


@pytest.mark.parametrize(
    ("n", "L", "keep_bins", "dtype", "match"),
    [
        pytest.param(256, 100, None, torch.float32, "n: ", id="n256-below-min"),
        pytest.param(16384, 100, None, torch.float32, "n: ", id="n16384-above-max"),
        pytest.param(768, 100, None, torch.float32, "n: ", id="n768-not-pow2"),
        pytest.param(512, 100, None, torch.float64, "n: ", id="fp64"),
        pytest.param(512, 100, 100, torch.float32, "keep_bins: ", id="keep-bins-cut"),
        pytest.param(512, 0, None, torch.float32, "u: ", id="L0"),
    ],
)
def test_blocked_rejects(n, L, keep_bins, dtype, match):
    from kernels.fftconv import triton_fwd

    u = torch.randn(2, 3, L, dtype=dtype)
    kf = torch.zeros(3, n // 2 + 1, dtype=torch.complex64)
    with pytest.raises(ValueError, match=match):
        triton_fwd.fftconv_fwd(u, kf, None, None, None, n, keep_bins=keep_bins, blocked=True)
    if n == 512 and L >= 1:  # the launcher checks on its own as well
        spectrum = triton_fwd.spectrum_layout(kf, n)
        with pytest.raises(ValueError, match=match):
            triton_fwd.launch(u, spectrum, None, None, None, n, keep_bins=keep_bins, blocked=True)


def test_non_blocked_still_rejects_long_rows():
    """L > n is a blocked plan's case only."""
    from kernels.fftconv import triton_fwd

    u = torch.randn(1, 2, 600)
    kf = torch.zeros(2, 257, dtype=torch.complex64)
    with pytest.raises(ValueError, match="L <= n"):
        triton_fwd.fftconv_fwd(u, kf, None, None, None, 512)


def test_blocked_dot_flops():
    """Blocked: B * cdiv(L, S) sequences, all N1 rows in, N1/2 out (n = 512: 32 x 16)."""
    from kernels.fftconv import triton_fwd

    def mm(a, b, c):  # flops of an [a, b] @ [b, c] product
        return 2 * a * b * c

    n, N1, N2 = 512, 32, 16
    # 16 dots per pair (4 per stage), 2 + 4 + 4 + 2 unpaired
    pair = 4 * mm(N1, N1, N2) + 8 * mm(N1, N2, N2) + 4 * mm(N1 // 2, N1, N2)
    single = 2 * mm(N1, N1, N2) + 8 * mm(N1, N2, N2) + 2 * mm(N1 // 2, N1, N2)
    # H = 2 channels of 3 rows of 700: 9 sequences, 5 pairs
    assert triton_fwd.dot_flops(3, 2, 700, n, blocked=True) == 2 * 5 * pair
    assert triton_fwd.dot_flops(3, 2, 700, n, pair=False, blocked=True) == 2 * 9 * single
    # the dense count unchanged: L = 300 -> all 32 rows in and out, 2 pairs
    dense = 8 * mm(N1, N1, N2) + 8 * mm(N1, N2, N2)
    assert triton_fwd.dot_flops(3, 2, 300, n) == 2 * 2 * dense


# ---------------------------------------------------------------------------------------------
# GPU

GPU_FFT_SIZES = [pytest.param(n, id=f"n{n}") for n in (512, 1024, 2048, 4096, 8192)]


@pytest.mark.gpu
@pytest.mark.parametrize("gated", [False, True], ids=["plain", "gated"])
@pytest.mark.parametrize("taps_of", ["third", "full"])
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("n", GPU_FFT_SIZES)
def test_gpu_blocked_forward(n, dtype, taps_of, gated):
    """L = 3S + 77: four blocks, the last partial; B = 3, H = 5; taps S/3 or S."""
    S = n // 2
    taps = S // 3 if taps_of == "third" else S
    out, ref = blocked_forward(3, 5, 3 * S + 77, taps, n, dtype, gated, seed=n, device="cuda")
    assert not out.isnan().any()
    assert rel_err(out, ref) < TOL[dtype]


# (blocks, pair, steps) with B = 5: one block per row (L = S/2 + 3; 5 sequences per channel) or
# three (L = 2S + 77; 15 sequences, pairs spanning two rows); the last pair half empty and the
# last program's loop cut short (3 pairs = 2 + 1, 15 = 7 * 2 + 1, 8 pairs = 3 + 3 + 2)
LAUNCH_VARIANTS = [
    pytest.param("one", False, 1, id="NB1-single-steps1"),
    pytest.param("one", True, 2, id="NB1-pair-steps2"),
    pytest.param("three", False, 2, id="NB3-single-steps2"),
    pytest.param("three", True, 3, id="NB3-pair-steps3"),
    # the pipelined loop of the benchmark's launches (8 pairs per program, default stages)
    pytest.param("three", True, 8, id="NB3-pair-steps8"),
]


@pytest.mark.gpu
@pytest.mark.parametrize(("blocks", "pair", "steps"), LAUNCH_VARIANTS)
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("n", GPU_FFT_SIZES)
def test_gpu_blocked_launcher(n, dtype, blocks, pair, steps):
    """Every output written, for any pairing and steps per program (fp32 from n = 4096 runs
    one step per program whatever ``steps`` says)."""
    S = n // 2
    L = S // 2 + 3 if blocks == "one" else 2 * S + 77
    out, ref = blocked_forward(
        5, 5, L, S, n, dtype, True, seed=n + 1, device="cuda", pair=pair, steps=steps
    )
    assert not out.isnan().any()
    assert rel_err(out, ref) < TOL[dtype]


if __name__ == "__main__":
    _interpreter_main()
