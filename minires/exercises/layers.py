"""Checkers for chapter 02's layers: forward/backward pairs with a cache."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..functional import relu_backward, relu_forward
from .core import MISSING, Check, CheckResult


def check_relu(forward: Callable, backward: Callable) -> CheckResult:
    """Check a ReLU pair: ``forward(x) -> (out, cache)``,
    ``backward(dout, cache) -> dx``.

    Compared with :func:`minires.functional.relu_forward` /
    ``relu_backward`` on a float64 input of shape (4, 3, 5, 5) kept away
    from the kink at 0, with a random upstream gradient. ``dout`` must come
    back unmodified.
    """
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 5, 5))
    x += np.where(x >= 0, 0.1, -0.1)                 # no input near the kink
    dout = rng.standard_normal(x.shape)
    out_ref, cache_ref = relu_forward(x)
    dx_ref = relu_backward(dout, cache_ref)

    check = Check("check_relu")
    parts = check.unpack("forward(x)", check.call("forward(x)", forward, x.copy()),
                         ["out", "cache"])
    if parts is None:
        return check.result()
    out, cache = parts
    check.compare("out", out, out_ref, tol=1e-12, mistakes=[
        (x, "out equals x: the negative inputs must become 0."),
    ])
    dout_given = dout.copy()
    dx = check.call("backward(dout, cache)", backward, dout_given, cache)
    if dx is not MISSING:
        check.compare("dx", dx, dx_ref, tol=1e-12, mistakes=[
            (dout, "dx equals dout: the gradient must be 0 where the input was negative."),
            (dout * (x <= 0), "dx passes the gradient where x <= 0: the mask is inverted."),
        ])
    check.unchanged("dout", dout, dout_given)
    return check.result()

