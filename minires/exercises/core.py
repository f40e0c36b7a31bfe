"""What every checker shares: calling the student's code safely, comparing
tensors, recognising typical mistakes, and the result shown in the notebook.

A checker builds a :class:`Check`, calls the student's functions through
:meth:`Check.call` (which turns ``NotImplementedError`` into "not implemented
yet" and any other exception into a message), compares each output and
gradient with :meth:`Check.compare`, and returns :meth:`Check.result`::

    check = Check("check_linear")
    out = check.call("forward", forward, x, w, b)
    if out is not MISSING:
        check.compare("out", out[0], expected_out, tol=1e-10)
    return check.result()

The relative error is the one of :mod:`minires.gradcheck`:
``max |a - b| / max(1e-8, max|a| + max|b|)`` over the whole tensor.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import backend

MISSING: Any = object()
"""Returned by :meth:`Check.call` when the student's function did not return."""


class CheckResult:
    """The outcome of one checker, shown as text in a notebook.

    Attributes
    ----------
    name : str
        The checker, e.g. ``"check_conv2d"``.
    passed : bool
        Every comparison was within its tolerance.
    implemented : bool
        False when the student's function raised ``NotImplementedError``.
    lines : list of str
        One line per comparison (and per problem found), in order.
    hints : list of str
        What a recognised typical mistake looks like, and where to look.
    """

    def __init__(self, name: str, passed: bool, implemented: bool, lines: list[str],
                 hints: list[str]) -> None:
        self.name = name
        self.passed = passed
        self.implemented = implemented
        self.lines = list(lines)
        self.hints = list(hints)

    def __bool__(self) -> bool:
        return self.passed

    @property
    def status(self) -> str:
        """``"passed"``, ``"failed"`` or ``"not implemented yet"``."""
        if not self.implemented:
            return "not implemented yet"
        return "passed" if self.passed else "failed"

    def __str__(self) -> str:
        head = {"passed": "PASSED", "failed": "FAILED",
                "not implemented yet": "not implemented yet"}[self.status]
        out = [f"{self.name}: {head}"]
        out += [f"  {line}" for line in self.lines]
        out += [f"  hint: {h}" for h in self.hints]
        return "\n".join(out)

    __repr__ = __str__

    def assert_ok(self) -> None:
        """Raise ``AssertionError`` with the whole message unless passed (for
        teachers' grading scripts and tests)."""
        if not self.passed:
            raise AssertionError(str(self))


