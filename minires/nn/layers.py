"""The layers: thin wrappers that hold parameters and call ``minires.functional``.

A layer never re-derives math: its ``forward`` checks the input, calls the
op's ``*_forward`` and keeps the cache; its ``backward`` calls ``*_backward``
and adds the parameter gradients into ``Parameter.grad``. To see how a
gradient is computed, open the op's file in ``minires/functional``. The ops
are the public ones (``F.conv2d_forward``, ...), which run the engine
(``minires.fast``) unless ``MINIRES_FAST=0``: see ``minires/functional/__init__.py``.
"""

from __future__ import annotations

import math
from typing import Any

from .. import backend
from .. import functional as F
from ..backend import Array
from . import init
from .module import Module, Parameter

IntPair = int | tuple[int, int]


def _pair(v: IntPair) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def check_input(module: Module, x: Any, expected: str, ndim: int,
                channels: int | None = None) -> None:
    """Raise ``ValueError`` naming ``module`` unless ``x`` is a float array of
    rank ``ndim`` with ``channels`` entries on axis 1.

    ``expected`` is how the message spells the shape, e.g. ``"(N, 3, H, W)"``.
    """
    shape = getattr(x, "shape", None)
    if shape is None:
        raise ValueError(f"{module.describe()}: expected an array of shape {expected}, "
                         f"got {type(x).__name__}")
    shape = tuple(shape)
    if len(shape) != ndim or (channels is not None and shape[1] != channels):
        raise ValueError(f"{module.describe()}: expected input {expected}, got {shape}")
    if shape[0] < 1:
        raise ValueError(f"{module.describe()}: expected a batch of at least 1, got {shape}")
    xp = backend.namespace(x)
    if not xp.isdtype(x.dtype, "real floating"):
        raise ValueError(f"{module.describe()}: expected a floating-point input, "
                         f"got dtype {x.dtype}")


def check_dtype(module: Module, x: Array, param: Parameter) -> None:
    """Input and parameters in the same array library (the same device), and
    no silent mixing of float32 and float64 (PyTorch raises too)."""
    try:
        backend.namespace(x, param.data)
    except TypeError:
        raise ValueError(f"{module.describe()}: input is a {backend.type_name(x)} but the "
                         f"parameters are {backend.type_name(param.data)}; move one to the "
                         "other, e.g. model.to(device=...) or minires.backend.asarray(x)"
                         ) from None
    if x.dtype != param.data.dtype:
        raise ValueError(f"{module.describe()}: input dtype {x.dtype} does not match parameter "
                         f"dtype {param.data.dtype}; convert one, e.g. model.to(dtype='float64')")


def check_window(module: Module, x: Array, kernel: tuple[int, int],
                 padding: tuple[int, int]) -> None:
    """The (padded) image must be at least as large as the kernel."""
    h, w = x.shape[2] + 2 * padding[0], x.shape[3] + 2 * padding[1]
    if h < kernel[0] or w < kernel[1]:
        raise ValueError(f"{module.describe()}: input of spatial size "
                         f"{tuple(x.shape[2:])} with padding {padding} is smaller than the "
                         f"kernel {kernel}")


