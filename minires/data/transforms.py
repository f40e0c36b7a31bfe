"""Batch transforms: normalization and the augmentation of He et al. (2015).

A transform is called as ``t(x, rng)`` on a whole batch ``x`` of shape
(N, C, H, W) on the active backend and returns a new batch; it never modifies
``x``. Random choices (crop offsets, flips) are drawn on the host from the
NumPy ``Generator`` ``rng`` the caller passes in (the :class:`DataLoader`
derives one per batch from its seed), so a seed fixes the augmentation on any
backend. The array work uses Array API calls through ``namespace(x)``, so it
runs on NumPy, CuPy and array-api-strict alike.

He et al. (2015, section 4.2) train CIFAR-10 with "4 pixels padded on each
side, and a 32x32 crop randomly sampled from the padded image or its
horizontal flip", and subtract the per-pixel mean: ::

    Compose([RandomCrop(32, padding=4), RandomHorizontalFlip(), Normalize(mean, std)])

(crop and flip first, so the padding is black in pixel space, as in
torchvision's recipe; test images get only ``Normalize``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import array_api_compat
import numpy as np

from .. import backend
from ..backend import namespace

Array = Any


def _pair(v: int | Sequence[int], what: str) -> tuple[int, int]:
    if isinstance(v, int):
        return v, v
    v = tuple(int(a) for a in v)
    if len(v) != 2:
        raise ValueError(f"{what}: expected an int or a pair (h, w), got {v!r}")
    return v[0], v[1]


def _check_batch(x: Array, who: str) -> None:
    if len(x.shape) != 4:
        raise ValueError(f"{who}: expected a batch (N, C, H, W), got shape {tuple(x.shape)}")


class Normalize:
    """``(x - mean[c]) / std[c]`` for each channel c.

    Parameters
    ----------
    mean, std : sequences of C floats
        Per-channel statistics, e.g. from :func:`channel_stats`.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean = [float(m) for m in np.ravel(mean)]
        self.std = [float(s) for s in np.ravel(std)]
        if len(self.mean) != len(self.std):
            raise ValueError(f"Normalize: mean has {len(self.mean)} channels, std {len(self.std)}")
        if min(self.std) <= 0:
            raise ValueError(f"Normalize: std must be positive, got {self.std}")

    def __call__(self, x: Array, rng: np.random.Generator | None = None) -> Array:
        """x (N, C, H, W) floating -> (N, C, H, W), same dtype; ``rng`` is unused."""
        _check_batch(x, "Normalize")
        xp = namespace(x)
        c = len(self.mean)
        if x.shape[1] != c:
            raise ValueError(
                f"Normalize({c} channels): expected input (N, {c}, H, W), got {tuple(x.shape)}"
            )
        if not xp.isdtype(x.dtype, "real floating"):
            raise ValueError(f"Normalize: expected floating images, got dtype {x.dtype}")
        device = array_api_compat.device(x)
        mean = xp.reshape(xp.asarray(self.mean, dtype=x.dtype, device=device), (1, c, 1, 1))
        std = xp.reshape(xp.asarray(self.std, dtype=x.dtype, device=device), (1, c, 1, 1))
        out = x - mean  # a new array, so dividing in place leaves x alone
        out /= std
        return out

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean}, std={self.std})"


