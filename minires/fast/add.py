"""The engine's skip connection: the sum of ``minires/functional/add.py``
split over the CPU threads.

Stands in for: ``add`` and ``add_forward`` of ``minires.functional.add``,
with the same signatures and results (the tests compare them).
``add_backward`` hands ``dout`` on as it is and has nothing to speed up.
Arrays other than NumPy's, and pairs of different shapes or dtypes, go to
the reference.

What it buys, measured with ``benchmarks/engine.py`` (ResNet-20's shapes,
batch 128, float32, the 2-core development VM while other work shared it):
on one thread nothing (0.9-1.0x the reference's speed: the same sum); on
two, timed alone, 0.3-1.0x of the reference's speed, and in a training step
0.99-1.03x (0.90-1.26x over repetitions): the parts of each call wait for the
other thread, and a busy machine makes them wait longer. It was written
because, on the same VM without other work, the single-threaded sums took
about 20 ms of a 600 ms batch-128 step; sums under 2**19 elements stay on
one thread (``parallel.MIN_PARALLEL_CHANNELS_SIZE``).
"""

from __future__ import annotations

from typing import Any

from .. import backend
from ..backend import Array
from ..functional import add as reference
from . import parallel


def add(a: Array, b: Array) -> Array:
    """``minires.functional.add.add``, ``a + b``, with the channels (axis 1)
    split over the CPU threads (``parallel.over_channels``), each part added
    into its slice of ``out``, which keeps ``a``'s memory layout (the conv
    outputs' channel-major one). A plain ``a + b`` runs on one core.

    Measured: see the module docstring (about the reference's speed here).

    Parameters
    ----------
    a, b : arrays of the same shape and dtype (not modified)

    Returns
    -------
    out : shape, dtype and memory layout of ``a``
    """
    xp = backend.namespace(a, b)
    if not (backend.is_numpy(xp) and a.ndim >= 2 and tuple(a.shape) == tuple(b.shape)
            and a.dtype == b.dtype):
        return reference.add(a, b)
    lib = backend.native(xp)
    out = lib.empty_like(a)
    parallel.over_channels(lambda ch: lib.add(a[:, ch], b[:, ch], out=out[:, ch]), a)
    return out


def add_forward(x: Array, shortcut: Array) -> tuple[Array, Any]:
    """``minires.functional.add.add_forward``, its sum by ``add`` above.

    Parameters
    ----------
    x : (N, C, H, W) or any shape, the output of the residual branch
    shortcut : same shape and dtype as ``x``

    Returns
    -------
    out : same shape and dtype as ``x``
    cache : the shape, for ``add_backward``
    """
    reference.check_shortcut(x, shortcut, "add_forward")
    return add(x, shortcut), tuple(x.shape)
