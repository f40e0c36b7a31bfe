"""Solutions to chapter 10's exercises: a new head, a frozen backbone, and
parameter groups with a smaller learning rate for the backbone."""

from __future__ import annotations

from minires.exercises import (
    CheckResult,
    check_freeze,
    check_param_groups,
    check_replace_head,
)
from minires.nn import BatchNorm2d, Linear


def replace_head(model, num_classes):
    """A fresh Linear(in_features, num_classes) in place of model.fc, in the
    old head's dtype; returns it."""
    old = model.fc
    head = Linear(old.in_features, num_classes, dtype=str(old.weight.data.dtype))
    model.fc = head
    return head


def freeze_backbone(model, train_bn=False):
    """requires_grad=False for every parameter but the head's; with train_bn,
    the batch norms' weight and bias stay trainable (found by type)."""
    bn = {id(p) for m in model.modules() if isinstance(m, BatchNorm2d) for p in m.parameters()}
    for name, p in model.named_parameters():
        if not name.startswith("fc."):
            p.requires_grad = train_bn and id(p) in bn


def param_groups(model, head_lr, backbone_lr):
    """The head at head_lr, every other trainable parameter at backbone_lr."""
    head, body = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (head if name.startswith("fc.") else body).append(p)
    return [{"params": head, "lr": head_lr}, {"params": body, "lr": backbone_lr}]


def checks() -> list[CheckResult]:
    """Every checker of the chapter on the solutions above."""
    return [check_replace_head(replace_head), check_freeze(freeze_backbone),
            check_param_groups(param_groups)]
