"""Solutions to chapter 05's exercises: max pooling and one step of SGD."""

from __future__ import annotations

import numpy as np

from minires.exercises import CheckResult, check_maxpool2d, check_sgd_step


def maxpool_forward(x: np.ndarray, kernel_size: int, stride: int):
    """x (N, C, H, W) -> out (N, C, OH, OW), the maximum of each window.

    The cache keeps, for every window, the row and column of its maximum
    inside the window (N, C, OH, OW) each, with the input's shape.
    """
    k, s = kernel_size, stride
    n, c, h, w = x.shape
    oh, ow = (h - k) // s + 1, (w - k) // s + 1
    out = np.zeros((n, c, oh, ow), dtype=x.dtype)
    rows = np.zeros((n, c, oh, ow), dtype=np.int64)
    cols = np.zeros((n, c, oh, ow), dtype=np.int64)
    for i in range(oh):
        for j in range(ow):
            window = x[:, :, i * s:i * s + k, j * s:j * s + k].reshape(n, c, k * k)
            a = np.argmax(window, axis=2)               # flat index in the window
            out[:, :, i, j] = np.take_along_axis(window, a[:, :, None], axis=2)[:, :, 0]
            rows[:, :, i, j], cols[:, :, i, j] = i * s + a // k, j * s + a % k
    return out, (x.shape, rows, cols)


def maxpool_backward(dout: np.ndarray, cache) -> np.ndarray:
    """dout (N, C, OH, OW) -> dx (N, C, H, W): each window's dout goes to its
    maximum; where windows overlap, the gradients add up (+=)."""
    x_shape, rows, cols = cache
    n, c, oh, ow = dout.shape
    dx = np.zeros(x_shape, dtype=dout.dtype)
    for b in range(n):
        for ch in range(c):
            for i in range(oh):
                for j in range(ow):
                    dx[b, ch, rows[b, ch, i, j], cols[b, ch, i, j]] += dout[b, ch, i, j]
    return dx


def sgd_step(p, grad, buf, lr, momentum, dampening, weight_decay):
    """One step of torch.optim.SGD (no Nesterov): returns (p_new, buf_new)."""
    g = grad + weight_decay * p
    if buf is None:
        buf = g.copy()
    else:
        buf = momentum * buf + (1 - dampening) * g
    return p - lr * buf, buf


def checks() -> list[CheckResult]:
    """Every checker of the chapter on the solutions above."""
    return [check_maxpool2d(maxpool_forward, maxpool_backward), check_sgd_step(sgd_step)]
