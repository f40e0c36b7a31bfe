"""Modules: registration, state dicts, gradient accumulation, errors, and every
layer checked against finite differences and against torch.nn."""

from __future__ import annotations

import numpy as np
import pytest
from util import host, rel, strict, torch_or_skip

from minires import backend, nn
from minires.gradcheck import check_module


def small_net(dtype="float32"):
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False, dtype=dtype),  # BN follows: no bias
        nn.BatchNorm2d(4, dtype=dtype),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 5, (3, 2), stride=(1, 2), bias=False, dtype=dtype),
        nn.AvgPool2d(2, stride=1, padding=1),
        nn.GlobalAvgPool2d(),
        nn.BatchNorm1d(5, dtype=dtype),
        nn.Linear(5, 3, dtype=dtype),
    )


def torch_twin(torch, net):
    """The same network in torch.nn, with identical float64 weights."""
    tnn = torch.nn
    t = tnn.Sequential(
        tnn.Conv2d(3, 4, 3, padding=1, bias=False), tnn.BatchNorm2d(4), tnn.ReLU(), tnn.MaxPool2d(2),
        tnn.Conv2d(4, 5, (3, 2), stride=(1, 2), bias=False), tnn.AvgPool2d(2, stride=1, padding=1),
        tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.BatchNorm1d(5), tnn.Linear(5, 3),
    ).double()
    state = {k: torch.from_numpy(np.array(host(v))) for k, v in net.state_dict().items()}
    # torch's Flatten sits at index 7, so the later indices shift by one.
    remap = {"7.": "8.", "8.": "9."}
    state = {(remap.get(k[:2], k[:2]) + k[2:]): v for k, v in state.items()}
    t.load_state_dict(state)
    return t


# ---- machinery -------------------------------------------------------------

def test_state_dict_keys_follow_pytorch():
    torch = torch_or_skip()
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                        nn.Linear(4, 2))
    t = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                            torch.nn.Flatten(), torch.nn.Linear(4, 2))
    assert list(net.state_dict()) == list(t.state_dict())
    for k, v in t.state_dict().items():
        assert tuple(net.state_dict()[k].shape) == tuple(v.shape), k
    assert [n for n, _ in net.named_parameters()] == [n for n, _ in t.named_parameters()]


def test_parameters_are_float32_by_default_and_to_casts():
    net = small_net()
    assert all(p.data.dtype == np.float32 for p in net.parameters())
    net.to(dtype="float64")
    assert all(p.data.dtype == np.float64 for p in net.parameters())
    bn = net[1]
    assert bn.running_mean.dtype == np.float64
    assert bn.num_batches_tracked.dtype == np.int64


def test_load_state_dict_reports_missing_unexpected_and_misshaped():
    net = small_net()
    state = dict(net.state_dict())
    del state["0.weight"]
    state["extra.weight"] = np.zeros(2)
    with pytest.raises(KeyError, match=r"0\.weight.*extra\.weight"):
        net.load_state_dict(state)
    missing, unexpected = net.load_state_dict(state, strict=False)
    assert missing == ["0.weight"] and unexpected == ["extra.weight"]
    bad = dict(net.state_dict())
    bad["8.weight"] = np.zeros((3, 4), dtype=np.float32)
    with pytest.raises(ValueError, match=r"8\.weight: expected \(3, 5\), got \(3, 4\)"):
        net.load_state_dict(bad)


def test_load_state_dict_copies_values_and_keeps_dtype():
    a, b = small_net(), small_net("float64")
    b.load_state_dict(a.state_dict())
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert np.array_equal(host(va).astype(np.float64), host(vb)), k
        assert vb.dtype == (np.int64 if k.endswith("num_batches_tracked") else np.float64)
    # a copy, not a view: changing a leaves b alone
    a[0].weight.data[...] = 7
    assert not np.any(host(b[0].weight.data) == 7)


def test_num_batches_tracked_is_ignored_when_absent():
    lin = nn.Linear(2, 2)
    lin.load_state_dict({**lin.state_dict(), "num_batches_tracked": np.array(3)})


def test_seeded_init_is_reproducible_and_he_scaled():
    nn.init.manual_seed(123)
    a = nn.Conv2d(64, 64, 3)
    nn.init.manual_seed(123)
    b = nn.Conv2d(64, 64, 3)
    assert np.array_equal(a.weight.data, b.weight.data)
    std = float(np.std(host(a.weight.data)))
    assert abs(std - np.sqrt(2 / (64 * 9))) < 0.03 * np.sqrt(2 / (64 * 9))
    c = nn.Conv2d(64, 64, 3)
    assert not np.array_equal(a.weight.data, c.weight.data)


def test_train_eval_propagates():
    net = small_net()
    net.eval()
    assert not any(m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())


