"""Models: parameter counts of the papers and torchvision, layouts and state-dict
keys, small inputs, initialization, whole-network gradients (finite differences
and PyTorch), interop, and the gradient-norm benchmark."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from test_blocks import compare_with_torch, torch_refs
from util import host, rel, torch_or_skip

from minires import backend, models
from minires.gradcheck import check_module
from minires.interop import from_torch_state_dict, load_torch_state_dict, to_torch_state_dict
from minires.nn import init
from minires.nn.blocks import BasicBlock, Bottleneck, PlainBlock, PreActBlock, PreActBottleneck
from minires.nn.layers import BatchNorm2d, Conv2d

# He et al. 2015, Table 6 (option A, exact counts) and torchvision.
PAPER_CIFAR = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018, 110: 1_727_962,
               1202: 19_421_274}
TORCHVISION = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
               "resnet101": 44_549_160, "resnet152": 60_192_808}
# torchvision's ResNeXt and wide ResNets: (count, layers, groups, width_per_group)
TORCHVISION_GROUPED = {
    "resnext50_32x4d": (25_028_904, (3, 4, 6, 3), 32, 4),
    "resnext101_32x8d": (88_791_336, (3, 4, 23, 3), 32, 8),
    "resnext101_64x4d": (83_455_272, (3, 4, 23, 3), 64, 4),
    "wide_resnet50_2": (68_883_240, (3, 4, 6, 3), 1, 128),
    "wide_resnet101_2": (126_886_696, (3, 4, 23, 3), 1, 128),
}


# ---- parameter counts ----------------------------------------------------------


@pytest.mark.no_ops
@pytest.mark.parametrize("depth", list(PAPER_CIFAR))
def test_cifar_resnet_parameter_counts_match_the_paper(depth):
    model = models.resnet_cifar(depth)
    assert model.num_parameters() == PAPER_CIFAR[depth]
    assert len(model.blocks()) == 3 * (depth - 2) // 6
    if depth <= 56:  # the plain twin has the same layers and, with option A, no fewer weights
        assert models.plain_cifar(depth).num_parameters() == PAPER_CIFAR[depth]


@pytest.mark.no_ops
@pytest.mark.parametrize("name", list(TORCHVISION))
def test_imagenet_parameter_counts_match_torchvision(name):
    assert getattr(models, name)().num_parameters() == TORCHVISION[name]


@pytest.mark.no_ops
def test_other_parameter_counts():
    # Option B adds the two projections of stages 2 and 3 (1x1 conv + BN).
    extra = (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)
    assert models.resnet_cifar(20, shortcut="B").num_parameters() == PAPER_CIFAR[20] + extra
    # He et al. 2016: pre-activation ResNet-164 (bottleneck) has 1.7M parameters,
    # ResNet-110 the same 1.7M as the original.
    assert round(models.preact_resnet_cifar(164).num_parameters() / 1e5) == 17
    assert round(models.preact_resnet_cifar(110).num_parameters() / 1e5) == 17
    # Zagoruyko and Komodakis 2016: WRN-16-4 2.7M, WRN-40-4 8.9M, WRN-16-8 11.0M,
    # WRN-28-10 36.5M (36,479,194 in the authors' code).
    assert models.wide_resnet_cifar(28, 10).num_parameters() == 36_479_194
    assert round(models.wide_resnet_cifar(16, 4).num_parameters() / 1e5) == 27
    assert round(models.wide_resnet_cifar(40, 4).num_parameters() / 1e5) == 89
    assert round(models.wide_resnet_cifar(16, 8).num_parameters() / 1e5) == 110


# ---- layouts, names, errors ----------------------------------------------------


def test_depth_must_have_the_papers_form():
    with pytest.raises(ValueError, match=r"resnet_cifar: depth must have the form 6n\+2.*got 21"):
        models.resnet_cifar(21)
    with pytest.raises(ValueError, match=r"6n\+2"):
        models.plain_cifar(2)
    with pytest.raises(ValueError, match=r"9n\+2"):
        models.preact_resnet_cifar(21, bottleneck=True)
    with pytest.raises(ValueError, match=r"6n\+4"):
        models.wide_resnet_cifar(28 + 1, 10)


def test_cifar_layout():
    m = models.resnet_cifar(20)
    assert [n for n, _ in m.named_children()] == [
        "conv1", "bn1", "relu", "layer1", "layer2", "layer3", "avgpool", "fc"]
    assert [len(s) for s in (m.layer1, m.layer2, m.layer3)] == [3, 3, 3]
    assert [b.stride for _, b in m.blocks()] == [1, 1, 1, 2, 1, 1, 2, 1, 1]
    assert all(isinstance(b, BasicBlock) and b.shortcut == "A" for _, b in m.blocks())
    assert all(isinstance(b, PlainBlock) for _, b in models.plain_cifar(20).blocks())
    p = models.preact_resnet_cifar(20)
    assert [n for n, _ in p.named_children()] == [
        "conv1", "layer1", "layer2", "layer3", "final_bn", "final_relu", "avgpool", "fc"]
    assert all(isinstance(b, PreActBlock) for _, b in p.blocks())
    assert all(isinstance(b, PreActBottleneck) for _, b in models.preact_resnet_cifar(164)
               .blocks())
    assert models.preact_resnet_cifar(164).fc.in_features == 256
    w = models.wide_resnet_cifar(16, 4)
    assert [b.out_planes for _, b in w.blocks()] == [64, 64, 128, 128, 256, 256]


@pytest.mark.no_ops
def test_get_model_names():
    cases = {"resnet20": ("resnet20", BasicBlock), "ResNet-56": ("resnet56", BasicBlock),
             "plain20": ("plain20", PlainBlock), "preact_resnet20": ("preact_resnet20", PreActBlock),
             "preact_resnet164": ("preact_resnet164", PreActBottleneck),
             "resnet18": ("resnet18", BasicBlock), "resnet50": ("resnet50", Bottleneck),
             "resnet50_cifar": ("resnet50", BasicBlock), "wrn16_2": ("wrn16_2", PreActBlock)}
    for name, (arch, block) in cases.items():
        m = models.get_model(name, num_classes=7)
        assert m.arch == arch and isinstance(m.blocks()[0][1], block), name
        assert m.fc.out_features == 7
    assert models.get_model("resnet50").layer4 is not None        # torchvision's depth wins
    assert len(models.get_model("resnet50_cifar").blocks()) == 24
    with pytest.raises(ValueError, match="get_model: unknown model 'vgg16'"):
        models.get_model("vgg16")
    small = [n for n in models.available_models() if n in (
        "resnet20", "resnet56", "plain20", "preact_resnet20", "preact_resnet164", "wrn16_4")]
    assert len(small) == 6
    for name in small:
        assert models.get_model(name).arch == name


def test_wrong_input_channels_name_the_model():
    with pytest.raises(ValueError, match=r"ResNet\(resnet20\): expected input \(N, 1, H, W\), "
                                         r"got \(2, 3, 8, 8\)"):
        models.resnet_cifar(20, in_channels=1)(np.zeros((2, 3, 8, 8), dtype=np.float32))


# ---- small inputs: every model takes 1x8x8 digits ----------------------------------


@pytest.mark.parametrize("name,kwargs", [
    ("resnet20", {}), ("plain20", {}), ("preact_resnet20", {}), ("preact_resnet11", {}),
    ("wrn10_1", {}), ("resnet18", {}), ("resnet18", {"stem": "cifar"}), ("resnet34", {}),
])
def test_models_take_small_inputs(name, kwargs):
    init.manual_seed(0)
    m = models.get_model(name, in_channels=1, num_classes=10, **kwargs)
    x = backend.asarray(np.random.default_rng(0).random((2, 1, 8, 8)), dtype="float32")
    out = m(x)
    assert tuple(out.shape) == (2, 10) and out.dtype == x.dtype
    dx = m.backward(out * 0 + 1)
    assert tuple(dx.shape) == (2, 1, 8, 8) and dx.dtype == x.dtype
    assert all(p.grad is not None for p in m.parameters())
    assert np.all(np.isfinite(host(dx)))


# ---- initialization ------------------------------------------------------------


def test_initialization_follows_paper_and_torchvision():
    init.manual_seed(0)
    tv = models.resnet18()
    conv = tv.layer3[0].conv2  # 256 -> 256, 3x3: fan_out = fan_in = 2304
    stem = tv.conv1            # 3 -> 64, 7x7: fan_out 3136, fan_in 147
    assert abs(np.std(host(stem.weight.data)) / np.sqrt(2 / (64 * 49)) - 1) < 0.02
    assert abs(np.std(host(conv.weight.data)) / np.sqrt(2 / 2304) - 1) < 0.02
    cifar = models.resnet_cifar(56)
    w = host(cifar.layer3[1].conv1.weight.data)  # fan_in = 64 * 9
    assert abs(np.std(w) / np.sqrt(2 / 576) - 1) < 0.03
    for m in list(tv.modules()) + list(cifar.modules()):
        if isinstance(m, BatchNorm2d):
            assert np.all(host(m.weight.data) == 1) and np.all(host(m.bias.data) == 0)
    z = models.resnet18(zero_init_residual=True)
    assert all(not host(b.bn2.weight.data).any() for _, b in z.blocks())
    assert np.all(host(z.bn1.weight.data) == 1)
    init.manual_seed(3)
    a = host(models.resnet_cifar(20).fc.weight.data)
    init.manual_seed(3)
    assert np.array_equal(a, host(models.resnet_cifar(20).fc.weight.data))
    assert all(isinstance(m.weight.data, type(w)) for m in tv.modules() if isinstance(m, Conv2d))


# ---- whole-network finite differences ---------------------------------------------


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_resnet8_gradcheck(mode):
    """Every parameter of a (full-width) ResNet-8, on random samples of entries."""
    init.manual_seed(0)
    m = models.resnet_cifar(8)
    rng = np.random.default_rng(0)
    for b in m.modules():
        if isinstance(b, BatchNorm2d):
            c = b.num_features
            b.weight.data = backend.asarray(rng.uniform(0.5, 1.5, c), dtype="float32")
            b.bias.data = backend.asarray(rng.normal(0, 0.2, c), dtype="float32")
            b.running_mean = backend.asarray(rng.normal(0, 0.3, c), dtype="float32")
            b.running_var = backend.asarray(rng.uniform(0.5, 2, c), dtype="float32")
    m.train(mode == "train")
    report = check_module(m, rng.standard_normal((2, 3, 8, 8)), num_samples=6, seed=1)
    report.assert_ok(1e-6)
    assert len(report) == 1 + len(list(m.parameters()))


def test_preact_and_plain_small_gradcheck():
    init.manual_seed(1)
    rng = np.random.default_rng(1)
    for m in (models.preact_resnet_cifar(11, widths=(2, 3, 4)),
              models.plain_cifar(8, widths=(2, 3, 4)),
              models.wide_resnet_cifar(10, 1)):
        check_module(m, rng.standard_normal((2, 3, 6, 6)), num_samples=8).assert_ok(1e-6)


# ---- against PyTorch (torchvision's layout, written out in test_blocks.torch_refs) ---


@pytest.mark.no_ops
@pytest.mark.torch
def test_state_dict_keys_equal_torchvision_in_order():
    torch = torch_or_skip()
    refs = torch_refs(torch)
    for ours, blocks, layers in ((models.resnet18(), "BasicBlock", (2, 2, 2, 2)),
                                 (models.resnet50(), "Bottleneck", (3, 4, 6, 3))):
        ref = refs["ResNet"](refs[blocks], layers)
        theirs = ref.state_dict()
        assert list(ours.state_dict()) == list(theirs)
        assert [k for k, _ in ours.named_parameters()] == [k for k, _ in ref.named_parameters()]
        for k, v in ours.state_dict().items():
            assert tuple(v.shape) == tuple(theirs[k].shape), k
        assert ours.num_parameters() == sum(p.numel() for p in ref.parameters())


def _torch_cifar(refs, kind, n, option, **kw):
    block = {"resnet": "BasicBlock", "plain": "BasicBlock", "preact": "PreActBlock",
             "preact_bottleneck": "PreActBottleneck"}[kind]
    return refs["CifarResNet"](refs[block], n, None if kind == "plain" else option,
                               preact=kind.startswith("preact"), **kw)


CROSS = {
    "resnet20": (lambda: models.resnet_cifar(20), ("resnet", 3, "A", {}), (2, 3, 32, 32)),
    "resnet8_B_1ch": (lambda: models.resnet_cifar(8, shortcut="B", in_channels=1, num_classes=5),
                      ("resnet", 1, "B", {"in_channels": 1, "num_classes": 5}), (3, 1, 8, 8)),
    "plain8": (lambda: models.plain_cifar(8), ("plain", 1, None, {}), (2, 3, 16, 16)),
    "preact_resnet20": (lambda: models.preact_resnet_cifar(20, widths=(4, 8, 16)),
                        ("preact", 3, "B", {"widths": (4, 8, 16)}), (2, 3, 16, 16)),
    "preact_resnet20_A": (lambda: models.preact_resnet_cifar(20, shortcut="A", widths=(4, 8, 16)),
                          ("preact", 3, "A", {"widths": (4, 8, 16)}), (2, 3, 16, 16)),
    "preact_resnet29_bottleneck": (
        lambda: models.preact_resnet_cifar(29, widths=(4, 8, 16)),
        ("preact_bottleneck", 3, "B", {"widths": (4, 8, 16)}), (2, 3, 16, 16)),
    "wrn10_2": (lambda: models.wide_resnet_cifar(10, 2),
                ("preact", 1, "B", {"widths": (32, 64, 128), "stem": 16}), (2, 3, 16, 16)),
}


@pytest.mark.torch
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", list(CROSS))
def test_cifar_models_match_torch(name, mode):
    torch = torch_or_skip()
    refs = torch_refs(torch)
    build, (kind, n, option, kw), shape = CROSS[name]
    init.manual_seed(2)
    ours = build()
    ours.train(mode == "train")
    if mode == "eval":  # non-trivial running statistics
        rng = np.random.default_rng(2)
        for b in ours.modules():
            if isinstance(b, BatchNorm2d):
                b.running_mean = backend.asarray(rng.normal(0, 0.3, b.num_features))
                b.running_var = backend.asarray(rng.uniform(0.5, 2, b.num_features))
    ref = _torch_cifar(refs, kind, n, option, **kw)
    x = np.random.default_rng(5).standard_normal(shape)
    errors = compare_with_torch(torch, ours, ref, x)
    assert max(errors.values()) < 1e-9, errors


@pytest.mark.torch
@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_imagenet_models_match_torch(name):
    torch = torch_or_skip()
    refs = torch_refs(torch)
    init.manual_seed(4)
    ours = getattr(models, name)(num_classes=10)
    ref = refs["ResNet"](refs["BasicBlock"], (2, 2, 2, 2), num_classes=10) if name == "resnet18" \
        else refs["ResNet"](refs["Bottleneck"], (3, 4, 6, 3), num_classes=10)
    # 64x64 so that layer4 still sees 2x2 maps: with 1x1 maps and a batch of 2,
    # BatchNorm's gradient is pure cancellation and no comparison is meaningful.
    x = np.random.default_rng(6).standard_normal((2, 3, 64, 64))
    errors = compare_with_torch(torch, ours, ref, x)
    assert max(errors.values()) < 1e-9, errors


# ---- interop -------------------------------------------------------------------


@pytest.mark.torch
def test_torch_weights_give_the_same_logits(tmp_path):
    """A torchvision-layout state dict (here saved to a .pt file) loads unchanged
    and gives PyTorch's logits, in eval mode, float32."""
    torch = torch_or_skip()
    refs = torch_refs(torch)
    torch.manual_seed(0)
    ref = refs["ResNet"](refs["BasicBlock"], (2, 2, 2, 2), num_classes=10).float()
    with torch.no_grad():  # non-trivial BN statistics
        for mod in ref.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.normal_(0, 0.1)
                mod.running_var.uniform_(0.5, 2)
                mod.weight.uniform_(0.5, 1.5)
    ref.eval()
    path = tmp_path / "resnet18.pt"
    torch.save(ref.state_dict(), path)
    ours = models.resnet18(num_classes=10).eval()
    state = from_torch_state_dict(path)
    assert list(state) == list(ref.state_dict())
    assert state["bn1.num_batches_tracked"].dtype == np.int64
    ours.load_state_dict(state)
    x = np.random.default_rng(0).standard_normal((2, 3, 48, 48)).astype(np.float32)
    with torch.no_grad():
        expected = ref(torch.from_numpy(x)).numpy()
    assert rel(ours(x), expected) < 1e-4
    # the other way round, and a wrapped DataParallel checkpoint
    back = to_torch_state_dict(ours)
    assert all(torch.equal(back[k], v) for k, v in ref.state_dict().items())
    wrapped = {"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}
    fresh = models.resnet18(num_classes=10)
    assert load_torch_state_dict(fresh, wrapped, strip_prefix="module.") == ([], [])
    assert rel(fresh.eval()(x), expected) < 1e-4


def test_from_torch_state_dict_accepts_numpy_and_rejects_junk():
    m = models.resnet_cifar(8, widths=(2, 2, 2))
    state = from_torch_state_dict(m.state_dict())
    assert list(state) == list(m.state_dict())
    m.load_state_dict(state)
    with pytest.raises(ValueError, match="from_torch_state_dict"):
        from_torch_state_dict(42)


# ---- the gradient-norm benchmark ------------------------------------------------


def test_grad_norms_benchmark_runs(tmp_path):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "grad_norms.py"
    spec = importlib.util.spec_from_file_location("grad_norms", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    results = mod.run(depths=(8,), batch=4, size=8, out_dir=tmp_path, quiet=True)
    assert set(results["models"]) == {"plain8", "resnet8"}
    saved = json.loads((tmp_path / "grad_norms.json").read_text())
    assert saved["models"]["resnet8"]["loss"] == results["models"]["resnet8"]["loss"]
    assert (tmp_path / "grad_norms.csv").read_text().startswith("model,quantity,layer,value")
    for r in results["models"].values():
        assert len(r["blocks"]) == 3 and len(r["convs"]) == 7
        # The paper's claim (section 4.1): with BN, plain nets' gradients do not
        # vanish. At depth 8 every gradient is finite and non-zero in both nets.
        norms = [g for _, _, g in r["blocks"]] + [g for _, g in r["convs"]]
        assert all(np.isfinite(norms)) and min(norms) > 0
    assert "resnet8" in mod.table(results)


def test_backward_without_input_grad_gives_the_same_parameter_grads(monkeypatch):
    """model.backward(dout, input_grad=False), as the Trainer and the
    benchmark call it: None instead of dx, the stem (and only the stem)
    skips its input gradient, and every parameter gradient is the same to
    the last bit."""
    from minires import functional as conv  # the public op, which the layers call

    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 16, 16)).astype(np.float32)
    dout = rng.standard_normal((4, 10)).astype(np.float32)
    asked, real = [], conv.conv2d_backward

    def spy(dout, cache, need_param_grads=True, need_input_grad=True):
        asked.append(need_input_grad)
        return real(dout, cache, need_param_grads, need_input_grad)

    monkeypatch.setattr(conv, "conv2d_backward", spy)
    grads = []
    for input_grad in (True, False):
        init.manual_seed(0)
        model = models.resnet_cifar(8)
        model.train()
        model(x)
        dx = model.backward(dout, input_grad=input_grad)
        assert (dx is None) == (not input_grad)
        grads.append({k: p.grad.copy() for k, p in model.named_parameters()})
    # ResNet-8 has 7 convs; the stem is the last one the backward pass reaches
    assert asked == [True] * 7 + [True] * 6 + [False]
    assert grads[0].keys() == grads[1].keys()
    for k in grads[0]:
        np.testing.assert_array_equal(grads[0][k], grads[1][k], err_msg=k)


