"""longconv kernels: the FFT convolution, the short depthwise convolution, and the fused
residual add + LayerNorm of the LM blocks."""

from .fftconv import FFTConv, FilterSpectrum, fftconv, filter_spectrum
from .layer_norm import add_layer_norm
from .short_conv import short_conv

__all__ = [
    "FFTConv",
    "FilterSpectrum",
    "add_layer_norm",
    "fftconv",
    "filter_spectrum",
    "short_conv",
]
