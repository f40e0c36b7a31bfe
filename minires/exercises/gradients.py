"""Checkers for chapter 01: finite differences, and a backward pass checked
against them (the softmax's)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .core import MISSING, Check, CheckResult, as_float64


def _test_function(seed: int = 1, shape: tuple[int, ...] = (3, 4)):
    """``f(x) = sin(x @ A)``, x ``shape`` (3, 4), A (4, 5): curved (so a
    forward difference is visibly worse than a centred one) and coupling the
    entries of a row (so a perturbation left in place spoils the next
    entries)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    a = rng.standard_normal((shape[-1], 5))
    dout = rng.standard_normal((*shape[:-1], 5))

    def f(x):
        return np.sin(x @ a)

    def grad(x, dout):
        return (np.cos(x @ a) * dout) @ a.T

    return f, grad, x, dout


def _differences(f, x, dout, h, scheme="centred", restore=True, divide=2.0):
    """The typical right and wrong numerical gradients, computed as a student
    would (to recognise their results)."""
    x = x.copy()
    g = np.zeros_like(x)
    base = float(np.sum(f(x) * dout))
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + h
        plus = float(np.sum(f(x) * dout))
        if scheme == "centred":
            x[i] = old - h
            g[i] = (plus - float(np.sum(f(x) * dout))) / (divide * h)
        else:
            g[i] = (plus - base) / h
        if restore:
            x[i] = old
    return g


def check_numerical_gradient(numerical_gradient: Callable) -> CheckResult:
    """Check ``numerical_gradient(f, x, dout, h) -> grad``.

    The function to check takes a function ``f`` mapping an array ``x`` to an
    array ``out``, the point ``x`` (any shape, float64), the upstream gradient
    ``dout`` (the shape of ``out``) and the step ``h``, and returns an array of
    ``x``'s shape whose entry ``i`` is the centred difference::

        (sum(f(x + h e_i) * dout) - sum(f(x - h e_i) * dout)) / (2 h)

    ``x`` must come back as it was given (perturb an entry, evaluate, and put
    the old value back).

    Run on ``f(x) = sin(x @ A)`` with x (3, 4) and h = 1e-3, against the
    analytic gradient ``(cos(x @ A) * dout) @ A.T``: a centred difference is
    within about 3e-7 of it (its error is of order h^2), a forward difference
    only 5e-4 (order h). Once that passes, once more with x (2, 3, 4) and
    h = 1e-6, the step of a float64 gradient check: a centred difference in
    float64 is within about 1e-10, one that handles only 2-D x, or keeps x or
    the gradient in float32 (2e-8 at best), is not.
    """
    f, grad, x, dout = _test_function()
    h = 1e-3
    expected = grad(x, dout)
    check = Check("check_numerical_gradient")
    calls = []

    def counting_f(arr):
        calls.append(1)
        return f(arr)

    x_given, dout_given = x.copy(), dout.copy()
    got = check.call("numerical_gradient(f, x, dout, h)", numerical_gradient,
                     counting_f, x_given, dout_given, h)
    if got is MISSING:
        return check.result()
    mistakes = [
        (_differences(f, x, dout, h, scheme="forward"),
         "this is the forward difference (f(x + h) - f(x)) / h, whose error shrinks only "
         "like h. Evaluate at x + h and at x - h and divide by 2h: the error terms of "
         "order h cancel, leaving h^2."),
        (_differences(f, x, dout, h, restore=False),
         "x is not restored after its entry is perturbed, so the next entries are "
         "evaluated at a shifted point. Keep the old value (old = x[i]) and write it "
         "back (x[i] = old) before moving on."),
        (_differences(f, x, dout, h, divide=1.0),
         "the difference is divided by h: the two points x + h and x - h are 2h apart, "
         "so divide by 2h."),
        (_differences(f, x, np.ones_like(dout), h),
         "the upstream gradient dout is ignored (this is the gradient of sum(f(x))). "
         "Weight the outputs by dout: sum(f(x + h e_i) * dout)."),
    ]
    arr = as_float64(got)
    if arr is not None and arr.shape == (x.shape[0],):
        check.hint("one number per row of x: perturb every entry of x, one at a time "
                   "(for i in np.ndindex(x.shape)), not a whole row.")
    check.note(f"f(x) = sin(x @ A), x {x.shape}, h = {h:g}: compared with the exact gradient "
               "(a centred difference is off by about h^2)")
    check.compare("grad", got, expected, tol=1e-5, mistakes=mistakes)
    # the point must come back as it was given
    moved = float(np.max(np.abs(x_given - x)))
    if moved > 1e-12:
        check.fail(f"x was changed by up to {moved:.1e} and not restored: the caller's "
                   "array must come back as it was")
        if not any("not restored" in h for h in check.hints):
            check.hint("after perturbing x[i], write the saved old value back (x[i] = old), "
                       "or perturb a copy of x.")
    elif moved > 0:
        check.note(f"x came back changed by {moved:.0e} (rounding of x[i] += h; x[i] -= h): "
                   "save old = x[i] and assign it back, so x returns bit for bit")
    if not np.array_equal(dout_given, dout):
        check.fail("dout was modified; it must be only read")
    if check.implemented and not check.failed:
        n = len(calls)
        check.note(f"f was called {n} times for the {x.size} entries of x "
                   f"({n / x.size:.0f} per entry)")
        _check_small_step(check, numerical_gradient)
    return check.result()


