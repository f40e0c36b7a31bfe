"""Residual blocks: finite differences, PyTorch twins, the identity path, errors.

``torch_refs(torch)`` builds PyTorch reference blocks and networks written after
torchvision's ``resnet.py`` (torchvision itself is not installed here); the
model tests import it too.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
from util import host, rel, strict, torch_or_skip

from minires import backend
from minires.gradcheck import check_module
from minires.interop import to_torch_state_dict
from minires.nn import init
from minires.nn.blocks import (
    BasicBlock,
    Bottleneck,
    PlainBlock,
    PreActBlock,
    PreActBottleneck,
    ShortcutA,
)
from minires.nn.layers import BatchNorm2d

# ---- the PyTorch references --------------------------------------------------


def torch_refs(torch):
    """PyTorch versions of every block and network, after torchvision's code."""
    nn = torch.nn

    def conv3x3(i, o, s=1, groups=1):
        return nn.Conv2d(i, o, 3, stride=s, padding=1, bias=False, groups=groups)

    def conv1x1(i, o, s=1):
        return nn.Conv2d(i, o, 1, stride=s, bias=False)

    class ShortcutA(nn.Module):
        def __init__(self, i, o, s):
            super().__init__()
            self.extra, self.s = o - i, s

        def forward(self, x):
            return nn.functional.pad(x[:, :, ::self.s, ::self.s], (0, 0, 0, 0, 0, self.extra))

    def shortcut(option, i, o, s, bn=True):
        if option is None or (option in "AB" and s == 1 and i == o):
            return None
        if option == "A":
            return ShortcutA(i, o, s)
        return nn.Sequential(conv1x1(i, o, s), nn.BatchNorm2d(o)) if bn else \
            nn.Sequential(conv1x1(i, o, s))

    class BasicBlock(nn.Module):  # torchvision.models.resnet.BasicBlock
        expansion = 1

        def __init__(self, inplanes, planes, stride=1, option="B"):
            super().__init__()
            self.conv1 = conv3x3(inplanes, planes, stride)
            self.bn1 = nn.BatchNorm2d(planes)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = conv3x3(planes, planes)
            self.bn2 = nn.BatchNorm2d(planes)
            self.downsample = shortcut(option, inplanes, planes, stride)
            self.plain = option is None

        def forward(self, x):
            identity = x
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            if self.downsample is not None:
                identity = self.downsample(x)
            if not self.plain:
                out += identity
            return self.relu(out)

    class Bottleneck(nn.Module):  # torchvision.models.resnet.Bottleneck (v1.5, ResNeXt)
        expansion = 4

        def __init__(self, inplanes, planes, stride=1, option="B", groups=1, base_width=64):
            super().__init__()
            width = int(planes * (base_width / 64.0)) * groups
            self.conv1 = conv1x1(inplanes, width)
            self.bn1 = nn.BatchNorm2d(width)
            self.conv2 = conv3x3(width, width, stride, groups)
            self.bn2 = nn.BatchNorm2d(width)
            self.conv3 = conv1x1(width, planes * 4)
            self.bn3 = nn.BatchNorm2d(planes * 4)
            self.relu = nn.ReLU(inplace=True)
            self.downsample = shortcut(option, inplanes, planes * 4, stride)

        def forward(self, x):
            identity = x
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(out))
            if self.downsample is not None:
                identity = self.downsample(x)
            out += identity
            return self.relu(out)

    class PreActBlock(nn.Module):  # He et al. 2016; shortcut on the pre-activation
        expansion = 1

        def __init__(self, inplanes, planes, stride=1, option="B"):
            super().__init__()
            self.bn1 = nn.BatchNorm2d(inplanes)
            self.conv1 = conv3x3(inplanes, planes, stride)
            self.bn2 = nn.BatchNorm2d(planes)
            self.conv2 = conv3x3(planes, planes)
            self.downsample = shortcut(option, inplanes, planes, stride, bn=False)

        def forward(self, x):
            out = torch.relu(self.bn1(x))
            sc = x if self.downsample is None else self.downsample(out)
            out = self.conv1(out)
            out = self.conv2(torch.relu(self.bn2(out)))
            return out + sc

    class PreActBottleneck(nn.Module):
        expansion = 4

        def __init__(self, inplanes, planes, stride=1, option="B"):
            super().__init__()
            self.bn1 = nn.BatchNorm2d(inplanes)
            self.conv1 = conv1x1(inplanes, planes)
            self.bn2 = nn.BatchNorm2d(planes)
            self.conv2 = conv3x3(planes, planes, stride)
            self.bn3 = nn.BatchNorm2d(planes)
            self.conv3 = conv1x1(planes, planes * 4)
            self.downsample = shortcut(option, inplanes, planes * 4, stride, bn=False)

        def forward(self, x):
            out = torch.relu(self.bn1(x))
            sc = x if self.downsample is None else self.downsample(out)
            out = self.conv1(out)
            out = self.conv2(torch.relu(self.bn2(out)))
            out = self.conv3(torch.relu(self.bn3(out)))
            return out + sc

    def make_layer(block, inplanes, planes, blocks, stride, option, **kw):
        layers = []
        for i in range(blocks):
            layers.append(block(inplanes, planes, stride if i == 0 else 1, option, **kw))
            inplanes = planes * block.expansion
        return nn.Sequential(*layers), inplanes

    class ResNet(nn.Module):  # torchvision.models.resnet.ResNet
        def __init__(self, block, layers, num_classes=1000, in_channels=3, **kw):
            super().__init__()   # kw: groups, base_width (torchvision's width_per_group)
            self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
            inplanes = 64
            self.layer1, inplanes = make_layer(block, inplanes, 64, layers[0], 1, "B", **kw)
            self.layer2, inplanes = make_layer(block, inplanes, 128, layers[1], 2, "B", **kw)
            self.layer3, inplanes = make_layer(block, inplanes, 256, layers[2], 2, "B", **kw)
            self.layer4, inplanes = make_layer(block, inplanes, 512, layers[3], 2, "B", **kw)
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(512 * block.expansion, num_classes)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    class CifarResNet(nn.Module):  # He et al. 2015 section 4.2; preact: 2016
        def __init__(self, block, n, option, widths=(16, 32, 64), stem=None, num_classes=10,
                     in_channels=3, preact=False, **kw):
            super().__init__()   # kw: groups, base_width for ResNeXt-29
            stem = widths[0] if stem is None else stem
            self.preact = preact
            self.conv1 = conv3x3(in_channels, stem)
            if not preact:
                self.bn1 = nn.BatchNorm2d(stem)
            inplanes = stem
            self.layer1, inplanes = make_layer(block, inplanes, widths[0], n, 1, option, **kw)
            self.layer2, inplanes = make_layer(block, inplanes, widths[1], n, 2, option, **kw)
            self.layer3, inplanes = make_layer(block, inplanes, widths[2], n, 2, option, **kw)
            if preact:
                self.final_bn = nn.BatchNorm2d(inplanes)
            self.fc = nn.Linear(inplanes, num_classes)

        def forward(self, x):
            x = self.conv1(x)
            if not self.preact:
                x = torch.relu(self.bn1(x))
            x = self.layer3(self.layer2(self.layer1(x)))
            if self.preact:
                x = torch.relu(self.final_bn(x))
            return self.fc(x.mean(dim=(2, 3)))

    return {"BasicBlock": BasicBlock, "Bottleneck": Bottleneck, "PreActBlock": PreActBlock,
            "PreActBottleneck": PreActBottleneck, "ResNet": ResNet,
            "CifarResNet": CifarResNet}


