"""What the GPU benchmarks share: timing, the two measured ceilings, errors, table cells."""

from __future__ import annotations

from collections.abc import Callable

import torch

HBM_BYTES_PER_S = 4.2e12  # copy bandwidth measured on this H200 (shared/device/README.md)
MATMUL_FLOPS_PER_S = 757e12  # bf16 dense matmul measured there


def median_ms(
    fn: Callable[[], object], grad_to_none=None, warmup: int = 25, rep: int = 100
) -> float:
    """``triton.testing.do_bench`` median (CUDA events; ``warmup``/``rep`` in milliseconds)."""
    from triton.testing import do_bench

    return do_bench(fn, warmup=warmup, rep=rep, grad_to_none=grad_to_none, return_mode="median")


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


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64 when ref is, else float32."""
    dtype = torch.float64 if ref.dtype == torch.float64 else torch.float32
    ref = ref.to(dtype)
    return ((out.to(dtype) - ref).norm() / ref.norm()).item()


def fmt(x: float | None, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def ratio(a: float | None, b: float | None, spec: str = ".2f") -> str:
    return fmt(a / b if a and b else None, spec)
