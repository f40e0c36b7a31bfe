"""Chapter 07's checkers: the library's blocks pass, each typical wrong block
fails with its hint, a stub is "not implemented yet"."""

from __future__ import annotations

import numpy as np
import pytest

from minires import nn
from minires.exercises import check_residual_block, check_residual_wrapper
from minires.nn import init

# ---- a correct student block, and its typical wrong variants ----------------

class Block(nn.Module):
    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.downsample = None
        if self.needs_projection(in_planes, planes, stride):
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=self.shortcut_stride(stride),
                          bias=False),
                nn.BatchNorm2d(planes))

    def needs_projection(self, in_planes, planes, stride):
        return stride != 1 or in_planes != planes

    def shortcut_stride(self, stride):
        return stride

    def residual(self, x):
        return self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))

    def shortcut(self, x):
        return x if self.downsample is None else self.downsample(x)

    def forward(self, x):
        return self.relu2(self.residual(x) + self.shortcut(x))

    def branches_backward(self, dsum):
        d = self.relu1.backward(self.conv2.backward(self.bn2.backward(dsum)))
        dx_residual = self.conv1.backward(self.bn1.backward(d))
        dx_shortcut = dsum if self.downsample is None else self.downsample.backward(dsum)
        return dx_residual, dx_shortcut

    def backward(self, dout):
        dx_residual, dx_shortcut = self.branches_backward(self.relu2.backward(dout))
        return dx_residual + dx_shortcut


class DropsShortcutGrad(Block):
    def backward(self, dout):
        dx_residual, _ = self.branches_backward(self.relu2.backward(dout))
        return dx_residual


class OverwritesWithShortcutGrad(Block):
    def backward(self, dout):
        dx, dx_shortcut = self.branches_backward(self.relu2.backward(dout))
        dx = dx_shortcut                      # `=` where `+=` was meant
        return dx


class ReluBeforeSum(Block):
    def forward(self, x):
        return self.relu2(self.residual(x)) + self.shortcut(x)

    def backward(self, dout):
        d = self.relu2.backward(dout)
        d = self.relu1.backward(self.conv2.backward(self.bn2.backward(d)))
        dx_residual = self.conv1.backward(self.bn1.backward(d))
        dx_shortcut = dout if self.downsample is None else self.downsample.backward(dout)
        return dx_residual + dx_shortcut


class ShortcutGradFromDout(Block):
    def backward(self, dout):
        dx_residual, _ = self.branches_backward(self.relu2.backward(dout))
        return dx_residual + (dout if self.downsample is None
                              else self.downsample.backward(dout))


class NoDownsample(Block):
    def needs_projection(self, in_planes, planes, stride):
        return False


class DownsampleOnlyWhenStrided(Block):
    def needs_projection(self, in_planes, planes, stride):
        return stride != 1


class DownsampleOnlyWhenChannelsChange(Block):
    # passes at (4, 4, 1), (4, 8, 2) and (4, 8, 1): only (4, 4, 2) shows it
    def needs_projection(self, in_planes, planes, stride):
        return in_planes != planes


class DownsampleAlways(Block):
    def needs_projection(self, in_planes, planes, stride):
        return True


class DownsampleWrongStride(Block):
    def shortcut_stride(self, stride):
        return 1


class StrideOnConv2(Block):
    def __init__(self, in_planes, planes, stride=1):
        super().__init__(in_planes, planes, stride)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=1, padding=1, bias=False)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)


class OtherNames(Block):
    def __init__(self, in_planes, planes, stride=1):
        super().__init__(in_planes, planes, stride)
        self.first_conv = self.conv1
        del self.conv1

    def residual(self, x):
        return self.bn2(self.conv2(self.relu1(self.bn1(self.first_conv(x)))))

    def branches_backward(self, dsum):
        d = self.relu1.backward(self.conv2.backward(self.bn2.backward(dsum)))
        dx_residual = self.first_conv.backward(self.bn1.backward(d))
        dx_shortcut = dsum if self.downsample is None else self.downsample.backward(dsum)
        return dx_residual, dx_shortcut


class OneReluTwice(Block):
    def forward(self, x):
        f = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu1(f + self.shortcut(x))

    def backward(self, dout):
        dx_residual, dx_shortcut = self.branches_backward(self.relu1.backward(dout))
        return dx_residual + dx_shortcut


class OverwritesParameterGrads(Block):
    def backward(self, dout):
        self.zero_grad()                      # the previous gradients are lost
        return super().backward(dout)


class ModifiesDoutInPlace(Block):
    def forward(self, x):
        out = super().forward(x)
        self.relu2._cache = None              # the final ReLU's backward written by hand
        self.mask = out > 0
        return out

    def backward(self, dout):
        dout[~self.mask] = 0                  # zeroes the caller's array
        dx_residual, dx_shortcut = self.branches_backward(dout)
        return dx_residual + dx_shortcut


class AddsIntoItsInput(Block):
    def forward(self, x):
        if self.downsample is not None:
            return super().forward(x)
        x += self.residual(x)                 # the caller's x, which conv1 cached
        return self.relu2(x)


class Stub(nn.Module):
    def __init__(self, in_planes, planes, stride=1):
        super().__init__()

    def forward(self, x):
        raise NotImplementedError

    def backward(self, dout):
        raise NotImplementedError


