"""2-D convolution (cross-correlation, as in PyTorch), by im2col and by loops.

Shapes: input ``x`` (N, C, H, W), weight ``w`` (C_out, C, KH, KW), bias ``b``
(C_out,), output (N, C_out, OH, OW) with, per spatial axis,

    OH = (H + 2 * padding - KH) // stride + 1

The im2col layout
-----------------
``im2col`` copies every receptive field into one row of a matrix ``cols``
of shape (N*OH*OW, C*KH*KW):

- rows are ordered (n, oh, ow): one row per output pixel, image by image;
- columns are ordered (c, i, j): channel, then kernel row, then kernel column,
  exactly the order of ``w.reshape(C_out, C*KH*KW)``.

So ``cols[(n, oh, ow), (c, i, j)] = x_padded[n, c, oh*stride + i, ow*stride + j]``
and the whole convolution is one matrix product::

    out[(n, oh, ow), c_out] = cols @ w.reshape(C_out, -1).T + b

For a 1x4x4 image, a 2x2 kernel and stride 2, ``cols`` is
``[[x00, x01, x10, x11], [x02, x03, x12, x13], [x20, x21, x30, x31], ...]``.

``im2col`` visits each kernel offset (i, j) once: the pixels that offset
touches, over all output positions, are the strided slice
``x_padded[:, :, i : i + stride*(OH-1) + 1 : stride, j : ... : stride]``.
``col2im`` is its adjoint, not its inverse: it adds each block of columns
back into that same strided slice of a zero image, so a pixel that several
windows share receives the sum of their entries. That is the dx of the
convolution, and the reason the backward pass is again a matrix product
followed by col2im.

Grouped convolution (``groups = G``, PyTorch's meaning): the input channels
and the filters are split into G groups, and filter group g sees only input
group g; ``w`` is (C_out, C_in / G, KH, KW). Rows of ``cols.T`` are ordered
(c, i, j), so input group g is the g-th block of C_in/G*KH*KW rows, and its
filters are the g-th block of rows of ``w_mat``: G independent products,
one batched ``matmul`` over a (G, ...) reshape of both (with G = 1, the
product above). ``groups = C_in`` is a depthwise convolution.

Memory layout: ``im2col`` builds the transpose ``cols.T`` (C*KH*KW,
N*OH*OW), one row per kernel offset and channel, and returns it as the
transposed view ``cols`` (``matmul`` reads a transposed operand without a
copy). Likewise the convolution computes ``out.T = w_mat @ cols.T``
(C_out, N*OH*OW), so ``out`` is an (N, C_out, OH, OW) view of memory laid out
(C_out, N, OH, OW): every output map is contiguous, which the next im2col and
BatchNorm's per-channel sums read without a copy. The values are the same in
any layout.

The cache keeps ``x``, not ``cols``: ``cols`` is KH*KW times the size of
``x`` (nine times for a 3x3 kernel), and keeping one per layer until the
backward pass would dominate a network's memory. The backward pass builds
``cols`` again.

``conv2d_forward_naive`` / ``conv2d_backward_naive`` are four nested loops:
slow, obvious, and the reference the im2col version is tested against.

The engine: on NumPy and CuPy, ``minires.fast.conv.conv2d_forward`` and
``conv2d_backward`` (``minires/fast/conv.py``) stand in for the pair here,
with the same signatures and results (chunks of images shared over CPU
threads, a shifted grid for stride 1, col2im by phases; one group only), and
``minires.fast.conv.im2col`` for ``im2col`` (one strided view, one copy).
The public ops ``minires.functional.conv2d_forward`` ... choose between the
two (see ``minires/functional/__init__.py``); ``MINIRES_FAST=0`` runs this
file's code everywhere.
"""

from __future__ import annotations

from typing import Any

from .. import backend
from ..backend import Array
from .shapes import (
    IntPair,
    as_pair,
    check_dout,
    check_groups,
    check_image,
    check_window,
    conv2d_output_size,
    pad2d,
    unpad2d,
)


def window(i: int, j: int, out_size: tuple[int, int], stride: tuple[int, int]) -> tuple:
    """Index of the pixels that kernel offset (i, j) touches, for every output
    position: rows i, i + sh, ..., i + sh*(OH-1), columns likewise.

    ``x_padded[window(i, j, ...)]`` has shape (N, C, OH, OW). The slice stops
    right after its last element, never past the end of the axis.
    """
    (oh, ow), (sh, sw) = out_size, stride
    return (slice(None), slice(None),
            slice(i, i + sh * (oh - 1) + 1, sh), slice(j, j + sw * (ow - 1) + 1, sw))


# ---- im2col / col2im ----------------------------------------------------------

