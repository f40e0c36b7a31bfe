"""Which array library minires computes with: NumPy (CPU) or CuPy (NVIDIA GPU).

This is the only module that knows those libraries by name. Everything else
asks an array for its namespace (``namespace(x)``) and calls the Python Array
API through it, so one code path serves both.

Pick the backend with the environment variable ``MINIRES_BACKEND=numpy|cupy``
or in code with ``minires.backend.use("cupy")``. A third name,
``"array_api_strict"``, runs everything on the strict reference
implementation of the standard; the tests use it to prove that no kernel
relies on anything NumPy-only (our stand-in for a GPU when none is present).
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any

import array_api_compat
import numpy as np

Array = Any  # an array of the active backend: numpy.ndarray, cupy.ndarray, ...

BACKENDS = ("numpy", "cupy", "array_api_strict")

_active: str | None = None
_xp: ModuleType | None = None


class BackendError(RuntimeError):
    """Raised when the requested array library cannot be used here."""


def _load(name: str) -> ModuleType:
    if name == "numpy":
        return array_api_compat.array_namespace(np.empty(0))
    if name == "cupy":
        try:
            import cupy
        except ImportError as err:  # pragma: no cover - depends on the machine
            raise BackendError(
                "minires backend 'cupy' was requested but CuPy is not installed. "
                "Install it with `pip install minires[gpu]` (CUDA 12) or pick the "
                "NumPy backend with MINIRES_BACKEND=numpy."
            ) from err
        if not cupy.is_available():  # pragma: no cover - depends on the machine
            raise BackendError(
                "minires backend 'cupy' was requested and CuPy is installed, but no "
                "usable NVIDIA GPU was found (cupy.is_available() is False). Check the "
                "driver with `nvidia-smi`, or use MINIRES_BACKEND=numpy."
            )
        return array_api_compat.array_namespace(cupy.empty(0))
    if name == "array_api_strict":
        try:
            import array_api_strict
        except ImportError as err:
            raise BackendError(
                "backend 'array_api_strict' needs `pip install array-api-strict` "
                "(it is part of the `test` extra)."
            ) from err
        return array_api_strict
    raise BackendError(f"unknown minires backend {name!r}; expected one of {BACKENDS}")


def use(name: str) -> ModuleType:
    """Make ``name`` ("numpy", "cupy" or "array_api_strict") the active backend.

    Returns the Array API namespace of that backend. Arrays already created
    stay where they are; move a model with ``model.to(device=...)``.
    """
    global _active, _xp
    name = name.strip().lower().replace("-", "_")
    _xp = _load(name)
    _active = name
    return _xp


def name() -> str:
    """The name of the active backend (reads ``MINIRES_BACKEND`` on first use)."""
    if _active is None:
        use(os.environ.get("MINIRES_BACKEND", "numpy") or "numpy")
    assert _active is not None
    return _active


def xp() -> ModuleType:
    """The Array API namespace of the active backend (where new arrays are made)."""
    name()
    assert _xp is not None
    return _xp


def namespace(*arrays: Array) -> ModuleType:
    """The Array API namespace the given arrays belong to.

    Functional ops call this on their inputs, so they compute wherever the
    data lives, whatever the active backend is.
    """
    # Shortcut for the common case, all NumPy arrays: array_namespace costs
    # about 15 us a call, and a ResNet-20 step makes ~1500 of these calls.
    if arrays and all(type(a) is np.ndarray for a in arrays):
        return _NUMPY_NAMESPACE
    return array_api_compat.array_namespace(*arrays)


_NUMPY_NAMESPACE = array_api_compat.array_namespace(np.empty(0))


def type_name(a: Any) -> str:
    """``numpy.ndarray``, ``cupy.ndarray``, ...: where an array lives, for
    error messages."""
    return f"{type(a).__module__.split('.')[0]}.{type(a).__name__}"


def is_numpy_like(xp_: ModuleType) -> bool:
    """True for NumPy and CuPy namespaces: both offer ``lib.stride_tricks``.

    Fast paths that step outside the Array API standard check this first and
    fall back to the portable code otherwise (for example under
    array-api-strict).
    """
    return array_api_compat.is_numpy_namespace(xp_) or array_api_compat.is_cupy_namespace(xp_)


def is_numpy(xp_: ModuleType) -> bool:
    """True for the NumPy namespace only: for fast paths that pay off on the
    CPU but not on a GPU (where, say, a check that reads a result back to
    the host stalls the device's queue)."""
    return array_api_compat.is_numpy_namespace(xp_)


def native(xp_: ModuleType) -> ModuleType:
    """The underlying library (``numpy`` or ``cupy``) of a NumPy-like namespace."""
    if array_api_compat.is_numpy_namespace(xp_):
        return np
    if array_api_compat.is_cupy_namespace(xp_):  # pragma: no cover - needs a GPU
        import cupy

        return cupy
    raise BackendError(f"{xp_.__name__} is not NumPy-like")


def asarray(x: Any, dtype: Any = None) -> Array:
    """Copy or convert ``x`` (a NumPy array, a list, a torch CPU tensor, ...) onto
    the active backend. ``dtype`` may be a NumPy dtype or a name like "float32"."""
    xp_ = xp()
    if hasattr(x, "detach") and hasattr(x, "numpy"):  # a torch tensor
        x = x.detach().cpu().numpy()
    if not isinstance(x, np.ndarray) and not _is_backend_array(x, xp_):
        x = to_numpy(x) if _is_any_array(x) else np.asarray(x)
    if dtype is not None:
        dtype = resolve_dtype(dtype, xp_)
    return xp_.asarray(x, dtype=dtype, copy=True)


def to_numpy(x: Any) -> np.ndarray:
    """Bring an array of any backend back to the host as a NumPy array."""
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "get") and type(x).__module__.startswith("cupy"):  # pragma: no cover
        return x.get()
    if hasattr(x, "detach") and hasattr(x, "numpy"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def resolve_dtype(dtype: Any, xp_: ModuleType | None = None) -> Any:
    """Turn "float32", numpy.float32 or a backend dtype into the backend's dtype."""
    xp_ = xp_ or xp()
    if isinstance(dtype, str):
        return getattr(xp_, dtype)
    if isinstance(dtype, type) and issubclass(dtype, np.generic) or isinstance(dtype, np.dtype):
        return getattr(xp_, np.dtype(dtype).name)
    return dtype


def _is_backend_array(x: Any, xp_: ModuleType) -> bool:
    try:
        return namespace(x) is xp_
    except TypeError:
        return False


def _is_any_array(x: Any) -> bool:
    try:
        namespace(x)
        return True
    except TypeError:
        return False