def as_float64(a: Any) -> np.ndarray | None:
    """Any backend's array (or nested list, or number) as a float64 NumPy
    array; None if it is not numeric."""
    try:
        out = np.asarray(backend.to_numpy(a), dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return out


def rel_error(got: np.ndarray, expected: np.ndarray) -> float:
    """``max |got - expected| / max(1e-8, max|got| + max|expected|)``; 0 for
    empty tensors, inf if ``got`` is not finite."""
    if got.size == 0:
        return 0.0
    if not np.all(np.isfinite(got)):
        return float("inf")
    scale = max(1e-8, float(np.max(np.abs(got))) + float(np.max(np.abs(expected))))
    return float(np.max(np.abs(got - expected)) / scale)


def largest_error(pairs: Sequence[tuple[Any, Any]]) -> float:
    """The largest :func:`rel_error` over ``(got, expected)`` pairs of arrays
    (any backend) that have passed their comparison: what a configuration's
    one-line summary reports."""
    return max(rel_error(as_float64(got), as_float64(exp)) for got, exp in pairs)


_PACKAGE = Path(__file__).resolve().parents[1]


def _student_line(exc: BaseException) -> str:
    """The line of the innermost frame outside the minires package, where
    the student's code raised (empty when there is none)."""
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        try:
            inside = Path(frame.filename).resolve().is_relative_to(_PACKAGE)
        except (OSError, ValueError):
            inside = False
        if not inside:
            return f" (at line {frame.lineno}: {frame.line})" if frame.line else ""
    return ""


_WHY_UNTOUCHED = {
    "a backward pass": "another branch may still need them",
    "a forward pass": "the caller may still use them: a shortcut, the previous layer's cache",
}
"""Why an input must come back untouched, by who received it (:meth:`Check.unchanged`)."""


class Check:
    """Collects the comparisons of one checker; see the module docstring.

    Parameters
    ----------
    name : str
        The checker's name, the first word of its message.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.lines: list[str] = []
        self.hints: list[str] = []
        self.failed = False
        self.implemented = True

    # ---- calling the student's code ---------------------------------------

    def call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``, or :data:`MISSING` if it raised.

        ``NotImplementedError`` marks the exercise as not implemented yet;
        any other exception is recorded as a failure naming ``what`` and the
        student's line. Never raises (except ``KeyboardInterrupt``).
        """
        try:
            return fn(*args, **kwargs)
        except NotImplementedError:
            self.implemented = False
            self.failed = True
            self.lines.append(f"{what} raised NotImplementedError: fill in its cell; until "
                              "then the chapter goes on with minires's own version.")
        except Exception as exc:  # the student's bug, reported, never re-raised
            self.failed = True
            self.lines.append(f"{what} raised {type(exc).__name__}: {exc}{_student_line(exc)}")
        return MISSING

    def unpack(self, what: str, value: Any, names: Sequence[str]) -> list[Any] | None:
        """Split a returned tuple into ``len(names)`` parts, or record why it
        cannot be (wrong type or length) and return None."""
        if value is MISSING:
            return None
        if not isinstance(value, (tuple, list)) or len(value) != len(names):
            got = (f"a {type(value).__name__} of length {len(value)}"
                   if isinstance(value, (tuple, list)) else f"a {type(value).__name__}")
            self.fail(f"{what} should return a tuple ({', '.join(names)}), got {got}")
            return None
        return list(value)

    # ---- comparing ----------------------------------------------------------

    def compare(self, what: str, got: Any, expected: Any, tol: float,
                mistakes: Sequence[tuple[Any, str]] = ()) -> bool:
        """Compare one output or gradient with the expected values.

        Parameters
        ----------
        what : str
            Its name in the message (``"dw"``, ``"out"``).
        got, expected : arrays (any backend) or numbers
        tol : float
            The largest relative error a correct answer may have.
        mistakes : sequence of (wrong_expected, hint)
            Typical wrong answers: when ``got`` matches one of them (same
            shape, relative error within ``max(tol, 1e-6)``), its hint is shown.

        Returns
        -------
        bool : whether ``got`` is within ``tol`` of ``expected``.
        """
        exp = as_float64(expected)
        if got is None:
            self.fail(f"{what} is None; expected an array of shape {exp.shape}")
            return False
        arr = as_float64(got)
        if arr is None:
            self.fail(f"{what} is a {type(got).__name__}, not an array of numbers; "
                      f"expected shape {exp.shape}")
            return False
        if arr.shape != exp.shape:
            self.fail(f"{what} has shape {arr.shape}, expected {exp.shape}")
            if arr.ndim == 2 and arr.shape == exp.shape[::-1]:
                self.hint(f"{what} has the transposed shape: check the order of the "
                          "factors of its matrix product (or a missing .T).")
            self._match_mistakes(what, arr, mistakes, tol)
            return False
        if not np.all(np.isfinite(arr)):
            self.fail(f"{what} contains NaN or inf")
            return False
        err = rel_error(arr, exp)
        if err <= tol:
            self.lines.append(f"ok      {what}: relative error {err:.1e} "
                              f"(a correct answer is below {tol:.0e})")
            return True
        self.fail(f"WRONG   {what}: relative error {err:.1e}; a correct answer is below "
                  f"{tol:.0e}")
        if not self._match_mistakes(what, arr, mistakes, tol):
            self._generic_hints(what, arr, exp)
        return False

    def _match_mistakes(self, what: str, arr: np.ndarray,
                        mistakes: Sequence[tuple[Any, str]], tol: float) -> bool:
        for wrong, hint in mistakes:
            wrong = as_float64(wrong)
            if wrong is not None and wrong.shape == arr.shape and np.all(np.isfinite(arr)) \
                    and rel_error(arr, wrong) <= max(tol, 1e-6):
                self.hint(hint)
                return True
        return False

    def _generic_hints(self, what: str, arr: np.ndarray, exp: np.ndarray) -> None:
        """Hints any comparison can recognise: a flipped sign, a constant
        factor, the right values in the wrong places."""
        if not np.any(arr) and np.any(exp):
            self.hint(f"{what} is all zeros: is it computed at all, or is a result "
                      "overwritten instead of accumulated?")
            return
        denom = float(np.sum(exp * exp))
        if denom > 0 and arr.size > 1:      # any number is a multiple of a scalar
            k = float(np.sum(arr * exp)) / denom
            if abs(k - 1) > 1e-3 and rel_error(arr, k * exp) < 1e-6:
                if abs(k + 1) < 1e-6:
                    self.hint(f"{what} has the right size but the wrong sign.")
                else:
                    self.hint(f"{what} is the right answer times {k:.4g}: a constant factor "
                              "is off (a mean taken as a sum, or the other way round?).")
                return
        err = rel_error(arr, exp)
        if err < 1e-6:
            self.hint(f"{what} is close to the answer, off by {err:.0e}, about the precision "
                      "of float32: is part of it computed or stored in float32 (an astype, "
                      "an array allocated as np.float32)? Compute in the dtype of the input.")
            return
        if arr.size > 1 and np.allclose(np.sort(arr, axis=None), np.sort(exp, axis=None),
                                        rtol=1e-6, atol=1e-12):
            self.hint(f"{what} holds the right numbers in the wrong places: check the "
                      "order of the axes (a reshape where a transpose is needed?).")

    def unchanged(self, what: str, before: Any, after: Any,
                  by: str = "a backward pass") -> bool:
        """Record a failure if an input the student received was modified.

        ``by`` names who received it, in the message: ``"a backward pass"``
        (``dout``, which another branch may still need), ``"a forward pass"``,
        ``"im2col"``...
        """
        a, b = as_float64(before), as_float64(after)
        if a is None or b is None or a.shape != b.shape or not np.array_equal(a, b):
            why = _WHY_UNTOUCHED.get(by, "the caller may still use them")
            self.fail(f"{what} was modified in place; {by} must leave its inputs untouched "
                      f"({why})")
            return False
        return True

    def merge(self, sub: Check, header: str, summary: str, left: int = 0,
              what: str = "configurations") -> bool:
        """Fold the check of one configuration, ``sub``, into this one.

        A passed configuration adds its one-line ``summary``; a failed one adds
        ``header``, every line of ``sub`` indented, its hints, and, when
        ``left`` more ``what`` wait behind it, a line saying they run once it
        passes. Only "not implemented yet" is kept from a stub. Returns whether
        ``sub`` passed, so that a checker stops at the first failure.
        """
        if not sub.failed:
            self.note(summary)
            return True
        self.failed = True
        if not sub.implemented:
            self.implemented = False
            self.lines.extend(sub.lines)
            return False
        self.lines.append(f"in the configuration {header}:")
        self.lines.extend(f"  {line}" for line in sub.lines)
        for h in sub.hints:
            self.hint(h)
        if left > 0:
            noun = what[:-1] if left == 1 and what.endswith("s") else what
            self.note(f"(stopped here: {left} more {noun} to go once this one passes)")
        return False

    # ---- recording ------------------------------------------------------------

    def fail(self, message: str) -> None:
        """Record a failed requirement."""
        self.failed = True
        self.lines.append(message)

    def note(self, message: str) -> None:
        """Record information that is neither a pass nor a failure."""
        self.lines.append(message)

    def hint(self, message: str) -> None:
        """Record a hint (each distinct hint once)."""
        if message not in self.hints:
            self.hints.append(message)

    def result(self) -> CheckResult:
        """The :class:`CheckResult` of everything recorded."""
        if not self.implemented:
            # only the not-implemented lines matter until the student starts
            self.lines = [ln for ln in self.lines if "NotImplementedError" in ln]
            self.hints = []
        return CheckResult(self.name, not self.failed, self.implemented, self.lines,
                           self.hints)
