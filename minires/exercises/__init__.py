"""Checkers for the chapters' exercises.

Each ``check_*`` function takes the student's functions (or class), runs them
on fixed float64 inputs next to minires's own implementation, and returns a
:class:`CheckResult`: ``.passed`` (a bool), and as ``str(result)`` (what a
notebook shows) the comparison of every output and gradient, with the
relative error beside the range a correct answer reaches, both shapes on a
mismatch, and a hint where a typical mistake is recognisable. A checker never
raises on a wrong answer: a stub that raises ``NotImplementedError`` gives
"not implemented yet", any other exception is reported with the student's
line.

Usage in a chapter::

    from minires.exercises import check_relu
    check_relu(my_relu_forward, my_relu_backward)

``result.assert_ok()`` raises with the same message, for grading scripts.
The solutions live in ``chapters/solutions/`` of the repository.

Checkers, by chapter:

- 02 ``check_relu``
- 07 ``check_residual_wrapper``, ``check_residual_block``
"""

from .blocks import check_residual_block, check_residual_wrapper
from .core import Check, CheckResult
from .layers import check_relu

__all__ = [
    "Check", "CheckResult", "check_relu", "check_residual_block", "check_residual_wrapper",
]