# ---- ResNeXt and the wide ImageNet ResNets ---------------------------------------


@pytest.mark.parametrize("name", list(TORCHVISION_GROUPED))
def test_resnext_and_wide_parameter_counts_and_keys_equal_torchvision(name):
    """Counts, and state-dict keys in order with their shapes, against the
    torchvision layout built on torch's meta device (no memory, no init)."""
    count, layers, groups, width = TORCHVISION_GROUPED[name]
    ours = models.get_model(name)
    assert ours.arch == name and ours.num_parameters() == count
    assert all(b.conv2.groups == groups for _, b in ours.blocks())
    torch = torch_or_skip()
    refs = torch_refs(torch)
    with torch.device("meta"):
        ref = refs["ResNet"](refs["Bottleneck"], layers, groups=groups, base_width=width)
    theirs = ref.state_dict()
    assert [(k, tuple(v.shape)) for k, v in ours.state_dict().items()] == \
        [(k, tuple(v.shape)) for k, v in theirs.items()]
    assert [k for k, _ in ours.named_parameters()] == [k for k, _ in ref.named_parameters()]
    assert sum(p.numel() for p in ref.parameters()) == count


def test_resnext29_parameter_counts_near_the_paper():
    """Xie et al. 2017, Table 7: ResNeXt-29 8x64d 34.4M, 16x64d 68.1M."""
    for name, count, paper in (("resnext29_8x64d", 34_426_698, 34.4e6),
                               ("resnext29_16x64d", 68_155_210, 68.1e6)):
        m = models.get_model(name)
        assert m.num_parameters() == count
        assert abs(count - paper) / paper < 0.001
        assert [b.width for _, b in m.blocks()][::3] == [512, 1024, 2048] if "8x" in name \
            else [1024, 2048, 4096]
        assert [b.out_planes for _, b in m.blocks()][::3] == [256, 512, 1024]
        assert [b.stride for _, b in m.blocks()] == [1, 1, 1, 2, 1, 1, 2, 1, 1]
        assert [n for n, _ in m.named_children()] == [
            "conv1", "bn1", "relu", "layer1", "layer2", "layer3", "avgpool", "fc"]
        assert m.conv1.kernel_size == (3, 3) and m.conv1.out_channels == 64
        # a projection where the shape changes (the first block of each stage), else identity
        assert [b.downsample is not None for _, b in m.blocks()] == [True, False, False] * 3


