"""The networks of the papers, assembled from the blocks in ``minires.nn.blocks``.

- ``resnet_cifar(depth)``: the CIFAR-10 ResNets of He et al. (2015), section
  4.2: depth ``6n + 2``, a 3x3 stem with 16 filters, three stages of ``n``
  basic blocks on 16, 32 and 64 channels (maps of 32, 16, 8 pixels at a 32x32
  input), global average pooling and a fully connected layer. Shortcut option
  A by default, as in the paper.
- ``plain_cifar(depth)``: the same layers without shortcuts (the "plain"
  networks of Fig. 6).
- ``preact_resnet_cifar(depth)``: pre-activation ResNets (He et al. 2016),
  basic blocks (depth ``6n + 2``) or bottlenecks (depth ``9n + 2``, e.g. 164),
  with a final BN and ReLU before the pooling.
- ``wide_resnet_cifar(depth, widen_factor)``: wide ResNets (Zagoruyko and
  Komodakis 2016), pre-activation, depth ``6n + 4``.
- ``resnext_cifar(depth, cardinality, base_width)``: ResNeXt-29 for CIFAR
  (Xie et al. 2017, section 5), e.g. 8x64d and 16x64d.
- ``resnet18`` ... ``resnet152``, ``resnext50_32x4d``, ``resnext101_32x8d``,
  ``resnext101_64x4d``, ``wide_resnet50_2``, ``wide_resnet101_2``:
  torchvision's ImageNet layout; the same parameter names and order, so a
  torchvision state dict loads unchanged (``minires.interop``).
- ``get_model(name)``: the factories by name ("resnet20", "plain56",
  "preact_resnet164", "wrn16_4", "resnet50", "resnext29_8x64d",
  "resnext50_32x4d", "wide_resnet50_2").

Every model is a ``ResNet`` module whose children run in order: ``forward``
applies them one after another, ``backward(dout) -> dx`` runs them in
reverse, each block splitting the gradient over its two branches.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from .backend import Array
from .nn import init
from .nn.blocks import BasicBlock, Bottleneck, PlainBlock, PreActBlock, PreActBottleneck
from .nn.layers import (
    BatchNorm2d,
    Conv2d,
    GlobalAvgPool2d,
    Linear,
    MaxPool2d,
    ReLU,
    check_input,
)
from .nn.module import Identity, Module, Sequential

__all__ = [
    "ResNet", "available_models", "get_model", "plain_cifar", "preact_resnet_cifar",
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnet_cifar",
    "resnext101_32x8d", "resnext101_64x4d", "resnext50_32x4d", "resnext_cifar",
    "wide_resnet101_2", "wide_resnet50_2", "wide_resnet_cifar",
]


class ResNet(Module):
    """A network whose children run one after another.

    The factories below register the children in order (``conv1``, ``bn1``,
    ``relu``, [``maxpool``], ``layer1`` ... , ``avgpool``, ``fc``), which is
    also torchvision's order, so ``state_dict()`` keys come out identical.

    Input (N, in_channels, H, W) -> logits (N, num_classes).
    """

    def __init__(self, arch: str, in_channels: int) -> None:
        super().__init__()
        self.arch, self.in_channels = arch, in_channels

    def extra_repr(self) -> str:
        return self.arch

    def forward(self, x: Array) -> Array:
        check_input(self, x, f"(N, {self.in_channels}, H, W)", 4, self.in_channels)
        for layer in self.children():
            x = layer(x)
        return x

    def backward(self, dout: Array, input_grad: bool = True) -> Array | None:
        """Gradient of the loss with respect to the input, given ``dout`` =
        dL/dlogits (N, num_classes); parameter gradients accumulate on the way.

        ``input_grad=False`` returns None instead: a training step needs the
        parameters' gradients only, and the first convolution then skips its
        input gradient (as PyTorch does for an input that does not require
        a gradient); the parameters' gradients are the same."""
        first, *rest = list(self.children())
        for layer in reversed(rest):
            dout = layer.backward(dout)
        if isinstance(first, Conv2d):
            return first.backward(dout, input_grad=input_grad)
        dx = first.backward(dout)
        return dx if input_grad else None

    def blocks(self) -> list[tuple[str, Module]]:
        """The residual (or plain) blocks with their dotted names, input to output."""
        return [(f"{name}.{i}", block) for name, stage in self.named_children()
                if name.startswith("layer") for i, block in enumerate(stage)]


