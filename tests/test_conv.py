"""Tests for minires.functional's convolution: im2col/col2im, the convolution
by im2col and the naive loops, through the public ops (``minires.functional``),
so they run on the engine and on the reference code (``[fast]`` and
``[reference]``, see conftest.py)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from util import host, rel, strict, torch_or_skip

from minires import functional as F
from minires.gradcheck import check_op

# ---- hypothesis: every valid small convolution --------------------------------


@dataclass
class Case:
    x: np.ndarray
    w: np.ndarray
    b: np.ndarray | None
    stride: int | tuple[int, int]
    padding: int | tuple[int, int]
    dout: np.ndarray

    @property
    def kernel(self) -> tuple[int, int]:
        return tuple(self.w.shape[2:])

    def args(self):
        return (self.x, self.w, self.b, self.stride, self.padding)


def _int_or_pair(h: int, w: int):
    """Pass equal values as an int, so both spellings are exercised."""
    return h if h == w else (h, w)


@st.composite
def conv_cases(draw, dtype=np.float64) -> Case:
    n, c_in, c_out = draw(st.integers(1, 4)), draw(st.integers(1, 5)), draw(st.integers(1, 5))
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    assume(h + 2 * ph >= kh and w + 2 * pw >= kw)
    bias = draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    return Case(
        x=rng.standard_normal((n, c_in, h, w)).astype(dtype),
        w=rng.standard_normal((c_out, c_in, kh, kw)).astype(dtype),
        b=rng.standard_normal(c_out).astype(dtype) if bias else None,
        stride=_int_or_pair(sh, sw),
        padding=_int_or_pair(ph, pw),
        dout=rng.standard_normal((n, c_out, oh, ow)).astype(dtype),
    )


def _im2col_conv(case: Case, need_param_grads: bool = True):
    out, cache = F.conv2d_forward(*case.args())
    return (out, *F.conv2d_backward(case.dout, cache, need_param_grads=need_param_grads))


def _naive(case: Case):
    out, cache = F.conv2d_forward_naive(*case.args())
    return (out, *F.conv2d_backward_naive(case.dout, cache))


def _assert_close(got, want, tol, names=("out", "dx", "dw", "db")):
    for name, g, e in zip(names, got, want, strict=True):
        if e is None:
            assert g is None, name
            continue
        assert g.shape == e.shape, (name, g.shape, e.shape)
        assert rel(g, e) <= tol, (name, rel(g, e))


# ---- im2col / col2im ----------------------------------------------------------


def test_im2col_layout_by_hand():
    x = np.arange(2 * 16, dtype=np.float64).reshape(1, 2, 4, 4)
    cols = F.im2col(x, 2, stride=2)
    # row (n, oh, ow); column (c, i, j): channel 0's 2x2 patch, then channel 1's
    assert cols.shape == (4, 8)
    np.testing.assert_array_equal(cols[0], [0, 1, 4, 5, 16, 17, 20, 21])
    np.testing.assert_array_equal(cols[1], [2, 3, 6, 7, 18, 19, 22, 23])
    np.testing.assert_array_equal(cols[3], [10, 11, 14, 15, 26, 27, 30, 31])
    # padding adds zeros around the image; non-square kernel and stride
    cols = F.im2col(x[:, :1], (1, 3), stride=(3, 1), padding=(0, 1))
    assert cols.shape == (2 * 4, 3)
    np.testing.assert_array_equal(cols[0], [0, 0, 1])
    np.testing.assert_array_equal(cols[3], [2, 3, 0])
    np.testing.assert_array_equal(cols[4], [0, 12, 13])


def test_im2col_times_weight_matrix_is_the_convolution(rng):
    x, w = rng.standard_normal((2, 3, 6, 5)), rng.standard_normal((4, 3, 3, 2))
    cols = F.im2col(x, (3, 2), stride=(1, 2), padding=1)
    out = (cols @ w.reshape(4, -1).T).reshape(2, 6, 3, 4).transpose(0, 3, 1, 2)
    want, _ = F.conv2d_forward_naive(x, w, None, (1, 2), 1)
    assert rel(out, want) <= 1e-13


def test_memory_layout_is_the_documented_one(rng):
    """Speed, not values: cols.T and out's (C_out, N, OH, OW) storage are contiguous."""
    x, w = rng.standard_normal((2, 3, 6, 5)), rng.standard_normal((4, 3, 3, 2))
    assert F.im2col(x, (3, 2), 2, 1).T.flags.c_contiguous
    out, _ = F.conv2d_forward(x, w, None, 2, 1)
    assert out.transpose(1, 0, 2, 3).flags.c_contiguous


