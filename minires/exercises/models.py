"""Checkers for chapter 06: counting a plain CIFAR network's parameters by hand."""

from __future__ import annotations

from collections.abc import Callable

from ..models import plain_cifar
from .core import Check, CheckResult
from .resnet import _compare_int, _hint_mistake

# (depth, in_channels, num_classes, widths); the first is the paper's plain-20
# on CIFAR-10, with as many parameters as ResNet-20 with option A (269,722).
CASES = (
    (20, 3, 10, (16, 32, 64)),
    (56, 1, 10, (16, 32, 64)),
    (8, 1, 10, (8, 16, 32)),
    (14, 3, 100, (16, 32, 64)),
)


def _count(depth: int, in_channels: int, num_classes: int, widths: tuple[int, ...],
           how: str = "") -> int:
    """The parameter count of ``plain_cifar``, or of a typical wrong reading of it."""
    n = (depth - 2) // 6
    bn = 0 if how == "no_bn" else (4 if how in ("bn_buffers", "state_dict") else 2)
    tracked = 1 if how == "state_dict" else 0         # num_batches_tracked, one per BN
    bias = 1 if how == "conv_bias" else 0                              # per output channel
    c_in = 3 if how == "in_channels" else in_channels
    total = 0 if how == "no_stem" else (9 * c_in * widths[0] + bias * widths[0]
                                        + bn * widths[0] + tracked)
    prev = widths[0]
    for planes in widths:
        for i in range(n):
            first_in = planes if how == "same_width" else (prev if i == 0 else planes)
            for conv_in in (first_in, planes):
                total += 9 * conv_in * planes + bias * planes + bn * planes + tracked
        prev = planes
    features = widths[-1] * 4 if how == "flatten" else widths[-1]
    total += features * num_classes + (0 if how == "no_fc_bias" else num_classes)
    return total


HINTS = {
    "no_bn": "batch norm's weight (gamma) and bias (beta) are parameters too: 2 per channel of "
             "every BatchNorm2d, one after each conv.",
    "bn_buffers": "batch norm's running mean and running variance are buffers, not parameters: "
                  "they are not learned by the optimizer (count 2 per channel, not 4).",
    "state_dict": "that is the number of values in the state dict: it also holds batch norm's "
                  "buffers (running mean, running variance, num_batches_tracked), which are "
                  "not learned parameters.",
    "conv_bias": "the convolutions have no bias (bias=False): the batch norm right after them "
                 "subtracts the mean, so a bias would do nothing.",
    "no_fc_bias": "the fully connected layer has a bias: num_classes of them.",
    "no_stem": "the 3x3 stem convolution (in_channels -> widths[0]) and its batch norm are "
               "missing: depth 6n + 2 counts the stem and the fc besides the 6n convs.",
    "same_width": "the first conv of stages 2 and 3 takes the previous stage's width as input "
                  "(16 -> 32, 32 -> 64), not its own.",
    "flatten": "global average pooling leaves widths[-1] features per image, whatever the map "
               "size: the fc layer has widths[-1] * num_classes weights.",
    "in_channels": "the stem's kernels have in_channels input channels (1 for the digits), not "
                   "always 3.",
}


def check_param_count(count: Callable) -> CheckResult:
    """Check a hand-derived parameter count of ``minires.models.plain_cifar``.

    Signature::

        count(depth, in_channels, num_classes, widths) -> int
            depth : 6n + 2; in_channels, num_classes : ints;
            widths : tuple of the 3 stages' widths, e.g. (16, 32, 64)

    The network: a 3x3 stem conv (in_channels -> widths[0]) with batch norm;
    three stages of n plain blocks, each two 3x3 convs with batch norm (the
    first conv of stages 2 and 3 goes from the previous width to the new one,
    with stride 2); global average pooling; a fully connected layer with bias.
    Convolutions have no bias. Compared with ``plain_cifar(...).num_parameters()``
    on four networks, the first the paper's plain-20 for CIFAR-10 (269,722,
    the same as ResNet-20 with option A shortcuts, which add no parameters).
    """
    check = Check("check_param_count")
    matches = []
    for depth, c_in, classes, widths in CASES:
        what = f"count({depth}, {c_in}, {classes}, {widths})"
        got = check.call(what, count, depth, c_in, classes, widths)
        expected = plain_cifar(depth, num_classes=classes, in_channels=c_in,
                               widths=widths).num_parameters()
        found = _compare_int(check, what, got, expected,
                             {how: _count(depth, c_in, classes, widths, how) for how in HINTS})
        if not check.implemented:
            break
        if found is not None:
            matches.append(found)
    _hint_mistake(check, matches, HINTS)
    return check.result()