def test_resnext_names():
    assert {"resnext29_8x64d", "resnext29_16x64d", "resnext29_digits", "resnext50_32x4d",
            "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2",
            "wide_resnet101_2"} <= set(models.available_models())
    m = models.get_model("ResNeXt-29_4x16d", in_channels=1, num_classes=7,
                         widths=(16, 32, 64))
    assert m.arch == "resnext29_4x16d" and m.fc.out_features == 7
    assert [b.conv2.groups for _, b in m.blocks()] == [4] * 9
    assert models.get_model("resnext101_8x4d_cifar").arch == "resnext101_8x4d"
    assert len(models.get_model("resnext101_8x4d_cifar").blocks()) == 33
    digits = models.get_model("resnext29_digits")
    assert digits.arch == "resnext29_digits" and digits.conv1.in_channels == 3
    assert [b.width for _, b in digits.blocks()][::3] == [16, 32, 64]
    assert all(not host(b.bn3.weight.data).any() for _, b in digits.blocks())
    with pytest.raises(ValueError, match=r"resnext_cifar: depth must have the form 9n\+2"):
        models.get_model("resnext30_8x64d")
    with pytest.raises(ValueError, match=r"resnext_cifar: cardinality must be a positive"):
        models.resnext_cifar(29, 0, 64)


