"""Optimizers, learning-rate schedules and gradient clipping (PyTorch's rules).

Everything here reproduces ``torch.optim`` so that numbers from PyTorch
recipes carry over unchanged; the tests check the parity step by step.

Optimizers (``step()`` after each backward pass, ``zero_grad()`` before it):

- ``SGD``: ``g = grad + weight_decay * p``; with momentum ``buf = g`` on the
  first step, then ``buf = momentum * buf + (1 - dampening) * g``;
  ``g = g + momentum * buf`` (Nesterov) or ``g = buf``; ``p -= lr * g``.
  He et al. (2015) train the CIFAR ResNets with lr 0.1, momentum 0.9,
  weight decay 1e-4.
- ``Adam``: moments ``m``, ``v`` of the gradient with bias correction; weight
  decay is added to the gradient (an L2 penalty).
- ``AdamW``: Adam with *decoupled* weight decay, ``p *= 1 - lr * weight_decay``
  before the Adam step.

Parameters are updated in place and keep their dtype; parameters with
``requires_grad=False`` or no gradient are skipped (no update and no state).
Parameter groups work as in PyTorch (see ``param_groups_no_decay``).

Schedules (``step()`` once per epoch or per iteration, after
``optimizer.step()``): ``MultiStepLR`` (the paper's "divide by 10 at 32k and
48k iterations"), ``CosineAnnealingLR``, ``LinearLR`` and ``ConstantLR``
(warm-ups), ``SequentialLR`` and ``ChainedScheduler`` to combine them. They use
PyTorch's recursive ("chainable") formulas, so the sequences match PyTorch's to
the last bit.

``state_dict()`` of an optimizer or a schedule holds only NumPy arrays,
numbers, strings, tuples, lists and dicts; ``minires.checkpoint`` stores it in
an ``.npz`` without pickle (``checkpoint.flatten_tree``).
"""

from __future__ import annotations

import copy
import math
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from . import backend

__all__ = [
    "Optimizer", "SGD", "Adam", "AdamW", "param_groups_no_decay", "clip_grad_norm_",
    "LRScheduler", "MultiStepLR", "CosineAnnealingLR", "LinearLR", "ConstantLR",
    "SequentialLR", "ChainedScheduler",
]


class _Required:
    def __repr__(self) -> str:
        return "<required>"


REQUIRED: Any = _Required()  # default of a hyperparameter every group must set


def _is_param(p: Any) -> bool:
    """Parameter-like: has ``.data`` and ``.grad`` (``minires.nn.Parameter``)."""
    return hasattr(p, "data") and hasattr(p, "grad") and not isinstance(p, Mapping)


def _is_array(v: Any) -> bool:
    return hasattr(v, "shape") and hasattr(v, "dtype") and not isinstance(v, np.generic)