# ---- helpers ---------------------------------------------------------------

def _blocks_per_stage(depth: int, per_block: int, extra: int, what: str) -> int:
    """``n`` for a depth of the form ``per_block * n + extra``, n >= 1."""
    if not isinstance(depth, int) or depth < per_block + extra or (depth - extra) % per_block:
        examples = ", ".join(str(per_block * n + extra) for n in (1, 2, 3, 5, 9, 18))
        raise ValueError(
            f"{what}: depth must have the form {per_block}n+{extra} with n >= 1 blocks per "
            f"stage ({examples}, ...), got {depth!r}")
    return (depth - extra) // per_block


def _stage(make_block: Callable[..., Module], expansion: int, in_planes: int, planes: int,
           num_blocks: int, stride: int) -> tuple[Sequential, int]:
    """``num_blocks`` blocks; the first one has the stride (and changes shape)."""
    blocks = []
    for i in range(num_blocks):
        blocks.append(make_block(in_planes, planes, stride if i == 0 else 1))
        in_planes = planes * expansion
    return Sequential(*blocks), in_planes


def _cifar(arch: str, make_block: Callable[..., Module], expansion: int, n: int,
           widths: Sequence[int], stem_width: int, num_classes: int, in_channels: int,
           preact: bool, dtype: Any) -> ResNet:
    """The CIFAR layout: 3x3 stem, three stages (strides 1, 2, 2), GAP, fc.

    Post-activation nets have ``conv1, bn1, relu`` as stem; pre-activation
    nets start with the bare ``conv1`` (the first block normalizes) and end
    with ``final_bn, final_relu`` before the pooling (He et al. 2016).
    """
    if len(widths) != 3:
        raise ValueError(f"{arch}: expected 3 stage widths, got {tuple(widths)}")
    model = ResNet(arch, in_channels)
    model.conv1 = Conv2d(in_channels, stem_width, 3, padding=1, bias=False, dtype=dtype)
    if not preact:
        model.bn1 = BatchNorm2d(stem_width, dtype=dtype)
        model.relu = ReLU()
    planes_in = stem_width
    for i, (planes, stride) in enumerate(zip(widths, (1, 2, 2), strict=True)):
        stage, planes_in = _stage(make_block, expansion, planes_in, planes, n, stride)
        setattr(model, f"layer{i + 1}", stage)
    if preact:
        model.final_bn = BatchNorm2d(planes_in, dtype=dtype)
        model.final_relu = ReLU()
    model.avgpool = GlobalAvgPool2d()
    model.fc = Linear(planes_in, num_classes, dtype=dtype)
    return model


# ---- CIFAR networks (He et al. 2015, 2016; Zagoruyko and Komodakis 2016) ---

def resnet_cifar(depth: int, num_classes: int = 10, shortcut: str = "A",
                 in_channels: int = 3, widths: Sequence[int] = (16, 32, 64),
                 dtype: Any = "float32") -> ResNet:
    """The CIFAR-10 ResNet of He et al. (2015), section 4.2.

    Parameters
    ----------
    depth : 6n + 2 weighted layers (20, 32, 44, 56, 110, 1202).
    num_classes : outputs of the final fully connected layer.
    shortcut : "A" (the paper's CIFAR choice: parameter-free), "B" or "C".
    in_channels : channels of the input images (3 for CIFAR, 1 for digits).
    widths : filters of the three stages; the paper's (16, 32, 64) by default,
        smaller for quick experiments. The stem has ``widths[0]`` filters.
    dtype : dtype of the parameters.

    Returns
    -------
    ResNet mapping (N, in_channels, H, W) to logits (N, num_classes). Any
    H, W >= 1 works (the stages halve them twice; 8x8 digits give 2x2 maps).

    Parameter counts with option A, 10 classes (Table 6): ResNet-20 269,722;
    32 464,154; 44 658,586; 56 853,018; 110 1,727,962; 1202 19,421,274.
    Convolutions get He initialization (normal, std sqrt(2 / fan_in)).
    """
    n = _blocks_per_stage(depth, 6, 2, "resnet_cifar")
    make = lambda i, p, s: BasicBlock(i, p, s, shortcut=shortcut, dtype=dtype)
    return _cifar(f"resnet{depth}", make, 1, n, widths, widths[0], num_classes, in_channels,
                  preact=False, dtype=dtype)


