"""Chapter 02's checkers for the fully connected layer and softmax
cross-entropy: minires's own pairs pass, typical wrong ones fail with their
hint, stubs are "not implemented yet". (check_relu: test_exercises_core.py.)"""

from __future__ import annotations

import warnings

import numpy as np

from minires.exercises import check_linear, check_softmax_cross_entropy
from minires.exercises.core import Check
from minires.functional import (
    linear_backward,
    linear_forward,
    softmax_cross_entropy_backward,
    softmax_cross_entropy_forward,
)

# ---- check_linear ----------------------------------------------------------------


def fwd(x, w, b):
    return x @ w.T + b, (x, w)


def bwd(dout, cache):
    x, w = cache
    return dout @ w, dout.T @ x, dout.sum(axis=0)


def test_library_linear_passes():
    result = check_linear(linear_forward, linear_backward)
    assert result.passed and result.implemented, str(result)
    for name in ("out", "dx", "dw", "db"):
        assert f"ok      {name}" in str(result)


def test_plain_linear_passes():
    assert check_linear(fwd, bwd).passed


def test_linear_stubs_are_not_implemented():
    def stub(*args):
        raise NotImplementedError

    for result in (check_linear(stub, bwd), check_linear(fwd, stub)):
        assert not result.implemented and "not implemented yet" in str(result)
        assert "hint" not in str(result)


def test_transposed_weight_gradient_is_recognised():
    def backward(dout, cache):
        x, w = cache
        return dout @ w, x.T @ dout, dout.sum(axis=0)

    text = str(check_linear(fwd, backward))
    assert "dw has shape (5, 3), expected (3, 5)" in text
    assert "dw = dout.T @ x" in text


def test_unsummed_bias_gradient_is_recognised():
    def backward(dout, cache):
        x, w = cache
        return dout @ w, dout.T @ x, dout

    result = check_linear(fwd, backward)
    assert not result.passed
    assert "db has shape (4, 3), expected (3,)" in str(result)
    assert "db = dout.sum(axis=0)" in str(result)


def test_bias_gradient_over_the_wrong_axis_or_as_a_mean_is_recognised():
    def wrong_axis(dout, cache):
        x, w = cache
        return dout @ w, dout.T @ x, dout.sum(axis=1)

    def mean(dout, cache):
        x, w = cache
        return dout @ w, dout.T @ x, dout.mean(axis=0)

    assert "summed over the wrong axis" in str(check_linear(fwd, wrong_axis))
    text = str(check_linear(fwd, mean))
    assert "WRONG   db" in text and "mean of dout over the batch" in text


def test_dx_with_transposed_weight_is_named_after_the_error():
    def backward(dout, cache):
        x, w = cache
        return dout @ w.T, dout.T @ x, dout.sum(axis=0)

    result = check_linear(fwd, backward)
    text = str(result)
    assert not result.passed and result.implemented
    assert "backward(dout, cache) raised ValueError" in text
    assert "dx = dout @ w.T" in text and "dw = x.T" not in text


def test_forward_in_the_other_layout_is_named():
    def forward(x, w, b):
        return x @ w + b, (x, w)

    def backward(dout, cache):
        x, w = cache
        return dout @ w.T, x.T @ dout, dout.sum(axis=0)

    text = str(check_linear(forward, backward))
    assert "forward(x, w, b) raised ValueError" in text
    assert "out = x @ w.T + b" in text and "dx = dout @ w.T" in text and "dw = dout.T @ x" in text


def test_missing_bias_and_dw_divided_by_n_are_recognised():
    def forward(x, w, b):
        return x @ w.T, (x, w)

    def backward(dout, cache):
        x, w = cache
        return dout @ w, dout.T @ x / x.shape[0], dout.sum(axis=0)

    assert "out is missing the bias" in str(check_linear(forward, bwd))
    assert "dw is divided by N" in str(check_linear(fwd, backward))


def test_linear_in_place_dout_fails():
    def backward(dout, cache):
        x, w = cache
        db = dout.sum(axis=0)
        dout *= 1.0                       # harmless
        dout += 0                         # harmless
        dout[0] = 0                       # not harmless
        return dout @ w, dout.T @ x, db

    assert "dout was modified in place" in str(check_linear(fwd, backward))


# ---- check_softmax_cross_entropy ---------------------------------------------------------

def ce_forward(logits, y, label_smoothing=0.0):
    n, k = logits.shape
    q = (1 - label_smoothing) * np.eye(k)[y] + label_smoothing / k
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -(q * logp).sum() / n, (np.exp(logp), q)


def ce_backward(dout, cache):
    p, q = cache
    return dout * (p - q) / p.shape[0]


