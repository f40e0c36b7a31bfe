"""check_maxpool2d: the right answers pass, the typical wrong ones fail with their hint."""

from __future__ import annotations

import numpy as np
import pytest

from minires.exercises import check_maxpool2d
from minires.exercises.pool import CASES, _routed
from minires.functional import maxpool2d_backward, maxpool2d_forward


def make_pool(bug: str = ""):
    """A student's loop max-pool, correct or with one typical bug."""

    def forward(x, kernel_size, stride):
        k, s = kernel_size, stride
        if bug == "stride_one":
            s = 1
        n, c, h, w = x.shape
        oh, ow = (h - k) // s + 1, (w - k) // s + 1
        out = np.zeros((n, c, oh, ow))
        for i in range(oh):
            for j in range(ow):
                win = x[:, :, i * s:i * s + k, j * s:j * s + k]
                out[:, :, i, j] = win.mean(axis=(2, 3)) if bug == "mean" else win.max(axis=(2, 3))
        return out, (x, k, s)

    def backward(dout, cache):
        x, k, s = cache
        n, c = x.shape[:2]
        dx = np.zeros_like(x)
        for i in range(dout.shape[2]):
            for j in range(dout.shape[3]):
                rows, cols = slice(i * s, i * s + k), slice(j * s, j * s + k)
                win = x[:, :, rows, cols].reshape(n, c, k * k)
                g = dout[:, :, i, j]
                if bug == "spread":
                    dx[:, :, rows, cols] += g[:, :, None, None]
                    continue
                if bug == "average":
                    dx[:, :, rows, cols] += g[:, :, None, None] / (k * k)
                    continue
                a = win.argmax(axis=2)
                r, q = a // k, a % k
                if bug == "transposed":
                    r, q = q, r
                for b in range(n):
                    for ch in range(c):
                        if bug == "assign":
                            dx[b, ch, i * s + r[b, ch], j * s + q[b, ch]] = g[b, ch]
                        else:
                            dx[b, ch, i * s + r[b, ch], j * s + q[b, ch]] += g[b, ch]
        if bug == "inplace":
            dout *= 1.0
            dout[...] = 0.0
        return dx

    return forward, backward


def test_library_passes():
    result = check_maxpool2d(lambda x, k, s: maxpool2d_forward(x, k, s), maxpool2d_backward)
    assert result.passed and result.implemented, str(result)
    text = str(result)
    assert "PASSED" in text and text.count("ok ") == 4


def test_loop_solution_passes():
    result = check_maxpool2d(*make_pool())
    assert result.passed, str(result)


def test_overlap_case_has_a_shared_maximum():
    # the "=" mistake is only visible if some pixel wins two windows
    shape, k, s = CASES[1]
    rng = np.random.default_rng(1)
    x = rng.permutation(int(np.prod(shape))).reshape(shape).astype(float)
    dout = rng.standard_normal((shape[0], shape[1], (shape[2] - k) // s + 1,
                                (shape[3] - k) // s + 1))
    assert not np.allclose(_routed(x, dout, k, s, "assign"), _routed(x, dout, k, s, "add"))


@pytest.mark.parametrize("bug, hint", [
    ("spread", "only the window's maximum"),
    ("average", "that is average-pool's backward"),
    ("transposed", "row and column swapped"),
    ("assign", "must add up"),
    ("mean", "that is average pooling"),
])
def test_typical_mistake_gets_its_hint(bug, hint):
    result = check_maxpool2d(*make_pool(bug))
    text = str(result)
    assert not result.passed and result.implemented, text
    assert "WRONG" in text and hint in text, text


def test_assign_passes_without_overlap_but_fails_with_it():
    text = str(check_maxpool2d(*make_pool("assign")))
    assert "ok      dx (kernel 2, stride 2" in text
    assert "WRONG   dx (kernel 3, stride 2" in text


def test_ignored_stride_names_both_shapes():
    text = str(check_maxpool2d(*make_pool("stride_one")))
    assert "has shape (2, 3, 5, 7), expected (2, 3, 3, 4)" in text
    assert "shape of a stride-1 pooling" in text


def test_modified_dout_is_caught():
    result = check_maxpool2d(*make_pool("inplace"))
    assert not result.passed and "modified dout in place" in str(result)


def test_stub_is_not_implemented():
    def forward(x, kernel_size, stride):
        raise NotImplementedError

    result = check_maxpool2d(forward, maxpool2d_backward)
    assert not result.implemented and result.status == "not implemented yet"
    assert "WRONG" not in str(result)


def test_backward_stub_after_a_working_forward():
    def backward(dout, cache):
        raise NotImplementedError

    result = check_maxpool2d(make_pool()[0], backward)
    assert not result.implemented and "not implemented yet" in str(result)


def test_exception_names_the_line():
    def forward(x, kernel_size, stride):
        return x.reshape(5, -1, 3), None

    result = check_maxpool2d(forward, maxpool2d_backward)
    assert not result.passed and "x.reshape(5, -1, 3)" in str(result)


def test_modified_x_is_caught():
    forward, backward = make_pool()

    def in_place(x, kernel_size, stride):
        out, cache = forward(x.copy(), kernel_size, stride)
        x[x < 0] = 0                                      # the caller's x, rectified
        return out, cache

    result = check_maxpool2d(in_place, backward)
    text = str(result)
    assert not result.passed and "ok      dx (kernel 2" in text
    assert "forward modified x in place (kernel 2, stride 2" in text
