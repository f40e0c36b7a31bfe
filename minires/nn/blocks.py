"""Residual blocks: the unit ``H(x) = F(x) + shortcut(x)`` and its backward pass.

He et al. (2015) let a few stacked layers learn a *residual* ``F(x)`` and add
the block's input back: ``H(x) = F(x) + x``. The backward pass is where this
pays. By the chain rule through the sum,

    dL/dx = dL/dH · dF/dx  +  dL/dH · I,

so whatever the residual branch does to the gradient, the shortcut hands
``dL/dH`` to the block's input unchanged. Each ``backward`` below is written
so this can be read off: the gradient enters the sum, fans out to the
residual branch and to the shortcut (``add_backward``), runs back through
each branch, and the two results are added at the block's input.

Blocks (submodule names follow torchvision, so its state dicts load as they are):

- ``BasicBlock``: conv3x3(stride) BN ReLU conv3x3 BN, + shortcut, ReLU
  (He et al. 2015, the CIFAR and ResNet-18/34 block).
- ``Bottleneck``: conv1x1 BN ReLU conv3x3(stride) BN ReLU conv1x1(4x) BN,
  + shortcut, ReLU (ResNet-50/101/152; the stride sits on the 3x3 conv as in
  torchvision's "v1.5"). With ``groups`` and ``base_width`` it is also the
  ResNeXt block (Xie et al. 2017, Fig. 3c: the 3x3 conv grouped into
  ``groups`` paths) and the wide ImageNet ResNets' block, as in torchvision.
- ``PlainBlock``: ``BasicBlock`` without the shortcut (the paper's plain nets).
- ``PreActBlock``, ``PreActBottleneck``: BN ReLU before each conv and nothing
  after the sum, so the identity path is clean (He et al. 2016).

Shortcut options (He et al. 2015, section 4.1, Table 3):

- ``"A"``: identity; where the shape changes, the parameter-free
  ``ShortcutA`` (subsample by the stride, zero-pad the new channels);
- ``"B"``: identity; where the shape changes, a projection
  ``downsample = Sequential(Conv2d 1x1 stride s, no bias; BatchNorm2d)``;
- ``"C"``: a projection on every block;
- ``None``: no shortcut at all (plain networks).

One difference from torchvision: torchvision reuses a single ``relu`` module
at every ReLU of a block, which autograd allows. Our modules keep the cache
of their last forward for their backward, so each ReLU of a block is its own
module (``relu1``, ``relu2``, ``relu3``). ReLUs hold no state, so the state
dict keys are unaffected.
"""

from __future__ import annotations

from typing import Any

from .. import backend
from ..backend import Array
from ..functional import add, add_backward, add_forward
from ..functional.shapes import channel_major_zeros
from .layers import BatchNorm2d, Conv2d, IntPair, ReLU, _pair, check_input
from .module import Module, Sequential

SHORTCUT_OPTIONS = ("A", "B", "C", None)


def conv3x3(in_planes: int, out_planes: int, stride: int = 1,
            dtype: Any = "float32", groups: int = 1) -> Conv2d:
    """3x3 convolution with padding 1 and no bias (a BN follows it);
    ``groups`` splits it into that many grouped convolutions (ResNeXt)."""
    return Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False, dtype=dtype,
                  groups=groups)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1,
            dtype: Any = "float32") -> Conv2d:
    """1x1 convolution without bias."""
    return Conv2d(in_planes, out_planes, 1, stride=stride, bias=False, dtype=dtype)