def plain_cifar(depth: int, num_classes: int = 10, in_channels: int = 3,
                widths: Sequence[int] = (16, 32, 64), dtype: Any = "float32") -> ResNet:
    """The "plain" twin of ``resnet_cifar`` (He et al. 2015, Fig. 6): the same
    layers and parameters (for option A), no shortcuts. Depth 6n + 2.

    Returns a ResNet module (N, in_channels, H, W) -> (N, num_classes).
    """
    n = _blocks_per_stage(depth, 6, 2, "plain_cifar")
    make = lambda i, p, s: PlainBlock(i, p, s, dtype=dtype)
    return _cifar(f"plain{depth}", make, 1, n, widths, widths[0], num_classes, in_channels,
                  preact=False, dtype=dtype)


def preact_resnet_cifar(depth: int, num_classes: int = 10, bottleneck: bool | None = None,
                        shortcut: str = "B", in_channels: int = 3,
                        widths: Sequence[int] = (16, 32, 64),
                        dtype: Any = "float32") -> ResNet:
    """Pre-activation ResNet for CIFAR (He et al. 2016, "Identity Mappings").

    Parameters
    ----------
    depth : 6n + 2 with basic blocks (20 ... 110), 9n + 2 with bottlenecks
        (164, 1001).
    bottleneck : None picks as the paper does: bottlenecks for depths of the
        form 9n + 2 from 164 up (and for 9n + 2 depths that are not 6n + 2),
        basic blocks otherwise.
    shortcut : "B" (projection where the shape changes, as in the paper's
        code), "A" or "C". A non-identity shortcut reads the pre-activated
        input (see ``PreActBlock``).
    num_classes, in_channels, widths, dtype : as for ``resnet_cifar``.
        Bottleneck stages output ``4 * widths[i]`` channels.

    Returns
    -------
    ResNet: ``conv1`` (3x3, widths[0] filters), ``layer1..3``, ``final_bn``,
    ``final_relu``, ``avgpool``, ``fc``; (N, in_channels, H, W) -> (N, num_classes).
    """
    if bottleneck is None:
        fits_basic = depth >= 8 and (depth - 2) % 6 == 0
        fits_bottleneck = depth >= 11 and (depth - 2) % 9 == 0
        bottleneck = fits_bottleneck and (depth >= 164 or not fits_basic)
    if bottleneck:
        n = _blocks_per_stage(depth, 9, 2, "preact_resnet_cifar (bottleneck)")
        make = lambda i, p, s: PreActBottleneck(i, p, s, shortcut=shortcut, dtype=dtype)
        expansion = 4
    else:
        n = _blocks_per_stage(depth, 6, 2, "preact_resnet_cifar")
        make = lambda i, p, s: PreActBlock(i, p, s, shortcut=shortcut, dtype=dtype)
        expansion = 1
    return _cifar(f"preact_resnet{depth}", make, expansion, n, widths, widths[0], num_classes,
                  in_channels, preact=True, dtype=dtype)


def wide_resnet_cifar(depth: int, widen_factor: int, num_classes: int = 10,
                      in_channels: int = 3, dtype: Any = "float32") -> ResNet:
    """Wide ResNet WRN-depth-k (Zagoruyko and Komodakis 2016), without dropout.

    Pre-activation basic blocks; a 3x3 stem with 16 filters, then three stages
    of ``n = (depth - 4) / 6`` blocks with 16k, 32k and 64k filters (the 4
    counts the stem, the fc and the projections); a 1x1 projection where the
    shape changes, on the pre-activated input as in the authors' code.
    WRN-28-10 has about 36.5M parameters, WRN-16-8 11.0M, WRN-40-4 8.9M
    (their Table 1 / Table 4).

    Returns a ResNet module (N, in_channels, H, W) -> (N, num_classes).
    """
    n = _blocks_per_stage(depth, 6, 4, "wide_resnet_cifar")
    if not isinstance(widen_factor, int) or widen_factor < 1:
        raise ValueError(f"wide_resnet_cifar: widen_factor must be a positive integer, "
                         f"got {widen_factor!r}")
    k = widen_factor
    make = lambda i, p, s: PreActBlock(i, p, s, shortcut="B", dtype=dtype)
    return _cifar(f"wrn{depth}_{k}", make, 1, n, (16 * k, 32 * k, 64 * k), 16, num_classes,
                  in_channels, preact=True, dtype=dtype)


