"""Layers, blocks and the ``Module`` machinery (PyTorch's names, no autograd)."""

from . import init
from .module import Identity, Module, Parameter, Sequential

__all__ = ["Identity", "Module", "Parameter", "Sequential", "init"]
