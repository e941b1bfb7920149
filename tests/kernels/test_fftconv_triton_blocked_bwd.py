"""The blocked ("overlap-save") plan of the fused Triton backward (``triton_bwd.fftconv_bwd(...,
blocked=True)``) against float64 autograd of the causal linear convolution.

A blocked plan cuts each row into ``NB = cdiv(L, S)`` blocks of ``S = n/2`` samples, one
sequence per block, for a filter of at most S taps; pairs of sequences may span two batch rows.
The postgate's gradient comes from the blocked forward kernel (``triton_fwd``).

CPU: the kernel runs under TRITON_INTERPRET=1 (set before triton is imported), so the cases run
in one subprocess (this file run as a module) and the tests check what it printed; fp32 and
fp16 only (the interpreter's bf16 ``tl.dot`` is wrong), n = 512 (S = 256) and one n = 1024,
with L < S (NB = 1), L not a multiple of S, an odd number of sequences (a half-empty pair),
taps from 1 to S, the launch variants with several chunks per channel, and partial ``needs``.
GPU (``gpu`` marker): the compiled kernel at every fused size with the default configurations.
"""

from __future__ import annotations

import json
from typing import NamedTuple

import pytest
import torch

from .fftconv_reference import DTYPES, GPU_DTYPES, TOL, conv_fft64, conv_torch64, rel_err
from .interpreted import count_calls, run_interpreted, start_interpreter

NAMES = ("u", "k", "pregate", "postgate", "bias")


