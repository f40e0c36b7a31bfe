"""Learning curves as PNG files.

The figures are built with ``matplotlib.figure.Figure`` and its Agg canvas
directly, not through ``pyplot``: no display is needed, nothing global changes
(a notebook keeps its own backend), and no figure stays registered in memory.
matplotlib is imported on first use, so ``import minires`` stays quick.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .atomic import atomic_write


def learning_curves(history: Sequence[Mapping[str, float]], title: str = "") -> Any:
    """Loss and error per epoch, train against test, as a matplotlib ``Figure``.

    Parameters
    ----------
    history : the trainer's per-epoch records, dicts with keys ``epoch``,
        ``train_loss``, ``train_acc`` and, when a test set was evaluated,
        ``test_loss`` and ``test_acc``. Error is ``100 * (1 - accuracy)``, the
        quantity the paper's figures show.
    title : shown above both panels.

    Returns
    -------
    matplotlib.figure.Figure with two axes (loss, error in %); display it in a
    notebook as it is, or save it with ``fig.savefig(path)``.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import ScalarFormatter

    fig = Figure(figsize=(10, 4))
    ax_loss, ax_err = fig.subplots(1, 2)
    epochs = [h["epoch"] for h in history]
    for split, style in (("train", "--"), ("test", "-")):
        if history and all(f"{split}_loss" in h for h in history):
            ax_loss.plot(epochs, [h[f"{split}_loss"] for h in history], style, label=split)
            ax_err.plot(epochs, [100 * (1 - h[f"{split}_acc"]) for h in history], style,
                        label=split)
    if history and all("test_acc" in h for h in history):
        best = max(history, key=lambda h: h["test_acc"])
        ax_err.annotate(f"best {100 * (1 - best['test_acc']):.2f}%",
                        (best["epoch"], 100 * (1 - best["test_acc"])),
                        textcoords="offset points", xytext=(0, -6), ha="center", va="top",
                        fontsize=8)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="cross-entropy loss")
    ax_err.set(xlabel="epoch", ylabel="error (%)", title="classification error")
    # linear below 1%, logarithmic above: both the first epochs' 50% and the
    # last epochs' 0.5% stay readable
    ax_err.set_yscale("symlog", linthresh=1.0, linscale=0.5)
    ax_err.yaxis.set_major_formatter(ScalarFormatter())
    for ax in (ax_loss, ax_err):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_history(history: Sequence[Mapping[str, float]], path: str | Path,
                 title: str = "") -> Path:
    """Draw ``learning_curves(history, title)`` and save it as a PNG at ``path``.

    Parameters
    ----------
    history : per-epoch records, as for :func:`learning_curves`.
    path : the PNG file to write (its folder is created); written to a
        temporary file first and renamed, so a reader never sees half a file.
    title : figure title.

    Returns
    -------
    The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = learning_curves(history, title)
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    return path