class ShortcutA(Module):
    """Option A shortcut: parameter-free, for blocks that change the shape.

    Keeps every ``stride``-th pixel (``x[:, :, ::s, ::s]``, the identity on a
    coarser grid) and appends ``out_planes - in_planes`` channels of zeros, as
    fb.resnet.torch's ``shortcutType 'A'`` does (new channels at the end).

    Input (N, in_planes, H, W) -> output (N, out_planes, ceil(H/s), ceil(W/s)),
    the same size as a 3x3 convolution with padding 1 and stride s gives.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: IntPair = 1) -> None:
        super().__init__()
        if out_planes < in_planes:
            raise ValueError(f"ShortcutA: zero-padding cannot reduce channels, got "
                             f"{in_planes} -> {out_planes}; use a projection (option B)")
        self.in_planes, self.out_planes, self.stride = in_planes, out_planes, _pair(stride)

    def extra_repr(self) -> str:
        return f"{self.in_planes}->{self.out_planes}, stride={self.stride[0]}"

    def forward(self, x: Array) -> Array:
        check_input(self, x, f"(N, {self.in_planes}, H, W)", 4, self.in_planes)
        sh, sw = self.stride
        xp = backend.namespace(x)
        kept = x[:, :, ::sh, ::sw]                      # subsample: the identity, strided
        n, c, oh, ow = kept.shape
        out = channel_major_zeros(xp, (n, self.out_planes, oh, ow), x.dtype)
        out[:, :c, :, :] = kept                         # new channels stay zero
        self._cache = (tuple(x.shape),)
        return out

    def backward(self, dout: Array) -> Array:
        """The zero channels received no input, so their gradient is dropped;
        the kept channels' gradient goes back to the pixels they were sampled
        from (a scatter into a zero image by strided-slice assignment); the
        skipped pixels did not reach the output and get zero."""
        (x_shape,) = self._take_cache(dout)   # checks dout's shape when called as a module
        sh, sw = self.stride
        n, _, h, w = x_shape
        expected = (n, self.out_planes, -(-h // sh), -(-w // sw))
        if tuple(getattr(dout, "shape", ())) != expected:
            raise ValueError(f"{self.describe()}: expected dout of the output's shape "
                             f"{expected}, got {tuple(getattr(dout, 'shape', ()))}")
        xp = backend.namespace(dout)
        dx = channel_major_zeros(xp, x_shape, dout.dtype)
        dx[:, :, ::sh, ::sw] = dout[:, :self.in_planes, :, :]
        return dx


def _make_shortcut(option: str | None, in_planes: int, out_planes: int, stride: int,
                   dtype: Any, with_bn: bool = True) -> tuple[str | None, Module | None]:
    """Return (option, downsample) for a block; ``downsample`` is None for the
    identity, ``ShortcutA`` or ``Sequential(conv1x1[, bn])`` otherwise."""
    if isinstance(option, str):
        option = option.upper()
    if option not in SHORTCUT_OPTIONS:
        raise ValueError(f"shortcut must be one of 'A', 'B', 'C' or None, got {option!r}")
    same_shape = stride == 1 and in_planes == out_planes
    if option is None or (option in ("A", "B") and same_shape):
        return option, None
    if option == "A":
        return option, ShortcutA(in_planes, out_planes, stride)
    layers: list[Module] = [conv1x1(in_planes, out_planes, stride, dtype)]
    if with_bn:
        layers.append(BatchNorm2d(out_planes, dtype=dtype))
    return option, Sequential(*layers)


class _Block(Module):
    """What every block shares: the input check, the repr, the shortcut."""

    expansion = 1

    def _setup(self, in_planes: int, planes: int, stride: int) -> None:
        self.in_planes, self.planes, self.stride = in_planes, planes, stride
        self.out_planes = planes * self.expansion

    def extra_repr(self) -> str:
        s = f"{self.in_planes}->{self.out_planes}"
        if self.stride != 1:
            s += f", stride={self.stride}"
        return s + f", shortcut={self.shortcut}"

    def _check(self, x: Array) -> None:
        check_input(self, x, f"(N, {self.in_planes}, H, W)", 4, self.in_planes)


class BasicBlock(_Block):
    """Two 3x3 convolutions with a shortcut (He et al. 2015, Fig. 2).

    ``out = ReLU(F(x) + shortcut(x))`` with
    ``F(x) = BN(conv3x3(ReLU(BN(conv3x3_stride(x)))))``.

    Parameters
    ----------
    in_planes : channels of the input.
    planes : channels of both convolutions and of the output (expansion 1).
    stride : stride of the first convolution (and of the shortcut).
    shortcut : "A", "B", "C" or None (no shortcut: a plain block).
    dtype : dtype of the parameters.

    Shapes: input (N, in_planes, H, W) -> output (N, planes, OH, OW),
    ``OH = (H - 1) // stride + 1``.
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1,
                 shortcut: str | None = "B", dtype: Any = "float32") -> None:
        super().__init__()
        self._setup(in_planes, planes, stride)
        self.conv1 = conv3x3(in_planes, planes, stride, dtype)
        self.bn1 = BatchNorm2d(planes, dtype=dtype)
        self.relu1 = ReLU()
        self.conv2 = conv3x3(planes, planes, 1, dtype)
        self.bn2 = BatchNorm2d(planes, dtype=dtype)
        self.relu2 = ReLU()
        self.shortcut, self.downsample = _make_shortcut(shortcut, in_planes, planes, stride,
                                                        dtype)

    def forward(self, x: Array) -> Array:
        self._check(x)
        residual = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))   # F(x)
        if self.shortcut is None:  # plain block: nothing to add
            self._cache = (None,)
            return self.relu2(residual)
        shortcut = x if self.downsample is None else self.downsample(x)
        out, add_cache = add_forward(residual, shortcut)                       # F(x) + x
        self._cache = (add_cache,)
        return self.relu2(out)

    def backward(self, dout: Array) -> Array:
        (add_cache,) = self._take_cache(dout)
        dsum = self.relu2.backward(dout)            # through the ReLU after the sum
        if self.shortcut is None:
            dresidual = dsum
        else:
            # The sum hands the same gradient to both of its inputs.
            dresidual, dshortcut = add_backward(dsum, add_cache)
        # Residual branch F, layer by layer in reverse: dL/dH · dF/dx.
        d = self.bn2.backward(dresidual)
        d = self.conv2.backward(d)
        d = self.relu1.backward(d)
        d = self.bn1.backward(d)
        dx_residual = self.conv1.backward(d)
        if self.shortcut is None:
            return dx_residual
        # Shortcut branch: the identity passes dshortcut through untouched, the
        # "+ I" of dH/dx = dF/dx + I; ShortcutA or a projection transforms it.
        if self.downsample is None:
            dx_shortcut = dshortcut
        else:
            dx_shortcut = self.downsample.backward(dshortcut)
        # Both branches started at x, so their gradients add up there.
        return add(dx_residual, dx_shortcut)


