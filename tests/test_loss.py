"""functional: softmax cross-entropy (with label smoothing), softmax, log_softmax.

Finite differences in float64, PyTorch's ``cross_entropy`` on identical values,
stability for huge logits, array-api-strict against NumPy, errors, and the
house habits (dout untouched, dtype follows the input).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from util import host, rel, strict, torch_or_skip

from minires.functional.loss import (
    log_softmax,
    softmax,
    softmax_cross_entropy_backward,
    softmax_cross_entropy_forward,
)
from minires.gradcheck import check_op

TOL = 1e-6
seeds = st.integers(0, 2**32 - 1)
smoothings = st.sampled_from([0.0, 0.1, 0.5, 1.0]) | st.floats(0.0, 1.0)


def problem(rng, n=5, k=4, scale=3.0):
    return rng.standard_normal((n, k)) * scale, rng.integers(0, k, n)


def run_ce(logits, y, dout, label_smoothing=0.0):
    loss, cache = softmax_cross_entropy_forward(logits, y, label_smoothing)
    return loss, softmax_cross_entropy_backward(dout, cache)


# ---- finite differences ---------------------------------------------------

@given(n=st.integers(1, 4), k=st.integers(1, 5), e=smoothings, seed=seeds)
def test_cross_entropy_gradcheck(n, k, e, seed):
    logits, y = problem(np.random.default_rng(seed), n, k)
    report = check_op(softmax_cross_entropy_forward, softmax_cross_entropy_backward,
                      logits, y, wrt=[0], seed=seed + 1, label_smoothing=e)
    assert list(report) == ["logits"]
    report.assert_ok(TOL)


# ---- exact behaviour --------------------------------------------------------

def test_loss_is_the_mean_cross_entropy_against_smoothed_targets(rng):
    logits, y = problem(rng, 6, 5)
    for e in (0.0, 0.3, 1.0):
        loss, cache = softmax_cross_entropy_forward(logits, y, e)
        assert loss.shape == () and loss.dtype == np.float64
        p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        q = (1 - e) * np.eye(5)[y] + e / 5
        assert rel(loss, -(q * np.log(p)).sum(axis=1).mean()) < 1e-13
        dlogits = softmax_cross_entropy_backward(1.0, cache)
        assert rel(dlogits, (p - q) / 6) < 1e-13
        assert rel(softmax_cross_entropy_backward(np.array(-2.5), cache), -2.5 * dlogits) < 1e-15


def test_softmax_and_log_softmax(rng):
    x = rng.standard_normal((3, 7)) * 5
    p = softmax(x)
    assert rel(p.sum(axis=1), np.ones(3)) < 1e-15
    assert rel(log_softmax(x), np.log(p)) < 1e-13
    assert rel(softmax(x, axis=0), softmax(x.T).T) < 1e-15
    big = np.array([[1e4, 0.0, -1e4], [-1e4, -1e4, -1e4]])
    np.testing.assert_allclose(softmax(big), [[1, 0, 0], [1 / 3, 1 / 3, 1 / 3]], rtol=1e-15)
    np.testing.assert_allclose(log_softmax(big), [[0, -1e4, -2e4], [-np.log(3)] * 3],
                               rtol=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_huge_logits_stay_finite(dtype):
    logits = np.array([[1e4, 0.0, -1e4], [1e4, 1e4, -1e4], [-1e4, 1e4, 0.0]], dtype=dtype)
    y = np.array([0, 2, 0])
    for e in (0.0, 0.1):
        loss, dlogits = run_ce(logits, y, 1.0, e)
        assert np.isfinite(loss) and np.all(np.isfinite(dlogits))
        assert loss.dtype == dtype and dlogits.dtype == dtype
    loss, dlogits = run_ce(logits, y, 1.0)
    # sample 0 is right (loss 0); sample 1 puts log 2 + 2e4; sample 2 puts 2e4
    assert rel(loss, (np.log(2) + 4e4) / 3) < 1e-6


# ---- against PyTorch autograd -----------------------------------------------

@pytest.mark.torch
@pytest.mark.parametrize("e", [0.0, 0.1, 0.7, 1.0])
def test_cross_entropy_matches_torch(e, rng):
    torch = torch_or_skip()
    for logits, y in [problem(rng, 7, 6), problem(rng, 1, 3), problem(rng, 4, 1),
                      (np.array([[1e4, 0.0, -1e4], [3.0, 1e4, 1e4]]), np.array([1, 2]))]:
        dout = float(rng.standard_normal())
        loss, dlogits = run_ce(logits, y, np.array(dout), e)
        lt = torch.tensor(logits, requires_grad=True)
        loss_t = torch.nn.functional.cross_entropy(lt, torch.tensor(y), label_smoothing=e)
        loss_t.backward(torch.tensor(dout))
        assert rel(loss, loss_t.detach()) < 1e-10
        assert rel(dlogits, lt.grad) < 1e-10


@pytest.mark.torch
def test_softmax_and_log_softmax_match_torch(rng):
    torch = torch_or_skip()
    x = rng.standard_normal((4, 6)) * 10
    x[0, :2] = 1e4
    assert rel(softmax(x), torch.softmax(torch.tensor(x), dim=1)) < 1e-12
    assert rel(log_softmax(x), torch.log_softmax(torch.tensor(x), dim=1)) < 1e-12


# ---- portability, purity, layout, dtype ---------------------------------------

@pytest.mark.parametrize("e", [0.0, 0.2])
def test_array_api_strict_matches_numpy(e, rng):
    logits, y = problem(rng)
    dout = np.array(1.5)
    expected = run_ce(logits, y, dout, e)
    got = run_ce(strict(logits), strict(y), strict(dout), e)
    for g, x in zip(got, expected, strict=True):
        assert type(g).__module__.startswith("array_api_strict"), type(g)
        np.testing.assert_array_equal(host(g), x)
    np.testing.assert_array_equal(host(softmax(strict(logits))), softmax(logits))
    np.testing.assert_array_equal(host(log_softmax(strict(logits))), log_softmax(logits))


def test_leaves_inputs_and_dout_untouched(rng):
    logits, y = problem(rng)
    dout = np.array(0.7)
    before = (logits.copy(), y.copy(), dout.copy())
    run_ce(logits, y, dout, 0.1)
    for a, b in zip((logits, y, dout), before, strict=True):
        np.testing.assert_array_equal(a, b)


def test_non_contiguous_inputs_give_the_same_results(rng):
    logits, y = problem(rng, 6, 9)
    expected = run_ce(logits, y, 1.0, 0.1)
    ys = np.repeat(y, 2)[::2]
    logits_f = np.asfortranarray(logits)
    assert not logits_f.flags.c_contiguous and not ys.flags.c_contiguous
    for g, e in zip(run_ce(logits_f, ys, 1.0, 0.1), expected, strict=True):
        assert rel(g, e) <= 1e-15


def test_float32_in_float32_out(rng):
    logits, y = problem(rng)
    logits = logits.astype(np.float32)
    for dout in (1.0, np.array(2.0), np.array(2.0, dtype=np.float32)):
        got = run_ce(logits, y.astype(np.int32), dout, 0.1)
        ref = run_ce(logits.astype(np.float64), y, dout, 0.1)
        for g, r in zip(got, ref, strict=True):
            assert g.dtype == np.float32
            assert rel(g, r) < 1e-6
    assert softmax(logits).dtype == log_softmax(logits).dtype == np.float32


# ---- errors --------------------------------------------------------------------

def test_errors(rng):
    logits, y = problem(rng, 3, 4)
    f = softmax_cross_entropy_forward
    op = "softmax_cross_entropy_forward"
    with pytest.raises(ValueError, match=rf"{op}: expected logits of rank 2 \(N, K\), got \(3,\)"):
        f(logits[:, 0], y)
    with pytest.raises(ValueError, match=r"expected logits of rank 2 \(N, K\), got \(3, 4, 1\)"):
        f(logits[..., None], y)
    with pytest.raises(ValueError, match=rf"{op}: expected targets of shape \(3,\) to match "
                                         r"logits \(3, 4\), got \(2,\)"):
        f(logits, y[:2])
    with pytest.raises(ValueError, match=r"expected targets of shape \(3,\).*got \(3, 1\)"):
        f(logits, y[:, None])
    with pytest.raises(ValueError, match=rf"{op}: expected integer class indices, got dtype float"):
        f(logits, y.astype(np.float64))
    with pytest.raises(ValueError, match=r"expected class indices in \[0, 4\), got 4"):
        f(logits, np.array([0, 4, 1]))
    with pytest.raises(ValueError, match=r"expected class indices in \[0, 4\), got -1"):
        f(logits, np.array([0, -1, 1]))
    for e in (-0.1, 1.5):
        with pytest.raises(ValueError, match=rf"{op}: expected label_smoothing in \[0, 1\], "
                                             rf"got {e}"):
            f(logits, y, e)
    with pytest.raises(ValueError, match="expected floating-point logits"):
        f(np.ones((3, 4), dtype=np.int64), y)
    with pytest.raises(ValueError, match="same array library"):
        f(strict(logits), y)
    _, cache = f(logits, y)
    with pytest.raises(ValueError, match=r"softmax_cross_entropy_backward: expected a scalar "
                                         r"dout.*got shape \(3,\)"):
        softmax_cross_entropy_backward(np.ones(3), cache)
