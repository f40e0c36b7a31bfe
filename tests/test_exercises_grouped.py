"""Chapter 11's checker: a correct grouped convolution passes, every typical
wrong solution fails with its hint, stubs are "not implemented yet", and the
checker's own reference is PyTorch's grouped convolution."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from minires.exercises import check_grouped_conv2d
from minires.exercises.grouped import CONFIGS, block_diagonal, diagonal_blocks, reference
from minires.functional import conv2d_backward, conv2d_forward

# ---- a plain solution, and the same solution with one mistake at a time -----------


def my_forward(x, w, b, stride, padding, groups, mistake=None):
    cg, og = x.shape[1] // groups, w.shape[0] // groups
    if mistake == "groups as channels per group":
        cg = og = groups
    outs, caches = [], []
    for g in range(groups):
        x_g = x[:, g * cg:(g + 1) * cg]
        w_g = w[g * og:(g + 1) * og]
        b_g = b[g * og:(g + 1) * og]
        if mistake in ("every G-th channel", "every G-th input channel"):
            x_g = x[:, g::groups]
        if mistake in ("every G-th channel", "every G-th filter", "reshape (og, G)"):
            w_g = w.reshape(og, groups, *w.shape[1:])[:, g] if mistake == "reshape (og, G)" \
                else w[g::groups]
            b_g = b[g::groups]
        if mistake == "same input":
            x_g = x[:, :cg]
        if mistake == "no bias":
            b_g = None
        out_g, cache_g = conv2d_forward(x_g, w_g, b_g, stride, padding)
        outs.append(out_g)
        caches.append(cache_g)
    if mistake == "batch axis":
        return np.concatenate(outs, axis=0), None
    if mistake == "stacked":
        return np.stack(outs), None
    if mistake == "stacked on axis 1":
        return np.stack(outs, axis=1), None
    return np.concatenate(outs, axis=1), (caches, og)


def my_backward(dout, cache, mistake=None):
    caches, og = cache
    dxs, dws, dbs = [], [], []
    for g, cache_g in enumerate(caches):
        dx_g, dw_g, db_g = conv2d_backward(dout[:, g * og:(g + 1) * og], cache_g)
        dxs.append(dx_g)
        dws.append(dw_g)
        dbs.append(db_g)
    dx, dw, db = (np.concatenate(dxs, axis=1), np.concatenate(dws), np.concatenate(dbs))
    if mistake == "dx summed":
        dx = sum(dxs)
    if mistake == "dw summed":
        dw = sum(dws)
    if mistake == "db summed":
        db = sum(dbs)
    if mistake == "dout in place":
        dout *= 0
    return dx, dw, db


def dense_forward(x, w, b, stride, padding, groups):
    """A correct forward through the block-diagonal weight."""
    out, cache = conv2d_forward(x, block_diagonal(w, groups), b, stride, padding)
    return out, (cache, groups)


def dense_backward(dout, cache, reduce=True):
    cache, groups = cache
    dx, dw, db = conv2d_backward(dout, cache)
    return dx, diagonal_blocks(dw, groups) if reduce else dw, db


def test_the_solution_passes_forward_only_and_with_backward():
    result = check_grouped_conv2d(my_forward)
    assert result.passed and result.implemented, str(result)
    assert str(result).count("ok ") == len(CONFIGS)
    assert "checks the gradients too" in str(result)
    result = check_grouped_conv2d(my_forward, my_backward)
    assert result.passed, str(result)
    assert str(result).count("out, dx, dw, db match") == len(CONFIGS)


def test_a_dense_block_diagonal_solution_passes():
    result = check_grouped_conv2d(dense_forward, dense_backward)
    assert result.passed, str(result)


def test_the_library_passes_where_it_has_groups():
    if "groups" not in inspect.signature(conv2d_forward).parameters:
        pytest.skip("minires.functional.conv2d_forward has no groups= here")
    result = check_grouped_conv2d(
        lambda x, w, b, s, p, g: conv2d_forward(x, w, b, s, p, groups=g), conv2d_backward)
    assert result.passed, str(result)


@pytest.mark.parametrize("config", CONFIGS, ids=[f"groups{c[-1]}" for c in CONFIGS])
def test_the_reference_is_torchs_grouped_convolution(config):
    torch = pytest.importorskip("torch")
    x_shape, w_shape, stride, padding, groups = config
    rng = np.random.default_rng(0)
    x, w, b = (rng.standard_normal(s) for s in (x_shape, w_shape, w_shape[:1]))
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    out_t = torch.nn.functional.conv2d(xt, wt, bt, stride, padding, groups=groups)
    dout = rng.standard_normal(tuple(out_t.shape))
    out_t.backward(torch.tensor(dout))
    out, dx, dw, db = reference(x, w, b, stride, padding, groups, dout)
    for mine, theirs in ((out, out_t), (dx, xt.grad), (dw, wt.grad), (db, bt.grad)):
        np.testing.assert_allclose(mine, theirs.detach().numpy(), rtol=1e-12, atol=1e-12)


def test_block_diagonal_round_trip():
    w = np.arange(6 * 2 * 3 * 3, dtype=float).reshape(6, 2, 3, 3)
    dense = block_diagonal(w, 3)
    assert dense.shape == (6, 6, 3, 3)
    assert np.count_nonzero(dense[:2, 2:]) == 0 and np.count_nonzero(dense[2:4, :2]) == 0
    np.testing.assert_array_equal(diagonal_blocks(dense, 3), w)


INTERLEAVED = "groups of every G-th channel"
FORWARD_MISTAKES = {
    "every G-th channel": INTERLEAVED,
    "every G-th input channel": INTERLEAVED,
    "every G-th filter": INTERLEAVED,
    "reshape (og, G)": INTERLEAVED,
    "same input": "every group reads the FIRST group's input channels",
    "no bias": "out is missing the bias",
    "batch axis": "stacks the groups along the batch axis",
    "stacked": "has the groups as a separate axis",
    "stacked on axis 1": "has the groups as a separate axis",
    "groups as channels per group": "`groups` is the number of groups, not the number of "
                                    "channels in each",
}


@pytest.mark.parametrize("mistake", list(FORWARD_MISTAKES))
def test_wrong_forward_gets_its_hint(mistake):
    result = check_grouped_conv2d(lambda *a: my_forward(*a, mistake=mistake))
    text = str(result)
    assert not result.passed and result.implemented, text
    assert FORWARD_MISTAKES[mistake] in text, text
    assert "in the configuration x (2, 4, 5, 5)" in text      # the failing one is named


BACKWARD_MISTAKES = {
    "dx summed": ("dx", "looks like the groups' gradients ADDED together"),
    "dw summed": ("dw", "looks like the groups' gradients ADDED together"),
    "db summed": ("db", "looks like the groups' gradients ADDED together"),
    "dout in place": ("dout", "dout was modified in place"),
}


@pytest.mark.parametrize("mistake", list(BACKWARD_MISTAKES))
def test_wrong_backward_gets_its_hint(mistake):
    result = check_grouped_conv2d(my_forward, lambda d, c: my_backward(d, c, mistake=mistake))
    text = str(result)
    what, hint = BACKWARD_MISTAKES[mistake]
    assert not result.passed and result.implemented, text
    assert hint in text and what in text, text


def test_dense_weight_gradient_gets_its_hint():
    result = check_grouped_conv2d(dense_forward,
                                  lambda d, c: dense_backward(d, c, reduce=False))
    text = str(result)
    assert not result.passed and "dw has shape (6, 4, 3, 3), expected (6, 2, 3, 3)" in text
    assert "the off-diagonal blocks of a dense weight are not parameters" in text, text


def test_stubs_are_not_implemented_yet():
    def stub(*args):
        raise NotImplementedError

    result = check_grouped_conv2d(stub)
    assert result.status == "not implemented yet" and not result.passed, str(result)
    assert "WRONG" not in str(result) and "configuration" not in str(result)
    result = check_grouped_conv2d(my_forward, stub)
    assert result.status == "not implemented yet", str(result)


def test_exceptions_and_wrong_returns_are_reported():
    def broken(x, w, b, stride, padding, groups):
        return x[99]

    result = check_grouped_conv2d(broken)
    assert not result.passed and "IndexError" in str(result)
    result = check_grouped_conv2d(lambda *a: my_forward(*a)[0])
    assert not result.passed and "should return a tuple (out, cache)" in str(result)


def test_forward_changing_the_bias_fails():
    def forward(x, w, b, stride, padding, groups):
        out, cache = my_forward(x, w, b, stride, padding, groups)
        b[:] = 0                                          # after use: out is right
        return out, cache

    result = check_grouped_conv2d(forward, my_backward)
    text = str(result)
    assert not result.passed and "ok      out" in text
    assert "b was modified in place; a forward pass must" in text
