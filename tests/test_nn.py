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


def test_numel_and_to_with_a_device_first():
    # issue 14, item 21
    net = small_net()
    assert net[0].weight.numel() == 4 * 3 * 3 * 3
    assert sum(p.numel() for p in net.parameters()) == net.num_parameters()
    assert nn.Parameter(np.float32(2.0)).numel() == 1
    assert net.to("cpu") is net and net.to(device="cpu") is net and net.to("CPU") is net
    assert all(type(p.data) is np.ndarray for p in net.parameters())
    net.to("float64")                                       # a dtype first, as before
    assert net[0].weight.dtype == np.float64
    net.to(dtype="float32", device="cpu")
    assert net[0].weight.dtype == np.float32
    net.to("array_api_strict")
    assert "array_api_strict" in type(net[0].weight.data).__module__
    net.to("cpu")
    assert type(net[0].weight.data) is np.ndarray
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        net.to(device="tpu")
    with pytest.raises(ValueError, match="two devices"):
        net.to("cpu", device="cuda")


def test_print_model_shows_each_convolutions_kernel_stride_and_padding():
    # issue 14, item 18: the 3x3 stride-2 conv and the 1x1 projection differ
    from minires.models import get_model

    text = repr(get_model("resnet20", shortcut="B"))
    assert "(conv1): Conv2d(16->32, 3x3, stride=2, padding=1)" in text
    assert "(0): Conv2d(16->32, 1x1, stride=2)" in text
    assert "Conv2d(16->32)\n" not in text
    assert "shortcut=B" in text                            # a block's own settings too
    assert repr(nn.MaxPool2d(3, 2, 1)) == "MaxPool2d(kernel_size=(3, 3), stride=(2, 2), padding=(1, 1))"
    # error messages keep the short form
    with pytest.raises(ValueError, match=r"^Conv2d\(3->16\): expected input"):
        nn.Conv2d(3, 16, 3)(np.zeros((1, 2, 8, 8), dtype=np.float32))


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


def test_load_state_dict_checks_every_value_before_writing_any():
    # issue 14, item 12: all or nothing, and the message names the key
    net = small_net()
    before = {k: np.array(host(v)) for k, v in net.state_dict().items()}
    state = {k: np.ones(v.shape, dtype=v.dtype) for k, v in before.items()}
    state["8.bias"] = np.array(["a", "b", "c"])            # the right shape, not numbers
    with pytest.raises(ValueError, match=r"8\.bias: cannot convert"):
        net.load_state_dict(state)
    state["8.bias"] = np.array([None, 1.0, 2.0], dtype=object)
    with pytest.raises(ValueError, match=r"8\.bias"):
        net.load_state_dict(state)
    state["8.bias"] = np.zeros(3, dtype=np.complex64)
    with pytest.raises(ValueError, match=r"8\.bias"):
        net.load_state_dict(state)
    state["8.bias"] = np.zeros(3, dtype=np.float32)
    state["8.weight"] = np.zeros((3, 4), dtype=np.float32)  # the last entry: all others fine
    with pytest.raises(ValueError, match=r"8\.weight"):
        net.load_state_dict(state)
    for k, v in net.state_dict().items():                   # nothing was written
        assert np.array_equal(host(v), before[k]), k
    state["8.weight"] = np.zeros((3, 5), dtype=np.float32)
    net.load_state_dict(state)
    assert np.all(host(net[0].weight.data) == 1)


def test_strict_load_accepts_a_state_without_num_batches_tracked():
    # issue 14, item 14: as in PyTorch, the counter starts again at 0
    net = small_net()
    net(np.random.default_rng(0).standard_normal((4, 3, 6, 6)).astype(np.float32))
    assert int(net[1].num_batches_tracked) == 1
    other = small_net()
    state = {k: v for k, v in other.state_dict().items() if "num_batches_tracked" not in k}
    result = net.load_state_dict(state)                     # strict, no KeyError
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert int(net[1].num_batches_tracked) == 0 and int(net[7].num_batches_tracked) == 0
    assert net[1].num_batches_tracked.dtype == np.int64
    assert np.array_equal(host(net[1].running_var), host(other[1].running_var))
    missing, _ = net.load_state_dict({k: v for k, v in state.items() if k != "1.bias"},
                                     strict=False)
    assert missing == ["1.bias"]                            # the counter is not reported


def test_strict_load_of_torch_weights_without_num_batches_tracked():
    torch = torch_or_skip()
    t = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    state = {k: v for k, v in t.state_dict().items() if "num_batches_tracked" not in k}
    t.load_state_dict(state)                                # PyTorch accepts it too
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    net.load_state_dict(state)
    assert np.array_equal(host(net[0].weight.data), t[0].weight.detach().numpy().astype(np.float32))


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
    from minires import functional as conv_ops  # the public op, which the layer calls

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


def test_global_avg_pool_refuses_empty_maps():
    # issue 14, item 15: a ValueError like the other layers, not NaN and a warning
    gap = nn.GlobalAvgPool2d()
    for shape in [(2, 3, 0, 0), (2, 3, 0, 4), (2, 3, 5, 0)]:
        with pytest.raises(ValueError, match=r"GlobalAvgPool2d\(\): expected feature maps of "
                                             r"at least 1x1, got input \(2, 3, "):
            gap(np.zeros(shape, dtype=np.float32))
    assert gap(np.ones((2, 3, 1, 1), dtype=np.float32)).shape == (2, 3)


