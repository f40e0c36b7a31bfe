"""Chapter 09's checkers: check_warmup_schedule and check_confusion_matrix.
Correct answers pass, each typical wrong one fails with its hint, stubs are
"not implemented yet"; and minires.train.confusion_matrix itself."""

from __future__ import annotations

import math

import numpy as np
import pytest

from minires.exercises import check_confusion_matrix, check_warmup_schedule
from minires.train import confusion_matrix

# ---- check_warmup_schedule ----------------------------------------------------------


def lr_right(step, base_lr, warmup_steps, total_steps, start_factor):
    if step < warmup_steps:
        return base_lr * (start_factor + (1 - start_factor) * step / warmup_steps)
    phase = (step - warmup_steps) / (total_steps - warmup_steps)
    return base_lr * (1 + math.cos(math.pi * phase)) / 2


def with_warmup(warm):
    """The right decay after a given (wrong) warm-up."""
    def fn(step, base_lr, warmup_steps, total_steps, start_factor):
        if step < warmup_steps:
            return warm(step, base_lr, warmup_steps, start_factor)
        return lr_right(step, base_lr, warmup_steps, total_steps, start_factor)
    return fn


def with_decay(decay):
    """The right warm-up before a given (wrong) decay."""
    def fn(step, base_lr, warmup_steps, total_steps, start_factor):
        if step < warmup_steps:
            return lr_right(step, base_lr, warmup_steps, total_steps, start_factor)
        return decay(step, base_lr, warmup_steps, total_steps)
    return fn


def cosine(phase, base_lr):
    return base_lr * (1 + math.cos(math.pi * phase)) / 2


def test_right_schedule_passes():
    result = check_warmup_schedule(lr_right)
    assert result.passed and result.implemented, str(result)
    assert "ok      lr at steps 0..4 (warm-up)" in str(result)
    assert "ok      lr at steps 8..29 (decay)" in str(result)


def test_numpy_scalars_pass():
    result = check_warmup_schedule(lambda *a: np.float32(lr_right(*a)).astype(np.float64))
    assert result.passed, str(result)


def test_stub_is_not_implemented():
    def stub(step, base_lr, warmup_steps, total_steps, start_factor):
        raise NotImplementedError

    result = check_warmup_schedule(stub)
    assert not result.implemented and "not implemented yet" in str(result)
    assert "hint" not in str(result)


@pytest.mark.parametrize("warm, hint", [
    (lambda t, b, w, s: b * t / w, "the warm-up starts at 0"),
    (lambda t, b, w, s: b * (s + (1 - s) * (t + 1) / w), "the warm-up is one step ahead"),
    (lambda t, b, w, s: b * s, "the paper's constant warm-up"),
    (lambda t, b, w, s: b, "there is no warm-up"),
])
def test_wrong_warmups_are_recognised(warm, hint):
    result = check_warmup_schedule(with_warmup(warm))
    text = str(result)
    assert not result.passed and result.implemented
    assert "WRONG   lr at steps 0..4 (warm-up)" in text
    assert "ok      lr at steps 5..19 (decay)" in text
    assert hint in text, text


@pytest.mark.parametrize("decay, hint", [
    (lambda t, b, w, T: cosine(t / T, b), "the cosine is computed from step 0"),
    (lambda t, b, w, T: cosine((t - w) / T, b), "lasts total_steps steps"),
    (lambda t, b, w, T: cosine(t / (T - w), b), "uses step instead of step - warmup_steps"),
    (lambda t, b, w, T: cosine((t - w + 1) / (T - w), b), "the decay is one step ahead"),
    (lambda t, b, w, T: 2 * cosine((t - w) / (T - w), b), "(1 + cos(...)) / 2"),
    (lambda t, b, w, T: b, "the lr stays at base_lr after the warm-up"),
])
def test_wrong_decays_are_recognised(decay, hint):
    result = check_warmup_schedule(with_decay(decay))
    text = str(result)
    assert not result.passed
    assert "ok      lr at steps 0..4 (warm-up)" in text
    assert "WRONG   lr at steps 5..19 (decay)" in text
    assert hint in text, text


def test_constants_copied_from_the_chapter_fail_the_second_setting():
    def fixed(step, base_lr, warmup_steps, total_steps, start_factor):
        return lr_right(step, base_lr, 5, 20, 0.1)

    result = check_warmup_schedule(fixed)
    text = str(result)
    assert not result.passed
    assert "with base_lr=0.4, warmup_steps=8" in text and "WRONG" in text


def test_a_list_per_step_is_reported():
    result = check_warmup_schedule(lambda *a: [lr_right(*a)] * 2)
    assert not result.passed and "one number per step" in str(result)


