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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import backend
from .checkpoint import load_state_dict_file
from .nn import Linear, Module
from .nn.module import IncompatibleKeys


def read_weights(source: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """Model weights from a minires ``.npz`` checkpoint or weights file, a
    PyTorch ``.pt``/``.pth`` state dict (needs torch), or a mapping."""
    if isinstance(source, Mapping):
        return dict(source)
    path = Path(source)
    if path.suffix in (".pt", ".pth"):
        from .interop import from_torch_state_dict

        return dict(from_torch_state_dict(path))
    return dict(load_state_dict_file(path))


def load_pretrained(model: Module, source: str | os.PathLike | Mapping[str, Any],
                    skip_mismatched: bool = True) -> IncompatibleKeys:
    """Load every weight of ``source`` whose name and shape match ``model``.

    With ``skip_mismatched`` (the default) entries whose shape differs, such as
    a classifier trained for another number of classes, are left out and
    reported as missing; ``strict=False`` semantics otherwise. Returns the
    ``(missing_keys, unexpected_keys)`` of ``load_state_dict``.
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


def freeze(model: Module, prefixes: Sequence[str] | None = None,
           except_prefixes: Sequence[str] = ()) -> list[str]:
    """Set ``requires_grad=False`` on parameters whose name starts with one of
    ``prefixes`` (all parameters when None), except those starting with one of
    ``except_prefixes``. Returns the names frozen."""
    frozen = []
    for name, p in model.named_parameters():
        hit = prefixes is None or any(name.startswith(pre) for pre in prefixes)
        if hit and not any(name.startswith(pre) for pre in except_prefixes):
            p.requires_grad = False
            frozen.append(name)
    return frozen


def finetune_param_groups(model: Module, lr: float, backbone_lr: float,
                          head_prefix: str = "fc.", weight_decay: float = 0.0) -> list[dict]:
    """Two optimizer groups: the head at ``lr``, the rest (the pretrained
    backbone) at the lower ``backbone_lr``. Frozen parameters are left out."""
    head, body = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (head if name.startswith(head_prefix) else body).append(p)
    groups = [{"params": head, "lr": lr, "weight_decay": weight_decay}]
    if body:
        groups.append({"params": body, "lr": backbone_lr, "weight_decay": weight_decay})
    return groups