def compare_with_torch(torch, ours, ref, x, seed=0):
    """Load ``ours``'s weights into ``ref`` (float64), run both forward and
    backward on ``x`` with the same random ``dout``; return the largest
    relative errors of the output, dx, the parameter gradients and the buffers."""
    ours.to(dtype="float64")
    ref.double()
    ref.load_state_dict(to_torch_state_dict(ours))
    ref.train(ours.training)
    out = ours(x)
    xt = torch.tensor(x, requires_grad=True)
    out_t = ref(xt)
    dout = np.random.default_rng(seed).standard_normal(tuple(out.shape))
    ours.zero_grad()
    dx = ours.backward(backend.asarray(dout, dtype="float64"))
    out_t.backward(torch.tensor(dout))
    tparams = dict(ref.named_parameters())
    ours_params = dict(ours.named_parameters())
    assert list(ours_params) == list(tparams)
    tstate = ref.state_dict()
    assert list(ours.state_dict()) == list(tstate)
    buffers = [rel(v, tstate[k]) for k, v in ours.state_dict().items()
               if "running" in k or "num_batches" in k]
    return {
        "output": rel(out, out_t.detach()),
        "input grad": rel(dx, xt.grad),
        "param grads": max(rel(p.grad, tparams[k].grad) for k, p in ours_params.items()),
        "buffers": max(buffers, default=0.0),
    }


