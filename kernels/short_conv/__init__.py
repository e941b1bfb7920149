"""Short depthwise convolution: ``short_conv(x, w, bias, padding=..., layout=...)``."""

from .interface import short_conv

__all__ = ["short_conv"]
