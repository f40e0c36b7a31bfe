"""check_param_count: the right count passes, the typical wrong ones fail with their hint."""

from __future__ import annotations

import numpy as np
import pytest

from minires.exercises import check_param_count
from minires.models import plain_cifar


def make_count(bug: str = ""):
    """A student's count, layer by layer, correct or with one typical bug."""

    def count(depth, in_channels, num_classes, widths):
        n = (depth - 2) // 6
        per_bn = {"no_bn": 0, "buffers": 4}.get(bug, 2)
        c0 = 3 if bug == "always_rgb" else in_channels
        total = 9 * c0 * widths[0] + per_bn * widths[0]                # stem conv + BN
        if bug == "no_stem":
            total = 0
        if bug == "conv_bias":
            total += widths[0]                                          # the stem's bias
        c_in = widths[0]
        for planes in widths:
            for i in range(n):
                a = planes if bug == "same_width" else (c_in if i == 0 else planes)
                total += 9 * a * planes + per_bn * planes               # conv1 + bn1
                total += 9 * planes * planes + per_bn * planes          # conv2 + bn2
                if bug == "conv_bias":
                    total += 2 * planes
            c_in = planes
        total += widths[-1] * num_classes
        if bug != "no_fc_bias":
            total += num_classes
        return float(total) + 0.5 if bug == "float" else total

    return count


def test_library_count_passes():
    def count(depth, in_channels, num_classes, widths):
        return plain_cifar(depth, num_classes=num_classes, in_channels=in_channels,
                           widths=widths).num_parameters()

    result = check_param_count(count)
    assert result.passed and result.implemented, str(result)
    assert "count(20, 3, 10, (16, 32, 64)) = 269,722" in str(result)


def test_hand_count_passes():
    assert check_param_count(make_count()).passed


def test_paper_number():
    # He et al. (2015), Table 6: ResNet-20 has 0.27M parameters (269,722 with option A);
    # the plain twin has the same layers and shortcuts of type A add none.
    assert plain_cifar(20).num_parameters() == 269_722


@pytest.mark.parametrize("bug, hint", [
    ("no_bn", "2 per channel of every BatchNorm2d"),
    ("buffers", "are buffers, not parameters"),
    ("conv_bias", "the convolutions have no bias"),
    ("no_fc_bias", "the fully connected layer has a bias"),
    ("no_stem", "the 3x3 stem convolution"),
    ("same_width", "takes the previous stage's width"),
    ("always_rgb", "not always 3"),
])
def test_typical_mistake_gets_its_hint(bug, hint):
    result = check_param_count(make_count(bug))
    text = str(result)
    assert not result.passed and result.implemented, text
    assert "WRONG" in text and "expected" in text and hint in text, text


def test_state_dict_size_gets_its_hint():
    def count(depth, in_channels, num_classes, widths):
        m = plain_cifar(depth, num_classes=num_classes, in_channels=in_channels, widths=widths)
        return sum(int(np.size(v)) for v in m.state_dict().values())

    text = str(check_param_count(count))
    assert "number of values in the state dict" in text


def test_difference_is_shown():
    text = str(check_param_count(make_count("no_fc_bias")))
    assert "count(20, 3, 10, (16, 32, 64)) = 269,712; expected 269,722 (-10)" in text


def test_non_integer_is_named():
    text = str(check_param_count(make_count("float")))
    assert "expected the integer 269,722" in text
    text = str(check_param_count(lambda *a: "many"))
    assert "returned a str, expected an int" in text


def test_stub_is_not_implemented():
    def count(depth, in_channels, num_classes, widths):
        raise NotImplementedError

    result = check_param_count(count)
    assert not result.implemented and result.status == "not implemented yet"
    assert str(result).count("NotImplementedError") == 1
