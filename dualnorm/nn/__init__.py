"""Layers with PyTorch's names, arguments, defaults and channels-first layouts.

Every module has ``forward`` (call it) and ``backward(grad_output)``.
"""

from dualnorm.nn import functional, utils
from dualnorm.nn.activations import SELU, Flatten, Identity, LeakyReLU, ReLU, Sigmoid, Tanh
from dualnorm.nn.batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d, BatchRenorm1d, BatchRenorm2d
from dualnorm.nn.dropout import Dropout, Dropout2d
from dualnorm.nn.groupnorm import GroupNorm
from dualnorm.nn.instancenorm import InstanceNorm1d, InstanceNorm2d, InstanceNorm3d
from dualnorm.nn.layernorm import LayerNorm, RMSNorm
from dualnorm.nn.linear import Linear
from dualnorm.nn.lrn import LocalResponseNorm
from dualnorm.nn.module import Module, Parameter, Sequential
from dualnorm.nn.pooling import (
    AdaptiveAvgPool1d,
    AdaptiveAvgPool2d,
    AvgPool1d,
    AvgPool2d,
    MaxPool1d,
    MaxPool2d,
)
from dualnorm.nn.spectral_norm import SpectralNorm
from dualnorm.nn.syncbatchnorm import SyncBatchNorm
from dualnorm.nn.weight_norm import WeightNorm

__all__ = [
    "SELU",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "BatchRenorm1d",
    "BatchRenorm2d",
    "Flatten",
    "GroupNorm",
    "Identity",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "LayerNorm",
    "LeakyReLU",
    "Linear",
    "LocalResponseNorm",
    "Module",
    "Parameter",
    "RMSNorm",
    "ReLU",
    "Sequential",
    "Sigmoid",
    "SpectralNorm",
    "SyncBatchNorm",
    "Tanh",
    "WeightNorm",
    "functional",
    "utils",
]

__all__ += [  # pooling and dropout
    "AdaptiveAvgPool1d",
    "AdaptiveAvgPool2d",
    "AvgPool1d",
    "AvgPool2d",
    "Dropout",
    "Dropout2d",
    "MaxPool1d",
    "MaxPool2d",
]