@given(conv_cases())
def test_col2im_is_the_adjoint_of_im2col(case):
    """<im2col(x), c> == <x, col2im(c)> for every x and c."""
    cols = F.im2col(case.x, case.kernel, case.stride, case.padding)
    c = np.random.default_rng(1).standard_normal(cols.shape)
    back = F.col2im(c, case.x.shape, case.kernel, case.stride, case.padding)
    assert back.shape == case.x.shape
    lhs, rhs = np.sum(cols * c), np.sum(case.x * back)
    assert abs(lhs - rhs) <= 1e-12 * (np.abs(cols).sum() * np.abs(c).max() + 1)


def test_col2im_counts_overlaps():
    """col2im of all-ones columns counts how many windows cover each pixel."""
    counts = F.col2im(np.ones((4, 9)), (1, 1, 4, 4), 3, stride=1, padding=0)
    np.testing.assert_array_equal(counts[0, 0], [[1, 2, 2, 1], [2, 4, 4, 2],
                                                 [2, 4, 4, 2], [1, 2, 2, 1]])


# ---- the convolution -----------------------------------------------------------


@given(conv_cases())
def test_conv_gradcheck(case):
    report = check_op(F.conv2d_forward, F.conv2d_backward, case.x, case.w, case.b,
                      stride=case.stride, padding=case.padding)
    assert set(report) == ({"x", "w", "b"} if case.b is not None else {"x", "w"})
    report.assert_ok(1e-6)


@given(conv_cases())
def test_fast_conv_equals_naive_loops(case):
    _assert_close(_im2col_conv(case), _naive(case), 1e-12)


def test_naive_conv_gradcheck(rng):
    x, w, b = rng.standard_normal((2, 2, 5, 4)), rng.standard_normal((3, 2, 2, 3)), \
        rng.standard_normal(3)
    check_op(F.conv2d_forward_naive, F.conv2d_backward_naive, x, w, b,
             stride=(2, 1), padding=(1, 2)).assert_ok(1e-6)


@pytest.mark.torch
@given(conv_cases())
def test_conv_matches_torch(case):
    torch = torch_or_skip()
    x = torch.tensor(case.x, requires_grad=True)
    w = torch.tensor(case.w, requires_grad=True)
    b = torch.tensor(case.b, requires_grad=True) if case.b is not None else None
    out = torch.nn.functional.conv2d(x, w, b, stride=case.stride, padding=case.padding)
    out.backward(torch.tensor(case.dout))
    want = (out, x.grad, w.grad, b.grad if b is not None else None)
    _assert_close(_im2col_conv(case), want, 1e-10)


@pytest.mark.parametrize("shape, stride, padding, bias", [
    ((2, 3, 7, 6), (2, 1), (1, 2), True),
    ((1, 2, 5, 5), 1, 0, False),
    ((3, 1, 4, 9), 3, 2, True),
])
def test_array_api_strict_gives_the_same_numbers(rng, shape, stride, padding, bias):
    n, c, h, w_ = shape
    w = rng.standard_normal((4, c, 3, 2))
    b = rng.standard_normal(4) if bias else None
    x = rng.standard_normal(shape)
    out, cache = F.conv2d_forward(x, w, b, stride, padding)
    dout = rng.standard_normal(out.shape)
    want = (out, *F.conv2d_backward(dout, cache))

    out_s, cache_s = F.conv2d_forward(strict(x), strict(w), strict(b), stride, padding)
    got = (out_s, *F.conv2d_backward(strict(dout), cache_s))
    for a in got:
        assert a is None or type(a).__module__.startswith("array_api_strict")
    _assert_close(got, want, 1e-14)

    cols = F.im2col(strict(x), (3, 2), stride, padding)
    np.testing.assert_array_equal(host(cols), F.im2col(x, (3, 2), stride, padding))
    back = F.col2im(cols, shape, (3, 2), stride, padding)
    assert rel(back, F.col2im(host(cols), shape, (3, 2), stride, padding)) <= 1e-14


