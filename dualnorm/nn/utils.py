"""Wrappers that reparametrize a layer's weight, named as in ``torch.nn.utils``."""

from dualnorm.nn.spectral_norm import SpectralNorm, spectral_norm
from dualnorm.nn.weight_norm import WeightNorm, weight_norm

__all__ = ["SpectralNorm", "WeightNorm", "spectral_norm", "weight_norm"]
