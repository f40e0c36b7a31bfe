"""Checkers for chapter 10's fine-tuning exercises: a new classifier head, a
frozen backbone (with or without its batch norms), and optimizer parameter
groups that give the backbone a smaller learning rate.

Each checker runs the student's function on a small float64 ResNet-8 (one
input channel, 5 classes, option-B shortcuts, so the downsampling shortcuts
carry a 1x1 convolution *and* a batch norm, ``layer2.0.downsample.1``, whose
name does not contain "bn"). Its weights and running statistics are moved
away from their initial values, so it stands in for a trained network and a
head that was not re-initialised is recognisable. The global generator of
:mod:`minires.nn.init` is left as it was found.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..models import resnet_cifar
from ..nn import BatchNorm2d, Linear, init
from ..nn.layers import _BatchNorm
from ..optim import SGD
from .core import MISSING, Check, CheckResult, as_float64

HEAD = "fc."


def _pretrained(seed: int = 0) -> Any:
    """A float64 ResNet-8 for (N, 1, 8, 8) inputs and 5 classes, its parameters
    and BN running statistics perturbed (a stand-in for trained weights)."""
    saved = init.get_rng().bit_generator.state
    try:
        init.manual_seed(1000 + seed)
        model = resnet_cifar(8, num_classes=5, in_channels=1, shortcut="B", dtype="float64")
    finally:
        init.get_rng().bit_generator.state = saved
    rng = np.random.default_rng(seed)
    for _, p in model.named_parameters():
        p.data = p.data + 0.2 * rng.standard_normal(p.shape)
    for m in model.modules():
        if isinstance(m, BatchNorm2d):
            m.running_mean = rng.standard_normal(m.num_features)
            m.running_var = rng.uniform(0.5, 2.0, m.num_features)
    return model


def _snapshot(model: Any) -> dict[str, np.ndarray]:
    return {k: np.array(as_float64(v)) for k, v in model.state_dict().items()}


def _bn_names(model: Any) -> set[str]:
    """Names of the parameters that belong to batch-norm layers (found by type)."""
    out = set()
    for mod_name, mod in model.named_modules():
        if isinstance(mod, _BatchNorm):
            for name in mod._parameters:
                out.add(f"{mod_name}.{name}" if mod_name else name)
    return out


def _listed(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


# ---- Exercise 1a: a new head --------------------------------------------------------

_HEAD_KEPT = ("the head was not re-initialised: its rows score the old classes (digits 0-4), "
              "which have nothing to do with the new ones. Build a new Linear layer, with "
              "fresh random weights, whatever the number of classes (even when it equals the "
              "old one), and put it in place of model.fc.")
_HEAD_SLICED = ("the new head holds the first rows of the old one: they score the old classes "
                "(digits 0-4), not the new ones. Build a new Linear layer with fresh random "
                "weights.")
_HEAD_DTYPE = ("Linear(in_features, out_features) is float32 by default; give it the old "
               "head's dtype (dtype=str(model.fc.weight.dtype)), or a float32 head meets "
               "float64 features and forward raises.")
_BACKBONE_CHANGED = ("replace_head must keep every pretrained weight and running statistic: "
                     "only the head is new (was the whole model rebuilt, or re-initialised?).")


def check_replace_head(replace_head: Callable) -> CheckResult:
    """Check a function that puts a fresh classifier head on a trained network.

    Signature::

        replace_head(model, num_classes) -> head
            model : a minires ResNet whose classifier is ``model.fc``, a Linear layer
            num_classes : outputs of the new head
            head : the new Linear(model.fc.in_features, num_classes), now model.fc

    The new head must have fresh random weights (not the old head's, nor the
    first rows of them), the old head's dtype (the checker's model is
    float64) and be trainable; every other weight and buffer must stay as it
    was. Tried with 3 classes and with 5, the old number, where keeping the
    old head would not change any shape.
    """
    check = Check("check_replace_head")
    rng = np.random.default_rng(7)
    for k in (3, 5):
        model = _pretrained()
        before = _snapshot(model)
        old = model.fc
        old_w, old_b = as_float64(old.weight.data), as_float64(old.bias.data)
        what = f"replace_head(model, {k})"
        returned = check.call(what, replace_head, model, k)
        if returned is MISSING:
            break
        head = getattr(model, "fc", None)
        problems = len([ln for ln in check.lines if not ln.startswith("ok")])
        if not isinstance(head, Linear):
            check.fail(f"after {what}, model.fc is a {type(head).__name__}, expected a "
                       "minires.nn.Linear layer")
            break
        if returned is not head:
            got = "None" if returned is None else f"a {type(returned).__name__}"
            check.fail(f"{what} returned {got}; expected the new head (the new model.fc)")
        w, b = as_float64(head.weight.data), as_float64(head.bias.data) if head.bias else None
        if w.shape != (k, old.in_features) or b is None or b.shape != (k,):
            check.fail(f"after {what}: model.fc.weight has shape {w.shape} and its bias "
                       f"{None if b is None else b.shape}; expected ({k}, {old.in_features}) "
                       f"and ({k},)")
            if w.shape == old_w.shape and k != old_w.shape[0]:
                check.hint(f"model.fc still has the old head's {old_w.shape[0]} outputs: "
                           + _HEAD_KEPT)
            elif w.shape == (old.in_features, k):
                check.hint("the weight is transposed: Linear(in_features, out_features) "
                           "stores it as (out_features, in_features).")
            continue
        if head is old or (w.shape == old_w.shape and np.array_equal(w, old_w)):
            check.fail(f"after {what}: model.fc has the old head's weights")
            check.hint(_HEAD_KEPT)
        elif np.array_equal(w, old_w[:k]):
            check.fail(f"after {what}: model.fc.weight is the first {k} rows of the old head's")
            check.hint(_HEAD_SLICED)
        elif np.array_equal(b, old_b[:k]):
            check.fail(f"after {what}: model.fc.bias is the old head's"
                       + ("" if k == old_b.shape[0] else f" first {k} entries"))
            check.hint("the bias was copied from the old head: it scores the old classes too. "
                       "The new Linear layer's weight and bias both start fresh.")
        if not np.all(np.isfinite(w)) or not np.all(np.isfinite(b)):
            check.fail(f"after {what}: model.fc holds NaN or inf")
        if str(head.weight.data.dtype) != str(old.weight.data.dtype):
            check.fail(f"after {what}: model.fc is {head.weight.data.dtype} but the network "
                       f"is {old.weight.data.dtype}")
            check.hint(_HEAD_DTYPE)
        frozen = [n for n, p in (("fc.weight", head.weight), ("fc.bias", head.bias))
                  if not p.requires_grad]
        if frozen:
            check.fail(f"after {what}: {', '.join(frozen)} has requires_grad=False; the new "
                       "head must learn")
        after = _snapshot(model)
        changed = [n for n in before if not n.startswith(HEAD)
                   and (n not in after or after[n].shape != before[n].shape
                        or not np.array_equal(after[n], before[n]))]
        if changed:
            check.fail(f"after {what}: {len(changed)} entries of the backbone changed "
                       f"({_listed(changed)})")
            check.hint(_BACKBONE_CHANGED)
        x = rng.standard_normal((2, 1, 8, 8))
        model.eval()
        out = check.call(f"model(x) after {what}", model, x)
        if out is not MISSING and tuple(getattr(out, "shape", ())) != (2, k):
            check.fail(f"model(x) after {what} has shape {tuple(getattr(out, 'shape', ()))}, "
                       f"expected (2, {k})")
        if len([ln for ln in check.lines if not ln.startswith("ok")]) == problems:
            check.note(f"ok      {what}: model.fc is a new Linear({old.in_features}->{k}), "
                       f"{head.weight.data.dtype}, trainable; the {len(before) - 2} other "
                       "entries of the state dict unchanged")
    return check.result()


# ---- Exercise 1b: freezing the backbone ------------------------------------------------

def check_freeze(freeze_backbone: Callable) -> CheckResult:
    """Check a function that freezes everything but the classifier head.

    Signature::

        freeze_backbone(model, train_bn=False) -> None
            sets p.requires_grad = False for every parameter of the model except
            the head's (model.fc); with train_bn=True, the batch norms' weight
            and bias (gamma, beta) stay trainable too

    Batch-norm layers are recognised by type, ``isinstance(m, BatchNorm2d)``:
    the checker's model has one in each downsampling shortcut
    (``layer2.0.downsample.1``). Values must not change. Tried with
    ``train_bn=False`` and ``train_bn=True``, each on a fresh model.
    """
    check = Check("check_freeze")
    for train_bn in (False, True):
        model = _pretrained()
        before = _snapshot(model)
        what = f"freeze_backbone(model, train_bn={train_bn})"
        if check.call(what, freeze_backbone, model, train_bn=train_bn) is MISSING:
            break
        bn = _bn_names(model)
        named = list(model.named_parameters())
        expected = {n: (n.startswith(HEAD) or (train_bn and n in bn)) for n, _ in named}
        got = {n: bool(p.requires_grad) for n, p in named}
        head_frozen = [n for n in got if n.startswith(HEAD) and not got[n]]
        bn_wrong = [n for n in got if n in bn and got[n] != expected[n]]
        other_trainable = [n for n in got if not n.startswith(HEAD) and n not in bn and got[n]]
        if head_frozen:
            check.fail(f"after {what}: {', '.join(head_frozen)} frozen; the head must stay "
                       "trainable")
            check.hint("only the backbone is frozen: the new head must learn "
                       "(model.requires_grad_(False) freezes fc too; skip the names that "
                       "start with 'fc.', or unfreeze the head afterwards).")
        if other_trainable:
            everything = all(got.values())
            check.fail(f"after {what}: {len(other_trainable)} backbone parameters still "
                       f"trainable ({_listed(other_trainable)})")
            if everything:
                check.hint("nothing was frozen: freezing is the Parameter's attribute "
                           "requires_grad; set p.requires_grad = False for each parameter "
                           "of the backbone (model.named_parameters() gives the names).")
        if bn_wrong:
            state = "trainable" if not train_bn else "frozen"
            check.fail(f"after {what}: {len(bn_wrong)} batch-norm parameters {state} "
                       f"({_listed(bn_wrong)})")
            by_name = all("downsample" in n for n in bn_wrong)
            if by_name:
                check.hint("the batch norms inside the shortcuts (layer2.0.downsample.1, "
                           "...) were missed: recognise batch norm by type, "
                           "isinstance(module, BatchNorm2d), not by 'bn' in its name.")
            elif not train_bn:
                check.hint("a batch norm's weight (gamma) and bias (beta) are parameters "
                           "too: freezing the convolutions alone leaves them learning. With "
                           "train_bn=False every backbone parameter is frozen.")
            else:
                check.hint("the other way round: with train_bn=True the batch norms' "
                           "weight and bias stay trainable (a cheap way to adapt a frozen "
                           "backbone), while the convolutions are frozen.")
        after = _snapshot(model)
        if any(not np.array_equal(after[n], before[n]) for n in before):
            check.fail(f"{what} changed weights; freezing only sets requires_grad")
        if not (head_frozen or other_trainable or bn_wrong):
            kept = "the head" + (f" and the {len(bn)} batch-norm parameters" if train_bn else "")
            n_frozen = sum(1 for v in got.values() if not v)
            check.note(f"ok      {what}: {n_frozen} parameters frozen, {kept} trainable")
    return check.result()


# ---- Exercise 2: parameter groups ---------------------------------------------------------

def _effective_lrs(model: Any, opt: Any) -> dict[str, float]:
    """The step each parameter takes for a gradient of ones, from zero (so that
    weight decay adds nothing): its learning rate, or 0 if the optimizer does
    not update it. The parameters are restored afterwards."""
    named = list(model.named_parameters())
    saved = [(p, p.data, p.grad) for _, p in named]
    try:
        for _, p in named:
            p.data = np.zeros(p.shape)
            p.grad = np.ones(p.shape) if p.requires_grad else None
        opt.step()
        return {n: float(-np.mean(as_float64(p.data))) for n, p in named}
    finally:
        for p, data, grad in saved:
            p.data, p.grad = data, grad


def check_param_groups(param_groups: Callable) -> CheckResult:
    """Check a function that builds optimizer parameter groups for fine-tuning.

    Signature::

        param_groups(model, head_lr, backbone_lr) -> list of dicts
            [{"params": [...], "lr": head_lr}, {"params": [...], "lr": backbone_lr}]
            the head (parameters whose names start with "fc.") at head_lr, every
            other trainable parameter at backbone_lr

    The checker builds ``SGD(groups, lr=head_lr)`` (so a group without "lr"
    takes head_lr) and measures the step of every parameter for a gradient of
    ones. Tried with nothing frozen, and with conv1, bn1 and layer1 frozen
    (frozen parameters may be left out or included: the optimizer skips them).
    """
    check = Check("check_param_groups")
    cases = ((0.1, 0.01, ()), (0.05, 0.002, ("conv1", "bn1", "layer1")))
    for head_lr, backbone_lr, frozen_prefixes in cases:
        model = _pretrained()
        for name, p in model.named_parameters():
            if frozen_prefixes and name.startswith(frozen_prefixes):
                p.requires_grad = False
        frozen_note = (f" ({', '.join(frozen_prefixes)} frozen)" if frozen_prefixes
                       else " (nothing frozen)")
        what = f"param_groups(model, head_lr={head_lr}, backbone_lr={backbone_lr})"
        groups = check.call(what, param_groups, model, head_lr, backbone_lr)
        if groups is MISSING:
            break
        if groups is None:
            check.fail(f"{what} returned None; expected a list of dicts "
                       "{'params': [...], 'lr': ...}")
            break
        groups = list(groups) if not isinstance(groups, (list, tuple)) else groups
        opt = check.call(f"SGD(groups, lr={head_lr}) with the groups of {what}", SGD, groups,
                         lr=head_lr)
        if opt is MISSING:
            if any("appear more than once" in ln for ln in check.lines):
                check.hint("a parameter is in two groups (or twice in one): the head must "
                           "not be in the backbone's group too (model.parameters() holds "
                           "the head as well).")
            break
        lrs = _effective_lrs(model, opt)
        named = list(model.named_parameters())
        trainable = {n for n, p in named if p.requires_grad}
        expected = {n: (head_lr if n.startswith(HEAD) else backbone_lr) if n in trainable
                    else 0.0 for n, _ in named}
        wrong = [n for n in expected if not np.isclose(lrs[n], expected[n], rtol=1e-9,
                                                       atol=1e-15)]
        if not wrong:
            n_body = sum(1 for n in trainable if not n.startswith(HEAD))
            check.note(f"ok      {what}{frozen_note}: fc.weight and fc.bias learn at "
                       f"{head_lr}, the {n_body} trainable backbone parameters at "
                       f"{backbone_lr}")
            included = [n for n, p in named if not p.requires_grad
                        and any(p is q for g in opt.param_groups for q in g["params"])]
            if included:
                check.note(f"        ({len(included)} frozen parameters are in a group: "
                           "harmless, the optimizer skips them)")
            continue
        head = [n for n in expected if n.startswith(HEAD)]
        body = [n for n in trainable if not n.startswith(HEAD)]
        bn = _bn_names(model)
        check.fail(f"WRONG   {what}{frozen_note}: {len(wrong)} of {len(named)} parameters "
                   "get the wrong learning rate")
        for n in wrong[:4]:
            got = "is in no group (never updated)" if lrs[n] == 0 else f"learns at {lrs[n]:g}"
            check.fail(f"          {n} {got}, expected {expected[n]:g}")
        if len(wrong) > 4:
            check.fail(f"          ... and {len(wrong) - 4} more")

        def at(names: list[str], lr: float, lrs: dict[str, float] = lrs) -> bool:
            return bool(names) and all(np.isclose(lrs[n], lr, rtol=1e-9) for n in names)

        if at(head, backbone_lr) and at(body, head_lr):
            check.hint("the two rates are swapped: the new head (random weights) learns at "
                       "head_lr, the pretrained backbone at the smaller backbone_lr.")
        elif at(head, backbone_lr):
            check.hint("the head learns at the backbone's rate: the head starts from random "
                       "weights and needs the larger head_lr; only the pretrained layers "
                       "get backbone_lr.")
        elif at(body, head_lr):
            no_lr = any(isinstance(g, dict) and "lr" not in g for g in groups)
            check.hint("the backbone learns at the head's rate"
                       + (": a group without an 'lr' entry takes the optimizer's default "
                          "(here head_lr); give the backbone's group 'lr': backbone_lr."
                          if no_lr else "; it should get backbone_lr."))
        missing = [n for n in trainable if lrs[n] == 0.0]
        if missing and all(n in bn for n in missing):
            check.hint("the batch norms' weight and bias are in no group, so they never "
                       "change: they are parameters too. Collect every trainable parameter "
                       "(model.named_parameters()), not only the convolutions' weights.")
        elif missing and all(n.startswith(HEAD) for n in missing):
            check.hint("the head is in no group, so it never learns.")
        elif missing:
            check.hint(f"{len(missing)} trainable parameters are in no group, so they never "
                       "change; every parameter with requires_grad=True belongs in one.")
        break
    return check.result()
