"""Optimizers, schedules and gradient clipping: parity with torch.optim, state
round trips, parameter groups, errors."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from util import host, rel, strict, torch_or_skip

from minires import optim
from minires.checkpoint import flatten_tree, unflatten_tree
from minires.nn import Parameter, Sequential
from minires.nn.layers import BatchNorm2d, Conv2d, Linear

SHAPES = [(4, 3), (5,), (2, 3, 2, 2)]


def make_values(seed=0, shapes=SHAPES, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


def make_grads(steps, seed=1, shapes=SHAPES, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(steps)]


def through_npz(state):
    """A state dict as it comes back from an .npz file (no pickle)."""
    buf = io.BytesIO()
    np.savez(buf, **flatten_tree(state, "s/"))
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as f:
        return unflatten_tree(dict(f.items()), "s/")


def groups_for(params, spec):
    """spec: None (one flat list) or list of (indices, options) groups."""
    if spec is None:
        return list(params)
    return [{"params": [params[i] for i in idx], **opts} for idx, opts in spec]


# (optimizer name, constructor kwargs, group spec)
CASES = [
    ("SGD", dict(lr=0.1), None),
    ("SGD", dict(lr=0.1, momentum=0.9), None),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True), None),
    ("SGD", dict(lr=0.05, momentum=0.8, dampening=0.3), None),
    ("SGD", dict(lr=0.1, momentum=0.9, weight_decay=1e-2), None),
    ("SGD", dict(lr=0.1, weight_decay=0.1), None),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-2), None),
    ("Adam", dict(), None),
    ("Adam", dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1), None),
    ("AdamW", dict(), None),
    ("AdamW", dict(lr=1e-2, betas=(0.5, 0.9), weight_decay=0.5), None),
    ("SGD", dict(lr=0.1, momentum=0.9, weight_decay=1e-3),
     [([0], dict(lr=0.01, weight_decay=0.0)), ([1, 2], dict(momentum=0.5, nesterov=True))]),
    ("Adam", dict(lr=1e-2, weight_decay=1e-2),
     [([2, 0], dict(lr=0.1)), ([1], dict(weight_decay=0.0, betas=(0.7, 0.95)))]),
    ("AdamW", dict(lr=1e-2), [([1], dict(weight_decay=0.0)), ([0, 2], dict(lr=3e-3))]),
]


@pytest.mark.torch
@pytest.mark.parametrize("name, kwargs, spec", CASES)
def test_optimizer_matches_torch(name, kwargs, spec):
    torch = torch_or_skip()
    steps = 10
    values, grads = make_values(), make_grads(steps)
    ours = [Parameter(v.copy()) for v in values]
    theirs = [torch.tensor(v.copy(), requires_grad=True) for v in values]
    opt = getattr(optim, name)(groups_for(ours, spec), **kwargs)
    topt = getattr(torch.optim, name)(groups_for(theirs, spec), **kwargs)
    for t in range(steps):
        for i, (p, tp, g) in enumerate(zip(ours, theirs, grads[t], strict=True)):
            if i == 1 and t in (3, 4):  # no gradient: both skip this parameter
                p.grad, tp.grad = None, None
            else:
                p.grad, tp.grad = g.copy(), torch.tensor(g)
        opt.step()
        topt.step()
        for p, tp in zip(ours, theirs, strict=True):
            assert p.data.dtype == np.float64
            assert rel(p.data, tp.detach()) <= 1e-12, (name, t)
    # the buffers agree too (same names as torch's)
    for p, tp in zip(ours, theirs, strict=True):
        for key, value in opt.state.get(p, {}).items():
            expected = topt.state[tp][key]
            if key == "step":
                assert value == int(expected.item())
            else:
                assert rel(value, expected) <= 1e-12, key


@pytest.mark.torch
def test_clip_grad_norm_matches_torch():
    torch = torch_or_skip()
    grads = make_grads(1, seed=3)[0]
    for norm_type in (2.0, 1.0, 3.0, float("inf")):
        for max_norm in (0.5, 1e3):
            ours = [Parameter(v) for v in make_values()]
            theirs = [torch.tensor(v, requires_grad=True) for v in make_values()]
            for p, tp, g in zip(ours, theirs, grads, strict=True):
                p.grad, tp.grad = g.copy(), torch.tensor(g)
            extra = Parameter(np.ones(3))  # no gradient: ignored
            total = optim.clip_grad_norm_(ours + [extra], max_norm, norm_type)
            ttotal = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type)
            assert isinstance(total, float)
            assert abs(total - ttotal.item()) <= 1e-12 * ttotal.item()
            for p, tp in zip(ours, theirs, strict=True):
                assert rel(p.grad, tp.grad) <= 1e-12
            assert extra.grad is None
            joint = np.linalg.vector_norm(np.concatenate([p.grad.ravel() for p in ours]),
                                          ord=norm_type)
            assert joint == pytest.approx(min(total, max_norm), rel=1e-5)
    p = Parameter(np.zeros(4))
    p.grad = np.array([3.0, 4.0, 0.0, 0.0])
    assert optim.clip_grad_norm_(p, 1.0) == 5.0
    assert abs(np.linalg.norm(p.grad) - 1.0) < 1e-6
    assert optim.clip_grad_norm_([Parameter(np.zeros(2))], 1.0) == 0.0
    p.grad = np.array([np.inf, 1.0])
    with pytest.raises(RuntimeError, match="norm"):
        optim.clip_grad_norm_(p, 1.0, error_if_nonfinite=True)


# --- schedules ------------------------------------------------------------------------
SCHEDULES = {
    "multistep": lambda S, o: S.MultiStepLR(o, milestones=[5, 12, 12, 20], gamma=0.3),
    "multistep_paper": lambda S, o: S.MultiStepLR(o, [8, 16]),
    "cosine": lambda S, o: S.CosineAnnealingLR(o, T_max=10, eta_min=1e-3),
    "cosine_long": lambda S, o: S.CosineAnnealingLR(o, T_max=30),
    "linear_warmup": lambda S, o: S.LinearLR(o, start_factor=0.1, total_iters=8),
    "linear_decay": lambda S, o: S.LinearLR(o, start_factor=1.0, end_factor=0.2, total_iters=10),
    "constant": lambda S, o: S.ConstantLR(o, factor=0.1, total_iters=4),
    "warmup_cosine": lambda S, o: S.SequentialLR(
        o, [S.LinearLR(o, start_factor=0.1, total_iters=5), S.CosineAnnealingLR(o, T_max=20)],
        milestones=[5]),
    "warmup_multistep": lambda S, o: S.SequentialLR(
        o, [S.ConstantLR(o, factor=0.1, total_iters=3), S.MultiStepLR(o, [10, 15], 0.5)],
        milestones=[3]),
    "chained_paper_110": lambda S, o: S.ChainedScheduler(
        [S.ConstantLR(o, factor=0.1, total_iters=4), S.MultiStepLR(o, [16, 24], 0.1)]),
    "chained_linear_cosine": lambda S, o: S.ChainedScheduler(
        [S.LinearLR(o, start_factor=0.2, total_iters=6), S.CosineAnnealingLR(o, T_max=25)]),
}


def lr_sequence(S, opt, make, steps=30):
    sched = make(S, opt)
    seq = [list(sched.get_last_lr())]
    for _ in range(steps):
        opt.step()
        sched.step()
        seq.append(list(sched.get_last_lr()))
        assert seq[-1] == [g["lr"] for g in opt.param_groups]
    return seq, sched


@pytest.mark.torch
@pytest.mark.parametrize("kind", sorted(SCHEDULES))
def test_schedule_matches_torch(kind):
    torch = torch_or_skip()
    ours = optim.SGD([{"params": [Parameter(np.zeros(2))]},
                      {"params": [Parameter(np.zeros(3))], "lr": 0.02}], lr=0.1, momentum=0.9)
    theirs = torch.optim.SGD([{"params": [torch.zeros(2, requires_grad=True)]},
                              {"params": [torch.zeros(3, requires_grad=True)], "lr": 0.02}],
                             lr=0.1, momentum=0.9)
    seq, _ = lr_sequence(optim, ours, SCHEDULES[kind])
    tseq, _ = lr_sequence(torch.optim.lr_scheduler, theirs, SCHEDULES[kind])
    assert seq == tseq  # exactly: same recursive formulas, same rounding


def test_schedules_follow_closed_forms():
    """The recursive formulas track the textbook closed forms."""
    opt = optim.SGD([Parameter(np.zeros(1))], lr=0.1)
    seq, _ = lr_sequence(optim, opt, SCHEDULES["cosine_long"], steps=30)
    for t, (lr,) in enumerate(seq):
        assert lr == pytest.approx(0.05 * (1 + math.cos(math.pi * t / 30)), abs=1e-15)
    opt = optim.SGD([Parameter(np.zeros(1))], lr=0.1)
    seq, _ = lr_sequence(optim, opt, SCHEDULES["linear_warmup"], steps=12)
    for t, (lr,) in enumerate(seq):
        assert lr == pytest.approx(0.1 * (0.1 + 0.9 * min(t, 8) / 8), rel=1e-14)
    opt = optim.SGD([Parameter(np.zeros(1))], lr=0.1)
    seq, _ = lr_sequence(optim, opt, SCHEDULES["multistep_paper"], steps=20)
    assert [round(lr, 12) for (lr,) in seq] == [0.1] * 8 + [0.01] * 8 + [0.001] * 5


@pytest.mark.parametrize("kind", sorted(SCHEDULES))
def test_schedule_state_round_trip(kind):
    """Save optimizer + schedule at step 7, restore into new objects, continue:
    the same lrs as never stopping."""
    def fresh():
        return optim.SGD([{"params": [Parameter(np.zeros(2))]},
                          {"params": [Parameter(np.zeros(3))], "lr": 0.02}], lr=0.1)

    opt = fresh()
    full, _ = lr_sequence(optim, opt, SCHEDULES[kind], steps=30)
    opt = fresh()
    first, sched = lr_sequence(optim, opt, SCHEDULES[kind], steps=7)
    saved_opt, saved_sched = through_npz(opt.state_dict()), through_npz(sched.state_dict())
    opt2 = fresh()
    sched2 = SCHEDULES[kind](optim, opt2)
    opt2.load_state_dict(saved_opt)
    sched2.load_state_dict(saved_sched)
    rest = [list(sched2.get_last_lr())]
    for _ in range(23):
        opt2.step()
        sched2.step()
        rest.append(list(sched2.get_last_lr()))
    assert first + rest[1:] == full


def test_scheduler_state_is_plain_and_type_checked():
    opt = optim.SGD([Parameter(np.zeros(1))], lr=0.1)
    sched = optim.MultiStepLR(opt, [3, 6])
    state = sched.state_dict()
    assert state == {"type": "MultiStepLR", "last_epoch": 0, "step_count": 1, "base_lrs": [0.1],
                     "last_lr": [0.1], "milestones": [3, 6], "gamma": 0.1}
    with pytest.raises(ValueError, match="MultiStepLR"):
        optim.CosineAnnealingLR(opt, T_max=5).load_state_dict(state)
    with pytest.raises(KeyError, match="initial_lr"):
        optim.MultiStepLR(optim.SGD([Parameter(np.zeros(1))], lr=0.1), [3], last_epoch=4)


# --- state round trip of the optimizers ------------------------------------------------
@pytest.mark.parametrize("name, kwargs", [
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)),
    ("Adam", dict(lr=1e-2, weight_decay=1e-2)),
    ("AdamW", dict(lr=1e-2)),
])
def test_optimizer_state_round_trip_then_continue(name, kwargs):
    steps, stop = 10, 4
    grads = make_grads(steps)

    def run(opt, params, ts):
        for t in ts:
            for p, g in zip(params, grads[t], strict=True):
                p.grad = g.copy()
            opt.step()

    params = [Parameter(v) for v in make_values()]
    opt = getattr(optim, name)(params, **kwargs)
    run(opt, params, range(steps))

    params1 = [Parameter(v) for v in make_values()]
    opt1 = getattr(optim, name)(params1, **kwargs)
    run(opt1, params1, range(stop))
    saved = through_npz(opt1.state_dict())
    params2 = [Parameter(p.data.copy()) for p in params1]
    opt2 = getattr(optim, name)(params2, lr=123.0) if name == "SGD" \
        else getattr(optim, name)(params2)
    opt2.load_state_dict(saved)
    assert opt2.param_groups[0]["lr"] == kwargs["lr"]  # hyperparameters come back too
    run(opt2, params2, range(stop, steps))
    for a, b in zip(params, params2, strict=True):
        assert np.array_equal(a.data, b.data)


def test_state_dict_is_a_copy_and_has_torch_layout():
    params = [Parameter(v) for v in make_values()]
    opt = optim.Adam([{"params": params[:2]}, {"params": params[2:], "lr": 0.1}])
    for p, g in zip(params, make_grads(1)[0], strict=True):
        p.grad = g
    params[1].grad = None
    opt.step()
    state = opt.state_dict()
    assert sorted(state["state"]) == [0, 2]  # parameter 1 had no gradient: no state
    assert [g["params"] for g in state["param_groups"]] == [[0, 1], [2]]
    assert state["param_groups"][1]["lr"] == 0.1
    assert state["param_groups"][0]["betas"] == (0.9, 0.999)
    assert state["state"][0]["step"] == 1
    before = state["state"][0]["exp_avg"].copy()
    params[0].grad = make_grads(1, seed=5)[0][0]
    opt.step()
    assert np.array_equal(state["state"][0]["exp_avg"], before)


def test_load_state_dict_checks_structure():
    params = [Parameter(v) for v in make_values()]
    opt = optim.SGD(params, lr=0.1, momentum=0.9)
    for p, g in zip(params, make_grads(1)[0], strict=True):
        p.grad = g
    opt.step()
    state = opt.state_dict()
    with pytest.raises(ValueError, match="groups"):
        optim.SGD([{"params": params[:1]}, {"params": params[1:]}], lr=0.1).load_state_dict(state)
    with pytest.raises(ValueError, match="group 0"):
        optim.SGD(params[:2], lr=0.1).load_state_dict(state)
    other = [Parameter(np.zeros(s)) for s in [(3, 4), (5,), (2, 3, 2, 2)]]
    target = optim.SGD(other, lr=0.5)
    with pytest.raises(ValueError, match="shape"):
        target.load_state_dict(state)
    assert target.state == {} and target.param_groups[0]["lr"] == 0.5  # unchanged


# --- dtype, skipping, backends -----------------------------------------------------------
@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW"])
def test_float32_stays_float32_and_updates_in_place(name):
    values = make_values(dtype=np.float32)
    params = [Parameter(v.copy()) for v in values]
    arrays = [p.data for p in params]
    opt = getattr(optim, name)(params, lr=0.1, weight_decay=0.01)
    for p, g in zip(params, make_grads(1, dtype=np.float32)[0], strict=True):
        p.grad = g
    opt.step()
    for p, a, v in zip(params, arrays, values, strict=True):
        assert p.data is a and p.data.dtype == np.float32
        assert not np.array_equal(p.data, v)
        assert all(b.dtype == np.float32 for b in opt.state[p].values() if hasattr(b, "dtype"))


def test_frozen_and_gradless_parameters_are_skipped():
    frozen = Parameter(np.ones(3), requires_grad=False)
    frozen.grad = np.ones(3)
    gradless = Parameter(np.ones(2))
    live = Parameter(np.ones(2))
    live.grad = np.full(2, 0.5)
    for opt in (optim.SGD([frozen, gradless, live], lr=0.1, momentum=0.9, weight_decay=0.1),
                optim.AdamW([frozen, gradless, live], lr=0.1)):
        opt.step()
        assert np.array_equal(frozen.data, np.ones(3))
        assert np.array_equal(gradless.data, np.ones(2))
        assert list(opt.state) == [live]
        assert not np.array_equal(live.data, np.ones(2))


@pytest.mark.parametrize("name, kwargs", [
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2)),
    ("Adam", dict(lr=1e-2, weight_decay=1e-2)),
    ("AdamW", dict(lr=1e-2)),
])
def test_portable_under_array_api_strict(name, kwargs):
    """The update uses only Array API calls: array-api-strict gives NumPy's numbers."""
    grads = make_grads(3)
    ref = [Parameter(v) for v in make_values()]
    port = [Parameter(strict(v)) for v in make_values()]
    opt_ref = getattr(optim, name)(ref, **kwargs)
    opt_port = getattr(optim, name)(port, **kwargs)
    for t in range(3):
        for p, q, g in zip(ref, port, grads[t], strict=True):
            p.grad, q.grad = g.copy(), strict(g.copy())
        opt_ref.step()
        opt_port.step()
    for p, q in zip(ref, port, strict=True):
        assert rel(host(q.data), p.data) <= 1e-15
    restored = getattr(optim, name)([Parameter(strict(v)) for v in make_values()], **kwargs)
    restored.load_state_dict(through_npz(opt_port.state_dict()))
    p0 = restored.param_groups[0]["params"][0]
    key = "momentum_buffer" if name == "SGD" else "exp_avg"
    assert type(restored.state[p0][key]) is type(port[0].data)