class PlainBlock(BasicBlock):
    """``BasicBlock`` without a shortcut: the building block of the paper's
    "plain" networks (same layers, same parameters, no ``+ x``)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1,
                 dtype: Any = "float32") -> None:
        super().__init__(in_planes, planes, stride, shortcut=None, dtype=dtype)


class Bottleneck(_Block):
    """1x1 (reduce), 3x3 (stride), 1x1 (expand to 4 x planes), each followed by
    BN, with a shortcut and a ReLU after the sum (He et al. 2015, Fig. 5;
    the stride on the 3x3 conv as in torchvision's ResNet v1.5).

    ResNeXt (Xie et al. 2017) splits the 3x3 conv into ``groups`` parallel
    paths ("cardinality", their Fig. 3c: a grouped convolution) of
    ``base_width * planes / 64`` channels each; the wide ResNets widen it
    (``base_width = 128`` doubles it). The bottleneck's width is
    torchvision's ``int(planes * base_width / 64) * groups``: ``planes`` for
    ResNet, 4 x 32 = 128 in the first stage of ResNeXt-50 32x4d.

    Parameters
    ----------
    in_planes : channels of the input.
    planes : sets the output, ``4 * planes`` channels, and the width above.
    stride : stride of the 3x3 convolution (and of the shortcut).
    shortcut : "A", "B", "C" or None.
    dtype : dtype of the parameters.
    groups : groups of the 3x3 convolution (ResNeXt's cardinality C).
    base_width : channels per group at ``planes = 64`` (ResNeXt's d in "C x d").

    Shapes: input (N, in_planes, H, W) -> output (N, 4 * planes, OH, OW),
    ``OH = (H - 1) // stride + 1``; inside, (N, width, ...).
    """

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1,
                 shortcut: str | None = "B", dtype: Any = "float32", groups: int = 1,
                 base_width: int = 64) -> None:
        super().__init__()
        self._setup(in_planes, planes, stride)
        self.groups, self.base_width = groups, base_width
        # torchvision: int(planes * (base_width / 64.)) * groups
        self.width = width = planes * base_width // 64 * groups
        if width < 1:
            raise ValueError(f"Bottleneck: planes * base_width / 64 = {planes} * {base_width} "
                             "/ 64 gives no channel per group; expected at least 1")
        self.conv1 = conv1x1(in_planes, width, 1, dtype)
        self.bn1 = BatchNorm2d(width, dtype=dtype)
        self.relu1 = ReLU()
        self.conv2 = conv3x3(width, width, stride, dtype, groups=groups)
        self.bn2 = BatchNorm2d(width, dtype=dtype)
        self.relu2 = ReLU()
        self.conv3 = conv1x1(width, self.out_planes, 1, dtype)
        self.bn3 = BatchNorm2d(self.out_planes, dtype=dtype)
        self.relu3 = ReLU()
        self.shortcut, self.downsample = _make_shortcut(shortcut, in_planes, self.out_planes,
                                                        stride, dtype)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if self.groups != 1 or self.base_width != 64:
            s += f", width={self.width}, groups={self.groups}"
        return s

    def forward(self, x: Array) -> Array:
        self._check(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        residual = self.bn3(self.conv3(out))                                   # F(x)
        if self.shortcut is None:
            self._cache = (None,)
            return self.relu3(residual)
        shortcut = x if self.downsample is None else self.downsample(x)
        out, add_cache = add_forward(residual, shortcut)                       # F(x) + x
        self._cache = (add_cache,)
        return self.relu3(out)

    def backward(self, dout: Array) -> Array:
        (add_cache,) = self._take_cache(dout)
        dsum = self.relu3.backward(dout)            # through the ReLU after the sum
        if self.shortcut is None:
            dresidual = dsum
        else:
            # The sum hands the same gradient to both of its inputs.
            dresidual, dshortcut = add_backward(dsum, add_cache)
        # Residual branch F in reverse: dL/dH · dF/dx.
        d = self.bn3.backward(dresidual)
        d = self.conv3.backward(d)
        d = self.relu2.backward(d)
        d = self.bn2.backward(d)
        d = self.conv2.backward(d)
        d = self.relu1.backward(d)
        d = self.bn1.backward(d)
        dx_residual = self.conv1.backward(d)
        if self.shortcut is None:
            return dx_residual
        # Shortcut branch: "+ I" for the identity, else back through
        # ShortcutA or the projection.
        if self.downsample is None:
            dx_shortcut = dshortcut
        else:
            dx_shortcut = self.downsample.backward(dshortcut)
        # Both branches started at x: their gradients add up there.
        return add(dx_residual, dx_shortcut)




class PreActBlock(_Block):
    """Pre-activation basic block (He et al. 2016, Fig. 1b):
    ``out = conv3x3(ReLU(BN(conv3x3_stride(ReLU(BN(x)))))) + shortcut``.

    Parameters
    ----------
    in_planes, planes, stride, dtype : as for ``BasicBlock``.
    shortcut : "A", "B" or "C".

    Shapes: (N, in_planes, H, W) -> (N, planes, (H - 1) // stride + 1, ...).

    Which input the shortcut reads: where it is not the identity (a
    projection, or option A's subsample-and-pad), it reads the
    *pre-activated* input ``ReLU(BN1(x))`` rather than ``x``, as the authors'
    code (fb.resnet.torch preresnet.lua, "both_preact") and common
    implementations do; the projection is then a 1x1 conv without BN
    (``downsample = Sequential(conv1x1)``) because the next block normalizes.
    Identity shortcuts take ``x`` itself: a clean path with no BN and no ReLU
    on it, and no ReLU after the sum.
    """
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1,
                 shortcut: str = "B", dtype: Any = "float32") -> None:
        super().__init__()
        if shortcut is None:
            raise ValueError("PreActBlock: a pre-activation block needs a shortcut "
                             "('A', 'B' or 'C'), got None")
        self._setup(in_planes, planes, stride)
        self.bn1 = BatchNorm2d(in_planes, dtype=dtype)
        self.relu1 = ReLU()
        self.conv1 = conv3x3(in_planes, planes, stride, dtype)
        self.bn2 = BatchNorm2d(planes, dtype=dtype)
        self.relu2 = ReLU()
        self.conv2 = conv3x3(planes, planes, 1, dtype)
        self.shortcut, self.downsample = _make_shortcut(shortcut, in_planes, planes, stride,
                                                        dtype, with_bn=False)

    def forward(self, x: Array) -> Array:
        self._check(x)
        preact = self.relu1(self.bn1(x))                          # BN, ReLU first
        residual = self.conv2(self.relu2(self.bn2(self.conv1(preact))))   # F(x)
        shortcut = x if self.downsample is None else self.downsample(preact)
        out, add_cache = add_forward(residual, shortcut)          # F(x) + x, nothing after
        self._cache = (add_cache,)
        return out

    def backward(self, dout: Array) -> Array:
        (add_cache,) = self._take_cache(dout)
        # The sum hands dout unchanged to the residual branch and the shortcut.
        dresidual, dshortcut = add_backward(dout, add_cache)
        # Residual branch F in reverse, down to the pre-activated input.
        d = self.conv2.backward(dresidual)
        d = self.relu2.backward(d)
        d = self.bn2.backward(d)
        dpreact = self.conv1.backward(d)
        if self.downsample is None:
            # Clean identity path: dL/dx = dL/dH · dF/dx + dL/dH · I.
            dx_residual = self.bn1.backward(self.relu1.backward(dpreact))
            return add(dx_residual, dshortcut)
        # The projection (or option A) read the pre-activated input, so its
        # gradient joins the residual branch's there, before ReLU1 and BN1.
        dpreact = add(dpreact, self.downsample.backward(dshortcut))
        return self.bn1.backward(self.relu1.backward(dpreact))


class PreActBottleneck(_Block):
    """Pre-activation bottleneck (He et al. 2016; the ResNet-164/1001 unit):
    BN ReLU conv1x1, BN ReLU conv3x3(stride), BN ReLU conv1x1(4 x planes),
    + shortcut.

    Parameters
    ----------
    in_planes, planes, stride, dtype : as for ``Bottleneck``.
    shortcut : "A", "B" or "C".

    Shapes: (N, in_planes, H, W) -> (N, 4 * planes, (H - 1) // stride + 1, ...).
    The shortcut reads the pre-activated input where it is not the identity,
    as in ``PreActBlock``.
    """
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1,
                 shortcut: str = "B", dtype: Any = "float32") -> None:
        super().__init__()
        if shortcut is None:
            raise ValueError("PreActBottleneck: a pre-activation block needs a shortcut "
                             "('A', 'B' or 'C'), got None")
        self._setup(in_planes, planes, stride)
        self.bn1 = BatchNorm2d(in_planes, dtype=dtype)
        self.relu1 = ReLU()
        self.conv1 = conv1x1(in_planes, planes, 1, dtype)
        self.bn2 = BatchNorm2d(planes, dtype=dtype)
        self.relu2 = ReLU()
        self.conv2 = conv3x3(planes, planes, stride, dtype)
        self.bn3 = BatchNorm2d(planes, dtype=dtype)
        self.relu3 = ReLU()
        self.conv3 = conv1x1(planes, self.out_planes, 1, dtype)
        self.shortcut, self.downsample = _make_shortcut(shortcut, in_planes, self.out_planes,
                                                        stride, dtype, with_bn=False)

    def forward(self, x: Array) -> Array:
        self._check(x)
        preact = self.relu1(self.bn1(x))
        out = self.conv1(preact)
        out = self.conv2(self.relu2(self.bn2(out)))
        residual = self.conv3(self.relu3(self.bn3(out)))          # F(x)
        shortcut = x if self.downsample is None else self.downsample(preact)
        out, add_cache = add_forward(residual, shortcut)          # F(x) + x
        self._cache = (add_cache,)
        return out

    def backward(self, dout: Array) -> Array:
        (add_cache,) = self._take_cache(dout)
        # The sum hands dout unchanged to the residual branch and the shortcut.
        dresidual, dshortcut = add_backward(dout, add_cache)
        d = self.conv3.backward(dresidual)
        d = self.bn3.backward(self.relu3.backward(d))
        d = self.conv2.backward(d)
        d = self.bn2.backward(self.relu2.backward(d))
        dpreact = self.conv1.backward(d)
        if self.downsample is None:
            # Clean identity path: dL/dx = dL/dH · dF/dx + dL/dH · I.
            dx_residual = self.bn1.backward(self.relu1.backward(dpreact))
            return add(dx_residual, dshortcut)
        # Projection (or option A) gradient joins at the pre-activated input.
        dpreact = add(dpreact, self.downsample.backward(dshortcut))
        return self.bn1.backward(self.relu1.backward(dpreact))
