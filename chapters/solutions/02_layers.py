"""Solutions to chapter 02's exercises: the fully connected layer, ReLU and
softmax cross-entropy as forward/backward pairs with a cache."""

from __future__ import annotations

import numpy as np

from minires.exercises import CheckResult, check_linear, check_relu, check_softmax_cross_entropy


def linear_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray):
    """out = x @ w.T + b for x (N, D_in), w (D_out, D_in), b (D_out,); the
    cache is what the backward needs: x and w."""
    return x @ w.T + b, (x, w)


def linear_backward(dout: np.ndarray, cache):
    """dx = dout @ w (N, D_in); dw = dout.T @ x (D_out, D_in); db = sum over
    the batch of dout (D_out,)."""
    x, w = cache
    return dout @ w, dout.T @ x, dout.sum(axis=0)


def relu_forward(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ReLU: out = max(x, 0); the cache is the mask of the units that pass."""
    mask = x > 0
    return x * mask, mask


def relu_backward(dout: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """dx = dout where the unit passed, 0 elsewhere (a new array)."""
    return dout * mask


def softmax_cross_entropy_forward(logits: np.ndarray, y: np.ndarray,
                                  label_smoothing: float = 0.0):
    """Mean cross-entropy of softmax(logits) (N, K) against the targets
    q = (1 - e) * onehot(y) + e / K; the cache is (p, q)."""
    n, k = logits.shape
    q = (1 - label_smoothing) * np.eye(k)[y] + label_smoothing / k
    z = logits - logits.max(axis=1, keepdims=True)          # every exponent <= 0
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -(q * logp).sum() / n, (np.exp(logp), q)


def softmax_cross_entropy_backward(dout: float, cache) -> np.ndarray:
    """dlogits = dout * (p - q) / N."""
    p, q = cache
    return dout * (p - q) / p.shape[0]


def checks() -> list[CheckResult]:
    """Every checker of the chapter on the solutions above."""
    return [check_linear(linear_forward, linear_backward),
            check_relu(relu_forward, relu_backward),
            check_softmax_cross_entropy(softmax_cross_entropy_forward,
                                        softmax_cross_entropy_backward)]
