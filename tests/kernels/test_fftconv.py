"""fftconv against float64 references: every mode, gates, bias, dtype, backend, and bad input."""

from __future__ import annotations

import pytest
import torch

from kernels import FFTConv, fftconv, filter_spectrum
from kernels.fftconv.plan import make_plan

from .fftconv_reference import conv_numpy, conv_torch64, make_inputs, rel_err, to_numpy

TOL = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 1e-2, torch.float64: 1e-12}
BACKENDS = ["torch", "monarch"]


# (B, H, L, Lk, mode) with awkward sizes; Lk shorter, equal and longer than L
CASES = [
    pytest.param(1, 1, 1, 1, "causal", id="B1-H1-L1-K1-causal"),
    pytest.param(2, 3, 2, 5, "causal", id="B2-H3-L2-K5-causal"),
    pytest.param(2, 3, 7, 7, "causal", id="B2-H3-L7-K7-causal"),
    pytest.param(3, 16, 97, 31, "causal", id="B3-H16-L97-K31-causal"),
    pytest.param(2, 3, 256, 256, "causal", id="B2-H3-L256-K256-causal"),
    pytest.param(1, 3, 1000, 1500, "causal", id="B1-H3-L1000-K1500-causal"),
    pytest.param(1, 1, 4097, 129, "causal", id="B1-H1-L4097-K129-causal"),
    pytest.param(1, 1, 1, 1, "circular", id="B1-H1-L1-circular"),
    pytest.param(2, 3, 7, 7, "circular", id="B2-H3-L7-circular"),
    pytest.param(2, 16, 256, 256, "circular", id="B2-H16-L256-circular"),
    pytest.param(1, 3, 1000, 1000, "circular", id="B1-H3-L1000-circular"),
    pytest.param(1, 1, 1, 1, "bidirectional", id="B1-H1-L1-K1-bidir"),
    pytest.param(2, 3, 7, 13, "bidirectional", id="B2-H3-L7-K13-bidir"),
    pytest.param(2, 3, 97, 41, "bidirectional", id="B2-H3-L97-K41-bidir"),
    pytest.param(1, 16, 256, 511, "bidirectional", id="B1-H16-L256-K511-bidir"),
    pytest.param(1, 3, 1000, 2501, "bidirectional", id="B1-H3-L1000-K2501-bidir"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("gated", [False, True], ids=["plain", "gated"])
@pytest.mark.parametrize(("B", "H", "L", "Lk", "mode"), CASES)
def test_forward_fp32(B, H, L, Lk, mode, gated, backend):
    u, k, pre, post, bias = make_inputs(B, H, L, Lk, torch.float32, gated)
    y = fftconv(u, k, pregate=pre, postgate=post, bias=bias, mode=mode, backend=backend)
    assert y.dtype == torch.float32 and y.shape == u.shape
    ref = conv_numpy(
        to_numpy(u), to_numpy(k), to_numpy(pre), to_numpy(post), to_numpy(bias), mode=mode
    )
    assert rel_err(y, ref) < TOL[torch.float32]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize(
    ("B", "H", "L", "Lk", "mode"),
    [
        pytest.param(2, 3, 97, 50, "causal", id="B2-H3-L97-K50-causal"),
        pytest.param(1, 16, 1000, 1000, "causal", id="B1-H16-L1000-K1000-causal"),
        pytest.param(2, 3, 97, 97, "circular", id="B2-H3-L97-circular"),
        pytest.param(2, 3, 256, 101, "bidirectional", id="B2-H3-L256-K101-bidir"),
    ],
)
def test_forward_half(B, H, L, Lk, mode, dtype, backend):
    u, k, pre, post, bias = make_inputs(B, H, L, Lk, dtype, gated=True)
    y = fftconv(u, k, pregate=pre, postgate=post, bias=bias, mode=mode, backend=backend)
    assert y.dtype == dtype
    ref = conv_numpy(
        to_numpy(u), to_numpy(k), to_numpy(pre), to_numpy(post), to_numpy(bias), mode=mode
    )
    assert rel_err(y, ref) < TOL[dtype]


def test_bidirectional_pair_matches_centred():
    u, k, _, _, _ = make_inputs(2, 3, 50, 20, torch.float32, False, pair=True)
    y = fftconv(u, k, mode="bidirectional")
    ref = conv_numpy(to_numpy(u), to_numpy(k), mode="bidirectional")
    assert rel_err(y, ref) < 1e-5


GRAD_CASES = [
    pytest.param(2, 3, 97, 31, "causal", False, id="B2-H3-L97-K31-causal"),
    pytest.param(1, 3, 64, 200, "causal", False, id="B1-H3-L64-K200-causal"),
    pytest.param(2, 5, 33, 33, "circular", False, id="B2-H5-L33-circular"),
    pytest.param(2, 3, 64, 64, "circular", False, id="B2-H3-L64-circular"),
    pytest.param(2, 3, 45, 21, "bidirectional", False, id="B2-H3-L45-K21-bidir"),
    pytest.param(2, 3, 45, 12, "bidirectional", True, id="B2-H3-L45-M12-bidir-pair"),
]


def _grads(fn, tensors, dy):
    for t in tensors:
        t.grad = None
    fn().backward(dy)
    return [t.grad for t in tensors]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"]
)
@pytest.mark.parametrize(("B", "H", "L", "Lk", "mode", "pair"), GRAD_CASES)
def test_backward(B, H, L, Lk, mode, pair, dtype, backend):
    u, k, pre, post, bias = make_inputs(B, H, L, Lk, dtype, gated=True, pair=pair)
    leaves = [x.detach().clone().requires_grad_() for x in (u, k, pre, post, bias)]
    refs = [x.detach().double().requires_grad_() for x in (u, k, pre, post, bias)]
    dy = torch.randn(B, H, L, generator=torch.Generator().manual_seed(1))
    got = _grads(
        lambda: fftconv(
            leaves[0],
            leaves[1],
            pregate=leaves[2],
            postgate=leaves[3],
            bias=leaves[4],
            mode=mode,
            backend=backend,
        ),
        leaves,
        dy.to(dtype),
    )
    want = _grads(
        lambda: conv_torch64(refs[0], refs[1], refs[2], refs[3], refs[4], mode=mode),
        refs,
        dy.to(dtype).double(),
    )
    names = ["u", "k", "pregate", "postgate", "bias"]
    for name, g, w, leaf in zip(names, got, want, leaves, strict=True):
        assert g is not None and g.dtype == leaf.dtype, name
        # half-precision gradients of the filter sum over B*L products: fp32-like tolerance
        # does not apply, the dtype's does
        assert rel_err(g, w) < TOL[dtype], (name, rel_err(g, w))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["causal", "circular", "bidirectional"])
