"""Chapter 01's checkers: right answers pass, typical wrong ones fail with
their hint, stubs are "not implemented yet"."""

from __future__ import annotations

import numpy as np

from minires.exercises import check_numerical_gradient, check_softmax
from minires.gradcheck import check_op

# ---- numerical gradient --------------------------------------------------------

def centred(f, x, dout, h):
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + h
        plus = np.sum(f(x) * dout)
        x[i] = old - h
        minus = np.sum(f(x) * dout)
        x[i] = old
        grad[i] = (plus - minus) / (2 * h)
    return grad


def test_centred_difference_passes():
    result = check_numerical_gradient(centred)
    assert result.passed and result.implemented, str(result)
    assert "ok      grad" in str(result) and "24 times for the 12 entries" in str(result)


def test_centred_difference_on_a_copy_passes():
    def on_copy(f, x, dout, h):
        x = x.astype(float)                               # a copy
        grad = np.empty_like(x)
        for i in range(x.size):
            e = np.zeros_like(x)
            e.flat[i] = h
            grad.flat[i] = np.sum((f(x + e) - f(x - e)) * dout) / (2 * h)
        return grad

    assert check_numerical_gradient(on_copy).passed


def test_stub_is_not_implemented():
    def stub(f, x, dout, h):
        raise NotImplementedError

    result = check_numerical_gradient(stub)
    assert not result.implemented and "not implemented yet" in str(result)
    assert "hint" not in str(result)


def test_forward_difference_is_recognised():
    def forward(f, x, dout, h):
        grad = np.zeros_like(x)
        base = np.sum(f(x) * dout)
        for i in np.ndindex(x.shape):
            old = x[i]
            x[i] = old + h
            grad[i] = (np.sum(f(x) * dout) - base) / h
            x[i] = old
        return grad

    result = check_numerical_gradient(forward)
    text = str(result)
    assert not result.passed and "WRONG   grad" in text
    assert "forward difference" in text and "h^2" in text


def test_not_restoring_x_is_recognised():
    def no_restore(f, x, dout, h):
        x = x.copy()
        grad = np.zeros_like(x)
        for i in np.ndindex(x.shape):
            x[i] += h
            plus = np.sum(f(x) * dout)
            x[i] -= 2 * h
            grad[i] = (plus - np.sum(f(x) * dout)) / (2 * h)
        return grad

    result = check_numerical_gradient(no_restore)
    assert not result.passed
    assert "x is not restored" in str(result)


def test_changing_the_callers_x_fails():
    def in_place(f, x, dout, h):
        grad = np.zeros_like(x)
        for i in np.ndindex(x.shape):
            old = x[i]
            x[i] = old + h
            plus = np.sum(f(x) * dout)
            x[i] = old - h
            grad[i] = (plus - np.sum(f(x) * dout)) / (2 * h)
        return grad

    result = check_numerical_gradient(in_place)
    text = str(result)
    assert not result.passed
    assert "x was changed by up to" in text and "x[i] = old" in text
    assert text.count("hint:") == 1


def test_rounding_of_x_is_only_a_note():
    def add_subtract(f, x, dout, h):
        grad = np.zeros_like(x)
        for i in np.ndindex(x.shape):
            x[i] += h
            plus = np.sum(f(x) * dout)
            x[i] -= 2 * h
            minus = np.sum(f(x) * dout)
            x[i] += h
            grad[i] = (plus - minus) / (2 * h)
        return grad

    result = check_numerical_gradient(add_subtract)
    assert result.passed, str(result)


def test_dividing_by_h_is_recognised():
    def by_h(f, x, dout, h):
        return centred(f, x, dout, h) * 2

    result = check_numerical_gradient(by_h)
    assert not result.passed and "divide by 2h" in str(result)


def test_ignoring_dout_is_recognised():
    def no_dout(f, x, dout, h):
        return centred(f, x, np.ones_like(dout), h)

    result = check_numerical_gradient(no_dout)
    assert not result.passed and "upstream gradient dout is ignored" in str(result)


def test_one_number_per_row_is_named():
    def rows(f, x, dout, h):
        return np.array([0.0] * x.shape[0])

    result = check_numerical_gradient(rows)
    text = str(result)
    assert not result.passed and "grad has shape (3,), expected (3, 4)" in text
    assert "np.ndindex" in text


def test_exception_in_student_code_is_reported():
    def broken(f, x, dout, h):
        grad = np.zeros_like(x)
        grad[0] = (f(x + h) - f(x - h)) / (2 * h)   # an array into a row of 4
        return grad

    result = check_numerical_gradient(broken)
    assert not result.passed and result.implemented and "ValueError" in str(result)