# ---- helpers ---------------------------------------------------------------


def randomize_bn(module, rng, running=True):
    """Non-trivial BN affine parameters (and running statistics for eval)."""
    for m in module.modules():
        if isinstance(m, BatchNorm2d):
            c = m.num_features
            dt = m.weight.data.dtype
            m.weight.data = backend.asarray(rng.uniform(0.5, 1.5, c), dtype=dt)
            m.bias.data = backend.asarray(rng.normal(0, 0.3, c), dtype=dt)
            if running:
                m.running_mean = backend.asarray(rng.normal(0, 0.5, c), dtype=dt)
                m.running_var = backend.asarray(rng.uniform(0.5, 2.0, c), dtype=dt)


# (class, in_planes, planes, stride, shortcut): every block type with every
# shortcut option, at stride 1 and 2. At stride 1 the channels stay (identity
# for A and B, projection for C); at stride 2 they double.
CASES = [
    (BasicBlock, 3, 3, 1, "A"), (BasicBlock, 2, 4, 2, "A"), (BasicBlock, 2, 4, 1, "A"),
    (BasicBlock, 3, 3, 1, "B"), (BasicBlock, 2, 4, 2, "B"),
    (BasicBlock, 3, 3, 1, "C"), (BasicBlock, 2, 4, 2, "C"),
    (PlainBlock, 3, 3, 1, None), (PlainBlock, 2, 4, 2, None),
    (Bottleneck, 8, 2, 1, "B"), (Bottleneck, 4, 2, 2, "B"),
    (Bottleneck, 8, 2, 1, "C"), (Bottleneck, 4, 2, 2, "C"),
    (PreActBlock, 3, 3, 1, "A"), (PreActBlock, 2, 4, 2, "A"),
    (PreActBlock, 3, 3, 1, "B"), (PreActBlock, 2, 4, 2, "B"),
    (PreActBlock, 3, 3, 1, "C"), (PreActBlock, 2, 4, 2, "C"),
    (PreActBottleneck, 8, 2, 1, "B"), (PreActBottleneck, 4, 2, 2, "B"),
    (PreActBottleneck, 8, 2, 1, "C"), (PreActBottleneck, 4, 2, 2, "C"),
]
IDS = [f"{c.__name__}-{i}to{p}-s{s}-{o}" for c, i, p, s, o in CASES]


def make_block(cls, in_planes, planes, stride, option, dtype="float64"):
    if cls is PlainBlock:
        return PlainBlock(in_planes, planes, stride, dtype=dtype)
    return cls(in_planes, planes, stride, shortcut=option, dtype=dtype)


# ---- finite differences ----------------------------------------------------


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_block_gradcheck(case, mode):
    cls, in_planes, planes, stride, option = case
    rng = np.random.default_rng(1)
    init.manual_seed(1)
    block = make_block(cls, in_planes, planes, stride, option)
    randomize_bn(block, rng, running=True)
    block.train(mode == "train")
    x = rng.standard_normal((2, in_planes, 5, 5))
    report = check_module(block, x, seed=2)
    report.assert_ok(1e-6)
    expected = {"input"} | {k for k, _ in block.named_parameters()}
    assert set(report) == expected


# ---- against PyTorch -----------------------------------------------------------


@pytest.mark.torch
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_block_matches_torch(case, mode):
    torch = torch_or_skip()
    refs = torch_refs(torch)
    cls, in_planes, planes, stride, option = case
    rng = np.random.default_rng(3)
    init.manual_seed(3)
    block = make_block(cls, in_planes, planes, stride, option)
    randomize_bn(block, rng, running=True)
    block.train(mode == "train")
    name = "BasicBlock" if cls is PlainBlock else cls.__name__
    ref = refs[name](in_planes, planes, stride, option)
    errors = compare_with_torch(torch, block, ref, rng.standard_normal((3, in_planes, 7, 6)))
    assert max(errors.values()) < 1e-9, errors


# ---- the identity path -----------------------------------------------------------