def resnext_cifar(depth: int = 29, cardinality: int = 8, base_width: int = 64,
                  num_classes: int = 10, in_channels: int = 3,
                  widths: Sequence[int] = (64, 128, 256), zero_init_residual: bool = False,
                  dtype: Any = "float32") -> ResNet:
    """ResNeXt for CIFAR (Xie et al. 2017, section 5): ResNeXt-29 "C x d".

    A 3x3 stem with 64 filters (``widths[0]``), three stages of
    ``n = (depth - 2) / 9`` ResNeXt bottlenecks (``Bottleneck`` with
    ``groups=cardinality``), stride 2 at stages 2 and 3 (on the grouped 3x3
    conv), global average pooling and fc. With the paper's ``widths`` the
    stages output 256, 512 and 1024 channels, and the bottleneck is
    ``cardinality * base_width`` wide at stage 1 (8 x 64 = 512 for 8x64d),
    doubling per stage (torchvision's width rule, ``Bottleneck``).
    Projection shortcuts (1x1 conv and BN) where the shape changes, identity
    elsewhere. 29 = 9 blocks x 3 layers + stem + fc.

    Parameter counts (10 classes): 8x64d 34,426,698 and 16x64d 68,155,210,
    the paper's 34.4M and 68.1M (Table 7).

    Parameters
    ----------
    depth : 9n + 2 (29 in the paper).
    cardinality : groups of each 3x3 conv (C).
    base_width : channels per group at stage 1 when ``widths[0] = 64`` (d).
    num_classes, in_channels, dtype : as for ``resnet_cifar``.
    widths : the stages' ``planes``: they output ``4 * widths[i]`` channels,
        and the bottleneck is ``int(widths[i] * base_width / 64) * cardinality``
        wide. Smaller for quick experiments (``resnext29_digits``).
    zero_init_residual : start the last BN of each residual branch at zero
        (torchvision's option of the same name).

    Returns a ResNet module (N, in_channels, H, W) -> (N, num_classes), with
    the children ``conv1, bn1, relu, layer1..3, avgpool, fc``.
    """
    n = _blocks_per_stage(depth, 9, 2, "resnext_cifar")
    for name, value in (("cardinality", cardinality), ("base_width", base_width)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"resnext_cifar: {name} must be a positive integer, got {value!r}")
    make = lambda i, p, s: Bottleneck(i, p, s, shortcut="B", dtype=dtype, groups=cardinality,
                                      base_width=base_width)
    model = _cifar(f"resnext{depth}_{cardinality}x{base_width}d", make, Bottleneck.expansion,
                   n, widths, widths[0], num_classes, in_channels, preact=False, dtype=dtype)
    if zero_init_residual:
        _zero_init_residual(model, dtype)
    return model


def resnext29_digits(num_classes: int = 10, in_channels: int = 3,
                     dtype: Any = "float32") -> ResNet:
    """A small ResNeXt-29 that trains on the bundled 8x8 digits in well
    under a minute on two CPU cores (``minires train --model resnext29_digits``).

    ``resnext_cifar(29, cardinality=4, base_width=16, widths=(16, 32, 64),
    zero_init_residual=True)``: the paper's layout at a quarter of its
    widths: stages output 64, 128 and 256 channels through bottlenecks 16,
    32 and 64 wide, in 4 groups of 4, 8 and 16 channels (204k parameters).

    Each residual branch starts at zero: with the default init, nine
    post-activation bottlenecks start with a training loss of 6 (ln 10 =
    2.3), a test loss in the thousands after the first epoch, and reached
    63% in 12 epochs; with it, 97-99% (``minires train`` defaults, seeds 0-3).
    """
    model = resnext_cifar(29, 4, 16, num_classes, in_channels, (16, 32, 64),
                          zero_init_residual=True, dtype=dtype)
    model.arch = "resnext29_digits"
    return model


