"""Fine-tuning: start from trained weights, swap the classifier, freeze, train.

A typical recipe::

    model = get_model("resnet20", in_channels=1, num_classes=5)
    load_pretrained(model, "runs/pretrain/checkpoint.npz")   # skips the old head
    replace_head(model, num_classes=5)                       # a fresh fc layer
    freeze(model, except_prefixes=("fc.",))                  # or train everything...
    groups = finetune_param_groups(model, lr=0.1, backbone_lr=0.01)  # ...at a lower rate
    optimizer = SGD(groups, lr=0.1, momentum=0.9)

A frozen parameter (``requires_grad=False``) gets no gradient, its layer skips
computing one, and the optimizer leaves it alone.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import backend
from .checkpoint import load_state_dict_file
from .nn import Linear, Module
from .nn.module import IncompatibleKeys


def _is_torch(value: Any) -> bool:
    """A torch tensor or module (without importing torch when it is not loaded)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, (torch.Tensor, torch.nn.Module))


def read_weights(source: str | os.PathLike | Mapping[str, Any] | Any) -> dict[str, Any]:
    """Model weights as a dict name -> array.

    Parameters
    ----------
    source : a minires ``.npz`` (a checkpoint from ``minires train``, or a
        ``save_state_dict`` weights file); a PyTorch ``.pt``/``.pth`` file
        holding a state dict with torchvision's names (needs torch); a
        mapping name -> array (NumPy, CuPy or torch tensors); or a
        ``torch.nn.Module``.

    Returns
    -------
    dict name -> array (torch tensors converted to NumPy).
    """
    from .interop import from_torch_state_dict

    if isinstance(source, Mapping):
        if any(_is_torch(v) for v in source.values()):
            return dict(from_torch_state_dict(source))
        return dict(source)
    if _is_torch(source):  # a torch.nn.Module
        return dict(from_torch_state_dict(source))
    path = Path(source)
    if path.suffix in (".pt", ".pth"):
        return dict(from_torch_state_dict(path))
    return dict(load_state_dict_file(path))


def input_channels(weights: Mapping[str, Any]) -> int | None:
    """The input channels the weights' first convolution takes: axis 1 of
    ``conv1.weight`` (the name in minires's and torchvision's ResNets), else of
    the first 4-D weight; None when there is none.

    Parameters
    ----------
    weights : mapping name -> array, as :func:`read_weights` returns it; a
        convolution weight is (C_out, C_in, KH, KW).
    """
    first = weights.get("conv1.weight")
    if first is None:
        first = next((v for v in weights.values() if len(np.shape(v)) == 4), None)
    return None if first is None else int(np.shape(first)[1])


def load_pretrained(model: Module, source: str | os.PathLike | Mapping[str, Any],
                    skip_mismatched: bool = True) -> IncompatibleKeys:
    """Load every weight of ``source`` whose name and shape match ``model``.

    Parameters
    ----------
    model : Module to load into (changed in place).
    source : anything :func:`read_weights` reads.
    skip_mismatched : leave out entries whose shape differs from the model's,
        such as a classifier trained for another number of classes or a
        first convolution for 3 channels when the model takes 1; they are
        reported as missing. When False, a shape mismatch raises ValueError.

    Returns
    -------
    ``(missing_keys, unexpected_keys)``, as ``model.load_state_dict(...,
    strict=False)`` returns them: the model's entries that were not loaded
    (keep their initial values) and the source's entries the model lacks.
    """
    state = read_weights(source)
    if skip_mismatched:
        own = model.state_dict()
        state = {k: v for k, v in state.items()
                 if k not in own or tuple(np.shape(backend.to_numpy(v))) == tuple(own[k].shape)}
    return model.load_state_dict(state, strict=False)


def replace_head(model: Module, num_classes: int, attr: str = "fc") -> Linear:
    """Put a freshly initialized ``Linear(in_features, num_classes)`` in place of
    ``model.<attr>`` (keeping its dtype) and return it."""
    old = getattr(model, attr, None)
    if not isinstance(old, Linear):
        raise ValueError(f"replace_head: expected model.{attr} to be a Linear layer, "
                         f"got {type(old).__name__}")
    head = Linear(old.in_features, num_classes, bias=old.bias is not None,
                  dtype=str(old.weight.dtype))
    setattr(model, attr, head)
    return head


def _select(model: Module, prefixes: Sequence[str] | None, except_prefixes: Sequence[str],
            who: str) -> list[tuple[str, Any]]:
    if isinstance(prefixes, str) or isinstance(except_prefixes, str):
        raise ValueError(f"{who}: give prefixes as a list or tuple of strings, not a str")
    named = list(model.named_parameters())
    for pre in list(prefixes or []) + list(except_prefixes):
        if not any(name.startswith(pre) for name, _ in named):
            raise ValueError(f"{who}: no parameter name starts with {pre!r}; names start "
                             f"with {sorted({n.split('.')[0] for n, _ in named})}")
    return [(name, p) for name, p in named
            if (prefixes is None or any(name.startswith(pre) for pre in prefixes))
            and not any(name.startswith(pre) for pre in except_prefixes)]


def freeze(model: Module, prefixes: Sequence[str] | None = None,
           except_prefixes: Sequence[str] = ()) -> list[str]:
    """Freeze parameters: ``requires_grad=False``, so backward computes no
    gradient for them (``.grad`` stays None; a layer whose parameters are all
    frozen skips that work) and the optimizer leaves them unchanged.

    Parameters
    ----------
    model : Module.
    prefixes : freeze the parameters whose dotted names start with one of
        these (e.g. ``["conv1", "bn1", "layer1"]``); None: all of them.
    except_prefixes : but not those starting with one of these
        (``freeze(model, except_prefixes=["fc."])`` freezes the backbone).

    Returns
    -------
    list of the names frozen. A prefix that matches no parameter raises
    ValueError (a typo would otherwise freeze nothing). BatchNorm running
    statistics are buffers, not parameters: they still follow the batches in
    training mode.
    """
    chosen = _select(model, prefixes, except_prefixes, "freeze")
    for _, p in chosen:
        p.requires_grad = False
    return [name for name, _ in chosen]


def unfreeze(model: Module, prefixes: Sequence[str] | None = None,
             except_prefixes: Sequence[str] = ()) -> list[str]:
    """The inverse of :func:`freeze` (same arguments): ``requires_grad=True``."""
    chosen = _select(model, prefixes, except_prefixes, "unfreeze")
    for _, p in chosen:
        p.requires_grad = True
    return [name for name, _ in chosen]


def finetune_param_groups(model: Module, lr: float, backbone_lr: float,
                          head_prefix: str = "fc.", weight_decay: float = 0.0) -> list[dict]:
    """Optimizer parameter groups for fine-tuning.

    Parameters
    ----------
    model : Module with a classifier head named ``head_prefix``.
    lr : learning rate of the head (freshly initialized, learns fast).
    backbone_lr : learning rate of every other trainable parameter (the
        pretrained backbone; lower, so its features change slowly).
    head_prefix : names starting with this are the head.
    weight_decay : for both groups.

    Returns
    -------
    ``[{"params": head, "lr": lr, ...}, {"params": backbone, "lr":
    backbone_lr, ...}]``; frozen parameters are left out, and so is the
    backbone group when it is empty (everything but the head frozen).
    Schedules scale both rates by the same factor.
    """
    head, body = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (head if name.startswith(head_prefix) else body).append(p)
    groups = [{"params": head, "lr": lr, "weight_decay": weight_decay}]
    if body:
        groups.append({"params": body, "lr": backbone_lr, "weight_decay": weight_decay})
    return groups