def test_gradcheck_float64(mode, backend):
    L = 12
    Lk = {"causal": 5, "circular": 12, "bidirectional": 9}[mode]
    u, k, pre, post, bias = (
        x.double().requires_grad_() for x in make_inputs(2, 2, L, Lk, torch.float32, True)
    )

    def f(u, k, pre, post, bias):
        return fftconv(u, k, pregate=pre, postgate=post, bias=bias, mode=mode, backend=backend)

    assert torch.autograd.gradcheck(f, (u, k, pre, post, bias))


@pytest.mark.parametrize("backend", BACKENDS)
def test_partial_grads_only_where_asked(backend):
    u, k, _, _, _ = make_inputs(2, 3, 40, 10, torch.float32, False)
    k.requires_grad_()
    fftconv(u, k, backend=backend).square().sum().backward()
    assert u.grad is None and k.grad is not None and k.grad.shape == k.shape


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("freq_keep", [0.25, 0.5, 0.9])
def test_frequency_sparse(freq_keep, backend):
    u, k, pre, post, bias = make_inputs(2, 3, 200, 60, torch.float32, True)
    y = fftconv(u, k, pregate=pre, postgate=post, bias=bias, freq_keep=freq_keep, backend=backend)
    ref = conv_numpy(
        to_numpy(u), to_numpy(k), to_numpy(pre), to_numpy(post), to_numpy(bias), freq_keep=freq_keep
    )
    assert rel_err(y, ref) < 1e-5
    dense = conv_numpy(to_numpy(u), to_numpy(k), to_numpy(pre), to_numpy(post), to_numpy(bias))
    assert rel_err(y, dense) > 1e-3  # the sparsity changed the result: it was applied


