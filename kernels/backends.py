"""What the kernels share about their backends, devices and inputs: whether Triton can run,
one cache key per device, the SM count, the device guard of a launch, the checks of a float
tensor argument."""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import importlib
import os
from collections.abc import Callable
from typing import TypeVar

import torch

T = TypeVar("T")


# Called, not traced, by torch.compile (its result baked into the graph): dynamo refuses
# importlib.import_module.
@torch.compiler.assume_constant_result
def triton_unusable(device_type: str, module: str) -> str | None:
    """None when the Triton backend ``module`` can run on this device type, else the reason it
    cannot (off CUDA it needs TRITON_INTERPRET=1; the module imports triton)."""
    if device_type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return f"it runs on CUDA devices (or on CPU under TRITON_INTERPRET=1); got {device_type}"
    try:
        importlib.import_module(module)
    except ImportError as err:
        return f"it could not be imported ({err})"
    return None


def canonical_device(device: torch.device | str) -> torch.device:
    """``device`` with its index made explicit ("cuda" -> "cuda:<current>"): one cache entry
    per physical device."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def build_constants(device: torch.device, what: str, build: Callable[[], T]) -> T:
    """Runs ``build`` (which allocates and fills tensors that a module-level cache keeps for the
    life of the process) so that those tensors live in the ordinary CUDA memory, never in a CUDA
    graph's private pool.

    Why: ``torch.compile(mode="reduce-overhead")`` runs its first (warm-up) calls with the
    calling thread's allocations routed to its graphs' pool, then refuses to record while a
    tensor in that pool is alive and is not one of the graph's outputs; a table built on first
    use inside such a call is exactly that. Built by a short-lived worker thread (on the device,
    waited for), the tables stay outside the pool. Inside a stream capture nothing can be built
    at all (the fill would only run at replay): that raises, naming ``what`` and how to build
    it beforehand."""
    if device.type != "cuda":
        return build()
    if torch.cuda.is_current_stream_capturing():
        raise RuntimeError(
            f"the {what} are built on first use; call FFTConv.prepare(...) or run the "
            "convolution once before CUDA graph capture"
        )

    def on_device() -> T:
        with torch.cuda.device(device):
            out = build()
            torch.cuda.current_stream(device).synchronize()
        return out

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as worker:
        return worker.submit(on_device).result()


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (queried once per device)."""
    return _sm_count(canonical_device(device).index)


def check_triton_device(op: str, x: torch.Tensor) -> None:
    """A Triton launcher's input ``x`` is on a CUDA device, or the interpreter runs."""
    if x.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(
            f"the Triton {op} runs on CUDA tensors (or on CPU under TRITON_INTERPRET=1); "
            f"got x on {x.device}"
        )


def device_guard(t: torch.Tensor) -> contextlib.AbstractContextManager:
    """What a Triton launch runs under: ``t``'s CUDA device made current (Triton launches on
    the current device), nothing off CUDA (the interpreter)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_float_tensor(name: str, t: object) -> torch.Tensor:
    """``t`` when it is a floating-point tensor (fp16, bf16, fp32 or fp64), else a TypeError
    naming the argument: the first check of every public kernel function."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be a floating-point tensor (fp16, bf16, fp32 or fp64); got {t.dtype}"
        )
    return t


def check_same_device(name: str, t: torch.Tensor, ref: torch.Tensor, ref_name: str = "x") -> None:
    """A ValueError unless ``t`` is on the device of the main input ``ref`` (named
    ``ref_name``)."""
    if t.device != ref.device:
        raise ValueError(
            f"{name} must be on the same device as {ref_name} ({ref.device}); got {t.device}"
        )


def custom_op(name: str, impl: Callable, **kwargs):
    """``torch.library.custom_op(name, **kwargs)`` of ``impl``, and the function that the
    kernels call in its place: ``impl`` itself outside ``torch.compile`` / ``torch.export``
    tracing, the op while tracing. Returns ``(op, call)``.

    Why: the op's dispatch (its autograd wrapper, the redispatch, the backend key, dynamo's
    disable wrapper) costs the host more than the Python around the kernels does; an eager
    training step of hyena-s spends it ~200 times each way. Traced, the op is what keeps the
    call one opaque node with its fake implementation. The values are the same either way:
    ``call`` runs the op's own implementation."""
    op = torch.library.custom_op(name, impl, **kwargs)

    def call(*args):
        return impl(*args) if _plain_eager(args) else op(*args)

    return op, call


# what tells a plain eager call from a traced one; without them (another torch), always the op
_dispatch_modes = getattr(torch._C, "_len_torch_dispatch_stack", None)
_functorch_layers = getattr(getattr(torch._C, "_functorch", None), "peek_interpreter_stack", None)
_PLAIN = (torch.Tensor, torch.nn.Parameter)


def _plain_eager(args: tuple) -> bool:
    """True when nothing traces or transforms the call: not dynamo or export, no dispatch mode
    (fake tensors, make_fx, AOTAutograd), no functorch transform, and every tensor argument a
    plain tensor (no subclass with dispatch of its own)."""
    if _dispatch_modes is None or _functorch_layers is None or torch.compiler.is_compiling():
        return False
    if _dispatch_modes() or _functorch_layers() is not None:
        return False
    return all(type(a) in _PLAIN for a in args if isinstance(a, torch.Tensor))


def autograd_function(
    name: str, op, call, setup_context, backward
) -> type[torch.autograd.Function]:
    """Registers ``setup_context`` / ``backward`` as the custom op ``op``'s autograd formula and
    returns a ``torch.autograd.Function`` named ``name`` that runs ``call`` (``custom_op``'s
    caller of ``op``; its arguments passed positionally, tensors and static values alike) and
    differentiates it with the same pair.

    The public calls go through the Function: ``torch.library``'s own autograd wrapper costs
    the host more per call (it refills every argument from the schema and builds a metadata
    record on each forward; an fftconv forward + backward measured 684-1002 us of host time
    through it against 540-555 through this, benchmarks/NOTES.md). With the registration, a
    direct call of the op is differentiable too. ``torch.compile`` traces the Function as it
    traces the registered formula: the same opaque ops, forward and backward."""
    op.register_autograd(backward, setup_context=setup_context)

    def forward(ctx, *args):
        out = call(*args)
        setup_context(ctx, args, out)
        return tuple(out) if isinstance(out, list) else out  # a Function returns a tuple

    return type(
        name,
        (torch.autograd.Function,),
        {"forward": staticmethod(forward), "backward": staticmethod(backward)},
    )
