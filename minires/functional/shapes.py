"""Argument checks, output sizes, padding and the activations' memory layout,
shared by ``conv.py`` and ``pool.py`` (and by the engine, ``minires.fast``).

Every check raises ``ValueError`` naming the op, what it expected and what it
got. No fast function stands in for anything here: the engine imports these
helpers as they are.
"""

from __future__ import annotations

import operator
from typing import Any

from .. import backend
from ..backend import Array

IntPair = int | tuple[int, int]


def as_pair(value: Any, name: str, op: str, minimum: int) -> tuple[int, int]:
    """``3 -> (3, 3)``, ``(2, 1) -> (2, 1)``; ValueError unless both are ints >= minimum."""
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    try:
        if len(pair) != 2 or any(isinstance(v, bool) for v in pair):
            raise TypeError
        pair = (operator.index(pair[0]), operator.index(pair[1]))
    except TypeError:
        raise ValueError(f"{op}: expected {name} to be an int or a pair of ints, "
                         f"got {value!r}") from None
    if min(pair) < minimum:
        raise ValueError(f"{op}: expected {name} >= {minimum}, got {value!r}")
    return pair


def check_groups(groups: Any, c_in: int, c_out: int, op: str) -> int:
    """``groups`` as an int, or ValueError unless it is >= 1 and divides both
    ``c_in`` and ``c_out``."""
    try:
        if isinstance(groups, bool):
            raise TypeError
        g = operator.index(groups)
    except TypeError:
        raise ValueError(f"{op}: expected groups to be an int, got {groups!r}") from None
    if g < 1:
        raise ValueError(f"{op}: expected groups >= 1, got {g}")
    if c_in % g or c_out % g:
        raise ValueError(f"{op}: expected C_in = {c_in} and C_out = {c_out} both divisible "
                         f"by groups = {g}")
    return g


def conv2d_output_size(size: tuple[int, int], kernel_size: tuple[int, int],
                       stride: tuple[int, int], padding: tuple[int, int]) -> tuple[int, int]:
    """(OH, OW) for an input of spatial ``size`` (H, W): per axis
    ``(H + 2 * padding - KH) // stride + 1``; each entry may be < 1 when the
    padded input is smaller than the kernel."""
    return tuple((n + 2 * p - k) // s + 1
                 for n, k, s, p in zip(size, kernel_size, stride, padding, strict=True))


def check_image(x: Any, op: str, layout: str = "(N, C, H, W)") -> None:
    """ValueError naming ``op`` unless ``x`` is a floating-point array of rank 4."""
    shape = getattr(x, "shape", None)
    if shape is None or len(shape) != 4:
        got = tuple(shape) if shape is not None else type(x).__name__
        raise ValueError(f"{op}: expected x of rank 4 {layout}, got {got}")
    if not backend.namespace(x).isdtype(x.dtype, "real floating"):
        raise ValueError(f"{op}: expected a floating-point x, got dtype {x.dtype}")


def check_window(x_shape: tuple[int, ...], kernel_size: tuple[int, int],
                 stride: tuple[int, int], padding: tuple[int, int], op: str) -> tuple[int, int]:
    """(OH, OW), or ValueError if the padded input is smaller than the kernel."""
    oh, ow = conv2d_output_size(tuple(x_shape[2:]), kernel_size, stride, padding)
    if oh < 1 or ow < 1:
        raise ValueError(f"{op}: expected an input of at least the kernel size {kernel_size} "
                         f"after padding {padding}, got spatial size {tuple(x_shape[2:])}")
    return oh, ow


def check_dout(dout: Any, expected: tuple[int, ...], op: str) -> None:
    """ValueError naming ``op`` unless ``dout`` has the shape of the forward's output."""
    got = tuple(getattr(dout, "shape", ()))
    if got != tuple(expected):
        raise ValueError(f"{op}: expected dout of the output's shape {tuple(expected)}, got {got}")


def pad2d(x: Array, padding: tuple[int, int], value: float = 0.0) -> Array:
    """(N, C, H, W) -> (N, C, H + 2*ph, W + 2*pw): a new array filled with
    ``value`` whose interior is ``x``. Returns ``x`` itself when padding is 0."""
    ph, pw = padding
    if ph == 0 and pw == 0:
        return x
    xp = backend.namespace(x)
    n, c, h, w = x.shape
    out = xp.full((n, c, h + 2 * ph, w + 2 * pw), value, dtype=x.dtype)
    out[:, :, ph:ph + h, pw:pw + w] = x
    return out


def unpad2d(x: Array, padding: tuple[int, int]) -> Array:
    """The interior of a padded (N, C, H + 2*ph, W + 2*pw) array, as a new array."""
    ph, pw = padding
    if ph == 0 and pw == 0:
        return x
    xp = backend.namespace(x)
    return xp.asarray(x[:, :, ph:x.shape[2] - ph, pw:x.shape[3] - pw], copy=True)


def channel_major_zeros(xp: Any, shape: tuple[int, int, int, int], dtype: Any) -> Array:
    """Zeros of shape (N, C, H, W) stored (C, N, H, W), the layout of the conv
    outputs (see ``conv.py``). Layers that build an activation or a gradient
    from scratch use it, so the next im2col and BatchNorm's per-channel sums
    find the layout they read without a copy."""
    n, c, h, w = shape
    return xp.permute_dims(xp.zeros((c, n, h, w), dtype=dtype), (1, 0, 2, 3))
