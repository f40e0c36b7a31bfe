"""Checkers for chapter 05's optimizer exercise: one step of SGD with momentum
and weight decay, exactly as ``torch.optim.SGD`` (and ``minires.optim.SGD``)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..nn import Parameter
from ..optim import SGD
from .core import Check, CheckResult, as_float64, rel_error

# (momentum, dampening, weight_decay, the lr of each step). The lr changes
# half-way, as a schedule would change it; a dampening of 0.5 in the second
# scenario tells PyTorch's first step (buf = g, undamped) from the later ones.
SCENARIOS = (
    (0.9, 0.0, 0.01, (0.1, 0.1, 0.05, 0.05)),
    (0.8, 0.5, 0.05, (0.2, 0.2, 0.2)),
)


def _variant(how: str, p: np.ndarray, grads: list[np.ndarray], lrs: tuple[float, ...],
             momentum: float, dampening: float, wd: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (p, buf) after each step of a typical wrong SGD (``how`` names it)."""
    out, buf = [], None
    for grad, lr in zip(grads, lrs, strict=True):
        g = grad if how in ("no_decay", "decay_after") else grad + wd * p
        if how == "buf_after":                     # steps with the old buffer, then updates it
            old = np.zeros_like(p) if buf is None else buf
            p = p - lr * old
            buf = g.copy() if buf is None else momentum * buf + (1 - dampening) * g
            out.append((p, buf))
            continue
        scale = lr if how in ("lr_twice", "lr_in_buf") else 1.0
        if buf is None:
            buf = (1 - dampening) * scale * g if how == "damp_first" else scale * g
        elif how == "no_dampening":
            buf = momentum * buf + g
        elif how == "no_momentum":
            buf = g
        else:
            buf = momentum * buf + (1 - dampening) * scale * g
        step = buf + wd * p if how == "decay_after" else buf
        if how == "lr_in_buf":
            p = p - step
        elif how == "uphill":
            p = p + lr * step
        else:
            p = p - lr * step
        out.append((p, buf))
    return out


HINTS = {
    "decay_after": "weight decay was kept out of the momentum buffer (added to the step after "
                   "the momentum, or applied as p *= 1 - lr * weight_decay, the decoupled "
                   "decay of SGDW and AdamW): torch.optim.SGD first makes "
                   "g = grad + weight_decay * p, and this g goes into the buffer.",
    "no_decay": "weight decay is missing: g = grad + weight_decay * p.",
    "damp_first": "on the first step (buf is None) PyTorch sets buf = g, without "
                  "dampening; (1 - dampening) applies from the second step on. (A buffer "
                  "started at zeros and updated with dampening gives (1 - dampening) * g.)",
    "buf_after": "p moved with the old buffer (zero on the first step) and the buffer was "
                 "updated afterwards: update buf first, then p = p - lr * buf.",
    "no_dampening": "dampening is ignored: from the second step on, "
                    "buf = momentum * buf + (1 - dampening) * g.",
    "no_momentum": "the buffer forgets its past: buf = momentum * buf + (1 - dampening) * g, "
                   "not g.",
    "lr_twice": "the learning rate is applied twice (once into the buffer, once in the "
                "step): the buffer holds gradients only, and p = p - lr * buf.",
    "lr_in_buf": "the buffer holds lr times PyTorch's buffer (buf = momentum * buf + lr * g, "
                 "p = p - buf). It agrees with PyTorch only while lr is constant: when a "
                 "schedule changes lr, the old steps keep their old lr. PyTorch keeps "
                 "gradients in the buffer and multiplies by the current lr: p = p - lr * buf.",
    "uphill": "p moves uphill: the step is p - lr * buf (minus: against the gradient).",
}


def _close(got: np.ndarray | None, wrong: np.ndarray) -> bool:
    return (got is not None and got.shape == wrong.shape and bool(np.all(np.isfinite(got)))
            and rel_error(got, wrong) <= 1e-6)


def _reference(p0: np.ndarray, grads: list[np.ndarray], lrs: tuple[float, ...],
               momentum: float, dampening: float, wd: float):
    """(p, buf) after each step of ``minires.optim.SGD`` (PyTorch's rule)."""
    param = Parameter(p0.copy())
    opt = SGD([param], lr=lrs[0], momentum=momentum, dampening=dampening, weight_decay=wd)
    out = []
    for grad, lr in zip(grads, lrs, strict=True):
        opt.param_groups[0]["lr"] = lr
        param.grad = grad.copy()
        opt.step()
        out.append((param.data.copy(), opt.state[param]["momentum_buffer"].copy()))
    return out


