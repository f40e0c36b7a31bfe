"""Datasets and mini-batches.

- :func:`load_digits`: the UCI 8x8 handwritten digits, bundled (no network).
- :func:`load_cifar10`: CIFAR-10 from the official binary archive, checked.
- :func:`load_image_folder`: ``root/<class>/*.png`` folders (needs Pillow).
- :class:`DataLoader`: seeded, resumable mini-batches on the active backend.
- transforms: :class:`Normalize`, :class:`RandomCrop`,
  :class:`RandomHorizontalFlip`, :class:`Compose`, and :func:`channel_stats`.

Loaders return NumPy arrays on the host: images (N, C, H, W) float32 in
[0, 1] and int64 labels; the :class:`DataLoader` moves each batch to the
active backend.
"""

from .cifar import (
    CIFAR10_CLASSES,
    CIFAR10_MD5,
    CIFAR10_URL,
    CifarError,
    CifarNotFound,
    download_cifar10,
    load_cifar10,
)
from .digits import DIGITS_CLASSES, load_digits
from .folder import load_image_folder
from .loader import DataLoader
from .paths import bundled_file, data_root
from .split import stratified_split
from .transforms import Compose, Normalize, RandomCrop, RandomHorizontalFlip, channel_stats

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_MD5",
    "CIFAR10_URL",
    "DIGITS_CLASSES",
    "CifarError",
    "CifarNotFound",
    "Compose",
    "DataLoader",
    "Normalize",
    "RandomCrop",
    "RandomHorizontalFlip",
    "bundled_file",
    "channel_stats",
    "data_root",
    "download_cifar10",
    "load_cifar10",
    "load_digits",
    "load_image_folder",
    "stratified_split",
]