def test_keep_bins_steps():
    plan = make_plan("causal", 1024, 1024, 0.25)
    assert plan.fft_size == 2048 and plan.keep_bins == 256
    assert make_plan("causal", 1024, 1024, 1.0).keep_bins == 1025


def test_blocked_plan_choice():
    """Partial causal filters are cut into blocks where the FFT shrinks min_block_gain times."""
    plan = make_plan("causal", 4096, 512)
    assert plan.blocked and plan.fft_size == 1024 and plan.block == 512 and plan.num_blocks == 8
    assert plan.keep_bins == 513
    # short filters still take the smallest block (n = 512)
    assert make_plan("causal", 1 << 20, 3).fft_size == 512
    # a full-length filter, or one whose blocks would not shrink the FFT enough: dense
    assert not make_plan("causal", 4096, 4096).blocked
    assert not make_plan("causal", 1000, 10).blocked  # 1024 -> 512 only
    # the gain asked for falls with the dense size: 8x up to 2048, 4x to 8192, then 2x
    assert not make_plan("causal", 1024, 256).blocked  # 2048 -> 512
    assert make_plan("causal", 2048, 256).blocked  # 4096 -> 512
    assert make_plan("causal", 2048, 512).blocked  # 4096 -> 1024
    assert not make_plan("causal", 4096, 2048).blocked  # 8192 -> 4096
    assert make_plan("causal", 8192, 4096).blocked  # 16384 -> 8192
    # larger than BLOCK_MAX taps, a frequency cut-off, other modes: dense
    assert not make_plan("causal", 1 << 20, 8192).blocked
    assert not make_plan("causal", 4096, 512, 0.5).blocked
    assert not make_plan("bidirectional", 4096, 511).blocked
    # forced either way
    assert make_plan("causal", 600, 300, blocked=True).num_blocks == 2  # S = 512
    assert not make_plan("causal", 4096, 512, blocked=False).blocked
    with pytest.raises(ValueError, match="blocked=True needs a causal filter of at most"):
        make_plan("causal", 1 << 20, 8192, blocked=True)
    with pytest.raises(ValueError, match="blocked=True needs mode='causal'"):
        make_plan("circular", 1024, 1024, blocked=True)
    with pytest.raises(ValueError, match="blocked must be None, True or False"):
        make_plan("causal", 1024, 100, blocked="yes")


