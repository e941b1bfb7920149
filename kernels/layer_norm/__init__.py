"""Fused residual add + LayerNorm: ``add_layer_norm(x, residual, weight, bias, eps, ...)``.

Backends: ``reference.py`` (torch, any device) and ``triton.py`` (fused kernels for CUDA,
imported on first use); README.md has the math of the backward and the kernels' design.
"""

from .interface import add_layer_norm

__all__ = ["add_layer_norm"]
