"""Solutions to chapter 08's exercises: what a convolution and a ResNet cost,
counted by hand."""

from __future__ import annotations

from minires.exercises import CheckResult, check_conv_macs, check_resnet_param_count


def conv_macs(in_channels, out_channels, kernel_size, stride, padding, height, width):
    """Multiply-accumulates of a conv layer (no bias) on one image."""
    out_h = (height + 2 * padding - kernel_size) // stride + 1
    out_w = (width + 2 * padding - kernel_size) // stride + 1
    # each output value: one multiply-accumulate per input channel and kernel tap
    return out_channels * out_h * out_w * in_channels * kernel_size * kernel_size


def resnet_param_count(block, layers, num_classes):
    """Learned parameters of torchvision's ImageNet ResNet."""
    expansion = 4 if block == "bottleneck" else 1

    def conv_bn(c_in, c_out, k):            # a conv without bias, then BN (weight and bias)
        return c_in * c_out * k * k + 2 * c_out

    total = conv_bn(3, 64, 7)               # the stem; max-pool has no parameters
    in_planes = 64
    for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
        out = planes * expansion
        for i in range(blocks):
            stride = 2 if stage > 0 and i == 0 else 1
            if block == "bottleneck":
                total += conv_bn(in_planes, planes, 1) + conv_bn(planes, planes, 3) \
                    + conv_bn(planes, out, 1)
            else:
                total += conv_bn(in_planes, planes, 3) + conv_bn(planes, planes, 3)
            if stride != 1 or in_planes != out:     # the shape changes: a projection
                total += conv_bn(in_planes, out, 1)
            in_planes = out
    return total + in_planes * num_classes + num_classes     # fc with bias


def checks() -> list[CheckResult]:
    """Every checker of the chapter on the solutions above."""
    return [check_conv_macs(conv_macs), check_resnet_param_count(resnet_param_count)]
