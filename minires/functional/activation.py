"""ReLU, the rectifier: ``out = max(0, x)`` elementwise, any shape.

Its derivative is 1 where ``x > 0`` and 0 where ``x < 0``; at exactly 0 we use
0, as PyTorch does. So the backward pass lets ``dout`` through where the unit
was on and blocks it where it was off::

    dx = where(x > 0, dout, 0)

``dx`` is a new array. Never zero ``dout`` in place (``dout[x <= 0] = 0``):
in a residual block the same ``dout`` also flows down the shortcut, and an
in-place edit would corrupt that branch.

The engine: ``minires.fast.activation.relu_forward`` and ``relu_backward``
(``minires/fast/activation.py``) stand in for the pair here, with the same
signatures and results (on NumPy, one SIMD pass each, split over the CPU
threads). The public ops ``minires.functional.relu_forward`` ... choose
between the two (see ``minires/functional/__init__.py``); ``MINIRES_FAST=0``
runs this file's code everywhere.
"""

from __future__ import annotations

from typing import Any

from .. import backend
from ..backend import Array


def relu_forward(x: Array) -> tuple[Array, Any]:
    """``out = max(0, x)``.

    Parameters
    ----------
    x : array of any shape, floating point

    Returns
    -------
    out : same shape and dtype as ``x`` (NaN stays NaN, as in PyTorch)
    cache : the boolean mask ``x > 0``, where the gradient passes
    """
    xp = backend.namespace(x)
    if not xp.isdtype(x.dtype, "real floating"):
        raise ValueError(f"relu_forward: expected a floating-point x, got dtype {x.dtype}")
    zero = xp.zeros((), dtype=x.dtype)
    return xp.where(x < 0, zero, x), x > 0


def relu_backward(dout: Array, cache: Any) -> Array:
    """``dx = dout`` where ``x > 0``, else 0; a new array, ``dout`` is untouched.

    Parameters
    ----------
    dout : same shape as ``x``
    cache : from ``relu_forward``

    Returns
    -------
    dx : same shape and dtype as ``dout``
    """
    on = cache
    if tuple(dout.shape) != tuple(on.shape):
        raise ValueError(f"relu_backward: expected dout of shape {tuple(on.shape)}, "
                         f"got {tuple(dout.shape)}")
    xp = backend.namespace(dout, on)
    zero = xp.zeros((), dtype=dout.dtype)
    return xp.where(on, dout, zero)
