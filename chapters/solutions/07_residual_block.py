"""Solutions to chapter 07's exercises: the skip connection as a module, and
the basic residual block with its backward pass written out."""

from __future__ import annotations

from minires import nn
from minires.exercises import CheckResult, check_residual_block, check_residual_wrapper


class Residual(nn.Module):
    """``H(x) = F(x) + x`` around any module ``inner`` (= F) of unchanged shape."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x) + x

    def backward(self, dout):
        # dH/dx = dF/dx + I: F's gradient plus dout itself, as a new array
        # (inner.backward may return dout itself: never add into it in place).
        return self.inner.backward(dout) + dout


class MyBasicBlock(nn.Module):
    """ReLU(F(x) + shortcut(x)), F = BN(conv3x3(ReLU(BN(conv3x3_stride(x))))),
    with shortcut option B: the identity, or a 1x1 projection with BN where
    the shape changes. Child names are torchvision's."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()              # a second ReLU: each keeps its own cache
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes))
        else:
            self.downsample = None

    def forward(self, x):
        f = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu2(f + shortcut)

    def backward(self, dout):
        dsum = self.relu2.backward(dout)          # the ReLU after the sum comes first
        # the sum hands dsum to both branches
        d = self.bn2.backward(dsum)
        d = self.conv2.backward(d)
        d = self.relu1.backward(d)
        d = self.bn1.backward(d)
        dx_residual = self.conv1.backward(d)
        dx_shortcut = dsum if self.downsample is None else self.downsample.backward(dsum)
        return dx_residual + dx_shortcut          # both branches began at x


def checks() -> list[CheckResult]:
    """Every checker of the chapter on the solutions above."""
    return [check_residual_wrapper(Residual), check_residual_block(MyBasicBlock)]