# ---------------------------------------------------------------------------
# Optimizer base
# ---------------------------------------------------------------------------
class Optimizer:
    """Base class: parameter groups, per-parameter state, ``step``, ``zero_grad``.

    Parameters
    ----------
    params : iterable of Parameters, or of dicts (parameter groups) such as
        ``{"params": [...], "lr": 0.01, "weight_decay": 0.0}``; a group's
        missing hyperparameters take the values in ``defaults``.
    defaults : dict of hyperparameter name -> default value (``REQUIRED`` when
        every group must give one).

    Attributes
    ----------
    param_groups : list of dicts; ``group["params"]`` is a list of Parameters,
        the other entries its hyperparameters. Schedules change ``group["lr"]``.
    state : dict Parameter -> dict of that parameter's buffers (momentum,
        Adam moments), created on its first update.

    Subclasses implement ``_update(p, grad, state, group)`` for one parameter
    and may check a group's hyperparameters in ``_check_group(group)``.
    """

    def __init__(self, params: Iterable[Any], defaults: Mapping[str, Any]) -> None:
        self.defaults = dict(defaults)
        self.state: dict[Any, dict[str, Any]] = {}
        self.param_groups: list[dict[str, Any]] = []
        if _is_param(params):
            raise TypeError(f"{type(self).__name__}: params must be an iterable of Parameters "
                            f"or of dicts, got a single {type(params).__name__}")
        groups = list(params)
        if not groups:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        if not isinstance(groups[0], Mapping):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    def add_param_group(self, param_group: Mapping[str, Any]) -> None:
        """Append a group: ``{"params": Parameter or iterable, **hyperparameters}``.

        Hyperparameters not given take the optimizer's defaults. A parameter may
        belong to one group only.
        """
        name = type(self).__name__
        if not isinstance(param_group, Mapping) or "params" not in param_group:
            raise TypeError(f"{name}: a parameter group must be a dict with a 'params' entry, "
                            f"got {type(param_group).__name__}")
        group = dict(param_group)
        params = group["params"]
        if _is_param(params):
            params = [params]
        elif isinstance(params, (set, frozenset)):
            raise TypeError(f"{name}: parameters must be given in a fixed order (a list), "
                            "not a set")
        params = list(params)
        for p in params:
            if not _is_param(p):
                raise TypeError(f"{name}: expected Parameters (with .data and .grad), "
                                f"got {type(p).__name__}")
        for key, default in self.defaults.items():
            if default is REQUIRED and key not in group:
                raise ValueError(f"{name}: parameter group does not set the required "
                                 f"hyperparameter {key!r}")
            group.setdefault(key, default)
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        ids = [id(p) for p in params]
        if len(set(ids)) != len(ids) or seen.intersection(ids):
            raise ValueError(f"{name}: some parameters appear more than once "
                             "(in one group or in several groups)")
        self._check_group(group)
        group["params"] = params
        self.param_groups.append(group)

    def _check_group(self, group: dict[str, Any]) -> None:
        """Raise ValueError for invalid hyperparameters (subclasses extend)."""
        if group["lr"] < 0:
            raise ValueError(f"{type(self).__name__}: invalid learning rate {group['lr']} "
                             "(expected >= 0)")
        if group.get("weight_decay", 0.0) < 0:
            raise ValueError(f"{type(self).__name__}: invalid weight_decay "
                             f"{group['weight_decay']} (expected >= 0)")

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients: to None (default, like PyTorch) or to zeros."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    p.grad = backend.namespace(p.grad).zeros_like(p.grad)

    def step(self) -> None:
        """Update every parameter that has a gradient, in place."""
        for group in self.param_groups:
            for p in group["params"]:
                if not getattr(p, "requires_grad", True) or p.grad is None:
                    continue
                grad = p.grad
                if tuple(grad.shape) != tuple(p.data.shape):
                    raise ValueError(f"{type(self).__name__}: gradient of shape "
                                     f"{tuple(grad.shape)} for a parameter of shape "
                                     f"{tuple(p.data.shape)}")
                if grad.dtype != p.data.dtype:
                    grad = backend.namespace(grad).astype(grad, p.data.dtype)
                self._update(p, grad, self.state.setdefault(p, {}), group)

    def _update(self, p: Any, grad: Any, state: dict[str, Any], group: dict[str, Any]) -> None:
        raise NotImplementedError

    # ---- saving and restoring ------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The optimizer's state as plain data (PyTorch's layout).

        Returns
        -------
        dict with
            ``"state"``: {index: {buffer name: NumPy array (a copy) or number}}
            for each parameter that has state, indexed by position across all
            groups in order;
            ``"param_groups"``: list of dicts of hyperparameters, each with
            ``"params"``: the list of indices of its parameters.
        """
        index: dict[int, int] = {}
        groups = []
        for group in self.param_groups:
            packed = {k: copy.deepcopy(v) for k, v in group.items() if k != "params"}
            packed["params"] = [index.setdefault(id(p), len(index)) for p in group["params"]]
            groups.append(packed)
        state = {}
        for group in self.param_groups:
            for p in group["params"]:
                if p in self.state:
                    state[index[id(p)]] = {
                        k: np.array(backend.to_numpy(v)) if _is_array(v) else copy.deepcopy(v)
                        for k, v in self.state[p].items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore hyperparameters and buffers saved by ``state_dict``.

        The optimizer must have been built over the same parameters in the same
        groups (sizes are checked). Buffers are copied onto each parameter's
        backend in its dtype. Nothing changes if a check fails.
        """
        name = type(self).__name__
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"{name}.load_state_dict: {len(saved_groups)} parameter groups "
                             f"saved, the optimizer has {len(self.param_groups)}")
        id_map = {}
        for i, (saved, group) in enumerate(zip(saved_groups, self.param_groups, strict=True)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(f"{name}.load_state_dict: group {i} has "
                                 f"{len(saved['params'])} parameters saved, "
                                 f"{len(group['params'])} in the optimizer")
            id_map.update(zip((int(k) for k in saved["params"]), group["params"], strict=True))
        new_state: dict[Any, dict[str, Any]] = {}
        for key, buffers in state_dict["state"].items():
            if int(key) not in id_map:
                raise ValueError(f"{name}.load_state_dict: state for parameter {key}, "
                                 "which no group lists")
            p = id_map[int(key)]
            new_state[p] = {k: _restore(v, p, f"{name}.load_state_dict: state[{key}][{k!r}]")
                            for k, v in buffers.items()}
        new_groups = []
        for saved, group in zip(saved_groups, self.param_groups, strict=True):
            restored = {k: copy.deepcopy(v) for k, v in saved.items() if k != "params"}
            restored["params"] = group["params"]
            new_groups.append(restored)
        self.state = new_state
        self.param_groups = new_groups

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}("]
        for i, group in enumerate(self.param_groups):
            hyper = ", ".join(f"{k}={v}" for k, v in group.items() if k != "params")
            lines.append(f"  group {i}: {len(group['params'])} params, {hyper}")
        return "\n".join(lines) + "\n)"


def _restore(value: Any, p: Any, where: str) -> Any:
    """A saved buffer onto ``p``'s backend and dtype; a scalar as a Python number."""
    if _is_array(value) and tuple(value.shape) == tuple(p.data.shape):
        xp = backend.namespace(p.data)
        return xp.asarray(backend.to_numpy(value), dtype=p.data.dtype, copy=True)
    if _is_array(value) or isinstance(value, np.generic):
        value = backend.to_numpy(value)
        if value.ndim != 0:
            raise ValueError(f"{where}: shape {tuple(value.shape)} does not match the "
                             f"parameter's {tuple(p.data.shape)}")
        return value.item()
    return copy.deepcopy(value)


# ---------------------------------------------------------------------------
# SGD, Adam, AdamW
# ---------------------------------------------------------------------------
class SGD(Optimizer):
    """Stochastic gradient descent with momentum, as ``torch.optim.SGD``.

    Parameters
    ----------
    params : iterable of Parameters or of parameter groups (dicts).
    lr : float, learning rate.
    momentum : float, default 0 (He et al. 2015 use 0.9).
    dampening : float, default 0; the new gradient enters the buffer with
        weight ``1 - dampening``.
    weight_decay : float, default 0; L2 penalty added to the gradient.
    nesterov : bool, default False; needs momentum > 0 and dampening 0.

    Per parameter, with ``g`` its gradient (any shape, same as ``p``)::

        g = g + weight_decay * p
        buf = g                                             (first step)
        buf = momentum * buf + (1 - dampening) * g          (later steps)
        g = g + momentum * buf if nesterov else buf         (when momentum != 0)
        p = p - lr * g
    """

    def __init__(self, params: Iterable[Any], lr: float, momentum: float = 0.0,
                 dampening: float = 0.0, weight_decay: float = 0.0,
                 nesterov: bool = False) -> None:
        super().__init__(params, {"lr": lr, "momentum": momentum, "dampening": dampening,
                                  "weight_decay": weight_decay, "nesterov": nesterov})

    def _check_group(self, group: dict[str, Any]) -> None:
        super()._check_group(group)
        if group["momentum"] < 0:
            raise ValueError(f"SGD: invalid momentum {group['momentum']} (expected >= 0)")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("SGD: Nesterov momentum requires momentum > 0 and dampening 0, "
                             f"got momentum {group['momentum']}, "
                             f"dampening {group['dampening']}")

    def _update(self, p: Any, grad: Any, state: dict[str, Any], group: dict[str, Any]) -> None:
        lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
        g = grad
        if wd != 0:
            g = g + wd * p.data
        if momentum != 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = backend.namespace(g).asarray(g, copy=True)
            else:
                buf *= momentum
                buf += (1 - group["dampening"]) * g
            g = g + momentum * buf if group["nesterov"] else buf
        p.data -= lr * g


class Adam(Optimizer):
    """Adam (Kingma and Ba, 2015), as ``torch.optim.Adam``.

    Parameters
    ----------
    params : iterable of Parameters or of parameter groups (dicts).
    lr : float, default 1e-3.
    betas : (float, float), default (0.9, 0.999); decay rates of the moments.
    eps : float, default 1e-8; added to the denominator.
    weight_decay : float, default 0; L2 penalty added to the gradient.

    Per parameter, at step ``t = 1, 2, ...`` with gradient ``g``::

        g = g + weight_decay * p
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        p = p - lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

    State per parameter: ``step`` (int), ``exp_avg`` (m), ``exp_avg_sq`` (v).
    """

    _decoupled = False

    def __init__(self, params: Iterable[Any], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0) -> None:
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps,
                                  "weight_decay": weight_decay})

    def _check_group(self, group: dict[str, Any]) -> None:
        super()._check_group(group)
        name = type(self).__name__
        group["betas"] = tuple(group["betas"])
        if len(group["betas"]) != 2 or not all(0.0 <= b < 1.0 for b in group["betas"]):
            raise ValueError(f"{name}: betas must be two numbers in [0, 1), "
                             f"got {group['betas']}")
        if group["eps"] < 0:
            raise ValueError(f"{name}: invalid eps {group['eps']} (expected >= 0)")

    def _update(self, p: Any, grad: Any, state: dict[str, Any], group: dict[str, Any]) -> None:
        xp = backend.namespace(p.data)
        lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
        beta1, beta2 = group["betas"]
        if not state:
            state["step"] = 0
            state["exp_avg"] = xp.zeros_like(p.data)
            state["exp_avg_sq"] = xp.zeros_like(p.data)
        state["step"] += 1
        t = state["step"]
        g = grad
        if wd != 0:
            if self._decoupled:
                p.data *= 1 - lr * wd  # AdamW: shrink the weights, not the gradient
            else:
                g = g + wd * p.data
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m += (1 - beta1) * (g - m)  # = beta1 * m + (1 - beta1) * g, as torch's lerp_
        v *= beta2
        v += (1 - beta2) * g * g
        step_size = lr / (1 - beta1 ** t)
        denom = xp.sqrt(v) / math.sqrt(1 - beta2 ** t) + eps
        p.data -= step_size * (m / denom)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov and Hutter, 2019), as
    ``torch.optim.AdamW``: before each Adam step ``p = p * (1 - lr * weight_decay)``;
    the gradient itself is not changed. Default ``weight_decay`` 1e-2; other
    parameters as ``Adam``.
    """

    _decoupled = True

    def __init__(self, params: Iterable[Any], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


def param_groups_no_decay(model: Any, weight_decay: float,
                          select: Callable[[str], bool] | None = None,
                          **options: Any) -> list[dict[str, Any]]:
    """Two parameter groups: weights with ``weight_decay``, the rest without.

    BatchNorm weights and biases (of any module with a ``running_mean``
    buffer) and every bias go to a group with ``weight_decay=0``: decaying them
    does not regularize anything useful (BN makes the next layer invariant to
    the scale of the weights before it). Empty groups are left out.

    Parameters
    ----------
    model : Module.
    weight_decay : float, for the conv and linear weights.
    select : callable(name) -> bool, optional; keep only the parameters whose
        dotted names (``"layer1.0.conv1.weight"``) it accepts.
    **options : other hyperparameters for both groups (``lr=...``).

    Returns
    -------
    list of dicts to pass to an optimizer.

    Examples
    --------
    The paper's recipe without decay on BN and biases:

    >>> opt = SGD(param_groups_no_decay(model, 1e-4), lr=0.1, momentum=0.9)

    Fine-tuning: a pretrained backbone at a tenth of the head's learning rate
    (schedules scale every group's lr by the same factor):

    >>> head = lambda name: name.startswith("fc.")
    >>> groups = (param_groups_no_decay(model, 1e-4, select=lambda n: not head(n), lr=0.01)
    ...           + param_groups_no_decay(model, 1e-4, select=head))
    >>> opt = SGD(groups, lr=0.1, momentum=0.9)
    """
    no_decay_ids = set()
    for _, module in model.named_modules():
        if getattr(module, "running_mean", None) is not None:
            no_decay_ids.update(id(p) for p in module.parameters())
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if select is not None and not select(name):
            continue
        if id(p) in no_decay_ids or name.rsplit(".", 1)[-1] == "bias":
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, **options, "weight_decay": weight_decay},
              {"params": no_decay, **options, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def clip_grad_norm_(parameters: Any, max_norm: float, norm_type: float = 2.0,
                    error_if_nonfinite: bool = False) -> float:
    """Scale all gradients together so that their joint norm is at most ``max_norm``.

    As ``torch.nn.utils.clip_grad_norm_``: the total norm is the ``norm_type``
    norm of all gradients seen as one vector; when it exceeds ``max_norm`` every
    gradient is multiplied by ``max_norm / (total_norm + 1e-6)``.

    Parameters
    ----------
    parameters : a Parameter or an iterable of Parameters; those without a
        gradient are ignored.
    max_norm : float.
    norm_type : float, default 2; ``float("inf")`` for the max norm.
    error_if_nonfinite : bool, default False; raise RuntimeError when the total
        norm is nan or inf (otherwise the gradients become nan).

    Returns
    -------
    float, the total norm before clipping.
    """
    params = [parameters] if _is_param(parameters) else list(parameters)
    params = [p for p in params if p.grad is not None]
    if not params:
        return 0.0
    norm_type = float(norm_type)
    norms = []
    for p in params:
        xp = backend.namespace(p.grad)
        norms.append(float(xp.linalg.vector_norm(p.grad, ord=norm_type)))
    total = float(np.linalg.vector_norm(np.asarray(norms, dtype=np.float64), ord=norm_type))
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(f"clip_grad_norm_: the total norm of order {norm_type} of the "
                           f"gradients is {total}")
    coef = max_norm / (total + 1e-6)
    if coef < 1.0 or math.isnan(coef):
        for p in params:
            p.grad = p.grad * coef
    return total


# ---------------------------------------------------------------------------
# Learning-rate schedules
# ---------------------------------------------------------------------------
class LRScheduler:
    """Base class of the schedules, as ``torch.optim.lr_scheduler.LRScheduler``.

    Creating a schedule records each group's ``initial_lr`` and performs step 0
    (``last_epoch`` becomes 0, which may already change the lr: a warm-up
    starts low). Each ``step()`` increments ``last_epoch`` and sets every
    group's lr from ``get_lr()``, which, as in PyTorch, mostly rescales the
    *current* lr (so schedules compose with ``ChainedScheduler``).

    Parameters
    ----------
    optimizer : Optimizer.
    last_epoch : int, default -1 (start); another value only when resuming,
        which needs ``initial_lr`` in every group (restore the optimizer first).
    """

    _hyper: tuple[str, ...] = ()  # names of the hyperparameters kept in state_dict

    def __init__(self, optimizer: Optimizer, last_epoch: int = -1) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(self).__name__}: {type(optimizer).__name__} is not "
                            "an Optimizer")
        self.optimizer = optimizer
        if last_epoch == -1:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
        else:
            for i, group in enumerate(optimizer.param_groups):
                if "initial_lr" not in group:
                    raise KeyError(f"{type(self).__name__}: param_groups[{i}] has no "
                                   f"'initial_lr' although last_epoch={last_epoch}; restore "
                                   "the optimizer's state before resuming a schedule")
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = last_epoch
        self._initial_step()

    def _initial_step(self) -> None:
        self._step_count = 0
        self._is_initial = True
        try:
            self.step()
        finally:
            self._is_initial = False

    def step(self) -> None:
        """Advance one epoch (or iteration) and set the new learning rates."""
        self._step_count += 1
        self.last_epoch += 1
        self._set_lrs(self.get_lr())

    def _jump_to_start(self) -> None:
        """``last_epoch = 0`` with the closed-form lrs (used by SequentialLR)."""
        self.last_epoch = 0
        self._set_lrs(self._closed_form_lr())

    def _set_lrs(self, lrs: Sequence[float]) -> None:
        for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def _current_lrs(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def get_lr(self) -> list[float]:
        """The lrs for the new ``last_epoch`` (called by ``step``; to read the
        current ones use ``get_last_lr``)."""
        raise NotImplementedError

    def _closed_form_lr(self) -> list[float]:
        raise NotImplementedError

    def get_last_lr(self) -> list[float]:
        """The learning rate of each parameter group set by the latest step."""
        return list(self._last_lr)

    def state_dict(self) -> dict[str, Any]:
        """Plain numbers and lists: position, base lrs and hyperparameters."""
        state = {"type": type(self).__name__, "last_epoch": self.last_epoch,
                 "step_count": self._step_count, "base_lrs": list(self.base_lrs),
                 "last_lr": list(self._last_lr)}
        state.update({k: copy.deepcopy(getattr(self, k)) for k in self._hyper})
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a ``state_dict``. The optimizer's lrs are not touched: they
        come back with the optimizer's own state."""
        _check_type(self, state_dict)
        self.last_epoch = int(state_dict["last_epoch"])
        self._step_count = int(state_dict["step_count"])
        self.base_lrs = list(state_dict["base_lrs"])
        self._last_lr = list(state_dict["last_lr"])
        for k in self._hyper:
            setattr(self, k, copy.deepcopy(state_dict[k]))


def _check_type(sched: Any, state_dict: Mapping[str, Any]) -> None:
    saved = state_dict.get("type", type(sched).__name__)
    if saved != type(sched).__name__:
        raise ValueError(f"{type(sched).__name__}.load_state_dict: the state is of a {saved}")


class MultiStepLR(LRScheduler):
    """Multiply the lr by ``gamma`` each time ``last_epoch`` reaches a milestone.

    He et al. (2015), CIFAR-10: lr 0.1 divided by 10 at 32k and 48k iterations,
    i.e. ``MultiStepLR(opt, [32000, 48000], 0.1)`` stepped every iteration (or
    at epochs 91 and 136 of 391 iterations, stepped every epoch).

    Parameters
    ----------
    optimizer : Optimizer.
    milestones : increasing ints (a repeated one multiplies by gamma**count).
    gamma : float, default 0.1.
    last_epoch : int, default -1.
    """

    _hyper = ("milestones", "gamma")

    def __init__(self, optimizer: Optimizer, milestones: Iterable[int], gamma: float = 0.1,
                 last_epoch: int = -1) -> None:
        self.milestones = sorted(int(m) for m in milestones)
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        count = self.milestones.count(self.last_epoch)
        if count == 0:
            return self._current_lrs()
        return [lr * self.gamma ** count for lr in self._current_lrs()]

    def _closed_form_lr(self) -> list[float]:
        return [base * self.gamma ** bisect_right(self.milestones, self.last_epoch)
                for base in self.base_lrs]


class CosineAnnealingLR(LRScheduler):
    """Cosine decay from the base lr to ``eta_min`` over ``T_max`` steps.

    ``lr(t) = eta_min + (base_lr - eta_min) * (1 + cos(pi * t / T_max)) / 2``,
    computed as PyTorch does, recursively from the current lr (beyond
    ``T_max`` it rises again along the cosine).

    Parameters
    ----------
    optimizer : Optimizer.
    T_max : int, steps of the half cosine.
    eta_min : float, default 0.
    last_epoch : int, default -1.
    """

    _hyper = ("T_max", "eta_min")

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0,
                 last_epoch: int = -1) -> None:
        if T_max <= 0:
            raise ValueError(f"CosineAnnealingLR: T_max must be positive, got {T_max}")
        self.T_max = T_max
        self.eta_min = eta_min
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        t, T, eta_min = self.last_epoch, self.T_max, self.eta_min
        if self._is_initial:
            return self._current_lrs()
        if self._step_count == 1 and t > 0:
            return [eta_min + (base - eta_min) * (1 + math.cos(t * math.pi / T)) / 2
                    for base in self.base_lrs]
        if (t - 1 - T) % (2 * T) == 0:  # leaving the minimum: the recursion would divide by 0
            return [lr + (base - eta_min) * (1 - math.cos(math.pi / T)) / 2
                    for base, lr in zip(self.base_lrs, self._current_lrs(), strict=True)]
        return [(1 + math.cos(math.pi * t / T)) / (1 + math.cos(math.pi * (t - 1) / T))
                * (lr - eta_min) + eta_min for lr in self._current_lrs()]

    def _closed_form_lr(self) -> list[float]:
        return [self.eta_min + (base - self.eta_min)
                * (1 + math.cos(math.pi * self.last_epoch / self.T_max)) / 2
                for base in self.base_lrs]