def _text(block_class):
    result = check_residual_block(block_class)
    return result, str(result)


def test_library_basic_block_with_option_b_passes():
    result, text = _text(lambda i, p, s: nn.BasicBlock(i, p, s, shortcut="B"))
    assert result.passed and result.implemented, text
    for case in ("[4->4, stride 1]", "[4->8, stride 2]", "[4->8, stride 1]",
                 "[4->4, stride 2]"):
        assert f"ok      {case} out" in text and f"ok      {case} dx" in text
    assert "accumulate over two backward passes" in text


def test_correct_student_block_passes():
    result, text = _text(Block)
    assert result.passed, text


@pytest.mark.parametrize("wrong, expected", [
    (DropsShortcutGrad, "the shortcut's gradient was dropped"),
    (OverwritesWithShortcutGrad, "the residual branch's gradient was overwritten"),
    (ReluBeforeSum, "the ReLU must come after the sum"),
    (ShortcutGradFromDout, "the shortcut's gradient was taken from dout"),
    (NoDownsample, "self.downsample = Sequential(Conv2d("),
    (DownsampleOnlyWhenStrided, "self.downsample = Sequential(Conv2d("),
    (DownsampleOnlyWhenChannelsChange, "self.downsample = Sequential(Conv2d("),
    (DownsampleAlways, "the shortcut is the identity, with no downsample"),
    (DownsampleWrongStride, "the downsample's 1x1 conv has stride 1"),
    (StrideOnConv2, "the block's stride belongs to conv1"),
    (OtherNames, "Use torchvision's child names"),
    (OneReluTwice, "one ReLU module cannot be used twice"),
    (OverwritesParameterGrads, "Parameter gradients accumulate"),
    (ModifiesDoutInPlace, "dout was modified in place"),
    (AddsIntoItsInput, "[4->4, stride 1] x was modified in place; a forward pass must"),
])
def test_typical_wrong_block_fails_with_its_hint(wrong, expected):
    result, text = _text(wrong)
    assert not result.passed and result.implemented, text
    assert expected in text, text


def test_names_the_expected_children():
    _, text = _text(OtherNames)
    assert "has no conv1.weight" in text and "expected conv1, bn1, conv2, bn2" in text
    _, text = _text(NoDownsample)
    assert "expected conv1, bn1, conv2, bn2, downsample" in text


def test_wrong_dx_is_named_with_its_relative_error():
    _, text = _text(DropsShortcutGrad)
    assert "WRONG   [4->4, stride 1] dx: relative error" in text
    assert "ok      [4->4, stride 1] out" in text


def test_stub_is_not_implemented_yet():
    result, text = _text(Stub)
    assert not result.implemented and result.status == "not implemented yet", text
    assert "WRONG" not in text and "hint" not in text


def test_not_a_module_is_reported():
    class Plain:
        def __init__(self, *args):
            pass

    result, text = _text(Plain)
    assert not result.passed and "not a minires.nn.Module" in text


def test_checker_leaves_the_init_generator_alone():
    init.manual_seed(3)
    expected = init.get_rng().standard_normal(3)
    init.manual_seed(3)
    check_residual_block(Block)
    check_residual_block(Stub)
    check_residual_wrapper(Residual)
    assert np.array_equal(init.get_rng().standard_normal(3), expected)


# ---- the skip connection as a module ------------------------------------------

class Residual(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x) + x

    def backward(self, dout):
        return self.inner.backward(dout) + dout


class ForgetsTheInput(Residual):
    def forward(self, x):
        return self.inner(x)

    def backward(self, dout):
        return self.inner.backward(dout)


class DropsTheSkipGrad(Residual):
    def backward(self, dout):
        return self.inner.backward(dout)


class OnlyTheSkipGrad(Residual):
    def backward(self, dout):
        self.inner.backward(dout)
        return dout


class AddsInPlace(Residual):
    def backward(self, dout):
        dx = self.inner.backward(dout)
        dx += dout
        return dx


class AddsIntoItsInputWrapper(Residual):
    def forward(self, x):
        out = self.inner(x)                   # the identity returns x itself
        out += x
        return out


class WrapperStub(nn.Module):
    def __init__(self, inner):
        super().__init__()
        raise NotImplementedError


def test_correct_wrapper_passes():
    result = check_residual_wrapper(Residual)
    assert result.passed, str(result)
    assert "[F = identity] dx" in str(result)


@pytest.mark.parametrize("wrong, expected", [
    (ForgetsTheInput, "the block must add its input back"),
    (DropsTheSkipGrad, "the shortcut's gradient is missing"),
    (OnlyTheSkipGrad, "the gradient through F is missing"),
    (AddsInPlace, "`dx += dout` adds into the caller's array"),
    (AddsIntoItsInputWrapper, "`out += x` adds into the caller's array"),
])
def test_typical_wrong_wrapper_fails_with_its_hint(wrong, expected):
    result = check_residual_wrapper(wrong)
    assert not result.passed and result.implemented, str(result)
    assert expected in str(result), str(result)


def test_wrapper_stub_is_not_implemented_yet():
    result = check_residual_wrapper(WrapperStub)
    assert result.status == "not implemented yet", str(result)