# ---- ImageNet networks, torchvision's layout --------------------------------

def _imagenet(arch: str, block: type, layers: Sequence[int], num_classes: int,
              in_channels: int, stem: str, zero_init_residual: bool, shortcut: str,
              dtype: Any, **block_kwargs: Any) -> ResNet:
    """torchvision's ``ResNet``: conv1 7x7/2, bn1, relu, maxpool 3x3/2, layer1-4
    (planes 64, 128, 256, 512; stride 2 from layer2 on), avgpool, fc.
    ``block_kwargs`` go to every block (``groups``, ``base_width`` for
    ResNeXt and the wide ResNets: torchvision's ``groups``, ``width_per_group``).

    ``stem="cifar"`` replaces the stem by a 3x3/1 conv and no max-pool
    (``maxpool`` is an ``Identity``) for small images; the state-dict keys stay
    the same, only ``conv1.weight`` is 3x3.
    """
    if stem not in ("imagenet", "cifar"):
        raise ValueError(f"{arch}: stem must be 'imagenet' or 'cifar', got {stem!r}")
    model = ResNet(arch, in_channels)
    if stem == "imagenet":
        model.conv1 = Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False, dtype=dtype)
    else:
        model.conv1 = Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False, dtype=dtype)
    model.bn1 = BatchNorm2d(64, dtype=dtype)
    model.relu = ReLU()
    model.maxpool = MaxPool2d(3, stride=2, padding=1) if stem == "imagenet" else Identity()
    make = lambda i, p, s: block(i, p, s, shortcut=shortcut, dtype=dtype, **block_kwargs)
    planes_in = 64
    for i, (planes, num_blocks) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
        stage, planes_in = _stage(make, block.expansion, planes_in, planes, num_blocks,
                                  1 if i == 0 else 2)
        setattr(model, f"layer{i + 1}", stage)
    model.avgpool = GlobalAvgPool2d()
    model.fc = Linear(planes_in, num_classes, dtype=dtype)
    # torchvision's initialization: He normal with fan_out for every conv,
    # BN weight 1 and bias 0 (BatchNorm2d's defaults), PyTorch's default for fc.
    for m in model.modules():
        if isinstance(m, Conv2d):
            m.weight.data = init.kaiming_normal(m.weight.shape, "fan_out", dtype)
    if zero_init_residual:
        _zero_init_residual(model, dtype)
    return model


def _zero_init_residual(model: ResNet, dtype: Any) -> None:
    """Start the last BN of each residual branch at zero: each block then
    starts as ReLU(x) (torchvision's ``zero_init_residual``)."""
    for _, b in model.blocks():
        last_bn = b.bn3 if isinstance(b, Bottleneck) else b.bn2
        last_bn.weight.data = init.constant(last_bn.weight.shape, 0.0, dtype)


def _imagenet_doc(depth: int, block: str, layers: str, count: str,
                  title: str | None = None) -> str:
    title = title or f"ResNet-{depth} in torchvision's layout ({block} blocks, {layers} per stage)."
    return f"""{title}

    Parameters
    ----------
    num_classes : outputs of ``fc`` (1000 for ImageNet).
    in_channels : channels of the input images.
    stem : "imagenet" (7x7/2 conv and 3x3/2 max-pool) or "cifar" (3x3/1 conv,
        no max-pool) for small images.
    zero_init_residual : start the last BN of each residual branch at zero
        (torchvision's option of the same name).
    shortcut : "B" (torchvision: projection where the shape changes), "A" or "C".
    dtype : dtype of the parameters.

    Returns
    -------
    ResNet (N, in_channels, H, W) -> (N, num_classes); {count} parameters with
    1000 classes, state-dict keys identical to torchvision's, in order.
    """