def test_gradients_accumulate_and_zero_grad_clears(rng):
    net = small_net("float64")
    x = rng.standard_normal((2, 3, 8, 8))
    dout = rng.standard_normal((2, 3))
    net(x)
    net.backward(dout)
    first = {n: host(p.grad).copy() for n, p in net.named_parameters()}
    net(x)
    net.backward(dout)
    for n, p in net.named_parameters():
        assert np.allclose(host(p.grad), 2 * first[n], rtol=1e-12, atol=1e-14), n
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())


def test_backward_without_forward_raises(rng):
    conv = nn.Conv2d(1, 2, 3)
    with pytest.raises(RuntimeError, match=r"Conv2d\(1->2\).*without a matching forward"):
        conv.backward(np.zeros((1, 2, 1, 1), dtype=np.float32))
    out = conv(rng.standard_normal((1, 1, 3, 3)).astype(np.float32))
    conv.backward(np.ones_like(out))
    with pytest.raises(RuntimeError):
        conv.backward(np.ones_like(out))


def test_frozen_parameters_get_no_gradient_and_skip_the_work(rng, monkeypatch):
    from minires.functional import conv as conv_ops

    conv = nn.Conv2d(2, 3, 3, dtype="float64")
    conv.requires_grad_(False)
    seen = []
    real = conv_ops.conv2d_backward

    def spy(dout, cache, need_param_grads=True, **kwargs):
        seen.append(need_param_grads)
        return real(dout, cache, need_param_grads=need_param_grads, **kwargs)

    monkeypatch.setattr(conv_ops, "conv2d_backward", spy)
    out = conv(rng.standard_normal((2, 2, 5, 5)))
    dx = conv.backward(np.ones_like(out))
    assert seen == [False]
    assert dx.shape == (2, 2, 5, 5)
    assert conv.weight.grad is None and conv.bias.grad is None


def test_backward_leaves_dout_untouched(rng):
    net = small_net("float64")
    out = net(rng.standard_normal((2, 3, 8, 8)))
    dout = rng.standard_normal(out.shape)
    keep = dout.copy()
    net.backward(dout)
    assert np.array_equal(dout, keep)


# ---- errors ----------------------------------------------------------------

