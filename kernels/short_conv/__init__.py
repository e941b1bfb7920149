"""Short depthwise convolution: ``short_conv(x, w, bias, padding=..., layout=..., backend=...)``.

Backends: ``reference.py`` (torch, any device) and ``triton.py`` (fused kernels for CUDA,
imported on first use); README.md has the kernels' design.
"""

from .interface import short_conv

__all__ = ["short_conv"]