class LinearLR(LRScheduler):
    """Linear warm-up (or decay) of the lr factor from ``start_factor`` to
    ``end_factor`` over ``total_iters`` steps, then constant.

    ``lr(t) = base_lr * (start + (end - start) * min(t, total_iters) / total_iters)``

    Parameters
    ----------
    optimizer : Optimizer.
    start_factor : float in (0, 1], default 1/3.
    end_factor : float in [0, 1], default 1.
    total_iters : int, default 5.
    last_epoch : int, default -1.
    """

    _hyper = ("start_factor", "end_factor", "total_iters")

    def __init__(self, optimizer: Optimizer, start_factor: float = 1.0 / 3,
                 end_factor: float = 1.0, total_iters: int = 5, last_epoch: int = -1) -> None:
        if not 0 < start_factor <= 1:
            raise ValueError(f"LinearLR: start_factor must be in (0, 1], got {start_factor}")
        if not 0 <= end_factor <= 1:
            raise ValueError(f"LinearLR: end_factor must be in [0, 1], got {end_factor}")
        self.start_factor, self.end_factor = start_factor, end_factor
        self.total_iters = total_iters
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        t, start, end = self.last_epoch, self.start_factor, self.end_factor
        if t == 0:
            return [lr * start for lr in self._current_lrs()]
        if self._is_initial or t > self.total_iters:
            return self._current_lrs()
        ratio = 1.0 + (end - start) / (self.total_iters * start + (t - 1) * (end - start))
        return [lr * ratio for lr in self._current_lrs()]

    def _closed_form_lr(self) -> list[float]:
        s, e = self.start_factor, self.end_factor
        return [base * (s + (e - s) * min(self.total_iters, self.last_epoch) / self.total_iters)
                for base in self.base_lrs]


