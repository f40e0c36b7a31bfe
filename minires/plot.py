"""Learning curves as PNG files (matplotlib's Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)


def plot_history(history: Sequence[Mapping[str, float]], path: str | Path,
                 title: str = "") -> Path:
    """Plot loss and error per epoch, train against test, and save as PNG.

    ``history`` is the trainer's list of per-epoch records with keys
    ``epoch``, ``train_loss``, ``train_acc`` and, when evaluated,
    ``test_loss`` and ``test_acc``. Error is ``100 * (1 - accuracy)``, the
    quantity the paper's figures show.
    """
    path = Path(path)
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_err) = plt.subplots(1, 2, figsize=(10, 4))
    for split, style in (("train", "--"), ("test", "-")):
        if history and f"{split}_loss" in history[0]:
            ax_loss.plot(epochs, [h[f"{split}_loss"] for h in history], style, label=split)
            ax_err.plot(epochs, [100 * (1 - h[f"{split}_acc"]) for h in history], style,
                        label=split)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="cross-entropy loss")
    ax_err.set(xlabel="epoch", ylabel="error (%)", title="classification error")
    for ax in (ax_loss, ax_err):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
