"""The textbook: pure forward/backward pairs, one file per family.

Each op ``name`` is a pair ``name_forward(...) -> (out, cache)`` and
``name_backward(dout, cache) -> grads`` that sit side by side in their file,
written against the Python Array API, to be read top to bottom:

- ``linear.py``: ``linear``, ``flatten``
- ``activation.py``: ``relu``
- ``add.py``: ``add``, the skip connection, where the gradient fans out
- ``conv.py``: ``conv2d`` by ``im2col``/``col2im``, and ``conv2d_*_naive`` loops
- ``norm.py``: ``batchnorm`` (training and eval) and ``batchnorm_running_update``
- ``pool.py``: ``maxpool2d``, ``avgpool2d``, ``global_avgpool2d``
- ``loss.py``: ``softmax_cross_entropy``, ``softmax``, ``log_softmax``
- ``shapes.py``: argument checks, output sizes and padding, shared by the ops

The dispatch point
------------------
This namespace is where minires chooses between the textbook and the engine
(``minires.fast``), and the only place. For the ops the engine speeds up,
``minires.functional.conv2d_forward`` (and ``conv2d_backward``, ``im2col``,
``batchnorm_forward``, ``batchnorm_backward``, ``relu_forward``,
``relu_backward``, ``add``, ``add_forward``) is a small function, made by
``_dispatch`` below, that runs the engine's version while the engine is on
(``minires.fast.is_enabled()``) and the version in this package's file
otherwise. Both have the same signature and give the same results; the
engine's hands what it does not speed up (array-api-strict arrays, say) to
the reference itself. Every other name here is the reference, plain.

The layers of ``minires.nn`` call these public ops, so they run the engine
too. ``MINIRES_FAST=0`` in the environment, ``minires.fast.enable(False)``
or ``with minires.fast.enabled(False):`` runs the reference code everywhere.
``op.reference`` and ``op.fast`` are the two versions of a dispatched op.

A module of this package (``minires.functional.conv``, ...) holds the
reference only: ``minires.functional.conv.conv2d_forward`` is always the
im2col code of ``conv.py``. One name is taken twice: ``minires.functional.add``
is the public sum (a function), and ``from minires.functional.add import
add_backward`` still reads the file ``add.py``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from .. import fast as _engine
from . import activation as _activation
from . import add as _add
from . import conv as _conv
from . import norm as _norm
from .add import add_backward
from .conv import col2im, conv2d_backward_naive, conv2d_forward_naive
from .linear import flatten_backward, flatten_forward, linear_backward, linear_forward
from .loss import (
    log_softmax,
    softmax,
    softmax_cross_entropy_backward,
    softmax_cross_entropy_forward,
)
from .norm import batchnorm_running_update
from .pool import (
    avgpool2d_backward,
    avgpool2d_forward,
    global_avgpool2d_backward,
    global_avgpool2d_forward,
    maxpool2d_backward,
    maxpool2d_forward,
)

# The engine's modules, loaded after this package's files, which they import
# (no file of this package imports the engine).
from ..fast import activation as _fast_activation  # isort: skip
from ..fast import add as _fast_add  # isort: skip
from ..fast import conv as _fast_conv  # isort: skip
from ..fast import norm as _fast_norm  # isort: skip


def _dispatch(reference: Callable[..., Any], fast: Callable[..., Any]) -> Callable[..., Any]:
    """The public op: ``op.fast(...)`` while the engine is on, else
    ``op.reference(...)``.

    It carries the reference's name, docstring and signature (``help`` shows
    the textbook's), and both versions as ``.reference`` and ``.fast``
    (``benchmarks/engine.py`` swaps one op's ``.fast`` for its reference to
    measure what that fast path buys in a training step)."""
    @functools.wraps(reference)
    def op(*args: Any, **kwargs: Any) -> Any:
        if _engine.is_enabled():
            return op.fast(*args, **kwargs)
        return op.reference(*args, **kwargs)

    op.reference, op.fast = reference, fast
    return op


# ---- the dispatch table: reference (this package) -> engine (minires.fast) ----
im2col = _dispatch(_conv.im2col, _fast_conv.im2col)
conv2d_forward = _dispatch(_conv.conv2d_forward, _fast_conv.conv2d_forward)
conv2d_backward = _dispatch(_conv.conv2d_backward, _fast_conv.conv2d_backward)
batchnorm_forward = _dispatch(_norm.batchnorm_forward, _fast_norm.batchnorm_forward)
batchnorm_backward = _dispatch(_norm.batchnorm_backward, _fast_norm.batchnorm_backward)
relu_forward = _dispatch(_activation.relu_forward, _fast_activation.relu_forward)
relu_backward = _dispatch(_activation.relu_backward, _fast_activation.relu_backward)
add = _dispatch(_add.add, _fast_add.add)
add_forward = _dispatch(_add.add_forward, _fast_add.add_forward)

DISPATCHED = ("add", "add_forward", "batchnorm_backward", "batchnorm_forward",
              "conv2d_backward", "conv2d_forward", "im2col", "relu_backward", "relu_forward")

__all__ = [
    "add", "add_backward", "add_forward", "avgpool2d_backward", "avgpool2d_forward",
    "batchnorm_backward", "batchnorm_forward", "batchnorm_running_update", "col2im",
    "conv2d_backward", "conv2d_backward_naive", "conv2d_forward", "conv2d_forward_naive",
    "flatten_backward", "flatten_forward", "global_avgpool2d_backward",
    "global_avgpool2d_forward", "im2col", "linear_backward", "linear_forward", "log_softmax",
    "maxpool2d_backward", "maxpool2d_forward", "relu_backward", "relu_forward", "softmax",
    "softmax_cross_entropy_backward", "softmax_cross_entropy_forward",
]