class ConstantLR(LRScheduler):
    """The lr times ``factor`` for the first ``total_iters`` steps, then the
    full lr. He et al. (2015) warm ResNet-110 up at lr 0.01 for about 400
    iterations: ``ConstantLR(opt, factor=0.1, total_iters=400)`` stepped every
    iteration (combine with ``MultiStepLR`` through ``ChainedScheduler``).

    Parameters
    ----------
    optimizer : Optimizer.
    factor : float in [0, 1], default 1/3.
    total_iters : int, default 5.
    last_epoch : int, default -1.
    """

    _hyper = ("factor", "total_iters")

    def __init__(self, optimizer: Optimizer, factor: float = 1.0 / 3, total_iters: int = 5,
                 last_epoch: int = -1) -> None:
        if not 0 <= factor <= 1:
            raise ValueError(f"ConstantLR: factor must be in [0, 1], got {factor}")
        self.factor, self.total_iters = factor, total_iters
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        if self.last_epoch == 0:
            return [lr * self.factor for lr in self._current_lrs()]
        if self.last_epoch != self.total_iters:
            return self._current_lrs()
        return [lr * (1.0 / self.factor) for lr in self._current_lrs()]

    def _closed_form_lr(self) -> list[float]:
        on = self.last_epoch >= self.total_iters
        return [base * (self.factor + on * (1 - self.factor)) for base in self.base_lrs]


