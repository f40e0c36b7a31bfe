"""Checkers for chapter 03's exercises: im2col, col2im and the convolution's
backward pass.

Expected values come from :mod:`minires.functional` (``im2col``, ``col2im``,
``conv2d_forward``, ``conv2d_backward``). The typical wrong answers that get a
hint are computed here with plain NumPy, next to the checkers that use them.

The im2col layout (the one ``minires.functional.im2col`` uses, and the one
these checkers expect): ``cols`` has shape (N*OH*OW, C*KH*KW), rows ordered
(n, oh, ow), columns ordered (c, i, j), so that
``cols[(n, oh, ow), (c, i, j)] = x_padded[n, c, oh*stride + i, ow*stride + j]``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..functional import col2im, conv2d_backward, conv2d_forward, im2col
from .core import MISSING, Check, CheckResult, largest_error

TOL = 1e-10
"""A correct float64 answer is within about 1e-15 of minires's; loops,
im2col and any order of summation all stay far below this."""

# (x shape, w shape, stride, padding): square and non-square kernels, odd
# sizes, stride 1 and 2, padding 0 and 1. In the last one the last column of
# x lies under no window (its gradient is 0). N != C_out everywhere, so a db
# summed over the wrong axes has the wrong shape.
CONV_CONFIGS = [
    ((2, 3, 5, 5), (4, 3, 3, 3), 1, 0),
    ((2, 3, 6, 7), (4, 3, 3, 3), 1, 1),
    ((3, 2, 7, 6), (5, 2, 3, 2), 2, 1),
    ((2, 3, 9, 8), (6, 3, 3, 3), 2, 0),
]

# (x shape, kernel (KH, KW), stride, padding) for im2col and col2im
COLS_CONFIGS = [
    ((2, 3, 5, 5), (3, 3), 1, 0),
    ((2, 2, 6, 7), (3, 3), 1, 1),
    ((3, 2, 7, 6), (3, 2), 2, 1),
    ((2, 3, 9, 8), (3, 3), 2, 0),
]


def _describe(x_shape, kernel, stride, padding) -> str:
    return (f"x {tuple(x_shape)}, kernel {kernel[0]}x{kernel[1]}, stride {stride}, "
            f"padding {padding}")


def _out_size(x_shape, kernel, stride, padding) -> tuple[int, int]:
    return tuple((n + 2 * padding - k) // stride + 1
                 for n, k in zip(x_shape[2:], kernel, strict=True))


def _pad(x: np.ndarray, padding: int) -> np.ndarray:
    p = padding
    return np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))


# ---- typical wrong col2im's (each is col2im except for one mistake) ----------

def _col2im_variant(cols: np.ndarray, x_shape, kernel, stride, padding, *,
                    assign: bool = False, by_pixel: bool = False,
                    keep_padding: bool = False) -> np.ndarray:
    """col2im in plain NumPy, with the mistakes the hints recognise:

    - ``assign``: ``=`` instead of ``+=``, so where windows overlap only the
      last write survives (in the order of the loops: kernel offsets (i, j)
      row by row, or, ``by_pixel``, output pixels (n, oh, ow) row by row);
    - ``keep_padding``: the padded image returned, border and all.
    """
    n, c, h, w = x_shape
    kh, kw = kernel
    s, p = stride, padding
    oh, ow = _out_size(x_shape, kernel, stride, padding)
    blocks = np.asarray(cols, dtype=np.float64).reshape(n, oh, ow, c, kh, kw)
    img = np.zeros((n, c, h + 2 * p, w + 2 * p))
    if by_pixel:
        for k in range(n):
            for r in range(oh):
                for q in range(ow):
                    field = (k, slice(None), slice(r * s, r * s + kh), slice(q * s, q * s + kw))
                    if assign:
                        img[field] = blocks[k, r, q]
                    else:
                        img[field] += blocks[k, r, q]
    else:
        for i in range(kh):
            for j in range(kw):
                where = (slice(None), slice(None), slice(i, i + s * (oh - 1) + 1, s),
                         slice(j, j + s * (ow - 1) + 1, s))
                block = blocks[:, :, :, :, i, j].transpose(0, 3, 1, 2)    # (N, C, OH, OW)
                if assign:
                    img[where] = block
                else:
                    img[where] += block
    if keep_padding or p == 0:
        return img
    return img[:, :, p:p + h, p:p + w]


ASSIGN_HINT = ("{what} is what col2im gives with '=' instead of '+=': where windows overlap, "
               "a pixel must receive the SUM of the entries of every window that covers it "
               "(col2im is the adjoint of im2col, and adjoints add).")
PADDING_HINT = ("{what} still has the padding: col2im adds into the padded image, then the "
                "border of width `padding` must be cut off ([:, :, p:p+H, p:p+W]).")


def _col2im_mistakes(cols: np.ndarray, x_shape, kernel, stride, padding, what: str
                     ) -> list[tuple[np.ndarray, str]]:
    args = (cols, x_shape, kernel, stride, padding)
    hint = ASSIGN_HINT.format(what=what)
    out = [(_col2im_variant(*args, assign=True), hint),
           (_col2im_variant(*args, assign=True, by_pixel=True), hint)]
    if padding:
        out.append((_col2im_variant(*args, keep_padding=True), PADDING_HINT.format(what=what)))
    return out


# ---- check_conv2d ---------------------------------------------------------------

def _conv_mistakes(x, w, b, stride, padding, dout, out_ref, dw_ref):
    """The typical wrong (out, dx, dw, db) of one configuration, with hints."""
    c_out, c_in, kh, kw = w.shape
    out_flipped, _ = conv2d_forward(x, np.ascontiguousarray(w[:, :, ::-1, ::-1]), b,
                                    stride, padding)
    out_mistakes = [
        (out_ref - b.reshape(1, -1, 1, 1), "out is missing the bias b (one number per "
         "output channel, added to every pixel of that channel's map)."),
        (out_flipped, "out is a 'true' convolution with the kernel rotated by 180 degrees: "
         "deep learning's convolution (PyTorch's and minires's) is a cross-correlation, "
         "out[n, co, oh, ow] = sum of x_padded[n, :, oh*s + i, ow*s + j] * w[co, :, i, j]."),
    ]

    dout_mat = dout.transpose(0, 2, 3, 1).reshape(-1, c_out)      # (N*OH*OW, C_out)
    dcols = dout_mat @ w.reshape(c_out, -1)                       # (N*OH*OW, C_in*KH*KW)
    dx_mistakes = _col2im_mistakes(dcols, x.shape, (kh, kw), stride, padding, "dx")
    if stride == 1 and padding <= min(kh, kw) - 1:
        # dx as the "full" convolution of dout, with the kernel not rotated
        full = (kh - 1 - padding, kw - 1 - padding)
        dx_unflipped, _ = conv2d_forward(dout, np.ascontiguousarray(w.transpose(1, 0, 2, 3)),
                                         None, 1, full)
        dx_mistakes.append((dx_unflipped, "dx looks like dout convolved with the kernel NOT "
                            "rotated: in the 'full convolution' form of dx the kernel is "
                            "rotated by 180 degrees (w[:, :, ::-1, ::-1]) and its in/out "
                            "channels swapped. Or take dcols = dout_mat @ w_mat and col2im."))

    dw_mistakes = [
        (dw_ref[:, :, ::-1, ::-1], "dw is rotated by 180 degrees: the weight gradient is the "
         "correlation of x with dout, dw_mat = dout_mat.T @ cols, with no flip (only dx's "
         "'full convolution' form rotates the kernel)."),
        (dw_ref.transpose(0, 1, 3, 2), "dw has its kernel rows and columns swapped "
         "(KH <-> KW): check the order (c, i, j) of the columns of cols and the reshape "
         "of dw_mat to (C_out, C_in, KH, KW)."),
        (dw_ref.transpose(1, 0, 2, 3), "dw has its input and output channels swapped: the "
         "weight layout is (C_out, C_in, KH, KW), so dw_mat = dout_mat.T @ cols has "
         "shape (C_out, C_in*KH*KW) before the reshape."),
        (dw_ref.reshape(c_out, -1).T.reshape(w.shape), "dw is dw_mat.T reshaped: "
         "cols.T @ dout_mat has shape (C_in*KH*KW, C_out); transpose it to "
         "(C_out, C_in*KH*KW) before reshaping to w's shape."),
    ]

    db_hint = ("db has one entry per output channel, shape (C_out,): sum dout over the "
               "images and the pixels, axes (0, 2, 3).")
    db_mistakes = [(dout.sum(axis=axes), db_hint)
                   for axes in [0, (2, 3), (0, 2), (0, 3), (1, 2, 3)]]
    return out_mistakes, dx_mistakes, dw_mistakes, db_mistakes


def _check_conv_config(forward: Callable, backward: Callable, config, seed: int
                       ) -> tuple[Check, float]:
    """One configuration: the check, and the largest relative error when it passed."""
    x_shape, w_shape, stride, padding = config
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape)
    w = rng.standard_normal(w_shape)
    b = rng.standard_normal(w_shape[0])
    out_ref, cache_ref = conv2d_forward(x, w, b, stride, padding)
    dout = rng.standard_normal(out_ref.shape)
    dx_ref, dw_ref, db_ref = conv2d_backward(dout, cache_ref)
    out_m, dx_m, dw_m, db_m = _conv_mistakes(x, w, b, stride, padding, dout, out_ref, dw_ref)

    check = Check("check_conv2d")
    what = f"forward(x, w, b, stride={stride}, padding={padding})"
    given = (x.copy(), w.copy(), b.copy())
    parts = check.unpack(what, check.call(what, forward, *given, stride, padding),
                         ["out", "cache"])
    for name, before, after in zip("xwb", (x, w, b), given, strict=True):
        check.unchanged(name, before, after, by="a forward pass")
    if parts is None:
        return check, float("nan")
    out, cache = parts
    check.compare("out", out, out_ref, TOL, mistakes=out_m)
    dout_given = dout.copy()
    grads = check.unpack("backward(dout, cache)",
                         check.call("backward(dout, cache)", backward, dout_given, cache),
                         ["dx", "dw", "db"])
    if grads is not None:
        dx, dw, db = grads
        check.compare("dx", dx, dx_ref, TOL, mistakes=dx_m)
        check.compare("dw", dw, dw_ref, TOL, mistakes=dw_m)
        check.compare("db", db, db_ref, TOL, mistakes=db_m)
        check.unchanged("dout", dout, dout_given)
        if not check.failed:
            return check, largest_error([(out, out_ref), (dx, dx_ref), (dw, dw_ref),
                                         (db, db_ref)])
    return check, float("nan")


def check_conv2d(forward: Callable, backward: Callable) -> CheckResult:
    """Check a convolution pair, compared with minires's on float64 inputs.

    Parameters
    ----------
    forward : ``forward(x, w, b, stride, padding) -> (out, cache)``, with
        x (N, C_in, H, W), w (C_out, C_in, KH, KW), b (C_out,), stride and
        padding ints (zero padding); out (N, C_out, OH, OW). The cache is
        yours: anything your backward needs. ``minires.functional.conv2d_forward``
        is a valid forward.
    backward : ``backward(dout, cache) -> (dx, dw, db)`` with the shapes of
        x, w and b; it must leave ``dout`` untouched.

    Four configurations in turn (stride 1 and 2, padding 0 and 1, a 3x2
    kernel, odd sizes, a column of x under no window), each with a random
    upstream gradient; the checker stops at the first configuration that
    fails and shows it in full. Typical mistakes get a hint: a bias left out,
    a kernel flipped in the forward; ``=`` instead of ``+=`` in col2im, the
    padding left on dx, dx's kernel not rotated; a rotated, transposed or
    channel-swapped dw; db not summed over the images and pixels.
    """
    result = Check("check_conv2d")
    for k, config in enumerate(CONV_CONFIGS):
        x_shape, w_shape, stride, padding = config
        header = _describe(x_shape, w_shape[2:], stride, padding) + f", C_out {w_shape[0]}"
        sub, err = _check_conv_config(forward, backward, config, seed=k)
        summary = (f"ok      {header}: out, dx, dw, db match (largest relative error "
                   f"{err:.1e}; a correct answer is below {TOL:.0e})")
        if not result.merge(sub, header, summary, left=len(CONV_CONFIGS) - k - 1):
            break
    return result.result()


# ---- check_im2col / check_col2im ---------------------------------------------------

def _im2col_mistakes(x: np.ndarray, kernel, stride, padding):
    n, c, h, w = x.shape
    kh, kw = kernel
    oh, ow = _out_size(x.shape, kernel, stride, padding)
    ref = np.asarray(im2col(x, kernel, stride, padding))
    fields = ref.reshape(n, oh, ow, c, kh, kw)
    out = [
        (fields.transpose(0, 1, 2, 4, 5, 3).reshape(ref.shape),
         "the columns are ordered (i, j, c), kernel offset first; they must be ordered "
         "(c, i, j), channel first, the order of w.reshape(C_out, C*KH*KW), so that the "
         "convolution is cols @ w_mat.T."),
        (fields.transpose(1, 2, 0, 3, 4, 5).reshape(ref.shape),
         "the rows are ordered (oh, ow, n); they must be ordered (n, oh, ow): all the "
         "output pixels of image 0, then those of image 1, ..."),
        (fields.transpose(0, 2, 1, 3, 4, 5).reshape(ref.shape),
         "the rows are ordered (n, ow, oh): an image's output pixels go row by row, "
         "(oh, ow) with ow the fastest."),
        (fields.transpose(0, 1, 2, 3, 5, 4).reshape(ref.shape),
         "each window is read transposed, (c, j, i): the columns are ordered (c, i, j), "
         "kernel row i before kernel column j."),
    ]
    if padding:
        oh0, ow0 = _out_size(x.shape, kernel, stride, 0)
        if oh0 > 0 and ow0 > 0:
            out.append((np.asarray(im2col(x, kernel, stride, 0)),
                        "cols has the shape of an im2col without padding: pad x with "
                        "`padding` zeros on each side of H and W first."))
    return out


def check_im2col(im2col_fn: Callable) -> CheckResult:
    """Check ``im2col_fn(x, kernel_size, stride, padding) -> cols``.

    ``x`` is (N, C, H, W) float64, ``kernel_size`` a pair (KH, KW), ``stride``
    and ``padding`` ints. ``cols`` must be (N*OH*OW, C*KH*KW) with rows
    ordered (n, oh, ow) and columns (c, i, j), as
    ``minires.functional.im2col`` returns it. Four configurations (stride 1
    and 2, padding 0 and 1, a 3x2 kernel); stops at the first that fails.
    Hints for columns or rows in the wrong order and a forgotten padding.
    """
    result = Check("check_im2col")
    for k, (x_shape, kernel, stride, padding) in enumerate(COLS_CONFIGS):
        header = _describe(x_shape, kernel, stride, padding)
        x = np.random.default_rng(10 + k).standard_normal(x_shape)
        ref = np.asarray(im2col(x, kernel, stride, padding))
        sub = Check("check_im2col")
        x_given = x.copy()
        cols = sub.call(f"im2col(x, {kernel}, {stride}, {padding})", im2col_fn, x_given,
                        kernel, stride, padding)
        if cols is not MISSING:
            sub.compare("cols", cols, ref, TOL,
                        mistakes=_im2col_mistakes(x, kernel, stride, padding))
            sub.unchanged("x", x, x_given, by="im2col")
        summary = f"ok      {header}: cols {ref.shape} match"
        if not result.merge(sub, header, summary, left=len(COLS_CONFIGS) - k - 1):
            break
    return result.result()


def check_col2im(col2im_fn: Callable) -> CheckResult:
    """Check ``col2im_fn(cols, x_shape, kernel_size, stride, padding) -> x``.

    ``cols`` is (N*OH*OW, C*KH*KW) float64 in im2col's layout, ``x_shape``
    (N, C, H, W), ``kernel_size`` a pair (KH, KW), ``stride`` and ``padding``
    ints. The result must be ``minires.functional.col2im``'s: the adjoint of
    im2col, every entry of ``cols`` added onto the pixel it was copied from.
    Four configurations, most with overlapping windows; stops at the first
    that fails and then also shows the dot-product test
    ``<im2col(x), cols> = <x, col2im(cols)>``. Hints for ``=`` instead of
    ``+=``, the padding left on, and an "inverse" that averages.
    """
    result = Check("check_col2im")
    for k, (x_shape, kernel, stride, padding) in enumerate(COLS_CONFIGS):
        header = _describe(x_shape, kernel, stride, padding)
        rng = np.random.default_rng(20 + k)
        oh, ow = _out_size(x_shape, kernel, stride, padding)
        cols = rng.standard_normal((x_shape[0] * oh * ow, x_shape[1] * kernel[0] * kernel[1]))
        ref = np.asarray(col2im(cols, x_shape, kernel, stride, padding))
        counts = np.asarray(col2im(np.asarray(im2col(np.ones(x_shape), kernel, stride,
                                                     padding)), x_shape, kernel, stride,
                                   padding))
        averaged = ref / np.maximum(counts, 1)
        mistakes = _col2im_mistakes(cols, x_shape, kernel, stride, padding, "x") + [
            (averaged, "x is the sum divided by the number of windows over each pixel: "
             "col2im is not an inverse of im2col (none exists where windows overlap), it is "
             "its adjoint, and it just adds.")]
        sub = Check("check_col2im")
        cols_given = cols.copy()
        got = sub.call(f"col2im(cols, {x_shape}, {kernel}, {stride}, {padding})", col2im_fn,
                       cols_given, x_shape, kernel, stride, padding)
        if got is not MISSING:
            ok = sub.compare("x", got, ref, TOL, mistakes=mistakes)
            arr = np.asarray(got, dtype=np.float64) if not ok else None
            if arr is not None and arr.shape == tuple(x_shape) and np.all(np.isfinite(arr)):
                probe = rng.standard_normal(x_shape)
                lhs = float(np.sum(np.asarray(im2col(probe, kernel, stride, padding)) * cols))
                rhs = float(np.sum(probe * arr))
                sub.note(f"dot-product test on a random x: <im2col(x), cols> = {lhs:.6f}, "
                         f"<x, your col2im(cols)> = {rhs:.6f}: an adjoint makes them equal")
            sub.unchanged("cols", cols, cols_given, by="col2im")
        summary = f"ok      {header}: x {tuple(x_shape)} matches"
        if not result.merge(sub, header, summary, left=len(COLS_CONFIGS) - k - 1):
            break
    return result.result()