def check_sgd_step(step: Callable) -> CheckResult:
    """Check one step of SGD with momentum, dampening and weight decay.

    Signature::

        step(p, grad, buf, lr, momentum, dampening, weight_decay) -> (p_new, buf_new)
            p, grad : float64 arrays of one shape (the parameter, its gradient)
            buf : None on the first step, then the buf_new of the previous call
            lr, momentum, dampening, weight_decay : floats (momentum > 0)
            p_new, buf_new : arrays of p's shape, the parameter after the step and
                the momentum buffer as torch.optim.SGD stores it

    The rule (``torch.optim.SGD`` without Nesterov)::

        g = grad + weight_decay * p
        buf = g                                         on the first step
        buf = momentum * buf + (1 - dampening) * g      later
        p_new = p - lr * buf

    Run for a few steps on a (3, 4) parameter, feeding back the returned
    ``buf``, against :class:`minires.optim.SGD`, in two scenarios: momentum
    0.9, weight decay 0.01, no dampening, lr 0.1 then 0.05; and momentum 0.8,
    dampening 0.5, weight decay 0.05, lr 0.2. The arguments are passed by
    keyword after ``buf``. Copies are passed, so updating in place is fine.
    """
    check = Check("check_sgd_step")
    rng = np.random.default_rng(0)
    for momentum, dampening, wd, lrs in SCENARIOS:
        p0 = rng.standard_normal((3, 4))
        grads = [rng.standard_normal((3, 4)) for _ in lrs]
        label = (f"momentum {momentum}, dampening {dampening}, weight decay {wd}, "
                 f"lr {' then '.join(str(v) for v in dict.fromkeys(lrs))}")
        expected = _reference(p0, grads, lrs, momentum, dampening, wd)
        variants = {how: _variant(how, p0, grads, lrs, momentum, dampening, wd)
                    for how in HINTS}
        p, buf, worst = p0.copy(), None, 0.0
        for k, (grad, lr) in enumerate(zip(grads, lrs, strict=True)):
            what = f"step({'p, grad, None' if buf is None else 'p, grad, buf'}, lr={lr}, ...)"
            got = check.call(what, step, p.copy(), grad.copy(),
                             None if buf is None else np.array(buf, dtype=np.float64),
                             lr=lr, momentum=momentum, dampening=dampening, weight_decay=wd)
            parts = check.unpack(what, got, ["p_new", "buf_new"])
            if parts is None:
                break
            # compare quietly; report only the first step that goes wrong
            sub = Check(check.name)
            p_exp, buf_exp = expected[k]
            got_p, got_buf = as_float64(parts[0]), as_float64(parts[1])
            # a typical mistake is recognised when both p_new and buf_new match it
            named = [h for h in HINTS
                     if _close(got_p, variants[h][k][0]) and _close(got_buf, variants[h][k][1])]
            both = [(variants[h][k], HINTS[h]) for h in named[:1]]
            p_mistakes = ([(v[0], hint) for v, hint in both] if both
                          else [(variants[h][k][0], HINTS[h]) for h in HINTS])
            buf_mistakes = ([(v[1], hint) for v, hint in both] if both
                            else [(variants[h][k][1], HINTS[h]) for h in HINTS])
            sub.compare(f"p_new after step {k + 1} ({label})", parts[0], p_exp, tol=1e-12,
                        mistakes=p_mistakes)
            sub.compare(f"buf_new after step {k + 1} ({label})", parts[1], buf_exp, tol=1e-12,
                        mistakes=buf_mistakes)
            if sub.failed:
                for line in sub.lines:
                    if line.startswith("ok"):
                        check.note(line)
                    else:
                        check.fail(line)
                for h in sub.hints:
                    check.hint(h)
                break
            worst = max(worst, rel_error(got_p, p_exp), rel_error(got_buf, buf_exp))
            p, buf = got_p, got_buf
        else:
            check.note(f"ok      p_new and buf_new over {len(lrs)} steps ({label}): relative "
                       f"error at most {worst:.1e} (a correct answer is below 1e-12)")
            continue
        if not check.implemented:
            break
    return check.result()