class SequentialLR(LRScheduler):
    """Run ``schedulers[0]`` until ``milestones[0]``, then ``schedulers[1]``
    restarted from its step 0, and so on (``torch.optim.lr_scheduler.SequentialLR``).

    Example: 5 epochs of linear warm-up, then cosine decay over 95 epochs::

        warm = LinearLR(opt, start_factor=0.1, total_iters=5)
        cos = CosineAnnealingLR(opt, T_max=95)
        sched = SequentialLR(opt, [warm, cos], milestones=[5])

    Parameters
    ----------
    optimizer : Optimizer, the one every schedule drives.
    schedulers : list of LRScheduler.
    milestones : list of ints, one fewer than the schedules.
    last_epoch : int, default -1.
    """

    def __init__(self, optimizer: Optimizer, schedulers: Sequence[LRScheduler],
                 milestones: Sequence[int], last_epoch: int = -1) -> None:
        _check_children(self, optimizer, schedulers)
        if len(milestones) != len(schedulers) - 1:
            raise ValueError(f"SequentialLR: expected {len(schedulers) - 1} milestones for "
                             f"{len(schedulers)} schedules, got {len(milestones)}")
        self.optimizer = optimizer
        self._schedulers = list(schedulers)
        self.milestones = [int(m) for m in milestones]
        self.last_epoch = last_epoch + 1
        for group in optimizer.param_groups:  # undo what the schedules' creation did
            group["lr"] = group["initial_lr"]
        for s in _leaves(self._schedulers):
            s.last_epoch -= 1
        idx = bisect_right(self.milestones, 0)
        self._schedulers[idx]._initial_step()
        self._last_lr = self._schedulers[idx].get_last_lr()

    def step(self) -> None:
        self.last_epoch += 1
        idx = bisect_right(self.milestones, self.last_epoch)
        sched = self._schedulers[idx]
        if idx > 0 and self.milestones[idx - 1] == self.last_epoch:
            sched._jump_to_start()
        else:
            sched.step()
        self._last_lr = sched.get_last_lr()

    def state_dict(self) -> dict[str, Any]:
        return {"type": "SequentialLR", "last_epoch": self.last_epoch,
                "milestones": list(self.milestones), "last_lr": list(self._last_lr),
                "schedulers": [s.state_dict() for s in self._schedulers]}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        _check_type(self, state_dict)
        _check_count(self, state_dict)
        self.last_epoch = int(state_dict["last_epoch"])
        self.milestones = [int(m) for m in state_dict["milestones"]]
        self._last_lr = list(state_dict["last_lr"])
        for s, saved in zip(self._schedulers, state_dict["schedulers"], strict=True):
            s.load_state_dict(saved)


