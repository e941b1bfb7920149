"""The Triton kernels of the long FFT convolution (``triton_long.py`` has the math, the design
and the host launcher).

Two versions of the rows kernel (C), picked by ``triton_long.RowsConfig``: ``rows_kernel`` (v1)
and ``rows_kernel_held`` (twiddles folded into the tables, tables held across the step loop,
the loop software-pipelined). ``rows_cross_kernel``: the backward's filter gradient, the
forward half of the held kernel on two intermediates and their accumulated cross-spectrum.

Indexing shared by the three kernels. A *signal* is a pair of sequences ``(2 bp, 2 bp + 1)`` of
channel h as one complex signal ``v + i w``. A launch covers a rectangle of signals, channels
``h0 + [0, count_h)`` times pairs ``b0 + [0, NBC)``, stored in the intermediate at index
``j = h_local * NBC + bp_local`` (``[j, re|im, k0, t1]``, operand dtype). A program takes
``STEPS`` consecutive pairs of one channel (masked past ``NBC``) and holds its tables across
them.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .triton_fwd import _complex_dot, _dot, _load_complex, _load_row


@triton.jit
def _twiddle(k, t, N, CONJ: tl.constexpr):
    """``exp(-+2 pi i k t / N)`` (``+`` when CONJ) for integers with ``k t < 2^31`` and N a
    power of two: the exponent is reduced to ``[-N/2, N/2]`` exactly, in integers, before the
    fp32 angle."""
    r = (k * t) & (N - 1)
    r = tl.where(r > N // 2, r - N, r)
    angle = r.to(tl.float32) * (6.283185307179586 / N)
    if CONJ:
        return tl.cos(angle), tl.sin(angle)
    return tl.cos(angle), -tl.sin(angle)


@triton.jit
def _program(pid, NBC, STEPS: tl.constexpr, INNER):
    """Program id -> (index along the inner grid axis, channel in the launch, first pair in the
    channel); the inner axis (column block or row k0) varies fastest."""
    groups = tl.cdiv(NBC, STEPS)
    pid_x = pid % INNER
    rest = pid // INNER
    pid_g = rest % groups
    return pid_x, rest // groups, pid_g * STEPS


@triton.jit
def _pair(h_local, bp_local, h0, b0, NBC, B, H, L):
    """Row offsets of a pair's two sequences in ``[B, H, L]`` tensors (64-bit), whether the
    step is real and whether its second sequence exists, and its intermediate index."""
    valid = bp_local < NBC
    b = (b0 + bp_local) * 2
    row_v = (b.to(tl.int64) * H + h0 + h_local) * L
    row_w = row_v + H.to(tl.int64) * L
    return row_v, row_w, valid, valid & (b + 1 < B), h_local * NBC + bp_local


@triton.jit
def _load_pair(u_ptr, pregate_ptr, row_v, row_w, offs_t, mask_v, mask_w, HAS_PREGATE: tl.constexpr):
    v = _load_row(u_ptr, row_v, offs_t, mask_v)
    w = _load_row(u_ptr, row_w, offs_t, mask_w)
    if HAS_PREGATE:
        v *= _load_row(pregate_ptr, row_v, offs_t, mask_v)
        w *= _load_row(pregate_ptr, row_w, offs_t, mask_w)
    return v, w


@triton.jit
def _store_outputs(
    z_v,
    z_w,
    offs_t,
    mask_v,
    mask_w,
    row_v,
    row_w,
    bias,
    u_ptr,
    pregate_ptr,
    postgate_ptr,
    y_ptr,
    HAS_PREGATE: tl.constexpr,
    HAS_POSTGATE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BIAS_GATED: tl.constexpr,
):
    """``y = postgate * z + bias * (u [* pregate])`` for both sequences of a pair."""
    if HAS_POSTGATE:
        z_v *= _load_row(postgate_ptr, row_v, offs_t, mask_v)
        z_w *= _load_row(postgate_ptr, row_w, offs_t, mask_w)
    if HAS_BIAS:
        src_v, src_w = _load_pair(
            u_ptr, pregate_ptr, row_v, row_w, offs_t, mask_v, mask_w, HAS_PREGATE and BIAS_GATED
        )
        z_v += bias * src_v
        z_w += bias * src_w
    tl.store(y_ptr + row_v + offs_t, z_v.to(y_ptr.dtype.element_ty), mask=mask_v)
    tl.store(y_ptr + row_w + offs_t, z_w.to(y_ptr.dtype.element_ty), mask=mask_w)


# B, H and the launch rectangle only index programs and rows: no recompilation per batch size,
# width or chunk. L stays specialised: its divisibility by 16 lets the row loads vectorise.
@triton.jit(do_not_specialize=["B", "H", "h0", "b0", "NBC"])
def cols_fwd_kernel(
    u_ptr,  # [B, H, L]
    pregate_ptr,  # [B, H, L] (unused unless HAS_PREGATE)
    buf_ptr,  # [count_h * NBC, 2, N0, M] operand dtype
    dft_ptr,  # [2, N0T, N0T] U_N0 zero-padded, operand dtype
    B,
    H,
    L,
    h0,
    b0,
    NBC,
    N0: tl.constexpr,
    M: tl.constexpr,
    N0T: tl.constexpr,  # N0 padded to >= 16
    ROWS: tl.constexpr,  # rows t0 that hold input, a power of two in [16, N0T]
    BT: tl.constexpr,  # columns t1 per program
    STEPS: tl.constexpr,
    HAS_PREGATE: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """(A), one level: ``C = U_N0[:, :ROWS] @ x[:ROWS]`` (``[k0, t1]``; the twiddle
    ``w_n^(t1 k0)`` is left to the rows kernel)."""
    N: tl.constexpr = N0 * M
    pid_c, pid_h, first = _program(tl.program_id(0), NBC, STEPS, M // BT)
    op_dtype = dft_ptr.dtype.element_ty
    offs_r = tl.arange(0, ROWS)
    offs_c = pid_c * BT + tl.arange(0, BT)
    offs_k = tl.arange(0, N0T)
    offs_t = offs_r[:, None] * M + offs_c[None, :]  # [ROWS, BT] time index
    offs_o = offs_k[:, None] * M + offs_c[None, :]  # [N0T, BT]
    mask_k = (offs_k[:, None] < N0) & (offs_c[None, :] < M)
    f_re, f_im = _load_complex(dft_ptr, offs_k[:, None] * N0T + offs_r[None, :], N0T * N0T)

    for step in tl.range(0, STEPS):
        row_v, row_w, valid, has_w, j = _pair(pid_h, first + step, h0, b0, NBC, B, H, L)
        mask_v = (offs_t < L) & valid
        v, w = _load_pair(
            u_ptr, pregate_ptr, row_v, row_w, offs_t, mask_v, mask_v & has_w, HAS_PREGATE
        )
        x_re, x_im = _complex_dot(f_re, f_im, v.to(op_dtype), w.to(op_dtype), PRECISION)
        start = j.to(tl.int64) * (2 * N)
        tl.store(buf_ptr + start + offs_o, x_re.to(op_dtype), mask=mask_k & valid)
        tl.store(buf_ptr + start + N + offs_o, x_im.to(op_dtype), mask=mask_k & valid)


@triton.jit(do_not_specialize=["B", "H", "h0", "b0", "NBC"])
def cols_fwd2_kernel(
    u_ptr,
    pregate_ptr,
    buf_ptr,
    dft_p_ptr,  # [2, P, P]
    dft_q_ptr,  # [2, Q, Q]
    tw_ptr,  # [2, P, Q] fp32: w_N0^(c b)
    B,
    H,
    L,
    h0,
    b0,
    NBC,
    P: tl.constexpr,
    Q: tl.constexpr,
    M: tl.constexpr,
    ROWS: tl.constexpr,  # values of a (t0 = Q a + b) that hold input, a power of two in [16, P]
    BT: tl.constexpr,
    STEPS: tl.constexpr,
    HAS_PREGATE: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """(A), two levels, ``N0 = P Q``, ``t0 = Q a + b``, ``k0 = c + P d``; the tile is
    ``[a|c, column, b|d]`` so both products act on an end axis of the same registers."""
    N: tl.constexpr = P * Q * M
    pid_c, pid_h, first = _program(tl.program_id(0), NBC, STEPS, M // BT)
    op_dtype = dft_p_ptr.dtype.element_ty
    offs_a = tl.arange(0, ROWS)
    offs_p = tl.arange(0, P)
    offs_q = tl.arange(0, Q)
    offs_c = pid_c * BT + tl.arange(0, BT)
    offs_t = (offs_a[:, None, None] * Q + offs_q[None, None, :]) * M + offs_c[None, :, None]
    offs_o = (offs_p[:, None, None] + P * offs_q[None, None, :]) * M + offs_c[None, :, None]
    fp_re, fp_im = _load_complex(dft_p_ptr, offs_p[:, None] * P + offs_a[None, :], P * P)
    fq_re, fq_im = _load_complex(dft_q_ptr, offs_q[:, None] * Q + offs_q[None, :], Q * Q)
    t_re, t_im = _load_complex(tw_ptr, offs_p[:, None] * Q + offs_q[None, :], P * Q)  # [P, Q]
    t_re = t_re[:, None, :]
    t_im = t_im[:, None, :]

    for step in tl.range(0, STEPS):
        row_v, row_w, valid, has_w, j = _pair(pid_h, first + step, h0, b0, NBC, B, H, L)
        mask_v = (offs_t < L) & valid  # [ROWS, BT, Q]
        v, w = _load_pair(
            u_ptr, pregate_ptr, row_v, row_w, offs_t, mask_v, mask_v & has_w, HAS_PREGATE
        )
        v = tl.reshape(v.to(op_dtype), (ROWS, BT * Q))
        w = tl.reshape(w.to(op_dtype), (ROWS, BT * Q))
        # level 1 over a -> c: [P, ROWS] @ [ROWS, BT*Q], then the twiddle w_N0^(c b)
        y_re, y_im = _complex_dot(fp_re, fp_im, v, w, PRECISION)
        y_re = tl.reshape(y_re, (P, BT, Q))
        y_im = tl.reshape(y_im, (P, BT, Q))
        g_re = tl.reshape((y_re * t_re - y_im * t_im).to(op_dtype), (P * BT, Q))
        g_im = tl.reshape((y_re * t_im + y_im * t_re).to(op_dtype), (P * BT, Q))
        # level 2 over b -> d: [P*BT, Q] @ [Q, Q] (U_Q is symmetric)
        x_re, x_im = _complex_dot(g_re, g_im, fq_re, fq_im, PRECISION)
        start = j.to(tl.int64) * (2 * N)
        tl.store(buf_ptr + start + offs_o, tl.reshape(x_re, (P, BT, Q)).to(op_dtype), mask=valid)
        tl.store(
            buf_ptr + start + N + offs_o, tl.reshape(x_im, (P, BT, Q)).to(op_dtype), mask=valid
        )


# N0 only indexes programs and rows: one compilation serves every n with the same inner size
@triton.jit(do_not_specialize=["h0", "NBC", "N0"])
def rows_kernel(
    buf_ptr,  # [count_h * NBC, 2, N0, M] operand dtype, read and written in place
    kf_ptr,  # [H, N0, 2, M1, M2] fp32
    dft1_ptr,  # [2, M1, M1] operand dtype (triton_fwd.constants(M))
    dft2_ptr,  # [2, M2, M2]
    twiddle_ptr,  # [2, M1, M2] fp32
    h0,
    NBC,
    N0,  # outer size: rows per signal
    M1: tl.constexpr,
    M2: tl.constexpr,
    STEPS: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """(C): per row k0, ``E = w_n^(-t1 k0) IFFT_m(FFT_m(w_n^(t1 k0) C[k0]) * K[k0 + N0 k1])``,
    the length-m transforms as ``triton_fwd``'s two-stage Monarch on a complex tile.

    The global twiddle of a row factors over the tile, ``t1 = M2 a + b``:
    ``w_n^(k0 t1) = alpha[a] beta[b]`` with ``alpha[a] = w_n^(k0 M2 a)``, ``beta[b] = w_n^(k0 b)``:
    M1 + M2 cos/sin per program, not m. alpha scales the columns of ``U_M1`` (the index the
    first product sums over), beta the columns of its product; the inverse multiplies the fp32
    result by both conjugates. So the data is rounded no more often than without the twiddle.

    The tables are loaded where they are used, inside the loop over steps, and the compiler
    keeps them there (the sm_90 TTGIR of m = 1024 with 4 steps loads the DFT matrices, the
    twiddle and the filter slice, and rebuilds the twiddled ``U_M1``, at every step: the
    stores into the intermediate may alias them). So steps save nothing here; one step from
    m = 4096 on keeps them live only as long as they are needed. ``rows_kernel_held`` is the
    version that holds them (``triton_long.RowsConfig``).
    """
    M: tl.constexpr = M1 * M2
    N = N0 * M
    pid_k, pid_h, first = _program(tl.program_id(0), NBC, STEPS, N0)
    op_dtype = dft1_ptr.dtype.element_ty
    offs_1 = tl.arange(0, M1)
    offs_2 = tl.arange(0, M2)
    offs_tile = offs_1[:, None] * M2 + offs_2[None, :]  # [M1, M2]: t1 = M2 a + b
    offs_f1 = offs_1[:, None] * M1 + offs_1[None, :]
    offs_f2 = offs_2[:, None] * M2 + offs_2[None, :]
    kf_row = kf_ptr + ((h0 + pid_h).to(tl.int64) * N0 + pid_k) * (2 * M)
    al_re, al_im = _twiddle(pid_k * M2, offs_1, N, False)  # [M1]
    be_re, be_im = _twiddle(pid_k, offs_2, N, False)  # [M2]
    al_re = al_re[:, None]
    al_im = al_im[:, None]
    be_re = be_re[None, :]
    be_im = be_im[None, :]

    for step in tl.range(0, STEPS):
        bp_local = first + step
        valid = bp_local < NBC
        row = (pid_h * NBC + bp_local).to(tl.int64) * (2 * N) + pid_k * M
        x_re = tl.load(buf_ptr + row + offs_tile, mask=valid, other=0.0)
        x_im = tl.load(buf_ptr + row + N + offs_tile, mask=valid, other=0.0)

        # forward stage 1 with both twiddles: alpha in the matrix, then beta and the inner one
        f1_re, f1_im = _load_complex(dft1_ptr, offs_f1, M1 * M1)  # [M1, M1]
        ft_re = (f1_re * tl.trans(al_re) - f1_im * tl.trans(al_im)).to(op_dtype)
        ft_im = (f1_re * tl.trans(al_im) + f1_im * tl.trans(al_re)).to(op_dtype)
        b_re, b_im = _complex_dot(ft_re, ft_im, x_re, x_im, PRECISION)  # [M1, M2]
        bb_re = b_re * be_re - b_im * be_im
        bb_im = b_re * be_im + b_im * be_re
        tw_re, tw_im = _load_complex(twiddle_ptr, offs_tile, M)  # [M1, M2] inner twiddle
        c_re = (bb_re * tw_re - bb_im * tw_im).to(op_dtype)
        c_im = (bb_re * tw_im + bb_im * tw_re).to(op_dtype)
        f2_re, f2_im = _load_complex(dft2_ptr, offs_f2, M2 * M2)  # [M2, M2]
        x_re, x_im = _complex_dot(c_re, c_im, f2_re, f2_im, PRECISION)  # [M1, M2] (k1 permuted)

        k_re, k_im = _load_complex(kf_row, offs_tile, M)
        s_re = (x_re * k_re - x_im * k_im).to(op_dtype)
        s_im = (x_re * k_im + x_im * k_re).to(op_dtype)

        d_re, d_im = _complex_dot(s_re, s_im, f2_re, -f2_im, PRECISION)
        e_re = (d_re * tw_re + d_im * tw_im).to(op_dtype)
        e_im = (d_im * tw_re - d_re * tw_im).to(op_dtype)
        # conj(U_M1) @ E written out, without a negated table as an operand (triton_fwd, v3)
        g_re, g_im = _load_complex(dft1_ptr, offs_f1, M1 * M1)
        z_re = tl.dot(g_re, e_re, acc=_dot(g_im, e_im, PRECISION), input_precision=PRECISION)
        z_im = _dot(g_re, e_im, PRECISION) - _dot(g_im, e_re, PRECISION)

        # times conj(alpha) conj(beta)
        zb_re = z_re * be_re + z_im * be_im
        zb_im = z_im * be_re - z_re * be_im
        out_re = (zb_re * al_re + zb_im * al_im).to(op_dtype)
        out_im = (zb_im * al_re - zb_re * al_im).to(op_dtype)
        tl.store(buf_ptr + row + offs_tile, out_re, mask=valid)
        tl.store(buf_ptr + row + N + offs_tile, out_im, mask=valid)


@triton.jit
def _cdot(a_re, a_im, b_re, b_im, CONJ: tl.constexpr, PRECISION: tl.constexpr):
    """``a @ b`` (CONJ 0), ``conj(a) @ b`` (1) or ``a @ conj(b)`` (2) for complex operands: two
    accumulation chains, the sign on the fp32 accumulator (exact), never on an operand (a
    negated table as a matrix operand gave wrong results on sm_90, ``triton_fwd`` v3). One
    chain per output part keeps two fp32 tiles live instead of three."""
    if CONJ == 0:
        out_re = tl.dot(a_re, b_re, acc=-_dot(a_im, b_im, PRECISION), input_precision=PRECISION)
    else:
        out_re = tl.dot(a_re, b_re, acc=_dot(a_im, b_im, PRECISION), input_precision=PRECISION)
    if CONJ == 1:
        out_im = tl.dot(a_re, b_im, acc=-_dot(a_im, b_re, PRECISION), input_precision=PRECISION)
    elif CONJ == 2:
        out_im = tl.dot(a_im, b_re, acc=-_dot(a_re, b_im, PRECISION), input_precision=PRECISION)
    else:
        out_im = tl.dot(a_re, b_im, acc=_dot(a_im, b_re, PRECISION), input_precision=PRECISION)
    return out_re, out_im


@triton.jit
def _row_setup(pid_k, N, M1: tl.constexpr, M2: tl.constexpr, K2: tl.constexpr):
    """The offsets of row k0's ``[M1, M2]`` tile (``t1 = M2 a + b``) and of its DFT matrices
    (``U_M2``'s kept columns: ``[M2, K2]``, all of them when ``K2 = M2``), and the global
    twiddle's factors ``alpha`` (``[1, M1]``: it scales the columns a of U_M1) and ``beta``
    (``[1, M2]``: the columns b)."""
    offs_1 = tl.arange(0, M1)
    offs_2 = tl.arange(0, M2)
    offs_tile = offs_1[:, None] * M2 + offs_2[None, :]
    offs_f1 = offs_1[:, None] * M1 + offs_1[None, :]
    offs_f2 = offs_2[:, None] * K2 + tl.arange(0, K2)[None, :]
    al_re, al_im = _twiddle(pid_k * M2, offs_1, N, False)
    be_re, be_im = _twiddle(pid_k, offs_2, N, False)
    return (
        offs_tile,
        offs_f1,
        offs_f2,
        al_re[None, :],
        al_im[None, :],
        be_re[None, :],
        be_im[None, :],
    )


@triton.jit
def _row_matrices(
    dft1_ptr,
    dft2_ptr,
    al_re,
    al_im,
    offs_f1,
    offs_f2,
    M1: tl.constexpr,
    M2: tl.constexpr,
    K2: tl.constexpr,
):
    """The DFT matrices of one row k0: ``ft = U_M1 * alpha`` (columns scaled) and ``U_M2``
    (its kept columns, ``[M2, K2]``), in the operand dtype."""
    op_dtype = dft1_ptr.dtype.element_ty
    f1_re, f1_im = _load_complex(dft1_ptr, offs_f1, M1 * M1)  # [M1, M1]
    ft_re = (f1_re * al_re - f1_im * al_im).to(op_dtype)
    ft_im = (f1_re * al_im + f1_im * al_re).to(op_dtype)
    f2_re, f2_im = _load_complex(dft2_ptr, offs_f2, M2 * K2)  # [M2, K2]
    return ft_re, ft_im, f2_re, f2_im


@triton.jit
def _inverse_rows(dft2_ptr, f2_re, f2_im, offs_g2, M2: tl.constexpr, K2: tl.constexpr):
    """The first inverse stage's ``U_M2[kept, :]`` (``[K2, M2]``, at ``offs_g2``): U_M2 is
    symmetric, so it is the transposed read of the kept columns' table; with every column
    kept, the forward's own ``[M2, M2]`` matrix (``f2``)."""
    if K2 < M2:
        g2_re, g2_im = _load_complex(dft2_ptr, offs_g2, M2 * K2)
    else:
        g2_re, g2_im = f2_re, f2_im
    return g2_re, g2_im


@triton.jit
def _row_twiddle(twiddle_ptr, be_re, be_im, offs_tile, M: tl.constexpr):
    """``tb = T * beta``, fp32: the inner twiddle times the columns' share of the global one."""
    tw_re, tw_im = _load_complex(twiddle_ptr, offs_tile, M)  # [M1, M2]
    return tw_re * be_re - tw_im * be_im, tw_re * be_im + tw_im * be_re


@triton.jit
def _row_factors(
    twiddle_ptr, kf_row, be_re, be_im, offs_tile, offs_spec, M: tl.constexpr, MK: tl.constexpr
):
    """The elementwise factors of one row k0, fp32: ``tb = T * beta`` (``_row_twiddle``) and
    the filter slice (its kept columns: ``[M1, K2]`` at ``offs_spec``, ``MK = M1 K2``)."""
    tb_re, tb_im = _row_twiddle(twiddle_ptr, be_re, be_im, offs_tile, M)
    k_re, k_im = _load_complex(kf_row, offs_spec, MK)
    return tb_re, tb_im, k_re, k_im


# N0 only indexes programs and rows: one compilation serves every n with the same inner size
@triton.jit(do_not_specialize=["h0", "NBC", "N0"])
def rows_kernel_held(
    buf_ptr,  # [count_h * NBC, 2, N0, M] operand dtype, read and written in place
    kf_ptr,  # [H, N0, 2, M1, K2] fp32 (the kept columns of spectrum_layout)
    dft1_ptr,  # [2, M1, M1] operand dtype (triton_fwd.constants(M))
    dft2_ptr,  # [2, M2, K2]: the kept columns of U_M2
    twiddle_ptr,  # [2, M1, M2] fp32
    h0,
    NBC,
    N0,  # outer size: rows per signal
    M1: tl.constexpr,
    M2: tl.constexpr,
    K2: tl.constexpr,  # frequency columns a2 that hold nonzero bins (M2: a dense filter)
    STEPS: tl.constexpr,
    STAGES: tl.constexpr,  # software pipelining of the step loop (1: none)
    HOLD: tl.constexpr,  # built before the step loop: 0 nothing, 1 the DFT matrices, 2 all tables
    PRECISION: tl.constexpr,
):
    """(C) as ``rows_kernel``, with the global twiddle folded into the tables and the tables
    built once per program when ``HOLD``.

    ``w_n^(k0 t1) = alpha[a] beta[b]`` (``t1 = M2 a + b``). alpha scales the columns of
    ``U_M1`` (``ft``); beta, a function of the column b only, multiplies the inner twiddle
    (``tb = T beta``). The inverse uses the conjugates of the same tables: ``conj(tb)`` after
    the inverse inner stage, and ``conj(ft)^T = conj(U_M1) conj(alpha)`` (U_M1 is symmetric)
    as the last product, which then leaves the output in natural order with nothing more to
    multiply. Per step that is three complex products per element (v1: six), and the data is
    rounded as often as in ``rows_kernel``. Every table is shared by the pairs of one (channel,
    row k0): with ``HOLD`` they are built before the loop; ``STAGES`` pipelines the loop (the
    next pairs' loads issued during this pair's products).

    A frequency-sparse filter (``K2 < M2``): row k0 holds bins ``k0 + N0 (a1 + M1 a2)``, so a
    low-pass leaves whole columns a2 of every row zero (``triton_long.inner_kept_columns``).
    The second forward stage then computes the kept columns only (``@ U_M2[:, kept]``) and the
    first inverse stage sums over them only (``@ conj(U_M2)[kept, :]``, the transposed view of
    the same table: U_M2 is symmetric), as in ``triton_fwd``.
    """
    M: tl.constexpr = M1 * M2
    N = N0 * M
    pid_k, pid_h, first = _program(tl.program_id(0), NBC, STEPS, N0)
    op_dtype = dft1_ptr.dtype.element_ty
    kf_row = kf_ptr + ((h0 + pid_h).to(tl.int64) * N0 + pid_k) * (2 * M1 * K2)
    offs_tile, offs_f1, offs_f2, al_re, al_im, be_re, be_im = _row_setup(pid_k, N, M1, M2, K2)
    offs_k2 = tl.arange(0, K2)
    offs_spec = tl.arange(0, M1)[:, None] * K2 + offs_k2[None, :]  # [M1, K2]
    offs_g2 = offs_k2[:, None] + tl.arange(0, M2)[None, :] * K2  # [K2, M2]: U_M2[kept, :]
    if HOLD >= 1:
        ft_re, ft_im, f2_re, f2_im = _row_matrices(
            dft1_ptr, dft2_ptr, al_re, al_im, offs_f1, offs_f2, M1, M2, K2
        )
        g2_re, g2_im = _inverse_rows(dft2_ptr, f2_re, f2_im, offs_g2, M2, K2)
    if HOLD >= 2:
        tb_re, tb_im, k_re, k_im = _row_factors(
            twiddle_ptr, kf_row, be_re, be_im, offs_tile, offs_spec, M, M1 * K2
        )

    for step in tl.range(0, STEPS, num_stages=STAGES):
        bp_local = first + step
        valid = bp_local < NBC
        row = (pid_h * NBC + bp_local).to(tl.int64) * (2 * N) + pid_k * M
        x_re, x_im = _load_signal_row(buf_ptr, row, N, valid, offs_tile)
        if HOLD < 1:
            ft_re, ft_im, f2_re, f2_im = _row_matrices(
                dft1_ptr, dft2_ptr, al_re, al_im, offs_f1, offs_f2, M1, M2, K2
            )
            g2_re, g2_im = _inverse_rows(dft2_ptr, f2_re, f2_im, offs_g2, M2, K2)
        if HOLD < 2:
            tb_re, tb_im, k_re, k_im = _row_factors(
                twiddle_ptr, kf_row, be_re, be_im, offs_tile, offs_spec, M, M1 * K2
            )

        # forward: (U_M1 alpha) @ x, times T beta, @ U_M2 -> [M1, K2] (k1 permuted)
        x_re, x_im = _row_forward(x_re, x_im, ft_re, ft_im, tb_re, tb_im, f2_re, f2_im, PRECISION)

        s_re = (x_re * k_re - x_im * k_im).to(op_dtype)
        s_im = (x_re * k_im + x_im * k_re).to(op_dtype)

        # inverse: @ conj(U_M2) (its kept rows), times conj(T beta), then conj(U_M1 alpha)^T @ E
        d_re, d_im = _cdot(s_re, s_im, g2_re, g2_im, 2, PRECISION)
        e_re = (d_re * tb_re + d_im * tb_im).to(op_dtype)
        e_im = (d_im * tb_re - d_re * tb_im).to(op_dtype)
        z_re, z_im = _cdot(tl.trans(ft_re), tl.trans(ft_im), e_re, e_im, 1, PRECISION)
        tl.store(buf_ptr + row + offs_tile, z_re.to(op_dtype), mask=valid)
        tl.store(buf_ptr + row + N + offs_tile, z_im.to(op_dtype), mask=valid)


@triton.jit
def _load_signal_row(buf_ptr, row, N, valid, offs_tile):
    """Row k0 of one signal of an intermediate: its real and imaginary ``[M1, M2]`` tiles."""
    x_re = tl.load(buf_ptr + row + offs_tile, mask=valid, other=0.0)
    x_im = tl.load(buf_ptr + row + N + offs_tile, mask=valid, other=0.0)
    return x_re, x_im


@triton.jit
def _row_forward(x_re, x_im, ft_re, ft_im, tb_re, tb_im, f2_re, f2_im, PRECISION: tl.constexpr):
    """``FFT_m`` of row k0 of one signal, twiddled (``rows_kernel_held``'s forward half):
    ``((U_M1 alpha) @ x * T beta) @ U_M2``, fp32 ``[M1, M2]`` (k1 permuted)."""
    b_re, b_im = _cdot(ft_re, ft_im, x_re, x_im, 0, PRECISION)
    c_re = (b_re * tb_re - b_im * tb_im).to(ft_re.dtype)
    c_im = (b_re * tb_im + b_im * tb_re).to(ft_re.dtype)
    return _cdot(c_re, c_im, f2_re, f2_im, 0, PRECISION)


# NBC, N0 and the run of pairs only index programs and rows: one compilation per inner size
@triton.jit(do_not_specialize=["NBC", "N0", "PARTS", "PER_PART"])
def rows_cross_kernel(
    p_ptr,  # [count_h * NBC, 2, N0, M] operand dtype: (A) of v = u * pregate
    q_ptr,  # [count_h * NBC, 2, N0, M] operand dtype: (A) of dz = dy * postgate
    s_ptr,  # [count_h, PARTS, N0, 2, M1, K2] fp32: the partial cross-spectra (written)
    dft1_ptr,  # [2, M1, M1] operand dtype (triton_fwd.constants(M))
    dft2_ptr,  # [2, M2, K2]: the kept columns of U_M2
    twiddle_ptr,  # [2, M1, M2] fp32
    NBC,
    N0,  # outer size: rows per signal
    PARTS,  # runs of pairs per channel: one partial spectrum each
    PER_PART,  # pairs per run
    M1: tl.constexpr,
    M2: tl.constexpr,
    K2: tl.constexpr,  # frequency columns a2 kept (M2: all; a cut-off zeroes the others)
    STEPS: tl.constexpr,  # pairs per block of the loop
    STAGES: tl.constexpr,  # software pipelining of a block (1: none)
    PRECISION: tl.constexpr,
):
    """The filter gradient's cross-spectrum on row k0: ``S[k0 + N0 k1] = sum over the pairs of
    Q * conj(P)``, ``P = FFT_m(w_n^(t1 k0) C_v[k0])`` and ``Q`` the same of dz: the forward half
    of ``rows_kernel_held`` (its tables, built once per program) on both intermediates.

    A program takes one (channel, row k0, run of ``PER_PART`` pairs), accumulates in fp32
    registers (P and Q stay fp32: nothing is rounded after the second product) and writes its
    ``[M1, M2]`` tile (``k1 = a1 + M1 a2``, the layout of ``spectrum_layout``) to its own slot:
    the host sums the runs in a fixed order (deterministic, no atomics). The pair trick of
    ``triton_bwd``: the real part of the inverse of the sum is the sum of both sequences'
    correlations; a missing second sequence is zero in both intermediates and adds nothing.
    With a frequency cut-off only the kept columns (``K2 < M2``, ``inner_kept_columns``) of
    P and Q are computed and accumulated: the others hold only bins the cut-off zeroes.
    """
    M: tl.constexpr = M1 * M2
    N = N0 * M
    pid = tl.program_id(0)
    pid_k = pid % N0
    rest = pid // N0
    pid_part = rest % PARTS
    pid_h = rest // PARTS
    offs_tile, offs_f1, offs_f2, al_re, al_im, be_re, be_im = _row_setup(pid_k, N, M1, M2, K2)
    ft_re, ft_im, f2_re, f2_im = _row_matrices(
        dft1_ptr, dft2_ptr, al_re, al_im, offs_f1, offs_f2, M1, M2, K2
    )
    tb_re, tb_im = _row_twiddle(twiddle_ptr, be_re, be_im, offs_tile, M)
    acc_re = tl.zeros((M1, K2), dtype=tl.float32)
    acc_im = tl.zeros((M1, K2), dtype=tl.float32)

    # The run in blocks of STEPS pairs: an outer while loop with runtime bounds (the interpreter
    # takes no tensor as a range bound; one compilation serves every batch size), an inner
    # loop of constexpr trip count that Triton can pipeline (triton_bwd's loop).
    first = pid_part * PER_PART
    end = first + PER_PART
    block = first
    while block < end:
        for step in tl.range(0, STEPS, num_stages=STAGES):
            bp_local = block + step
            valid = (bp_local < end) & (bp_local < NBC)
            row = (pid_h * NBC + bp_local).to(tl.int64) * (2 * N) + pid_k * M
            x_re, x_im = _load_signal_row(p_ptr, row, N, valid, offs_tile)
            p_re, p_im = _row_forward(
                x_re, x_im, ft_re, ft_im, tb_re, tb_im, f2_re, f2_im, PRECISION
            )
            x_re, x_im = _load_signal_row(q_ptr, row, N, valid, offs_tile)
            q_re, q_im = _row_forward(
                x_re, x_im, ft_re, ft_im, tb_re, tb_im, f2_re, f2_im, PRECISION
            )
            acc_re += q_re * p_re + q_im * p_im
            acc_im += q_im * p_re - q_re * p_im
        block += STEPS

    offs_spec = tl.arange(0, M1)[:, None] * K2 + tl.arange(0, K2)[None, :]  # [M1, K2]
    out = s_ptr + ((pid_h * PARTS + pid_part).to(tl.int64) * N0 + pid_k) * (2 * M1 * K2)
    tl.store(out + offs_spec, acc_re)
    tl.store(out + M1 * K2 + offs_spec, acc_im)


@triton.jit(do_not_specialize=["B", "H", "h0", "b0", "NBC"])
def cols_inv_kernel(
    buf_ptr,  # [count_h * NBC, 2, N0, M]
    u_ptr,  # [B, H, L] bias source (unused unless HAS_BIAS)
    pregate_ptr,  # [B, H, L] (unused unless HAS_BIAS and BIAS_GATED)
    postgate_ptr,  # [B, H, L]
    bias_ptr,  # [H]
    y_ptr,  # [B, H, L]
    dft_ptr,  # [2, N0T, N0T]
    B,
    H,
    L,  # output length
    h0,
    b0,
    NBC,
    N0: tl.constexpr,
    M: tl.constexpr,
    N0T: tl.constexpr,
    ROWS: tl.constexpr,  # output rows t0 computed, a power of two in [16, N0T]
    BT: tl.constexpr,
    STEPS: tl.constexpr,
    HAS_PREGATE: tl.constexpr,
    HAS_POSTGATE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BIAS_GATED: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """(A'), one level: ``z = conj(U_N0)[:ROWS] @ E``; v's output is the real part, w's the
    imaginary part; then the postgate and the bias term."""
    N: tl.constexpr = N0 * M
    pid_c, pid_h, first = _program(tl.program_id(0), NBC, STEPS, M // BT)
    offs_r = tl.arange(0, ROWS)
    offs_c = pid_c * BT + tl.arange(0, BT)
    offs_k = tl.arange(0, N0T)
    offs_e = offs_k[:, None] * M + offs_c[None, :]  # [N0T, BT]
    mask_k = (offs_k[:, None] < N0) & (offs_c[None, :] < M)
    offs_t = offs_r[:, None] * M + offs_c[None, :]  # [ROWS, BT]
    g_re, g_im = _load_complex(dft_ptr, offs_r[:, None] * N0T + offs_k[None, :], N0T * N0T)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + h0 + pid_h).to(tl.float32)
    else:
        bias = 0.0

    for step in tl.range(0, STEPS):
        row_v, row_w, valid, has_w, j = _pair(pid_h, first + step, h0, b0, NBC, B, H, L)
        start = j.to(tl.int64) * (2 * N)
        e_re = tl.load(buf_ptr + start + offs_e, mask=mask_k & valid, other=0.0)
        e_im = tl.load(buf_ptr + start + N + offs_e, mask=mask_k & valid, other=0.0)
        z_v = tl.dot(g_re, e_re, acc=_dot(g_im, e_im, PRECISION), input_precision=PRECISION)
        z_w = _dot(g_re, e_im, PRECISION) - _dot(g_im, e_re, PRECISION)  # [ROWS, BT]
        mask_v = (offs_t < L) & valid
        _store_outputs(
            z_v, z_w, offs_t, mask_v, mask_v & has_w, row_v, row_w, bias,
            u_ptr, pregate_ptr, postgate_ptr, y_ptr,
            HAS_PREGATE, HAS_POSTGATE, HAS_BIAS, BIAS_GATED,
        )  # fmt: skip


@triton.jit(do_not_specialize=["B", "H", "h0", "b0", "NBC"])
def cols_inv2_kernel(
    buf_ptr,
    u_ptr,
    pregate_ptr,
    postgate_ptr,
    bias_ptr,
    y_ptr,
    dft_p_ptr,
    dft_q_ptr,
    tw_ptr,
    B,
    H,
    L,
    h0,
    b0,
    NBC,
    P: tl.constexpr,
    Q: tl.constexpr,
    M: tl.constexpr,
    ROWS: tl.constexpr,  # values of a (t0 = Q a + b) computed, a power of two in [16, P]
    BT: tl.constexpr,
    STEPS: tl.constexpr,
    HAS_PREGATE: tl.constexpr,
    HAS_POSTGATE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BIAS_GATED: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """(A'), two levels: d -> b on the right (``conj(U_Q)``), the twiddle ``w_N0^(-b c)``,
    c -> a on the left (``conj(U_P)[:ROWS]``); the tile is ``[c|a, column, d|b]``."""
    N: tl.constexpr = P * Q * M
    pid_c, pid_h, first = _program(tl.program_id(0), NBC, STEPS, M // BT)
    op_dtype = dft_p_ptr.dtype.element_ty
    offs_a = tl.arange(0, ROWS)
    offs_p = tl.arange(0, P)
    offs_q = tl.arange(0, Q)
    offs_c = pid_c * BT + tl.arange(0, BT)
    offs_e = (offs_p[:, None, None] + P * offs_q[None, None, :]) * M + offs_c[None, :, None]
    offs_t = (offs_a[:, None, None] * Q + offs_q[None, None, :]) * M + offs_c[None, :, None]
    fq_re, fq_im = _load_complex(dft_q_ptr, offs_q[:, None] * Q + offs_q[None, :], Q * Q)
    fp_re, fp_im = _load_complex(dft_p_ptr, offs_a[:, None] * P + offs_p[None, :], P * P)
    t_re, t_im = _load_complex(tw_ptr, offs_p[:, None] * Q + offs_q[None, :], P * Q)
    t_re = t_re[:, None, :]
    t_im = t_im[:, None, :]
    if HAS_BIAS:
        bias = tl.load(bias_ptr + h0 + pid_h).to(tl.float32)
    else:
        bias = 0.0

    for step in tl.range(0, STEPS):
        row_v, row_w, valid, has_w, j = _pair(pid_h, first + step, h0, b0, NBC, B, H, L)
        start = j.to(tl.int64) * (2 * N)
        e_re = tl.reshape(tl.load(buf_ptr + start + offs_e, mask=valid, other=0.0), (P * BT, Q))
        e_im = tl.reshape(tl.load(buf_ptr + start + N + offs_e, mask=valid, other=0.0), (P * BT, Q))
        # level 1 over d -> b: E @ conj(U_Q), written out; then the twiddle w_N0^(-c b)
        y_re = tl.dot(e_re, fq_re, acc=_dot(e_im, fq_im, PRECISION), input_precision=PRECISION)
        y_im = _dot(e_im, fq_re, PRECISION) - _dot(e_re, fq_im, PRECISION)
        y_re = tl.reshape(y_re, (P, BT, Q))
        y_im = tl.reshape(y_im, (P, BT, Q))
        g_re = tl.reshape((y_re * t_re + y_im * t_im).to(op_dtype), (P, BT * Q))
        g_im = tl.reshape((y_im * t_re - y_re * t_im).to(op_dtype), (P, BT * Q))
        # level 2 over c -> a: conj(U_P)[:ROWS] @ G, written out
        z_v = tl.dot(fp_re, g_re, acc=_dot(fp_im, g_im, PRECISION), input_precision=PRECISION)
        z_w = _dot(fp_re, g_im, PRECISION) - _dot(fp_im, g_re, PRECISION)
        mask_v = (offs_t < L) & valid
        _store_outputs(
            tl.reshape(z_v, (ROWS, BT, Q)), tl.reshape(z_w, (ROWS, BT, Q)), offs_t, mask_v,
            mask_v & has_w, row_v, row_w, bias, u_ptr, pregate_ptr, postgate_ptr, y_ptr,
            HAS_PREGATE, HAS_POSTGATE, HAS_BIAS, BIAS_GATED,
        )  # fmt: skip
