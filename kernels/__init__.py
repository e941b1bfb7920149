"""longconv kernels: the FFT convolution and the short depthwise convolution."""

from .fftconv import FFTConv, FilterSpectrum, fftconv, filter_spectrum
from .short_conv import short_conv

__all__ = ["FFTConv", "FilterSpectrum", "fftconv", "filter_spectrum", "short_conv"]