def resnet18(num_classes: int = 1000, in_channels: int = 3, stem: str = "imagenet",
             zero_init_residual: bool = False, shortcut: str = "B",
             dtype: Any = "float32") -> ResNet:
    return _imagenet("resnet18", BasicBlock, (2, 2, 2, 2), num_classes, in_channels, stem,
                     zero_init_residual, shortcut, dtype)


def resnet34(num_classes: int = 1000, in_channels: int = 3, stem: str = "imagenet",
             zero_init_residual: bool = False, shortcut: str = "B",
             dtype: Any = "float32") -> ResNet:
    return _imagenet("resnet34", BasicBlock, (3, 4, 6, 3), num_classes, in_channels, stem,
                     zero_init_residual, shortcut, dtype)


def resnet50(num_classes: int = 1000, in_channels: int = 3, stem: str = "imagenet",
             zero_init_residual: bool = False, shortcut: str = "B",
             dtype: Any = "float32") -> ResNet:
    return _imagenet("resnet50", Bottleneck, (3, 4, 6, 3), num_classes, in_channels, stem,
                     zero_init_residual, shortcut, dtype)


def resnet101(num_classes: int = 1000, in_channels: int = 3, stem: str = "imagenet",
              zero_init_residual: bool = False, shortcut: str = "B",
              dtype: Any = "float32") -> ResNet:
    return _imagenet("resnet101", Bottleneck, (3, 4, 23, 3), num_classes, in_channels, stem,
                     zero_init_residual, shortcut, dtype)


def resnet152(num_classes: int = 1000, in_channels: int = 3, stem: str = "imagenet",
              zero_init_residual: bool = False, shortcut: str = "B",
              dtype: Any = "float32") -> ResNet:
    return _imagenet("resnet152", Bottleneck, (3, 8, 36, 3), num_classes, in_channels, stem,
                     zero_init_residual, shortcut, dtype)


resnet18.__doc__ = _imagenet_doc(18, "basic", "[2, 2, 2, 2]", "11,689,512")
resnet34.__doc__ = _imagenet_doc(34, "basic", "[3, 4, 6, 3]", "21,797,672")
resnet50.__doc__ = _imagenet_doc(50, "bottleneck", "[3, 4, 6, 3]", "25,557,032")
resnet101.__doc__ = _imagenet_doc(101, "bottleneck", "[3, 4, 23, 3]", "44,549,160")
resnet152.__doc__ = _imagenet_doc(152, "bottleneck", "[3, 8, 36, 3]", "60,192,808")

_IMAGENET = {18: resnet18, 34: resnet34, 50: resnet50, 101: resnet101, 152: resnet152}
_IMAGENET_LAYERS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
_IMAGENET_DEFAULTS: dict[str, Any] = {
    "num_classes": 1000, "in_channels": 3, "stem": "imagenet", "zero_init_residual": False,
    "shortcut": "B", "dtype": "float32"}


def _resnext_imagenet(depth: int, cardinality: int, base_width: int, arch: str | None = None,
                      **kwargs: Any) -> ResNet:
    """torchvision's ResNeXt-{depth} {cardinality}x{base_width}d, or (with
    cardinality 1) its wide ResNet of bottleneck ``base_width / 64`` times
    as wide; ``kwargs`` as for ``resnet50``."""
    if depth not in _IMAGENET_LAYERS:
        raise ValueError(f"resnext: ImageNet depths are {tuple(_IMAGENET_LAYERS)}, got {depth}")
    arch = arch or f"resnext{depth}_{cardinality}x{base_width}d"
    return _imagenet(arch, Bottleneck, _IMAGENET_LAYERS[depth], groups=cardinality,
                     base_width=base_width, **{**_IMAGENET_DEFAULTS, **kwargs})


def resnext50_32x4d(num_classes: int = 1000, in_channels: int = 3, stem: str = "imagenet",
                    zero_init_residual: bool = False, shortcut: str = "B",
                    dtype: Any = "float32") -> ResNet:
    return _resnext_imagenet(50, 32, 4, num_classes=num_classes, in_channels=in_channels,
                             stem=stem, zero_init_residual=zero_init_residual,
                             shortcut=shortcut, dtype=dtype)