IDENTITY_CASES = [(BasicBlock, 4, 4, "A"), (BasicBlock, 4, 4, "B"), (Bottleneck, 8, 2, "B"),
                  (PreActBlock, 4, 4, "B"), (PreActBottleneck, 8, 2, "B")]


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("case", IDENTITY_CASES, ids=lambda c: f"{c[0].__name__}-{c[3]}")
def test_zeroed_branch_leaves_the_identity(case, mode):
    """With the residual branch's last BN at weight 0 and bias 0, F(x) = 0:
    the block computes ReLU(x) (post-activation) or x (pre-activation), and its
    backward hands dout to x through the shortcut exactly, bit for bit."""
    cls, in_planes, planes, option = case
    rng = np.random.default_rng(4)
    block = cls(in_planes, planes, 1, shortcut=option, dtype="float64")
    randomize_bn(block, rng)
    last_bn = block.bn3 if cls in (Bottleneck, PreActBottleneck) else block.bn2
    last_bn.weight.data = last_bn.weight.data * 0.0
    last_bn.bias.data = last_bn.bias.data * 0.0
    block.train(mode == "train")
    x = rng.standard_normal((2, in_planes, 5, 5))
    dout = rng.standard_normal((2, in_planes, 5, 5))
    out = host(block(backend.asarray(x)))
    dx = host(block.backward(backend.asarray(dout)))
    if cls in (BasicBlock, Bottleneck):
        assert np.array_equal(out, np.maximum(x, 0.0))
        assert np.array_equal(dx, dout * (x > 0))
    else:
        assert np.array_equal(out, x)
        assert np.array_equal(dx, dout)


# ---- option A by itself ------------------------------------------------------


@pytest.mark.parametrize("stride", [1, 2, 3])
def test_shortcut_a_subsamples_pads_and_its_backward_is_the_adjoint(stride):
    rng = np.random.default_rng(5)
    sc = ShortcutA(3, 5, stride)
    x = rng.standard_normal((2, 3, 7, 6))
    out = host(sc(backend.asarray(x)))
    oh, ow = (7 - 1) // stride + 1, (6 - 1) // stride + 1
    assert out.shape == (2, 5, oh, ow)
    assert np.array_equal(out[:, :3], x[:, :, ::stride, ::stride])
    assert not out[:, 3:].any()
    g = rng.standard_normal(out.shape)
    dx = host(sc.backward(backend.asarray(g)))
    assert np.isclose(np.sum(out * g), np.sum(x * dx), rtol=1e-12)  # <Ax, g> = <x, A^T g>
    assert not list(sc.parameters()) and not sc.state_dict()
    with pytest.raises(ValueError, match="ShortcutA"):
        ShortcutA(4, 2, 2)


def test_option_a_has_no_state_dict_keys_and_b_follows_torchvision():
    a = BasicBlock(16, 32, 2, shortcut="A")
    b = BasicBlock(16, 32, 2, shortcut="B")
    assert not any(k.startswith("downsample") for k in a.state_dict())
    assert [k for k in b.state_dict() if k.startswith("downsample")] == [
        "downsample.0.weight", "downsample.1.weight", "downsample.1.bias",
        "downsample.1.running_mean", "downsample.1.running_var",
        "downsample.1.num_batches_tracked"]
    assert BasicBlock(16, 16, 1, shortcut="B").downsample is None
    assert BasicBlock(16, 16, 1, shortcut="C").downsample is not None
    assert a.num_parameters() == 9 * 16 * 32 + 9 * 32 * 32 + 4 * 32
    assert b.num_parameters() == a.num_parameters() + 16 * 32 + 2 * 32


# ---- errors, dtypes, backends ------------------------------------------------------


@pytest.mark.parametrize("cls", [BasicBlock, Bottleneck, PreActBlock, PreActBottleneck,
                                 PlainBlock])
def test_wrong_input_channels_name_the_block(cls):
    block = cls(4, 2, 2) if cls is PlainBlock else cls(4, 2, 2, shortcut="B")
    with pytest.raises(ValueError, match=rf"{cls.__name__}\(4->.*expected input \(N, 4, H, W\), "
                                         r"got \(2, 3, 8, 8\)"):
        block(backend.asarray(np.zeros((2, 3, 8, 8)), dtype="float32"))


