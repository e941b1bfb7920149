"""The ``monarch`` backend: the real FFT written as Monarch matrix products in plain PyTorch.

This is the readable statement of the algorithm that the fused Triton kernels follow; the math
is in ``README.md`` next to this file. It implements the backend protocol of ``reference.py``
(``rfft``, ``irfft``, ``prepare``) without any ``torch.fft`` call.

Design choices:

- A real FFT of size ``n`` is a complex FFT of size ``N = n // 2`` on
  ``z[j] = x[2j] + i x[2j+1]`` followed by an unpack (the inverse: a pack, then a complex
  inverse FFT, then de-interleaving).
- The complex FFT is the Cooley-Tukey four-step algorithm applied recursively: ``N`` is split
  into factors ``N_1 * ... * N_d`` (``factorize``) and each stage is one batched matmul with a
  small DFT matrix ``F_{N_s}``, followed by an elementwise twiddle multiply. The forward leaves
  its output in a digit-reversed ("permuted") order and the inverse reads that order, so no
  transpose is ever materialised; the unpack and the pack read the permuted layout directly
  through precomputed gather indices (``_Layout``).
- Complex matmuls (complex64 for float32 input, complex128 for float64). A tensor-core kernel
  splits each into real matmuls; here the complex form is the clearer statement.
- Block skipping: the first forward stage reads only the rows of the input that are not zero
  padding; the last inverse stage writes only the rows that cover ``[0, out_len)``; with a
  frequency cut-off, the last forward stage and the first inverse stage touch only the blocks
  of the top frequency digit that hold kept bins (or their mirrors). ``flop_count`` sums the
  matmul work of exactly the stages that ``rfft``/``irfft`` run.
- Conjugates are always ``conj_physical``, never the lazy ``conj()`` view: a custom op's
  implementation called from a ``torch.compile``d graph runs with the Conjugate dispatch key
  excluded, and there a lazy conjugate is silently dropped.
- DFT matrices, twiddles and gather indices are built once per (size, device, dtype) in a
  module-level cache (``prepare``) and shared by every caller.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..backends import build_constants, canonical_device

# Factor rule: complex sizes up to SINGLE_MATRIX_MAX are one DFT matrix (order 1); larger sizes
# use the fewest factors of at most 2**MAX_FACTOR_LOG2 each, and never fewer than two.
SINGLE_MATRIX_MAX = 16
MAX_FACTOR_LOG2 = 6


# ---------------------------------------------------------------------------------------------
# Shapes only: factorisation and the stage plans (no tensors; shared by execution and flop_count)


def _log2_exact(n: int, name: str, minimum: int) -> int:
    if not isinstance(n, int) or n < minimum or n & (n - 1):
        raise ValueError(f"{name} must be a power of two >= {minimum}; got {n!r}")
    return n.bit_length() - 1


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def factorize(size: int) -> tuple[int, ...]:
    """Factors ``(N_1, ..., N_d)`` of the complex FFT size ``N``, their product ``N``.

    Order 1 (``(N,)``) up to ``SINGLE_MATRIX_MAX``; otherwise order
    ``d = max(2, ceil(log2(N) / MAX_FACTOR_LOG2))``: order 2 up to 64^2, order 3 up to 64^3,
    order 4 up to 64^4 (real sizes up to 2^25), and so on. The exponent is split as evenly as
    possible; the larger factors go to the ends, the last first, then the first: the first
    stage is where zero-padding rows are skipped and the last where frequency blocks are, so
    large end factors make both skips worth more (and the frequency blocks exact, N_d >= 16).
    """
    e = _log2_exact(size, "the complex FFT size", 1)
    if size <= SINGLE_MATRIX_MAX:
        return (size,)
    d = max(2, math.ceil(e / MAX_FACTOR_LOG2))
    exps = [e // d] * d
    for axis in [d - 1, *range(d - 1)][: e % d]:
        exps[axis] += 1
    return tuple(1 << x for x in exps)


@dataclass(frozen=True)
class Stage:
    """One Monarch stage: the DFT matrix of ``factor``, restricted to ``rows`` x ``cols``.

    The stage transforms one axis of the ``[N_1, ..., N_d]`` view. ``rows`` are the output
    indices computed and ``cols`` the input indices read (a skipped index is a block of
    ``batch`` zeros or of unneeded results). ``batch`` is the number of vectors the matrix is
    applied to per transformed row of the user's tensor (the size of all other axes).
    """

    axis: int
    factor: int
    rows: tuple[int, ...]
    cols: tuple[int, ...]
    batch: int

    @property
    def macs(self) -> int:
        """Complex multiply-adds of this stage's matmul, per transformed row."""
        return len(self.rows) * len(self.cols) * self.batch


