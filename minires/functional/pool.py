"""Pooling: max and average over sliding windows, and global average pooling.

Shapes: ``x`` (N, C, H, W) -> ``out`` (N, C, OH, OW) with, per spatial axis,
``OH = (H + 2 * padding - KH) // stride + 1`` (PyTorch's floor mode); stride
defaults to the kernel size. Channels never mix.

Like the portable im2col (see ``conv.py``), the windows are visited one kernel
offset (i, j) at a time: ``x_padded[window(i, j, ...)]`` is the (N, C, OH, OW)
array of the pixel at offset (i, j) of every window. So

- max-pool keeps a running maximum over the offsets, remembering for every
  output pixel which offset won; its backward adds ``dout`` into the strided
  slice of that offset wherever it won;
- average-pool sums the offsets and divides by KH*KW; its backward hands every
  offset an equal share ``dout / (KH*KW)``.

PyTorch's conventions: max-pool pads with -inf (padding never wins), average
pool counts the zero padding in the mean (``count_include_pad=True``), and
padding may be at most half the kernel. Ties in a max-pool window send the
whole gradient to the first maximum in row-major order, as PyTorch does.

The engine (``minires.fast``) has no fast function for pooling: the code here
runs whether it is on or off (a ResNet pools once, at its end).
"""

from __future__ import annotations

import math

from .. import backend
from ..backend import Array
from .conv import window
from .shapes import (
    IntPair,
    as_pair,
    channel_major_zeros,
    check_dout,
    check_image,
    check_window,
    pad2d,
    unpad2d,
)


def _pool_params(x: Array, kernel_size: IntPair, stride: IntPair | None, padding: IntPair,
                 op: str):
    """Validate a pooling call; return (kernel, stride, padding, (OH, OW))."""
    kernel = as_pair(kernel_size, "kernel_size", op, 1)
    stride = kernel if stride is None else as_pair(stride, "stride", op, 1)
    padding = as_pair(padding, "padding", op, 0)
    check_image(x, op)
    if padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2:
        raise ValueError(f"{op}: expected padding at most half the kernel size {kernel}, "
                         f"got padding {padding}")
    out_size = check_window(x.shape, kernel, stride, padding, op)
    return kernel, stride, padding, out_size


# ---- max pooling ---------------------------------------------------------------

