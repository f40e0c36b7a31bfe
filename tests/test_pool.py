"""Tests for minires.functional.pool: max, average and global average pooling."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from util import host, rel, strict, torch_or_skip

from minires.functional import pool
from minires.gradcheck import check_op

OPS = {
    "max": (pool.maxpool2d_forward, pool.maxpool2d_backward),
    "avg": (pool.avgpool2d_forward, pool.avgpool2d_backward),
}


@dataclass
class Case:
    x: np.ndarray
    kernel_size: int | tuple[int, int]
    stride: int | tuple[int, int] | None
    padding: int | tuple[int, int]
    dout: np.ndarray

    def kwargs(self):
        return {"kernel_size": self.kernel_size, "stride": self.stride, "padding": self.padding}


def _int_or_pair(h: int, w: int):
    return h if h == w else (h, w)


def distinct_values(rng, shape, dtype=np.float64) -> np.ndarray:
    """A random permutation of values 0.1 apart: no ties in any window, and
    far from a tie compared with the finite-difference step 1e-6."""
    size = int(np.prod(shape))
    return ((rng.permutation(size) - size / 2) * 0.1).reshape(shape).astype(dtype)


@st.composite
def pool_cases(draw, dtype=np.float64) -> Case:
    n, c = draw(st.integers(1, 4)), draw(st.integers(1, 5))
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    ph, pw = draw(st.integers(0, min(2, kh // 2))), draw(st.integers(0, min(2, kw // 2)))
    assume(h + 2 * ph >= kh and w + 2 * pw >= kw)
    if draw(st.booleans()):
        stride, (sh, sw) = None, (kh, kw)
    else:
        sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
        stride = _int_or_pair(sh, sw)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    return Case(
        x=distinct_values(rng, (n, c, h, w), dtype),
        kernel_size=_int_or_pair(kh, kw),
        stride=stride,
        padding=_int_or_pair(ph, pw),
        dout=rng.standard_normal((n, c, oh, ow)).astype(dtype),
    )


def _run(kind: str, case: Case, x=None, dout=None):
    forward, backward = OPS[kind]
    out, cache = forward(case.x if x is None else x, **case.kwargs())
    return out, backward(case.dout if dout is None else dout, cache)


def _torch_pool(torch, kind: str, case: Case, x: np.ndarray | None = None):
    x = torch.tensor(case.x if x is None else x, requires_grad=True)
    F = torch.nn.functional
    stride = case.stride if case.stride is not None else case.kernel_size
    op = F.max_pool2d if kind == "max" else F.avg_pool2d
    out = op(x, case.kernel_size, stride, case.padding)
    out.backward(torch.tensor(case.dout))
    return out, x.grad


# ---- max and average pooling ----------------------------------------------------


@pytest.mark.parametrize("kind", ["max", "avg"])
@given(case=pool_cases())
def test_pool_gradcheck(kind, case):
    forward, backward = OPS[kind]
    check_op(forward, backward, case.x, **case.kwargs()).assert_ok(1e-6)


@pytest.mark.torch
@pytest.mark.parametrize("kind", ["max", "avg"])
@given(case=pool_cases())
def test_pool_matches_torch(kind, case):
    torch = torch_or_skip()
    out, dx = _run(kind, case)
    t_out, t_dx = _torch_pool(torch, kind, case)
    assert out.shape == tuple(t_out.shape)
    assert rel(out, t_out) <= 1e-10
    assert rel(dx, t_dx) <= 1e-10


@pytest.mark.torch
@given(case=pool_cases())
def test_maxpool_ties_send_gradient_to_the_first_maximum_like_torch(case):
    """Small integers make ties everywhere; PyTorch picks the first maximum."""
    torch = torch_or_skip()
    x = np.random.default_rng(int(case.x.size)).integers(-2, 2, case.x.shape).astype(np.float64)
    out, dx = _run("max", case, x=x)
    t_out, t_dx = _torch_pool(torch, "max", case, x=x)
    assert rel(out, t_out) == 0.0
    assert rel(dx, t_dx) <= 1e-12


def test_maxpool_tie_by_hand():
    x = np.array([[[[1.0, 3.0], [3.0, 2.0]]]])
    out, dx = _run("max", Case(x, 2, None, 0, np.array([[[[5.0]]]])))
    assert out[0, 0, 0, 0] == 3.0
    np.testing.assert_array_equal(dx[0, 0], [[0.0, 5.0], [0.0, 0.0]])


def test_maxpool_padding_acts_as_minus_infinity():
    x = -np.arange(1.0, 10.0).reshape(1, 1, 3, 3)           # every value negative
    out, _ = pool.maxpool2d_forward(x, 3, stride=1, padding=1)
    np.testing.assert_array_equal(out[0, 0], [[-1, -1, -2], [-1, -1, -2], [-4, -4, -5]])


def test_avgpool_counts_zero_padding():
    x = np.ones((1, 1, 2, 2))
    out, _ = pool.avgpool2d_forward(x, 2, stride=1, padding=1)
    np.testing.assert_array_equal(out[0, 0], [[0.25, 0.5, 0.25], [0.5, 1.0, 0.5],
                                              [0.25, 0.5, 0.25]])


@pytest.mark.torch
def test_maxpool_propagates_nan_like_torch():
    torch = torch_or_skip()
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    x[0, 0, 1, 0] = np.nan
    out, _ = pool.maxpool2d_forward(x, 2, stride=2)
    want = torch.nn.functional.max_pool2d(torch.tensor(x), 2, 2).numpy()
    np.testing.assert_array_equal(out, want)            # NaN == NaN for this assert
    assert np.isnan(out[0, 0, 0, 0])


def test_maxpool_output_is_not_a_view_of_the_input(rng):
    x = rng.standard_normal((1, 2, 3, 3))
    keep = x.copy()
    out, _ = pool.maxpool2d_forward(x, 1)
    out[...] = 0.0
    np.testing.assert_array_equal(x, keep)


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("kernel, stride, padding", [(3, 2, 1), ((2, 3), (1, 2), (1, 0)),
                                                     (2, None, 0)])
def test_array_api_strict_gives_the_same_numbers(rng, kind, kernel, stride, padding):
    x = distinct_values(rng, (2, 3, 7, 6))
    forward, backward = OPS[kind]
    out, cache = forward(x, kernel, stride, padding)
    dout = rng.standard_normal(out.shape)
    dx = backward(dout, cache)
    out_s, cache_s = forward(strict(x), kernel, stride, padding)
    dx_s = backward(strict(dout), cache_s)
    assert type(out_s).__module__.startswith("array_api_strict")
    assert type(dx_s).__module__.startswith("array_api_strict")
    assert rel(out_s, out) <= 1e-15 and rel(dx_s, dx) <= 1e-15


def _transposed_view(a: np.ndarray) -> np.ndarray:
    view = np.ascontiguousarray(a.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    assert not view.flags.c_contiguous and np.array_equal(view, a)
    return view


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_backward_leaves_dout_untouched_and_views_work(rng, kind):
    case = Case(distinct_values(rng, (2, 3, 7, 6)), (3, 2), (2, 1), 1,
                rng.standard_normal((2, 3, 4, 7)))
    keep = case.dout.copy()
    out, dx = _run(kind, case)
    np.testing.assert_array_equal(case.dout, keep)
    out_v, dx_v = _run(kind, case, x=_transposed_view(case.x), dout=_transposed_view(case.dout))
    np.testing.assert_array_equal(out_v, out)
    np.testing.assert_array_equal(dx_v, dx)
    flipped = case.x[:, :, ::-1]
    out_f, dx_f = _run(kind, case, x=flipped, dout=case.dout[:, :, ::-1])
    out_c, dx_c = _run(kind, case, x=np.ascontiguousarray(flipped),
                       dout=np.ascontiguousarray(case.dout[:, :, ::-1]))
    np.testing.assert_array_equal(out_f, out_c)
    np.testing.assert_array_equal(dx_f, dx_c)


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_float32_in_float32_out(rng, kind):
    x = distinct_values(rng, (2, 3, 6, 5), np.float32)
    forward, backward = OPS[kind]
    out, cache = forward(x, 3, 2, 1)
    dx = backward(np.ones(out.shape, np.float32), cache)
    assert out.dtype == np.float32 and dx.dtype == np.float32
    out_s, _ = forward(strict(x), 3, 2, 1)
    assert host(out_s).dtype == np.float32


# ---- global average pooling -------------------------------------------------------


@st.composite
def image_shapes(draw):
    return tuple(draw(st.integers(1, n)) for n in (4, 5, 9, 9))


@given(shape=image_shapes(), seed=st.integers(0, 2**32 - 1))
def test_global_avgpool_gradcheck(shape, seed):
    x = np.random.default_rng(seed).standard_normal(shape)
    check_op(pool.global_avgpool2d_forward, pool.global_avgpool2d_backward,
             x).assert_ok(1e-6)


@pytest.mark.torch
@given(shape=image_shapes(), seed=st.integers(0, 2**32 - 1))
def test_global_avgpool_matches_torch(shape, seed):
    torch = torch_or_skip()
    rng = np.random.default_rng(seed)
    x, dout = rng.standard_normal(shape), rng.standard_normal(shape[:2])
    out, cache = pool.global_avgpool2d_forward(x)
    dx = pool.global_avgpool2d_backward(dout, cache)
    tx = torch.tensor(x, requires_grad=True)
    t_out = torch.nn.functional.adaptive_avg_pool2d(tx, 1).flatten(1)
    t_out.backward(torch.tensor(dout))
    assert out.shape == shape[:2] and dx.shape == shape
    assert rel(out, t_out) <= 1e-10 and rel(dx, tx.grad) <= 1e-10


def test_global_avgpool_strict_views_dtype_and_dout(rng):
    x = rng.standard_normal((3, 4, 5, 6))
    dout = rng.standard_normal((3, 8))[:, ::2]                # a non-contiguous dout
    keep = dout.copy()
    out, cache = pool.global_avgpool2d_forward(x)
    dx = pool.global_avgpool2d_backward(dout, cache)
    np.testing.assert_array_equal(dout, keep)
    out_s, cache_s = pool.global_avgpool2d_forward(strict(x))
    dx_s = pool.global_avgpool2d_backward(strict(np.ascontiguousarray(dout)), cache_s)
    assert rel(out_s, out) <= 1e-15 and rel(dx_s, dx) <= 1e-15
    out_v, _ = pool.global_avgpool2d_forward(_transposed_view(x))
    assert rel(out_v, out) <= 1e-15
    x32 = x.astype(np.float32)
    out32, cache32 = pool.global_avgpool2d_forward(x32)
    dx32 = pool.global_avgpool2d_backward(out32, cache32)
    assert out32.dtype == np.float32 and dx32.dtype == np.float32


# ---- errors -------------------------------------------------------------------------

_x = np.zeros((2, 3, 5, 5))


@pytest.mark.parametrize("args, kwargs, match", [
    ((_x[0], 2), {}, r"expected x of rank 4 \(N, C, H, W\), got \(3, 5, 5\)"),
    ((_x.astype(np.int64), 2), {}, r"expected a floating-point x, got dtype int64"),
    ((_x, 6), {}, r"expected an input of at least the kernel size \(6, 6\) after padding "
                  r"\(0, 0\), got spatial size \(5, 5\)"),
    ((_x, (3, 8)), {"padding": 1}, r"at least the kernel size \(3, 8\)"),
    ((_x, 3), {"padding": 2}, r"expected padding at most half the kernel size \(3, 3\), "
                              r"got padding \(2, 2\)"),
    ((_x, (4, 1)), {"padding": (1, 1)}, r"padding at most half"),
    ((_x, 2), {"stride": 0}, r"expected stride >= 1, got 0"),
    ((_x, 2), {"padding": -1}, r"expected padding >= 0, got -1"),
    ((_x, 0), {}, r"expected kernel_size >= 1, got 0"),
    ((_x, 2.0), {}, r"expected kernel_size to be an int or a pair of ints"),
])
@pytest.mark.parametrize("forward", [pool.maxpool2d_forward, pool.avgpool2d_forward])
def test_bad_input_raises_value_error(forward, args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        forward(*args, **kwargs)
    with pytest.raises(ValueError, match=forward.__name__):
        forward(*args, **kwargs)


def test_global_avgpool_errors():
    with pytest.raises(ValueError, match=r"global_avgpool2d_forward: expected x of rank 4"):
        pool.global_avgpool2d_forward(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"global_avgpool2d_forward: expected a floating-point"):
        pool.global_avgpool2d_forward(np.zeros((2, 3, 4, 4), dtype=np.int32))


@pytest.mark.parametrize("forward, backward, args, shape", [
    (pool.maxpool2d_forward, pool.maxpool2d_backward, (_x, 2), "(2, 3, 2, 2)"),
    (pool.avgpool2d_forward, pool.avgpool2d_backward, (_x, 3, 1, 1), "(2, 3, 5, 5)"),
    (pool.global_avgpool2d_forward, pool.global_avgpool2d_backward, (_x,), "(2, 3)"),
])
def test_backward_rejects_dout_of_the_wrong_shape(forward, backward, args, shape):
    out, cache = forward(*args)
    bad = np.zeros(out.shape[:-1] + (out.shape[-1] + 1,))
    with pytest.raises(ValueError, match=rf"{backward.__name__}: expected dout of the output's "
                                         rf"shape {re.escape(shape)}, got"):
        backward(bad, cache)