@dataclass(frozen=True)
class TransformPlan:
    """The stages of one rfft (``inverse=False``) or irfft (``inverse=True``), in run order."""

    n: int
    inverse: bool
    factors: tuple[int, ...]
    stages: tuple[Stage, ...]
    freq_digits: tuple[int, ...]  # values of the top frequency digit that are computed/read
    time_rows: int  # rows of axis 0 read (rfft) or written (irfft); a row is N / N_1 samples


def _freq_digits(factors: tuple[int, ...], keep: int) -> tuple[int, ...]:
    """Values of the top digit ``k_d`` of ``k = k_1 + N_1 (k_2 + N_2 (...))`` that are needed.

    The real-input trick ties bin ``k`` of the real spectrum to complex bins ``k`` and
    ``N - k``, so with bins ``[0, keep)`` kept the complex bins needed are
    ``[0, keep) U (N - keep, N)``. Bin ``k`` has top digit ``k // S`` with ``S = N / N_d``.
    """
    N = math.prod(factors)
    top, S = factors[-1], N // factors[-1]
    if keep > N // 2:  # the two ranges meet: every block holds a needed bin
        return tuple(range(top))
    low = range(0, _ceil_div(keep, S))  # blocks holding bins [0, keep)
    high = range((N - keep + 1) // S, top)  # blocks holding bins (N - keep, N)
    return tuple(sorted(set(low) | set(high)))


def _time_rows(factors: tuple[int, ...], real_len: int) -> int:
    """Rows of axis 0 (each ``N / N_1`` complex samples) that cover ``real_len`` real samples."""
    row = math.prod(factors) // factors[0]
    return max(1, _ceil_div(_ceil_div(real_len, 2), row))


def rfft_plan(n: int, m: int, keep_bins: int) -> TransformPlan:
    """Stages of ``rfft`` for ``m`` nonzero input samples and bins ``[0, keep_bins)`` kept."""
    factors = factorize(n // 2)
    d, N = len(factors), n // 2
    digits = _freq_digits(factors, keep_bins)
    rows_in = _time_rows(factors, m)
    stages = []
    for s, f in enumerate(factors):
        rows = digits if s == d - 1 else tuple(range(f))
        cols = tuple(range(rows_in)) if s == 0 else tuple(range(f))
        stages.append(Stage(s, f, rows, cols, N // f))
    return TransformPlan(n, False, factors, tuple(stages), digits, rows_in)


def irfft_plan(n: int, out_len: int, keep_bins: int) -> TransformPlan:
    """Stages of ``irfft`` for bins ``[0, keep_bins)`` nonzero and ``out_len`` samples wanted."""
    factors = factorize(n // 2)
    d, N = len(factors), n // 2
    digits = _freq_digits(factors, keep_bins)
    rows_out = _time_rows(factors, out_len)
    stages = []
    for s in reversed(range(d)):
        f = factors[s]
        rows = tuple(range(rows_out)) if s == 0 else tuple(range(f))
        cols = digits if s == d - 1 else tuple(range(f))
        stages.append(Stage(s, f, rows, cols, N // f))
    return TransformPlan(n, True, factors, tuple(stages), digits, rows_out)


def rfft_flops(n: int, m: int, keep_bins: int) -> int:
    """Real flops of the matmuls of ``rfft(x[..., :m], n, keep_bins)`` per row (8 per complex
    multiply-add; twiddles, packing and gathers are elementwise and not counted)."""
    return 8 * sum(s.macs for s in _cached_rfft_plan(n, m, keep_bins).stages)


def irfft_flops(n: int, out_len: int, keep_bins: int) -> int:
    """Real flops of the matmuls of ``irfft(X, n, out_len, keep_bins)`` per row."""
    return 8 * sum(s.macs for s in _cached_irfft_plan(n, out_len, keep_bins).stages)


def flop_count(n: int, m: int, out_len: int, keep_bins: int) -> int:
    """Matmul flops of one convolution row: ``rfft`` of ``m`` samples, ``irfft`` to ``out_len``.

    ``flop_count(n, n, n, n // 2 + 1)`` is the dense cost; anything smaller is skipped work.
    """
    return rfft_flops(n, m, keep_bins) + irfft_flops(n, out_len, keep_bins)


# Plans depend on (n, m, keep) only through a handful of integers; memoise on the clamped ones.
_PLANS: dict[tuple, TransformPlan] = {}


def _cached_rfft_plan(n: int, m: int, keep: int) -> TransformPlan:
    factors = factorize(n // 2)
    key = ("rfft", n, _time_rows(factors, m), min(keep, n // 2 + 1))
    if key not in _PLANS:
        _PLANS[key] = rfft_plan(n, m, key[3])
    return _PLANS[key]


def _cached_irfft_plan(n: int, out_len: int, keep: int) -> TransformPlan:
    factors = factorize(n // 2)
    key = ("irfft", n, _time_rows(factors, out_len), min(keep, n // 2 + 1))
    if key not in _PLANS:
        _PLANS[key] = irfft_plan(n, out_len, key[3])
    return _PLANS[key]


# ---------------------------------------------------------------------------------------------
# Tensors: DFT matrices, twiddles, gather layouts (cached per size, device, dtype)


def _roots(exponents: Tensor, size: int) -> Tensor:
    """``w_size ** exponents`` with ``w_size = exp(-2 pi i / size)``, in complex128.

    Exponents are reduced modulo ``size`` in integers first so the angle stays accurate.
    """
    angle = (exponents % size).to(torch.float64) * (-2.0 * math.pi / size)
    return torch.polar(torch.ones_like(angle), angle)


def dft_matrix(size: int) -> Tensor:
    """``F[k, j] = w_size^(k j)``, complex128 ``[size, size]``."""
    idx = torch.arange(size, dtype=torch.int64)
    return _roots(idx[:, None] * idx[None, :], size)


@dataclass
class _Layout:
    """Gather indices between the natural bin order and the (restricted) permuted layout.

    The forward's output and the inverse's input live in the layout ``[N_1, ..., N_{d-1}, K]``
    (row-major), where ``K`` are the computed values of the top digit; position ``p`` holds
    complex bin ``bin_at[p]``.
    """

    bin_at: Tensor  # [P] int64
    unpack_a: Tensor  # [keep] positions of Z[k mod N], k < keep
    unpack_b: Tensor  # [keep] positions of Z[(N - k) mod N]
    unpack_wa: Tensor  # [keep] (1 - i w_n^k) / 2
    unpack_wb: Tensor  # [keep] (1 + i w_n^k) / 2
    pack_a: Tensor  # [P] bins X[k] read for position p (k = bin_at[p])
    pack_b: Tensor  # [P] bins X[N - k]
    pack_wa: Tensor  # [P] (1 + i w_n^-k) / (2N), zero where k >= keep
    pack_wb: Tensor  # [P] (1 - i w_n^-k) / (2N), zero where N - k >= keep


@dataclass
class _Tables:
    """Everything ``rfft``/``irfft`` of one size need on one device in one complex dtype."""

    n: int
    factors: tuple[int, ...]
    dft: dict[int, Tensor]  # factor -> F_factor
    idft: dict[int, Tensor]  # factor -> conj(F_factor)
    twiddle: list[Tensor]  # s < d-1: [N_s, N_{s+1} ... N_d], T_s[k, j] = w_{M_s}^(k j)
    twiddle_conj: list[Tensor]
    matrices: dict[tuple, list[Tensor]] = field(default_factory=dict)  # plan -> stage matrices
    layouts: dict[tuple, _Layout] = field(default_factory=dict)  # (freq digits, keep) -> layout


_CACHE: dict[tuple[int, torch.device, torch.dtype], _Tables] = {}


def _complex_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype in (torch.float64, torch.complex128) else torch.complex64


def _tables(n: int, device: torch.device, cdtype: torch.dtype) -> _Tables:
    key = (n, device, cdtype)
    if key not in _CACHE:
        _CACHE[key] = build_constants(
            device,
            f"Monarch DFT tables for n={n} ({cdtype})",
            lambda: _build_tables(n, device, cdtype),
        )
    return _CACHE[key]


def _build_tables(n: int, device: torch.device, cdtype: torch.dtype) -> _Tables:
    factors = factorize(n // 2)
    dft = {f: dft_matrix(f).to(device=device, dtype=cdtype) for f in set(factors)}
    twiddle = []
    for s in range(len(factors) - 1):
        rest = math.prod(factors[s + 1 :])
        k = torch.arange(factors[s], dtype=torch.int64)[:, None]
        j = torch.arange(rest, dtype=torch.int64)[None, :]
        twiddle.append(_roots(k * j, factors[s] * rest).to(device=device, dtype=cdtype))
    return _Tables(
        n=n,
        factors=factors,
        dft=dft,
        idft={f: torch.conj_physical(m) for f, m in dft.items()},
        twiddle=twiddle,
        twiddle_conj=[torch.conj_physical(t) for t in twiddle],
    )


def prepare(n: int, device: torch.device | str, dtype: torch.dtype) -> None:
    """Builds the DFT matrices and twiddles of size ``n`` on ``device`` ahead of the first call.

    ``dtype`` may be the real dtype of the data (float32 -> complex64 tables, float64 ->
    complex128) or the complex dtype itself. One copy per (size, device, dtype) is shared by
    every layer.
    """
    _log2_exact(n, "n", 2)
    _tables(n, canonical_device(device), _complex_dtype(dtype))


def _stage_matrices(tabs: _Tables, plan: TransformPlan) -> list[Tensor]:
    """The restricted DFT matrix of each stage, ``F[rows][:, cols]``, built once per plan."""
    key = (plan.inverse, plan.stages)
    if key not in tabs.matrices:
        full = tabs.idft if plan.inverse else tabs.dft

        def build() -> list[Tensor]:
            mats = []
            for st in plan.stages:
                m = full[st.factor]
                device = m.device
                if len(st.rows) < st.factor:
                    m = m.index_select(0, torch.tensor(st.rows, device=device))
                if len(st.cols) < st.factor:
                    m = m.index_select(1, torch.tensor(st.cols, device=device))
                mats.append(m.contiguous())
            return mats

        device = full[plan.stages[0].factor].device
        what = f"Monarch stage matrices for n={tabs.n}"
        tabs.matrices[key] = build_constants(device, what, build)
    return tabs.matrices[key]


def _layout(tabs: _Tables, digits: tuple[int, ...], keep: int) -> _Layout:
    key = (digits, keep)
    if key not in tabs.layouts:
        device = tabs.dft[tabs.factors[0]].device
        what = f"Monarch bin layouts for n={tabs.n}"
        tabs.layouts[key] = build_constants(device, what, lambda: _build_layout(tabs, digits, keep))
    return tabs.layouts[key]


def _build_layout(tabs: _Tables, digits: tuple[int, ...], keep: int) -> _Layout:
    factors, n = tabs.factors, tabs.n
    N = n // 2
    device, cdtype = tabs.dft[factors[0]].device, tabs.dft[factors[0]].dtype
    # bin k = k_1 + N_1 k_2 + N_1 N_2 k_3 + ...: digit s has stride N_1 ... N_{s-1}
    strides = [math.prod(factors[:s]) for s in range(len(factors))]
    axes = [torch.arange(f, dtype=torch.int64) for f in factors[:-1]]
    axes.append(torch.tensor(digits, dtype=torch.int64))
    bin_at = torch.zeros([len(a) for a in axes], dtype=torch.int64)
    for s, (a, stride) in enumerate(zip(axes, strides, strict=True)):
        shape = [1] * len(axes)
        shape[s] = -1
        bin_at = bin_at + (a * stride).view(shape)
    bin_at = bin_at.flatten()
    position = torch.full((N,), -1, dtype=torch.int64)
    position[bin_at] = torch.arange(bin_at.numel())

    k = torch.arange(keep, dtype=torch.int64)
    unpack_a, unpack_b = position[k % N], position[(N - k) % N]
    if bool((unpack_a < 0).any() or (unpack_b < 0).any()):
        raise AssertionError("a kept bin lies in a skipped frequency block")
    w = _roots(k, n)  # w_n^k
    unpack_wa, unpack_wb = (1 - 1j * w) / 2, (1 + 1j * w) / 2

    # the 1/N of the inverse DFT is folded in here: a power of two, so it costs no rounding
    w_inv = _roots(-bin_at, n)  # w_n^-k
    pack_wa = torch.where(bin_at < keep, (1 + 1j * w_inv) / (2 * N), 0)
    pack_wb = torch.where(N - bin_at < keep, (1 - 1j * w_inv) / (2 * N), 0)

    def dev(t: Tensor) -> Tensor:
        return t.to(device=device, dtype=cdtype if t.is_complex() else torch.int64)

    return _Layout(
        bin_at=dev(bin_at),
        unpack_a=dev(unpack_a),
        unpack_b=dev(unpack_b),
        unpack_wa=dev(unpack_wa),
        unpack_wb=dev(unpack_wb),
        pack_a=dev(bin_at),
        pack_b=dev(N - bin_at),
        pack_wa=dev(pack_wa),
        pack_wb=dev(pack_wb),
    )


# ---------------------------------------------------------------------------------------------
# The Monarch FFT


def _apply_stage(mat: Tensor, x: Tensor, before: int, length: int, after: int) -> Tensor:
    """``mat`` ``[r, length]`` applied along the middle axis of ``x`` viewed ``[before, length,
    after]`` -> ``[before, r, after]``."""
    if after == 1:  # the transformed axis is the last one: a single GEMM
        return (x.reshape(before, length) @ mat.T).reshape(before, -1, 1)
    return torch.matmul(mat, x.reshape(before, length, after))


def monarch_fft(z: Tensor, tabs: _Tables, plan: TransformPlan) -> Tensor:
    """Complex FFT of size ``N`` along the last axis, natural order in, permuted order out.

    ``z`` ``[B, rows_in * N / N_1]``: the first samples of the input, the rest zero.
    Returns ``[B, P]``: the layout ``[N_1, ..., N_{d-1}, K]``, position ``(k_1, ..., k_d)``
    holding ``Z[k_1 + N_1 (k_2 + N_2 (... + N_{d-1} k_d))]``.
    """
    factors, mats = tabs.factors, _stage_matrices(tabs, plan)
    B, d = z.shape[0], len(factors)
    x = z
    for st, mat in zip(plan.stages, mats, strict=True):
        s = st.axis
        before, after = B * math.prod(factors[:s]), math.prod(factors[s + 1 :])
        # [before, N_s (cols), after] -> [before, N_s (rows), after]: j_s -> k_s
        x = _apply_stage(mat, x, before, len(st.cols), after)
        if s < d - 1:
            # x[.., k_s, j'] *= w_{N_s ... N_d}^(k_s j'), j' the natural index of the later axes
            x = x * tabs.twiddle[s]
    return x.reshape(B, -1)


def monarch_ifft(Z: Tensor, tabs: _Tables, plan: TransformPlan) -> Tensor:
    """Inverse of ``monarch_fft`` without the ``1/N``: permuted order in, natural order out.

    ``Z`` ``[B, P]`` in the layout ``[N_1, ..., N_{d-1}, K]``; returns ``[B, rows_out * N / N_1]``
    the first samples of the (unnormalised) inverse. Stages run last axis first, each the
    conjugate of its forward stage: ``k_s -> j_s``, then the conjugate twiddle of stage s-1.
    """
    factors, mats = tabs.factors, _stage_matrices(tabs, plan)
    B = Z.shape[0]
    x = Z
    for st, mat in zip(plan.stages, mats, strict=True):
        s = st.axis
        before, after = B * math.prod(factors[:s]), math.prod(factors[s + 1 :])
        # [before, N_s (cols), after] -> [before, N_s (rows), after]: k_s -> j_s
        x = _apply_stage(mat, x, before, len(st.cols), after)
        if s > 0:
            # [.., k_{s-1}, j'] *= conj(w)^(k_{s-1} j'), j' the natural index of axes s..d
            f = factors[s - 1]
            x = x.reshape(B * math.prod(factors[: s - 1]), f, -1) * tabs.twiddle_conj[s - 1]
    return x.reshape(B, -1)


# ---------------------------------------------------------------------------------------------
# The backend protocol


def rfft(x: Tensor, n: int, keep_bins: int) -> Tensor:
    """Real FFT of ``x`` ``[..., m]`` (zero-padded to ``n``) -> ``[..., n//2+1]``, bins
    ``>= keep_bins`` zero. float64 in -> complex128 out; other float dtypes -> complex64."""
    _log2_exact(n, "n", 2)
    m, N = x.shape[-1], n // 2
    if m > n:
        raise ValueError(f"x has {m} samples, more than the FFT size n={n}")
    if x.is_complex():
        raise TypeError(f"x must be real; got {x.dtype}")
    rdtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    cdtype = _complex_dtype(rdtype)
    batch = x.shape[:-1]
    keep = min(keep_bins, N + 1)
    if keep <= 0 or x.numel() == 0:
        return torch.zeros(*batch, N + 1, dtype=cdtype, device=x.device)

    tabs = _tables(n, canonical_device(x.device), cdtype)
    plan = _cached_rfft_plan(n, m, keep)
    layout = _layout(tabs, plan.freq_digits, keep)
    row = N // tabs.factors[0]

    # z[j] = x[2j] + i x[2j+1], only the rows of the first stage that hold input
    x = x.reshape(-1, m).to(rdtype)
    x = torch.nn.functional.pad(x, (0, 2 * plan.time_rows * row - m))  # [B, 2 * rows * row]
    z = torch.complex(x[:, 0::2], x[:, 1::2])  # [B, rows * row]
    Z = monarch_fft(z, tabs, plan)  # [B, P] permuted

    # X[k] = (Z[k] + conj Z[N-k]) / 2 - i w_n^k (Z[k] - conj Z[N-k]) / 2,  k < keep
    za = Z.index_select(1, layout.unpack_a)  # [B, keep]
    zb = Z.index_select(1, layout.unpack_b).conj_physical()
    X = za * layout.unpack_wa + zb * layout.unpack_wb
    if keep < N + 1:  # the dropped bins are exact zeros
        X = torch.cat([X, X.new_zeros(X.shape[0], N + 1 - keep)], dim=1)
    return X.reshape(*batch, N + 1)


def irfft(X: Tensor, n: int, out_len: int, keep_bins: int) -> Tensor:
    """First ``out_len`` samples of the length-``n`` inverse real FFT of ``X`` ``[..., n//2+1]``
    (bins ``>= keep_bins`` treated as zero). Normalised like ``torch.fft.irfft``; the imaginary
    parts of the DC and Nyquist bins are ignored, as there."""
    _log2_exact(n, "n", 2)
    N = n // 2
    if X.shape[-1] != N + 1:
        raise ValueError(f"X must have n // 2 + 1 = {N + 1} bins; got shape {tuple(X.shape)}")
    if not 1 <= out_len <= n:
        raise ValueError(f"out_len must be in [1, n={n}]; got {out_len}")
    cdtype = torch.complex128 if X.dtype == torch.complex128 else torch.complex64
    rdtype = torch.float64 if cdtype == torch.complex128 else torch.float32
    batch = X.shape[:-1]
    keep = min(keep_bins, N + 1)
    if keep <= 0 or X.numel() == 0:
        return torch.zeros(*batch, out_len, dtype=rdtype, device=X.device)

    tabs = _tables(n, canonical_device(X.device), cdtype)
    plan = _cached_irfft_plan(n, out_len, keep)
    layout = _layout(tabs, plan.freq_digits, keep)

    # Z[k] = X[k] (1 + i w_n^-k) / 2 + conj X[N-k] (1 - i w_n^-k) / 2, in the permuted layout,
    # only in the blocks that hold kept bins; the 1/N of the inverse is in the weights
    X = X.reshape(-1, N + 1).to(cdtype)
    xa = X.index_select(1, layout.pack_a)  # [B, P]
    xb = X.index_select(1, layout.pack_b).conj_physical()
    Z = xa * layout.pack_wa + xb * layout.pack_wb
    # position 0 is bin 0, built from X[0] and X[N]: their imaginary parts do not exist
    Z[:, 0] = X[:, 0].real * layout.pack_wa[0] + X[:, N].real * layout.pack_wb[0]

    z = monarch_ifft(Z, tabs, plan)  # [B, rows * row] natural
    x = torch.view_as_real(z).reshape(z.shape[0], -1)  # x[2j] = Re z[j], x[2j+1] = Im z[j]
    return x[:, :out_len].reshape(*batch, out_len)
