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

The portable im2col visits each kernel offset (i, j) once: the pixels that
offset touches, over all output positions, are the strided slice
``x_padded[:, :, i : i + stride*(OH-1) + 1 : stride, j : ... : stride]``.
``col2im`` is its adjoint: it adds each block of columns back into that same
strided slice of a zero image, so overlapping windows sum up. That is the
dx of the convolution, and the reason the backward pass is again a matrix
product followed by col2im.

Grouped convolution (``groups = G``, PyTorch's meaning): the input channels
and the filters are split into G groups, and filter group g sees only input
group g; ``w`` is (C_out, C_in / G, KH, KW). Rows of ``cols.T`` are ordered
(c, i, j), so input group g is the g-th block of C_in/G*KH*KW rows, and its
filters are the g-th block of rows of ``w_mat``: G independent products,
one batched ``matmul`` over a (G, ...) reshape of both (with G = 1, the
product above). ``groups = C_in`` is a depthwise convolution.

Memory layout (speed only; the values are as above): ``im2col`` builds the
transpose ``cols.T`` (C*KH*KW, N*OH*OW) as a contiguous array and returns
the transposed view ``cols``. Filling ``cols.T`` copies long runs along
``ow``, while filling ``cols`` directly copies runs of KW numbers;
``matmul`` reads a transposed operand without copying. Likewise the
convolution computes ``out.T = w_mat @ cols.T`` (C_out, N*OH*OW), so ``out``
is an (N, C_out, OH, OW) view of memory laid out (C_out, N, OH, OW): every
output map is contiguous, which the next im2col and BatchNorm's per-channel
sums like. On ResNet-20's shapes (batch 128, 2-core CPU) this made im2col
about 2x and col2im 2 to 5x faster than filling ``cols`` row by row.

The cache keeps ``x``, not ``cols``: ``cols`` is KH*KW times the size of
``x`` (nine times for a 3x3 kernel), and keeping one per layer until the
backward pass would dominate a network's memory. The backward pass builds
``cols`` again.

The NumPy/CuPy fast path (``backend.is_numpy_like``) computes the same
products in three other ways, each measured on ResNet-20 at batch 128 on a
2-core CPU and tested against the portable path:

- *Chunks of images.* im2col and the matrix product run on a few images at
  a time (about ``CHUNK_BYTES`` of ``cols`` each), refilling one buffer: the
  chunk is still in the CPU cache when the product reads it, and no
  full-size ``cols`` is allocated (fresh memory is slow to touch the first
  time). Each chunk's product writes straight into its columns of ``out.T``.
- *Backward by one im2col of dout.* For stride 1, ``dx`` is the convolution
  of ``dout`` (padded by KH-1-ph, KW-1-pw) with the kernel flipped in both
  spatial axes and its input and output channels swapped::

      dx[n, c, h, w] = sum over (co, i, j) of
          dout_padded[n, co, h + i, w + j] * w[co, c, KH-1-i, KW-1-j]

  an im2col of ``dout`` and one product instead of a product and a col2im
  of nine strided additions; and ``dw`` is a product of ``x`` with those
  same columns, so ``x`` needs no second im2col
  (``conv2d_backward_by_convolution``). Strided convolutions, and those
  with more output than input channels (the stem), keep the product and
  col2im, by phases (below).
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

On NumPy, the fast paths also share the chunks of images out over the CPU
threads (``minires.parallel.over_chunks``): each thread runs the loop above
on the chunks it takes, with single-threaded products, and the chunks'
weight-gradient terms are added up in chunk order.

``conv2d_forward_naive`` / ``conv2d_backward_naive`` are four nested loops:
slow, obvious, and the reference the fast version is tested against.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from typing import Any

from .. import backend, parallel
from ..backend import Array

IntPair = int | tuple[int, int]

# Fast path: bytes of the im2col matrix per chunk of images (see the module
# docstring). A few MB fit the CPU cache; much larger chunks were slower.
CHUNK_BYTES = 4 * 2**20
# On a GPU (CuPy) the cache argument does not hold and every chunk costs
# kernel launches: chunks there are as large as this allows.
GPU_CHUNK_BYTES = 1024 * 2**20


def _chunk_images(n: int, per_image: int, x: Array, chunk_bytes: int | None) -> int:
    """Images per chunk: at most as many as fit in ``chunk_bytes`` (default
    ``CHUNK_BYTES``, or ``GPU_CHUNK_BYTES`` on CuPy), at least one.

    On the CPU the batch is cut into a multiple of 4 chunks of near-equal
    size (at least 4 when there are 4 images), which minires.parallel's
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
    ``minires.parallel`` take whole chunks (``over_chunks``), so every
    product, and every sum of products, is the same whatever the number of
    threads: results do not depend on the machine."""
    n, c, h, w = x.shape
    if grid:
        hg, wg = grid_size((h, w), kernel, padding)
    else:
        hg, wg = conv2d_output_size((h, w), kernel, stride, padding)
    return _chunk_images(n, c * kernel[0] * kernel[1] * hg * wg, x, chunk_bytes)


# ---- small helpers shared with pool.py ----------------------------------------

def as_pair(value: Any, name: str, op: str, minimum: int) -> tuple[int, int]:
    """``3 -> (3, 3)``, ``(2, 1) -> (2, 1)``; ValueError unless both are ints >= minimum."""
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    try:
        if len(pair) != 2 or any(isinstance(v, bool) for v in pair):
            raise TypeError
        pair = (operator.index(pair[0]), operator.index(pair[1]))
    except TypeError:
        raise ValueError(f"{op}: expected {name} to be an int or a pair of ints, "
                         f"got {value!r}") from None
    if min(pair) < minimum:
        raise ValueError(f"{op}: expected {name} >= {minimum}, got {value!r}")
    return pair


def conv2d_output_size(size: tuple[int, int], kernel_size: tuple[int, int],
                       stride: tuple[int, int], padding: tuple[int, int]) -> tuple[int, int]:
    """(OH, OW) for an input of spatial ``size`` (H, W); each entry may be < 1
    when the padded input is smaller than the kernel."""
    return tuple((n + 2 * p - k) // s + 1
                 for n, k, s, p in zip(size, kernel_size, stride, padding, strict=True))


def check_image(x: Any, op: str, layout: str = "(N, C, H, W)") -> None:
    """ValueError naming ``op`` unless ``x`` is a floating-point array of rank 4."""
    shape = getattr(x, "shape", None)
    if shape is None or len(shape) != 4:
        got = tuple(shape) if shape is not None else type(x).__name__
        raise ValueError(f"{op}: expected x of rank 4 {layout}, got {got}")
    if not backend.namespace(x).isdtype(x.dtype, "real floating"):
        raise ValueError(f"{op}: expected a floating-point x, got dtype {x.dtype}")


def check_window(x_shape: tuple[int, ...], kernel_size: tuple[int, int],
                 stride: tuple[int, int], padding: tuple[int, int], op: str) -> tuple[int, int]:
    """(OH, OW), or ValueError if the padded input is smaller than the kernel."""
    oh, ow = conv2d_output_size(tuple(x_shape[2:]), kernel_size, stride, padding)
    if oh < 1 or ow < 1:
        raise ValueError(f"{op}: expected an input of at least the kernel size {kernel_size} "
                         f"after padding {padding}, got spatial size {tuple(x_shape[2:])}")
    return oh, ow


def check_dout(dout: Any, expected: tuple[int, ...], op: str) -> None:
    """ValueError naming ``op`` unless ``dout`` has the shape of the forward's output."""
    got = tuple(getattr(dout, "shape", ()))
    if got != tuple(expected):
        raise ValueError(f"{op}: expected dout of the output's shape {tuple(expected)}, got {got}")


def pad2d(x: Array, padding: tuple[int, int], value: float = 0.0) -> Array:
    """(N, C, H, W) -> (N, C, H + 2*ph, W + 2*pw): a new array filled with
    ``value`` whose interior is ``x``. Returns ``x`` itself when padding is 0."""
    ph, pw = padding
    if ph == 0 and pw == 0:
        return x
    xp = backend.namespace(x)
    n, c, h, w = x.shape
    out = xp.full((n, c, h + 2 * ph, w + 2 * pw), value, dtype=x.dtype)
    out[:, :, ph:ph + h, pw:pw + w] = x
    return out


def channel_major_zeros(xp: Any, shape: tuple[int, int, int, int], dtype: Any) -> Array:
    """Zeros of shape (N, C, H, W) stored (C, N, H, W), the layout of the conv
    outputs (module docstring). Layers that build an activation or a
    gradient from scratch use it, so the next im2col and BatchNorm's
    per-channel sums find the layout they read without a copy."""
    n, c, h, w = shape
    return xp.permute_dims(xp.zeros((c, n, h, w), dtype=dtype), (1, 0, 2, 3))


def unpad2d(x: Array, padding: tuple[int, int]) -> Array:
    """The interior of a padded (N, C, H + 2*ph, W + 2*pw) array, as a new array."""
    ph, pw = padding
    if ph == 0 and pw == 0:
        return x
    xp = backend.namespace(x)
    return xp.asarray(x[:, :, ph:x.shape[2] - ph, pw:x.shape[3] - pw], copy=True)


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

def im2col(x: Array, kernel_size: IntPair, stride: IntPair = 1, padding: IntPair = 0,
           *, portable: bool = False) -> Array:
    """Copy every receptive field of ``x`` into a row of a matrix.

    Parameters
    ----------
    x : (N, C, H, W) floating-point array.
    kernel_size, stride, padding : int or (h, w) pair.
    portable : use the Array-API version even on NumPy/CuPy (tests compare them).

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

    if backend.is_numpy_like(xp) and not portable:
        # Fast path (NumPy/CuPy only, outside the Array API standard): a
        # strided *view* (C, KH, KW, N, OH, OW) whose element [c, i, j, n, oh, ow]
        # is x_padded[n, c, oh*sh + i, ow*sw + j], then a single copy into
        # cols.T, instead of one copy per kernel offset: 2 to 4x faster than the
        # portable path on ResNet-20's shapes (GUIDE section 3).
        s_n, s_c, s_h, s_w = x_padded.strides
        fields = backend.native(xp).lib.stride_tricks.as_strided(
            x_padded, shape=(c, kh, kw, n, oh, ow),
            strides=(s_c, s_h, s_w, s_n, stride[0] * s_h, stride[1] * s_w))
        return xp.reshape(fields, (c * kh * kw, n * oh * ow)).T

    # Portable path: one strided slice (N, C, OH, OW) per kernel offset (i, j),
    # stacked as cols.T: (C, KH*KW, N, OH, OW) -> (C*KH*KW, N*OH*OW).
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
    (``minires.parallel.over_chunks`` hands them out).
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


# ---- convolution by im2col ----------------------------------------------------

def check_groups(groups: Any, c_in: int, c_out: int, op: str) -> int:
    """``groups`` as an int, or ValueError unless it is >= 1 and divides both
    ``c_in`` and ``c_out``."""
    try:
        if isinstance(groups, bool):
            raise TypeError
        g = operator.index(groups)
    except TypeError:
        raise ValueError(f"{op}: expected groups to be an int, got {groups!r}") from None
    if g < 1:
        raise ValueError(f"{op}: expected groups >= 1, got {g}")
    if c_in % g or c_out % g:
        raise ValueError(f"{op}: expected C_in = {c_in} and C_out = {c_out} both divisible "
                         f"by groups = {g}")
    return g


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
    cache : for ``conv2d_backward``
    """
    stride, padding, (oh, ow), groups = _check_conv(x, w, b, stride, padding, "conv2d_forward",
                                                    groups)
    xp = backend.namespace(x, w)
    n, c_out = x.shape[0], w.shape[0]
    kernel = tuple(w.shape[2:])
    if backend.is_numpy_like(xp) and groups == 1:
        # Fast path (module docstring): out_mat = cols @ w_mat.T chunk by
        # chunk of images, over the shifted grid for stride 1, else over
        # im2col_chunks; each product is written into its rows of out_mat
        # (columns of out.T). About 1.5x faster on ResNet-20's 16-channel
        # layers than one full-size cols. The images are split over the CPU
        # threads (minires.parallel).
        out_t = xp.empty((c_out, n, oh, ow), dtype=x.dtype)
        chunk = chunk_images(x, kernel, stride, padding, on_grid(kernel, stride, padding))
        parallel.over_chunks(lambda chunks: _forward_images(x, w, stride, padding, out_t,
                                                            chunk, chunks), x, chunk)
        out_t = xp.reshape(out_t, (c_out, n * oh * ow))
    else:
        cols = im2col(x, kernel, stride, padding)        # (N*OH*OW, C_in*KH*KW)
        w_mat = xp.reshape(w, (c_out, -1))               # (C_out, C_in/G*KH*KW)
        # out = cols @ w_mat.T, computed as its transpose (module docstring),
        # group by group: (G, C_out/G, C_in/G*KH*KW) @ (G, C_in/G*KH*KW, N*OH*OW)
        out_t = xp.matmul(by_group(w_mat, groups), by_group(cols.T, groups))
        out_t = xp.reshape(out_t, (c_out, n * oh * ow))  # (C_out, N*OH*OW)
    if b is not None:
        out_t = out_t + xp.reshape(b, (c_out, 1))
    out = xp.permute_dims(xp.reshape(out_t, (c_out, n, oh, ow)), (1, 0, 2, 3))
    cache = (x, w, b is not None, stride, padding, groups)
    return out, cache


def _forward_images(x: Array, w: Array, stride: tuple[int, int], padding: tuple[int, int],
                    out_t: Array, chunk: int, chunks: Iterable[slice]) -> list[None]:
    """The fast forward loop over some ``chunks`` of the images of ``x``:
    their columns of ``out_t`` (C_out, N, OH, OW) receive ``w_mat @ cols.T``.
    Returns no results (for ``minires.parallel.over_chunks``)."""
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


def conv2d_backward(dout: Array, cache: tuple, need_param_grads: bool = True,
                    need_input_grad: bool = True
                    ) -> tuple[Array | None, Array | None, Array | None]:
    """Gradients of ``conv2d_forward``.

    With ``out_mat = cols @ w_mat.T`` (see the forward; ``out_mat`` is ``out``
    as an (N*OH*OW, C_out) matrix), the matrix rules give
    ``dcols = dout_mat @ w_mat``, ``dw_mat = dout_mat.T @ cols`` and ``db`` the
    sum of ``dout_mat`` over its rows; ``col2im`` turns ``dcols`` into ``dx``.

    With groups, each group's products are these, batched over the groups
    like the forward's.

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
    if not (need_param_grads or need_input_grad):
        return None, None, None
    fast = backend.is_numpy_like(xp) and groups == 1
    if fast and on_grid(kernel, stride, padding) and c_out <= x.shape[1]:
        # Fast path: dx and dw of a stride-1 convolution from one im2col of
        # dout (module docstring); about 2x faster than col2im and a second
        # im2col of x. Only where dout has no more channels than x: the stem
        # (3 -> 16 channels) is cheaper the plain way, by im2col of x.
        dx, dw = conv2d_backward_by_convolution(dout, x, w, padding, need_param_grads,
                                                need_input_grad)
        return dx, dw, db
    w_mat = xp.reshape(w, (c_out, -1))
    if fast:
        # Fast path: the same products, dx by phase_col2im, the images split
        # over the CPU threads (minires.parallel), dw_mat summed over chunks
        # of images.
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
    # per group g: dcols_g = dout_mat_g @ w_mat_g and dw_mat_g = dout_mat_g.T @ cols_g
    w_g, dout_g = by_group(w_mat, groups), by_group(dout_t, groups)
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
    # the chunks of images shared out over the CPU threads (minires.parallel);
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
