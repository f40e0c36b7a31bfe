"""Chapter 03's checkers: minires's own functions pass, every typical wrong
solution fails with its hint, stubs are "not implemented yet"."""

from __future__ import annotations

import numpy as np
import pytest

from minires.exercises import check_col2im, check_conv2d, check_im2col
from minires.functional import (
    col2im,
    conv2d_backward,
    conv2d_backward_naive,
    conv2d_forward,
    conv2d_forward_naive,
    im2col,
)

# ---- a plain solution, and the same solution with one mistake at a time ---------


def _sizes(x_shape, kernel, stride, padding):
    n, c, h, w = x_shape
    kh, kw = kernel
    return n, c, h, w, kh, kw, (h + 2 * padding - kh) // stride + 1, \
        (w + 2 * padding - kw) // stride + 1


def my_im2col(x, kernel, stride, padding, mistake=None):
    n, c, h, w, kh, kw, oh, ow = _sizes(x.shape, kernel, stride, padding)
    p = 0 if mistake == "no padding" else padding
    if p != padding:
        oh, ow = (h - kh) // stride + 1, (w - kw) // stride + 1
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    rows = []
    for k in range(n):
        for r in range(oh):
            for q in range(ow):
                field = xp[k, :, r * stride:r * stride + kh, q * stride:q * stride + kw]
                if mistake == "columns (i, j, c)":
                    field = field.transpose(1, 2, 0)
                if mistake == "window transposed":
                    field = field.transpose(0, 2, 1)
                rows.append(field.ravel())
    cols = np.array(rows)
    if mistake == "rows (oh, ow, n)":
        cols = cols.reshape(n, oh * ow, -1).transpose(1, 0, 2).reshape(cols.shape)
    return cols


def my_col2im(cols, x_shape, kernel, stride, padding, mistake=None):
    n, c, h, w, kh, kw, oh, ow = _sizes(x_shape, kernel, stride, padding)
    p = padding
    xp = np.zeros((n, c, h + 2 * p, w + 2 * p))
    blocks = cols.reshape(n, oh, ow, c, kh, kw)
    for k in range(n):
        for r in range(oh):
            for q in range(ow):
                field = (k, slice(None), slice(r * stride, r * stride + kh),
                         slice(q * stride, q * stride + kw))
                if mistake == "=":
                    xp[field] = blocks[k, r, q]
                else:
                    xp[field] += blocks[k, r, q]
    if mistake == "keep padding":
        return xp
    x = xp[:, :, p:p + h, p:p + w]
    if mistake == "average":
        ones = my_col2im(my_im2col(np.ones(x_shape), kernel, stride, padding), x_shape,
                         kernel, stride, padding)
        x = x / np.maximum(ones, 1)
    return x


def col2im_assign_by_offset(cols, x_shape, kernel, stride, padding):
    n, c, h, w, kh, kw, oh, ow = _sizes(x_shape, kernel, stride, padding)
    p, s = padding, stride
    xp = np.zeros((n, c, h + 2 * p, w + 2 * p))
    blocks = cols.reshape(n, oh, ow, c, kh, kw)
    for i in range(kh):
        for j in range(kw):
            xp[:, :, i:i + s * (oh - 1) + 1:s, j:j + s * (ow - 1) + 1:s] = \
                blocks[..., i, j].transpose(0, 3, 1, 2)
    return xp[:, :, p:p + h, p:p + w]


def my_forward(x, w, b, stride, padding, mistake=None):
    c_out, _, kh, kw = w.shape
    n, _, _, _, _, _, oh, ow = _sizes(x.shape, (kh, kw), stride, padding)
    w_used = w[:, :, ::-1, ::-1] if mistake == "flipped kernel" else w
    cols = my_im2col(x, (kh, kw), stride, padding)
    out_mat = cols @ w_used.reshape(c_out, -1).T
    if mistake != "no bias":
        out_mat = out_mat + b
    out = out_mat.reshape(n, oh, ow, c_out).transpose(0, 3, 1, 2)
    return out, (x, cols, w, stride, padding)


def my_backward(dout, cache, mistake=None):
    x, cols, w, stride, padding = cache
    c_out, c_in, kh, kw = w.shape
    if mistake == "in place":
        dout *= 1.0
        dout[0, 0, 0, 0] = 0.0
    dout_mat = dout.transpose(0, 2, 3, 1).reshape(-1, c_out)
    dw_mat = dout_mat.T @ cols
    dw = dw_mat.reshape(w.shape)
    if mistake == "dw flipped":
        dw = dw[:, :, ::-1, ::-1]
    if mistake == "dw spatially transposed":
        dw = dw.transpose(0, 1, 3, 2)
    if mistake == "dw channels swapped":
        dw = dw.transpose(1, 0, 2, 3)
    if mistake == "dw_mat.T reshaped":
        dw = (cols.T @ dout_mat).reshape(w.shape)
    db = dout.sum(axis=(0, 2, 3))
    if mistake == "db over N only":
        db = dout.sum(axis=0)
    if mistake == "db over H, W only":
        db = dout.sum(axis=(2, 3))
    if mistake == "db mean":
        db = dout.mean(axis=(0, 2, 3))
    dcols = dout_mat @ w.reshape(c_out, -1)
    if mistake == "dx by pixel =":
        dx = my_col2im(dcols, x.shape, (kh, kw), stride, padding, mistake="=")
    elif mistake == "dx by offset =":
        dx = col2im_assign_by_offset(dcols, x.shape, (kh, kw), stride, padding)
    elif mistake == "dx keeps padding":
        dx = my_col2im(dcols, x.shape, (kh, kw), stride, padding, mistake="keep padding")
    elif mistake == "dx unflipped full conv":
        full = (kh - 1 - padding, kw - 1 - padding)
        dx, _ = conv2d_forward(dout, np.ascontiguousarray(w.transpose(1, 0, 2, 3)), None, 1,
                               full)
    else:
        dx = my_col2im(dcols, x.shape, (kh, kw), stride, padding)
    return dx, dw, db


