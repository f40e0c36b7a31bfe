"""Solutions to chapter 09's exercises: a warm-up then cosine schedule in
closed form, and the confusion matrix."""

from __future__ import annotations

import math

import numpy as np

from minires.exercises import CheckResult, check_confusion_matrix, check_warmup_schedule


def warmup_cosine_lr(step: int, base_lr: float, warmup_steps: int, total_steps: int,
                     start_factor: float) -> float:
    """The lr of iteration ``step`` (0-based): a linear rise from
    ``start_factor * base_lr`` that reaches ``base_lr`` at ``warmup_steps``, then a
    half cosine from ``base_lr`` to 0 at ``total_steps``."""
    if step < warmup_steps:
        return base_lr * (start_factor + (1 - start_factor) * step / warmup_steps)
    phase = (step - warmup_steps) / (total_steps - warmup_steps)
    return base_lr * (1 + math.cos(math.pi * phase)) / 2


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """C[i, j] = the number of samples of true class i predicted as j.

    ``np.add.at`` adds once per sample even where (i, j) repeats;
    ``C[y_true, y_pred] += 1`` would add once per distinct pair."""
    c = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(c, (y_true, y_pred), 1)
    return c


def checks() -> list[CheckResult]:
    """Every checker of the chapter on the solutions above."""
    return [check_warmup_schedule(warmup_cosine_lr),
            check_confusion_matrix(confusion_matrix)]