def refusal_cases():
    """(name, module factory, input shape, output shape) for every kind of module."""
    blocks = nn.blocks
    return [
        ("conv", lambda: nn.Conv2d(3, 4, 3, padding=1), (2, 3, 5, 5), (2, 4, 5, 5)),
        ("linear", lambda: nn.Linear(6, 4), (3, 6), (3, 4)),
        ("bn2d", lambda: nn.BatchNorm2d(3), (2, 3, 4, 4), (2, 3, 4, 4)),
        ("bn1d", lambda: nn.BatchNorm1d(6), (3, 6), (3, 6)),
        ("relu", nn.ReLU, (2, 3, 4, 4), (2, 3, 4, 4)),
        ("maxpool", lambda: nn.MaxPool2d(2), (2, 3, 4, 4), (2, 3, 2, 2)),
        ("avgpool", lambda: nn.AvgPool2d(2), (2, 3, 4, 4), (2, 3, 2, 2)),
        ("gap", nn.GlobalAvgPool2d, (2, 3, 4, 4), (2, 3)),
        ("flatten", nn.Flatten, (2, 3, 2, 2), (2, 12)),
        ("identity", nn.Identity, (2, 3), (2, 3)),
        ("shortcut_a", lambda: nn.ShortcutA(3, 6, 2), (2, 3, 5, 5), (2, 6, 3, 3)),
        ("basic_a", lambda: nn.BasicBlock(3, 6, 2, shortcut="A"), (2, 3, 5, 5), (2, 6, 3, 3)),
        ("basic_b", lambda: nn.BasicBlock(3, 6, 2, shortcut="B"), (2, 3, 5, 5), (2, 6, 3, 3)),
        ("plain", lambda: nn.PlainBlock(3, 3), (2, 3, 4, 4), (2, 3, 4, 4)),
        ("bottleneck", lambda: nn.Bottleneck(4, 2, 2), (2, 4, 4, 4), (2, 8, 2, 2)),
        ("preact", lambda: nn.PreActBlock(3, 6, 2, shortcut="A"), (2, 3, 4, 4), (2, 6, 2, 2)),
        ("preact_bottleneck", lambda: nn.PreActBottleneck(4, 2), (2, 4, 3, 3), (2, 8, 3, 3)),
        ("sequential", lambda: nn.Sequential(nn.Conv2d(3, 4, 1), blocks.BasicBlock(4, 4)),
         (2, 3, 3, 3), (2, 4, 3, 3)),
    ]


@pytest.mark.parametrize("case", refusal_cases(), ids=lambda c: c[0])
def test_a_refused_backward_keeps_the_cache(case, rng):
    # issue 14, items 16 and 17: a wrongly shaped dout is refused with the
    # module's name and both shapes, before anything is consumed or
    # accumulated, so the corrected call gives what a single call gives
    _, make, in_shape, out_shape = case
    m = make().to(dtype="float64")
    x = rng.standard_normal(in_shape)
    dout = rng.standard_normal(out_shape)
    nn.init.manual_seed(0)
    out = m(x)
    assert out.shape == out_shape
    wrong = [out_shape[:1] + (out_shape[1] + 1,) + out_shape[2:],   # one channel too many
             out_shape[:1] + (out_shape[1] - 1,) + out_shape[2:]]   # one too few
    if len(out_shape) == 4:
        wrong.append(out_shape[:2] + (out_shape[2] + 1, out_shape[3]))   # spatial size
    for shape in wrong:
        with pytest.raises(ValueError, match=rf"expected dout of the output's shape "
                                             rf"\({out_shape[0]}, {out_shape[1]}.*got "
                                             rf"\({shape[0]}, {shape[1]}"):
            m.backward(np.zeros(shape))
    dx = m.backward(dout)
    grads = {k: np.array(p.grad) for k, p in m.named_parameters()}
    with pytest.raises(RuntimeError, match="without a matching forward"):
        m.backward(dout)                                   # consumed by the good call
    m.zero_grad()
    m(x)
    dx_once = m.backward(dout)
    assert np.array_equal(dx, dx_once)
    for k, p in m.named_parameters():
        assert np.array_equal(grads[k], p.grad), k


def test_shortcut_a_backward_checks_dout_after_a_plain_forward_call(rng):
    # issue 14, item 16, when forward is called directly (no module boundary)
    sc = nn.ShortcutA(16, 32, 2)
    x = rng.standard_normal((2, 16, 8, 8))
    for bad in [(2, 16, 4, 4), (2, 48, 4, 4), (2, 32, 3, 4)]:
        sc.forward(x)
        with pytest.raises(ValueError, match=rf"ShortcutA\(16->32, stride=2\): expected dout "
                                             rf"of the output's shape \(2, 32, 4, 4\), got "
                                             rf"\({bad[0]}, {bad[1]}, {bad[2]}, {bad[3]}\)"):
            sc.backward(np.zeros(bad))


def test_cross_entropy_refused_dout_keeps_the_cache():
    ce = nn.CrossEntropyLoss()
    ce(np.zeros((3, 4)), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"CrossEntropyLoss\(\): expected dout .*\(\), got \(3,\)"):
        ce.backward(np.ones(3))
    assert ce.backward().shape == (3, 4)


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
    # Seeded weights: the test must not depend on which tests ran before it in
    # the same worker (a conv bias before batch norm has a zero gradient, and
    # its finite-difference noise varies with the weights).
    nn.init.manual_seed(0)
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