# (B, H, L, Lk): several blocks with a short last one, a single block (L < S), one sample past
# a block, a one-tap filter, taps == S
BLOCKED_CASES = [
    pytest.param(3, 5, 1000, 100, id="B3-H5-L1000-K100"),
    pytest.param(2, 3, 200, 150, id="B2-H3-L200-K150-one-block"),
    pytest.param(1, 3, 257, 256, id="B1-H3-L257-K256"),
    pytest.param(2, 1, 1500, 1, id="B2-H1-L1500-K1"),
    pytest.param(1, 2, 1300, 300, id="B1-H2-L1300-K300-S512"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "dtype",
    [torch.float64, torch.float32, torch.float16, torch.bfloat16],
    ids=["fp64", "fp32", "fp16", "bf16"],
)
@pytest.mark.parametrize(("B", "H", "L", "Lk"), BLOCKED_CASES)
def test_blocked_forward_backward(B, H, L, Lk, dtype, backend):
    """A blocked plan is the causal convolution: output and all five gradients."""
    u, k, pre, post, bias = make_inputs(B, H, L, Lk, torch.float32, gated=True, seed=L)
    u, pre, post = u.to(dtype), pre.to(dtype), post.to(dtype)
    if dtype == torch.float64:
        k, bias = k.double(), bias.double()
    leaves = [x.detach().clone().requires_grad_() for x in (u, k, pre, post, bias)]
    refs = [x.detach().double().requires_grad_() for x in (u, k, pre, post, bias)]
    spec = filter_spectrum(leaves[1], L, backend=backend, blocked=True)
    assert spec.plan.blocked
    y = fftconv(leaves[0], spec, pregate=leaves[2], postgate=leaves[3], bias=leaves[4])
    want = conv_torch64(*refs)
    assert y.dtype == dtype
    assert rel_err(y, want) < TOL[dtype]
    dy = torch.randn(B, H, L, generator=torch.Generator().manual_seed(7)).to(dtype)
    y.backward(dy)
    want.backward(dy.double())
    names = ("u", "k", "pregate", "postgate", "bias")
    for name, leaf, ref in zip(names, leaves, refs, strict=True):
        assert leaf.grad is not None and leaf.grad.dtype == leaf.dtype, name
        assert rel_err(leaf.grad, ref.grad) < TOL[dtype], (name, rel_err(leaf.grad, ref.grad))


def test_blocked_option_of_call_and_layer():
    """``blocked=`` of fftconv and FFTConv reaches the plan: both ways give the same result,
    and a bad value is refused."""
    u, k, _, _, _ = make_inputs(2, 3, 2000, 200, torch.float32, False, seed=5)
    ref = conv_numpy(to_numpy(u), to_numpy(k))
    for blocked in (None, True, False):
        assert rel_err(fftconv(u, k, blocked=blocked), ref) < 1e-5
        layer = FFTConv(2000, blocked=blocked)
        assert layer.filter_spectrum(k).plan.blocked == (blocked is not False)
        assert rel_err(layer(u, k), ref) < 1e-5
    with pytest.raises(ValueError, match="blocked must be None, True or False"):
        fftconv(u, k, blocked=1.5)
    with pytest.raises(ValueError, match="blocked must be None, True or False"):
        FFTConv(2000, blocked="no")
    with pytest.raises(ValueError, match="blocked=True needs mode='causal'"):
        fftconv(u, k[:, :1], mode="bidirectional", blocked=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_blocked_spectrum_serves_shorter_and_matches_dense(backend):
    """A blocked spectrum serves any shorter length, and agrees with the dense plan."""
    u, k, pre, post, bias = make_inputs(2, 3, 2000, 200, torch.float32, True, seed=3)
    blocked = filter_spectrum(k, 2000, backend=backend)
    dense = filter_spectrum(k, 2000, backend=backend, blocked=False)
    assert blocked.plan.blocked and blocked.plan.fft_size == 512
    assert not dense.plan.blocked and dense.plan.fft_size == 4096
    y_b = fftconv(u, blocked, pregate=pre, postgate=post, bias=bias)
    y_d = fftconv(u, dense, pregate=pre, postgate=post, bias=bias)
    assert rel_err(y_b, y_d) < 1e-6
    for L in (1, 255, 256, 700):
        got = fftconv(u[..., :L], blocked)
        assert rel_err(got, conv_numpy(to_numpy(u[..., :L]), to_numpy(k))) < 1e-5, L
    # and every longer one (the blocks are the filter's size), which a dense spectrum refuses
    longer = make_inputs(1, 3, 5000, 200, torch.float32, False, seed=4)[0]
    got = fftconv(longer, blocked)
    assert rel_err(got, conv_numpy(to_numpy(longer), to_numpy(k))) < 1e-5
    with pytest.raises(ValueError, match="does not fit a spectrum prepared for seq_len=2000"):
        fftconv(longer, dense)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("mode", "Lk"), [("causal", 40), ("bidirectional", 41), ("circular", 64)])
def test_filter_spectrum_reuse(mode, Lk, backend):
    """A prepared spectrum gives the same output and gradients as the time-domain filter."""
    u, k, pre, post, bias = make_inputs(2, 3, 64, Lk, torch.float32, True)
    k1, k2 = k.clone().requires_grad_(), k.clone().requires_grad_()
    spec = filter_spectrum(k2, 64, mode=mode, backend=backend)
    y1 = fftconv(u, k1, pregate=pre, postgate=post, bias=bias, mode=mode, backend=backend)
    y2 = fftconv(u, spec, pregate=pre, postgate=post, bias=bias, mode=mode)
    assert rel_err(y2, y1) < 1e-6
    dy = torch.randn_like(y1)
    y1.backward(dy)
    y2.backward(dy)
    assert rel_err(k2.grad, k1.grad) < 1e-6
    if mode != "circular":  # a spectrum serves every shorter sequence
        y3 = fftconv(u[..., :50], spec, mode=mode)
        ref = conv_numpy(to_numpy(u[..., :50]), to_numpy(k), mode=mode)
        assert rel_err(y3, ref) < 1e-5


def test_module():
    conv = FFTConv(128, mode="causal", backend="monarch")
    conv.prepare(32, "cpu")
    u, k, pre, post, bias = make_inputs(2, 4, 128, 32, torch.float32, True)
    y = conv(u, conv.filter_spectrum(k), pre, post, bias)
    ref = conv_numpy(to_numpy(u), to_numpy(k), to_numpy(pre), to_numpy(post), to_numpy(bias))
    assert rel_err(y, ref) < 1e-5
    assert "l_max=128" in repr(conv)


def test_autocast_casts_fp32_input():
    u, k, pre, post, bias = make_inputs(2, 3, 64, 16, torch.float32, True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = fftconv(u, k, pregate=pre, postgate=post, bias=bias)
    assert y.dtype == torch.bfloat16
    ref = conv_numpy(
        *(to_numpy(x.bfloat16()) for x in (u,)),
        to_numpy(k),
        to_numpy(pre.bfloat16()),
        to_numpy(post.bfloat16()),
        to_numpy(bias),
    )
    assert rel_err(y, ref) < TOL[torch.bfloat16]


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend):
    u, k, pre, post, bias = make_inputs(2, 3, 50, 20, torch.float32, True)
    k = k.requires_grad_()

    def f(u, k, pre, post, bias):
        return fftconv(u * 2.0, k, pregate=pre, postgate=post, bias=bias, backend=backend).sin()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    y = compiled(u, k, pre, post, bias)
    y_eager = f(u, k, pre, post, bias)
    assert rel_err(y, y_eager) < 1e-6
    (gc,) = torch.autograd.grad(y.sum(), k)
    (ge,) = torch.autograd.grad(y_eager.sum(), k)
    assert rel_err(gc, ge) < 1e-6


@pytest.mark.parametrize(("op", "seed"), [("fftconv", 41), ("fftconv_z", 43)])
def test_op_called_directly_has_the_public_calls_gradients(op, seed):
    """The public call differentiates through ``_FFTConvFunction`` (less host time per call);
    the custom op keeps its own autograd registration, so calling it directly gives the same
    gradients, and both match float64. ``fftconv_z`` is the op a postgate that wants a gradient
    runs (the forward keeps z for dpostgate = dy * z): its output a list [y, z], z without
    gradient."""
    from kernels.fftconv.interface import circular_filter

    u, k, pre, post, bias = make_inputs(2, 3, 70, 30, torch.float32, True, seed=seed)
    plan = make_plan("causal", 70, 30)
    dy = torch.randn(2, 3, 70, generator=torch.Generator().manual_seed(seed + 1))
    static = ("causal", plan.filter_len, plan.fft_size, plan.fold, plan.keep_bins, False, "torch")

    def grads(direct):
        leaves = [x.clone().requires_grad_() for x in (u, k, pre, post, bias)]
        lu, lk, lpre, lpost, lbias = leaves
        if direct:
            kc = circular_filter(lk, plan)
            y = getattr(torch.ops.longconv, op)(lu, kc, None, lpre, lpost, lbias, *static)
            if op == "fftconv_z":
                y, z = y
                assert not z.requires_grad and z.shape == y.shape
        else:
            y = fftconv(lu, lk, pregate=lpre, postgate=lpost, bias=lbias, backend="torch")
        y.backward(dy)
        return [y.detach()] + [x.grad for x in leaves]

    public, direct = grads(False), grads(True)
    refs = [x.double().requires_grad_() for x in (u, k, pre, post, bias)]
    want = conv_torch64(*refs)
    want.backward(dy.double())
    for got_public, got_direct, ref in zip(
        public, direct, [want.detach()] + [x.grad for x in refs], strict=True
    ):
        assert rel_err(got_public, got_direct) < 1e-6
        assert rel_err(got_public, ref) < 1e-5


def test_postgate_gradient_takes_the_kept_z(monkeypatch):
    """z is kept exactly when the postgate wants a gradient (and autograd records): the backward
    then gets it, and nothing else changes; eager, aot_eager and inductor agree."""
    from kernels.fftconv import core

    seen = {"forward_with_z": 0, "backward_z": 0}
    forward_with_z, backward = core.forward_with_z, core.backward

    def spy_forward(*args):
        seen["forward_with_z"] += 1
        return forward_with_z(*args)

    def spy_backward(*args):
        seen["backward_z"] += len(args) > 10 and args[10] is not None
        return backward(*args)

    monkeypatch.setattr(core, "forward_with_z", spy_forward)
    monkeypatch.setattr(core, "backward", spy_backward)
    u, k, pre, post, bias = make_inputs(2, 3, 60, 25, torch.float32, True, seed=45)
    k.requires_grad_()

    def f(u, k, pre, post, bias):
        return fftconv(u, k, pregate=pre, postgate=post, bias=bias, backend="torch").sin()

    f(u, k, pre, post, bias).sum().backward()  # the postgate wants no gradient
    with torch.no_grad():
        f(u, k, pre, post.clone().requires_grad_(), bias)
    assert seen == {"forward_with_z": 0, "backward_z": 0}

    def grads(run):
        leaves = [x.detach().clone().requires_grad_() for x in (u, k, pre, post, bias)]
        y = run(*leaves)
        y.sum().backward()
        return [y.detach()] + [x.grad for x in leaves]

    eager = grads(f)
    assert seen == {"forward_with_z": 1, "backward_z": 1}
    for backend in ("aot_eager", "inductor"):
        torch._dynamo.reset()
        compiled = grads(torch.compile(f, fullgraph=True, backend=backend))
        for got, want in zip(compiled, eager, strict=True):
            assert rel_err(got, want) < 1e-5, backend
    assert seen["forward_with_z"] >= 3 and seen["backward_z"] >= 3


def test_keeps_z_constant_takes_plain_arguments():
    """Under torch.compile ``_keeps_z`` folds to a constant (``assume_constant_result``), which
    needs every argument as a Python constant: torch 2.11's dynamo (the GPU image's) cannot make
    one of the frozen ConvPlan and failed every compiled call whose postgate wanted a gradient
    (2026-12-07, test_gpu_autocast_and_compile_fullgraph). So the folded function takes the
    plan's fields, and answers as the backend does for the plan."""
    import inspect

    from kernels.fftconv import interface
    from kernels.fftconv import triton as triton_backend

    hints = inspect.get_annotations(interface._keeps_z_static, eval_str=True)
    hints.pop("return")
    assert set(hints.values()) <= {str, int, bool, torch.dtype}, hints
    for plan in (make_plan("causal", 1000, 1000), make_plan("causal", 9000, 9000)):
        for backend in ("torch", "triton"):
            want = True if backend == "torch" else triton_backend.keeps_z(plan, torch.bfloat16)
            assert interface._keeps_z(backend, plan, torch.bfloat16) == want


def test_triton_keeps_z_except_on_the_long_path():
    """The in-register kernels (dense and blocked) and the primitives keep z; the long path's
    kernels (n > 8192, folded plans) do not, so those calls keep the plain Function."""
    from kernels.fftconv import triton as triton_backend

    bf16 = torch.bfloat16
    assert triton_backend.keeps_z(make_plan("causal", 1000, 1000), bf16)  # n = 2048
    assert triton_backend.keeps_z(make_plan("causal", 4096, 4096), bf16)  # n = 8192
    assert triton_backend.keeps_z(make_plan("causal", 9000, 100, blocked=True), bf16)
    assert triton_backend.keeps_z(make_plan("causal", 50, 50), bf16)  # n < 256: primitives
    assert triton_backend.keeps_z(make_plan("causal", 9000, 9000), torch.float64)
    assert not triton_backend.keeps_z(make_plan("causal", 9000, 9000), bf16)  # n = 32768
    assert not triton_backend.keeps_z(make_plan("circular", 1000, 1000), bf16)  # folded


def test_torch_compile_inductor_with_spectrum():
    u, k, _, _, bias = make_inputs(2, 3, 50, 20, torch.float32, True)

    def f(u, k, bias):
        spec = filter_spectrum(k, 50)
        return fftconv(u, spec, bias=bias) + fftconv(u.flip(-1), spec)

    y = torch.compile(f, fullgraph=True)(u, k, bias)
    assert rel_err(y, f(u, k, bias)) < 1e-6


# ---------------------------------------------------------------------------------------------
# Bad input: a clear error naming the argument, expected and actual values


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("mode", "Lk", "blocked"),
    [
        ("causal", 16, False),
        ("causal", 4, True),
        ("circular", 16, False),
        ("bidirectional", 31, False),
    ],
)
def test_empty_batch(mode, Lk, blocked, backend):
    """B = 0 (an empty batch, as conv1d takes one): an empty y, empty gradients of the
    per-sample inputs, and zero gradients of the filter and the bias (sums over no samples),
    with and without the kept z."""
    torch.manual_seed(5)
    for keep_z in (False, True):
        u, pre, post = (torch.randn(0, 3, 16, requires_grad=True) for _ in range(3))
        post.requires_grad_(keep_z)
        k = torch.randn(3, Lk, requires_grad=True)
        bias = torch.randn(3, requires_grad=True)
        y = fftconv(
            u, k, pregate=pre, postgate=post, bias=bias, mode=mode, blocked=blocked,
            backend=backend,
        )  # fmt: skip
        assert y.shape == (0, 3, 16) and y.dtype == u.dtype
        y.sum().backward()
        for x in (u, pre) + ((post,) if keep_z else ()):
            assert x.grad is not None and x.grad.shape == (0, 3, 16)
        assert k.grad is not None and torch.equal(k.grad, torch.zeros_like(k))
        assert bias.grad is not None and torch.equal(bias.grad, torch.zeros_like(bias))


