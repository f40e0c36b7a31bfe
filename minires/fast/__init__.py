"""The engine: faster stand-ins for the textbook ops of ``minires.functional``.

``minires/functional/`` is the textbook: the reference code of every op,
written against the Array API, the code the chapters teach. This package
holds what makes it fast on NumPy (and CuPy) without changing a single
number: each fast function has the signature and the results of the
reference it stands in for, says in its docstring what it buys (measured),
and is tested against it (``tests/test_fast_paths.py``).

- ``conv.py``: ``im2col``, ``conv2d_forward``, ``conv2d_backward``: chunks
  of images, the shifted grid for stride 1, col2im by phases for strides.
- ``norm.py``: ``batchnorm_forward``, ``batchnorm_backward`` (training
  mode), a few channels at a time over the threads.
- ``activation.py``: ``relu_forward``, ``relu_backward`` in one SIMD pass.
- ``add.py``: ``add``, ``add_forward``: the skip connection's sum over the
  threads.
- ``parallel.py``: the CPU threads they share the work over
  (``MINIRES_THREADS``, ``parallel.set_threads``).

Each fast function hands a call it does not speed up to its reference:
arrays outside NumPy and CuPy (array-api-strict), ReLU's backward and the
sum on CuPy, batch norm in eval mode, a convolution with an argument the
engine does not compute (``groups`` other than 1).

The dispatch point is ``minires/functional/__init__.py``: each public op
there (``minires.functional.conv2d_forward``, ...), which the layers call,
runs the engine's function while the engine is on and the reference's
otherwise. The engine imports helpers from ``minires.functional``; no file
of ``minires/functional/`` imports the engine.

The switch: the engine is on unless the environment sets ``MINIRES_FAST=0``
(also ``false``, ``no`` or ``off``). In Python::

    import minires.fast
    minires.fast.enable(False)          # the reference code everywhere
    minires.fast.is_enabled()           # False
    with minires.fast.enabled(True):    # the engine, for this block only
        ...

The switch is read at every call of a public op, so it may change between a
forward and a backward pass: the caches of an op's two versions are
interchangeable.

Threads do not depend on the switch: from the first public op on, BLAS runs
on one thread whenever minires counts more than one (``MINIRES_THREADS``,
default the usable cores; ``parallel.set_threads(1)`` gives BLAS its threads
back), engine on or off. With the engine off nothing else starts threads, so
the textbook's code runs on one core. A multi-threaded OpenBLAS next to other
busy processes is a trap: its waiting threads spin, and two processes of the
reference code side by side (as ``pytest -n 2`` runs them) each took 4-8x
longer with two BLAS threads than with one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

_on: bool | None = None          # None: not read from MINIRES_FAST yet

_WORDS = {"1": True, "true": True, "yes": True, "on": True, "": True,
          "0": False, "false": False, "no": False, "off": False}


def is_enabled() -> bool:
    """Whether the public ops run the engine (``MINIRES_FAST``, else on)."""
    if _on is None:
        value = os.environ.get("MINIRES_FAST", "1")
        if value.strip().lower() not in _WORDS:
            raise ValueError(f"MINIRES_FAST: expected 1 or 0 (the engine on or off), "
                             f"got {value!r}")
        enable(_WORDS[value.strip().lower()])
    return bool(_on)


def enable(on: bool = True) -> None:
    """Run the engine (``True``) or the reference code (``False``) from now on,
    for the whole process (it overrides ``MINIRES_FAST``)."""
    global _on
    _on = bool(on)
    parallel.threads()        # the thread policy, the same either way (module docstring)


@contextmanager
def enabled(on: bool = True) -> Iterator[None]:
    """``with minires.fast.enabled(False):`` runs the block on the reference
    code (``True``: on the engine), then restores the switch as it was."""
    before = is_enabled()
    enable(on)
    try:
        yield
    finally:
        enable(before)


# The engine's modules import the reference (``minires.functional``), whose
# package namespace imports them back for the dispatch. Loading the reference
# here, after the switch above, keeps that order whichever module a program
# imports first.
from .. import functional as _functional  # noqa: E402, F401
from . import parallel  # noqa: E402  (imports nothing of minires)
