"""Mini-batches for training: seeded shuffling, augmentation, exact resume."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from .. import backend

Array = Any


class DataLoader:
    """Iterate over ``(x, y)`` mini-batches of a dataset held in memory.

    Each ``for`` loop over the loader is one epoch. With ``shuffle=True`` the
    order of epoch ``e`` is a permutation drawn from
    ``numpy.random.default_rng([seed, e])``, so epochs differ from each other
    but the sequence is the same on every run. A transform for batch ``b`` of
    epoch ``e`` draws its random numbers from
    ``numpy.random.default_rng([seed, e, b])``. Everything random therefore
    follows from ``(seed, epoch, batch)``, which :meth:`state_dict` records:
    loading it into a fresh loader resumes exactly, even in the middle of an
    epoch.

    Parameters
    ----------
    images : (N, C, H, W) array
        NumPy (batches are copied to the active backend as they are made) or
        already on the active backend (batches are gathered there).
    labels : (N,) integer array
    batch_size : int
        Images per batch (a positive integer). An epoch must have at least one
        batch: an empty dataset, or ``drop_last`` with a batch larger than the
        dataset, is refused.
    shuffle : bool
        Reshuffle every epoch (training); False keeps the data's order.
    drop_last : bool
        Drop the last batch when it is smaller than ``batch_size``.
    seed : int
        Seed of the shuffling and of the transforms' random numbers.
    transform : callable or None
        ``transform(x, rng) -> x`` applied to every image batch, for example
        ``Compose([RandomCrop(32, 4), RandomHorizontalFlip(), Normalize(m, s)])``.

    Yields
    ------
    x : (B, C, H, W) array on the active backend (``minires.backend``)
    y : (B,) int64 array on the active backend
    """

    def __init__(
        self,
        images: Array,
        labels: Array,
        batch_size: int,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        transform: Callable[[Array, np.random.Generator], Array] | None = None,
    ):
        for what, value in (("images", images), ("labels", labels)):
            if not (hasattr(value, "shape") and hasattr(value, "dtype")):
                raise TypeError(
                    f"DataLoader: {what} must be an array (NumPy, or the active backend's), "
                    f"got a {type(value).__name__}; convert it first, e.g. np.asarray({what})"
                )
        n = images.shape[0]
        if tuple(labels.shape) != (n,):
            raise ValueError(
                f"DataLoader: expected labels of shape ({n},) for {n} images, "
                f"got {tuple(labels.shape)}"
            )
        if not isinstance(batch_size, numbers.Integral) or isinstance(batch_size, bool):
            raise TypeError(
                f"DataLoader: batch_size must be an integer, got {batch_size!r} "
                f"({type(batch_size).__name__})"
            )
        if batch_size < 1:
            raise ValueError(f"DataLoader: batch_size must be positive, got {batch_size}")
        if n == 0:
            raise ValueError("DataLoader: the dataset is empty (0 images); no batches to make")
        if drop_last and batch_size > n:
            raise ValueError(
                f"DataLoader: drop_last=True with batch_size {batch_size} > {n} images drops "
                "every image, so an epoch would have no batches; use a smaller batch_size "
                "or drop_last=False"
            )
        self.images = images
        self.labels = labels
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.seed = int(seed)
        self.transform = transform
        self._on_host = isinstance(images, np.ndarray)
        self._labels_host = np.asarray(backend.to_numpy(labels))
        if not np.issubdtype(self._labels_host.dtype, np.integer):
            raise ValueError(f"DataLoader: labels must be integers, got {self._labels_host.dtype}")
        self._epoch = 0  # the epoch the next loop runs
        self._start = 0  # first batch of that loop (nonzero only after load_state_dict)
        self._position = (0, 0)  # (epoch, batches of it handed out)

    @property
    def num_examples(self) -> int:
        """Number of images in the dataset."""
        return int(self.images.shape[0])

    def __len__(self) -> int:
        """Number of batches per epoch."""
        n, b = self.num_examples, self.batch_size
        return n // b if self.drop_last else math.ceil(n / b)

    @property
    def epoch(self) -> int:
        """The epoch the next ``for`` loop will run (0 before the first)."""
        return self._epoch

    def order(self, epoch: int) -> np.ndarray:
        """The example order of ``epoch``: a seeded permutation, or ``arange(N)``."""
        if not self.shuffle:
            return np.arange(self.num_examples)
        return np.random.default_rng([self.seed, int(epoch)]).permutation(self.num_examples)

    def __iter__(self) -> Iterator[tuple[Array, Array]]:
        epoch, start = self._epoch, self._start
        self._epoch, self._start = epoch + 1, 0
        self._position = (epoch, start)
        return self._batches(epoch, start)

    def _batches(self, epoch: int, start: int) -> Iterator[tuple[Array, Array]]:
        order = self.order(epoch)
        for b in range(start, len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            x, y = self._gather(idx)
            if self.transform is not None:
                x = self.transform(x, np.random.default_rng([self.seed, epoch, b]))
            self._position = (epoch, b + 1)
            yield x, y

    def _gather(self, idx: np.ndarray) -> tuple[Array, Array]:
        y = backend.asarray(self._labels_host[idx], dtype="int64")
        if self._on_host:  # the fancy index already copied: hand it over without a 2nd copy
            return backend.xp().asarray(self.images[idx]), y
        # images already on the backend: gather there (Array API take)
        xp = backend.namespace(self.images)
        return xp.take(self.images, xp.asarray(idx.tolist(), dtype=xp.int64), axis=0), y

    def state_dict(self) -> dict[str, int]:
        """Where the loader stands: ``{"seed", "epoch", "batch"}``.

        ``epoch`` and ``batch`` name the next batch to hand out: after a whole
        epoch ``e``, ``(e + 1, 0)``; after ``k`` batches of it, ``(e, k)``.
        The position is that of the latest loop (a ``for`` over the loader
        or a live iterator): a loop left with ``break`` resumes where it
        stopped, while a new ``for`` on the same loader starts the next epoch,
        like PyTorch. Plain ints, so the dict can go into a checkpoint as is.
        """
        epoch, done = self._position
        if done >= len(self):  # that loop is over: the next one starts a new epoch
            epoch, done = epoch + 1, 0
        return {"seed": self.seed, "epoch": int(epoch), "batch": int(done)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a :meth:`state_dict`: the next loop starts at its batch."""
        epoch, batch = int(state["epoch"]), int(state["batch"])
        if epoch < 0 or not 0 <= batch <= len(self):
            raise ValueError(
                f"DataLoader.load_state_dict: epoch {epoch}, batch {batch} out of range "
                f"(epochs >= 0, batches 0..{len(self)})"
            )
        if batch == len(self):
            epoch, batch = epoch + 1, 0
        self.seed = int(state.get("seed", self.seed))
        self._epoch, self._start = epoch, batch
        self._position = (epoch, batch)

    def __repr__(self) -> str:
        return (
            f"DataLoader({self.num_examples} examples, batch_size={self.batch_size}, "
            f"shuffle={self.shuffle}, drop_last={self.drop_last}, seed={self.seed}, "
            f"batches={len(self)})"
        )