def test_an_error_names_the_student_line():
    def broken(step, base_lr, warmup_steps, total_steps, start_factor):
        return base_lr / (warmup_steps - step)       # divides by zero at the end of warm-up

    result = check_warmup_schedule(broken)
    assert not result.passed and result.implemented
    assert "raised ZeroDivisionError" in str(result) and "warmup_steps - step" in str(result)


# ---- check_confusion_matrix ---------------------------------------------------------


def cm_loop(y_true, y_pred, num_classes):
    c = np.zeros((num_classes, num_classes), dtype=np.int64)
    for t, p in zip(y_true, y_pred, strict=True):
        c[t, p] += 1
    return c


def test_library_and_loop_pass():
    for fn in (confusion_matrix, cm_loop):
        result = check_confusion_matrix(fn)
        assert result.passed and result.implemented, str(result)
    assert "ok      C (num_classes=6, classes 4 and 5 absent)" in str(result)


def test_confusion_stub_is_not_implemented():
    def stub(y_true, y_pred, num_classes):
        raise NotImplementedError

    result = check_confusion_matrix(stub)
    assert not result.implemented and "not implemented yet" in str(result)


def test_transposed_matrix_is_recognised():
    result = check_confusion_matrix(lambda t, p, k: cm_loop(t, p, k).T)
    assert not result.passed and "C is transposed" in str(result)


def test_buffered_fancy_index_is_recognised():
    def buffered(y_true, y_pred, num_classes):
        c = np.zeros((num_classes, num_classes))
        c[y_true, y_pred] += 1
        return c

    text = str(check_confusion_matrix(buffered))
    assert "counted at most once" in text and "np.add.at" in text


def test_buffered_and_transposed_is_recognised():
    def buffered(y_true, y_pred, num_classes):
        c = np.zeros((num_classes, num_classes))
        c[y_pred, y_true] += 1
        return c

    text = str(check_confusion_matrix(buffered))
    assert "counted at most once" in text and "transposed" in text


def test_fractions_are_recognised():
    overall = check_confusion_matrix(lambda t, p, k: cm_loop(t, p, k) / len(t))
    assert "fractions of all samples" in str(overall)

    def per_row(y_true, y_pred, num_classes):
        c = cm_loop(y_true, y_pred, num_classes).astype(float)
        return c / c.sum(axis=1, keepdims=True)

    text = str(check_confusion_matrix(per_row))
    assert "FAILED" in text and "fractions per row" in text


def test_per_row_fractions_with_an_empty_row_say_why_there_is_a_nan():
    def per_row(y_true, y_pred, num_classes):
        c = cm_loop(y_true, y_pred, num_classes).astype(float)
        with np.errstate(invalid="ignore"):
            return c / np.maximum(c.sum(axis=1, keepdims=True), 1) \
                if num_classes == 4 else c / c.sum(axis=1, keepdims=True)

    text = str(check_confusion_matrix(per_row))
    assert "FAILED" in text and "fractions per row" in text


def test_nan_rows_get_their_hint():
    def per_row(y_true, y_pred, num_classes):
        c = cm_loop(y_true, y_pred, num_classes).astype(float)
        if num_classes == 4:
            return cm_loop(y_true, y_pred, num_classes)
        with np.errstate(invalid="ignore"):
            return c / c.sum(axis=1, keepdims=True)

    result = check_confusion_matrix(per_row)
    assert not result.passed and "contains NaN" in str(result)
    assert "dividing each row by its sum" in str(result)


def test_size_from_the_labels_is_recognised():
    def from_data(y_true, y_pred, num_classes):
        k = int(max(y_true.max(), y_pred.max())) + 1
        return cm_loop(y_true, y_pred, k)

    result = check_confusion_matrix(from_data)
    text = str(result)
    assert not result.passed
    assert "C (num_classes=6, classes 4 and 5 absent) has shape (4, 4), expected (6, 6)" in text
    assert "take its size from num_classes (6)" in text


def test_modified_labels_fail():
    def sorting(y_true, y_pred, num_classes):
        c = cm_loop(y_true, y_pred, num_classes)
        y_true.sort()
        return c

    assert "modified in place" in str(check_confusion_matrix(sorting))


def test_library_confusion_matrix():
    c = confusion_matrix(np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 2, 2, 0]), 4)
    assert c.dtype == np.int64 and c.shape == (4, 4)
    assert c.tolist() == [[1, 1, 0, 0], [0, 1, 0, 0], [1, 0, 2, 0], [0, 0, 0, 0]]
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(np.array([0, 4]), np.array([0, 1]), 4)
    with pytest.raises(ValueError, match="2 labels, y_pred 3"):
        confusion_matrix(np.array([0, 1]), np.array([0, 1, 1]), 4)
