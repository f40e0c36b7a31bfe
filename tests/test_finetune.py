"""Fine-tuning: loading pretrained weights, a new head, freezing, two learning rates."""

import numpy as np
import pytest
from util import torch_or_skip

from minires import backend
from minires import functional as F
from minires.checkpoint import save_checkpoint, save_state_dict
from minires.data import DataLoader, Normalize, load_digits
from minires.finetune import (
    finetune_param_groups,
    freeze,
    input_channels,
    load_pretrained,
    read_weights,
    replace_head,
    unfreeze,
)
from minires.models import get_model
from minires.nn import CrossEntropyLoss, Linear, init
from minires.optim import SGD
from minires.train import Trainer


@pytest.fixture(autouse=True, scope="module")
def one_blas_thread():
    """Tiny matrices: a second BLAS thread only stalls on a busy machine."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def resnet8(num_classes=10, seed=0, **kw):
    init.manual_seed(seed)
    return get_model("resnet8", in_channels=1, num_classes=num_classes, **kw)


def host_state(model):
    return {k: backend.to_numpy(v).copy() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def batch():
    x, y = load_digits("train")
    return Normalize([0.3], [0.4])(x[:32]), y[:32]


def test_load_state_dict_strict_false_returns_missing_and_unexpected():
    source, model = resnet8(seed=1), resnet8(seed=2)
    state = host_state(source)
    del state["fc.bias"]
    state["head2.weight"] = np.zeros((3, 3), np.float32)
    with pytest.raises(KeyError, match=r"missing keys \['fc.bias'\].*unexpected keys "
                                       r"\['head2.weight'\]"):
        model.load_state_dict(state)
    before = host_state(model)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert missing == ["fc.bias"] and unexpected == ["head2.weight"]
    after = host_state(model)
    assert after["fc.bias"].tobytes() == before["fc.bias"].tobytes()
    assert all(after[k].tobytes() == state[k].tobytes() for k in after if k != "fc.bias")


@pytest.mark.parametrize("kind", ["checkpoint", "weights", "mapping"])
def test_load_pretrained_skips_the_old_head(kind, tmp_path):
    pretrained = resnet8(num_classes=10, seed=1)
    path = tmp_path / "w.npz"
    if kind == "checkpoint":
        save_checkpoint(path, model_state=pretrained.state_dict(), epoch=3, config={})
    elif kind == "weights":
        save_state_dict(path, pretrained.state_dict())
    source = pretrained.state_dict() if kind == "mapping" else path
    model = resnet8(num_classes=5, seed=2)
    head_before = host_state(model)["fc.weight"]
    missing, unexpected = load_pretrained(model, source)
    assert missing == ["fc.weight", "fc.bias"] and unexpected == []
    ours, theirs = host_state(model), host_state(pretrained)
    assert all(ours[k].tobytes() == theirs[k].tobytes() for k in ours if not k.startswith("fc."))
    assert ours["fc.weight"].tobytes() == head_before.tobytes()
    with pytest.raises(ValueError, match=r"shape mismatch for fc.weight: expected \(5, 64\), "
                                         r"got \(10, 64\)"):
        load_pretrained(resnet8(num_classes=5), source, skip_mismatched=False)


@pytest.mark.torch
def test_load_pretrained_from_a_torchvision_state_dict(tmp_path):
    """torchvision's ResNet-18 layout (1000 classes) saved with torch.save, loaded
    into a 7-class minires ResNet-18: everything but the head arrives unchanged."""
    torch = torch_or_skip()
    from test_blocks import torch_refs

    refs = torch_refs(torch)
    torch.manual_seed(0)
    ref = refs["ResNet"](refs["BasicBlock"], (2, 2, 2, 2)).float()
    path = tmp_path / "resnet18.pt"
    torch.save(ref.state_dict(), path)
    model = get_model("resnet18", num_classes=7)
    missing, unexpected = load_pretrained(model, path)
    assert missing == ["fc.weight", "fc.bias"] and unexpected == []
    ours, theirs = host_state(model), ref.state_dict()
    assert all(ours[k].tobytes() == theirs[k].numpy().tobytes()
               for k in ours if not k.startswith("fc."))
    assert ours["fc.weight"].shape == (7, 512)
    # a torch module and a mapping of tensors are read the same way
    for source in (ref, ref.state_dict()):
        weights = read_weights(source)
        assert list(weights) == list(theirs)
        assert isinstance(weights["conv1.weight"], np.ndarray)


def test_replace_head():
    model = resnet8(num_classes=10, dtype="float64")
    old = model.fc
    head = replace_head(model, 3)
    assert model.fc is head and head is not old and isinstance(head, Linear)
    assert head.weight.shape == (3, 64) and head.bias.shape == (3,)
    assert head.weight.dtype == old.weight.dtype == np.float64
    assert [k for k, _ in model.named_parameters()][-2:] == ["fc.weight", "fc.bias"]
    with pytest.raises(ValueError, match="expected model.conv1 to be a Linear layer, got Conv2d"):
        replace_head(model, 3, attr="conv1")


def test_frozen_parameters_get_no_gradient_work_and_never_change(batch, monkeypatch):
    x, y = batch
    model = resnet8()
    frozen = freeze(model, except_prefixes=["fc."])
    assert frozen == [k for k, _ in model.named_parameters() if not k.startswith("fc.")]
    flags = []
    for name in ("conv2d_backward", "batchnorm_backward"):     # the public ops the layers call
        original = getattr(F, name)

        def spy(dout, cache, need_param_grads=True, original=original, **kwargs):
            flags.append(need_param_grads)
            return original(dout, cache, need_param_grads=need_param_grads, **kwargs)

        monkeypatch.setattr(F, name, spy)
    before = host_state(model)
    # every parameter handed to the optimizer, with momentum and weight decay:
    # the frozen ones must still not move
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    criterion = CrossEntropyLoss()
    for _ in range(3):
        criterion(model(x), y)
        model.backward(criterion.backward())
        assert all(p.grad is None for k, p in model.named_parameters() if k in frozen)
        assert model.fc.weight.grad is not None
        opt.step()
        model.zero_grad()
    assert flags and not any(flags)  # no dw, dgamma, dbeta computed anywhere
    after = host_state(model)
    assert all(after[k].tobytes() == before[k].tobytes() for k in frozen)
    assert after["fc.weight"].tobytes() != before["fc.weight"].tobytes()
    # BatchNorm's running statistics are buffers: they follow the batches
    assert after["bn1.running_mean"].tobytes() != before["bn1.running_mean"].tobytes()


def test_trainer_with_a_frozen_backbone(batch):
    x, y = batch
    model = resnet8(num_classes=10)
    freeze(model, prefixes=["conv1", "bn1", "layer1", "layer2"])
    before = host_state(model)
    opt = SGD(finetune_param_groups(model, lr=0.1, backbone_lr=0.01), lr=0.1, momentum=0.9)
    loader = DataLoader(x, y, 8, shuffle=True)
    Trainer(model, opt, loader, progress=False, log=False).fit(2)
    after = host_state(model)
    for name, p in model.named_parameters():
        same = after[name].tobytes() == before[name].tobytes()
        assert same == (not p.requires_grad), name
        assert p.grad is None


def test_freeze_prefixes_unfreeze_and_typos():
    model = resnet8()
    names = freeze(model, ["conv1", "layer1"])
    assert names == ["conv1.weight"] + [k for k, _ in model.named_parameters()
                                        if k.startswith("layer1")]
    assert {k for k, p in model.named_parameters() if not p.requires_grad} == set(names)
    assert unfreeze(model) == [k for k, _ in model.named_parameters()]
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match=r"no parameter name starts with 'layer4'.*'layer3'"):
        freeze(model, ["layer4"])
    with pytest.raises(ValueError, match="not a str"):
        freeze(model, "conv1")
    assert all(p.requires_grad for p in model.parameters())


def test_backbone_learns_at_the_lower_rate(batch):
    """One plain SGD step: the head moves by lr * grad, the backbone by backbone_lr * grad."""
    x, y = batch
    model = resnet8()
    groups = finetune_param_groups(model, lr=0.1, backbone_lr=0.01)
    assert [g["lr"] for g in groups] == [0.1, 0.01]
    assert [len(g["params"]) for g in groups] == [2, len(list(model.parameters())) - 2]
    opt = SGD(groups, lr=0.1)
    criterion = CrossEntropyLoss()
    criterion(model(x), y)
    model.backward(criterion.backward())
    named = list(model.named_parameters())
    old = {k: backend.to_numpy(p.data).copy() for k, p in named}
    grads = {k: backend.to_numpy(p.grad).copy() for k, p in named}
    opt.step()
    for k, p in named:
        lr = 0.1 if k.startswith("fc.") else 0.01
        np.testing.assert_allclose(backend.to_numpy(p.data), old[k] - lr * grads[k],
                                   rtol=1e-6, atol=1e-7, err_msg=k)


def test_param_groups_leave_out_frozen_parameters():
    model = resnet8()
    freeze(model, except_prefixes=["fc."])
    groups = finetune_param_groups(model, lr=0.05, backbone_lr=0.005, weight_decay=1e-4)
    assert len(groups) == 1 and groups[0]["params"] == [model.fc.weight, model.fc.bias]
    assert groups[0]["weight_decay"] == 1e-4


def test_input_channels_of_the_first_convolution():
    assert input_channels(resnet8().state_dict()) == 1
    assert input_channels(get_model("resnet18").state_dict()) == 3
    other = {"head.bias": np.zeros(2), "stem.weight": np.zeros((4, 6, 3, 3)),
             "later.weight": np.zeros((4, 4, 3, 3))}
    assert input_channels(other) == 6  # no conv1: the first 4-D weight
    assert input_channels({"fc.weight": np.zeros((2, 3))}) is None
