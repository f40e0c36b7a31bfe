"""Solutions to chapter 06's exercises: a plain CIFAR network's parameters, by hand."""

from __future__ import annotations

from minires.exercises import CheckResult, check_param_count


def count(depth: int, in_channels: int, num_classes: int, widths: tuple[int, ...]) -> int:
    """Learned parameters of ``plain_cifar(depth, num_classes, in_channels, widths)``.

    A 3x3 conv has ``9 * c_in * c_out`` weights and no bias (the batch norm after
    it subtracts the mean, so a bias would cancel); each batch norm has a weight
    and a bias per channel (its running statistics are buffers, not parameters).
    """
    n = (depth - 2) // 6                       # blocks per stage

    def conv_bn(c_in: int, c_out: int) -> int:
        return 9 * c_in * c_out + 2 * c_out

    total = conv_bn(in_channels, widths[0])    # the stem
    c_in = widths[0]
    for planes in widths:
        for i in range(n):
            total += conv_bn(c_in if i == 0 else planes, planes) + conv_bn(planes, planes)
        c_in = planes
    return total + widths[-1] * num_classes + num_classes     # fc after global average pooling


def checks() -> list[CheckResult]:
    """Every checker of the chapter on the solutions above."""
    return [check_param_count(count)]
