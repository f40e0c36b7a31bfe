"""check_replace_head, check_freeze, check_param_groups: the library's versions
and the solutions pass; the typical wrong ones fail with their hint."""

from __future__ import annotations

import pytest

from minires import finetune
from minires.exercises import check_freeze, check_param_groups, check_replace_head
from minires.exercises.finetune import _pretrained
from minires.nn import BatchNorm2d, Conv2d, Linear, init


def stub(*args, **kwargs):
    raise NotImplementedError


@pytest.mark.parametrize("checker", [check_replace_head, check_freeze, check_param_groups])
def test_stub_is_not_implemented(checker):
    result = checker(stub)
    assert not result.implemented and result.status == "not implemented yet", str(result)
    assert str(result).count("NotImplementedError") == 1 and not result.hints


def test_the_checkers_model_leaves_the_init_generator_alone():
    init.manual_seed(123)
    state = init.get_rng().bit_generator.state
    _pretrained()
    assert init.get_rng().bit_generator.state == state


# ---- replace_head ---------------------------------------------------------------------

def make_replace_head(bug: str = ""):
    def replace_head(model, num_classes):
        old = model.fc
        if bug == "keep_if_same" and old.out_features == num_classes:
            return old
        dtype = "float32" if bug == "float32" else str(old.weight.data.dtype)
        head = Linear(old.in_features, num_classes, dtype=dtype)
        if bug == "slice":
            head.weight.data = old.weight.data[:num_classes].copy()
            head.bias.data = old.bias.data[:num_classes].copy()
        if bug == "old_bias":                 # a fresh weight, the old classes' bias
            head.bias.data = old.bias.data[:num_classes].copy()
        if bug == "frozen":
            head.weight.requires_grad = head.bias.requires_grad = False
        if bug == "reinit_all":
            for m in model.modules():
                if isinstance(m, Conv2d):
                    m.weight.data = init.kaiming_normal(m.weight.shape, "fan_in", "float64")
        if bug == "transposed":
            head.weight.data = head.weight.data.T.copy()
        model.fc = head
        return None if bug == "no_return" else head

    return replace_head


def test_library_replace_head_passes():
    result = check_replace_head(finetune.replace_head)
    assert result.passed, str(result)
    assert str(result).count("ok      replace_head") == 2


def test_correct_replace_head_passes():
    assert check_replace_head(make_replace_head()).passed


@pytest.mark.parametrize("bug, message, hint", [
    ("keep_if_same", "model.fc has the old head's weights", "was not re-initialised"),
    ("slice", "first 3 rows of the old head's", "holds the first rows of the old one"),
    ("old_bias", "model.fc.bias is the old head's first 3 entries", "the bias was copied"),
    ("float32", "model.fc is float32 but the network is float64", "dtype=str(model.fc"),
    ("reinit_all", "entries of the backbone changed", "keep every pretrained weight"),
    ("transposed", "model.fc.weight has shape (64, 3)", "the weight is transposed"),
])
def test_typical_head_mistake_gets_its_hint(bug, message, hint):
    result = check_replace_head(make_replace_head(bug))
    text = str(result)
    assert not result.passed and result.implemented, text
    assert message in text and hint in text, text


def test_frozen_head_and_missing_return_are_named():
    text = str(check_replace_head(make_replace_head("frozen")))
    assert "fc.weight, fc.bias has requires_grad=False; the new head must learn" in text
    text = str(check_replace_head(make_replace_head("no_return")))
    assert "returned None; expected the new head" in text


# ---- freeze_backbone ------------------------------------------------------------------

def make_freeze(bug: str = ""):
    def freeze_backbone(model, train_bn=False):
        if bug == "freeze_all":
            model.requires_grad_(False)
            return
        if bug == "grad_none":
            for p in model.parameters():
                p.grad = None
            return
        bn_modules = [(name, m) for name, m in model.named_modules()
                      if (("bn" in name.split(".")[-1]) if bug == "by_name"
                          else isinstance(m, BatchNorm2d))]
        bn = {id(p) for _, m in bn_modules for p in m.parameters()}
        for name, p in model.named_parameters():
            if name.startswith("fc."):
                continue
            if bug == "conv_only" and id(p) in bn:
                continue
            keep = train_bn and bug != "ignore_train_bn"
            p.requires_grad = keep and id(p) in bn

    return freeze_backbone


