"""The UCI handwritten digits (8x8, 1,797 images), bundled with minires.

Alpaydin and Kaynak (1998), "Optical Recognition of Handwritten Digits", UCI
Machine Learning Repository (CC BY 4.0); the copy scikit-learn ships, which is
the UCI test part. See data/README.md for the source and the conversion.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from .paths import bundled_file
from .split import stratified_split

DIGITS_FILE = "digits.npz"
DIGITS_CLASSES = tuple(str(d) for d in range(10))


def load_digits(
    split: Literal["train", "test", "all"] = "train",
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Load the bundled 8x8 digits, scaled to [0, 1].

    Pixels are counts 0-16 of the 4x4 blocks of a 32x32 bitmap; they are
    divided by 16, so 0.0 is empty and 1.0 is a fully inked block. No network
    and no scikit-learn needed.

    The split is stratified and fixed: with the defaults, 20% of each class
    (rounded to the nearest integer) is the test part, drawn with
    ``numpy.random.default_rng([0, c])`` for class ``c``
    (see :func:`minires.data.split.stratified_split`), giving 1,438 train and
    359 test images on every machine. Images keep the file's order.

    Parameters
    ----------
    split : {"train", "test", "all"}
        Which part to return; "all" is the 1,797 images in file order.
    test_fraction : float
        Share of each class in the test part (default 0.2).
    seed : int
        Seed of the split (default 0, the documented one).

    Returns
    -------
    images : (N, 1, 8, 8) float32 array, values in [0, 1], on the host (NumPy)
    labels : (N,) int64 array, values 0-9
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"load_digits: split must be 'train', 'test' or 'all', got {split!r}")
    with np.load(bundled_file(DIGITS_FILE), allow_pickle=False) as f:
        raw, labels = f["images"], f["labels"].astype(np.int64)
    images = (raw.astype(np.float32) / np.float32(16.0)).reshape(-1, 1, 8, 8)
    if split == "all":
        return images, labels
    train_idx, test_idx = stratified_split(labels, test_fraction=test_fraction, seed=seed)
    idx = train_idx if split == "train" else test_idx
    return images[idx], labels[idx]