def test_zero_grad():
    p, q = Parameter(np.ones(2)), Parameter(np.ones(3))
    p.grad, q.grad = np.ones(2), np.ones(3)
    opt = optim.SGD([p, q], lr=0.1)
    opt.zero_grad(set_to_none=False)
    assert np.array_equal(p.grad, np.zeros(2)) and p.grad.dtype == np.float64
    opt.zero_grad()
    assert p.grad is None and q.grad is None


# --- parameter groups --------------------------------------------------------------------
def small_net():
    return Sequential(Conv2d(3, 4, 3, bias=False), BatchNorm2d(4), Conv2d(4, 4, 1),
                      Linear(4, 2))


def test_param_groups_no_decay():
    net = small_net()
    groups = optim.param_groups_no_decay(net, 1e-4, lr=0.5)
    named = dict(net.named_parameters())
    names = [[n for n, p in named.items() if any(p is q for q in g["params"])] for g in groups]
    assert names == [["0.weight", "2.weight", "3.weight"],
                     ["1.weight", "1.bias", "2.bias", "3.bias"]]
    assert [g["weight_decay"] for g in groups] == [1e-4, 0.0]
    assert [g["lr"] for g in groups] == [0.5, 0.5]
    opt = optim.SGD(groups, lr=0.1, momentum=0.9)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(named)


