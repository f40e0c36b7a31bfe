"""Weights to and from PyTorch.

minires uses PyTorch's layouts (NCHW, conv weight (C_out, C_in, KH, KW),
linear weight (out, in)) and torchvision's parameter names, so converting a
state dict is a matter of changing the array type::

    model = minires.models.resnet18()
    model.load_state_dict(from_torch_state_dict("resnet18.pt"))
    # ... or the other way:
    torch_model.load_state_dict(to_torch_state_dict(model.state_dict()))

torch is not a dependency of minires: it is imported inside these functions
only, and only they need it (``from_torch_state_dict`` given a mapping of
tensors does not, since a tensor converts itself).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np

from . import backend


def _import_torch(what: str) -> Any:
    try:
        import torch
    except ImportError as err:
        raise ImportError(f"{what} needs PyTorch (`pip install torch`); minires itself "
                          "does not depend on it") from err
    return torch


def _tensor_to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu()
        if str(value.dtype) in ("torch.bfloat16", "torch.float16"):
            value = value.float()  # NumPy has no bfloat16; float16 kept exact in float32
        return np.array(value.numpy(), copy=True)
    return np.array(backend.to_numpy(value), copy=True)


def from_torch_state_dict(torch_state: Mapping[str, Any] | str | os.PathLike,
                          strip_prefix: str | None = None) -> OrderedDict[str, np.ndarray]:
    """A PyTorch state dict as NumPy arrays, keys and order unchanged.

    Parameters
    ----------
    torch_state : a mapping name -> tensor (``torch_model.state_dict()``), a
        ``torch.nn.Module``, or the path of a ``.pt``/``.pth`` file holding a
        state dict (loaded with ``torch.load(..., weights_only=True)`` on the
        CPU; needs torch installed). A checkpoint dict with a ``"state_dict"``
        or ``"model"`` entry is unwrapped.
    strip_prefix : removed from the start of every key that has it, e.g.
        ``"module."`` for weights saved from ``DataParallel``.

    Returns
    -------
    OrderedDict name -> NumPy array (copies; float16/bfloat16 become float32,
    ``num_batches_tracked`` stays int64), ready for ``model.load_state_dict``.
    """
    if isinstance(torch_state, (str, os.PathLike)):
        torch = _import_torch("from_torch_state_dict(path)")
        torch_state = torch.load(os.fspath(torch_state), map_location="cpu", weights_only=True)
    if hasattr(torch_state, "state_dict") and callable(torch_state.state_dict):
        torch_state = torch_state.state_dict()
    if not isinstance(torch_state, Mapping):
        raise ValueError(f"from_torch_state_dict: expected a state dict (mapping name -> "
                         f"tensor), a module or a path, got {type(torch_state).__name__}")
    for wrapper in ("state_dict", "model"):
        inner = torch_state.get(wrapper)
        if isinstance(inner, Mapping):
            torch_state = inner
            break
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    for key, value in torch_state.items():
        if strip_prefix and key.startswith(strip_prefix):
            key = key[len(strip_prefix):]
        out[key] = _tensor_to_numpy(value)
    return out


def to_torch_state_dict(state: Mapping[str, Any] | Any) -> OrderedDict[str, Any]:
    """A minires state dict (NumPy or CuPy arrays) as CPU torch tensors.

    Parameters
    ----------
    state : ``model.state_dict()`` or a minires ``Module``.

    Returns
    -------
    OrderedDict name -> ``torch.Tensor`` (copies, same dtypes, same order), for
    ``torch_model.load_state_dict`` or ``torch.save``.
    """
    torch = _import_torch("to_torch_state_dict")
    if hasattr(state, "state_dict") and callable(state.state_dict):
        state = state.state_dict()
    out: OrderedDict[str, Any] = OrderedDict()
    for key, value in state.items():
        out[key] = torch.from_numpy(np.array(backend.to_numpy(value), copy=True))
    return out


def load_torch_state_dict(model: Any, torch_state: Mapping[str, Any] | str | os.PathLike,
                          strict: bool = True, strip_prefix: str | None = None) -> Any:
    """``model.load_state_dict(from_torch_state_dict(torch_state))``; returns
    the (missing_keys, unexpected_keys) of ``load_state_dict``."""
    return model.load_state_dict(from_torch_state_dict(torch_state, strip_prefix), strict=strict)