def test_naive_conv_runs_under_array_api_strict(rng):
    x, w, b = rng.standard_normal((1, 2, 4, 3)), rng.standard_normal((2, 2, 2, 2)), \
        rng.standard_normal(2)
    out, cache = F.conv2d_forward_naive(x, w, b, 1, 1)
    dout = rng.standard_normal(out.shape)
    want = (out, *F.conv2d_backward_naive(dout, cache))
    out_s, cache_s = F.conv2d_forward_naive(strict(x), strict(w), strict(b), 1, 1)
    _assert_close((out_s, *F.conv2d_backward_naive(strict(dout), cache_s)), want, 1e-14)


def test_need_param_grads_false_gives_only_dx(rng):
    case = Case(rng.standard_normal((2, 3, 5, 5)), rng.standard_normal((4, 3, 3, 3)),
                rng.standard_normal(4), 1, 1, rng.standard_normal((2, 4, 5, 5)))
    out, dx, dw, db = _im2col_conv(case, need_param_grads=False)
    assert dw is None and db is None
    assert rel(dx, _im2col_conv(case)[1]) == 0.0


def test_no_bias_gives_db_none(rng):
    case = Case(rng.standard_normal((1, 2, 4, 4)), rng.standard_normal((3, 2, 3, 3)),
                None, 1, 0, rng.standard_normal((1, 3, 2, 2)))
    assert _im2col_conv(case)[3] is None and _naive(case)[3] is None


def test_backward_leaves_dout_untouched(rng):
    case = Case(rng.standard_normal((2, 3, 6, 6)), rng.standard_normal((4, 3, 3, 3)),
                rng.standard_normal(4), 2, 1, rng.standard_normal((2, 4, 3, 3)))
    keep = case.dout.copy()
    _im2col_conv(case)
    _naive(case)
    np.testing.assert_array_equal(case.dout, keep)


