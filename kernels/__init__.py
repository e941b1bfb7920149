"""longconv kernels: the FFT convolution and the short depthwise convolution."""

from .fftconv import FFTConv, FilterSpectrum, fftconv, filter_spectrum

__all__ = ["FFTConv", "FilterSpectrum", "fftconv", "filter_spectrum"]
