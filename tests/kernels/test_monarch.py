"""The ``monarch`` backend against torch.fft: rfft/irfft, block skipping, flop counts, fftconv."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from kernels.fftconv import fftconv, monarch
from kernels.fftconv.plan import keep_bins_for

TOL = {torch.float32: 1e-5, torch.float64: 1e-12}
DTYPES = [
    pytest.param(torch.float32, id="fp32"),
    pytest.param(torch.float64, id="fp64"),
]
COMPLEX = {torch.float32: torch.complex64, torch.float64: torch.complex128}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.to(ref.dtype) - ref).norm() / ref.norm()).item()


def _full(n: int) -> int:
    return n // 2 + 1


# (n, length, keep_bins, batch): length is rfft's m (input samples) or irfft's out_len;
# keep_bins None keeps every bin. keep values come from plan.keep_bins_for or are arbitrary.
CASES = [
    pytest.param(2, 1, None, (3,), id="n2-len1-B3"),
    pytest.param(2, 2, 1, (), id="n2-len2-keep1-1d"),
    pytest.param(4, 3, None, (2, 5), id="n4-len3-B2x5"),
    pytest.param(4, 4, 2, (1,), id="n4-len4-keep2-B1"),
    pytest.param(8, 8, None, (7,), id="n8-len8-B7"),
    pytest.param(8, 5, 3, (3, 1, 2), id="n8-len5-keep3-B3x1x2"),
    pytest.param(16, 1, None, (5,), id="n16-len1-B5"),
    pytest.param(16, 16, 5, (2,), id="n16-len16-keep5-B2"),
    pytest.param(32, 17, None, (3,), id="n32-len17-B3"),
    pytest.param(32, 32, 3, (3,), id="n32-len32-keep3-B3"),
    pytest.param(64, 33, 9, (2, 3), id="n64-len33-keep9-B2x3"),
    pytest.param(64, 64, None, (5,), id="n64-len64-B5"),
    pytest.param(128, 127, 12, (3,), id="n128-len127-keep12-B3"),
    pytest.param(256, 97, None, (2, 3), id="n256-len97-B2x3"),
    pytest.param(256, 256, 97, (3,), id="n256-len256-keep97-B3"),
    pytest.param(512, 300, 33, (3,), id="n512-len300-keep33-B3"),
    pytest.param(1024, 1024, None, (3,), id="n1024-len1024-B3"),
    pytest.param(1024, 513, 160, (2,), id="n1024-len513-keep160-B2"),
    pytest.param(2048, 1000, None, (3,), id="n2048-len1000-B3"),
    pytest.param(4096, 4095, 257, (2,), id="n4096-len4095-keep257-B2"),
    pytest.param(8192, 4097, None, (3,), id="n8192-len4097-B3"),
    pytest.param(8192, 8192, 4096, (1,), id="n8192-len8192-keep4096-B1"),
    pytest.param(16384, 16384, None, (2,), id="n16384-len16384-B2"),
    pytest.param(16384, 129, 1024, (3,), id="n16384-len129-keep1024-B3"),
    pytest.param(32768, 20000, 1025, (2,), id="n32768-len20000-keep1025-B2"),
    pytest.param(65536, 65536, None, (2,), id="n65536-len65536-B2"),
    pytest.param(65536, 32768, 2048, (1,), id="n65536-len32768-keep2048-B1"),
    pytest.param(65536, 40001, 30001, (2,), id="n65536-len40001-keep30001-B2"),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("n", "m", "keep", "batch"), CASES)
def test_rfft_matches_torch_fft(n, m, keep, batch, dtype):
    keep = _full(n) if keep is None else keep
    g = torch.Generator().manual_seed(n + m)
    x = torch.randn(*batch, m, generator=g, dtype=torch.float64).to(dtype)
    ref = torch.fft.rfft(x.double(), n=n)
    ref[..., keep:] = 0

    out = monarch.rfft(x, n, keep)

    assert out.dtype == COMPLEX[dtype] and out.shape == (*batch, n // 2 + 1)
    assert rel_err(out, ref) < TOL[dtype]
    assert bool((out[..., keep:] == 0).all())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("n", "out_len", "keep", "batch"), CASES)
def test_irfft_matches_torch_fft(n, out_len, keep, batch, dtype):
    keep = _full(n) if keep is None else keep
    g = torch.Generator().manual_seed(n + out_len)
    X = torch.randn(*batch, n // 2 + 1, generator=g, dtype=torch.complex128)
    X[..., keep:] = 0
    ref = torch.fft.irfft(X, n=n)[..., :out_len]

    out = monarch.irfft(X.to(COMPLEX[dtype]), n, out_len, keep)

    assert out.dtype == dtype and out.shape == (*batch, out_len)
    assert rel_err(out, ref) < TOL[dtype]


@pytest.mark.parametrize(
    ("n", "out_len", "keep"),
    [
        pytest.param(64, 64, 9, id="n64-keep9"),
        pytest.param(4096, 1000, 257, id="n4096-keep257"),
        pytest.param(16384, 16384, 2048, id="n16384-keep2048"),
    ],
)
def test_irfft_reads_no_bin_past_keep(n, out_len, keep):
    """Bins >= keep_bins are treated as zero whatever they hold, as the torch backend does."""
    g = torch.Generator().manual_seed(n)
    X = torch.randn(2, n // 2 + 1, generator=g, dtype=torch.complex128)
    clean = X.clone()
    clean[..., keep:] = 0
    ref = torch.fft.irfft(clean, n=n)[..., :out_len]
    assert rel_err(monarch.irfft(X, n, out_len, keep), ref) < TOL[torch.float64]


@pytest.mark.parametrize("n", [pytest.param(2, id="n2"), pytest.param(1024, id="n1024")])
def test_irfft_ignores_imaginary_dc_and_nyquist(n):
    g = torch.Generator().manual_seed(1)
    X = torch.randn(3, n // 2 + 1, generator=g, dtype=torch.complex128)
    ref = torch.fft.irfft(X, n=n)
    assert rel_err(monarch.irfft(X, n, n, n // 2 + 1), ref) < TOL[torch.float64]


def test_round_trip_fp64():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 3, 777, generator=g, dtype=torch.float64)
    y = monarch.irfft(monarch.rfft(x, 2048, 1025), 2048, 777, 1025)
    assert rel_err(y, x) < TOL[torch.float64]


@pytest.mark.parametrize(
    "n",
    [
        pytest.param(n, id=f"n{n}")
        for n in (2, 32, 64, 256, 8192, 16384, 32768, 2**19, 2**20, 2**22, 2**26)
    ],
)
def test_factorization_rule(n):
    factors = monarch.factorize(n // 2)
    assert math.prod(factors) == n // 2
    # the ends are the largest factors: the last (frequency blocks), then the first (padding)
    assert factors[-1] == max(factors) and factors[0] == max(factors[:-1] or factors)
    if n // 2 <= monarch.SINGLE_MATRIX_MAX:
        assert len(factors) == 1
    else:
        assert 2 <= len(factors) and max(factors) <= 2**monarch.MAX_FACTOR_LOG2
        assert len(factors) == max(2, math.ceil(math.log2(n // 2) / monarch.MAX_FACTOR_LOG2))
    if n >= 256:  # whole 1/16 frequency steps are whole blocks of the last factor
        assert factors[-1] >= 16


@pytest.mark.parametrize(
    ("n", "keep"),
    [
        pytest.param(8, 5, id="n8-order1"),
        pytest.param(512, 33, id="n512-order2-keep33"),
        pytest.param(32768, 16385, id="n32768-order3"),
    ],
)
def test_permuted_order_is_the_documented_one(n, keep):
    """monarch_fft leaves bin k_1 + N_1 (k_2 + N_2 (...)) at position (k_1, k_2, ...)."""
    N = n // 2
    g = torch.Generator().manual_seed(3)
    z = torch.randn(2, N, generator=g, dtype=torch.complex128)
    tabs = monarch._tables(n, torch.device("cpu"), torch.complex128)
    plan = monarch.rfft_plan(n, n, keep)
    out = monarch.monarch_fft(z, tabs, plan)
    bins = monarch._layout(tabs, plan.freq_digits, keep).bin_at
    assert rel_err(out, torch.fft.fft(z)[:, bins]) < TOL[torch.float64]


# ---------------------------------------------------------------------------------------------
# Block skipping: the flop count is the matmul work that actually runs


def _measured_matmul_flops(n, m, out_len, keep, rows=3):
    x = torch.randn(rows, m)
    with FlopCounterMode(display=False) as counter:
        monarch.irfft(monarch.rfft(x, n, keep), n, out_len, keep)
    # FlopCounterMode counts 2 flops per multiply-add; flop_count counts 8 per complex one
    return 4 * counter.get_total_flops() // rows


@pytest.mark.parametrize(
    ("n", "m", "out_len", "keep"),
    [
        pytest.param(16, 16, 16, 9, id="n16-dense"),
        pytest.param(4096, 4096, 4096, 2049, id="n4096-dense"),
        pytest.param(4096, 2048, 2048, 2049, id="n4096-partial"),
        pytest.param(65536, 1000, 65536, 32769, id="n65536-short-input"),
        pytest.param(65536, 65536, 65536, 2048, id="n65536-freq-sparse"),
    ],
)
def test_flop_count_is_the_work_that_runs(n, m, out_len, keep):
    assert monarch.flop_count(n, m, out_len, keep) == _measured_matmul_flops(n, m, out_len, keep)


@pytest.mark.parametrize("n", [pytest.param(n, id=f"n{n}") for n in (64, 1024, 8192, 65536)])
def test_dense_flop_count(n):
    """Dense cost: each stage is N_s x N_s applied to N / N_s vectors, for rfft and irfft."""
    N = n // 2
    dense = 2 * 8 * N * sum(monarch.factorize(N))
    assert monarch.flop_count(n, n, n, n // 2 + 1) == dense


@pytest.mark.parametrize("n", [pytest.param(n, id=f"n{n}") for n in (64, 1024, 8192, 65536)])
def test_partial_convolution_skips_blocks(n):
    """A causal convolution of L = n/2 samples: half the input and half the output are skipped."""
    full = monarch.flop_count(n, n, n, n // 2 + 1)
    partial = monarch.flop_count(n, n // 2, n // 2, n // 2 + 1)
    assert partial < full
    # the first rfft stage and the last irfft stage (each N rows-blocks) do half their work
    assert full - partial == 2 * 8 * (n // 2) * monarch.factorize(n // 2)[0] // 2
    assert _measured_matmul_flops(n, n // 2, n // 2, n // 2 + 1) == partial


@pytest.mark.parametrize("n", [pytest.param(n, id=f"n{n}") for n in (64, 1024, 8192, 65536)])
def test_frequency_sparse_skips_blocks(n):
    full = monarch.flop_count(n, n, n, n // 2 + 1)
    quarter = monarch.flop_count(n, n, n, keep_bins_for(n, 0.25))
    sixteenth = monarch.flop_count(n, n, n, keep_bins_for(n, 1 / 16))
    assert sixteenth < quarter < full
    assert _measured_matmul_flops(n, n, n, keep_bins_for(n, 1 / 16)) == sixteenth


# ---------------------------------------------------------------------------------------------
# Cache, validation, plumbing


def test_tables_are_cached_and_shared():
    monarch.prepare(1024, "cpu", torch.float32)
    tabs = monarch._tables(1024, torch.device("cpu"), torch.complex64)
    monarch.rfft(torch.randn(2, 1024), 1024, 513)
    assert monarch._tables(1024, torch.device("cpu"), torch.complex64) is tabs
    mats = monarch._stage_matrices(tabs, monarch._cached_rfft_plan(1024, 1024, 513))
    monarch.rfft(torch.randn(5, 1000), 1024, 513)
    again = monarch._stage_matrices(tabs, monarch._cached_rfft_plan(1024, 1024, 513))
    assert all(a is b for a, b in zip(mats, again, strict=True))


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="power of two"):
        monarch.rfft(torch.randn(3, 6), 6, 4)
    with pytest.raises(ValueError, match="more than the FFT size"):
        monarch.rfft(torch.randn(3, 9), 8, 5)
    with pytest.raises(ValueError, match="n // 2 \\+ 1 = 5 bins"):
        monarch.irfft(torch.randn(3, 4, dtype=torch.complex64), 8, 8, 5)
    with pytest.raises(ValueError, match="out_len"):
        monarch.irfft(torch.randn(3, 5, dtype=torch.complex64), 8, 9, 5)


def test_autocast_does_not_change_the_result():
    x = torch.randn(3, 1000)
    ref = monarch.rfft(x, 2048, 1025)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = monarch.rfft(x, 2048, 1025)
        back = monarch.irfft(out, 2048, 1000, 1025)
    assert out.dtype == torch.complex64 and torch.equal(out, ref)
    assert back.dtype == torch.float32 and rel_err(back, x.double()) < TOL[torch.float32]


def test_correct_with_the_conjugate_key_excluded():
    """A custom op called from a torch.compile'd graph runs with the Conjugate dispatch key
    excluded, where a lazy ``conj()`` is silently dropped: the backend must not rely on it.
    The size is used by no other test, so the tables are built under the guard too."""
    n = 2**17
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 70000, generator=g, dtype=torch.float64)
    ref = torch.fft.rfft(x, n=n)
    conjugate = torch._C.DispatchKeySet(torch._C.DispatchKey.Conjugate)
    with torch._C._ExcludeDispatchKeyGuard(conjugate):
        X = monarch.rfft(x, n, n // 2 + 1)
        y = monarch.irfft(ref, n, 70000, n // 2 + 1)
    assert rel_err(X, ref) < TOL[torch.float64]
    assert rel_err(y, x) < TOL[torch.float64]


@pytest.mark.parametrize(
    ("B", "H", "L", "Lk", "mode", "freq_keep"),
    [
        pytest.param(2, 3, 97, 31, "causal", 1.0, id="B2-H3-L97-K31-causal"),
        pytest.param(1, 4, 300, 300, "causal", 0.25, id="B1-H4-L300-K300-causal-keep0.25"),
        pytest.param(2, 3, 100, 100, "circular", 1.0, id="B2-H3-L100-circular"),
        pytest.param(2, 3, 64, 41, "bidirectional", 1.0, id="B2-H3-L64-K41-bidir"),
    ],
)
def test_fftconv_monarch_matches_torch_backend(B, H, L, Lk, mode, freq_keep):
    g = torch.Generator().manual_seed(L)
    u = torch.randn(B, H, L, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(H, Lk, generator=g, dtype=torch.float64, requires_grad=True)
    pre, post = torch.randn(2, B, H, L, generator=g, dtype=torch.float64)
    bias = torch.randn(H, generator=g, dtype=torch.float64)
    dy = torch.randn(B, H, L, generator=g, dtype=torch.float64)

    results = {}
    for backend in ("torch", "monarch"):
        y = fftconv(
            u,
            k,
            pregate=pre,
            postgate=post,
            bias=bias,
            mode=mode,
            freq_keep=freq_keep,
            backend=backend,
        )
        du, dk = torch.autograd.grad(y, (u, k), dy)
        results[backend] = (y, du, dk)
    for out, ref in zip(results["monarch"], results["torch"], strict=True):
        assert rel_err(out, ref) < TOL[torch.float64]

    y32 = fftconv(u.float().detach(), k.float().detach(), mode=mode, backend="monarch")
    ref32 = fftconv(u.detach(), k.detach(), mode=mode, backend="torch")
    assert y32.dtype == torch.float32 and rel_err(y32, ref32) < TOL[torch.float32]


def test_fftconv_monarch_gradcheck():
    g = torch.Generator().manual_seed(5)
    u = torch.randn(2, 2, 13, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 7, generator=g, dtype=torch.float64, requires_grad=True)
    post = torch.randn(2, 2, 13, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda u, k, post: fftconv(u, k, postgate=post, backend="monarch"), (u, k, post)
    )


# ---------------------------------------------------------------------------------------------
# Long sizes (order 4)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("n", "m", "out_len", "keep"),
    [
        pytest.param(2**20, 2**19 + 3, 2**20, None, id="n2^20-partial-input"),
        pytest.param(2**20, 2**20, 2**19, 2**15, id="n2^20-keep2^15"),
        pytest.param(2**22, 2**22, 2**22, None, id="n2^22-dense"),
        pytest.param(2**22, 3_000_000, 1_000_001, 2**19, id="n2^22-partial-keep2^19"),
    ],
)
def test_long_sizes(n, m, out_len, keep, dtype):
    keep = _full(n) if keep is None else keep
    g = torch.Generator().manual_seed(7)
    x = torch.randn(m, generator=g, dtype=torch.float64).to(dtype)
    ref = torch.fft.rfft(x.double(), n=n)
    ref[..., keep:] = 0
    X = monarch.rfft(x, n, keep)
    assert rel_err(X, ref) < TOL[dtype]
    y = monarch.irfft(X, n, out_len, keep)
    assert rel_err(y, torch.fft.irfft(ref, n=n)[:out_len]) < TOL[dtype]