def im2col(x: Array, kernel_size: IntPair, stride: IntPair = 1, padding: IntPair = 0) -> Array:
    """Copy every receptive field of ``x`` into a row of a matrix.

    Parameters
    ----------
    x : (N, C, H, W) floating-point array.
    kernel_size, stride, padding : int or (h, w) pair.

    Returns
    -------
    cols : (N*OH*OW, C*KH*KW), same dtype as ``x``; rows ordered (n, oh, ow),
        columns ordered (c, i, j); a transposed view of a contiguous
        (C*KH*KW, N*OH*OW) array (see the module docstring).
    """
    kh, kw = kernel = as_pair(kernel_size, "kernel_size", "im2col", 1)
    stride = as_pair(stride, "stride", "im2col", 1)
    padding = as_pair(padding, "padding", "im2col", 0)
    check_image(x, "im2col")
    oh, ow = check_window(x.shape, kernel, stride, padding, "im2col")
    xp = backend.namespace(x)
    n, c = x.shape[0], x.shape[1]
    x_padded = pad2d(x, padding)
    # one strided slice (N, C, OH, OW) per kernel offset (i, j), stacked as
    # cols.T: (C, KH*KW, N, OH, OW) -> (C*KH*KW, N*OH*OW)
    patches = [xp.permute_dims(x_padded[window(i, j, (oh, ow), stride)], (1, 0, 2, 3))
               for i in range(kh) for j in range(kw)]
    cols_t = xp.stack(patches, axis=1)
    return xp.reshape(cols_t, (c * kh * kw, n * oh * ow)).T


