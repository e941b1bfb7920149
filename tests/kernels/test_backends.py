"""``kernels.backends.custom_op``: the kernels' entry calls run the op's Python implementation
directly in plain eager mode (less host time per call) and the custom op whenever something
traces the call (torch.compile, fake tensors, functorch), so that tracing sees one opaque node."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch._subclasses.fake_tensor import FakeTensorMode

from kernels.backends import autograd_function, custom_op

SEEN: list[str] = []


def _double(x: Tensor, scale: float) -> Tensor:
    SEEN.append(type(x).__name__)
    return x * (2 * scale)


OP, CALL = custom_op("longconv_test::double", _double, mutates_args=())


@OP.register_fake
def _(x, scale):
    return torch.empty_like(x)


def _setup(ctx, inputs, output):
    ctx.scale = inputs[1]


def _backward(ctx, dy):
    return CALL(dy, ctx.scale), None


DOUBLE = autograd_function("_Double", OP, CALL, _setup, _backward)


def op_dispatched(fn, *args) -> bool:
    """Whether calling ``fn`` dispatched the custom op (the profiler lists it when it does)."""
    with torch.autograd.profiler.profile() as prof:
        fn(*args)
    return any(e.name == "longconv_test::double" for e in prof.function_events)


@pytest.fixture(autouse=True)
def _clear():
    SEEN.clear()
    torch._dynamo.reset()


def test_eager_call_runs_the_implementation_directly() -> None:
    x = torch.randn(5)
    assert torch.equal(CALL(x, 1.5), x * 3)
    assert SEEN == ["Tensor"]
    assert not op_dispatched(CALL, x, 1.0)
    # a Parameter is a plain tensor too; the op itself still dispatches when called
    p = nn.Parameter(torch.randn(3))
    assert not op_dispatched(CALL, p, 1.0)
    assert op_dispatched(OP, x, 1.0)


def test_autograd_function_gradient_through_the_direct_call() -> None:
    x = torch.randn(4, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(DOUBLE.apply(x, 0.5).sum(), [x])
    assert torch.equal(g, torch.ones_like(x))
    assert not op_dispatched(lambda t: DOUBLE.apply(t, 0.5).sum().backward(), x)


def test_fake_tensors_dispatch_the_op() -> None:
    with FakeTensorMode():
        y = CALL(torch.randn(6), 1.0)
    assert y.shape == (6,)
    assert SEEN == []  # the fake implementation ran, not the Python one on fake tensors


def test_compile_traces_the_op_forward_and_backward() -> None:
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm

    x = torch.randn(7, requires_grad=True)
    fn = torch.compile(lambda t: DOUBLE.apply(t, 1.0).sum(), backend=backend, fullgraph=True)
    fn(x).backward()
    assert torch.equal(x.grad, torch.full_like(x, 2.0))
    # the Function's forward and backward are subgraphs of the graph dynamo hands the backend
    subgraphs = [m for gm in graphs for m in gm.modules() if isinstance(m, torch.fx.GraphModule)]
    targets = [str(n.target) for m in subgraphs for n in m.graph.nodes]
    assert sum("longconv_test.double" in t for t in targets) >= 2, targets
    assert SEEN.count("Tensor") == 2  # run once each way, by the op (fake tensors traced it)


def test_functorch_transform_dispatches_the_op() -> None:
    x = torch.randn(3, 4)
    y = torch.vmap(lambda row: CALL(row, 1.0))(x)
    assert torch.equal(y, 2 * x)
    # the op dispatched: its batching fallback ran the implementation once per row (a direct
    # call would have run it once, on the batched tensor)
    assert len(SEEN) == 3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_eager_call_is_direct() -> None:
    """On the GPU's torch too (2.11: the dispatch-stack and functorch probes exist there)."""
    x = torch.randn(5, device="cuda")
    assert torch.equal(CALL(x, 1.0), 2 * x)
    assert SEEN == ["Tensor"]
    assert not op_dispatched(CALL, x, 1.0)
    with FakeTensorMode():
        CALL(torch.randn(2, device="cuda"), 1.0)
    assert SEEN == ["Tensor", "Tensor"]
