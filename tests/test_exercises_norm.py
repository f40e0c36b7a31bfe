"""Chapter 04's checker: minires's batch norm passes, every typical wrong
solution fails with its hint, a stub is "not implemented yet"."""

from __future__ import annotations

import numpy as np
import pytest

from minires.exercises import check_batchnorm
from minires.functional import batchnorm_backward, batchnorm_forward


def library_forward(x, gamma, beta, eps=1e-5):
    return batchnorm_forward(x, gamma, beta, None, None, training=True, eps=eps)


def library_backward(dout, cache):
    return batchnorm_backward(dout, cache)[:3]


# ---- a student's plain batch norm, with one mistake at a time --------------------


def my_forward(x, gamma, beta, eps=1e-5, mistake=None):
    axes = {"per activation": (0,), "per image": (1, 2, 3)}.get(mistake, (0, 2, 3))
    mu = x.mean(axis=axes, keepdims=True)
    xc = x - mu
    var = x.var(axis=axes, keepdims=True, ddof=1 if mistake == "unbiased" else 0)
    std = np.sqrt(var) + eps if mistake == "eps outside" else np.sqrt(var + eps)
    xhat = xc / std
    g = gamma.reshape(1, -1, 1, 1)
    out = xhat if mistake == "no gamma" else g * xhat + beta.reshape(1, -1, 1, 1)
    return out, (x, xhat, g, 1.0 / std, axes)


def my_backward(dout, cache, mistake=None):
    """The compact formula, per the forward's axes."""
    x, xhat, g, inv_std, axes = cache
    m = int(np.prod([x.shape[a] for a in axes]))
    if mistake == "in place":
        dout -= dout.mean()
    dbeta = dout.sum(axis=(0, 2, 3))
    dgamma = (dout * xhat).sum(axis=(0, 2, 3))
    s_dout = dout.sum(axis=axes, keepdims=True)
    s_doutx = (dout * xhat).sum(axis=axes, keepdims=True)
    mean_term = 0.0 if mistake in ("no mean term", "constants") else s_dout
    var_term = 0.0 if mistake in ("no var term", "constants") else xhat * s_doutx
    scale = inv_std if mistake == "no gamma in dx" else g * inv_std
    dx = scale / m * (m * dout - mean_term - var_term)
    if mistake == "dgamma from x":
        dgamma = (dout * x).sum(axis=(0, 2, 3))
    if mistake == "dbeta over N only":
        dbeta = dout.sum(axis=0)
    if mistake == "dgamma over H, W":
        dgamma = (dout * xhat).sum(axis=(2, 3))
    if mistake == "zeros":
        dx = np.zeros_like(dout)
    return dx, dgamma, dbeta


def graph_backward(dout, cache):
    """Step by step through the computation graph (another correct answer)."""
    x, xhat, g, inv_std, axes = cache
    m = int(np.prod([x.shape[a] for a in axes]))
    xc = xhat / inv_std
    dxhat = dout * g
    dxc = dxhat * inv_std
    dinv_std = (dxhat * xc).sum(axis=axes, keepdims=True)
    dvar = dinv_std * -0.5 * inv_std ** 3
    dxc = dxc + dvar * 2 * xc / m
    dx = dxc - dxc.sum(axis=axes, keepdims=True) / m
    return dx, (dout * xhat).sum(axis=(0, 2, 3)), dout.sum(axis=(0, 2, 3))


def with_mistake(fn, mistake):
    return lambda *args: fn(*args, mistake=mistake)


@pytest.mark.parametrize("forward, backward", [
    (library_forward, library_backward),
    (my_forward, my_backward),
    (my_forward, graph_backward),
], ids=["library", "compact", "graph"])
def test_correct_batchnorms_pass(forward, backward):
    result = check_batchnorm(forward, backward)
    assert result.passed and result.implemented, str(result)
    assert str(result).count("ok ") == 3


@pytest.mark.parametrize("mistake, hint", [
    ("per activation", "per activation, over N only"),
    ("per image", "over each image"),
    ("unbiased", "unbiased variance"),
    ("eps outside", "eps is outside the square root"),
    ("no gamma", "without gamma and beta"),
])
def test_wrong_forward_gets_its_hint(mistake, hint):
    result = check_batchnorm(with_mistake(my_forward, mistake), my_backward)
    text = str(result)
    assert not result.passed and result.implemented, text
    assert "WRONG   out" in text and hint in text, text


@pytest.mark.parametrize("mistake, what, hint", [
    ("no mean term", "dx", "gradient through the batch mean"),
    ("no var term", "dx", "gradient through the batch variance"),
    ("constants", "dx", "treats mean and var as constants"),
    ("no gamma in dx", "dx", "missing the factor gamma"),
    ("dgamma from x", "dgamma", "not x itself"),
    ("dgamma over H, W", "dgamma", "one number per channel"),
    ("dbeta over N only", "dbeta", "one number per channel"),
])
def test_wrong_backward_gets_its_hint(mistake, what, hint):
    result = check_batchnorm(my_forward, with_mistake(my_backward, mistake))
    text = str(result)
    assert not result.passed and result.implemented, text
    assert f"{what} " in text and hint in text, text
    assert "ok      out" in text                              # the forward was right


def test_a_backward_that_only_passes_a_sum_check_fails():
    # dx = 0 is the exact gradient of sum(out), which is constant in x
    result = check_batchnorm(my_forward, with_mistake(my_backward, "zeros"))
    assert not result.passed and "WRONG   dx" in str(result), str(result)
    assert "exact gradient of sum(out)" in str(result)


def test_in_place_dout_is_caught():
    result = check_batchnorm(my_forward, with_mistake(my_backward, "in place"))
    assert not result.passed and "dout was modified in place" in str(result)


def test_stub_is_not_implemented_yet():
    def backward(dout, cache):
        raise NotImplementedError

    result = check_batchnorm(my_forward, backward)
    assert result.status == "not implemented yet", str(result)
    assert "WRONG" not in str(result)


def test_exception_is_reported():
    result = check_batchnorm(my_forward, lambda dout, cache: cache[7])
    assert not result.passed and result.implemented and "IndexError" in str(result)


def test_forward_changing_x_fails():
    def forward(x, gamma, beta, eps=1e-5):
        out, cache = my_forward(x.copy(), gamma, beta, eps)
        x -= x.mean(axis=(0, 2, 3), keepdims=True)        # the caller's x, centred
        return out, cache

    result = check_batchnorm(forward, my_backward)
    text = str(result)
    assert not result.passed and "ok      dx" in text
    assert "x was modified in place; a forward pass must" in text
