"""The checker framework: results, messages, never raising on a wrong answer."""

from __future__ import annotations

import numpy as np
import pytest

from minires.exercises import CheckResult, check_relu
from minires.exercises.core import MISSING, Check, largest_error
from minires.functional import relu_backward, relu_forward


def test_library_relu_passes():
    result = check_relu(relu_forward, relu_backward)
    assert result.passed and result.implemented, str(result)
    assert "PASSED" in str(result) and "dx" in str(result)


def test_stub_is_not_implemented_and_does_not_raise():
    def forward(x):
        raise NotImplementedError

    result = check_relu(forward, relu_backward)
    assert not result.passed and not result.implemented
    assert result.status == "not implemented yet"
    assert "not implemented yet" in str(result)
    assert "WRONG" not in str(result)


def test_backward_stub_after_working_forward():
    def backward(dout, cache):
        raise NotImplementedError("fill me")

    result = check_relu(relu_forward, backward)
    assert not result.implemented and "not implemented yet" in str(result)


def test_exception_is_reported_with_the_students_line():
    def forward(x):
        return x.reshape(7, -1, 3), None                  # raises ValueError

    result = check_relu(forward, relu_backward)
    assert not result.passed and result.implemented
    text = str(result)
    assert "ValueError" in text and "x.reshape(7, -1, 3)" in text


def test_identity_forward_gets_its_hint():
    result = check_relu(lambda x: (x, x), lambda dout, x: dout * (x > 0))
    assert not result.passed
    assert "WRONG   out" in str(result) and "negative inputs must become 0" in str(result)


def test_inverted_mask_gets_its_hint():
    result = check_relu(lambda x: (np.maximum(x, 0), x), lambda dout, x: dout * (x <= 0))
    text = str(result)
    assert not result.passed
    assert "WRONG   dx" in text and "the mask is inverted" in text


def test_in_place_backward_is_caught():
    def backward(dout, x):
        dout[x <= 0] = 0                                  # modifies the incoming gradient
        return dout

    result = check_relu(lambda x: (np.maximum(x, 0), x), backward)
    assert not result.passed
    assert "dout was modified in place" in str(result)


def test_wrong_return_type_is_named():
    result = check_relu(lambda x: np.maximum(x, 0), relu_backward)
    assert not result.passed
    assert "should return a tuple (out, cache), got a ndarray" in str(result)


def test_compare_shape_mismatch_names_both_shapes_and_transpose():
    check = Check("c")
    assert not check.compare("dw", np.zeros((3, 2)), np.zeros((2, 3)), tol=1e-8)
    result = check.result()
    assert "dw has shape (3, 2), expected (2, 3)" in str(result)
    assert "transposed shape" in str(result)


def test_compare_constant_factor_and_sign_hints():
    expected = np.arange(1.0, 7.0).reshape(2, 3)
    check = Check("c")
    check.compare("db", expected * 4, expected, tol=1e-8)
    check.compare("dx", -expected, expected, tol=1e-8)
    text = str(check.result())
    assert "times 4" in text and "wrong sign" in text


def test_compare_permuted_values_hint():
    expected = np.arange(6.0).reshape(2, 3)
    check = Check("c")
    check.compare("out", expected.T.reshape(2, 3), expected, tol=1e-8)
    assert "wrong places" in str(check.result())


def test_compare_none_nan_and_non_numeric():
    check = Check("c")
    assert not check.compare("a", None, np.zeros(2), tol=1e-8)
    assert not check.compare("b", np.array([np.nan, 0.0]), np.zeros(2), tol=1e-8)
    assert not check.compare("c", "text", np.zeros(2), tol=1e-8)
    text = str(check.result())
    assert "a is None" in text and "b contains NaN" in text and "c is a str" in text


def test_call_returns_missing_and_result_is_falsey():
    check = Check("c")
    assert check.call("f", lambda: 1 / 0) is MISSING
    result = check.result()
    assert isinstance(result, CheckResult) and not result
    assert "ZeroDivisionError" in str(result)
    try:
        result.assert_ok()
    except AssertionError as exc:
        assert "ZeroDivisionError" in str(exc)
    else:
        raise AssertionError("assert_ok did not raise")


def test_all_zero_answer_gets_its_own_hint_not_times_zero():
    check = Check("c")
    check.compare("dx", np.zeros((2, 3)), np.arange(1.0, 7.0).reshape(2, 3), tol=1e-8)
    text = str(check.result())
    assert "dx is all zeros" in text and "times 0" not in text


def test_merge_folds_configurations_and_stops_at_the_first_failure():
    overall = Check("c")
    good = Check("c")
    good.compare("out", np.ones(3), np.ones(3), tol=1e-10)
    assert overall.merge(good, "x (1, 3)", "ok      x (1, 3): out matches", left=2)
    bad = Check("c")
    bad.compare("out", -np.ones(3), np.ones(3), tol=1e-10)
    assert not overall.merge(bad, "x (2, 3)", "unused", left=1)
    result = overall.result()
    text = str(result)
    assert not result.passed and result.implemented, text
    assert "ok      x (1, 3): out matches" in text and "unused" not in text
    assert "in the configuration x (2, 3):" in text and "\n    WRONG   out" in text, text
    assert "sign" in text                                     # the sub-check's hint is kept
    assert "(stopped here: 1 more configuration to go once this one passes)" in text


def test_merge_of_the_last_configuration_or_a_stub():
    overall = Check("c")
    bad = Check("c")
    bad.compare("out", -np.ones(3), np.ones(3), tol=1e-10)
    assert not overall.merge(bad, "x (2, 3)", "unused")
    assert "stopped here" not in str(overall.result())
    overall, stub = Check("c"), Check("c")
    stub.call("forward", lambda: (_ for _ in ()).throw(NotImplementedError))
    assert not overall.merge(stub, "x (2, 3)", "unused", left=3)
    result = overall.result()
    assert not result.implemented and result.status == "not implemented yet"
    assert "configuration" not in str(result), str(result)


def test_in_place_forward_is_caught():
    def forward(x):
        mask = x > 0
        x[~mask] = 0                                      # the caller's x, zeroed
        return x, mask

    result = check_relu(forward, lambda dout, mask: dout * mask)
    text = str(result)
    assert not result.passed and "ok      out" in text and "ok      dx" in text
    assert "x was modified in place; a forward pass must leave its inputs untouched" in text


def test_unchanged_names_who_received_the_input():
    check = Check("c")
    assert check.unchanged("x", np.zeros(3), np.zeros(3), by="im2col")
    assert not check.unchanged("x", np.zeros(3), np.ones(3), by="im2col")
    assert "x was modified in place; im2col must leave its inputs untouched" in check.lines[0]
    assert not check.unchanged("dout", np.zeros(3), np.ones(3))
    assert "a backward pass must" in check.lines[1] and "another branch" in check.lines[1]


def test_an_answer_off_by_float32_rounding_is_named_not_misplaced():
    expected = np.random.default_rng(0).standard_normal((4, 5))
    check = Check("c")
    assert not check.compare("out", expected.astype(np.float32), expected, tol=1e-10)
    assert len(check.hints) == 1 and "precision of float32" in check.hints[0]
    assert "wrong places" not in check.hints[0]


def test_largest_error_is_the_worst_pair():
    a = np.ones(3)
    assert largest_error([(a, a), (a * 1.5, a), (a * 1.1, a)]) == pytest.approx(0.5 / 2.5)