class Conv2d(Module):
    """2-D convolution (cross-correlation, as in PyTorch) by im2col.

    Input (N, C_in, H, W) -> output (N, C_out, OH, OW) with
    ``OH = (H + 2*padding - KH) // stride + 1``. Weight (C_out, C_in / groups,
    KH, KW), He-normal initialized (fan-in, as in the paper); bias (C_out,) zeros.

    ``groups`` (PyTorch's meaning): the channels split into ``groups`` groups,
    each convolved with its own ``C_out / groups`` filters (ResNeXt's
    cardinality; ``groups = C_in`` is a depthwise convolution). Both channel
    counts must be divisible by it.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntPair,
                 stride: IntPair = 1, padding: IntPair = 0, bias: bool = True,
                 dtype: Any = "float32", groups: int = 1) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = (
            _pair(kernel_size), _pair(stride), _pair(padding))
        self.groups = F.conv.check_groups(groups, in_channels, out_channels,
                                          f"Conv2d({in_channels}->{out_channels})")
        shape = (out_channels, in_channels // self.groups, *self.kernel_size)
        self.weight = Parameter(init.kaiming_normal(shape, "fan_in", dtype))
        self.bias = Parameter(init.constant((out_channels,), 0.0, dtype)) if bias else None

    def extra_repr(self) -> str:
        k = self.kernel_size
        size = f"{k[0]}x{k[1]}"
        s = f"{self.in_channels}->{self.out_channels}, {size}"
        if self.stride != (1, 1):
            s += f", stride={self.stride[0] if self.stride[0] == self.stride[1] else self.stride}"
        if self.padding != (0, 0):
            p = self.padding
            s += f", padding={p[0] if p[0] == p[1] else p}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        return s

    def describe(self) -> str:
        return f"Conv2d({self.in_channels}->{self.out_channels})"

    def forward(self, x: Array) -> Array:
        check_input(self, x, f"(N, {self.in_channels}, H, W)", 4, self.in_channels)
        check_dtype(self, x, self.weight)
        check_window(self, x, self.kernel_size, self.padding)
        b = self.bias.data if self.bias is not None else None
        out, self._cache = F.conv2d_forward(x, self.weight.data, b, self.stride, self.padding,
                                            self.groups)
        return out

    def backward(self, dout: Array, input_grad: bool = True) -> Array | None:
        """dx from dout (N, C_out, OH, OW); the weight (and bias) gradients
        accumulate. ``input_grad=False`` skips dx and returns None: for the
        first layer of a network, whose input is the data."""
        need = self.weight.requires_grad or (self.bias is not None and self.bias.requires_grad)
        dx, dw, db = F.conv2d_backward(dout, self._take_cache(dout), need_param_grads=need,
                                       need_input_grad=input_grad)
        self.weight.accumulate(dw)
        if self.bias is not None:
            self.bias.accumulate(db)
        return dx


class Linear(Module):
    """Fully connected layer: (N, in_features) -> (N, out_features).

    Weight (out_features, in_features), bias (out_features,), both initialized
    as PyTorch does: uniform on ``[-1/sqrt(in_features), 1/sqrt(in_features)]``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 dtype: Any = "float32") -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        bound = 1.0 / math.sqrt(in_features)
        self.weight = Parameter(init.uniform((out_features, in_features), bound, dtype))
        self.bias = Parameter(init.uniform((out_features,), bound, dtype)) if bias else None

    def extra_repr(self) -> str:
        return f"{self.in_features}->{self.out_features}"

    def forward(self, x: Array) -> Array:
        check_input(self, x, f"(N, {self.in_features})", 2, self.in_features)
        check_dtype(self, x, self.weight)
        b = self.bias.data if self.bias is not None else None
        out, self._cache = F.linear_forward(x, self.weight.data, b)
        return out

    def backward(self, dout: Array) -> Array:
        need = self.weight.requires_grad or (self.bias is not None and self.bias.requires_grad)
        dx, dw, db = F.linear_backward(dout, self._take_cache(dout), need_param_grads=need)
        self.weight.accumulate(dw)
        if self.bias is not None:
            self.bias.accumulate(db)
        return dx


class _BatchNorm(Module):
    """Shared by BatchNorm1d and BatchNorm2d; see ``functional/norm.py``.

    Conventions (PyTorch's): statistics per channel; training normalizes with
    the biased batch variance and updates
    ``running = (1 - momentum) * running + momentum * batch`` using the
    *unbiased* batch variance; ``momentum=None`` keeps a cumulative average;
    eval mode uses the running statistics, a fixed affine map.
    """

    _ndim = 4
    _layout = "(N, {C}, H, W)"

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 dtype: Any = "float32") -> None:
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.weight = Parameter(init.constant((num_features,), 1.0, dtype))
        self.bias = Parameter(init.constant((num_features,), 0.0, dtype))
        self.register_buffer("running_mean", init.constant((num_features,), 0.0, dtype))
        self.register_buffer("running_var", init.constant((num_features,), 1.0, dtype))
        self.register_buffer("num_batches_tracked", backend.asarray(0, dtype="int64"))

    def extra_repr(self) -> str:
        return f"{self.num_features}"

    def forward(self, x: Array) -> Array:
        check_input(self, x, self._layout.format(C=self.num_features), self._ndim,
                    self.num_features)
        check_dtype(self, x, self.weight)
        if self.training:
            count = x.shape[0] * (x.shape[2] * x.shape[3] if x.ndim == 4 else 1)
            if count < 2:
                raise ValueError(f"{self.describe()}: expected more than 1 value per channel "
                                 f"when training, got input {tuple(x.shape)}")
        out, cache = F.batchnorm_forward(
            x, self.weight.data, self.bias.data, self.running_mean, self.running_var,
            training=self.training, eps=self.eps)
        if self.training:
            self.num_batches_tracked = self.num_batches_tracked + 1
            m = self.momentum
            if m is None:  # cumulative moving average
                m = 1.0 / float(self.num_batches_tracked)
            self.running_mean, self.running_var = F.batchnorm_running_update(
                self.running_mean, self.running_var, cache, momentum=m)
        self._cache = cache
        return out

    def backward(self, dout: Array) -> Array:
        need = self.weight.requires_grad or self.bias.requires_grad
        grads = F.batchnorm_backward(dout, self._take_cache(dout), need_param_grads=need)
        dx, dgamma, dbeta = grads[:3]
        self.weight.accumulate(dgamma)
        self.bias.accumulate(dbeta)
        return dx


