"""Checkers for chapter 05's pooling exercise: max-pool forward and backward."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..functional import avgpool2d_forward, maxpool2d_backward, maxpool2d_forward
from .core import MISSING, Check, CheckResult

# (input shape, kernel, stride): non-overlapping windows on a non-square map,
# then overlapping ones (kernel 3, stride 2), where one pixel can be the
# maximum of two windows and its gradients must add up.
CASES = (((2, 3, 6, 8), 2, 2), ((2, 2, 7, 9), 3, 2))


def _windows(out_hw: tuple[int, int], k: int, s: int):
    """(oh, ow, row slice, col slice) of every window, row by row."""
    for oh in range(out_hw[0]):
        for ow in range(out_hw[1]):
            yield oh, ow, slice(oh * s, oh * s + k), slice(ow * s, ow * s + k)


def _routed(x: np.ndarray, dout: np.ndarray, k: int, s: int, how: str) -> np.ndarray:
    """dx of a max-pool computed the right way (``"add"``) or one of the
    typical wrong ways:

    - ``"assign"``: ``=`` instead of ``+=`` (overlapping windows overwrite);
    - ``"spread"``: the whole ``dout`` to every pixel of the window;
    - ``"average"``: ``dout / k**2`` to every pixel (average-pool's backward);
    - ``"transposed"``: the argmax's row and column swapped inside the window.
    """
    dx = np.zeros_like(x)
    for oh, ow, rows, cols in _windows(dout.shape[2:], k, s):
        win = x[:, :, rows, cols].reshape(x.shape[0], x.shape[1], k * k)
        g = dout[:, :, oh, ow]
        if how == "spread":
            dx[:, :, rows, cols] += g[:, :, None, None]
            continue
        if how == "average":
            dx[:, :, rows, cols] += g[:, :, None, None] / (k * k)
            continue
        arg = np.argmax(win, axis=2)
        i, j = np.divmod(arg, k)
        if how == "transposed":
            i, j = j, i
        for n in range(x.shape[0]):
            for c in range(x.shape[1]):
                r, q = rows.start + i[n, c], cols.start + j[n, c]
                if how == "assign":
                    dx[n, c, r, q] = g[n, c]
                else:
                    dx[n, c, r, q] += g[n, c]
    return dx


def check_maxpool2d(forward: Callable, backward: Callable) -> CheckResult:
    """Check a max-pool pair without padding.

    Signatures::

        forward(x, kernel_size, stride) -> (out, cache)
            x : (N, C, H, W) float64; kernel_size, stride : ints
            out : (N, C, OH, OW), OH = (H - kernel_size) // stride + 1 (same for W)
        backward(dout, cache) -> dx
            dout : (N, C, OH, OW); dx : (N, C, H, W)

    Compared with :func:`minires.functional.maxpool2d_forward` /
    ``maxpool2d_backward`` on two cases: kernel 2, stride 2 on an input of
    shape (2, 3, 6, 8), and overlapping windows, kernel 3, stride 2, on
    (2, 2, 7, 9). The inputs hold distinct values (no ties), ``dout`` is
    random. Neither ``x`` nor ``dout`` may be modified.
    """
    check = Check("check_maxpool2d")
    rng = np.random.default_rng(0)
    for shape, k, s in CASES:
        size = int(np.prod(shape))
        x = (rng.permutation(size).reshape(shape) - size / 2) / size * 4.0   # distinct values
        label = f"(kernel {k}, stride {s}, input {shape})"
        out_ref, cache_ref = maxpool2d_forward(x, k, s)
        dout = rng.standard_normal(out_ref.shape)
        dx_ref = maxpool2d_backward(dout, cache_ref)

        x_given = x.copy()
        parts = check.unpack(f"forward(x, {k}, {s})",
                             check.call(f"forward(x, {k}, {s})", forward, x_given, k, s),
                             ["out", "cache"])
        if parts is None:
            if not check.implemented:
                break
            continue
        out, cache = parts
        ok = check.compare(f"out {label}", out, out_ref, tol=1e-12, mistakes=[
            (avgpool2d_forward(x, k, s)[0], "out is the mean of each window: that is average "
                                            "pooling; max-pooling keeps the largest value."),
        ])
        got = np.shape(out) if hasattr(out, "shape") else None
        stride_one = (*shape[:2], shape[2] - k + 1, shape[3] - k + 1)
        if not ok and got == stride_one:
            check.hint("out has the shape of a stride-1 pooling: the windows start every "
                       "`stride` pixels, so OH = (H - kernel_size) // stride + 1.")
        if not np.array_equal(x_given, x):
            check.fail(f"forward modified x in place {label}; it must leave its input "
                       "untouched")

        dout_given = dout.copy()
        dx = check.call(f"backward(dout, cache) {label}", backward, dout_given, cache)
        if dx is MISSING:
            if not check.implemented:
                break
            continue
        mistakes = [
            (_routed(x, dout, k, s, "spread"),
             "dx gives every pixel of a window the whole dout: only the window's maximum "
             "influenced the output, so only it gets the gradient (the others get 0)."),
            (_routed(x, dout, k, s, "average"),
             "dx gives every pixel of a window dout / kernel_size**2: that is average-pool's "
             "backward. Max-pool routes the whole dout to the position of the maximum."),
            (_routed(x, dout, k, s, "transposed"),
             "dx routes each gradient to the wrong pixel of its window, with row and column "
             "swapped: the flat argmax a of a k x k window is at row a // k, column a % k."),
        ]
        if k > s:
            mistakes.insert(0, (_routed(x, dout, k, s, "assign"),
                                "where windows overlap a pixel can be the maximum of two "
                                "windows: its gradients must add up (dx[...] += ...), "
                                "not overwrite each other (=)."))
        check.compare(f"dx {label}", dx, dx_ref, tol=1e-12, mistakes=mistakes)
        if not np.array_equal(dout_given, dout):
            check.fail(f"backward modified dout in place {label}; a backward pass must leave "
                       "its inputs untouched (another branch may still need them)")
    return check.result()
