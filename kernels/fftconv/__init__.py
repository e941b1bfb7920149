"""FFT convolution: ``fftconv(u, k, ...)`` with torch, Monarch and Triton backends."""

from .interface import FFTConv, FilterSpectrum, fftconv, filter_spectrum
from .plan import ConvPlan, make_plan

__all__ = ["ConvPlan", "FFTConv", "FilterSpectrum", "fftconv", "filter_spectrum", "make_plan"]