class ChainedScheduler(LRScheduler):
    """Step several schedules together; their (chainable) changes multiply.

    Example, the paper's ResNet-110 recipe stepped every iteration: lr 0.01
    for 400 iterations, then 0.1, divided by 10 at 32k and 48k::

        sched = ChainedScheduler([ConstantLR(opt, factor=0.1, total_iters=400),
                                  MultiStepLR(opt, [32000, 48000], 0.1)])

    Parameters
    ----------
    schedulers : list of LRScheduler of one optimizer.
    optimizer : Optimizer, optional (default: that of the first schedule).
    """

    def __init__(self, schedulers: Sequence[LRScheduler],
                 optimizer: Optimizer | None = None) -> None:
        if not schedulers:
            raise ValueError("ChainedScheduler: expected at least one schedule")
        optimizer = optimizer or schedulers[0].optimizer
        _check_children(self, optimizer, schedulers)
        self.optimizer = optimizer
        self._schedulers = list(schedulers)
        self._last_lr = self._current_lrs()

    def step(self) -> None:
        for s in self._schedulers:
            s.step()
        self._last_lr = self._current_lrs()

    def state_dict(self) -> dict[str, Any]:
        return {"type": "ChainedScheduler", "last_lr": list(self._last_lr),
                "schedulers": [s.state_dict() for s in self._schedulers]}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        _check_type(self, state_dict)
        _check_count(self, state_dict)
        self._last_lr = list(state_dict["last_lr"])
        for s, saved in zip(self._schedulers, state_dict["schedulers"], strict=True):
            s.load_state_dict(saved)


def _check_children(owner: Any, optimizer: Any, schedulers: Sequence[Any]) -> None:
    name = type(owner).__name__
    if not schedulers:
        raise ValueError(f"{name}: expected at least one schedule")
    for i, s in enumerate(schedulers):
        if not isinstance(s, LRScheduler):
            raise TypeError(f"{name}: schedulers[{i}] is a {type(s).__name__}, "
                            "not an LRScheduler")
        if s.optimizer is not optimizer:
            raise ValueError(f"{name}: schedulers[{i}] drives another optimizer")


def _check_count(owner: Any, state_dict: Mapping[str, Any]) -> None:
    if len(state_dict["schedulers"]) != len(owner._schedulers):
        raise ValueError(f"{type(owner).__name__}.load_state_dict: "
                         f"{len(state_dict['schedulers'])} schedules saved, "
                         f"{len(owner._schedulers)} here")


def _leaves(schedulers: Sequence[LRScheduler]) -> Iterable[LRScheduler]:
    for s in schedulers:
        children = getattr(s, "_schedulers", None)
        if children is not None:
            yield from _leaves(children)
        else:
            yield s
