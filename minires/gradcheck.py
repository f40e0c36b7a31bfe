"""Check a hand-written backward pass against centred finite differences.

Two entry points:

- ``check_op(forward, backward, *args)`` for a functional pair such as
  ``conv2d_forward`` / ``conv2d_backward`` (or your own);
- ``check_module(module, x)`` for a layer, a block or a whole network.

Both work in float64, draw a **random** upstream gradient ``dout`` (checking
through ``sum(out)`` proves nothing for ops like BatchNorm whose output sums to
a constant), and compare, for every tensor, the analytic gradient ``a`` with the
numerical one ``n``::

    n_i = sum((f(x + h e_i) - f(x - h e_i)) * dout) / (2 h)
    error = max_i |a_i - n_i| / max(1e-8, max_i |a_i| + max_i |n_i|)

The error is relative to the size of the whole tensor's gradient, so a tiny
entry drowned in rounding noise does not raise a false alarm, while a wrong
entry of ordinary size does. A gradient that is zero on both sides (below
1e-7 everywhere, the level of finite-difference noise) counts as exact.
Correct single ops reach about 1e-8 or better; whole blocks about 1e-6.
A typo in a backward pass gives 1e-2 or worse.

Example::

    >>> from minires.functional import relu_forward, relu_backward
    >>> report = check_op(relu_forward, relu_backward, np.random.randn(4, 3) + 0.5)
    >>> report.assert_ok(1e-6)
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import backend

DEFAULT_TOL = 1e-6


class GradcheckReport(dict):
    """Maximum relative error per checked tensor, in the order checked.

    ``str(report)`` is a table; ``report.assert_ok(tol)`` raises an
    ``AssertionError`` that names every tensor whose error exceeds ``tol``.
    """

    def worst(self) -> tuple[str, float]:
        """The tensor with the largest error, and that error."""
        name = max(self, key=self.__getitem__)
        return name, self[name]

    def failures(self, tol: float = DEFAULT_TOL) -> dict[str, float]:
        return {k: v for k, v in self.items() if not v <= tol}

    def ok(self, tol: float = DEFAULT_TOL) -> bool:
        return not self.failures(tol)

    def assert_ok(self, tol: float = DEFAULT_TOL) -> None:
        bad = self.failures(tol)
        if bad:
            lines = ", ".join(f"{k}: {v:.2e}" for k, v in bad.items())
            raise AssertionError(
                f"gradient check failed (tolerance {tol:.0e}) for {lines}. "
                f"The backward pass of these tensors disagrees with finite differences."
            )

    def __str__(self) -> str:
        width = max([6] + [len(k) for k in self])
        rows = [f"{'tensor':<{width}}  rel. error"]
        rows += [f"{k:<{width}}  {v:.2e}" for k, v in self.items()]
        return "\n".join(rows)


def relative_error(analytic: Any, numeric: Any, zero_tol: float = 1e-7) -> float:
    """``max |a - n| / max(1e-8, max|a| + max|n|)`` over two same-shaped arrays.

    When both gradients are below ``zero_tol`` everywhere the tensor's true
    gradient is zero and the difference is rounding noise: the error is 0.
    """
    a = np.asarray(backend.to_numpy(analytic), dtype=np.float64)
    n = np.asarray(backend.to_numpy(numeric), dtype=np.float64)
    if a.shape != n.shape:
        raise ValueError(f"gradient has shape {a.shape}, expected {n.shape}")
    if a.size == 0:
        return 0.0
    if not np.all(np.isfinite(a)):
        return float("inf")
    a_max, n_max = float(np.max(np.abs(a))), float(np.max(np.abs(n)))
    if a_max < zero_tol and n_max < zero_tol:
        # Both are zero up to finite-difference noise, e.g. a conv bias just
        # before BatchNorm (which subtracts the mean and so any constant).
        return 0.0
    return float(np.max(np.abs(a - n)) / max(1e-8, a_max + n_max))


def _sample_indices(shape: tuple[int, ...], num_samples: int | None, rng) -> list[tuple]:
    size = int(np.prod(shape)) if shape else 1
    flat = np.arange(size)
    if num_samples is not None and num_samples < size:
        flat = np.sort(rng.choice(size, size=num_samples, replace=False))
    return [np.unravel_index(i, shape) if shape else () for i in flat]


def _is_float_array(a: Any) -> bool:
    if a is None or isinstance(a, (bool, int, float, str, tuple, list)):
        return False
    try:
        return np.issubdtype(np.asarray(backend.to_numpy(a)).dtype, np.floating)
    except (TypeError, ValueError):
        return False


def check_op(
    forward: Callable,
    backward: Callable,
    *args: Any,
    wrt: Sequence[int] | None = None,
    dout: Any = None,
    seed: int = 0,
    eps: float = 1e-6,
    num_samples: int | None = None,
    verbose: bool = False,
    **kwargs: Any,
) -> GradcheckReport:
    """Finite-difference check of a functional pair ``forward``/``backward``.

    Parameters
    ----------
    forward : callable ``forward(*args, **kwargs) -> (out, cache)``
    backward : callable ``backward(dout, cache) -> grads``, where ``grads`` is
        one array or a tuple with one entry per positional argument of
        ``forward`` (``None`` where there is no gradient).
    *args : the positional inputs. Float arrays are copied to float64 NumPy.
    wrt : indices of ``args`` to check; default every float array argument.
    dout : the upstream gradient, same shape as ``out``; default standard normal.
    seed : seeds ``dout`` and the choice of sampled entries.
    eps : the finite-difference step ``h``.
    num_samples : check only this many random entries of each tensor.
    verbose : print the report table.

    Returns
    -------
    GradcheckReport mapping each argument's name (from ``forward``'s
    signature, e.g. ``"x"``, ``"w"``) to its maximum relative error.
    """
    rng = np.random.default_rng(seed)
    args = [
        np.array(backend.to_numpy(a), dtype=np.float64) if _is_float_array(a) else a
        for a in args
    ]
    if wrt is None:
        wrt = [i for i, a in enumerate(args) if isinstance(a, np.ndarray)
               and np.issubdtype(a.dtype, np.floating)]
    try:
        names = list(inspect.signature(forward).parameters)
    except (TypeError, ValueError):
        names = []
    names = [names[i] if i < len(names) else f"arg{i}" for i in range(len(args))]

    out, cache = forward(*args, **kwargs)
    out = np.asarray(backend.to_numpy(out), dtype=np.float64)
    if dout is None:
        dout = rng.standard_normal(out.shape)
    dout = np.asarray(backend.to_numpy(dout), dtype=np.float64)
    dout_before = dout.copy()
    grads = backward(dout.copy() if dout.shape == () else dout, cache)
    if not isinstance(grads, tuple):
        grads = (grads,)
    if not np.array_equal(dout, dout_before):
        raise AssertionError(f"{getattr(backward, '__name__', 'backward')} modified dout in place")

    def f_diff(i: int, idx: tuple) -> float:
        x = args[i]
        old = x[idx]
        x[idx] = old + eps
        plus = np.asarray(backend.to_numpy(forward(*args, **kwargs)[0]), dtype=np.float64)
        x[idx] = old - eps
        minus = np.asarray(backend.to_numpy(forward(*args, **kwargs)[0]), dtype=np.float64)
        x[idx] = old
        return float(np.sum((plus - minus) * dout) / (2 * eps))

    report = GradcheckReport()
    for i in wrt:
        if i >= len(grads) or grads[i] is None:
            raise AssertionError(f"backward returned no gradient for '{names[i]}'")
        indices = _sample_indices(args[i].shape, num_samples, rng)
        numeric = np.array([f_diff(i, idx) for idx in indices])
        analytic = np.asarray(backend.to_numpy(grads[i]), dtype=np.float64)
        if analytic.shape != args[i].shape:
            raise AssertionError(
                f"gradient for '{names[i]}' has shape {analytic.shape}, "
                f"expected {args[i].shape}"
            )
        picked = np.array([analytic[idx] for idx in indices])
        report[names[i]] = relative_error(picked, numeric)
    if verbose:
        print(report)
    return report


def check_module(
    module: Any,
    x: Any,
    *extra: Any,
    dout: Any = None,
    seed: int = 0,
    eps: float = 1e-6,
    num_samples: int | None = None,
    check_input: bool = True,
    verbose: bool = False,
) -> GradcheckReport:
    """Finite-difference check of ``module.backward`` for its input and every
    parameter with ``requires_grad``.

    The module is deep-copied and cast to float64, so the original is left
    untouched; its mode (train or eval) is kept. ``extra`` inputs (for example
    the targets of a loss) are passed to the forward but not differentiated.

    Returns a GradcheckReport with the key ``"input"`` for ``dx`` and each
    parameter's dotted name (``"conv1.weight"``) for its gradient.
    """
    rng = np.random.default_rng(seed)
    m = copy.deepcopy(module)
    m.to(dtype="float64")
    xp = backend.namespace(*[p.data for p in m.parameters()]) if list(m.parameters()) \
        else backend.xp()
    x = xp.asarray(np.array(backend.to_numpy(x), dtype=np.float64))
    state = copy.deepcopy(m.state_dict())

    def run(inp: Any) -> np.ndarray:
        return np.asarray(backend.to_numpy(m(inp, *extra)), dtype=np.float64)

    m.zero_grad()
    out = run(x)
    if dout is None:
        dout = rng.standard_normal(out.shape)
    dout_np = np.asarray(backend.to_numpy(dout), dtype=np.float64)
    dout_arr = xp.asarray(dout_np)
    dx = m.backward(dout_arr)
    if not np.array_equal(backend.to_numpy(dout_arr), dout_np):
        raise AssertionError(f"{type(module).__name__}.backward modified dout in place")

    def numeric(arr: Any, idx: tuple, inp: Any) -> float:
        old = float(arr[idx])
        arr[idx] = old + eps
        plus = run(inp)
        arr[idx] = old - eps
        minus = run(inp)
        arr[idx] = old
        return float(np.sum((plus - minus) * dout_np) / (2 * eps))

    report = GradcheckReport()
    targets: list[tuple[str, Any, Any]] = []
    if check_input:
        targets.append(("input", x, dx))
    for name, p in m.named_parameters():
        if p.requires_grad:
            targets.append((name, p.data, p.grad))
    for name, arr, grad in targets:
        if grad is None:
            raise AssertionError(f"backward left no gradient for '{name}'")
        indices = _sample_indices(tuple(arr.shape), num_samples, rng)
        num = np.array([numeric(arr, idx, x) for idx in indices])
        analytic = np.asarray(backend.to_numpy(grad), dtype=np.float64)
        report[name] = relative_error(np.array([analytic[idx] for idx in indices]), num)
    m.load_state_dict(state)
    if verbose:
        print(report)
    return report
