"""Checkers for chapter 09 (training a ResNet well): a learning-rate schedule
with warm-up, and the confusion matrix."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..nn import Parameter
from ..optim import SGD, CosineAnnealingLR, LinearLR, SequentialLR
from ..train import confusion_matrix
from .core import MISSING, Check, CheckResult, as_float64

# ---- warm-up, then cosine decay ------------------------------------------------------


def _reference_lrs(base_lr: float, warmup_steps: int, total_steps: int,
                   start_factor: float) -> np.ndarray:
    """The lr of iterations 0 .. total_steps - 1 from minires's schedules,
    stepped once per iteration (the same numbers as PyTorch's)."""
    opt = SGD([Parameter(np.zeros(1))], lr=base_lr)
    warm = LinearLR(opt, start_factor=start_factor, total_iters=warmup_steps)
    decay = CosineAnnealingLR(opt, T_max=total_steps - warmup_steps)
    schedule = SequentialLR(opt, [warm, decay], milestones=[warmup_steps])
    lrs = []
    for _ in range(total_steps):
        lrs.append(opt.param_groups[0]["lr"])
        schedule.step()
    return np.array(lrs)


def _variants(base: float, w: int, total: int, s: float) -> dict[str, np.ndarray]:
    """Typical wrong schedules, each over iterations 0 .. total - 1."""
    t = np.arange(total, dtype=np.float64)
    warm_t, decay_t = t[:w], t[w:]
    cos = lambda phase: base * (1 + np.cos(np.pi * phase)) / 2  # noqa: E731
    return {
        "warm_from_zero": base * warm_t / w,
        "warm_one_ahead": base * (s + (1 - s) * (warm_t + 1) / w),
        "warm_flat": np.full(w, base * s),
        "warm_full": np.full(w, base),
        "cos_unshifted": cos(decay_t / total),
        "cos_shifted_total": cos((decay_t - w) / total),
        "cos_unshifted_short": cos(decay_t / (total - w)),
        "cos_one_ahead": cos((decay_t - w + 1) / (total - w)),
        "cos_no_half": 2 * cos((decay_t - w) / (total - w)),
        "constant": np.full(total - w, base),
    }


_WARM_HINTS = {
    "warm_from_zero": "the warm-up starts at 0, so the first update is wasted: it should start "
                      "at start_factor * base_lr and rise linearly, base_lr * (start_factor + "
                      "(1 - start_factor) * step / warmup_steps).",
    "warm_one_ahead": "the warm-up is one step ahead: at step 0 the lr is start_factor * "
                      "base_lr, and it reaches base_lr at step warmup_steps (the first step "
                      "after the warm-up), as PyTorch's LinearLR does; use step / warmup_steps, "
                      "not (step + 1) / warmup_steps.",
    "warm_flat": "the warm-up stays at start_factor * base_lr: that is the paper's constant "
                 "warm-up (ConstantLR); this exercise asks for a linear one, rising from "
                 "start_factor * base_lr towards base_lr.",
    "warm_full": "there is no warm-up: during the first warmup_steps steps the lr must rise "
                 "from start_factor * base_lr towards base_lr.",
}

_DECAY_HINTS = {
    "cos_unshifted": "the cosine is computed from step 0 over total_steps, so it has already "
                     "fallen when the warm-up ends (a jump down): it starts when the warm-up "
                     "ends, cos(pi * (step - warmup_steps) / (total_steps - warmup_steps)).",
    "cos_shifted_total": "the cosine starts at the end of the warm-up but lasts total_steps "
                         "steps, so the lr is still far from 0 at the end: the decay lasts "
                         "total_steps - warmup_steps steps.",
    "cos_unshifted_short": "the cosine uses step instead of step - warmup_steps: the decay "
                           "phase starts at 0 when the warm-up ends.",
    "cos_one_ahead": "the decay is one step ahead: at step warmup_steps the lr is exactly "
                     "base_lr, cos(pi * (step - warmup_steps) / (total_steps - warmup_steps)).",
    "cos_no_half": "the decay starts at 2 * base_lr: the cosine factor is (1 + cos(...)) / 2, "
                   "which runs from 1 to 0.",
    "constant": "the lr stays at base_lr after the warm-up: it should decay along a half "
                "cosine to 0 at step total_steps.",
}


def _all_steps(fn: Callable, base: float, w: int, total: int, s: float) -> list:
    """The student's lr for every step 0 .. total - 1."""
    return [fn(step, base, w, total, s) for step in range(total)]


def check_warmup_schedule(fn: Callable) -> CheckResult:
    """Check a closed form of linear warm-up followed by cosine decay::

        fn(step, base_lr, warmup_steps, total_steps, start_factor) -> lr (a number)

    the learning rate of iteration ``step`` (0-based):
    ``base_lr * (start_factor + (1 - start_factor) * step / warmup_steps)`` for
    ``step < warmup_steps``, then
    ``base_lr * (1 + cos(pi * (step - warmup_steps) / (total_steps - warmup_steps))) / 2``.

    The expected values come from minires's schedules stepped once per
    iteration, ``SequentialLR([LinearLR(start_factor, warmup_steps),
    CosineAnnealingLR(total_steps - warmup_steps)], milestones=[warmup_steps])``,
    which reproduce PyTorch's. Two settings (so a constant copied from the
    chapter shows), each compared in two parts, the warm-up and the decay, so
    the message says which part is wrong. Recognised mistakes: a warm-up from
    0, one step ahead, constant (the paper's), or missing; a cosine that
    starts at step 0 (or lasts ``total_steps``, or uses ``step`` unshifted),
    one step ahead, without the ``/ 2``, or no decay at all.
    """
    check = Check("check_warmup_schedule")
    for label, (base, w, total, s) in (("base_lr=0.1, warmup_steps=5, total_steps=20, "
                                        "start_factor=0.1", (0.1, 5, 20, 0.1)),
                                       ("base_lr=0.4, warmup_steps=8, total_steps=30, "
                                        "start_factor=0.25", (0.4, 8, 30, 0.25))):
        expected = _reference_lrs(base, w, total, s)
        got = check.call(f"fn(step, {label})", _all_steps, fn, base, w, total, s)
        if got is MISSING:
            return check.result()
        arr = as_float64(got)
        if arr is None or arr.shape != (total,):
            what = "a list" if arr is None else f"values of shape {arr.shape[1:]}"
            check.fail(f"fn(step, ...) should return one number per step; got {what}")
            return check.result()
        wrong = _variants(base, w, total, s)
        check.note(f"with {label}:")
        check.compare(f"lr at steps 0..{w - 1} (warm-up)", arr[:w], expected[:w], tol=1e-6,
                      mistakes=[(wrong[k], h) for k, h in _WARM_HINTS.items()])
        check.compare(f"lr at steps {w}..{total - 1} (decay)", arr[w:], expected[w:], tol=1e-6,
                      mistakes=[(wrong[k], h) for k, h in _DECAY_HINTS.items()])
        if check.failed:
            break
    return check.result()


# ---- the confusion matrix ------------------------------------------------------------

def _confusion_cases() -> list[tuple[str, np.ndarray, np.ndarray, int]]:
    """(label, y_true, y_pred, num_classes): every class present, with repeated
    (true, predicted) pairs; then two classes that occur nowhere."""
    rng = np.random.default_rng(9)
    y_true = rng.integers(0, 4, size=40)
    y_pred = np.where(rng.random(40) < 0.6, y_true, rng.integers(0, 4, size=40))
    y_pred[:3] = (y_true[:3] + 1) % 4           # some errors in every run of the generator
    y_true2 = rng.integers(0, 4, size=25)
    y_pred2 = np.where(rng.random(25) < 0.5, y_true2, rng.integers(0, 4, size=25))
    return [("40 labels of 4 classes", y_true, y_pred, 4),
            ("num_classes=6, classes 4 and 5 absent", y_true2, y_pred2, 6)]


def check_confusion_matrix(fn: Callable) -> CheckResult:
    """Check ``fn(y_true, y_pred, num_classes) -> C``, the (K, K) matrix of counts
    with ``C[i, j]`` = the number of samples of true class ``i`` predicted as
    ``j`` (rows: true classes, columns: predictions, as
    :func:`minires.train.confusion_matrix` and scikit-learn).

    Two cases: 40 labels of 4 classes with many repeated (true, predicted)
    pairs; then ``num_classes=6`` with classes 4 and 5 in neither array (their
    rows and columns must be there, full of zeros). The label arrays must
    come back unmodified. Recognised mistakes: rows and columns swapped;
    ``C[y_true, y_pred] += 1``, which counts a repeated pair once (NumPy's
    fancy-index ``+=`` is buffered); fractions instead of counts (over all
    samples, or per row); the size taken from the labels instead of
    ``num_classes``.
    """
    check = Check("check_confusion_matrix")
    for label, y_true, y_pred, k in _confusion_cases():
        given_true, given_pred = y_true.copy(), y_pred.copy()
        got = check.call(f"fn(y_true, y_pred, num_classes={k}) ({label})", fn, given_true,
                         given_pred, k)
        if got is MISSING:
            return check.result()
        expected = confusion_matrix(y_true, y_pred, k)
        once = np.zeros((k, k))
        once[y_true, y_pred] = 1
        present = int(max(y_true.max(), y_pred.max())) + 1
        arr = as_float64(got)
        if arr is not None and arr.shape == (k, k) and not np.all(np.isfinite(arr)):
            check.fail(f"C ({label}) contains NaN or inf")
            check.hint("a NaN where a row is all zeros: the matrix holds counts; dividing "
                       "each row by its sum (0 for a class that never occurs) is for plotting "
                       "rates, after the counting.")
            continue
        check.compare(f"C ({label})", got, expected, tol=1e-12, mistakes=[
            (expected.T, "C is transposed: rows are the true classes and columns the "
                         "predictions, C[y_true[n], y_pred[n]] += 1."),
            (once, "every (true, predicted) pair is counted at most once: NumPy's "
                   "C[y_true, y_pred] += 1 is buffered, a repeated index pair adds 1 only "
                   "once. Loop over the samples, or use np.add.at(C, (y_true, y_pred), 1)."),
            (once.T, "the pairs are counted at most once (a buffered fancy-index +=) and the "
                     "matrix is transposed: rows are the true classes."),
            (expected / len(y_true), "C holds fractions of all samples: count, do not "
                                     "divide (C.sum() should be the number of samples)."),
            (expected / np.maximum(expected.sum(axis=1, keepdims=True), 1),
             "C holds fractions per row: count, do not divide (C.sum() should be the number "
             "of samples)."),
        ])
        if arr is not None and arr.shape == (present, present) and present != k:
            check.hint(f"C has {present} rows, one per class seen in the labels: take its size "
                       f"from num_classes ({k}); a class that never occurs still gets its row "
                       "and column (of zeros).")
        if not (np.array_equal(given_true, y_true) and np.array_equal(given_pred, y_pred)):
            check.fail("y_true or y_pred was modified in place")
        if check.failed:
            break
    return check.result()


__all__ = ["check_confusion_matrix", "check_warmup_schedule"]