class RandomCrop:
    """Zero-pad each side by ``padding``, then crop a random ``size`` window per image.

    Parameters
    ----------
    size : int or (h, w)
        Output height and width; at most the padded size.
    padding : int or (ph, pw)
        Zeros added above and below (ph) and left and right (pw); default 4,
        the paper's.
    """

    def __init__(self, size: int | Sequence[int], padding: int | Sequence[int] = 4):
        self.size = _pair(size, "RandomCrop size")
        self.padding = _pair(padding, "RandomCrop padding")
        if min(self.size) < 1 or min(self.padding) < 0:
            raise ValueError(
                f"RandomCrop: size must be positive and padding non-negative, got "
                f"size={self.size}, padding={self.padding}"
            )

    def __call__(self, x: Array, rng: np.random.Generator) -> Array:
        """x (N, C, H, W) -> (N, C, size_h, size_w), same dtype and backend."""
        _check_batch(x, "RandomCrop")
        xp = namespace(x)
        n, c, h, w = x.shape
        (ph, pw), (oh, ow) = self.padding, self.size
        hp, wp = h + 2 * ph, w + 2 * pw
        if oh > hp or ow > wp:
            raise ValueError(
                f"RandomCrop{self.size}: crop larger than the padded input {hp}x{wp} "
                f"(input {tuple(x.shape)}, padding {self.padding})"
            )
        if ph or pw:  # padding: zeros, then the image in the interior
            padded = xp.zeros((n, c, hp, wp), dtype=x.dtype, device=array_api_compat.device(x))
            padded[:, :, ph : ph + h, pw : pw + w] = x
        else:
            padded = x
        top = rng.integers(0, hp - oh + 1, size=n)
        left = rng.integers(0, wp - ow + 1, size=n)
        # One slice per image, then stack: portable (no gather in the standard)
        # and cheap next to a training step (128 slices of 3x32x32).
        crops = [
            padded[k, :, int(top[k]) : int(top[k]) + oh, int(left[k]) : int(left[k]) + ow]
            for k in range(n)
        ]
        if not crops:
            return xp.zeros((0, c, oh, ow), dtype=x.dtype, device=array_api_compat.device(x))
        return xp.stack(crops)

    def __repr__(self) -> str:
        return f"RandomCrop(size={self.size}, padding={self.padding})"


class RandomHorizontalFlip:
    """Mirror each image left-right with probability ``p``: ``x[..., ::-1]``."""

    def __init__(self, p: float = 0.5):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"RandomHorizontalFlip: p must be in [0, 1], got {p}")
        self.p = float(p)

    def __call__(self, x: Array, rng: np.random.Generator) -> Array:
        """x (N, C, H, W) -> (N, C, H, W), the chosen images mirrored."""
        _check_batch(x, "RandomHorizontalFlip")
        xp = namespace(x)
        n = x.shape[0]
        flip = (rng.random(n) < self.p).tolist()
        mask = xp.asarray(flip, dtype=xp.bool, device=array_api_compat.device(x))
        return xp.where(xp.reshape(mask, (n, 1, 1, 1)), xp.flip(x, axis=-1), x)

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class Compose:
    """Apply transforms in order, all drawing from the same ``rng``."""

    def __init__(self, transforms: Sequence[Any]):
        self.transforms = list(transforms)

    def __call__(self, x: Array, rng: np.random.Generator) -> Array:
        """x (N, C, H, W) -> the output of the last transform."""
        for t in self.transforms:
            x = t(x, rng)
        return x

    def __repr__(self) -> str:
        inner = ", ".join(repr(t) for t in self.transforms)
        return f"Compose([{inner}])"


def channel_stats(images: Array, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of a dataset, for :class:`Normalize`.

    Computed on the host in float64, ``chunk`` images at a time, in two passes
    (mean, then mean squared deviation), so it is exact to float64 rounding
    and needs little extra memory. The standard deviation is the population
    one (divide by the count), as torchvision's recipes use.

    Parameters
    ----------
    images : (N, C, H, W) array of any backend

    Returns
    -------
    mean, std : (C,) float64 NumPy arrays
    """
    x = backend.to_numpy(images)
    if x.ndim != 4 or x.shape[0] == 0:
        raise ValueError(f"channel_stats: expected a non-empty (N, C, H, W) array, got {x.shape}")
    n, c, h, w = x.shape
    count = n * h * w
    total = np.zeros(c)
    for s in range(0, n, chunk):
        total += x[s : s + chunk].sum(axis=(0, 2, 3), dtype=np.float64)
    mean = total / count
    sq = np.zeros(c)
    for s in range(0, n, chunk):
        d = x[s : s + chunk].astype(np.float64) - mean[None, :, None, None]
        sq += (d * d).sum(axis=(0, 2, 3))
    return mean, np.sqrt(sq / count)