def col2im(cols: Array, x_shape: tuple[int, int, int, int], kernel_size: IntPair,
           stride: IntPair = 1, padding: IntPair = 0) -> Array:
    """The adjoint of ``im2col``: add every row back onto the pixels it came from.

    Parameters
    ----------
    cols : (N*OH*OW, C*KH*KW), laid out as ``im2col`` returns it.
    x_shape : (N, C, H, W), the shape of the image ``im2col`` was applied to.
    kernel_size, stride, padding : int or (h, w) pair, as given to ``im2col``.

    Returns
    -------
    x : (N, C, H, W), same dtype as ``cols``; a pixel covered by several
        windows receives the sum of their entries.
    """
    kh, kw = kernel = as_pair(kernel_size, "kernel_size", "col2im", 1)
    stride = as_pair(stride, "stride", "col2im", 1)
    padding = as_pair(padding, "padding", "col2im", 0)
    if len(x_shape) != 4:
        raise ValueError(f"col2im: expected x_shape (N, C, H, W), got {tuple(x_shape)}")
    n, c, h, w = x_shape
    oh, ow = check_window(x_shape, kernel, stride, padding, "col2im")
    if tuple(cols.shape) != (n * oh * ow, c * kh * kw):
        raise ValueError(f"col2im: expected cols of shape {(n * oh * ow, c * kh * kw)} "
                         f"for x_shape {tuple(x_shape)}, got {tuple(cols.shape)}")
    xp = backend.namespace(cols)
    # cols.T as (C, KH, KW, N, OH, OW): a view of im2col's storage, no copy
    cols_t = xp.reshape(xp.permute_dims(cols, (1, 0)), (c, kh, kw, n, oh, ow))
    # The image is built as (C, N, H, W) storage, so each addition below adds
    # long runs, and returned as an (N, C, H, W) view, like conv2d_forward's out.
    x_padded_t = xp.zeros((c, n, h + 2 * padding[0], w + 2 * padding[1]), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            x_padded_t[window(i, j, (oh, ow), stride)] += cols_t[:, i, j, :, :, :]
    return unpad2d(xp.permute_dims(x_padded_t, (1, 0, 2, 3)), padding)


# ---- convolution by im2col ----------------------------------------------------

def _check_conv(x: Any, w: Any, b: Any, stride: IntPair, padding: IntPair, op: str,
                groups: int = 1):
    """Validate the arguments of a convolution; return (stride, padding, (OH, OW), groups)."""
    stride = as_pair(stride, "stride", op, 1)
    padding = as_pair(padding, "padding", op, 0)
    check_image(x, op, "(N, C_in, H, W)")
    if getattr(w, "ndim", None) != 4:
        got = tuple(w.shape) if hasattr(w, "shape") else type(w).__name__
        raise ValueError(f"{op}: expected w of rank 4 (C_out, C_in, KH, KW), got {got}")
    groups = check_groups(groups, x.shape[1], w.shape[0], op)
    if w.shape[1] * groups != x.shape[1]:
        per_group = "" if groups == 1 else " / groups"
        raise ValueError(f"{op}: expected w with C_in{per_group} = {x.shape[1] // groups} "
                         f"channels like x {tuple(x.shape)}, got w {tuple(w.shape)}")
    if w.dtype != x.dtype:
        raise ValueError(f"{op}: expected w of the same dtype as x ({x.dtype}), got {w.dtype}")
    if b is not None and (tuple(b.shape) != (w.shape[0],) or b.dtype != x.dtype):
        raise ValueError(f"{op}: expected b of shape ({w.shape[0]},) and dtype {x.dtype}, "
                         f"got {tuple(b.shape)} {b.dtype}")
    out_size = check_window(x.shape, tuple(w.shape[2:]), stride, padding, op)
    return stride, padding, out_size, groups


def by_group(a: Array, groups: int) -> Array:
    """A matrix (G*R, K) as G blocks of rows, (G, R, K): the groups of a
    grouped convolution (module docstring). A view when ``a`` is contiguous."""
    return backend.namespace(a).reshape(a, (groups, a.shape[0] // groups, a.shape[1]))


def conv2d_forward(x: Array, w: Array, b: Array | None = None, stride: IntPair = 1,
                   padding: IntPair = 0, groups: int = 1) -> tuple[Array, tuple]:
    """Convolution as one matrix product over the im2col matrix (one per
    group: a batched product).

    Parameters
    ----------
    x : (N, C_in, H, W)
    w : (C_out, C_in / groups, KH, KW), same dtype as ``x``
    b : (C_out,) or None
    stride, padding : int or (h, w) pair; zero padding.
    groups : G >= 1 dividing C_in and C_out; filter group g (C_out / G
        filters) sees input channels g*C_in/G ... (g+1)*C_in/G - 1 only.

    Returns
    -------
    out : (N, C_out, OH, OW), same dtype as ``x``; a view of memory laid out
        (C_out, N, OH, OW) (see the module docstring)
    cache : ``(x, w, has_bias, stride, padding, groups)``, for ``conv2d_backward``
    """
    stride, padding, (oh, ow), groups = _check_conv(x, w, b, stride, padding, "conv2d_forward",
                                                    groups)
    xp = backend.namespace(x, w)
    n, c_out = x.shape[0], w.shape[0]
    kernel = tuple(w.shape[2:])
    w_mat = xp.reshape(w, (c_out, -1))                   # (C_out, C_in/G*KH*KW)
    cols = im2col(x, kernel, stride, padding)            # (N*OH*OW, C_in*KH*KW)
    # out = cols @ w_mat.T, computed as its transpose (module docstring),
    # group by group: (G, C_out/G, C_in/G*KH*KW) @ (G, C_in/G*KH*KW, N*OH*OW)
    out_t = xp.matmul(by_group(w_mat, groups), by_group(cols.T, groups))
    out_t = xp.reshape(out_t, (c_out, n * oh * ow))      # (C_out, N*OH*OW)
    if b is not None:
        out_t = out_t + xp.reshape(b, (c_out, 1))
    out = xp.permute_dims(xp.reshape(out_t, (c_out, n, oh, ow)), (1, 0, 2, 3))
    cache = (x, w, b is not None, stride, padding, groups)
    return out, cache


def conv2d_backward(dout: Array, cache: tuple, need_param_grads: bool = True,
                    need_input_grad: bool = True
                    ) -> tuple[Array | None, Array | None, Array | None]:
    """Gradients of ``conv2d_forward``.

    With ``out_mat = cols @ w_mat.T`` (see the forward; ``out_mat`` is ``out``
    as an (N*OH*OW, C_out) matrix), the matrix rules give
    ``dcols = dout_mat @ w_mat``, ``dw_mat = dout_mat.T @ cols`` and ``db`` the
    sum of ``dout_mat`` over its rows; ``col2im`` turns ``dcols`` into ``dx``.
    With groups, each group's products are these, batched like the forward's.

    Parameters
    ----------
    dout : (N, C_out, OH, OW), not modified.
    cache : from ``conv2d_forward``.
    need_param_grads : False skips the work for ``dw`` and ``db`` (frozen layer).
    need_input_grad : False skips the work for ``dx`` (the first layer of a
        network, whose input is the data: PyTorch does not compute it either
        unless the input requires a gradient).

    Returns
    -------
    dx : (N, C_in, H, W), or None when ``need_input_grad`` is False
    dw : (C_out, C_in / groups, KH, KW), or None when ``need_param_grads`` is False
    db : (C_out,), or None without bias or when ``need_param_grads`` is False
    """
    x, w, has_bias, stride, padding, groups = cache
    n, c_out = x.shape[0], w.shape[0]
    kernel = tuple(w.shape[2:])
    oh, ow = conv2d_output_size(x.shape[2:], kernel, stride, padding)
    check_dout(dout, (n, c_out, oh, ow), "conv2d_backward")
    xp = backend.namespace(dout, x)
    # dout_mat.T, one contiguous row per output channel (free when dout is
    # laid out like conv2d_forward's out)
    dout_t = xp.reshape(xp.permute_dims(dout, (1, 0, 2, 3)), (c_out, n * oh * ow))
    # A sum along contiguous rows: pairwise in NumPy, so float32 stays accurate.
    db = xp.sum(dout_t, axis=1) if has_bias and need_param_grads else None
    # per group g: dcols_g = dout_mat_g @ w_mat_g and dw_mat_g = dout_mat_g.T @ cols_g
    w_g, dout_g = by_group(xp.reshape(w, (c_out, -1)), groups), by_group(dout_t, groups)
    dx = dw = None
    if need_input_grad:
        dcols_t = xp.matmul(xp.matrix_transpose(w_g), dout_g)   # dcols.T, group by group
        dcols = xp.reshape(dcols_t, (-1, n * oh * ow)).T        # stored transposed like cols
        dx = col2im(dcols, tuple(x.shape), kernel, stride, padding)
    if need_param_grads:
        cols = im2col(x, kernel, stride, padding)                # built again
        dw_mat = xp.matmul(dout_g, xp.matrix_transpose(by_group(cols.T, groups)))
        dw = xp.reshape(dw_mat, w.shape)
    return dx, dw, db


# ---- the reference: four nested loops -----------------------------------------

def conv2d_forward_naive(x: Array, w: Array, b: Array | None = None, stride: IntPair = 1,
                         padding: IntPair = 0, groups: int = 1) -> tuple[Array, tuple]:
    """The convolution straight from its definition (slow; the reference).

    ``out[n, co, oh, ow] = sum over (c, i, j) of
    x_padded[n, c, oh*sh + i, ow*sw + j] * w[co, c, i, j]  + b[co]``

    where, with groups, ``c`` runs over the input channels of filter
    ``co``'s group only. Shapes as in ``conv2d_forward``; returns ``(out, cache)``.
    """
    (sh, sw), padding, (oh, ow), groups = _check_conv(x, w, b, stride, padding,
                                                      "conv2d_forward_naive", groups)
    xp = backend.namespace(x, w)
    n, c_out, cg, kh, kw = x.shape[0], w.shape[0], w.shape[1], w.shape[2], w.shape[3]
    x_padded = pad2d(x, padding)
    out = xp.zeros((n, c_out, oh, ow), dtype=x.dtype)
    for k in range(n):
        for co in range(c_out):
            g = co // (c_out // groups)                   # the group of filter co
            for r in range(oh):
                for s in range(ow):
                    field = x_padded[k, g * cg:(g + 1) * cg, r * sh:r * sh + kh,
                                     s * sw:s * sw + kw]
                    out[k, co, r, s] = xp.sum(field * w[co, ...])
                    if b is not None:
                        out[k, co, r, s] += b[co]
    return out, (x_padded, w, b is not None, (sh, sw), padding, groups)


def conv2d_backward_naive(dout: Array, cache: tuple) -> tuple[Array, Array, Array | None]:
    """Gradients of ``conv2d_forward_naive`` by the same four loops: each output
    pixel sends ``dout * w`` back to its receptive field and ``dout * field``
    to the weight.

    Returns ``(dx, dw, db)`` with the shapes of ``x``, ``w``, ``b`` (db None without bias).
    """
    x_padded, w, has_bias, (sh, sw), padding, groups = cache
    n, c_out, cg, kh, kw = x_padded.shape[0], w.shape[0], w.shape[1], w.shape[2], w.shape[3]
    oh, ow = conv2d_output_size(x_padded.shape[2:], (kh, kw), (sh, sw), (0, 0))
    check_dout(dout, (n, c_out, oh, ow), "conv2d_backward_naive")
    xp = backend.namespace(dout, w)
    dx_padded = xp.zeros(x_padded.shape, dtype=x_padded.dtype)
    dw = xp.zeros(w.shape, dtype=w.dtype)
    for k in range(n):
        for co in range(c_out):
            g = co // (c_out // groups)
            channels = slice(g * cg, (g + 1) * cg)
            for r in range(oh):
                for s in range(ow):
                    rows, cols = slice(r * sh, r * sh + kh), slice(s * sw, s * sw + kw)
                    dx_padded[k, channels, rows, cols] += dout[k, co, r, s] * w[co, ...]
                    dw[co, ...] += dout[k, co, r, s] * x_padded[k, channels, rows, cols]
    db = xp.sum(dout, axis=(0, 2, 3)) if has_bias else None
    return unpad2d(dx_padded, padding), dw, db