def resnext101_32x8d(num_classes: int = 1000, in_channels: int = 3, stem: str = "imagenet",
                     zero_init_residual: bool = False, shortcut: str = "B",
                     dtype: Any = "float32") -> ResNet:
    return _resnext_imagenet(101, 32, 8, num_classes=num_classes, in_channels=in_channels,
                             stem=stem, zero_init_residual=zero_init_residual,
                             shortcut=shortcut, dtype=dtype)


def resnext101_64x4d(num_classes: int = 1000, in_channels: int = 3, stem: str = "imagenet",
                     zero_init_residual: bool = False, shortcut: str = "B",
                     dtype: Any = "float32") -> ResNet:
    return _resnext_imagenet(101, 64, 4, num_classes=num_classes, in_channels=in_channels,
                             stem=stem, zero_init_residual=zero_init_residual,
                             shortcut=shortcut, dtype=dtype)


def wide_resnet50_2(num_classes: int = 1000, in_channels: int = 3, stem: str = "imagenet",
                    zero_init_residual: bool = False, shortcut: str = "B",
                    dtype: Any = "float32") -> ResNet:
    return _resnext_imagenet(50, 1, 128, "wide_resnet50_2", num_classes=num_classes,
                             in_channels=in_channels, stem=stem,
                             zero_init_residual=zero_init_residual, shortcut=shortcut,
                             dtype=dtype)


def wide_resnet101_2(num_classes: int = 1000, in_channels: int = 3, stem: str = "imagenet",
                     zero_init_residual: bool = False, shortcut: str = "B",
                     dtype: Any = "float32") -> ResNet:
    return _resnext_imagenet(101, 1, 128, "wide_resnet101_2", num_classes=num_classes,
                             in_channels=in_channels, stem=stem,
                             zero_init_residual=zero_init_residual, shortcut=shortcut,
                             dtype=dtype)


_GROUPED = ("ResNeXt-{} {} (Xie et al. 2017) in torchvision's layout: bottlenecks\n"
            "    {} per stage, the 3x3 conv in {} groups of {} channels in layer1,\n"
            "    twice as many channels per group in each next stage.")
_WIDE = ("Wide ResNet-{}-2 (Zagoruyko and Komodakis 2016) in torchvision's layout:\n"
         "    ResNet-{}'s bottlenecks, {} per stage, twice as wide inside\n"
         "    (``base_width=128``); the blocks' outputs keep ResNet-{}'s widths.")
resnext50_32x4d.__doc__ = _imagenet_doc(
    50, "", "", "25,028,904", _GROUPED.format(50, "32x4d", "[3, 4, 6, 3]", 32, 4))
resnext101_32x8d.__doc__ = _imagenet_doc(
    101, "", "", "88,791,336", _GROUPED.format(101, "32x8d", "[3, 4, 23, 3]", 32, 8))
resnext101_64x4d.__doc__ = _imagenet_doc(
    101, "", "", "83,455,272", _GROUPED.format(101, "64x4d", "[3, 4, 23, 3]", 64, 4))
wide_resnet50_2.__doc__ = _imagenet_doc(
    50, "", "", "68,883,240", _WIDE.format(50, 50, "[3, 4, 6, 3]", 50))
wide_resnet101_2.__doc__ = _imagenet_doc(
    101, "", "", "126,886,696", _WIDE.format(101, 101, "[3, 4, 23, 3]", 101))


# ---- registry ----------------------------------------------------------------

def _resnet_by_depth(depth: int, **kwargs: Any) -> ResNet:
    if depth in _IMAGENET:
        return _IMAGENET[depth](**kwargs)
    return resnet_cifar(depth, **kwargs)


