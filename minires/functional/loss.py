"""Softmax cross-entropy (the classifier's loss), softmax and log-softmax.

For logits ``z`` (N, K) and integer targets ``y`` (N,), with label smoothing
``e`` the target distribution of sample n is (PyTorch's convention)::

    q[n] = (1 - e) * onehot(y[n]) + e / K

and the loss is the mean over the batch of the cross-entropy::

    loss = -(1/N) * sum_n sum_k q[n, k] * log_softmax(z[n])[k]

Its gradient is the famous "prediction minus target"::

    dloss/dz = (softmax(z) - q) / N

Numerical stability: ``log_softmax(z) = z - max(z) - log(sum(exp(z - max(z))))``
(the log-sum-exp trick). After subtracting the row maximum every exponent is
<= 0, so nothing overflows even for logits of 1e4, and the largest term of the
sum is exactly 1, so the log never sees 0.

The engine (``minires.fast``) has no fast function for the loss (a few
thousand numbers per batch): the code here runs whether it is on or off.
"""

from __future__ import annotations

from typing import Any

from .. import backend
from ..backend import Array


def log_softmax(x: Array, axis: int = -1) -> Array:
    """``x - logsumexp(x)`` along ``axis``, computed stably; shape and dtype of ``x``."""
    xp = backend.namespace(x)
    z = x - xp.max(x, axis=axis, keepdims=True)       # every entry <= 0, the max is 0
    return z - xp.log(xp.sum(xp.exp(z), axis=axis, keepdims=True))


def softmax(x: Array, axis: int = -1) -> Array:
    """``exp(x) / sum(exp(x))`` along ``axis``, computed stably; shape and dtype of ``x``."""
    xp = backend.namespace(x)
    e = xp.exp(x - xp.max(x, axis=axis, keepdims=True))
    return e / xp.sum(e, axis=axis, keepdims=True)


def _check_inputs(logits: Any, y: Any, label_smoothing: float, op: str) -> None:
    shape = getattr(logits, "shape", None)
    if shape is None or len(shape) != 2:
        got = tuple(shape) if shape is not None else type(logits).__name__
        raise ValueError(f"{op}: expected logits of rank 2 (N, K), got {got}")
    xp = backend.namespace(logits)
    if not xp.isdtype(logits.dtype, "real floating"):
        raise ValueError(f"{op}: expected floating-point logits, got dtype {logits.dtype}")
    n, k = shape
    if n < 1 or k < 1:
        raise ValueError(f"{op}: expected logits (N, K) with N >= 1 and K >= 1, "
                         f"got {tuple(shape)}")
    y_shape = getattr(y, "shape", None)
    if y_shape is None or tuple(y_shape) != (n,):
        got = tuple(y_shape) if y_shape is not None else type(y).__name__
        raise ValueError(f"{op}: expected targets of shape ({n},) to match logits "
                         f"{tuple(shape)}, got {got}")
    try:
        backend.namespace(logits, y)
    except TypeError:
        raise ValueError(f"{op}: expected targets from the same array library as the logits "
                         f"({backend.type_name(logits)}), got {backend.type_name(y)}") from None
    if not xp.isdtype(y.dtype, "integral"):
        raise ValueError(f"{op}: expected integer class indices, got dtype {y.dtype}")
    lo, hi = int(xp.min(y)), int(xp.max(y))
    if lo < 0 or hi >= k:
        raise ValueError(f"{op}: expected class indices in [0, {k}), "
                         f"got {lo if lo < 0 else hi}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"{op}: expected label_smoothing in [0, 1], got {label_smoothing}")


def softmax_cross_entropy_forward(logits: Array, y: Array,
                                  label_smoothing: float = 0.0) -> tuple[Array, Any]:
    """Mean cross-entropy between ``softmax(logits)`` and the (smoothed) targets.

    Parameters
    ----------
    logits : (N, K) floating point, the unnormalized class scores
    y : (N,) integer class indices in [0, K), same array library as ``logits``
    label_smoothing : e in [0, 1]; the target of sample n is
        ``(1 - e) * onehot(y[n]) + e / K``

    Returns
    -------
    loss : 0-d array, dtype of ``logits``
    cache : (softmax probabilities (N, K), target distribution (N, K))
    """
    _check_inputs(logits, y, label_smoothing, "softmax_cross_entropy_forward")
    xp = backend.namespace(logits)
    n, k = logits.shape
    classes = xp.arange(k, dtype=xp.int64)
    onehot = xp.astype(classes[None, :] == xp.astype(y, xp.int64)[:, None], logits.dtype)
    e = float(label_smoothing)
    q = onehot * (1.0 - e) + e / k                        # target distribution (N, K)
    logp = log_softmax(logits, axis=1)
    loss = -xp.sum(q * logp) / n
    return xp.asarray(loss, dtype=logits.dtype), (xp.exp(logp), q)


def softmax_cross_entropy_backward(dout: Any, cache: Any) -> Array:
    """Gradient of ``dout * loss`` with respect to the logits.

    Parameters
    ----------
    dout : python number or 0-d array, the upstream gradient of the loss (1.0
        when the loss is the end of the graph); left untouched
    cache : from ``softmax_cross_entropy_forward``

    Returns
    -------
    dlogits : (N, K), ``dout * (softmax(logits) - q) / N``, dtype of the logits
    """
    p, q = cache
    if tuple(getattr(dout, "shape", ())) != ():
        raise ValueError(f"softmax_cross_entropy_backward: expected a scalar dout (the loss "
                         f"is 0-d), got shape {tuple(dout.shape)}")
    scale = float(dout) / p.shape[0]   # a python float keeps the logits' dtype
    return (p - q) * scale
