"""Solutions to chapter 01's exercises: the numerical gradient and the
softmax's backward pass."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from minires.exercises import CheckResult, check_numerical_gradient, check_softmax


def numerical_gradient(f: Callable[[np.ndarray], np.ndarray], x: np.ndarray,
                       dout: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """Centred differences of ``L(x) = sum(f(x) * dout)``, one entry of x at a
    time; x is perturbed in place and restored."""
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + h
        plus = np.sum(f(x) * dout)
        x[i] = old - h
        minus = np.sum(f(x) * dout)
        x[i] = old
        grad[i] = (plus - minus) / (2 * h)
    return grad


def softmax_forward(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Softmax over the last axis, with each row's maximum subtracted first;
    the cache is the output p."""
    e = np.exp(x - np.max(x, axis=-1, keepdims=True))
    p = e / np.sum(e, axis=-1, keepdims=True)
    return p, p


def softmax_backward(dout: np.ndarray, p: np.ndarray) -> np.ndarray:
    """dx_i = p_i (dout_i - sum_j p_j dout_j), row by row."""
    return p * (dout - np.sum(p * dout, axis=-1, keepdims=True))


def checks() -> list[CheckResult]:
    """Every checker of the chapter on the solutions above."""
    return [check_numerical_gradient(numerical_gradient),
            check_softmax(softmax_forward, softmax_backward)]