def test_library_freeze_passes_without_bn():
    def freeze_backbone(model, train_bn=False):
        finetune.freeze(model, except_prefixes=("fc.",))
        if train_bn:
            for m in model.modules():
                if isinstance(m, BatchNorm2d):
                    m.requires_grad_(True)

    result = check_freeze(freeze_backbone)
    assert result.passed, str(result)


def test_correct_freeze_passes():
    assert check_freeze(make_freeze()).passed


@pytest.mark.parametrize("bug, message, hint", [
    ("conv_only", "batch-norm parameters trainable", "are parameters too"),
    ("by_name", "layer2.0.downsample.1.weight", "recognise batch norm by type"),
    ("freeze_all", "fc.weight, fc.bias frozen", "the new head must learn"),
    ("ignore_train_bn", "train_bn=True): 18 batch-norm parameters frozen", "the other way round"),
    ("grad_none", "backbone parameters still trainable", "nothing was frozen"),
])
def test_typical_freeze_mistake_gets_its_hint(bug, message, hint):
    result = check_freeze(make_freeze(bug))
    text = str(result)
    assert not result.passed and result.implemented, text
    assert message in text and hint in text, text


def test_freeze_that_changes_values_fails():
    def freeze_backbone(model, train_bn=False):
        make_freeze()(model, train_bn)
        model.conv1.weight.data = model.conv1.weight.data * 0

    assert "changed weights" in str(check_freeze(freeze_backbone))


# ---- param_groups -----------------------------------------------------------------------

def make_groups(bug: str = ""):
    def param_groups(model, head_lr, backbone_lr):
        head, body = [], []
        for name, p in model.named_parameters():
            if not p.requires_grad and bug != "include_frozen":
                continue
            (head if name.startswith("fc.") else body).append(p)
        if bug == "conv_only":
            convs = {id(m.weight) for m in model.modules() if isinstance(m, Conv2d)}
            body = [p for p in body if id(p) in convs]
        if bug == "one_group":
            return [{"params": head + body, "lr": head_lr}]
        if bug == "no_lr":
            return [{"params": head, "lr": head_lr}, {"params": body}]
        if bug == "swapped":
            return [{"params": head, "lr": backbone_lr}, {"params": body, "lr": head_lr}]
        if bug == "all_backbone":
            return [{"params": head + body, "lr": backbone_lr}]
        if bug == "duplicate":
            return [{"params": head, "lr": head_lr},
                    {"params": list(model.parameters()), "lr": backbone_lr}]
        if bug == "no_head":
            return [{"params": body, "lr": backbone_lr}]
        return [{"params": head, "lr": head_lr}, {"params": body, "lr": backbone_lr}]

    return param_groups


def test_library_param_groups_pass():
    def param_groups(model, head_lr, backbone_lr):
        return finetune.finetune_param_groups(model, lr=head_lr, backbone_lr=backbone_lr)

    result = check_param_groups(param_groups)
    assert result.passed, str(result)
    assert str(result).count("ok      param_groups") == 2


def test_correct_param_groups_pass_and_frozen_ones_are_harmless():
    assert check_param_groups(make_groups()).passed
    result = check_param_groups(make_groups("include_frozen"))
    assert result.passed and "harmless" in str(result), str(result)


@pytest.mark.parametrize("bug, hint", [
    ("one_group", "the backbone learns at the head's rate; it should get backbone_lr"),
    ("no_lr", "a group without an 'lr' entry takes the optimizer's default"),
    ("swapped", "the two rates are swapped"),
    ("all_backbone", "the head learns at the backbone's rate"),
    ("duplicate", "a parameter is in two groups"),
    ("conv_only", "the batch norms' weight and bias are in no group"),
    ("no_head", "the head is in no group"),
])
def test_typical_groups_mistake_gets_its_hint(bug, hint):
    result = check_param_groups(make_groups(bug))
    text = str(result)
    assert not result.passed and result.implemented, text
    assert hint in text, text
    assert len(result.hints) == 1, text


def test_wrong_rate_names_the_parameter():
    text = str(check_param_groups(make_groups("all_backbone")))
    assert "fc.weight learns at 0.01, expected 0.1" in text
    text = str(check_param_groups(make_groups("no_head")))
    assert "fc.weight is in no group (never updated), expected 0.1" in text


def test_returning_none_is_named():
    text = str(check_param_groups(lambda model, a, b: None))
    assert "returned None; expected a list of dicts" in text