class BatchNorm2d(_BatchNorm):
    """Batch norm over each channel of (N, C, H, W), statistics over (N, H, W)."""


class BatchNorm1d(_BatchNorm):
    """Batch norm over each feature of (N, C), statistics over N."""

    _ndim = 2
    _layout = "(N, {C})"


class ReLU(Module):
    """max(0, x) elementwise; the gradient at exactly 0 is 0 (as in PyTorch)."""

    def forward(self, x: Array) -> Array:
        if getattr(x, "shape", None) is None:
            raise ValueError(f"{self.describe()}: expected an array, got {type(x).__name__}")
        out, self._cache = F.relu_forward(x)
        return out

    def backward(self, dout: Array) -> Array:
        return F.relu_backward(dout, self._take_cache(dout))


class _Pool2d(Module):
    _op = ""

    def __init__(self, kernel_size: IntPair, stride: IntPair | None = None,
                 padding: IntPair = 0) -> None:
        super().__init__()
        self.kernel_size = _pair(kernel_size)
        self.stride = self.kernel_size if stride is None else _pair(stride)
        self.padding = _pair(padding)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"

    def forward(self, x: Array) -> Array:
        check_input(self, x, "(N, C, H, W)", 4)
        check_window(self, x, self.kernel_size, self.padding)
        forward = getattr(F, f"{self._op}_forward")
        out, self._cache = forward(x, self.kernel_size, self.stride, self.padding)
        return out

    def backward(self, dout: Array) -> Array:
        return getattr(F, f"{self._op}_backward")(dout, self._take_cache(dout))


class MaxPool2d(_Pool2d):
    """Max over each window; padding acts as -inf. Ties send the gradient to the
    first maximum in the window."""

    _op = "maxpool2d"


class AvgPool2d(_Pool2d):
    """Mean over each window; zero padding counts in the mean (PyTorch's
    ``count_include_pad=True``)."""

    _op = "avgpool2d"


class GlobalAvgPool2d(Module):
    """(N, C, H, W) -> (N, C): the mean of each feature map (the paper's
    "global average pooling" before the classifier)."""

    def forward(self, x: Array) -> Array:
        check_input(self, x, "(N, C, H, W)", 4)
        if x.shape[2] * x.shape[3] == 0:
            raise ValueError(f"{self.describe()}: expected feature maps of at least 1x1, got "
                             f"input {tuple(x.shape)}")
        out, self._cache = F.global_avgpool2d_forward(x)
        return out

    def backward(self, dout: Array) -> Array:
        return F.global_avgpool2d_backward(dout, self._take_cache(dout))


class Flatten(Module):
    """(N, d1, d2, ...) -> (N, d1*d2*...)."""

    def forward(self, x: Array) -> Array:
        if getattr(x, "ndim", 0) < 1:
            raise ValueError(f"{self.describe()}: expected an array (N, ...), got "
                             f"{getattr(x, 'shape', type(x).__name__)}")
        out, self._cache = F.flatten_forward(x)
        return out

    def backward(self, dout: Array) -> Array:
        return F.flatten_backward(dout, self._take_cache(dout))