# (pattern of the lower-cased name, builder, description), tried in order.
_REGISTRY: list[tuple[str, Callable[..., ResNet], str]] = [
    (r"resnet(\d+)_cifar", lambda m, **kw: resnet_cifar(int(m[1]), **kw),
     "resnet{6n+2}_cifar: resnet_cifar"),
    (r"resnet(\d+)", lambda m, **kw: _resnet_by_depth(int(m[1]), **kw),
     "resnet{18,34,50,101,152}: torchvision's ImageNet layout, other resnet{6n+2}: "
     "resnet_cifar"),
    (r"plain(\d+)", lambda m, **kw: plain_cifar(int(m[1]), **kw), "plain{6n+2}: plain_cifar"),
    (r"preact_?resnet(\d+)", lambda m, **kw: preact_resnet_cifar(int(m[1]), **kw),
     "preact_resnet{6n+2 or 9n+2}: preact_resnet_cifar"),
    (r"wide_resnet(50|101|152)_(\d+)",
     lambda m, **kw: _resnext_imagenet(int(m[1]), 1, 64 * int(m[2]), m[0], **kw),
     "wide_resnet{50,101}_2: torchvision's wide ImageNet ResNets"),
    (r"(?:wrn|wide_resnet)(\d+)_(\d+)",
     lambda m, **kw: wide_resnet_cifar(int(m[1]), int(m[2]), **kw),
     "wrn{6n+4}_{k}: wide_resnet_cifar"),
    (r"resnext29_digits", lambda m, **kw: resnext29_digits(**kw),
     "resnext29_digits: a small ResNeXt-29 for the digits"),
    (r"resnext(\d+)_(\d+)x(\d+)d_cifar",
     lambda m, **kw: resnext_cifar(int(m[1]), int(m[2]), int(m[3]), **kw),
     "resnext{9n+2}_{C}x{d}d_cifar: resnext_cifar"),
    (r"resnext(\d+)_(\d+)x(\d+)d",
     lambda m, **kw: (_resnext_imagenet if int(m[1]) in _IMAGENET_LAYERS else resnext_cifar)(
         int(m[1]), int(m[2]), int(m[3]), **kw),
     "resnext{50,101}_{C}x{d}d: torchvision's ImageNet layout, other resnext{9n+2}_{C}x{d}d "
     "(29): resnext_cifar"),
]


def available_models() -> list[str]:
    """Names ``get_model`` understands, with the depths of the papers."""
    names = [f"resnet{d}" for d in (20, 32, 44, 56, 110, 1202)]
    names += [f"plain{d}" for d in (20, 32, 44, 56, 110)]
    names += [f"preact_resnet{d}" for d in (20, 56, 110, 164, 1001)]
    names += ["wrn16_4", "wrn16_8", "wrn28_10", "wrn40_4"]
    names += ["resnext29_8x64d", "resnext29_16x64d", "resnext29_digits"]
    names += [f"resnet{d}" for d in _IMAGENET]
    names += ["resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2",
              "wide_resnet101_2"]
    return names


def get_model(name: str, **kwargs: Any) -> ResNet:
    """Build a model by name; ``kwargs`` go to its factory.

    ``"resnet20"`` -> ``resnet_cifar(20)``, ``"plain56"`` -> ``plain_cifar(56)``,
    ``"preact_resnet164"`` -> ``preact_resnet_cifar(164)``, ``"wrn28_10"`` ->
    ``wide_resnet_cifar(28, 10)``, ``"resnet50"`` -> torchvision's ``resnet50()``
    (the ImageNet depths 18, 34, 50, 101, 152 win; ``"resnet50_cifar"`` gives
    ``resnet_cifar(50)``), ``"resnext29_8x64d"`` -> ``resnext_cifar(29, 8, 64)``,
    ``"resnext50_32x4d"``, ``"wide_resnet50_2"`` -> torchvision's (for ResNeXt
    the depths 50, 101 and 152 win; ``"resnext101_8x64d_cifar"`` gives
    ``resnext_cifar(101, 8, 64)``). Case, "-" and "_" between name and depth
    are ignored ("ResNet-20").

    Example: ``get_model("resnet20", in_channels=1, num_classes=10)``.
    """
    key = re.sub(r"(resnet|resnext|plain)_(\d)", r"\1\2", str(name).lower().replace("-", ""))
    for pattern, build, _ in _REGISTRY:
        m = re.fullmatch(pattern, key)
        if m:
            return build(m, **kwargs)
    forms = "; ".join(doc for _, _, doc in _REGISTRY)
    raise ValueError(f"get_model: unknown model {name!r}; expected one of the forms: {forms} "
                     f"(e.g. {', '.join(available_models()[:4])}, resnet18)")
