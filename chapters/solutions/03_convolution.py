"""Solutions to chapter 03's exercises: im2col and col2im by kernel offsets,
and the convolution's backward pass through them."""

from __future__ import annotations

import numpy as np

from minires.exercises import CheckResult, check_col2im, check_conv2d, check_im2col


def im2col(x: np.ndarray, kernel_size: tuple[int, int], stride: int, padding: int
           ) -> np.ndarray:
    """(N, C, H, W) -> cols (N*OH*OW, C*KH*KW), rows (n, oh, ow), columns (c, i, j).

    One strided slice per kernel offset (i, j): the pixel that offset reads
    for every output position at once.
    """
    n, c, h, w = x.shape
    kh, kw = kernel_size
    s, p = stride, padding
    oh, ow = (h + 2 * p - kh) // s + 1, (w + 2 * p - kw) // s + 1
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    cols = np.empty((n, oh, ow, c, kh, kw), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i:i + s * (oh - 1) + 1:s, j:j + s * (ow - 1) + 1:s]  # (N, C, OH, OW)
            cols[:, :, :, :, i, j] = patch.transpose(0, 2, 3, 1)
    return cols.reshape(n * oh * ow, c * kh * kw)


def col2im(cols: np.ndarray, x_shape: tuple[int, int, int, int],
           kernel_size: tuple[int, int], stride: int, padding: int) -> np.ndarray:
    """The adjoint of im2col: each entry of cols is ADDED onto the pixel it
    was copied from (+=, since windows overlap); the padding is cut off."""
    n, c, h, w = x_shape
    kh, kw = kernel_size
    s, p = stride, padding
    oh, ow = (h + 2 * p - kh) // s + 1, (w + 2 * p - kw) // s + 1
    blocks = cols.reshape(n, oh, ow, c, kh, kw)
    xp = np.zeros((n, c, h + 2 * p, w + 2 * p), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            xp[:, :, i:i + s * (oh - 1) + 1:s, j:j + s * (ow - 1) + 1:s] += \
                blocks[:, :, :, :, i, j].transpose(0, 3, 1, 2)
    return xp[:, :, p:p + h, p:p + w]


def conv2d_forward(x, w, b, stride, padding):
    """out = cols @ w_mat.T + b, reshaped to (N, C_out, OH, OW)."""
    n, _, h, wd = x.shape
    c_out, _, kh, kw = w.shape
    oh, ow = (h + 2 * padding - kh) // stride + 1, (wd + 2 * padding - kw) // stride + 1
    cols = im2col(x, (kh, kw), stride, padding)
    out_mat = cols @ w.reshape(c_out, -1).T + b                     # (N*OH*OW, C_out)
    out = out_mat.reshape(n, oh, ow, c_out).transpose(0, 3, 1, 2)
    return out, (x.shape, cols, w, stride, padding)


def conv2d_backward(dout, cache):
    """The three matrix rules of out_mat = cols @ w_mat.T + b, then col2im."""
    x_shape, cols, w, stride, padding = cache
    c_out = w.shape[0]
    dout_mat = dout.transpose(0, 2, 3, 1).reshape(-1, c_out)        # (N*OH*OW, C_out)
    dw = (dout_mat.T @ cols).reshape(w.shape)
    db = dout_mat.sum(axis=0)
    dcols = dout_mat @ w.reshape(c_out, -1)
    dx = col2im(dcols, x_shape, w.shape[2:], stride, padding)
    return dx, dw, db


def checks() -> list[CheckResult]:
    """Every checker of the chapter on the solutions above."""
    return [check_im2col(im2col), check_col2im(col2im),
            check_conv2d(conv2d_forward, conv2d_backward)]
