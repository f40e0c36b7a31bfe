"""Checkers for chapter 08: counting, by hand, what a ResNet costs.

- :func:`check_conv_macs`: the multiply-accumulates (MACs) of one convolution
  layer, what He et al. (2015), Table 1, calls its "FLOPs";
- :func:`check_resnet_param_count`: the parameters of torchvision's
  ImageNet ResNets (``resnet18`` ... ``resnet152`` and smaller variants).

Both compare an integer with the exact answer and, when it is off, try the
typical wrong readings of the architecture to say which one was made.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .core import MISSING, Check, CheckResult

# ---- the multiply-accumulates of a convolution ---------------------------------------------

# (in_channels, out_channels, kernel_size, stride, padding, height, width)
MAC_CASES = (
    (3, 64, 7, 2, 3, 224, 224),      # ResNet's ImageNet stem
    (64, 64, 3, 1, 1, 56, 56),       # a 3x3 conv of layer1
    (64, 128, 1, 2, 0, 56, 56),      # the projection of layer2's first block
    (16, 32, 3, 2, 1, 8, 8),         # a CIFAR-style stage change on the digits
    (3, 8, 5, 1, 0, 7, 9),           # no padding, a non-square image
    (8, 16, 3, 2, 0, 10, 10),        # stride 2 without padding
)


def _out_size(size: int, k: int, s: int, p: int, how: str = "") -> int:
    if how == "input_size":
        return size
    if how == "no_padding":
        p = 0
    if how == "no_plus_one":
        return (size + 2 * p - k) // s
    if how == "divide_by_stride":
        return size // s
    return (size + 2 * p - k) // s + 1


def _macs(c_in: int, c_out: int, k: int, s: int, p: int, h: int, w: int,
           how: str = "") -> int:
    """Multiply-accumulates of a conv layer on one image, or a typical wrong count."""
    oh, ow = _out_size(h, k, s, p, how), _out_size(w, k, s, p, how)
    per_output = (1 if how == "no_cin" else c_in) * (k if how == "kernel_once" else k * k)
    total = c_out * oh * ow * per_output
    return 2 * total if how == "two_flops" else total


MAC_HINTS = {
    "two_flops": "exactly twice the answer: that is the FLOPs (a multiplication and an addition "
                 "each count once). A MAC is one multiply-accumulate, a += w * x; the paper's "
                 "Table 1 \"FLOPs\" are MACs too.",
    "input_size": "the count uses the input's size H x W; each output pixel costs the "
                  "MACs, and there are OH x OW = ((H + 2p - k) // s + 1)^2 of them.",
    "no_padding": "the output size ignores the padding: OH = (H + 2 * padding - k) // stride + 1.",
    "no_plus_one": "the output size is one pixel short: OH = (H + 2p - k) // s + 1 (a window fits "
                   "at position 0 too).",
    "divide_by_stride": "OH = H // stride is right only for some kernels and paddings; use "
                        "(H + 2p - k) // s + 1.",
    "no_cin": "each output value sums over all C_in input channels: C_in * k * k MACs per "
              "output value.",
    "kernel_once": "a k x k kernel has k * k taps per input channel, not k.",
}


def check_conv_macs(conv_macs: Callable[..., Any]) -> CheckResult:
    """Check ``conv_macs(in_channels, out_channels, kernel_size, stride, padding,
    height, width) -> int``: the multiply-accumulates of a 2-D convolution
    without bias on one (in_channels, height, width) image, square kernel,
    the same stride and padding on both axes.

    One multiply-accumulate ``a += w * x`` counts once (twice as many FLOPs);
    He et al. (2015), Table 1, counts the same and calls it "FLOPs". The
    answer is ``C_out * OH * OW * C_in * k * k`` with
    ``OH = (H + 2p - k) // s + 1``. Six layers are tried, among them
    ResNet's 7x7 stem at 224x224 (118,013,952) and a 1x1 projection with
    stride 2.
    """
    check = Check("check_conv_macs")
    matches = []
    for case in MAC_CASES:
        what = "conv_macs({}, {}, {}, {}, {}, {}, {})".format(*case)
        found = _compare_int(check, what, check.call(what, conv_macs, *case), _macs(*case),
                             {how: _macs(*case, how=how) for how in MAC_HINTS})
        if not check.implemented:
            break
        if found is not None:
            matches.append(found)
    _hint_mistake(check, matches, MAC_HINTS)
    return check.result()


# ---- the parameters of an ImageNet ResNet -------------------------------------------

# (block, layers, num_classes): torchvision's five depths, and two small variants.
PARAM_CASES = (
    ("basic", (2, 2, 2, 2), 1000),         # resnet18: 11,689,512
    ("basic", (3, 4, 6, 3), 1000),         # resnet34: 21,797,672
    ("bottleneck", (3, 4, 6, 3), 1000),    # resnet50: 25,557,032
    ("bottleneck", (3, 4, 23, 3), 1000),   # resnet101: 44,549,160
    ("bottleneck", (3, 8, 36, 3), 1000),   # resnet152: 60,192,808
    ("basic", (1, 1, 1, 1), 10),
    ("bottleneck", (1, 2, 1, 1), 10),
)


def _resnet_params(block: str, layers: Sequence[int], num_classes: int, how: str = "") -> int:
    """Parameters of torchvision's ResNet (``minires.models.resnet18`` ...), or
    of a typical wrong reading of it."""
    expansion = 4 if block == "bottleneck" else 1
    bn = 0 if how == "no_bn" else (4 if how == "bn_buffers" else 2)   # per channel
    bias = 1 if how == "conv_bias" else 0                             # per output channel

    def conv(c_in: int, c_out: int, k: int) -> int:
        return c_in * c_out * k * k + bias * c_out

    stem_k = 3 if how == "stem_3x3" else 7
    total = conv(3, 64, stem_k) + bn * 64
    in_planes = 64
    for stage, (planes, n) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
        out = planes * expansion
        for i in range(n):
            stride = 2 if (stage > 0 and i == 0) else 1
            if block == "bottleneck":
                total += conv(in_planes, planes, 1) + conv(planes, planes, 3) \
                    + conv(planes, out, 1) + bn * (2 * planes + out)
            else:
                total += conv(in_planes, planes, 3) + conv(planes, planes, 3) + bn * 2 * planes
            projection = stride != 1 or in_planes != out
            if how == "projection_only_when_strided":
                projection = stride != 1
            if how == "projection_every_first_block":
                projection = i == 0
            if projection:
                total += conv(in_planes, out, 1) + (0 if how == "projection_no_bn" else bn * out)
            in_planes = out
    features = 512 if how == "fc_no_expansion" else in_planes
    return total + features * num_classes + (0 if how == "no_fc_bias" else num_classes)


PARAM_HINTS = {
    "projection_only_when_strided":
        "a projection is needed wherever the shape changes, channels included: in a bottleneck "
        "network the first block of layer1 maps 64 channels to 256 at stride 1, so it has a "
        "downsample too.",
    "projection_every_first_block":
        "in a basic-block network layer1 keeps 64 channels at stride 1: its first block has "
        "no downsample (the identity fits).",
    "projection_no_bn": "each downsample is a 1x1 conv *and* a BatchNorm2d (2 parameters per "
                        "channel).",
    "no_bn": "batch norm's weight and bias are parameters: 2 per channel of every BatchNorm2d "
             "(one after each conv, the stem's and the projections' included).",
    "bn_buffers": "running mean and running variance are buffers, not parameters: count 2 per "
                  "batch-norm channel, not 4.",
    "conv_bias": "the convolutions have no bias (a batch norm follows each of them).",
    "no_fc_bias": "the fully connected layer has a bias: num_classes of them.",
    "stem_3x3": "the ImageNet stem is one 7x7 conv (3 -> 64 channels, stride 2), then BN.",
    "fc_no_expansion": "after a bottleneck network's layer4 there are 512 * 4 = 2048 channels: "
                       "fc has 2048 * num_classes weights.",
}


def check_resnet_param_count(resnet_param_count: Callable[..., Any]) -> CheckResult:
    """Check ``resnet_param_count(block, layers, num_classes) -> int``: the number of
    learned parameters of torchvision's ImageNet ResNet with ``block``
    ("basic" or "bottleneck") and ``layers`` blocks per stage (e.g.
    ``("bottleneck", (3, 4, 6, 3), 1000)`` is ResNet-50, 25,557,032).

    The network (torchvision's layout, He et al. 2015 Table 1): a 7x7 stride-2 conv
    3 -> 64 and BN; four stages of planes 64, 128, 256, 512, whose blocks
    output ``planes * expansion`` channels (1 for basic, 4 for bottleneck);
    a ``downsample`` (1x1 conv and BN) on a block whose stride or channels
    change; global average pooling; a fully connected layer with bias. No
    conv has a bias; max-pool, ReLU and pooling have no parameters. Tried on
    torchvision's five depths and two small variants.
    """
    check = Check("check_resnet_param_count")
    matches = []
    for block, layers, classes in PARAM_CASES:
        what = f"resnet_param_count({block!r}, {tuple(layers)}, {classes})"
        got = check.call(what, resnet_param_count, block, tuple(layers), classes)
        found = _compare_int(check, what, got, _resnet_params(block, layers, classes),
                             {how: _resnet_params(block, layers, classes, how)
                              for how in PARAM_HINTS})
        if not check.implemented:
            break
        if found is not None:
            matches.append(found)
    _hint_mistake(check, matches, PARAM_HINTS)
    return check.result()


# ---- shared -----------------------------------------------------------------------

def _compare_int(check: Check, what: str, got: Any, expected: int,
                 wrong: dict[str, int]) -> set[str] | None:
    """An exact integer comparison. Returns None when ``got`` is right (or
    not a number), else the typical mistakes whose count equals ``got``."""
    if got is MISSING:
        return None
    try:
        value = int(got)
        exact = value == got
    except (TypeError, ValueError, OverflowError):
        check.fail(f"{what} returned a {type(got).__name__}, expected an int")
        return None
    if exact and value == expected:
        check.note(f"ok      {what} = {value:,}")
        return None
    if not exact:
        check.fail(f"WRONG   {what} = {got!r}; expected the integer {expected:,}")
        return set()
    check.fail(f"WRONG   {what} = {value:,}; expected {expected:,} ({value - expected:+,})")
    return {how for how, count in wrong.items() if count == value and count != expected}


def _hint_mistake(check: Check, matches: list[set[str]], hints: dict[str, str]) -> None:
    """Hint the typical mistake that explains every wrong answer (several can
    explain one case: without padding, "no padding" is no mistake at all)."""
    if not matches:
        return
    common = set.intersection(*matches)
    for how in hints:  # in the order of the hints
        if how in common:
            check.hint(hints[how])
            return