def maxpool2d_forward(x: Array, kernel_size: IntPair, stride: IntPair | None = None,
                      padding: IntPair = 0) -> tuple[Array, tuple]:
    """Maximum over each window.

    Parameters
    ----------
    x : (N, C, H, W) floating-point array.
    kernel_size : int or (h, w) pair.
    stride : int or (h, w) pair; None means ``kernel_size``.
    padding : int or (h, w) pair, at most half the kernel; acts as -inf.

    Returns
    -------
    out : (N, C, OH, OW), same dtype as ``x``
    cache : for ``maxpool2d_backward`` (the winning offset of every window)
    """
    (kh, kw), stride, padding, out_size = _pool_params(x, kernel_size, stride, padding,
                                                       "maxpool2d_forward")
    xp = backend.namespace(x)
    x_padded = pad2d(x, padding, value=-math.inf)
    out = xp.asarray(x_padded[window(0, 0, out_size, stride)], copy=True)  # never a view of x
    argmax = xp.zeros(out.shape, dtype=xp.int32)     # offset k = i*KW + j of the maximum
    for k in range(1, kh * kw):
        candidate = x_padded[window(k // kw, k % kw, out_size, stride)]
        # Strictly greater: on a tie the earlier offset keeps the gradient.
        # A NaN always wins, so NaNs propagate (PyTorch does the same).
        better = (candidate > out) | xp.isnan(candidate)
        out = xp.where(better, candidate, out)
        argmax = xp.where(better, k, argmax)
    cache = (argmax, tuple(x.shape), (kh, kw), stride, padding)
    return out, cache


def maxpool2d_backward(dout: Array, cache: tuple) -> Array:
    """Gradient of ``maxpool2d_forward``: each window's ``dout`` goes to its maximum.

    Parameters
    ----------
    dout : (N, C, OH, OW), not modified.
    cache : from ``maxpool2d_forward``.

    Returns
    -------
    dx : (N, C, H, W), same dtype as ``dout``
    """
    argmax, x_shape, (kh, kw), stride, padding = cache
    check_dout(dout, argmax.shape, "maxpool2d_backward")
    xp = backend.namespace(dout)
    n, c, h, w = x_shape
    out_size = tuple(dout.shape[2:])
    dx_padded = xp.zeros((n, c, h + 2 * padding[0], w + 2 * padding[1]), dtype=dout.dtype)
    for k in range(kh * kw):
        dx_padded[window(k // kw, k % kw, out_size, stride)] += xp.where(argmax == k, dout, 0.0)
    return unpad2d(dx_padded, padding)


# ---- average pooling -----------------------------------------------------------

def avgpool2d_forward(x: Array, kernel_size: IntPair, stride: IntPair | None = None,
                      padding: IntPair = 0) -> tuple[Array, tuple]:
    """Mean over each window; zero padding counts (``count_include_pad=True``).

    Parameters
    ----------
    x : (N, C, H, W) floating-point array.
    kernel_size : int or (h, w) pair.
    stride : int or (h, w) pair; None means ``kernel_size``.
    padding : int or (h, w) pair, at most half the kernel; zeros.

    Returns
    -------
    out : (N, C, OH, OW), same dtype as ``x``
    cache : for ``avgpool2d_backward``
    """
    (kh, kw), stride, padding, out_size = _pool_params(x, kernel_size, stride, padding,
                                                       "avgpool2d_forward")
    xp = backend.namespace(x)
    x_padded = pad2d(x, padding)
    total = xp.zeros((x.shape[0], x.shape[1], *out_size), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            total += x_padded[window(i, j, out_size, stride)]
    return total / (kh * kw), (tuple(x.shape), (kh, kw), stride, padding)


def avgpool2d_backward(dout: Array, cache: tuple) -> Array:
    """Gradient of ``avgpool2d_forward``: every pixel of a window gets ``dout / (KH*KW)``.

    Parameters
    ----------
    dout : (N, C, OH, OW), not modified.
    cache : from ``avgpool2d_forward``.

    Returns
    -------
    dx : (N, C, H, W), same dtype as ``dout``
    """
    (n, c, h, w), (kh, kw), stride, padding = cache
    out_size = check_window((n, c, h, w), (kh, kw), stride, padding, "avgpool2d_backward")
    check_dout(dout, (n, c, *out_size), "avgpool2d_backward")
    xp = backend.namespace(dout)
    share = dout / (kh * kw)
    dx_padded = xp.zeros((n, c, h + 2 * padding[0], w + 2 * padding[1]), dtype=dout.dtype)
    for i in range(kh):
        for j in range(kw):
            dx_padded[window(i, j, out_size, stride)] += share
    return unpad2d(dx_padded, padding)


# ---- global average pooling ----------------------------------------------------

def global_avgpool2d_forward(x: Array) -> tuple[Array, tuple]:
    """The mean of each feature map: (N, C, H, W) -> (N, C).

    Returns ``(out, cache)``; ``out`` has the dtype of ``x``.
    """
    check_image(x, "global_avgpool2d_forward")
    xp = backend.namespace(x)
    return xp.mean(x, axis=(2, 3)), (tuple(x.shape),)


def global_avgpool2d_backward(dout: Array, cache: tuple) -> Array:
    """Gradient of ``global_avgpool2d_forward``: each of the H*W pixels of a map
    gets an equal share of its ``dout``.

    Parameters
    ----------
    dout : (N, C), not modified.
    cache : from ``global_avgpool2d_forward``.

    Returns
    -------
    dx : (N, C, H, W), same dtype as ``dout``
    """
    (n, c, h, w), = cache
    check_dout(dout, (n, c), "global_avgpool2d_backward")
    xp = backend.namespace(dout)
    share = xp.reshape(dout, (n, c, 1, 1)) / (h * w)
    dx = channel_major_zeros(xp, (n, c, h, w), dout.dtype)   # the layout conv outputs have
    dx += share
    return dx
