"""Chapter 08's checkers: counting a conv layer's multiply-accumulates and an
ImageNet ResNet's parameters by hand."""

from __future__ import annotations

import pytest

from minires import models
from minires.exercises import check_conv_macs, check_resnet_param_count
from minires.exercises.resnet import (
    MAC_CASES,
    MAC_HINTS,
    PARAM_CASES,
    PARAM_HINTS,
    _macs,
    _resnet_params,
)
from minires.nn.blocks import BasicBlock, Bottleneck


def macs(c_in, c_out, k, s, p, h, w):
    oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    return c_out * oh * ow * c_in * k * k


def count(block, layers, num_classes):
    expansion = 4 if block == "bottleneck" else 1
    total = 3 * 64 * 49 + 2 * 64
    c = 64
    for stage, (planes, n) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
        for i in range(n):
            out = planes * expansion
            if block == "bottleneck":
                total += c * planes + planes * planes * 9 + planes * out + 2 * (2 * planes + out)
            else:
                total += c * planes * 9 + planes * planes * 9 + 4 * planes
            if (stage > 0 and i == 0) or c != out:
                total += c * out + 2 * out
            c = out
    return total + c * num_classes + num_classes


def test_the_checkers_own_counts_are_the_library_s():
    names = {(2, 2, 2, 2): 11_689_512, (3, 4, 6, 3): None, (3, 4, 23, 3): 44_549_160,
             (3, 8, 36, 3): 60_192_808}
    assert _resnet_params("basic", (3, 4, 6, 3), 1000) == 21_797_672     # REFERENCE.md
    assert _resnet_params("bottleneck", (3, 4, 6, 3), 1000) == 25_557_032
    for layers, known in names.items():
        if known is not None:
            block = "basic" if layers == (2, 2, 2, 2) else "bottleneck"
            assert _resnet_params(block, layers, 1000) == known
    for block, layers, classes in PARAM_CASES:
        if sum(layers) <= 16:
            cls = BasicBlock if block == "basic" else Bottleneck
            model = models._imagenet("x", cls, layers, classes, 3, "imagenet", False, "B",
                                     "float32")
            assert model.num_parameters() == _resnet_params(block, layers, classes)


def test_the_checkers_macs_match_a_conv_s_output_size():
    import numpy as np

    from minires.nn import Conv2d
    for c_in, c_out, k, s, p, h, w in MAC_CASES:
        out = Conv2d(c_in, c_out, k, stride=s, padding=p, bias=False)(
            np.zeros((1, c_in, h, w), np.float32))
        assert _macs(c_in, c_out, k, s, p, h, w) == c_out * out.shape[2] * out.shape[3] \
            * c_in * k * k


def test_correct_answers_pass():
    for result in (check_conv_macs(macs), check_resnet_param_count(count)):
        assert result.passed and result.implemented, str(result)
    assert "resnet_param_count('bottleneck', (3, 4, 6, 3), 1000) = 25,557,032" in str(
        check_resnet_param_count(count))


@pytest.mark.parametrize("how", list(MAC_HINTS))
def test_typical_wrong_macs_get_their_hint(how):
    result = check_conv_macs(lambda *a: _macs(*a, how=how))
    assert not result.passed and result.implemented
    assert result.hints == [MAC_HINTS[how]], str(result)


@pytest.mark.parametrize("how", list(PARAM_HINTS))
def test_typical_wrong_param_counts_get_their_hint(how):
    result = check_resnet_param_count(lambda *a: _resnet_params(*a, how=how))
    assert not result.passed and result.implemented
    assert result.hints == [PARAM_HINTS[how]], str(result)


def test_wrong_count_names_both_numbers():
    result = check_resnet_param_count(lambda *a: count(*a) + 1)
    text = str(result)
    assert "WRONG   resnet_param_count('basic', (2, 2, 2, 2), 1000) = 11,689,513; expected " \
        "11,689,512 (+1)" \
        in text and "hint" not in text


def test_stubs_are_not_implemented_yet():
    def stub(*args):
        raise NotImplementedError

    for checker in (check_conv_macs, check_resnet_param_count):
        result = checker(stub)
        assert result.status == "not implemented yet", str(result)
        assert "WRONG" not in str(result)


def test_non_integers_are_reported():
    result = check_conv_macs(lambda *a: macs(*a) + 0.5)
    assert not result.passed and "expected the integer" in str(result)
    result = check_resnet_param_count(lambda *a: str(count(*a)))
    assert not result.passed and "= '11689512'; expected the integer 11,689,512" in str(result)
    assert check_conv_macs(lambda *a: float(macs(*a))).passed      # 1.18e8 is an integer
