"""A fixed, stratified, seeded train/test split that is the same on every machine."""

from __future__ import annotations

import numpy as np


def stratified_split(
    labels: np.ndarray, test_fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices class by class into a train part and a test part.

    For each class ``c`` (in increasing order) with ``n_c`` examples at
    positions ``idx_c`` (ascending), ``round(test_fraction * n_c)`` of them
    (halves round up) go to the test part: draw ``n_c`` uniform numbers with
    ``numpy.random.default_rng([seed, c]).random(n_c)`` and take the positions
    of the smallest ones (stable argsort). Only the PCG64 bit stream and
    ``Generator.random`` are used, both fixed by NumPy's reproducibility
    policy, so the split is identical on every machine and NumPy version. Each
    class has its own generator, so one class's split does not depend on the
    others.

    Parameters
    ----------
    labels : (N,) integer array
        Class of each example (non-negative).
    test_fraction : float
        Share of each class put in the test part, in [0, 1].
    seed : int
        Seed of the split (0 is the one documented in data/README.md).

    Returns
    -------
    train_idx, test_idx : (N_train,) and (N_test,) int64 arrays
        Disjoint, sorted ascending, together ``arange(N)``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"stratified_split: expected a 1-d integer label array, got shape {labels.shape} "
            f"dtype {labels.dtype}"
        )
    if labels.size and labels.min() < 0:
        raise ValueError("stratified_split: labels must be non-negative")
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"stratified_split: test_fraction must be in [0, 1], got {test_fraction}")
    test_parts = []
    for c in np.unique(labels):
        idx_c = np.flatnonzero(labels == c)
        n_test = int(np.floor(test_fraction * idx_c.size + 0.5))
        keys = np.random.default_rng([int(seed), int(c)]).random(idx_c.size)
        test_parts.append(idx_c[np.argsort(keys, kind="stable")[:n_test]])
    is_test = np.zeros(labels.size, dtype=bool)
    if test_parts:
        is_test[np.concatenate(test_parts)] = True
    return np.flatnonzero(~is_test).astype(np.int64), np.flatnonzero(is_test).astype(np.int64)
