"""functional: batch norm, (N, C, H, W) and (N, C), training and eval mode.

Finite differences in float64 against a random upstream gradient (through
``sum(out)`` the check would prove nothing: a normalized output sums to a
constant), PyTorch's ``batch_norm`` with its in-place running-statistics
update over several steps, array-api-strict against NumPy, float32 accuracy
against float64, and the house habits (dout untouched, dtype follows the input).
The ops are the public ones, so each test runs on the engine and on the
reference code (``[fast]`` and ``[reference]``, see conftest.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from util import host, rel, strict, torch_or_skip

from minires.functional import batchnorm_backward, batchnorm_forward, batchnorm_running_update
from minires.functional.norm import channel_sum
from minires.gradcheck import check_op

TOL = 1e-6
seeds = st.integers(0, 2**32 - 1)


def bn_args(rng, shape):
    """x with a per-channel offset and scale, non-trivial gamma, beta and running stats."""
    c = shape[1]
    bshape = (1, c) + (1,) * (len(shape) - 2)
    x = rng.standard_normal(shape) * rng.uniform(0.5, 2, bshape) + rng.standard_normal(bshape)
    gamma = rng.uniform(0.5, 1.5, c) * rng.choice([-1.0, 1.0], c)
    beta = rng.standard_normal(c)
    running_mean = rng.standard_normal(c)
    running_var = rng.uniform(0.5, 2.0, c)
    return x, gamma, beta, running_mean, running_var


def bn_train(x, gamma, beta, running_mean, running_var):
    return batchnorm_forward(x, gamma, beta, running_mean, running_var, training=True)


def bn_eval(x, gamma, beta, running_mean, running_var):
    return batchnorm_forward(x, gamma, beta, running_mean, running_var, training=False)


def run_bn(training, x, gamma, beta, running_mean, running_var, dout):
    """Forward, backward and (training) running update: everything as a tuple."""
    out, cache = batchnorm_forward(x, gamma, beta, running_mean, running_var, training=training)
    dx, dgamma, dbeta, *rest = batchnorm_backward(dout, cache)
    assert rest == [None, None]
    stats = batchnorm_running_update(running_mean, running_var, cache) if training else ()
    return (out, dx, dgamma, dbeta, *stats)


# ---- finite differences ---------------------------------------------------

def gradcheck_bn(forward, args, seed):
    report = check_op(forward, batchnorm_backward, *args, wrt=[0, 1, 2], seed=seed + 1)
    assert list(report) == ["x", "gamma", "beta"]
    report.assert_ok(TOL)


@given(n=st.integers(1, 4), c=st.integers(1, 5), h=st.integers(1, 9), w=st.integers(1, 9),
       seed=seeds)
def test_batchnorm2d_train_gradcheck(n, c, h, w, seed):
    assume(n * h * w >= 3)   # with 2 values per channel xhat = ±1: dx is ~eps, all rounding
    gradcheck_bn(bn_train, bn_args(np.random.default_rng(seed), (n, c, h, w)), seed)


@given(n=st.integers(1, 4), c=st.integers(1, 5), h=st.integers(1, 9), w=st.integers(1, 9),
       seed=seeds)
def test_batchnorm2d_eval_gradcheck(n, c, h, w, seed):
    gradcheck_bn(bn_eval, bn_args(np.random.default_rng(seed), (n, c, h, w)), seed)


@given(n=st.integers(3, 4), c=st.integers(1, 5), seed=seeds)
def test_batchnorm1d_train_gradcheck(n, c, seed):
    gradcheck_bn(bn_train, bn_args(np.random.default_rng(seed), (n, c)), seed)


@given(n=st.integers(1, 4), c=st.integers(1, 5), seed=seeds)
def test_batchnorm1d_eval_gradcheck(n, c, seed):
    gradcheck_bn(bn_eval, bn_args(np.random.default_rng(seed), (n, c)), seed)


@pytest.mark.parametrize("shape", [(2, 3), (1, 3, 2, 1), (2, 2, 1, 1)])
def test_two_values_per_channel_gradcheck(shape, rng):
    """M = 2 is allowed (as in PyTorch) but degenerate: xhat = ±1/sqrt(1 + eps/var),
    so dx is of the order of eps. A larger eps makes it measurable."""
    x, gamma, beta, rm, rv = bn_args(rng, shape)
    forward = lambda x, gamma, beta, running_mean, running_var: batchnorm_forward(
        x, gamma, beta, running_mean, running_var, training=True, eps=0.5)
    gradcheck_bn(forward, (x, gamma, beta, rm, rv), seed=3)


# ---- exact behaviour --------------------------------------------------------

def test_train_forward_normalizes_with_biased_variance_and_is_pure(rng):
    x, gamma, beta, rm, rv = bn_args(rng, (4, 3, 5, 6))
    rm0, rv0 = rm.copy(), rv.copy()
    out, cache = batchnorm_forward(x, gamma, beta, rm, rv, training=True, eps=1e-5)
    np.testing.assert_array_equal(rm, rm0)      # running stats untouched
    np.testing.assert_array_equal(rv, rv0)
    mean, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
    b = (1, 3, 1, 1)
    expected = (x - mean.reshape(b)) / np.sqrt(var.reshape(b) + 1e-5) * gamma.reshape(b) \
        + beta.reshape(b)
    assert rel(out, expected) < 1e-13
    new_mean, new_var = batchnorm_running_update(rm, rv, cache, momentum=0.1)
    m = 4 * 5 * 6
    assert rel(new_mean, 0.9 * rm0 + 0.1 * mean) < 1e-13
    assert rel(new_var, 0.9 * rv0 + 0.1 * var * m / (m - 1)) < 1e-13
    np.testing.assert_array_equal(rm, rm0)
    np.testing.assert_array_equal(rv, rv0)


def test_eval_is_a_fixed_affine_map(rng):
    x, gamma, beta, rm, rv = bn_args(rng, (3, 4))
    out, cache = batchnorm_forward(x, gamma, beta, rm, rv, training=False)
    scale = gamma / np.sqrt(rv + 1e-5)
    assert rel(out, x * scale + (beta - rm * scale)) < 1e-13
    dout = rng.standard_normal(x.shape)
    dx, *_ = batchnorm_backward(dout, cache)
    assert rel(dx, dout * scale) < 1e-14
    # one sample per channel is fine in eval mode
    out1, _ = batchnorm_forward(x[:1], gamma, beta, rm, rv, training=False)
    assert rel(out1, out[:1]) < 1e-14


def test_need_param_grads_false(rng):
    args = bn_args(rng, (2, 3, 4, 4))
    dout = rng.standard_normal(args[0].shape)
    for training in (True, False):
        out, cache = batchnorm_forward(*args, training=training)
        full = batchnorm_backward(dout, cache)
        dx, dgamma, dbeta, *_ = batchnorm_backward(dout, cache, need_param_grads=False)
        assert dgamma is None and dbeta is None
        np.testing.assert_array_equal(dx, full[0])


def test_channel_sum_is_float32_accurate():
    """Naive float32 sums over a (N*H*W, C) layout, one row after another, lose
    about two digits here; the reference is the same float32 data summed in float64."""
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((64, 16, 32, 32)) + 10).astype(np.float32)
    exact = x.astype(np.float64).sum(axis=(0, 2, 3))
    assert rel(channel_sum(x), exact) < 5e-7
    x2 = x[:, :, 0, 0].T.copy().T          # (64, 16), Fortran order
    assert rel(channel_sum(x2), x2.astype(np.float64).sum(axis=0)) < 5e-7


def test_float32_matches_float64_on_a_large_batch():
    """(64, 16, 32, 32): 65,536 values per channel, activations offset by 10
    (sequential float32 sums give ~1e-4 errors in dgamma here)."""
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((64, 16, 32, 32)) + 10).astype(np.float32)
    dout = rng.standard_normal(x.shape).astype(np.float32)
    c = 16
    params = [rng.uniform(0.5, 1.5, c), rng.standard_normal(c), rng.standard_normal(c),
              rng.uniform(0.5, 2, c)]
    params = [p.astype(np.float32) for p in params]
    for training in (True, False):
        got = run_bn(training, x, *params, dout)
        ref = run_bn(training, *[a.astype(np.float64) for a in (x, *params, dout)])
        for name, g, r in zip(["out", "dx", "dgamma", "dbeta", "rm", "rv"], got, ref,
                              strict=False):
            assert g.dtype == np.float32, name
            assert rel(g, r) < 1e-5, (training, name, rel(g, r))


# ---- against PyTorch autograd -----------------------------------------------

@pytest.mark.torch
@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (7, 4), (2, 2, 1, 1)])
def test_batchnorm_matches_torch_over_several_steps(shape, rng):
    torch = torch_or_skip()
    F = torch.nn.functional
    _, gamma, beta, rm, rv = bn_args(rng, shape)
    rm_t, rv_t = torch.tensor(rm), torch.tensor(rv)        # torch updates these in place
    for step in range(4):
        x = bn_args(rng, shape)[0] * (1 + step) + step
        dout = rng.standard_normal(shape)
        out, cache = batchnorm_forward(x, gamma, beta, rm, rv, training=True, momentum=0.1)
        dx, dgamma, dbeta, *_ = batchnorm_backward(dout, cache)
        rm, rv = batchnorm_running_update(rm, rv, cache, momentum=0.1)

        xt = torch.tensor(x, requires_grad=True)
        gt, bt = torch.tensor(gamma, requires_grad=True), torch.tensor(beta, requires_grad=True)
        out_t = F.batch_norm(xt, rm_t, rv_t, gt, bt, training=True, momentum=0.1, eps=1e-5)
        out_t.backward(torch.tensor(dout))
        assert rel(out, out_t.detach()) < 1e-10
        assert rel(dx, xt.grad) < 1e-10
        assert rel(dgamma, gt.grad) < 1e-10
        assert rel(dbeta, bt.grad) < 1e-10
        assert rel(rm, rm_t) < 1e-10
        assert rel(rv, rv_t) < 1e-10

    x = bn_args(rng, shape)[0]                              # eval with the learned stats
    dout = rng.standard_normal(shape)
    out, dx, dgamma, dbeta = run_bn(False, x, gamma, beta, rm, rv, dout)
    xt = torch.tensor(x, requires_grad=True)
    gt, bt = torch.tensor(gamma, requires_grad=True), torch.tensor(beta, requires_grad=True)
    out_t = F.batch_norm(xt, rm_t, rv_t, gt, bt, training=False, momentum=0.1, eps=1e-5)
    out_t.backward(torch.tensor(dout))
    assert rel(out, out_t.detach()) < 1e-10
    assert rel(dx, xt.grad) < 1e-10
    assert rel(dgamma, gt.grad) < 1e-10
    assert rel(dbeta, bt.grad) < 1e-10


# ---- portability, purity, layout, dtype ---------------------------------------

MODES = [(True, (3, 4, 5, 6)), (False, (3, 4, 5, 6)), (True, (5, 4)), (False, (5, 4))]


def make(rng, shape):
    return (*bn_args(rng, shape), rng.standard_normal(shape))


@pytest.mark.parametrize(("training", "shape"), MODES)
def test_array_api_strict_matches_numpy(training, shape, rng):
    args = make(rng, shape)
    expected = run_bn(training, *args)
    got = run_bn(training, *[strict(a) for a in args])
    for e, g in zip(expected, got, strict=True):
        assert type(g).__module__.startswith("array_api_strict"), type(g)
        np.testing.assert_array_equal(host(g), e)


@pytest.mark.parametrize(("training", "shape"), MODES)
def test_leaves_dout_and_inputs_untouched(training, shape, rng):
    args = make(rng, shape)
    before = [a.copy() for a in args]
    run_bn(training, *args)
    for a, b in zip(args, before, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(("training", "shape"), MODES)
def test_non_contiguous_inputs_give_identical_results(training, shape, rng):
    args = make(rng, shape)
    expected = run_bn(training, *args)
    x, gamma, beta, rm, rv, dout = args
    views = [np.asfortranarray(x), gamma[::-1].copy()[::-1], beta, rm, rv,
             np.asfortranarray(dout)]
    assert not views[0].flags.c_contiguous and not views[1].flags.c_contiguous
    for e, g in zip(expected, run_bn(training, *views), strict=True):
        np.testing.assert_array_equal(g, e)


@pytest.mark.parametrize(("training", "shape"), MODES)
def test_float32_in_float32_out(training, shape, rng):
    args = [a.astype(np.float32) for a in make(rng, shape)]
    expected = run_bn(training, *[a.astype(np.float64) for a in args])
    for e, g in zip(expected, run_bn(training, *args), strict=True):
        assert g.dtype == np.float32
        assert rel(g, e) < 1e-5


# ---- errors --------------------------------------------------------------------

def test_errors(rng):
    x, gamma, beta, rm, rv = bn_args(rng, (2, 3, 4, 4))
    with pytest.raises(ValueError, match="batchnorm_forward: expected more than 1 value per "
                                         r"channel when training, got input of shape \(1, 3, 1, 1\)"):
        batchnorm_forward(x[:1, :, :1, :1], gamma, beta, rm, rv, training=True)
    with pytest.raises(ValueError, match=r"more than 1 value per channel.*\(1, 3\)"):
        batchnorm_forward(x[:1, :, 0, 0], gamma, beta, rm, rv, training=True)
    with pytest.raises(ValueError, match=r"expected x of shape \(N, C, H, W\) or \(N, C\), "
                                         r"got \(2, 3, 4\)"):
        batchnorm_forward(x[..., 0], gamma, beta, rm, rv)
    with pytest.raises(ValueError, match=r"expected gamma of shape \(3,\) .*got \(2,\)"):
        batchnorm_forward(x, gamma[:2], beta, rm, rv)
    with pytest.raises(ValueError, match=r"expected running_var of shape \(3,\)"):
        batchnorm_forward(x, gamma, beta, rm, None, training=False)
    with pytest.raises(ValueError, match="expected beta of dtype float32"):
        batchnorm_forward(x.astype(np.float32), gamma.astype(np.float32), beta, rm, rv)
    with pytest.raises(ValueError, match="expected a floating-point x"):
        batchnorm_forward(np.ones((2, 3), dtype=np.int64), gamma, beta, rm, rv)
    _, eval_cache = batchnorm_forward(x, gamma, beta, rm, rv, training=False)
    with pytest.raises(ValueError, match="batchnorm_running_update: expected a cache from "
                                         "training mode"):
        batchnorm_running_update(rm, rv, eval_cache)
    with pytest.raises(ValueError, match="batchnorm_backward: expected dout of shape"):
        batchnorm_backward(np.ones((2, 3)), eval_cache)
    # training without running statistics is allowed (PyTorch's track_running_stats=False)
    out, _ = batchnorm_forward(x, gamma, beta, None, None, training=True)
    assert out.shape == x.shape