def test_param_groups_backbone_lower_lr():
    net = small_net()
    head = lambda n: n.startswith("3.")
    groups = (optim.param_groups_no_decay(net, 1e-4, select=lambda n: not head(n), lr=0.01)
              + optim.param_groups_no_decay(net, 1e-4, select=head))
    opt = optim.SGD(groups, lr=0.1, momentum=0.9)
    assert [g["lr"] for g in opt.param_groups] == [0.01, 0.01, 0.1, 0.1]
    assert opt.param_groups[2]["params"] == [net[3].weight]
    sched = optim.MultiStepLR(opt, [1])
    opt.step()
    sched.step()
    assert [round(lr, 15) for lr in sched.get_last_lr()] == [0.001, 0.001, 0.01, 0.01]


def test_add_param_group_and_errors():
    p, q = Parameter(np.ones(2)), Parameter(np.ones(3))
    opt = optim.SGD([p], lr=0.1, momentum=0.9)
    opt.add_param_group({"params": q, "lr": 0.01})
    assert opt.param_groups[1] == {"params": [q], "lr": 0.01, "momentum": 0.9,
                                   "dampening": 0.0, "weight_decay": 0.0, "nesterov": False}
    with pytest.raises(ValueError, match="more than once"):
        opt.add_param_group({"params": [p]})
    with pytest.raises(ValueError, match="more than once"):
        optim.SGD([p, p], lr=0.1)
    with pytest.raises(TypeError, match="single"):
        optim.SGD(p, lr=0.1)
    with pytest.raises(ValueError, match="empty"):
        optim.SGD([], lr=0.1)
    with pytest.raises(TypeError, match="set"):
        optim.SGD([{"params": {p}}], lr=0.1)
    with pytest.raises(ValueError, match="learning rate"):
        optim.SGD([p], lr=-1.0)
    with pytest.raises(ValueError, match="Nesterov"):
        optim.SGD([p], lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="betas"):
        optim.Adam([p], betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="weight_decay"):
        optim.AdamW([p], weight_decay=-0.1)
    p.grad = np.ones(3)
    with pytest.raises(ValueError, match="shape"):
        optim.SGD([p], lr=0.1).step()