def _ok():
    return torch.randn(2, 3, 16), torch.randn(3, 8)


@pytest.mark.parametrize(
    ("make", "exc", "match"),
    [
        pytest.param(
            lambda u, k: fftconv(u[0], k),
            ValueError,
            r"u must have shape \(B, H, L\); "
            r"got shape \(3, 16\)",
            id="u-rank",
        ),
        pytest.param(
            lambda u, k: fftconv(u, k[:2]),
            ValueError,
            r"k must have H=3 rows.*\(2, 8\)",
            id="H-mismatch",
        ),
        pytest.param(
            lambda u, k: fftconv(u, k[0]), ValueError, r"k must have shape \(H, Lk\)", id="k-rank"
        ),
        pytest.param(
            lambda u, k: fftconv(u.long(), k), TypeError, r"u must be a floating.*int64", id="u-int"
        ),
        pytest.param(
            lambda u, k: fftconv(u, k.int()), TypeError, r"k must be a floating.*int32", id="k-int"
        ),
        pytest.param(
            lambda u, k: fftconv(u.numpy(), k), TypeError, r"u must be a torch.Tensor", id="u-numpy"
        ),
        pytest.param(
            lambda u, k: fftconv(u, k.to("meta")),
            ValueError,
            r"k must be on the same device as u \(cpu\); got meta",
            id="k-device",
        ),
        pytest.param(
            lambda u, k: fftconv(u.to("meta"), k.to("meta")),
            ValueError,
            r"u must be on a device that holds values \(cpu or cuda\); got meta",
            id="u-meta",
        ),
        pytest.param(lambda u, k: fftconv(u[..., :0], k), ValueError, r"L >= 1; got L=0", id="L0"),
        pytest.param(lambda u, k: fftconv(u, k[:, :0]), ValueError, r"at least one tap", id="Lk0"),
        pytest.param(
            lambda u, k: fftconv(u, k, mode="circular"),
            ValueError,
            r"circular' needs a filter of length L=16; got Lk=8",
            id="circular-len",
        ),
        pytest.param(
            lambda u, k: fftconv(u, k, mode="bidirectional"),
            ValueError,
            r"odd length 2M-1.*got Lk=8",
            id="bidir-even",
        ),
        pytest.param(
            lambda u, k: fftconv(u, torch.randn(2, 4, 5), mode="bidirectional"),
            ValueError,
            r"\(2, 3, M\).*\(2, 4, 5\)",
            id="bidir-pair-H",
        ),
        pytest.param(
            lambda u, k: fftconv(u, k, mode="acausal"),
            ValueError,
            r"mode must be one of .*'acausal'",
            id="mode",
        ),
        pytest.param(
            lambda u, k: fftconv(u, k, backend="cuda"),
            ValueError,
            r"backend must be one of .*'cuda'",
            id="backend",
        ),
        pytest.param(
            lambda u, k: fftconv(u, k, pregate=u[:, :2]),
            ValueError,
            r"pregate must have the shape of u \(2, 3, 16\); got \(2, 2, 16\)",
            id="pregate-shape",
        ),
        pytest.param(
            lambda u, k: fftconv(u, k, postgate=u[..., :5]),
            ValueError,
            r"postgate must have the shape of u",
            id="postgate-shape",
        ),
        pytest.param(
            lambda u, k: fftconv(u, k, postgate=u.long()),
            TypeError,
            r"postgate must be a floating",
            id="postgate-int",
        ),
        pytest.param(
            lambda u, k: fftconv(u, k, bias=torch.randn(4)),
            ValueError,
            r"bias must have shape \(H,\) = \(3,\); got \(4,\)",
            id="bias-shape",
        ),
        pytest.param(
            lambda u, k: fftconv(u, k, freq_keep=0.0),
            ValueError,
            r"freq_keep must be a number in \(0, 1\]; got 0.0",
            id="freq-keep",
        ),
        pytest.param(
            lambda u, k: fftconv(u, filter_spectrum(k, 8)),
            ValueError,
            r"L=16 does not fit a spectrum prepared for seq_len=8",
            id="spectrum-len",
        ),
        pytest.param(
            lambda u, k: FFTConv(0),
            ValueError,
            r"l_max must be an int >= 1; got 0",
            id="module-lmax",
        ),
    ],
)
def test_bad_input(make, exc, match):
    u, k = _ok()
    with pytest.raises(exc, match=match):
        make(u, k)