def test_small_resnext_gradcheck():
    init.manual_seed(1)
    rng = np.random.default_rng(1)
    m = models.resnext_cifar(11, 2, 32, widths=(4, 8, 16))   # bottlenecks 4, 8, 16 wide, 2 groups
    for b in m.modules():
        if isinstance(b, BatchNorm2d):
            b.weight.data = backend.asarray(rng.uniform(0.5, 1.5, b.num_features),
                                            dtype="float32")
    check_module(m, rng.standard_normal((2, 3, 6, 6)), num_samples=8).assert_ok(1e-6)


@pytest.mark.torch
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_resnext29_matches_torch(mode):
    torch = torch_or_skip()
    refs = torch_refs(torch)
    init.manual_seed(2)
    ours = models.resnext_cifar(29, 4, 16, widths=(8, 16, 32), num_classes=5)
    ours.train(mode == "train")
    if mode == "eval":
        rng = np.random.default_rng(2)
        for b in ours.modules():
            if isinstance(b, BatchNorm2d):
                b.running_mean = backend.asarray(rng.normal(0, 0.3, b.num_features))
                b.running_var = backend.asarray(rng.uniform(0.5, 2, b.num_features))
    ref = refs["CifarResNet"](refs["Bottleneck"], 3, "B", widths=(8, 16, 32), num_classes=5,
                              groups=4, base_width=16)
    x = np.random.default_rng(5).standard_normal((2, 3, 16, 16))
    errors = compare_with_torch(torch, ours, ref, x)
    assert max(errors.values()) < 1e-9, errors


@pytest.mark.torch
def test_resnext50_32x4d_matches_torch():
    """The whole ResNeXt-50 32x4d, forward and backward in training mode,
    against the same layout in PyTorch on the same weights (float64)."""
    torch = torch_or_skip()
    refs = torch_refs(torch)
    init.manual_seed(4)
    ours = models.resnext50_32x4d(num_classes=10)
    ref = refs["ResNet"](refs["Bottleneck"], (3, 4, 6, 3), num_classes=10, groups=32,
                         base_width=4)
    # 64x64, as for resnet50: layer4 still sees 2x2 maps
    x = np.random.default_rng(6).standard_normal((2, 3, 64, 64))
    errors = compare_with_torch(torch, ours, ref, x)
    assert max(errors.values()) < 1e-9, errors