def variant(loss_scale=1.0, grad=None, smoothing=True, off_classes=False, stable=True):
    """A softmax cross-entropy with one typical mistake."""
    def forward(logits, y, label_smoothing=0.0):
        n, k = logits.shape
        e = label_smoothing if smoothing else 0.0
        onehot = np.eye(k)[y]
        q = (1 - e) * onehot + (e / (k - 1) * (1 - onehot) if off_classes else e / k)
        z = logits - logits.max(axis=1, keepdims=True) if stable else logits
        p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        return -(q * np.log(p)).sum() / n * loss_scale, (p, q)

    def backward(dout, cache):
        p, q = cache
        return grad(dout, p, q) if grad else dout * (p - q) / p.shape[0]

    return forward, backward


def test_library_cross_entropy_passes():
    result = check_softmax_cross_entropy(softmax_cross_entropy_forward,
                                         softmax_cross_entropy_backward)
    assert result.passed, str(result)
    assert "loss (label_smoothing=0.1)" in str(result)
    assert "dlogits (logits around 1000)" in str(result)


def test_plain_cross_entropy_passes():
    assert check_softmax_cross_entropy(ce_forward, ce_backward).passed
    assert check_softmax_cross_entropy(*variant()).passed


def test_cross_entropy_stub_is_not_implemented():
    def stub(*args, **kwargs):
        raise NotImplementedError

    for result in (check_softmax_cross_entropy(stub, ce_backward),
                   check_softmax_cross_entropy(ce_forward, stub)):
        assert not result.implemented and "not implemented yet" in str(result)


def test_sum_instead_of_mean_is_recognised():
    def grad(dout, p, q):
        return dout * (p - q)

    text = str(check_softmax_cross_entropy(*variant(loss_scale=5.0, grad=grad)))
    assert "WRONG   loss:" in text and "divide by N" in text
    assert "WRONG   dlogits:" in text and "missing the 1/N" in text


def test_forgetting_the_one_hot_is_recognised():
    text = str(check_softmax_cross_entropy(
        *variant(grad=lambda dout, p, q: dout * p / p.shape[0])))
    assert "WRONG   dlogits:" in text and "subtract the target q" in text


def test_ignoring_dout_is_recognised():
    text = str(check_softmax_cross_entropy(
        *variant(grad=lambda dout, p, q: (p - q) / p.shape[0])))
    assert "dout is ignored" in text


def test_mean_over_all_entries_is_recognised():
    text = str(check_softmax_cross_entropy(*variant(loss_scale=0.25)))
    assert "divided by N * K" in text


def test_unstable_softmax_is_recognised():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = check_softmax_cross_entropy(*variant(stable=False))
    text = str(result)
    assert not result.passed
    assert "ok      loss:" in text and "ok      dlogits (label_smoothing=0.1)" in text
    assert "WRONG   loss (logits around 1000): nan" in text
    assert "log-sum-exp" in text


def test_ignored_label_smoothing_is_recognised():
    text = str(check_softmax_cross_entropy(*variant(smoothing=False)))
    assert "ok      loss:" in text
    assert "WRONG   loss (label_smoothing=0.1)" in text and "label_smoothing is ignored" in text


def test_other_smoothing_convention_is_recognised():
    text = str(check_softmax_cross_entropy(*variant(off_classes=True)))
    assert "WRONG   loss (label_smoothing=0.1)" in text and "K - 1 other classes" in text


def test_no_label_smoothing_argument_is_reported():
    def forward(logits, y):
        return ce_forward(logits, y)

    result = check_softmax_cross_entropy(forward, ce_backward)
    text = str(result)
    assert not result.passed and "ok      loss:" in text
    assert "TypeError" in text and "label_smoothing" in text


def test_logits_modified_in_place_fail():
    def forward(logits, y, label_smoothing=0.0):
        logits -= logits.max(axis=1, keepdims=True)
        return ce_forward(logits, y, label_smoothing)

    assert "logits were modified in place" in str(check_softmax_cross_entropy(forward,
                                                                             ce_backward))


def test_no_constant_factor_hint_for_a_scalar():
    check = Check("c")
    check.compare("loss", 3.0, 2.0, tol=1e-10)
    assert "constant factor" not in str(check.result())


def test_linear_forward_changing_its_inputs_fails():
    def forward(x, w, b):
        out = x @ w.T + b
        b -= b                                            # the caller's bias, zeroed
        return out, (x, w)

    result = check_linear(forward, bwd)
    text = str(result)
    assert not result.passed and "ok      out" in text and "ok      dw" in text
    assert "b was modified in place; a forward pass must" in text