def make_blocked_inputs(B, H, L, taps, dtype, gated, seed=0, device="cpu"):
    """Fresh random (dy, u, kc, pregate, postgate, bias): kc ``[H, taps]`` fp32, a decaying
    filter as trained long-conv filters are (keeps the output well-conditioned)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(B, H, L, generator=g).to(device, dtype)
    kc = torch.randn(H, taps, generator=g, dtype=torch.float64)
    kc = (kc / (1.0 + torch.arange(taps, dtype=torch.float64)) ** 0.5).float().to(device)
    pre = torch.randn(B, H, L, generator=g).to(device, dtype) if gated else None
    post = torch.randn(B, H, L, generator=g).to(device, dtype) if gated else None
    bias = torch.randn(H, generator=g).to(device) if gated else None
    dy = torch.randn(B, H, L, generator=g).to(device, dtype)
    return dy, u, kc, pre, post, bias


class Case(NamedTuple):
    """A blocked backward with NaN-poisoned outputs: ``config`` the ``triton_bwd.Config`` fields
    (None: the default), ``wants`` the gradients asked for (None: all five, or u and k when
    plain)."""

    B: int
    H: int
    L: int
    taps: int
    dtype: str = "fp32"
    gated: bool = True
    n: int = 512
    config: dict | None = None
    pairs_per_program: int | None = None
    wants: tuple[str, ...] | None = None

    @property
    def wanted(self) -> tuple[str, ...]:
        return self.wants or (NAMES if self.gated else ("u", "k"))


def _cfg(n1, warps, **options):
    """``triton_bwd.Config`` fields as a dict."""
    return dict(n1=n1, num_warps=warps, **options)


_ACC_IN_MEMORY_PIPELINED = _cfg(32, 2, acc_in_memory=True, steps=2, stages=2)
_SPLIT_ACC_IN_MEMORY_PIPELINED = _cfg(32, 2, acc_in_memory=True, steps=4, stages=2, split="store_q")
CASES = {
    # NB = 1 (L < S), one sequence: a half-empty pair
    "B1-H3-L200-K100-fp32-gated": Case(1, 3, 200, 100),
    # NB = 3, the last block partial, taps = S: 9 sequences, pairs across two batch rows and a
    # half-empty last pair
    "B3-H3-L700-K256-fp32-gated": Case(3, 3, 700, 256),
    "B3-H3-L1000-K1-fp16-gated": Case(3, 3, 1000, 1, "fp16"),
    "B1-H3-L1000-K100-fp16-plain": Case(1, 3, 1000, 100, "fp16", gated=False),
    "B3-H3-L700-K200-fp32-plain": Case(3, 3, 700, 200, gated=False),
    "B3-H3-L1300-K512-n1024-fp32-gated": Case(3, 3, 1300, 512, n=1024),
    # launch variants, several chunks per channel; "tail": the last block of a chunk runs past it
    "B3-H3-L1000-K100-fp32-hoist-loop2": Case(
        3, 3, 1000, 100, config=_cfg(32, 2, hoist=True), pairs_per_program=2
    ),
    "B3-H3-L700-K256-fp16-acc-in-memory-steps2-stages2-tail": Case(
        3, 3, 700, 256, "fp16", config=_ACC_IN_MEMORY_PIPELINED, pairs_per_program=3
    ),
    "B3-H3-L1000-K200-fp16-store-q-acc-in-memory-steps4-stages2-tail": Case(
        3, 3, 1000, 200, "fp16", config=_SPLIT_ACC_IN_MEMORY_PIPELINED, pairs_per_program=3
    ),
    "B3-H3-L700-K100-fp32-store-q-hoist": Case(
        3, 3, 700, 100, config=_cfg(32, 2, hoist=True, split="store_q", dk_num_warps=4)
    ),
    "B3-H3-L700-K256-fp32-recompute-loop2": Case(
        3, 3, 700, 256, config=_cfg(32, 2, split="recompute"), pairs_per_program=2
    ),
    # partial needs
    "B3-H3-L700-K100-fp32-needs-u": Case(3, 3, 700, 100, wants=("u",)),
    "B3-H3-L1000-K256-fp32-needs-k": Case(3, 3, 1000, 256, wants=("k",)),
    "B3-H3-L700-K100-fp16-needs-post-bias": Case(
        3, 3, 700, 100, "fp16", wants=("postgate", "bias")
    ),
    "B3-H3-L700-K200-fp32-needs-pre-k-split": Case(
        3, 3, 700, 200, config=_cfg(32, 2, split="store_q"), wants=("pregate", "k")
    ),
}


def run_case(c: Case, device="cpu"):
    """``triton_bwd.fftconv_bwd(..., blocked=True)`` against float64 autograd: ({name: rel.
    error, "unwritten": NaN count}, ok): ok is False if a gradient's presence or dtype is wrong
    or an out tensor was not the one returned."""
    from kernels.fftconv import triton_bwd

    dtype = DTYPES[c.dtype]
    inputs = make_blocked_inputs(c.B, c.H, c.L, c.taps, dtype, c.gated, seed=1, device=device)
    dy, u, kc, pre, post, bias = inputs
    leaves = dict(zip(NAMES, (u, kc, pre, post, bias), strict=True))
    needs = tuple(name in c.wanted for name in NAMES)
    refs = {
        name: None if x is None else x.double().requires_grad_(need)
        for (name, x), need in zip(leaves.items(), needs, strict=True)
    }
    reference = conv_torch64 if device == "cpu" else conv_fft64
    reference(*(refs[name] for name in NAMES)).backward(dy.double())

    kf = torch.fft.rfft(kc, n=c.n)
    out = tuple(torch.full_like(u, float("nan")) for _ in range(3))
    grads = triton_bwd.fftconv_bwd(
        dy, u, kc, kf, pre, post, bias, c.n, c.n // 2 + 1, needs,
        blocked=True,
        config=triton_bwd.Config(**c.config) if c.config else None,
        pairs_per_program=c.pairs_per_program,
        out=out,
    )  # fmt: skip
    errs, ok = {}, True
    for name, got, need in zip(NAMES, grads, needs, strict=True):
        ok &= (got is not None) == need
        if need and got is not None:
            ok &= got.dtype == leaves[name].dtype and got.shape == leaves[name].shape
            errs[name] = rel_err(got, refs[name].grad)
    d_u, _, d_pre, d_post, _ = grads
    outs = ("u", "pregate", "postgate")
    for name, given, got in zip(outs, out, (d_u, d_pre, d_post), strict=True):
        ok &= got is given or name not in c.wanted
    written = [x for x, name in zip(out, outs, strict=True) if name in c.wanted]
    errs["unwritten"] = float(sum(x.isnan().sum() for x in written))
    return errs, bool(ok)


# ---------------------------------------------------------------------------------------------
# CPU: interpreter cases, run in a subprocess


def _interpreter_main() -> None:
    """Runs every CPU case under the interpreter; prints one JSON line of results (a case that
    raises records the error, so that the others still report)."""
    start_interpreter()
    from kernels.fftconv import triton_fwd

    forward_calls = count_calls(triton_fwd, "fftconv_fwd")
    results = {}
    for cid, case in CASES.items():
        forward_calls.clear()
        try:
            errs, ok = run_case(case)
        except Exception as e:  # reported by the case's test
            results[cid] = {"error": f"{type(e).__name__}: {e}"}
            continue
        results[cid] = {"errs": errs, "ok": ok, "forward_calls": len(forward_calls)}
    print(json.dumps(results))


@pytest.fixture(scope="module")
def interpreted():
    return run_interpreted("tests.kernels.test_fftconv_triton_blocked_bwd")


@pytest.mark.parametrize("case", list(CASES))
def test_interpreter_blocked_backward(interpreted, case):
    c = CASES[case]
    res = interpreted[case]
    assert "error" not in res, res.get("error")
    assert res["ok"], "a gradient is missing, unexpected or of the wrong dtype, or out not used"
    # the postgate's z from the blocked forward kernel, and only when wanted
    assert res["forward_calls"] == ("postgate" in c.wanted), res["forward_calls"]
    errs = dict(res["errs"])
    assert errs.pop("unwritten") == 0
    assert set(errs) == set(c.wanted)
    for name, err in errs.items():
        assert err < TOL[DTYPES[c.dtype]], (name, err)


# ---------------------------------------------------------------------------------------------
# CPU: validation (raised before any launch, so no interpreter needed), flop count


def _blocked_args(n=512, B=3, H=3, L=700, taps=100):
    dy, u, kc, pre, post, bias = make_blocked_inputs(B, H, L, taps, torch.float32, True)
    kf = torch.fft.rfft(kc, n=n)
    return [dy, u, kc, kf, pre, post, bias, n, n // 2 + 1, (True,) * 5]


@pytest.mark.parametrize(
    ("change", "match"),
    [
        pytest.param(
            {3: torch.zeros(3, 129, dtype=torch.complex64), 7: 256, 8: 129},
            r"blocked backward covers n in \[512, 8192\].*n=256",
            id="n-too-small",
        ),
        pytest.param(
            {0: torch.zeros(3, 3, 0), 1: torch.zeros(3, 3, 0), 4: None, 5: None},
            r"blocked backward covers n in \[512, 8192\], L >= 1.*L=0",
            id="L0",
        ),
        pytest.param({8: 200}, r"keep_bins must be 257; got 200", id="keep-bins"),
        pytest.param(
            {2: torch.zeros(3, 257)},
            r"kc must have shape \(3, m\) with 1 <= m <= 256; got \(3, 257\)",
            id="taps-past-S",
        ),  # fmt: skip
    ],
)
def test_blocked_rejects_bad_input(change, match):
    from kernels.fftconv import triton_bwd

    args = _blocked_args()
    for index, value in change.items():
        args[index] = value
    with pytest.raises(ValueError, match=match):
        triton_bwd.fftconv_bwd(*args, blocked=True)


def test_blocked_dot_flops():
    """B = 3 rows of L = 3S + 77 are 12 sequences, 6 pairs; at n = 512 (32 x 16) P and dv take
    the first 16 rows, Q all 32 (the dz window): 8 n (16 + 16) twice and 8 n (32 + 16) per
    pair, and a recomputed Q once more."""
    from kernels.fftconv import triton_bwd

    n, H = 512, 5
    L = 3 * 256 + 77
    per_pair = 8 * n * (2 * (16 + 16) + (32 + 16))
    assert triton_bwd.dot_flops(3, H, L, n, blocked=True) == H * 6 * per_pair
    recompute = triton_bwd.dot_flops(3, H, L, n, recompute_q=True, blocked=True)
    assert recompute == H * 6 * (per_pair + 8 * n * (32 + 16))


# ---------------------------------------------------------------------------------------------
# GPU


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("taps_of", ["S/3", "S"])
@pytest.mark.parametrize("n", [512, 1024, 2048, 4096, 8192])
def test_gpu_blocked_backward(n, taps_of, dtype):
    """The compiled kernel with the default configuration at every fused size (the split with
    Q through memory at 8192 for fp16/bf16), B = 3, H = 5, gated, all five gradients, every
    element written; L = 3S + 77 (4 blocks, the last partial: 12 sequences) and L = 2S + 77
    (3 blocks: 9 sequences, pairs across two batch rows and a half-empty last pair)."""
    from kernels.fftconv import triton_bwd

    S = n // 2
    taps = S // 3 if taps_of == "S/3" else S
    name = {v: k for k, v in DTYPES.items()}[dtype]
    for L in (3 * S + 77, 2 * S + 77):
        errs, ok = run_case(Case(3, 5, L, taps, name, n=n), device="cuda")
        assert ok, L
        assert errs.pop("unwritten") == 0, L
        assert set(errs) == set(NAMES)
        for grad, err in errs.items():
            assert err < TOL[dtype], (L, grad, err)
    assert triton_bwd.dot_flops(3, 5, 3 * S + 77, n, blocked=True) > 0


if __name__ == "__main__":
    _interpreter_main()
