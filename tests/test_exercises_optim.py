"""check_sgd_step: PyTorch's rule passes, the typical wrong ones fail with their hint."""

from __future__ import annotations

import numpy as np
import pytest

from minires.exercises import check_sgd_step


def make_step(bug: str = ""):
    """A student's SGD step, correct or with one typical bug."""

    def step(p, grad, buf, lr, momentum, dampening, weight_decay):
        g = grad if bug in ("decay_after", "no_decay", "decoupled") else grad + weight_decay * p
        if bug == "decoupled":
            p = p * (1 - lr * weight_decay)
        if bug == "buf_after":
            old = np.zeros_like(p) if buf is None else buf
            p_new = p - lr * old
            buf = g.copy() if buf is None else momentum * buf + (1 - dampening) * g
            return p_new, buf
        if bug in ("zero_init", "damp_first") and buf is None:
            buf = np.zeros_like(p)
            buf = momentum * buf + (1 - dampening) * g
        elif buf is None:
            buf = lr * g if bug in ("lr_twice", "lr_in_buf") else g.copy()
        elif bug == "no_dampening":
            buf = momentum * buf + g
        elif bug == "no_momentum":
            buf = g
        elif bug in ("lr_twice", "lr_in_buf"):
            buf = momentum * buf + (1 - dampening) * lr * g
        elif bug == "in_place":
            buf *= momentum
            buf += (1 - dampening) * g
        else:
            buf = momentum * buf + (1 - dampening) * g
        if bug == "decay_after":
            return p - lr * (buf + weight_decay * p), buf
        if bug == "lr_in_buf":
            return p - buf, buf
        if bug == "in_place":
            p -= lr * buf
            return p, buf
        if bug == "uphill":
            return p + lr * buf, buf
        return p - lr * buf, buf

    return step


def test_pytorch_rule_passes():
    result = check_sgd_step(make_step())
    assert result.passed and result.implemented, str(result)
    assert str(result).count("ok      p_new and buf_new over") == 2


def test_in_place_updates_are_fine():
    assert check_sgd_step(make_step("in_place")).passed


@pytest.mark.torch
def test_matches_torch_optim_sgd():
    torch = pytest.importorskip("torch")

    def step(p, grad, buf, lr, momentum, dampening, weight_decay):
        t = torch.tensor(p, requires_grad=True)
        opt = torch.optim.SGD([t], lr=lr, momentum=momentum, dampening=dampening,
                              weight_decay=weight_decay)
        if buf is not None:
            opt.state[t]["momentum_buffer"] = torch.tensor(buf)
        t.grad = torch.tensor(grad)
        opt.step()
        return t.detach().numpy().copy(), opt.state[t]["momentum_buffer"].numpy().copy()

    result = check_sgd_step(step)
    assert result.passed, str(result)


@pytest.mark.parametrize("bug, hint", [
    ("decay_after", "weight decay was kept out of the momentum buffer"),
    ("decoupled", "weight decay was kept out of the momentum buffer"),
    ("no_decay", "weight decay is missing"),
    ("zero_init", "PyTorch sets buf = g, without dampening"),
    ("buf_after", "update buf first"),
    ("no_dampening", "dampening is ignored"),
    ("lr_twice", "applied twice"),
    ("lr_in_buf", "agrees with PyTorch only while lr is constant"),
    ("no_momentum", "the buffer forgets its past"),
    ("uphill", "p moves uphill"),
])
def test_typical_mistake_gets_its_hint(bug, hint):
    result = check_sgd_step(make_step(bug))
    text = str(result)
    assert not result.passed and result.implemented, text
    assert "WRONG" in text and hint in text, text
    assert len(result.hints) == 1, text          # one diagnosis, not a list of guesses


def test_first_step_without_dampening_is_only_visible_with_dampening():
    text = str(check_sgd_step(make_step("zero_init")))
    assert "ok      p_new and buf_new over 4 steps (momentum 0.9, dampening 0.0" in text
    assert "WRONG   p_new after step 1 (momentum 0.8, dampening 0.5" in text


def test_missing_buffer_is_named():
    text = str(check_sgd_step(lambda p, grad, buf, **kw: (p - kw["lr"] * grad, None)))
    assert "buf_new after step 1" in text and "is None; expected an array of shape (3, 4)" in text


def test_wrong_return_is_named():
    text = str(check_sgd_step(lambda p, grad, buf, **kw: p - kw["lr"] * grad))
    assert "should return a tuple (p_new, buf_new), got a ndarray" in text


def test_stub_is_not_implemented():
    def step(p, grad, buf, lr, momentum, dampening, weight_decay):
        raise NotImplementedError

    result = check_sgd_step(step)
    assert not result.implemented and result.status == "not implemented yet"
    assert str(result).count("NotImplementedError") == 1
