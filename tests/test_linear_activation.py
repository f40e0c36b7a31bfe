"""functional: linear, flatten, relu and the skip connection (add).

Finite differences in float64 on hypothesis-drawn shapes, PyTorch autograd on
identical values, array-api-strict against NumPy, and the house habits:
dout untouched, non-contiguous inputs, dtype follows the input. The ops are
the public ones, so each test runs on the engine and on the reference code
(``[fast]`` and ``[reference]``, see conftest.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from util import host, rel, strict, torch_or_skip

from minires.functional import (
    add_backward,
    add_forward,
    flatten_backward,
    flatten_forward,
    linear_backward,
    linear_forward,
    relu_backward,
    relu_forward,
)
from minires.gradcheck import check_op

TOL = 1e-6
seeds = st.integers(0, 2**32 - 1)
images = st.tuples(st.integers(1, 4), st.integers(1, 5), st.integers(1, 9), st.integers(1, 9))


def away_from_zero(rng, shape):
    """Random signs, magnitudes in [0.1, 2]: no ReLU kink within the FD step."""
    return rng.choice([-1.0, 1.0], size=shape) * rng.uniform(0.1, 2.0, size=shape)


def linear_args(rng, n=3, d_in=5, d_out=4, bias=True):
    x = rng.standard_normal((n, d_in))
    w = rng.standard_normal((d_out, d_in))
    b = rng.standard_normal(d_out) if bias else None
    return x, w, b


def run_linear(x, w, b, dout):
    out, cache = linear_forward(x, w, b)
    return (out, *linear_backward(dout, cache))


def run_flatten(x, dout):
    out, cache = flatten_forward(x)
    return out, flatten_backward(dout, cache)


def run_relu(x, dout):
    out, cache = relu_forward(x)
    return out, relu_backward(dout, cache)


def run_add(x, s, dout):
    out, cache = add_forward(x, s)
    return (out, *add_backward(dout, cache))


# ---- finite differences ---------------------------------------------------

@given(n=st.integers(1, 4), d_in=st.integers(1, 5), d_out=st.integers(1, 5),
       bias=st.booleans(), seed=seeds)
def test_linear_gradcheck(n, d_in, d_out, bias, seed):
    rng = np.random.default_rng(seed)
    x, w, b = linear_args(rng, n, d_in, d_out, bias)
    report = check_op(linear_forward, linear_backward, x, w, b, seed=seed + 1)
    assert list(report) == (["x", "w", "b"] if bias else ["x", "w"])
    report.assert_ok(TOL)


@given(shape=images, seed=seeds)
def test_flatten_gradcheck(shape, seed):
    x = np.random.default_rng(seed).standard_normal(shape)
    check_op(flatten_forward, flatten_backward, x, seed=seed + 1).assert_ok(TOL)


@given(shape=images, seed=seeds)
def test_relu_gradcheck(shape, seed):
    x = away_from_zero(np.random.default_rng(seed), shape)
    check_op(relu_forward, relu_backward, x, seed=seed + 1).assert_ok(TOL)


@given(shape=images, seed=seeds)
def test_add_gradcheck(shape, seed):
    rng = np.random.default_rng(seed)
    x, s = rng.standard_normal(shape), rng.standard_normal(shape)
    report = check_op(add_forward, add_backward, x, s, seed=seed + 1)
    assert list(report) == ["x", "shortcut"]
    report.assert_ok(TOL)


# ---- exact behaviour --------------------------------------------------------

def test_add_backward_fans_dout_out_unchanged(rng):
    x, s, dout = (rng.standard_normal((2, 3, 4, 4)) for _ in range(3))
    out, cache = add_forward(x, s)
    np.testing.assert_array_equal(out, x + s)
    dx, dshortcut = add_backward(dout, cache)
    assert dx is dout and dshortcut is dout


def test_relu_values_and_gradient_at_zero_is_zero():
    x = np.array([[-2.0, -0.0, 0.0, 1e-300, 3.0]])
    out, cache = relu_forward(x)
    np.testing.assert_array_equal(out, [[0.0, 0.0, 0.0, 1e-300, 3.0]])
    dx = relu_backward(np.full_like(x, 7.0), cache)
    np.testing.assert_array_equal(dx, [[0.0, 0.0, 0.0, 7.0, 7.0]])
    out, _ = relu_forward(np.array([np.nan, -np.inf, np.inf]))
    assert np.isnan(out[0]) and out[1] == 0 and out[2] == np.inf   # NaN is not hidden


def test_linear_without_param_grads(rng):
    x, w, b = linear_args(rng)
    out, cache = linear_forward(x, w, b)
    dout = rng.standard_normal(out.shape)
    dx, dw, db = linear_backward(dout, cache, need_param_grads=False)
    assert dw is None and db is None
    np.testing.assert_allclose(dx, dout @ w, rtol=1e-14)
    out, cache = linear_forward(x, w)
    np.testing.assert_allclose(out, x @ w.T, rtol=1e-14)
    dx, dw, db = linear_backward(dout, cache)
    assert db is None and dw.shape == w.shape


def test_flatten_shapes(rng):
    x = rng.standard_normal((2, 3, 4, 5))
    out, cache = flatten_forward(x)
    np.testing.assert_array_equal(out, x.reshape(2, 60))
    assert flatten_backward(out, cache).shape == (2, 3, 4, 5)
    assert flatten_forward(rng.standard_normal(4))[0].shape == (4, 1)
    assert flatten_forward(rng.standard_normal((0, 3, 2)))[0].shape == (0, 6)


# ---- against PyTorch autograd -----------------------------------------------

@pytest.mark.torch
@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_torch(bias, rng):
    torch = torch_or_skip()
    x, w, b = linear_args(rng, 6, 7, 5, bias)
    dout = rng.standard_normal((6, 5))
    out, dx, dw, db = run_linear(x, w, b, dout)
    xt, wt = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    bt = torch.tensor(b, requires_grad=True) if bias else None
    out_t = torch.nn.functional.linear(xt, wt, bt)
    out_t.backward(torch.tensor(dout))
    assert rel(out, out_t.detach()) < 1e-10
    assert rel(dx, xt.grad) < 1e-10
    assert rel(dw, wt.grad) < 1e-10
    if bias:
        assert rel(db, bt.grad) < 1e-10


@pytest.mark.torch
def test_relu_flatten_add_match_torch(rng):
    torch = torch_or_skip()
    x = away_from_zero(rng, (3, 4, 5, 6))
    x[0, 0, 0, :3] = 0.0                                 # torch's gradient at 0 is 0 too
    s = rng.standard_normal(x.shape)
    dout = rng.standard_normal(x.shape)
    xt = torch.tensor(x, requires_grad=True)
    out_t = torch.relu(xt)
    out_t.backward(torch.tensor(dout))
    out, dx = run_relu(x, dout)
    assert rel(out, out_t.detach()) < 1e-10 and rel(dx, xt.grad) < 1e-10

    xt = torch.tensor(x, requires_grad=True)
    out_t = torch.flatten(xt, 1)
    dflat = rng.standard_normal(tuple(out_t.shape))
    out_t.backward(torch.tensor(dflat))
    out, dx = run_flatten(x, dflat)
    assert rel(out, out_t.detach()) < 1e-10 and rel(dx, xt.grad) < 1e-10

    xt, st_ = torch.tensor(x, requires_grad=True), torch.tensor(s, requires_grad=True)
    out_t = torch.relu(xt + st_)                          # sum, then a ReLU: a block's tail
    out_t.backward(torch.tensor(dout))
    h, add_cache = add_forward(x, s)
    out, relu_cache = relu_forward(h)
    dx, ds = add_backward(relu_backward(dout, relu_cache), add_cache)
    assert rel(out, out_t.detach()) < 1e-10
    assert rel(dx, xt.grad) < 1e-10 and rel(ds, st_.grad) < 1e-10


# ---- portability, purity, layout, dtype ---------------------------------------

CASES = {
    "linear": (run_linear, lambda rng: (*linear_args(rng), rng.standard_normal((3, 4)))),
    "linear_nobias": (run_linear,
                      lambda rng: (*linear_args(rng, bias=False), rng.standard_normal((3, 4)))),
    "flatten": (run_flatten, lambda rng: (rng.standard_normal((2, 3, 4, 5)),
                                          rng.standard_normal((2, 60)))),
    "relu": (run_relu, lambda rng: (away_from_zero(rng, (2, 3, 4, 5)),
                                    rng.standard_normal((2, 3, 4, 5)))),
    "add": (run_add, lambda rng: tuple(rng.standard_normal((2, 3, 4, 5)) for _ in range(3))),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_array_api_strict_matches_numpy(name, rng):
    run, make = CASES[name]
    args = make(rng)
    expected = run(*args)
    got = run(*[strict(a) for a in args])
    for e, g in zip(expected, got, strict=True):
        if e is None:
            assert g is None
            continue
        assert type(g).__module__.startswith("array_api_strict"), type(g)
        np.testing.assert_array_equal(host(g), e)


@pytest.mark.parametrize("name", sorted(CASES))
def test_backward_leaves_dout_and_inputs_untouched(name, rng):
    run, make = CASES[name]
    args = make(rng)
    before = [None if a is None else a.copy() for a in args]
    run(*args)
    for a, b in zip(args, before, strict=True):
        if a is not None:
            np.testing.assert_array_equal(a, b)


def non_contiguous(a):
    """The same values in a transposed (Fortran-order) buffer."""
    if a is None or a.ndim < 2:
        return a
    v = np.asfortranarray(a)
    assert not v.flags.c_contiguous
    return v


@pytest.mark.parametrize("name", sorted(CASES))
def test_non_contiguous_inputs_give_the_same_results(name, rng):
    run, make = CASES[name]
    args = make(rng)
    expected = run(*args)
    got = run(*[non_contiguous(a) for a in args])
    for e, g in zip(expected, got, strict=True):
        if e is not None:
            # elementwise ops are exact; BLAS may order a dot product differently
            assert rel(g, e) <= 1e-14


@pytest.mark.parametrize("name", sorted(CASES))
def test_float32_in_float32_out(name, rng):
    run, make = CASES[name]
    args = [None if a is None else a.astype(np.float32) for a in make(rng)]
    expected = run(*[None if a is None else a.astype(np.float64) for a in args])
    for e, g in zip(expected, run(*args), strict=True):
        if e is not None:
            assert g.dtype == np.float32
            assert rel(g, e) < 1e-6


# ---- errors --------------------------------------------------------------------

def test_linear_errors(rng):
    x, w, b = linear_args(rng)
    with pytest.raises(ValueError, match=r"linear_forward: expected x of rank 2 .*got \(3, 5, 1\)"):
        linear_forward(x[..., None], w, b)
    with pytest.raises(ValueError, match=r"linear_forward: expected w of rank 2"):
        linear_forward(x, w[0], b)
    with pytest.raises(ValueError, match=r"expected x of shape \(N, 5\) to match w \(4, 5\), "
                                         r"got \(3, 6\)"):
        linear_forward(rng.standard_normal((3, 6)), w, b)
    with pytest.raises(ValueError, match=r"expected b of shape \(4,\).*got \(3,\)"):
        linear_forward(x, w, b[:3])
    with pytest.raises(ValueError, match="linear_forward: expected a floating-point x, got dtype int"):
        linear_forward(np.ones((3, 5), dtype=np.int64), w, b)
    with pytest.raises(ValueError, match="expected w of dtype float32"):
        linear_forward(x.astype(np.float32), w, b)
    with pytest.raises(ValueError, match="linear_backward: expected dout of shape"):
        linear_backward(np.ones((3, 5)), linear_forward(x, w, b)[1])


def test_add_relu_flatten_errors(rng):
    x = rng.standard_normal((2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"add_forward: expected shortcut of the residual's shape "
                                         r"\(2, 3, 4, 4\), got \(2, 3, 2, 2\)"):
        add_forward(x, x[:, :, ::2, ::2])
    with pytest.raises(ValueError, match="add_forward: expected shortcut of dtype float64"):
        add_forward(x, x.astype(np.float32))
    with pytest.raises(ValueError, match="relu_forward: expected a floating-point x"):
        relu_forward(np.ones(3, dtype=np.int32))
    with pytest.raises(ValueError, match="flatten_forward: expected an array of rank >= 1"):
        flatten_forward(np.float64(1.0))