def with_mistake(fn, mistake):
    return lambda *args: fn(*args, mistake=mistake)


# ---- check_conv2d ---------------------------------------------------------------


@pytest.mark.parametrize("forward, backward", [
    (conv2d_forward, conv2d_backward),
    (conv2d_forward_naive, conv2d_backward_naive),
    (my_forward, my_backward),
], ids=["library", "library loops", "plain im2col"])
def test_conv2d_correct_solutions_pass(forward, backward):
    result = check_conv2d(forward, backward)
    assert result.passed and result.implemented, str(result)
    assert str(result).count("ok ") == 4          # one line per configuration


CONV_MISTAKES = {
    # mistake in forward: (mistake, words of the expected hint)
    "no bias": "missing the bias",
    "flipped kernel": "cross-correlation",
}
BACKWARD_MISTAKES = {
    "dx by pixel =": "'=' instead of '+='",
    "dx by offset =": "'=' instead of '+='",
    "dx keeps padding": "still has the padding",
    "dx unflipped full conv": "NOT rotated",
    "dw flipped": "dw is rotated by 180 degrees",
    "dw spatially transposed": "rows and columns swapped",
    "dw channels swapped": "input and output channels swapped",
    "dw_mat.T reshaped": "dw is dw_mat.T reshaped",
    "db over N only": "one entry per output channel",
    "db over H, W only": "one entry per output channel",
    "db mean": "a constant factor is off",
}


@pytest.mark.parametrize("mistake", list(CONV_MISTAKES))
def test_conv2d_wrong_forward_gets_its_hint(mistake):
    result = check_conv2d(with_mistake(my_forward, mistake), my_backward)
    text = str(result)
    assert not result.passed and result.implemented, text
    assert "WRONG   out" in text and CONV_MISTAKES[mistake] in text, text


@pytest.mark.parametrize("mistake", list(BACKWARD_MISTAKES))
def test_conv2d_wrong_backward_gets_its_hint(mistake):
    result = check_conv2d(my_forward, with_mistake(my_backward, mistake))
    text = str(result)
    assert not result.passed and result.implemented, text
    assert BACKWARD_MISTAKES[mistake] in text, text
    assert "in the configuration" in text                   # the failing one is named
    grad = mistake.split()[0].replace("dw_mat.T", "dw")
    assert f"{grad} " in text


def test_conv2d_in_place_dout_is_caught():
    result = check_conv2d(my_forward, with_mistake(my_backward, "in place"))
    assert not result.passed and "dout was modified in place" in str(result)


def test_conv2d_stubs_are_not_implemented_yet():
    def backward(dout, cache):
        raise NotImplementedError

    result = check_conv2d(conv2d_forward, backward)
    assert not result.implemented and result.status == "not implemented yet", str(result)
    assert "WRONG" not in str(result) and "configuration" not in str(result)


def test_conv2d_exception_and_wrong_return_are_reported():
    result = check_conv2d(my_forward, lambda dout, cache: cache[5])
    assert not result.passed and "IndexError" in str(result)
    result = check_conv2d(my_forward, lambda dout, cache: my_backward(dout, cache)[:2])
    assert "should return a tuple (dx, dw, db)" in str(result)


# ---- check_im2col / check_col2im --------------------------------------------------


def test_im2col_and_col2im_of_the_library_and_of_loops_pass():
    for fn in (im2col, my_im2col):
        assert check_im2col(fn).passed, str(check_im2col(fn))
    for fn in (col2im, my_col2im):
        assert check_col2im(fn).passed, str(check_col2im(fn))


@pytest.mark.parametrize("mistake, hint", [
    ("columns (i, j, c)", "ordered (i, j, c)"),
    ("rows (oh, ow, n)", "ordered (oh, ow, n)"),
    ("window transposed", "each window is read transposed"),
    ("no padding", "pad x with"),
])
def test_im2col_mistakes_get_their_hint(mistake, hint):
    result = check_im2col(with_mistake(my_im2col, mistake))
    assert not result.passed and hint in str(result), str(result)


@pytest.mark.parametrize("fn, hint", [
    (with_mistake(my_col2im, "="), "'=' instead of '+='"),
    (col2im_assign_by_offset, "'=' instead of '+='"),
    (with_mistake(my_col2im, "keep padding"), "still has the padding"),
    (with_mistake(my_col2im, "average"), "not an inverse"),
], ids=["= by pixel", "= by offset", "padding kept", "averaged"])
def test_col2im_mistakes_get_their_hint(fn, hint):
    result = check_col2im(fn)
    text = str(result)
    assert not result.passed and hint in text, text


def test_col2im_failure_shows_the_dot_product_test():
    text = str(check_col2im(with_mistake(my_col2im, "=")))
    assert "dot-product test" in text and "<x, your col2im(cols)>" in text


def test_im2col_col2im_stubs_are_not_implemented_yet():
    def stub(*args):
        raise NotImplementedError

    for checker in (check_im2col, check_col2im):
        result = checker(stub)
        assert result.status == "not implemented yet", str(result)


def test_conv2d_forward_changing_x_fails():
    def forward(x, w, b, stride, padding):
        out, cache = my_forward(x, w, b, stride, padding)
        x[:, :, 0] = 0                                    # after use: out is right
        return out, cache

    result = check_conv2d(forward, my_backward)
    text = str(result)
    assert not result.passed and "ok      out" in text and "ok      dw" in text
    assert "x was modified in place; a forward pass must" in text