def test_unknown_shortcut_option_raises():
    with pytest.raises(ValueError, match="shortcut"):
        BasicBlock(4, 4, shortcut="D")
    with pytest.raises(ValueError, match="PreActBlock"):
        PreActBlock(4, 4, shortcut=None)


def test_float32_in_float32_out_and_backward_without_forward_raises():
    block = Bottleneck(4, 2, 2, shortcut="A")
    x = backend.asarray(np.random.default_rng(6).standard_normal((2, 4, 6, 6)), dtype="float32")
    out = block(x)
    assert out.dtype == x.dtype and tuple(out.shape) == (2, 8, 3, 3)
    dx = block.backward(out * 0 + 1)
    assert dx.dtype == x.dtype and tuple(dx.shape) == tuple(x.shape)
    with pytest.raises(RuntimeError, match="without a matching forward"):
        block.backward(out)


@pytest.mark.parametrize("case", [CASES[1], CASES[9], CASES[14], CASES[20]],
                         ids=[IDS[1], IDS[9], IDS[14], IDS[20]])
def test_blocks_run_under_array_api_strict(case):
    """The same block on array-api-strict gives the NumPy results (ShortcutA's
    strided-slice scatter is portable)."""
    cls, in_planes, planes, stride, option = case
    rng = np.random.default_rng(7)
    block = make_block(cls, in_planes, planes, stride, option)
    randomize_bn(block, rng)
    x = rng.standard_normal((2, in_planes, 5, 5))
    out_ref = block(x)
    dout = rng.standard_normal(tuple(out_ref.shape))
    dx_ref = block.backward(dout)
    strict_block = copy.deepcopy(block).to(device="array_api_strict")
    strict_block.zero_grad()
    out = strict_block(strict(x))
    dx = strict_block.backward(strict(dout))
    assert "array_api_strict" in type(dx).__module__
    assert rel(out, out_ref) < 1e-12 and rel(dx, dx_ref) < 1e-12
    for (name, p), q in zip(strict_block.named_parameters(), block.parameters(), strict=True):
        assert rel(p.grad, q.grad) < 1e-12, name


# ---- ResNeXt and wide bottlenecks (Bottleneck with groups and base_width) ------------

# (in_planes, planes, stride, groups, base_width): width int(planes * base_width / 64) * groups
RESNEXT_CASES = [(8, 4, 1, 4, 32), (4, 4, 2, 4, 32), (16, 4, 1, 2, 128), (8, 2, 2, 8, 64)]
RESNEXT_IDS = [f"{i}to{4 * p}-s{s}-{g}x{d}d" for i, p, s, g, d in RESNEXT_CASES]


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("case", RESNEXT_CASES, ids=RESNEXT_IDS)
def test_resnext_block_gradcheck_and_torch(case, mode):
    in_planes, planes, stride, groups, base_width = case
    rng = np.random.default_rng(8)
    init.manual_seed(8)
    block = Bottleneck(in_planes, planes, stride, dtype="float64", groups=groups,
                       base_width=base_width)
    assert block.width == planes * base_width // 64 * groups == block.conv2.out_channels
    assert block.conv2.groups == groups and block.conv1.groups == block.conv3.groups == 1
    randomize_bn(block, rng, running=True)
    block.train(mode == "train")
    check_module(block, rng.standard_normal((2, in_planes, 5, 5)), seed=2).assert_ok(1e-6)
    torch = torch_or_skip()
    ref = torch_refs(torch)["Bottleneck"](in_planes, planes, stride, "B", groups, base_width)
    errors = compare_with_torch(torch, block, ref, rng.standard_normal((3, in_planes, 7, 6)))
    assert max(errors.values()) < 1e-9, errors


def test_resnext_block_layout_and_repr():
    b = Bottleneck(256, 128, 2, groups=32, base_width=4)       # ResNeXt-50 layer2.0
    assert (b.width, tuple(b.conv2.weight.shape)) == (256, (256, 8, 3, 3))
    assert b.out_planes == 512 and "width=256, groups=32" in b.extra_repr()
    assert "groups" not in Bottleneck(256, 64).extra_repr()
    assert Bottleneck(64, 64, base_width=128).width == 128     # wide_resnet50_2 layer1
    with pytest.raises(ValueError, match=r"Bottleneck: planes \* base_width / 64 = 2 \* 16"):
        Bottleneck(8, 2, groups=4, base_width=16)