# ---- softmax ------------------------------------------------------------------

def softmax_forward(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    p = e / e.sum(axis=-1, keepdims=True)
    return p, p


def softmax_backward(dout, p):
    return p * (dout - np.sum(p * dout, axis=-1, keepdims=True))


def test_reference_softmax_backward_passes_gradcheck():
    x = np.random.default_rng(0).standard_normal((3, 5))
    check_op(softmax_forward, softmax_backward, x).assert_ok(1e-8)


def test_softmax_solution_passes():
    result = check_softmax(softmax_forward, softmax_backward)
    assert result.passed, str(result)
    assert "p for logits around 1000" in str(result)


def test_softmax_stub_is_not_implemented():
    def stub(dout, p):
        raise NotImplementedError

    result = check_softmax(softmax_forward, stub)
    assert not result.implemented and "not implemented yet" in str(result)


def test_diagonal_jacobian_is_recognised():
    result = check_softmax(softmax_forward, lambda dout, p: p * (1 - p) * dout)
    assert not result.passed and "only the diagonal of the Jacobian" in str(result)


def test_missing_denominator_term_is_recognised():
    result = check_softmax(softmax_forward, lambda dout, p: p * dout)
    assert not result.passed and "misses the term of the denominator" in str(result)


def test_unweighted_sum_is_recognised():
    result = check_softmax(softmax_forward,
                           lambda dout, p: p * (dout - dout.sum(axis=-1, keepdims=True)))
    assert not result.passed and "weight each dout_j by p_j" in str(result)


def test_wrong_axis_is_recognised():
    result = check_softmax(softmax_forward,
                           lambda dout, p: p * (dout - np.sum(p * dout, axis=0, keepdims=True)))
    assert not result.passed and "wrong axis" in str(result)


def test_unstable_softmax_is_recognised():
    def unstable(x):
        e = np.exp(x)
        p = e / e.sum(axis=-1, keepdims=True)
        return p, p

    with np.errstate(over="ignore", invalid="ignore"):
        result = check_softmax(unstable, softmax_backward)
    text = str(result)
    assert not result.passed and "ok      dx" in text
    assert "NaN or inf" in text and "Subtract each row's maximum" in text


def test_softmax_over_the_batch_is_recognised():
    def by_column(x):
        e = np.exp(x - x.max(axis=0, keepdims=True))
        p = e / e.sum(axis=0, keepdims=True)
        return p, p

    result = check_softmax(by_column, softmax_backward)
    assert not result.passed and "over the first axis" in str(result)


def test_softmax_in_place_backward_fails():
    def in_place(dout, p):
        dout -= np.sum(p * dout, axis=-1, keepdims=True)
        dout *= p
        return dout

    result = check_softmax(softmax_forward, in_place)
    assert not result.passed and "dout was modified in place" in str(result)


def test_softmax_forward_in_place_fails():
    def in_place(x):
        x -= x.max(axis=-1, keepdims=True)              # the caller's logits, shifted
        np.exp(x, out=x)
        x /= x.sum(axis=-1, keepdims=True)
        return x, x

    result = check_softmax(in_place, softmax_backward)
    text = str(result)
    assert not result.passed and "ok      p:" in text and "ok      dx" in text
    assert "x was modified in place; a forward pass must" in text


def test_a_loop_over_two_axes_only_fails_on_a_3d_x():
    def two_axes(f, x, dout, h):
        grad = np.zeros_like(x)
        for i in range(x.shape[0]):
            for j in range(x.shape[1]):
                old = x[i, j].copy()
                x[i, j] = old + h
                plus = np.sum(f(x) * dout)
                x[i, j] = old - h
                minus = np.sum(f(x) * dout)
                x[i, j] = old
                grad[i, j] = (plus - minus) / (2 * h)
        return grad

    result = check_numerical_gradient(two_axes)
    text = str(result)
    assert not result.passed and "ok      grad:" in text          # right on x (3, 4)
    assert "WRONG   grad for x (2, 3, 4), h = 1e-06" in text and "np.ndindex" in text


def test_a_gradient_kept_in_float32_fails_at_a_small_step():
    def in_float32(f, x, dout, h):
        return centred(f, x, dout, h).astype(np.float32)

    result = check_numerical_gradient(in_float32)
    text = str(result)
    assert not result.passed and "ok      grad:" in text
    assert "WRONG   grad for x (2, 3, 4)" in text and "float32" in text


def test_centred_difference_passes_the_small_step_too():
    text = str(check_numerical_gradient(centred))
    assert "ok      grad for x (2, 3, 4), h = 1e-06" in text
