"""The engine's convolution: the same products as ``minires/functional/conv.py``,
computed faster on NumPy and CuPy. Read that file first; this one explains
only how the same numbers are reached sooner.

Stands in for: ``conv2d_forward``, ``conv2d_backward`` and ``im2col`` of
``minires.functional.conv``, with the same signatures and results (the
tests compare them). Each hands the call to its reference for arrays
outside NumPy and CuPy (array-api-strict) and for grouped convolutions
(``groups`` other than 1), which the engine does not compute.

What it buys, measured with ``benchmarks/engine.py`` (ResNet-20's shapes,
batch 128, float32, on the 2-core development VM while other work shared it;
``benchmarks/results/engine*.json``): on one thread and on two, the 3x3
convolutions take 2.4-4.3x less time than the reference forward and 2.8-5.3x
backward on 16 to 64 channels, 1.9-3.9x and 1.7-2.8x for the stride-2 ones,
1.3-1.6x and 1.4-1.9x for the stem; a training step with the reference's
convolutions in place of these takes 2.8-3.2x as long.

How, each measured on ResNet-20 at batch 128 on a 2-core CPU when it was
introduced (the tests hold each to the reference's numbers):

- *Chunks of images.* im2col and the matrix product run on a few images at
  a time (about ``CHUNK_BYTES`` of ``cols`` each), refilling one buffer: the
  chunk is still in the CPU cache when the product reads it, and no
  full-size ``cols`` is allocated (fresh memory is slow to touch the first
  time). Each chunk's product writes straight into its columns of ``out.T``.
  About 1.5x faster on ResNet-20's 16-channel layers than one full-size
  ``cols``.
- *Backward by one im2col of dout.* For stride 1, ``dx`` is the convolution
  of ``dout`` (padded by KH-1-ph, KW-1-pw) with the kernel flipped in both
  spatial axes and its input and output channels swapped::

      dx[n, c, h, w] = sum over (co, i, j) of
          dout_padded[n, co, h + i, w + j] * w[co, c, KH-1-i, KW-1-j]

  an im2col of ``dout`` and one product instead of a product and a col2im
  of nine strided additions; and ``dw`` is a product of ``x`` with those
  same columns, so ``x`` needs no second im2col
  (``conv2d_backward_by_convolution``); about 2x faster. Strided
  convolutions, and those with more output than input channels (the stem),
  keep the product and col2im, by phases (below).
- *The shifted grid, for stride 1* (``shifted_grid``). Laid out back to
  back and flattened, the images turn every kernel offset (i, j) into a
  fixed shift along one long vector, so each row of ``cols.T`` is a
  contiguous slice: one long copy per row instead of a strided gather of
  runs of OW numbers. The few shifted reads that fall off an image (where
  im2col reads padding) land on a neighbouring row or image and are zeroed
  after the copy. The forward pass and both backward products of stride-1
  convolutions use it; about 1.2x on the whole ResNet-20 step.
- *col2im by phases, for any stride* (``phase_col2im``). The pixels a
  stride-s kernel offset (i, j) touches all lie in one *phase* of the padded
  image, the sub-image ``(s*u + i % s, s*v + j % s)``, where the offset is
  the shift ``(i // s, j // s)`` of a stride-1 kernel: with each phase on a
  grid, every row of ``dcols.T`` adds onto one contiguous slice, instead of
  col2im's strided blocks of rows of OW numbers. About 2x faster for the
  input gradient of ResNet-20's stride-2 convolutions.
- *Threads.* On NumPy the chunks of images are shared out over the CPU
  threads (``minires.fast.parallel.over_chunks``): each thread runs the
  loop above on the chunks it takes, with single-threaded products, and
  the chunks' weight-gradient terms are added up in chunk order, so the
  numbers do not depend on the number of threads.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .. import backend
from ..backend import Array
from ..functional import conv as reference
from ..functional.conv import _check_conv
from ..functional.shapes import (
    IntPair,
    as_pair,
    channel_major_zeros,
    check_dout,
    check_image,
    check_window,
    conv2d_output_size,
)
from . import parallel

# ---- the public functions: the reference's signatures --------------------------

def _numpy_like(*arrays: Array) -> bool:
    return backend.is_numpy_like(backend.namespace(*arrays))


def _one_group(groups: Any) -> bool:
    """Whether the engine computes a convolution of ``groups`` groups: only
    of one (anything else, invalid values included, goes to the reference)."""
    return not isinstance(groups, bool) and groups == 1


def im2col(x: Array, kernel_size: IntPair, stride: IntPair = 1, padding: IntPair = 0) -> Array:
    """``minires.functional.conv.im2col`` by one strided view and one copy.

    Measured (``benchmarks/engine.py``, 16 channels of 32x32, 3x3 kernel,
    batch 128, float32): 1.9-2.2x faster than the reference. The
    convolutions above do not call it: they build their columns chunk by
    chunk (``im2col_chunks``, ``shifted_grid``).

    A strided *view* (C, KH, KW, N, OH, OW) whose element [c, i, j, n, oh, ow]
    is ``x_padded[n, c, oh*sh + i, ow*sw + j]`` (``as_strided``, outside the
    Array API standard), then a single copy into ``cols.T``, instead of one
    copy per kernel offset. Same arguments, result and layout as the
    reference; other arrays than NumPy's and CuPy's go to the reference.
    """
    if not _numpy_like(x):
        return reference.im2col(x, kernel_size, stride, padding)
    kh, kw = kernel = as_pair(kernel_size, "kernel_size", "im2col", 1)
    stride = as_pair(stride, "stride", "im2col", 1)
    padding = as_pair(padding, "padding", "im2col", 0)
    check_image(x, "im2col")
    oh, ow = check_window(x.shape, kernel, stride, padding, "im2col")
    xp = backend.namespace(x)
    n, c = x.shape[0], x.shape[1]
    x_padded = reference.pad2d(x, padding)
    s_n, s_c, s_h, s_w = x_padded.strides
    fields = backend.native(xp).lib.stride_tricks.as_strided(
        x_padded, shape=(c, kh, kw, n, oh, ow),
        strides=(s_c, s_h, s_w, s_n, stride[0] * s_h, stride[1] * s_w))
    return xp.reshape(fields, (c * kh * kw, n * oh * ow)).T


def conv2d_forward(x: Array, w: Array, b: Array | None = None, stride: IntPair = 1,
                   padding: IntPair = 0, groups: int = 1) -> tuple[Array, tuple]:
    """``minires.functional.conv.conv2d_forward``, chunk by chunk of images
    over the CPU threads, over the shifted grid for stride 1 (module docstring).

    Measured (``benchmarks/engine.py``, ResNet-20's shapes, batch 128,
    float32, one or two threads): 2.4-4.3x faster than the reference on the
    stride-1 3x3 layers (16 to 64 channels), 1.9-3.9x on the stride-2 ones,
    1.3-1.6x on the stem (3 input channels).

    Same arguments, results, output layout and cache as the reference;
    other arrays than NumPy's and CuPy's, and grouped convolutions, go to
    the reference.

    Parameters
    ----------
    x : (N, C_in, H, W)
    w : (C_out, C_in, KH, KW), same dtype as ``x``
    b : (C_out,) or None
    stride, padding : int or (h, w) pair; zero padding.
    groups : the reference's; the engine computes ``groups=1`` only.

    Returns
    -------
    out : (N, C_out, OH, OW), a view of memory laid out (C_out, N, OH, OW)
    cache : ``(x, w, has_bias, stride, padding, groups)``, for either ``conv2d_backward``
    """
    if not (_one_group(groups) and _numpy_like(x, w)):
        return reference.conv2d_forward(x, w, b, stride, padding, groups)
    stride, padding, (oh, ow), groups = _check_conv(x, w, b, stride, padding, "conv2d_forward",
                                                    groups)
    xp = backend.namespace(x, w)
    n, c_out = x.shape[0], w.shape[0]
    kernel = tuple(w.shape[2:])
    # out_mat = cols @ w_mat.T chunk by chunk of images, each product written
    # into its rows of out_mat (columns of out.T), the chunks shared over the
    # CPU threads
    out_t = xp.empty((c_out, n, oh, ow), dtype=x.dtype)
    chunk = chunk_images(x, kernel, stride, padding, on_grid(kernel, stride, padding))
    parallel.over_chunks(lambda chunks: _forward_images(x, w, stride, padding, out_t,
                                                        chunk, chunks), x, chunk)
    out_t = xp.reshape(out_t, (c_out, n * oh * ow))
    if b is not None:
        out_t = out_t + xp.reshape(b, (c_out, 1))
    out = xp.permute_dims(xp.reshape(out_t, (c_out, n, oh, ow)), (1, 0, 2, 3))
    cache = (x, w, b is not None, stride, padding, groups)
    return out, cache


def conv2d_backward(dout: Array, cache: tuple, need_param_grads: bool = True,
                    need_input_grad: bool = True
                    ) -> tuple[Array | None, Array | None, Array | None]:
    """``minires.functional.conv.conv2d_backward``: for stride 1 dx and dw from
    one shifted grid of ``dout``, else the same products with dx by phases
    (module docstring), chunk by chunk of images over the CPU threads.

    Measured (``benchmarks/engine.py``, ResNet-20's shapes, batch 128,
    float32, one or two threads): 2.8-5.3x faster than the reference on the
    stride-1 3x3 layers, 1.7-2.8x on the stride-2 ones, 1.4-1.9x on the stem.

    Same arguments and results as the reference (``dout`` is not modified);
    other arrays than NumPy's and CuPy's, and grouped convolutions, go to
    the reference.

    Parameters
    ----------
    dout : (N, C_out, OH, OW), not modified.
    cache : from either ``conv2d_forward``.
    need_param_grads : False skips the work for ``dw`` and ``db``.
    need_input_grad : False skips the work for ``dx``.

    Returns
    -------
    dx : (N, C_in, H, W), or None when ``need_input_grad`` is False
    dw : (C_out, C_in, KH, KW), or None when ``need_param_grads`` is False
    db : (C_out,), or None without bias or when ``need_param_grads`` is False
    """
    x, w, has_bias, stride, padding, groups = cache
    if not (_one_group(groups) and _numpy_like(dout, x)):
        return reference.conv2d_backward(dout, cache, need_param_grads, need_input_grad)
    n, c_out = x.shape[0], w.shape[0]
    kernel = tuple(w.shape[2:])
    oh, ow = conv2d_output_size(x.shape[2:], kernel, stride, padding)
    check_dout(dout, (n, c_out, oh, ow), "conv2d_backward")
    xp = backend.namespace(dout, x)
    dout_t = xp.reshape(xp.permute_dims(dout, (1, 0, 2, 3)), (c_out, n * oh * ow))
    db = xp.sum(dout_t, axis=1) if has_bias and need_param_grads else None
    if not (need_param_grads or need_input_grad):
        return None, None, None
    if on_grid(kernel, stride, padding) and c_out <= x.shape[1]:
        # dx and dw of a stride-1 convolution from one im2col of dout (module
        # docstring); about 2x faster than col2im and a second im2col of x.
        # Only where dout has no more channels than x: the stem (3 -> 16
        # channels) is cheaper the plain way, by im2col of x.
        dx, dw = conv2d_backward_by_convolution(dout, x, w, padding, need_param_grads,
                                                need_input_grad)
        return dx, dw, db
    # the reference's products, dx by phase_col2im, dw_mat summed over the
    # chunks of images in chunk order
    w_mat = xp.reshape(w, (c_out, -1))
    dx = channel_major_zeros(xp, tuple(x.shape), x.dtype) if need_input_grad else None
    chunk = chunk_images(x, kernel, stride, padding, grid=False)
    dx_t = None if dx is None else xp.permute_dims(dx, (1, 0, 2, 3))
    terms = parallel.over_chunks(
        lambda chunks: _backward_phases_images(dout, x, w_mat, kernel, stride, padding,
                                               dx_t, need_param_grads, chunk, chunks),
        x, chunk)
    if not need_param_grads:
        return dx, None, None
    return dx, xp.reshape(sum_in_order(terms).T, w.shape), db


# ---- chunks of images ------------------------------------------------------------

# Bytes of the im2col matrix per chunk of images (see the module docstring).
# A few MB fit the CPU cache; much larger chunks were slower.
CHUNK_BYTES = 4 * 2**20
# On a GPU (CuPy) the cache argument does not hold and every chunk costs
# kernel launches: chunks there are as large as this allows.
GPU_CHUNK_BYTES = 1024 * 2**20


def _chunk_images(n: int, per_image: int, x: Array, chunk_bytes: int | None) -> int:
    """Images per chunk: at most as many as fit in ``chunk_bytes`` (default
    ``CHUNK_BYTES``, or ``GPU_CHUNK_BYTES`` on CuPy), at least one.

    On the CPU the batch is cut into a multiple of 4 chunks of near-equal
    size (at least 4 when there are 4 images), which minires.fast.parallel's
    threads share out. The cut depends on the batch and the shapes only,
    never on the number of threads."""
    on_gpu = type(x).__module__.startswith("cupy")
    if chunk_bytes is None:
        chunk_bytes = GPU_CHUNK_BYTES if on_gpu else CHUNK_BYTES
    most = max(1, min(n, chunk_bytes // (per_image * x.itemsize)))
    if on_gpu:
        return most
    chunks = min(n, 4 * -(-n // (4 * most)))         # ceil(n / most), rounded up to 4k
    return -(-n // chunks)


def on_grid(kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]) -> bool:
    """Whether the fast paths run a convolution over ``shifted_grid``: stride 1
    and padding below the kernel size."""
    return stride == (1, 1) and padding[0] < kernel[0] and padding[1] < kernel[1]


def grid_size(size: tuple[int, int], kernel: tuple[int, int],
              padding: tuple[int, int]) -> tuple[int, int]:
    """(Hg, Wg) of ``shifted_grid``'s cells: the larger of the image and the
    output on each axis; both for a "same" convolution (``2*p == K - 1``)."""
    out = conv2d_output_size(size, kernel, (1, 1), padding)
    return tuple(max(n, o) for n, o in zip(size, out, strict=True))


def chunk_images(x: Array, kernel: tuple[int, int], stride: tuple[int, int],
                 padding: tuple[int, int], grid: bool, chunk_bytes: int | None = None) -> int:
    """Images per chunk in a fast path's loop over ``x``: ``shifted_grid``'s
    (``grid``), else ``im2col_chunks``'. The threads of
    ``minires.fast.parallel`` take whole chunks (``over_chunks``), so every
    product, and every sum of products, is the same whatever the number of
    threads: results do not depend on the machine."""
    n, c, h, w = x.shape
    if grid:
        hg, wg = grid_size((h, w), kernel, padding)
    else:
        hg, wg = conv2d_output_size((h, w), kernel, stride, padding)
    return _chunk_images(n, c * kernel[0] * kernel[1] * hg * wg, x, chunk_bytes)


def im2col_chunks(x: Array, kernel_size: IntPair, stride: IntPair = 1, padding: IntPair = 0,
                  chunk_bytes: int | None = None, chunk: int | None = None,
                  chunks: Iterable[slice] | None = None):
    """``im2col(x, ...).T`` a few images at a time (NumPy/CuPy only).

    Yields ``(columns, cols_t)`` for consecutive chunks of images: ``cols_t``
    is the (C*KH*KW, n_chunk*OH*OW) block of ``cols.T`` whose columns are
    ``cols.T[:, columns]``. The same buffers are refilled for every chunk, so
    use each block before asking for the next. A chunk holds ``chunk``
    images, by default about as many as fit in ``chunk_bytes`` (default
    ``CHUNK_BYTES``; see ``_chunk_images``). ``chunks``, if given, are the
    slices of images to visit instead, each of at most ``chunk`` images
    (``minires.fast.parallel.over_chunks`` hands them out).
    """
    kh, kw = kernel = as_pair(kernel_size, "kernel_size", "im2col_chunks", 1)
    (sh, sw) = stride = as_pair(stride, "stride", "im2col_chunks", 1)
    (ph, pw) = padding = as_pair(padding, "padding", "im2col_chunks", 0)
    check_image(x, "im2col_chunks")
    oh, ow = check_window(x.shape, kernel, stride, padding, "im2col_chunks")
    xp = backend.namespace(x)
    as_strided = backend.native(xp).lib.stride_tricks.as_strided
    n, c, h, w = x.shape
    per_image = c * kh * kw * oh * ow                 # entries of cols.T per image
    chunk = min(n, chunk or _chunk_images(n, per_image, x, chunk_bytes))
    # The padded chunk, stored (C, n_chunk, H, W) like the rows of cols.T; its
    # border is zeroed once and never written again.
    padded = xp.zeros((c, chunk, h + 2 * ph, w + 2 * pw), dtype=x.dtype)
    buffer = xp.empty(per_image * chunk, dtype=x.dtype)
    for images in parallel.chunk_slices(n, chunk) if chunks is None else chunks:
        n0, m = images.start, images.stop - images.start
        x_padded = padded[:, :m]
        x_padded[:, :, ph:ph + h, pw:pw + w] = xp.permute_dims(x[images], (1, 0, 2, 3))
        # the strided view (C, KH, KW, m, OH, OW) of the fields, as in im2col
        s_c, s_n, s_h, s_w = x_padded.strides
        fields = as_strided(x_padded, shape=(c, kh, kw, m, oh, ow),
                            strides=(s_c, s_h, s_w, s_n, sh * s_h, sw * s_w))
        cols_t = xp.reshape(buffer[:per_image * m], (c * kh * kw, m * oh * ow))
        xp.reshape(cols_t, fields.shape)[...] = fields
        yield slice(n0 * oh * ow, (n0 + m) * oh * ow), cols_t


# ---- col2im by phases (strided convolutions) ------------------------------------

def phase_grid_size(out_size: tuple[int, int], kernel: tuple[int, int],
                    stride: tuple[int, int]) -> tuple[int, int]:
    """(Hg, Wg) of the cells of ``phase_col2im``: the output size plus the
    largest shift, ``(K - 1) // stride``, on each axis."""
    return tuple(o + (k - 1) // s for o, k, s in zip(out_size, kernel, stride, strict=True))


def phase_taps(kernel: tuple[int, int], stride: tuple[int, int], grid: tuple[int, int]
               ) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """The phases a strided kernel reads and, for every kernel offset (i, j)
    in (i, j) order, ``(phase number, shift)``: offset (i, j) reads phase
    ``(i % sh, j % sw)`` at ``(oh + i // sh, ow + j // sw)``, a shift of
    ``(i // sh) * Wg + j // sw`` along the flattened grid."""
    (kh, kw), (sh, sw), (_, wg) = kernel, stride, grid
    phases = sorted({(i % sh, j % sw) for i in range(kh) for j in range(kw)})
    number = {phase: f for f, phase in enumerate(phases)}
    taps = [(number[i % sh, j % sw], (i // sh) * wg + j // sw)
            for i in range(kh) for j in range(kw)]
    return phases, taps


def _phase_span(a: int, p: int, s: int, size: int, cells: int) -> tuple[slice, slice]:
    """Along one axis: the cells ``u`` of phase ``a`` that hold input pixels
    (padded pixel ``s*u + a`` is input pixel ``s*u + a - p``) and those input
    pixels, as ``(cells slice, input slice)``; empty slices when there are none."""
    u0 = max(0, -((a - p) // s))                      # first u with s*u + a - p >= 0
    r0 = s * u0 + a - p
    count = max(0, min(cells - u0, (size - 1 - r0) // s + 1)) if r0 < size else 0
    return slice(u0, u0 + count), slice(r0, r0 + s * (count - 1) + 1 if count else r0, s)


def _phase_tail(kernel: tuple[int, int], stride: tuple[int, int], grid: tuple[int, int]) -> int:
    """Entries past the last image that the largest shift reaches: they take
    the zero columns of ``dcols_t`` there."""
    return ((kernel[0] - 1) // stride[0]) * grid[1] + (kernel[1] - 1) // stride[1]


def phase_buffer(xp: Any, c: int, m: int, kernel: tuple[int, int], stride: tuple[int, int],
                 grid: tuple[int, int], dtype: Any) -> Array:
    """Room for ``phase_col2im``'s phases of up to ``m`` images, to reuse
    over a loop of chunks: (phases, C, m*Hg*Wg + tail)."""
    phases, _ = phase_taps(kernel, stride, grid)
    return xp.empty((len(phases), c, m * grid[0] * grid[1] + _phase_tail(kernel, stride, grid)),
                    dtype=dtype)


def phase_col2im(dcols_t: Array, x_shape: tuple[int, int, int, int], kernel: tuple[int, int],
                 stride: tuple[int, int], padding: tuple[int, int], dx_t: Array,
                 buffer: Array | None = None) -> None:
    """``col2im`` of a few images for a convolution of any stride, by adding
    long contiguous slices into the *phases* of the padded image (NumPy/CuPy).

    Phase ``(a, b)`` of the padded image is its sub-image of pixels
    ``(s*u + a, s*v + b)``. Kernel offset (i, j) touches the pixels
    ``(s*oh + i, s*ow + j)``, which are pixels ``(oh + i // s, ow + j // s)``
    of phase ``(i % s, j % s)``: within its phase, a strided convolution is a
    stride-1 one, and ``shifted_grid``'s trick applies. Each phase is laid out
    on a grid of (Hg, Wg) cells per image (``phase_grid_size``) and flattened
    per channel; the columns of ``dcols_t`` are ordered like the grid
    positions ``q = n*Hg*Wg + oh*Wg + ow``, and row ``(c, i, j)`` adds onto one
    contiguous slice::

        flat[phase(i, j), c, q + (i // sh) * Wg + j // sw] += dcols_t[(c, i, j), q]

    ``col2im`` instead adds a block of rows of OW numbers into a strided
    window, for every offset; on ResNet-20's stride-2 convolutions this is
    2 to 2.5x faster. The phases' input pixels are then written into ``dx_t``.

    Parameters
    ----------
    dcols_t : (C*KH*KW, m*Hg*Wg), rows ordered (c, i, j); zero at the grid
        positions that are not outputs (``oh >= OH`` or ``ow >= OW``).
    x_shape : (m, C, H, W), the images' shape.
    kernel, stride, padding : (h, w) pairs of the convolution.
    dx_t : (C, m, H, W), receives the input gradient (a view into the whole);
        pixels that no kernel offset touches are left as they are.
    buffer : from ``phase_buffer`` for at least m images, or None (a new one).
    """
    xp = backend.namespace(dcols_t)
    m, c, h, w = x_shape
    kh, kw = kernel
    out_size = conv2d_output_size((h, w), kernel, stride, padding)
    hg, wg = grid = phase_grid_size(out_size, kernel, stride)
    phases, taps = phase_taps(kernel, stride, grid)
    size = m * hg * wg
    if buffer is None:
        buffer = phase_buffer(xp, c, m, kernel, stride, grid, dcols_t.dtype)
    # the phases start at zero, with a tail for the slices that run past the
    # last image
    flat = buffer[:, :, :size + _phase_tail(kernel, stride, grid)]
    flat[...] = 0
    cells = xp.reshape(flat[:, :, :size], (len(phases), c, m, hg, wg))
    blocks = xp.reshape(dcols_t, (c, kh * kw, size))
    for t, (f, shift) in enumerate(taps):
        flat[f, :, shift:shift + size] += blocks[:, t, :]
    for f, (a, b) in enumerate(phases):
        (u, rows), (v, cols) = (_phase_span(a, padding[0], stride[0], h, hg),
                                _phase_span(b, padding[1], stride[1], w, wg))
        dx_t[:, :, rows, cols] = cells[f, :, :, u, v]


# ---- the shifted grid (stride 1) -------------------------------------------------

def shifted_grid(x: Array, kernel_size: IntPair, padding: IntPair = 0,
                 chunk_bytes: int | None = None, chunk: int | None = None,
                 chunks: Iterable[slice] | None = None):
    """``cols.T`` of a stride-1 convolution, a few images at a time, by
    shifting one flat buffer instead of gathering windows (NumPy/CuPy only).

    Each image sits at the top left of a cell of (Hg, Wg) = ``grid_size``
    pixels (the image itself for a "same" convolution, such as a 3x3 kernel
    with padding 1), the cells follow one another, and the whole chunk is
    flattened, per channel, into one long vector. On that vector, moving
    the kernel by (i, j) is moving by ``i*Wg + j`` entries, so row
    ``(c, i, j)`` of ``cols.T`` is one contiguous slice of channel ``c``:

        cols_t[(c, i, j), q] = flat[c, q + (i - ph)*Wg + (j - pw)]

    for every grid position ``q = n*Hg*Wg + r*Wg + s``. Where im2col reads
    padding, pixel ``(r + i - ph, s + j - pw)`` lies off the image, and the
    slice has read a pixel of the row beside it, or of the image above or
    below: those entries (a border of each tap's rows and columns) are set
    to zero after the copy. Copying C*KH*KW long slices is much faster than
    ``im2col_chunks``'s strided copy of runs of OW numbers (2x on
    ResNet-20's 8x8 maps), and every grid position of a "same" convolution
    is an output. (An earlier grid kept a zero column and a zero row around
    every image instead of zeroing the taps: the product then also computed
    those positions, 27% more work on 8x8 maps; zeroing the taps made the
    64-channel convolutions 1.15x faster.) When the output is smaller than
    the cells, ``grid_interior`` drops the rest.

    Yields ``(images, cols_t, grid)`` for consecutive chunks of images:
    ``images`` the slice of images, ``cols_t`` (C*KH*KW, n_chunk*Hg*Wg) and
    ``grid = (Hg, Wg)``. The same buffer is refilled for every chunk. Chunk
    sizes, and ``chunks``, as in ``im2col_chunks``. Requires ``padding <
    kernel_size`` on both axes.
    """
    op = "shifted_grid"
    kh, kw = as_pair(kernel_size, "kernel_size", op, 1)
    ph, pw = as_pair(padding, "padding", op, 0)
    check_image(x, op)
    if ph >= kh or pw >= kw:
        raise ValueError(f"{op}: expected padding below the kernel size {(kh, kw)}, "
                         f"got {(ph, pw)}")
    check_window(x.shape, (kh, kw), (1, 1), (ph, pw), op)
    xp = backend.namespace(x)
    as_strided = backend.native(xp).lib.stride_tricks.as_strided
    n, c, h, w = x.shape
    hg, wg = grid_size((h, w), (kh, kw), (ph, pw))
    per_image = c * kh * kw * hg * wg                # entries of cols_t per image
    chunk = min(n, chunk or _chunk_images(n, per_image, x, chunk_bytes))
    # flat[c, lead + n*Hg*Wg + h*Wg + w] holds x[n, c, h, w]. The ``lead``
    # entries in front and the tail keep every shifted read inside the
    # buffer; they, and the cells' parts beyond the image, stay zero.
    lead = ph * wg + pw
    flat = xp.zeros((c, lead + chunk * hg * wg + kh * wg + kw), dtype=x.dtype)
    interior = xp.reshape(flat[:, lead:lead + chunk * hg * wg], (c, chunk, hg, wg))
    buffer = xp.empty(c * kh * kw * chunk * hg * wg, dtype=x.dtype)
    s_c, s_q = flat.strides
    # tap i reads image row r + i - ph: off the image for rows r < ph - i
    # and r >= h + ph - i of the cell; likewise for tap j and the columns.
    # As indices into ``taps`` (C, KH, KW, m, Hg, Wg) below, the empty ones left out:
    off_image = [(slice(None), i, slice(None), slice(None), rows)
                 for i in range(kh)
                 for rows in (slice(0, max(ph - i, 0)), slice(max(h + ph - i, 0), hg))
                 if rows.start < rows.stop]
    off_image += [(slice(None), slice(None), j, slice(None), slice(None), cols)
                  for j in range(kw)
                  for cols in (slice(0, max(pw - j, 0)), slice(max(w + pw - j, 0), wg))
                  if cols.start < cols.stop]
    for images in parallel.chunk_slices(n, chunk) if chunks is None else chunks:
        m = images.stop - images.start
        size = m * hg * wg
        interior[:, :m, :h, :w] = xp.permute_dims(x[images], (1, 0, 2, 3))
        # a view (C, KH, KW, Q): [c, i, j, q] = flat[c, q + i*Wg + j]
        shifted = as_strided(flat, shape=(c, kh, kw, size), strides=(s_c, wg * s_q, s_q, s_q))
        cols_t = xp.reshape(buffer[:c * kh * kw * size], (c * kh * kw, size))
        xp.reshape(cols_t, shifted.shape)[...] = shifted
        taps = xp.reshape(cols_t, (c, kh, kw, m, hg, wg))
        for index in off_image:
            taps[index] = 0
        yield images, cols_t, (hg, wg)


def grid_interior(a: Array, grid: tuple[int, int], out_size: tuple[int, int]) -> Array:
    """The output positions of a product over ``shifted_grid`` columns: a
    (K, n*Hg*Wg) array viewed as (K, n, OH, OW)."""
    (hg, wg), (oh, ow) = grid, out_size
    return backend.namespace(a).reshape(a, (a.shape[0], -1, hg, wg))[:, :, :oh, :ow]


def grid_product(cols_t: Array, w_mat: Array) -> Array:
    """``w_mat @ cols_t``, (K, C*KH*KW) @ (C*KH*KW, Q) -> (K, Q), computed as
    ``cols_t.T @ w_mat.T`` into the transposed output: OpenBLAS splits the Q
    grid positions over its threads in that orientation (1.3 to 1.6x on 2
    cores) and hardly at all in the other, which has only K rows."""
    xp = backend.namespace(cols_t, w_mat)
    out = xp.empty((w_mat.shape[0], cols_t.shape[1]), dtype=cols_t.dtype)
    backend.native(xp).matmul(cols_t.T, w_mat.T, out=out.T)
    return out


def grid_product_into(out_t: Array, cols_t: Array, w_mat: Array, grid: tuple[int, int]) -> None:
    """``out_t`` (K, n, OH, OW) = the output positions of ``w_mat @ cols_t``
    (``grid_product``, then ``grid_interior``). When every grid position is
    an output and each ``out_t[k]`` is one contiguous block (a slice of
    images of the conv's output), the product is written straight into it."""
    xp = backend.namespace(out_t, cols_t, w_mat)
    k, n, oh, ow = out_t.shape
    item = out_t.itemsize
    if grid == (oh, ow) and out_t.strides[1:] == (oh * ow * item, ow * item, item):
        out_mat = xp.reshape(out_t, (k, n * oh * ow))          # a view, by the strides
        backend.native(xp).matmul(cols_t.T, w_mat.T, out=out_mat.T)
    else:
        out_t[...] = grid_interior(grid_product(cols_t, w_mat), grid, (oh, ow))


# ---- the loops over chunks of images, one per thread ----------------------------

def _forward_images(x: Array, w: Array, stride: tuple[int, int], padding: tuple[int, int],
                    out_t: Array, chunk: int, chunks: Iterable[slice]) -> list[None]:
    """The fast forward loop over some ``chunks`` of the images of ``x``:
    their columns of ``out_t`` (C_out, N, OH, OW) receive ``w_mat @ cols.T``.
    Returns no results (for ``minires.fast.parallel.over_chunks``)."""
    xp = backend.namespace(x, w)
    c_out, n, oh, ow = out_t.shape
    kernel = tuple(w.shape[2:])
    w_mat = xp.reshape(w, (c_out, -1))
    if on_grid(kernel, stride, padding):
        # only the grid positions that are outputs are kept
        for images, cols_t, grid in shifted_grid(x, kernel, padding, chunk=chunk, chunks=chunks):
            grid_product_into(out_t[:, images], cols_t, w_mat, grid)
        return []
    # In this orientation OpenBLAS splits the output pixels across threads
    # (1.3 to 1.6x on 2 cores); w_mat @ cols.T, with only C_out rows, hardly
    # gains from a second thread.
    out_mat_t = xp.reshape(out_t, (c_out, n * oh * ow))
    for columns, cols_t in im2col_chunks(x, kernel, stride, padding, chunk=chunk, chunks=chunks):
        backend.native(xp).matmul(cols_t.T, w_mat.T, out=out_mat_t[:, columns].T)
    return []


def _backward_phases_images(dout: Array, x: Array, w_mat: Array, kernel: tuple[int, int],
                            stride: tuple[int, int], padding: tuple[int, int],
                            dx_t: Array | None, need_param_grads: bool, chunk: int,
                            chunks: Iterable[slice]) -> list[Array]:
    """The fast backward loop over some ``chunks`` of the images. For dx,
    ``dout`` is laid out on the phases' grid (zero where the grid is not an
    output), and ``dcols.T = w_mat.T @ dout_grid`` goes back onto the phases
    (``phase_col2im``) and into ``dx_t`` (C_in, N, H, W), unless it is None.
    Returns the chunks' terms of ``dw_mat.T = cols.T @ dout_mat``
    (C_in*KH*KW, C_out), in order (none without ``need_param_grads``)."""
    xp = backend.namespace(dout, x, w_mat)
    n, c_out, oh, ow = dout.shape
    chunk = min(chunk, n)
    if dx_t is not None:
        hg, wg = grid = phase_grid_size((oh, ow), kernel, stride)
        dout_grid = xp.zeros((c_out, chunk, hg, wg), dtype=dout.dtype)
        phases = phase_buffer(xp, x.shape[1], chunk, kernel, stride, grid, dout.dtype)

    def input_grad(images: slice) -> None:
        m = images.stop - images.start
        dout_grid[:, :m, :oh, :ow] = xp.permute_dims(dout[images], (1, 0, 2, 3))
        g = xp.reshape(dout_grid[:, :m], (c_out, m * hg * wg))
        phase_col2im(grid_product(g, w_mat.T), (m, *x.shape[1:]), kernel, stride, padding,
                     dx_t[:, images], phases)

    if not need_param_grads:
        for images in chunks:
            if dx_t is not None:
                input_grad(images)
        return []
    # dw_mat = dout_mat.T @ cols, a sum over chunks of images; OpenBLAS
    # computes its transpose cols.T @ dout_mat 1.3 to 1.8x faster.
    dout_t = xp.reshape(xp.permute_dims(dout, (1, 0, 2, 3)), (c_out, n * oh * ow))
    terms = []
    for columns, cols_t in im2col_chunks(x, kernel, stride, padding, chunk=chunk, chunks=chunks):
        if dx_t is not None:
            input_grad(slice(columns.start // (oh * ow), columns.stop // (oh * ow)))
        terms.append(cols_t @ dout_t[:, columns].T)
    return terms


def sum_in_order(terms: list[Array]) -> Array:
    """``((t1 + t2) + t3) + ...`` over the chunks' terms, in chunk order: the
    sum a single loop over the chunks makes, whichever thread computed
    which chunk."""
    return sum(terms[1:], terms[0])


def conv2d_backward_by_convolution(dout: Array, x: Array, w: Array, padding: IntPair = 0,
                                   need_param_grads: bool = True, need_input_grad: bool = True
                                   ) -> tuple[Array | None, Array | None]:
    """dx and dw of a stride-1 convolution from one im2col of ``dout`` (NumPy/CuPy).

    Input pixel ``x[n, c, h, w]`` met the kernel entry ``w[co, c, i, j]`` in
    the output pixel ``(h + ph - i, w + pw - j)``. Pad ``dout`` by
    ``q = K - 1 - p`` and flip the kernel, ``i' = KH - 1 - i``: that output
    pixel is ``dout_q[n, co, h + i', w + j']``, so with
    ``colsd = im2col(dout_q, (KH, KW))`` (rows (n, h, w), columns (co, i', j'))
    and ``w_flipped[c, co, i', j'] = w[co, c, KH-1-i', KW-1-j']``::

        dx[n, c, h, w]          = sum over (co, i', j') of
                                      colsd[(n, h, w), (co, i', j')] * w_flipped[c, co, i', j']
        dw_flipped[c, co, i', j'] = sum over (n, h, w) of
                                      x[n, c, h, w] * colsd[(n, h, w), (co, i', j')]

    The first line is the convolution of ``dout`` with the flipped kernel
    (``w_flipped_mat @ colsd.T``), the second a product with the same
    columns (``x_mat.T @ colsd``): one im2col serves both gradients.

    Parameters
    ----------
    dout : (N, C_out, OH, OW), the gradient of the convolution's output.
    x : (N, C_in, H, W), its input (``OH = H + KH - 1 - 2*ph``).
    w : (C_out, C_in, KH, KW), its weight.
    padding : its padding (h, w), each below the kernel size.
    need_param_grads : False skips ``dw`` (returned as None).
    need_input_grad : False skips ``dx`` (returned as None).

    Returns
    -------
    dx : (N, C_in, H, W), laid out like ``conv2d_forward``'s output, or None.
    dw : (C_out, C_in, KH, KW), or None.
    """
    op = "conv2d_backward_by_convolution"
    ph, pw = as_pair(padding, "padding", op, 0)
    c_out, c_in, kh, kw = w.shape
    if ph >= kh or pw >= kw:
        raise ValueError(f"{op}: expected padding below the kernel size {(kh, kw)}, "
                         f"got {(ph, pw)}")
    xp = backend.namespace(dout, x, w)
    n, _, h, wd = x.shape
    w_flipped = xp.permute_dims(xp.flip(w, axis=(2, 3)), (1, 0, 2, 3))   # (C_in, C_out, KH, KW)
    w_flipped_mat = xp.reshape(w_flipped, (c_in, c_out * kh * kw))
    dx_t = xp.empty((c_in, n, h, wd), dtype=dout.dtype) if need_input_grad else None
    # the chunks of images shared out over the CPU threads (minires.fast.parallel);
    # each returns its term of dw_flipped_mat.T
    chunk = chunk_images(dout, (kh, kw), (1, 1), (kh - 1 - ph, kw - 1 - pw), grid=True)
    terms = parallel.over_chunks(
        lambda chunks: _backward_by_convolution_images(
            dout, x, w_flipped_mat, (kh, kw), (ph, pw), dx_t, need_param_grads, chunk, chunks),
        dout, chunk)
    dx = None if dx_t is None else xp.permute_dims(dx_t, (1, 0, 2, 3))
    if not need_param_grads:
        return dx, None
    dw_flipped_t = sum_in_order(terms)
    dw_flipped = xp.reshape(xp.permute_dims(dw_flipped_t, (1, 0)), (c_in, c_out, kh, kw))
    dw = xp.permute_dims(xp.flip(dw_flipped, axis=(2, 3)), (1, 0, 2, 3))
    return dx, xp.asarray(dw, copy=True)


def _backward_by_convolution_images(dout: Array, x: Array, w_flipped_mat: Array,
                                    kernel: tuple[int, int], padding: tuple[int, int],
                                    dx_t: Array | None, need_param_grads: bool,
                                    chunk: int, chunks: Iterable[slice]) -> list[Array]:
    """The loop of ``conv2d_backward_by_convolution`` over some ``chunks`` of
    the images: their dx goes into ``dx_t`` (C_in, N, H, W); returns their
    terms of ``dw_flipped_mat.T`` (C_out*KH*KW, C_in), in order (none
    without ``need_param_grads``). ``dx_t`` None skips dx."""
    xp = backend.namespace(dout, x, w_flipped_mat)
    c_in = x.shape[1]
    (kh, kw), (ph, pw), (h, wd) = kernel, padding, x.shape[2:]
    terms, x_grid = [], None
    for images, colsd_t, grid in shifted_grid(dout, (kh, kw), (kh - 1 - ph, kw - 1 - pw),
                                              chunk=chunk, chunks=chunks):
        if dx_t is not None:
            grid_product_into(dx_t[:, images], colsd_t, w_flipped_mat, grid)
        if need_param_grads:
            m = images.stop - images.start
            x_images = xp.permute_dims(x[images], (1, 0, 2, 3))       # (C_in, m, H, W)
            if grid == (h, wd):
                # every grid position is an input pixel: x itself (a view
                # when x is laid out channel-major, as conv outputs are)
                x_mat = xp.reshape(x_images, (c_in, -1))
            else:
                # x laid out on the grid, zero where the grid is not an
                # input pixel, so those columns of colsd add nothing to dw
                if x_grid is None:
                    x_grid = xp.zeros((c_in, min(chunk, x.shape[0]), *grid), dtype=x.dtype)
                x_grid[:, :m, :h, :wd] = x_images
                x_mat = xp.reshape(x_grid[:, :m], (c_in, -1))
            # dw_flipped_mat.T: OpenBLAS computes colsd.T @ x_mat 1.3 to 1.8x
            # faster than its transpose x_mat.T @ colsd
            terms.append(colsd_t @ x_mat.T)
    return terms
