"""The skip connection: ``out = F(x) + shortcut``, the sum at the end of a
residual block (He et al. 2015, eq. 1: ``y = F(x, {W_i}) + x``).

Why the gradient flows so well through it. With ``H(x) = F(x) + x``,

    dH/dx = dF/dx + I

so a block's backward pass returns ``dout · dF/dx + dout``: whatever happens
inside ``F``, the upstream gradient reaches ``x`` unchanged through the
identity term ``I``. Stack many blocks and the gradient at the input still
contains ``dout`` itself, instead of a product of many small Jacobians.

For the sum node alone, d(a + b)/da = d(a + b)/db = I: the gradient fans out,
both inputs receive ``dout`` exactly as it is. The two branches then add their
contributions back up where they meet again (at ``x``, in the block's
``backward``).

The engine: ``minires.fast.add.add`` and ``add_forward``
(``minires/fast/add.py``) stand in for ``add`` and ``add_forward`` here, with
the same signatures and results (on NumPy, the sum split over the CPU
threads). The public ops ``minires.functional.add`` ... choose between the two
(see ``minires/functional/__init__.py``); ``MINIRES_FAST=0`` runs this file's
code everywhere.
"""

from __future__ import annotations

from typing import Any

from .. import backend
from ..backend import Array


def add(a: Array, b: Array) -> Array:
    """``a + b`` elementwise, a new array: the sum of the skip connection, and
    of the two branches' gradients where they meet again at a block's input.

    Parameters
    ----------
    a, b : arrays of the same shape and dtype (not modified)

    Returns
    -------
    out : shape and dtype of ``a``
    """
    return a + b


def check_shortcut(x: Any, shortcut: Any, op: str) -> None:
    """ValueError naming ``op`` unless ``shortcut`` has the shape and dtype of
    the residual ``x`` (and TypeError for arrays of two different libraries)."""
    backend.namespace(x, shortcut)
    if tuple(x.shape) != tuple(shortcut.shape):
        raise ValueError(f"{op}: expected shortcut of the residual's shape "
                         f"{tuple(x.shape)}, got {tuple(shortcut.shape)}")
    if x.dtype != shortcut.dtype:
        raise ValueError(f"{op}: expected shortcut of dtype {x.dtype} (the residual's), "
                         f"got {shortcut.dtype}")


def add_forward(x: Array, shortcut: Array) -> tuple[Array, Any]:
    """``out = x + shortcut``, where ``x`` is the residual branch ``F(x)``.

    Parameters
    ----------
    x : (N, C, H, W) or any shape, the output of the residual branch
    shortcut : same shape and dtype as ``x`` (the identity, or a projection)

    Returns
    -------
    out : same shape and dtype as ``x``
    cache : the shape, to check ``dout`` against in the backward pass
    """
    check_shortcut(x, shortcut, "add_forward")
    return add(x, shortcut), tuple(x.shape)


def add_backward(dout: Array, cache: Any) -> tuple[Array, Array]:
    """The gradient fans out: both branches receive ``dout`` unchanged.

    Parameters
    ----------
    dout : same shape as ``out``
    cache : from ``add_forward``

    Returns
    -------
    dx : ``dout`` itself, for the residual branch F
    dshortcut : ``dout`` itself, for the shortcut

    Both are the very same array (no copy). That is safe because no backward
    pass in minires writes into its ``dout``.
    """
    shape = cache
    if tuple(dout.shape) != shape:
        raise ValueError(f"add_backward: expected dout of shape {shape}, "
                         f"got {tuple(dout.shape)}")
    dx = dout          # d(x + shortcut)/dx = I
    dshortcut = dout   # d(x + shortcut)/dshortcut = I
    return dx, dshortcut
