"""Layers, blocks and the ``Module`` machinery (PyTorch's names, no autograd)."""

from . import init
from .blocks import (
    BasicBlock,
    Bottleneck,
    PlainBlock,
    PreActBlock,
    PreActBottleneck,
    ShortcutA,
)
from .layers import (
    AvgPool2d,
    BatchNorm1d,
    BatchNorm2d,
    Conv2d,
    Flatten,
    GlobalAvgPool2d,
    Linear,
    MaxPool2d,
    ReLU,
)
from .loss import CrossEntropyLoss
from .module import Identity, Module, Parameter, Sequential

__all__ = [
    "BasicBlock", "Bottleneck", "PlainBlock", "PreActBlock", "PreActBottleneck", "ShortcutA",
    "AvgPool2d", "BatchNorm1d", "BatchNorm2d", "Conv2d", "CrossEntropyLoss", "Flatten",
    "GlobalAvgPool2d", "Identity", "Linear", "MaxPool2d", "Module", "Parameter", "ReLU",
    "Sequential", "init",
]