def test_error_messages_name_layer_expected_and_received():
    conv = nn.Conv2d(3, 16, 3)
    with pytest.raises(ValueError, match=r"Conv2d\(3->16\): expected input \(N, 3, H, W\), "
                                         r"got \(8, 1, 28, 28\)"):
        conv(np.zeros((8, 1, 28, 28), dtype=np.float32))
    with pytest.raises(ValueError, match=r"Conv2d\(3->16\): expected input .*got \(3, 28, 28\)"):
        conv(np.zeros((3, 28, 28), dtype=np.float32))
    with pytest.raises(ValueError, match="floating-point.*int64"):
        conv(np.zeros((1, 3, 8, 8), dtype=np.int64))
    with pytest.raises(ValueError, match=r"smaller than the kernel"):
        conv(np.zeros((1, 3, 2, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="dtype float64 does not match"):
        conv(np.zeros((1, 3, 8, 8)))
    with pytest.raises(ValueError, match=r"Linear\(4->2\): expected input \(N, 4\), got \(2, 5\)"):
        nn.Linear(4, 2)(np.zeros((2, 5), dtype=np.float32))
    with pytest.raises(ValueError, match=r"BatchNorm2d\(4\): expected input \(N, 4, H, W\)"):
        nn.BatchNorm2d(4)(np.zeros((2, 3, 4, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        nn.BatchNorm2d(4)(np.zeros((1, 4, 1, 1), dtype=np.float32))
    with pytest.raises(ValueError, match=r"MaxPool2d.*smaller than the kernel"):
        nn.MaxPool2d(3)(np.zeros((1, 1, 2, 2), dtype=np.float32))


def test_cross_entropy_errors():
    ce = nn.CrossEntropyLoss()
    logits = np.zeros((3, 4), dtype=np.float32)
    with pytest.raises(ValueError, match=r"targets of shape \(3,\).*got \(2,\)"):
        ce(logits, np.array([0, 1]))
    with pytest.raises(ValueError, match=r"class indices in \[0, 3\], got 4"):
        ce(logits, np.array([0, 1, 4]))
    with pytest.raises(ValueError, match=r"got -1"):
        ce(logits, np.array([0, -1, 2]))
    with pytest.raises(ValueError, match="integer class indices"):
        ce(logits, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"logits \(N, K\)"):
        ce(np.zeros(3, dtype=np.float32), np.array([0, 1, 2]))


# ---- finite differences ---------------------------------------------------

LAYERS = {
    "conv": (lambda: nn.Conv2d(2, 3, (3, 2), stride=(2, 1), padding=(1, 0)), (2, 2, 6, 5)),
    "conv_nobias": (lambda: nn.Conv2d(2, 3, 1, bias=False), (3, 2, 4, 4)),
    "linear": (lambda: nn.Linear(5, 4), (3, 5)),
    "bn2d": (lambda: nn.BatchNorm2d(3), (2, 3, 4, 5)),
    "bn1d": (lambda: nn.BatchNorm1d(4), (5, 4)),
    "relu": (lambda: nn.ReLU(), (2, 3, 4, 4)),
    "maxpool": (lambda: nn.MaxPool2d(3, stride=2, padding=1), (2, 2, 7, 6)),
    "avgpool": (lambda: nn.AvgPool2d(2, padding=1), (2, 2, 5, 5)),
    "gap": (lambda: nn.GlobalAvgPool2d(), (2, 3, 4, 5)),
    "flatten": (lambda: nn.Flatten(), (2, 3, 2, 2)),
    "net": (small_net, (2, 3, 8, 8)),
}


def away_from_kinks(rng, shape):
    """Distinct values, none near 0: no ReLU kink and no max-pool tie within eps."""
    n = int(np.prod(shape))
    v = (rng.permutation(n) + 1.0) / n * rng.choice([-1.0, 1.0], size=n)
    return v.reshape(shape) + 0.5 / n


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_gradcheck(name, mode, rng):
    make, shape = LAYERS[name]
    layer = make()
    layer.train(mode == "train")
    if mode == "eval":  # non-trivial running statistics
        for m in layer.modules():
            if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
                m.running_mean = rng.standard_normal(m.num_features).astype(np.float32)
                m.running_var = rng.uniform(0.5, 2, m.num_features).astype(np.float32)
    report = check_module(layer, away_from_kinks(rng, shape), seed=1)
    report.assert_ok(1e-6)


def test_cross_entropy_module_gradcheck(rng):
    y = np.array([0, 2, 1, 2])
    report = check_module(nn.CrossEntropyLoss(label_smoothing=0.1),
                          rng.standard_normal((4, 3)), y)
    report.assert_ok(1e-6)


# ---- against torch.nn ----------------------------------------------------

@pytest.mark.torch
def test_network_matches_torch_in_train_and_eval(rng):
    torch = torch_or_skip()
    net = small_net("float64")
    for m in net.modules():  # non-trivial BN affine parameters
        if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            m.weight.data = rng.uniform(0.5, 1.5, m.num_features)
            m.bias.data = rng.standard_normal(m.num_features)
    t = torch_twin(torch, net)
    for step in range(3):
        x = rng.standard_normal((4, 3, 8, 8)) + step
        dout = rng.standard_normal((4, 3))
        net.zero_grad()
        t.zero_grad()
        out = net(x)
        xt = torch.tensor(x, requires_grad=True)
        out_t = t(xt)
        out_t.backward(torch.tensor(dout))
        dx = net.backward(dout)
        assert rel(out, out_t.detach()) < 1e-10
        assert rel(dx, xt.grad) < 1e-10
        tparams = dict(t.named_parameters())
        for name, p in net.named_parameters():
            tname = {"7.": "8.", "8.": "9."}.get(name[:2], name[:2]) + name[2:]
            assert rel(p.grad, tparams[tname].grad) < 1e-10, name
    tstate = t.state_dict()
    for name, v in net.state_dict().items():
        tname = {"7.": "8.", "8.": "9."}.get(name[:2], name[:2]) + name[2:]
        assert rel(v, tstate[tname]) < 1e-10, name
    net.eval()
    t.eval()
    x = rng.standard_normal((3, 3, 8, 8))
    xt = torch.tensor(x, requires_grad=True)
    out_t = t(xt)
    dout = rng.standard_normal((3, 3))
    out_t.backward(torch.tensor(dout))
    net.zero_grad()
    out = net(x)
    dx = net.backward(dout)
    assert rel(out, out_t.detach()) < 1e-10
    assert rel(dx, xt.grad) < 1e-10


@pytest.mark.torch
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_cross_entropy_module_matches_torch(smoothing, rng):
    torch = torch_or_skip()
    logits = rng.standard_normal((6, 5)) * 3
    y = rng.integers(0, 5, 6)
    ce = nn.CrossEntropyLoss(label_smoothing=smoothing)
    loss = ce(logits, y)
    dlogits = ce.backward()
    lt = torch.tensor(logits, requires_grad=True)
    loss_t = torch.nn.CrossEntropyLoss(label_smoothing=smoothing)(lt, torch.tensor(y))
    loss_t.backward()
    assert rel(loss, loss_t.detach()) < 1e-12
    assert rel(dlogits, lt.grad) < 1e-10


# ---- the portable path for whole modules --------------------------------

def test_modules_run_under_array_api_strict(rng):
    import array_api_strict as xps

    nn.init.manual_seed(5)
    ref = small_net("float64")
    # batch 4: with 2 images BatchNorm1d's dx is rounding noise (xhat = +-1),
    # and the threaded NumPy path rounds differently from the portable one
    x = rng.standard_normal((4, 3, 8, 8))
    dout = rng.standard_normal((4, 3))
    out_ref = ref(x)
    dx_ref = ref.backward(dout)
    try:
        backend.use("array_api_strict")
        net = small_net("float64")
        net.load_state_dict(ref.state_dict())
        out = net(xps.asarray(x))
        dx = net.backward(xps.asarray(dout))
    finally:
        backend.use("numpy")
    assert rel(out, out_ref) < 1e-12
    assert rel(dx, dx_ref) < 1e-12
    for (name, p), q in zip(net.named_parameters(), ref.parameters(), strict=True):
        assert rel(p.grad, q.grad) < 1e-12, name


def test_input_and_parameters_in_different_array_libraries_name_the_layer(rng):
    """An input on another backend (here array-api-strict, standing in for a GPU
    array) than the parameters gives an error naming the layer and both."""
    x = strict(rng.standard_normal((2, 3, 8, 8)).astype(np.float32))
    for layer in (nn.Conv2d(3, 4, 3), nn.BatchNorm2d(3)):
        with pytest.raises(ValueError, match=r"input is a array_api_strict\.Array but the "
                                             r"parameters are numpy\.ndarray"):
            layer(x)
    with pytest.raises(ValueError, match=r"Linear.*numpy\.ndarray"):
        nn.Linear(5, 2)(strict(np.ones((2, 5), np.float32)))


# ---- grouped convolution layers ----------------------------------------------

GROUPED = {
    "grouped": (lambda: nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2, dtype="float64"),
                (2, 4, 6, 5)),
    "depthwise": (lambda: nn.Conv2d(3, 3, 3, padding=1, bias=False, groups=3, dtype="float64"),
                  (2, 3, 5, 5)),
    "depthwise_x2": (lambda: nn.Conv2d(2, 4, (3, 2), groups=2, dtype="float64"), (1, 2, 5, 4)),
}


@pytest.mark.parametrize("name", sorted(GROUPED))
def test_grouped_conv2d_layer_gradcheck_and_torch(name, rng):
    make, shape = GROUPED[name]
    layer = make()
    x = rng.standard_normal(shape)
    check_module(layer, x, seed=1).assert_ok(1e-6)
    torch = torch_or_skip()
    t = torch.nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size,
                        layer.stride, layer.padding, groups=layer.groups,
                        bias=layer.bias is not None).double()
    assert [(k, tuple(v.shape)) for k, v in t.state_dict().items()] == \
        [(k, tuple(v.shape)) for k, v in layer.state_dict().items()]
    t.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in layer.state_dict().items()})
    xt = torch.tensor(x, requires_grad=True)
    out_t = t(xt)
    dout = rng.standard_normal(tuple(out_t.shape))
    out_t.backward(torch.tensor(dout))
    layer.zero_grad()
    out = layer(x)
    assert rel(out, out_t.detach()) < 1e-12
    assert rel(layer.backward(dout), xt.grad) < 1e-12
    tparams = dict(t.named_parameters())
    for k, p in layer.named_parameters():
        assert rel(p.grad, tparams[k].grad) < 1e-12, k


def test_grouped_conv2d_layer_shapes_repr_and_errors():
    conv = nn.Conv2d(128, 256, 3, stride=2, padding=1, bias=False, groups=32)
    assert tuple(conv.weight.shape) == (256, 4, 3, 3)
    assert conv.num_parameters() == 256 * 4 * 9
    assert conv.extra_repr() == "128->256, 3x3, stride=2, padding=1, groups=32"
    assert "groups" not in nn.Conv2d(3, 4, 3).extra_repr()
    # He init: the fan-in of a grouped conv is C_in / groups * KH * KW (as in PyTorch)
    nn.init.manual_seed(0)
    std = float(np.std(host(nn.Conv2d(256, 256, 3, groups=32).weight.data)))
    assert abs(std - np.sqrt(2 / (8 * 9))) < 0.01
    with pytest.raises(ValueError, match=r"Conv2d\(6->4\): expected C_in = 6 and C_out = 4 "
                                         r"both divisible by groups = 4"):
        nn.Conv2d(6, 4, 3, groups=4)
    with pytest.raises(ValueError, match=r"Conv2d\(4->4\): expected groups >= 1, got 0"):
        nn.Conv2d(4, 4, 3, groups=0)
    with pytest.raises(ValueError, match=r"Conv2d\(4->8\): expected input \(N, 4, H, W\), "
                                         r"got \(2, 2, 5, 5\)"):
        nn.Conv2d(4, 8, 3, groups=2)(np.zeros((2, 2, 5, 5), np.float32))
