"""Weight initialization, reproducible from one seed.

``minires.nn.init.manual_seed(0)`` resets the generator every layer draws its
initial weights from, so the same seed builds the same network. Values are
drawn on the host in float64 with NumPy, then cast and moved to the active
backend: the same seed gives the same weights on NumPy and on CuPy.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import backend
from ..backend import Array

_rng = np.random.default_rng(0)


def manual_seed(seed: int) -> None:
    """Reseed the generator used by every initializer."""
    global _rng
    _rng = np.random.default_rng(seed)


def get_rng() -> np.random.Generator:
    return _rng


def fan_in_and_out(shape: tuple[int, ...]) -> tuple[int, int]:
    """``fan_in = C_in * KH * KW`` and ``fan_out = C_out * KH * KW`` for a conv
    weight (C_out, C_in, KH, KW); ``in_features`` and ``out_features`` for a
    linear weight (out, in)."""
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def kaiming_normal(shape: tuple[int, ...], mode: str = "fan_in", dtype: Any = "float32") -> Array:
    """He et al. (2015) initialization: normal with std ``sqrt(2 / n)``.

    ``n`` is the fan-in ``k*k*c`` as in the paper (``mode="fan_in"``), or the
    fan-out ``k*k*out_channels`` as torchvision's ResNet uses
    (``mode="fan_out"``).
    """
    fan_in, fan_out = fan_in_and_out(shape)
    n = fan_in if mode == "fan_in" else fan_out
    return backend.asarray(_rng.normal(0.0, math.sqrt(2.0 / n), size=shape), dtype=dtype)


def uniform(shape: tuple[int, ...], bound: float, dtype: Any = "float32") -> Array:
    """Uniform on ``[-bound, bound]`` (PyTorch's default for Linear uses
    ``bound = 1 / sqrt(fan_in)`` for weight and bias)."""
    return backend.asarray(_rng.uniform(-bound, bound, size=shape), dtype=dtype)


def constant(shape: tuple[int, ...], value: float, dtype: Any = "float32") -> Array:
    return backend.asarray(np.full(shape, value, dtype=np.float64), dtype=dtype)