def _check_small_step(check: Check, numerical_gradient: Callable) -> None:
    """The second case of :func:`check_numerical_gradient`: a 3-D x and the
    step h = 1e-6 of a float64 gradient check, where only a centred
    difference over every entry, in float64, stays within 1e-9."""
    f, grad, x, dout = _test_function(seed=3, shape=(2, 3, 4))
    h = 1e-6
    x_given = x.copy()
    what = f"numerical_gradient(f, x, dout, h) with x {x.shape}, h = {h:g}"
    got = check.call(what, numerical_gradient, f, x_given, dout.copy(), h)
    if got is MISSING:
        check.hint("x may have any shape: loop over every entry with "
                   "for i in np.ndindex(x.shape), and index x[i] with that tuple.")
        return
    ok = check.compare(f"grad for x {x.shape}, h = {h:g}", got, grad(x, dout), tol=1e-9)
    if not ok and not check.hints:
        check.hint("x (3, 4) with h = 1e-3 passed, this one not: x may have any shape "
                   "(loop with for i in np.ndindex(x.shape)), and a step of 1e-6 needs "
                   "float64 throughout (x as given, grad = np.zeros_like(x); in float32 the "
                   "differences lose all but a few digits).")
    if float(np.max(np.abs(x_given - x))) > 1e-12:
        check.fail(f"x {x.shape} was changed and not restored: the caller's array must "
                   "come back as it was")


def softmax_reference(x: np.ndarray) -> np.ndarray:
    """Softmax along the last axis, with the row maximum subtracted."""
    e = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return e / np.sum(e, axis=-1, keepdims=True)


def check_softmax(forward: Callable, backward: Callable) -> CheckResult:
    """Check a softmax pair over the last axis of a 2-D array:
    ``forward(x) -> (p, cache)`` with ``p[n] = exp(x[n]) / sum_k exp(x[n, k])``,
    and ``backward(dout, cache) -> dx`` with ``dx = p * (dout - sum_k(p * dout))``
    (the sum over each row, kept as a column).

    Run on x (4, 6) with a random ``dout``, then on logits of size 1000 that
    overflow ``exp`` unless the row maximum is subtracted first. ``dout`` must
    come back unmodified.
    """
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 6)) * 2
    dout = rng.standard_normal(x.shape)
    p = softmax_reference(x)
    s = np.sum(p * dout, axis=-1, keepdims=True)
    dx = p * (dout - s)

    check = Check("check_softmax")
    x_given = x.copy()
    parts = check.unpack("forward(x)", check.call("forward(x)", forward, x_given),
                         ["p", "cache"])
    check.unchanged("x", x, x_given, by="a forward pass")
    if parts is None:
        return check.result()
    p_got, cache = parts
    check.compare("p", p_got, p, tol=1e-12, mistakes=[
        (softmax_reference(x.T).T, "p is normalized over the first axis (the batch): "
                                   "each row, one sample's scores, must sum to 1."),
        (np.exp(x), "p is exp(x) without dividing by the row sums."),
    ])
    dout_given = dout.copy()
    dx_got = check.call("backward(dout, cache)", backward, dout_given, cache)
    if dx_got is not MISSING:
        check.compare("dx", dx_got, dx, tol=1e-10, mistakes=[
            (p * (1 - p) * dout,
             "dx keeps only the diagonal of the Jacobian, p_i (1 - p_i): every output "
             "p_j depends on every input x_i (through the sum in the denominator), so "
             "dx_i = sum_j dout_j p_j (delta_ij - p_i) = p_i (dout_i - sum_j p_j dout_j)."),
            (p * dout, "dx = p * dout misses the term of the denominator: subtract "
                       "sum_j p_j dout_j (per row) from dout before multiplying by p."),
            (p * (dout - np.sum(dout, axis=-1, keepdims=True)),
             "the sum subtracted from dout must weight each dout_j by p_j: "
             "sum_j p_j dout_j, per row."),
            (p * (dout - np.sum(p * dout, axis=0, keepdims=True)),
             "the weighted sum is taken over the wrong axis: sum over each row "
             "(axis=-1, keepdims=True), one sample at a time."),
            (dout - s, "dx = dout - sum_j p_j dout_j is missing the factor p."),
        ])
    check.unchanged("dout", dout, dout_given)

    # large logits: exp(1000) overflows unless the row maximum goes first
    big = x * 10 + 1000.0
    parts = check.unpack("forward(1000 + 10 x)",
                         check.call("forward(1000 + 10 x)", forward, big.copy()), ["p", "cache"])
    if parts is not None:
        arr = as_float64(parts[0])
        if arr is not None and arr.shape == big.shape and not np.all(np.isfinite(arr)):
            check.fail("WRONG   p for logits around 1000: NaN or inf")
            check.hint("exp(1000) overflows to inf, and inf / inf is NaN. Subtract each "
                       "row's maximum first: softmax(x) = softmax(x - max(x)), and every "
                       "exponent is then <= 0.")
        else:
            check.compare("p for logits around 1000", parts[0], softmax_reference(big),
                          tol=1e-12)
    return check.result()


__all__ = ["check_numerical_gradient", "check_softmax"]
