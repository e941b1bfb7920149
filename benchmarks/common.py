"""What the GPU benchmarks share: timing, the two measured ceilings, errors, table cells."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch


def gpu_run_meta(module: str, argv: list[str] | None) -> dict:
    """What every GPU benchmark's JSON starts with: the GPU, the versions, the time (UTC) and
    the command that made it (``module`` as ``python -m`` runs it, with ``argv`` or this
    process's arguments)."""
    import datetime
    import sys

    import triton

    return {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([f"python -m {module}", *(argv or sys.argv[1:])]),
    }


def median_ms(
    fn: Callable[[], object], grad_to_none=None, warmup: int = 25, rep: int = 100
) -> float:
    """``triton.testing.do_bench`` median (CUDA events; ``warmup``/``rep`` in milliseconds)."""
    from triton.testing import do_bench

    return do_bench(fn, warmup=warmup, rep=rep, grad_to_none=grad_to_none, return_mode="median")


def graph_median_ms(fn: Callable[[], object], rep: int = 100) -> float:
    """``fn`` captured in a CUDA graph and replayed (``triton.testing.do_bench_cudagraph``,
    median): the device's time alone, none of the host's launch work between kernels. Call
    ``fn`` once before (lazy tables, cuFFT plans)."""
    from triton.testing import do_bench_cudagraph

    return do_bench_cudagraph(fn, rep=rep, return_mode="median")


def time_forward_backward(
    call: Callable, names, inputs: tuple, ok: dict, forward: bool = True, graph: bool = False
) -> dict:
    """Medians of ``call(name, *inputs)`` per name, forward (``fwd_ms_<name>``, unless
    ``forward`` is False) and forward + backward (``fwdbwd_ms_<name>``: ``.backward(dy)`` on
    copies of the tensors among ``inputs`` made leaves, dy random of the first input's shape);
    None where ``ok[name]`` is false (a call that failed its correctness check gets no time).
    ``graph``: forward + backward replayed as a CUDA graph too (``fwdbwd_graph_ms_<name>``,
    ``torch.autograd.grad`` of every leaf: the device's time alone; a call that cannot be
    captured leaves ``graph_error_<name>`` instead)."""
    row = {}
    if forward:
        for name in names:
            row[f"fwd_ms_{name}"] = (
                median_ms(lambda name=name: call(name, *inputs)) if ok[name] else None
            )
    leaves = [x.clone().requires_grad_() if x is not None else None for x in inputs]
    grads = [x for x in leaves if x is not None]
    dy = torch.randn_like(inputs[0])
    for name in names:

        def step(name=name):
            call(name, *leaves).backward(dy)

        row[f"fwdbwd_ms_{name}"] = median_ms(step, grad_to_none=grads) if ok[name] else None
        if graph and ok[name]:
            row |= graph_forward_backward_ms(
                name, lambda name=name: call(name, *leaves), grads, dy, forward_too=False
            )
    return row


def graph_forward_backward_ms(
    name: str, forward: Callable[[], torch.Tensor], grads: list, dy, *, forward_too: bool = True
) -> dict:
    """``forward()`` (unless ``forward_too`` is False; under ``no_grad``) and forward + backward
    (``torch.autograd.grad`` of ``grads`` with the cotangent ``dy``) replayed as CUDA graphs
    (``graph_median_ms``): ``fwd_graph_ms_<name>``, ``fwdbwd_graph_ms_<name>``. A call that
    cannot be captured leaves ``graph_error_<name>`` instead: data, not a crash of the run."""

    def step():
        return torch.autograd.grad(forward(), grads, dy)

    row = {}
    try:
        if forward_too:
            with torch.no_grad():
                row[f"fwd_graph_ms_{name}"] = graph_median_ms(forward)
        row[f"fwdbwd_graph_ms_{name}"] = graph_median_ms(step)
    except Exception as err:
        return {f"graph_error_{name}": repr(err)[:300]}
    return row


def measure_copy_bandwidth(**bench) -> float:
    """Bytes read plus written per second by a 1 GiB device-to-device copy."""
    x = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    return 2 * x.numel() / (median_ms(lambda: y.copy_(x), **bench) * 1e-3)


def measure_matmul_rate() -> float:
    """bf16 dense matmul flops per second (8192^3)."""
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    return 2 * 8192**3 / (median_ms(lambda: a @ b) * 1e-3)


@functools.cache
def copy_bandwidth() -> float:
    """The memory floor's rate on this process's GPU: ``measure_copy_bandwidth``, measured once
    (an H100 copies at ~3.0 TB/s, an H200 at ~4.2: a floor at the H200's rate would put every
    H100 time ~1.4x further from its floor than it is)."""
    return measure_copy_bandwidth()


@functools.cache
def matmul_rate() -> float:
    """The flop floor's rate on this process's GPU: ``measure_matmul_rate``, measured once."""
    return measure_matmul_rate()


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64 when ref is, else float32."""
    dtype = torch.float64 if ref.dtype == torch.float64 else torch.float32
    ref = ref.to(dtype)
    return ((out.to(dtype) - ref).norm() / ref.norm()).item()


def fmt(x: float | None, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def ratio(a: float | None, b: float | None, spec: str = ".2f") -> str:
    return fmt(a / b if a and b else None, spec)


def best_variants(row: dict) -> str:
    """ "<name> <ms>" of the fastest launch variant of each kernel in a benchmark row (keys
    ``kernel_fwd_ms_<name>`` / ``kernel_bwd_ms_<name>``, None for a variant that failed its
    check), forward / backward."""
    out = []
    for kind in ("fwd", "bwd"):
        prefix = f"kernel_{kind}_ms_"
        times = {
            k[len(prefix) :]: v for k, v in row.items() if k.startswith(prefix) and v is not None
        }
        if times:
            best = min(times, key=times.get)
            out.append(f"{best} {times[best]:.3f}")
    return " / ".join(out) or "-"


# ---------------------------------------------------------------------------------------------
# Static analysis: a kernel compiled for sm_90 without a GPU (the benchmarks' --static modes)

PTXAS_STATS = (
    ("registers", r"Used (\d+) registers"),
    ("stack_bytes", r"(\d+) bytes stack frame"),
    ("spill_store_bytes", r"(\d+) bytes spill stores"),
    ("spill_load_bytes", r"(\d+) bytes spill loads"),
)


def compile_sm90(
    kernel,
    constexprs: dict,
    pointer_types: dict[str, str],
    num_warps: int,
    *,
    num_stages: int | None = None,
    scalar_types: dict[str, str] | None = None,
    divisible: tuple[str, ...] = ("L",),
):
    """Compiles a ``@triton.jit`` kernel for sm_90 as the runtime specialises it (every pointer
    16-byte aligned, the integer arguments named in ``divisible`` divisible by 16) and runs
    ``ptxas -v`` on its PTX. ``pointer_types``: ``*bf16``/``*fp32``/... per pointer argument;
    ``scalar_types``: the type of each other non-constexpr argument (default ``i32``).

    Returns ``(compiled, stats)``: the compiled kernel (its ``asm`` and ``metadata``) and the
    registers, stack frame, spill store and spill load bytes of ``ptxas`` plus the shared
    memory Triton allocates (``shared_bytes``)."""
    import re
    import subprocess
    import tempfile
    from pathlib import Path

    import triton
    from triton.backends.compiler import GPUTarget

    scalar_types = scalar_types or {}
    signature, attrs = {}, {}
    for i, name in enumerate(kernel.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = pointer_types[name]
        else:
            signature[name] = scalar_types.get(name, "i32")
        if name.endswith("_ptr") or name in divisible:
            attrs[(i,)] = [["tt.divisibility", 16]]
    options = {"num_warps": num_warps}
    if num_stages is not None:
        options["num_stages"] = num_stages
    source = triton.compiler.ASTSource(kernel, signature, constexprs, attrs)
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)
    with tempfile.TemporaryDirectory() as tmp:
        ptx = Path(tmp) / "kernel.ptx"
        ptx.write_text(compiled.asm["ptx"])
        log = subprocess.run(
            [triton.knobs.nvidia.ptxas.path, "-v", "--gpu-name", "sm_90a", str(ptx), "-o",
             str(Path(tmp) / "kernel.cubin")],
            capture_output=True,
            text=True,
            check=True,
        ).stderr  # fmt: skip
    stats = {key: int(re.search(pattern, log).group(1)) for key, pattern in PTXAS_STATS}
    return compiled, stats | {"shared_bytes": compiled.metadata.shared}