def _transposed_view(a: np.ndarray) -> np.ndarray:
    """Same values, spatial axes stored in the other order (not C-contiguous)."""
    view = np.ascontiguousarray(a.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    assert not view.flags.c_contiguous and np.array_equal(view, a)
    return view


def test_non_contiguous_inputs_give_the_same_results(rng):
    case = Case(rng.standard_normal((2, 3, 7, 5)), rng.standard_normal((4, 3, 3, 2)),
                rng.standard_normal(8)[::2], (2, 1), 1, rng.standard_normal((2, 4, 4, 6)))
    want = _im2col_conv(case)
    views = Case(_transposed_view(case.x), _transposed_view(case.w), case.b, case.stride,
                 case.padding, _transposed_view(case.dout))
    _assert_close(_im2col_conv(views), want, 1e-14)
    _assert_close(_naive(views), want, 1e-12)
    # a reversed view, compared with its contiguous copy
    flipped = Case(case.x[:, :, ::-1], case.w[:, :, :, ::-1], case.b, case.stride, case.padding,
                   case.dout[:, ::-1])
    copied = Case(*(np.ascontiguousarray(a) for a in (flipped.x, flipped.w, flipped.b)),
                  case.stride, case.padding, np.ascontiguousarray(flipped.dout))
    _assert_close(_im2col_conv(flipped), _im2col_conv(copied), 1e-14)
    np.testing.assert_array_equal(F.im2col(flipped.x, (3, 2), 2, 1),
                                  F.im2col(copied.x, (3, 2), 2, 1))


def test_float32_in_float32_out(rng):
    f32 = np.float32
    case = Case(rng.standard_normal((2, 3, 6, 5)).astype(f32),
                rng.standard_normal((4, 3, 3, 3)).astype(f32), rng.standard_normal(4).astype(f32),
                (1, 2), 1, rng.standard_normal((2, 4, 6, 3)).astype(f32))
    for results in (_im2col_conv(case), _naive(case)):
        assert [a.dtype for a in results] == [f32] * 4
    cols = F.im2col(case.x, 3, (1, 2), 1)
    assert cols.dtype == f32
    assert F.col2im(cols, case.x.shape, 3, (1, 2), 1).dtype == f32
    got = F.conv2d_forward(strict(case.x), strict(case.w), strict(case.b), (1, 2), 1)[0]
    assert host(got).dtype == f32


def test_float32_gradients_stay_close_to_float64(rng):
    """Sums over N*OH*OW = 8192 rows (dw, db) stay accurate in float32."""
    x, w, b = rng.standard_normal((8, 4, 32, 32)), rng.standard_normal((8, 4, 3, 3)), \
        rng.standard_normal(8)
    dout = rng.standard_normal((8, 8, 32, 32)) + 1.0
    out64, cache64 = F.conv2d_forward(x, w, b, 1, 1)
    grads64 = F.conv2d_backward(dout, cache64)
    f32 = [a.astype(np.float32) for a in (x, w, b)]
    out32, cache32 = F.conv2d_forward(*f32, 1, 1)
    grads32 = F.conv2d_backward(dout.astype(np.float32), cache32)
    for got, want in zip((out32, *grads32), (out64, *grads64), strict=True):
        assert rel(got, want) <= 1e-5


# ---- errors --------------------------------------------------------------------

_x = np.zeros((2, 3, 5, 5))
_w = np.zeros((4, 3, 3, 3))


@pytest.mark.parametrize("args, kwargs, match", [
    ((_x[0], _w), {}, r"expected x of rank 4 \(N, C_in, H, W\), got \(3, 5, 5\)"),
    ((_x, _w[0]), {}, r"expected w of rank 4 \(C_out, C_in, KH, KW\), got \(3, 3, 3\)"),
    ((_x, np.zeros((4, 2, 3, 3))), {}, r"expected w with C_in = 3 .*got w \(4, 2, 3, 3\)"),
    ((np.zeros((1, 3, 2, 5)), _w), {}, r"at least the kernel size \(3, 3\).*got spatial size \(2, 5\)"),
    ((np.zeros((1, 3, 2, 5)), _w), {"padding": (0, 1)}, r"after padding \(0, 1\)"),
    ((_x.astype(np.int64), _w), {}, r"expected a floating-point x, got dtype int64"),
    ((_x, _w), {"stride": 0}, r"expected stride >= 1, got 0"),
    ((_x, _w), {"stride": (1, -2)}, r"expected stride >= 1, got \(1, -2\)"),
    ((_x, _w), {"padding": -1}, r"expected padding >= 0, got -1"),
    ((_x, _w), {"padding": 1.5}, r"expected padding to be an int or a pair of ints, got 1.5"),
    ((_x, _w), {"stride": (1, 2, 3)}, r"expected stride to be an int or a pair"),
    ((_x, _w.astype(np.float32)), {}, r"expected w of the same dtype as x \(float64\), got float32"),
    ((_x, _w, np.zeros(3)), {}, r"expected b of shape \(4,\)"),
])
@pytest.mark.parametrize("forward", [F.conv2d_forward, F.conv2d_forward_naive])
def test_bad_input_raises_value_error(forward, args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        forward(*args, **kwargs)
    with pytest.raises(ValueError, match=forward.__name__):
        forward(*args, **kwargs)


def test_im2col_and_col2im_errors():
    with pytest.raises(ValueError, match=r"im2col: expected x of rank 4"):
        F.im2col(np.zeros((3, 5, 5)), 3)
    with pytest.raises(ValueError, match=r"im2col: expected kernel_size >= 1, got 0"):
        F.im2col(_x, 0)
    with pytest.raises(ValueError, match=r"im2col: expected an input of at least the kernel"):
        F.im2col(_x, 6)
    with pytest.raises(ValueError, match=r"im2col: expected a floating-point x"):
        F.im2col(_x.astype(np.int32), 3)
    with pytest.raises(ValueError, match=r"col2im: expected cols of shape \(18, 27\).*got \(18, 26\)"):
        F.col2im(np.zeros((18, 26)), (2, 3, 5, 5), 3)
    with pytest.raises(ValueError, match=r"col2im: expected x_shape \(N, C, H, W\)"):
        F.col2im(np.zeros((18, 27)), (3, 5, 5), 3)


@pytest.mark.parametrize("forward, backward", [
    (F.conv2d_forward, F.conv2d_backward),
    (F.conv2d_forward_naive, F.conv2d_backward_naive),
])
def test_backward_rejects_dout_of_the_wrong_shape(forward, backward):
    _, cache = forward(_x, _w, None, 1, 1)
    with pytest.raises(ValueError, match=rf"{backward.__name__}: expected dout of the output's "
                                         r"shape \(2, 4, 5, 5\), got \(2, 4, 5, 4\)"):
        backward(np.zeros((2, 4, 5, 4)), cache)


# ---- grouped convolution -------------------------------------------------------


@dataclass
class GroupedCase(Case):
    groups: int = 1

    def args(self):
        return (self.x, self.w, self.b, self.stride, self.padding, self.groups)


@st.composite
def grouped_conv_cases(draw, dtype=np.float64) -> GroupedCase:
    """Convolutions with groups: G in 1..4 groups of 1..3 input and 1..3
    output channels each, or depthwise (G = C_in, a channel multiplier of 1 or 2)."""
    if draw(st.booleans()):
        groups = draw(st.integers(1, 4))
        c_in, c_out = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
    else:
        groups = c_in = draw(st.integers(1, 6))
        c_out = c_in * draw(st.integers(1, 2))
    n, h, w = draw(st.integers(1, 3)), draw(st.integers(1, 8)), draw(st.integers(1, 8))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    assume(h + 2 * ph >= kh and w + 2 * pw >= kw)
    bias = draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    return GroupedCase(
        x=rng.standard_normal((n, c_in, h, w)).astype(dtype),
        w=rng.standard_normal((c_out, c_in // groups, kh, kw)).astype(dtype),
        b=rng.standard_normal(c_out).astype(dtype) if bias else None,
        stride=_int_or_pair(sh, sw), padding=_int_or_pair(ph, pw),
        dout=rng.standard_normal((n, c_out, oh, ow)).astype(dtype), groups=groups)


def _torch_conv(case: GroupedCase):
    """out, dx, dw, db of torch.nn.functional.conv2d(..., groups=) in float64."""
    torch = torch_or_skip()
    x = torch.tensor(case.x, requires_grad=True)
    w = torch.tensor(case.w, requires_grad=True)
    b = torch.tensor(case.b, requires_grad=True) if case.b is not None else None
    out = torch.nn.functional.conv2d(x, w, b, stride=case.stride, padding=case.padding,
                                     groups=case.groups)
    out.backward(torch.tensor(case.dout))
    return out, x.grad, w.grad, (b.grad if b is not None else None)


@given(grouped_conv_cases())
def test_grouped_conv_gradcheck(case):
    report = check_op(F.conv2d_forward, F.conv2d_backward, case.x, case.w, case.b,
                      stride=case.stride, padding=case.padding, groups=case.groups)
    report.assert_ok(1e-6)


@given(grouped_conv_cases())
def test_grouped_conv_equals_naive_loops(case):
    _assert_close(_im2col_conv(case), _naive(case), 1e-12)


@pytest.mark.torch
@given(grouped_conv_cases())
def test_grouped_conv_matches_torch(case):
    _assert_close(_im2col_conv(case), _torch_conv(case), 1e-10)


def _grouped_case(rng, n, c_in, c_out, groups, size, kernel, stride, padding, bias=True):
    oh = (size + 2 * padding - kernel) // stride + 1
    return GroupedCase(rng.standard_normal((n, c_in, size, size)),
                       rng.standard_normal((c_out, c_in // groups, kernel, kernel)),
                       rng.standard_normal(c_out) if bias else None, stride, padding,
                       rng.standard_normal((n, c_out, oh, oh)), groups)


@pytest.mark.torch
@pytest.mark.parametrize("n, c_in, c_out, groups, size, kernel, stride, padding", [
    (2, 128, 128, 32, 6, 3, 1, 1),     # ResNeXt's 32x4d 3x3 conv (layer1)
    (2, 256, 256, 32, 7, 3, 2, 1),     # cardinality 32 with stride 2 (layer2's first block)
    (2, 16, 16, 16, 7, 3, 1, 1),       # depthwise
    (3, 8, 16, 8, 9, 5, 2, 2),         # depthwise with a channel multiplier of 2
    (2, 64, 64, 8, 5, 3, 2, 1),        # ResNeXt-29 8x64d's cardinality
])
def test_grouped_conv_matches_torch_on_resnext_shapes(rng, n, c_in, c_out, groups, size,
                                                      kernel, stride, padding):
    case = _grouped_case(rng, n, c_in, c_out, groups, size, kernel, stride, padding)
    _assert_close(_im2col_conv(case), _torch_conv(case), 1e-10)


def test_groups_one_is_the_ordinary_convolution(rng):
    """groups=1 is today's convolution, to the last bit (the fast path)."""
    case = _grouped_case(rng, 2, 4, 6, 1, 7, 3, 2, 1)
    plain = Case(case.x, case.w, case.b, case.stride, case.padding, case.dout)
    for a, b in zip(_im2col_conv(case), _im2col_conv(plain), strict=True):
        np.testing.assert_array_equal(a, b)


def test_grouped_conv_is_the_groups_convolved_separately(rng):
    """Group g's output channels are the plain convolution of group g's inputs."""
    case = _grouped_case(rng, 2, 6, 9, 3, 6, 3, 1, 1)
    out, cache = F.conv2d_forward(*case.args())
    dx, dw, db = F.conv2d_backward(case.dout, cache)
    for g in range(3):
        i, o = slice(2 * g, 2 * g + 2), slice(3 * g, 3 * g + 3)
        part = Case(case.x[:, i], case.w[o], case.b[o], 1, 1, case.dout[:, o])
        _assert_close((out[:, o], dx[:, i], dw[o], db[o]), _im2col_conv(part), 1e-13)


@pytest.mark.parametrize("groups, shape", [(2, (2, 4, 7, 6)), (3, (1, 3, 5, 5))])
def test_grouped_conv_under_array_api_strict(rng, groups, shape):
    c = shape[1]
    w = rng.standard_normal((2 * groups, c // groups, 3, 2))
    b = rng.standard_normal(2 * groups)
    x = rng.standard_normal(shape)
    out, cache = F.conv2d_forward(x, w, b, (2, 1), 1, groups)
    dout = rng.standard_normal(out.shape)
    want = (out, *F.conv2d_backward(dout, cache))
    out_s, cache_s = F.conv2d_forward(strict(x), strict(w), strict(b), (2, 1), 1, groups)
    got = (out_s, *F.conv2d_backward(strict(dout), cache_s))
    for a in got:
        assert type(a).__module__.startswith("array_api_strict")
    _assert_close(got, want, 1e-14)
    out_s, cache_s = F.conv2d_forward_naive(strict(x), strict(w), strict(b), (2, 1), 1, groups)
    _assert_close((out_s, *F.conv2d_backward_naive(strict(dout), cache_s)), want, 1e-12)


def test_grouped_conv_skips_what_is_not_needed_and_keeps_dout(rng):
    case = _grouped_case(rng, 2, 4, 4, 2, 5, 3, 1, 1)
    keep = case.dout.copy()
    out, cache = F.conv2d_forward(*case.args())
    dx, dw, db = F.conv2d_backward(case.dout, cache, need_param_grads=False)
    assert dw is None and db is None and rel(dx, _im2col_conv(case)[1]) == 0.0
    out, cache = F.conv2d_forward(*case.args())
    dx, dw, db = F.conv2d_backward(case.dout, cache, need_input_grad=False)
    assert dx is None and rel(dw, _im2col_conv(case)[2]) == 0.0
    np.testing.assert_array_equal(case.dout, keep)


def test_grouped_conv_float32_in_float32_out(rng):
    case = _grouped_case(rng, 2, 4, 6, 2, 5, 3, 2, 1)
    f32 = GroupedCase(*(a.astype(np.float32) for a in (case.x, case.w, case.b)), case.stride,
                      case.padding, case.dout.astype(np.float32), case.groups)
    for results in (_im2col_conv(f32), _naive(f32)):
        assert [a.dtype for a in results] == [np.float32] * 4
    assert rel(_im2col_conv(f32)[0], _im2col_conv(case)[0]) <= 1e-5


@pytest.mark.parametrize("x_shape, w_shape, groups, match", [
    ((2, 4, 5, 5), (4, 4, 3, 3), 0, r"expected groups >= 1, got 0"),
    ((2, 4, 5, 5), (4, 4, 3, 3), -2, r"expected groups >= 1, got -2"),
    ((2, 6, 5, 5), (4, 2, 3, 3), 4, r"expected C_in = 6 and C_out = 4 both divisible by "
                                    r"groups = 4"),
    ((2, 6, 5, 5), (3, 3, 3, 3), 2, r"expected C_in = 6 and C_out = 3 both divisible by "
                                    r"groups = 2"),
    ((2, 6, 5, 5), (4, 6, 3, 3), 2, r"expected w with C_in / groups = 3 channels like x "
                                    r"\(2, 6, 5, 5\), got w \(4, 6, 3, 3\)"),
    ((2, 4, 5, 5), (4, 2, 3, 3), 2.0, r"expected groups to be an int, got 2.0"),
    ((2, 4, 5, 5), (4, 4, 3, 3), True, r"expected groups to be an int, got True"),
])
@pytest.mark.parametrize("forward", [F.conv2d_forward, F.conv2d_forward_naive])
def test_bad_groups_raise_value_error(forward, x_shape, w_shape, groups, match):
    with pytest.raises(ValueError, match=rf"{forward.__name__}: {match}"):
        forward(np.zeros(x_shape), np.zeros(w_shape), None, 1, 1, groups)
