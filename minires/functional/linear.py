"""Fully connected layer and flatten.

Shapes: input ``x`` (N, D_in), weight ``w`` (D_out, D_in) (PyTorch's layout,
so weights copy across unchanged), bias ``b`` (D_out,), output (N, D_out)::

    out = x @ w.T + b

Backward, from ``dout`` (N, D_out)::

    dx = dout @ w          (N, D_in)
    dw = dout.T @ x        (D_out, D_in)
    db = sum_n dout[n]     (D_out,)

``flatten`` reshapes (N, d1, d2, ...) to (N, d1*d2*...), the bridge between the
convolutional part of a network and its classifier; its backward reshapes the
gradient back.

The engine (``minires.fast``) has no fast function for these: one product in
BLAS is as fast as it gets, and the code here runs whether it is on or off.
"""

from __future__ import annotations

import math
from typing import Any

from .. import backend
from ..backend import Array


def _shape(a: Any) -> Any:
    shape = getattr(a, "shape", None)
    return tuple(shape) if shape is not None else type(a).__name__


def linear_forward(x: Array, w: Array, b: Array | None = None) -> tuple[Array, Any]:
    """``out = x @ w.T + b``.

    Parameters
    ----------
    x : (N, D_in) floating-point array
    w : (D_out, D_in), same dtype as ``x``
    b : (D_out,) or None (no bias)

    Returns
    -------
    out : (N, D_out), dtype of ``x``
    cache : what ``linear_backward`` needs (``x``, ``w``, whether there is a bias)
    """
    op = "linear_forward"
    if getattr(x, "ndim", None) != 2:
        raise ValueError(f"{op}: expected x of rank 2 (N, D_in), got {_shape(x)}")
    if getattr(w, "ndim", None) != 2:
        raise ValueError(f"{op}: expected w of rank 2 (D_out, D_in), got {_shape(w)}")
    xp = backend.namespace(x, w) if b is None else backend.namespace(x, w, b)
    if not xp.isdtype(x.dtype, "real floating"):
        raise ValueError(f"{op}: expected a floating-point x, got dtype {x.dtype}")
    d_out, d_in = w.shape
    if x.shape[1] != d_in:
        raise ValueError(f"{op}: expected x of shape (N, {d_in}) to match w {tuple(w.shape)}, "
                         f"got {tuple(x.shape)}")
    if w.dtype != x.dtype:
        raise ValueError(f"{op}: expected w of dtype {x.dtype} (the dtype of x), got {w.dtype}")
    if b is not None:
        if tuple(b.shape) != (d_out,):
            raise ValueError(f"{op}: expected b of shape ({d_out},) to match w "
                             f"{tuple(w.shape)}, got {tuple(b.shape)}")
        if b.dtype != x.dtype:
            raise ValueError(f"{op}: expected b of dtype {x.dtype} (the dtype of x), "
                             f"got {b.dtype}")

    out = xp.matmul(x, xp.permute_dims(w, (1, 0)))   # (N, D_in) @ (D_in, D_out)
    if b is not None:
        out += b                                      # out is ours: add in place
    return out, (x, w, b is not None)


def linear_backward(dout: Array, cache: Any,
                    need_param_grads: bool = True) -> tuple[Array, Array | None, Array | None]:
    """Gradients of ``out = x @ w.T + b``.

    Parameters
    ----------
    dout : (N, D_out), the upstream gradient (left untouched)
    cache : from ``linear_forward``
    need_param_grads : False skips ``dw`` and ``db`` (frozen weights)

    Returns
    -------
    dx : (N, D_in)
    dw : (D_out, D_in), or None when ``need_param_grads`` is False
    db : (D_out,), or None when there is no bias or ``need_param_grads`` is False
    """
    x, w, has_bias = cache
    xp = backend.namespace(dout, x)
    if tuple(dout.shape) != (x.shape[0], w.shape[0]):
        raise ValueError(f"linear_backward: expected dout of shape "
                         f"{(x.shape[0], w.shape[0])}, got {tuple(dout.shape)}")
    dx = xp.matmul(dout, w)                                     # (N, D_out) @ (D_out, D_in)
    if not need_param_grads:
        return dx, None, None
    dw = xp.matmul(xp.permute_dims(dout, (1, 0)), x)            # (D_out, N) @ (N, D_in)
    db = xp.sum(dout, axis=0) if has_bias else None             # each sample adds to b
    return dx, dw, db


def flatten_forward(x: Array) -> tuple[Array, Any]:
    """(N, d1, d2, ...) -> (N, d1*d2*...), in C order (as ``torch.flatten(x, 1)``).

    A 1-D input (N,) becomes (N, 1). The result is a copy, never a view of
    ``x``: finite-difference checks perturb ``x`` in place and would otherwise
    move the "output" along with it. (It is small: flatten usually follows
    global average pooling.)

    Returns
    -------
    out : (N, prod(d1, d2, ...))
    cache : the shape of ``x``
    """
    if getattr(x, "ndim", 0) < 1:
        raise ValueError(f"flatten_forward: expected an array of rank >= 1 (N, ...), "
                         f"got {_shape(x)}")
    xp = backend.namespace(x)
    shape = tuple(x.shape)
    return xp.reshape(x, (shape[0], math.prod(shape[1:])), copy=True), shape


def flatten_backward(dout: Array, cache: Any) -> Array:
    """(N, d1*d2*...) -> (N, d1, d2, ...): the gradient reshaped back to ``x``."""
    shape = cache
    if tuple(dout.shape) != (shape[0], math.prod(shape[1:])):
        raise ValueError(f"flatten_backward: expected dout of shape "
                         f"{(shape[0], math.prod(shape[1:]))}, got {tuple(dout.shape)}")
    return backend.namespace(dout).reshape(dout, shape)
