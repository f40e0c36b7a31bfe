"""Helpers shared by the tests (imported as ``from util import ...``)."""

from __future__ import annotations

import numpy as np
import pytest

from minires import backend


def torch_or_skip():
    """Import torch (float64 cross-checks) or skip; CI fails on such a skip."""
    torch = pytest.importorskip("torch")
    torch.set_default_dtype(torch.float64)
    return torch


def strict(a):
    """The same values as an array-api-strict array (None passes through)."""
    import array_api_strict

    if a is None or not isinstance(a, np.ndarray):
        return a
    return array_api_strict.asarray(a)


def host(a) -> np.ndarray:
    """Any backend's array (or a torch tensor) as a NumPy array."""
    return backend.to_numpy(a)


def rel(a, b) -> float:
    """max |a - b| / max(1e-300, max |b|): relative error in the max norm."""
    a = np.asarray(host(a), dtype=np.float64)
    b = np.asarray(host(b), dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b), initial=0.0) / max(1e-300, np.max(np.abs(b), initial=0.0)))
