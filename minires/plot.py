"""Learning curves, as figures for a notebook and as PNG files.

The figures are built with ``matplotlib.figure.Figure`` directly, not through
``pyplot``: no display is needed, nothing global changes (a notebook keeps its
own backend), and no figure stays registered in memory. So that a notebook
still shows them, in a fresh kernel too (where IPython only knows how to draw
figures once pyplot has been imported), they are ``NotebookFigure``s, which
render themselves as PNG (``_repr_png_``). matplotlib is imported on first
use, so ``import minires`` stays quick.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .atomic import atomic_write

# error ticks (in %) on the symlog axis: readable values at every scale
ERROR_TICKS = (0, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100)
FINE_ERROR_TICKS = (0, 0.1, 0.2, 0.3, 0.5, 0.7, 1, 1.5, 2, 3, 4, 5, 6, 7, 8, 10, 15, 20, 30, 40,
                    50, 60, 70, 80, 90, 100)


def figure(**kwargs: Any) -> Any:
    """A new ``matplotlib.figure.Figure`` (keyword arguments as ``Figure``'s)
    that a notebook displays as a PNG when it is a cell's value, whether or
    not pyplot was imported; the figures of ``minires.plot`` come from here."""
    from matplotlib.figure import Figure

    class NotebookFigure(Figure):
        """A Figure with ``_repr_png_``, so IPython and Jupyter can show it."""

        def _repr_png_(self) -> bytes:
            buffer = io.BytesIO()
            self.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
            return buffer.getvalue()

    return NotebookFigure(**kwargs)


def smoothing_floor(label_smoothing: float, num_classes: int) -> float:
    """The smallest mean cross-entropy a model can reach when trained against
    label-smoothed targets ``(1 - e) * onehot + e / K``: their entropy (the
    loss of predicting the targets exactly). ``e = 0.1, K = 10``: 0.50."""
    e, k = float(label_smoothing), int(num_classes)
    p_true, p_other = 1 - e + e / k, e / k
    h = -p_true * math.log(p_true) if p_true > 0 else 0.0
    return h - ((k - 1) * p_other * math.log(p_other) if p_other > 0 else 0.0)


def learning_curves(history: Sequence[Mapping[str, float]], title: str = "",
                    label_smoothing: float = 0.0, num_classes: int | None = None) -> Any:
    """Loss and error per epoch, train against test, as a matplotlib ``Figure``.

    Parameters
    ----------
    history : the trainer's per-epoch records, dicts with keys ``epoch``,
        ``train_loss``, ``train_acc`` and, when a test set was evaluated,
        ``test_loss`` and ``test_acc``. Error is ``100 * (1 - accuracy)``, the
        quantity the paper's figures show.
    title : shown above both panels.
    label_smoothing, num_classes : when the loss was label-smoothed, a dotted
        line marks the floor the loss cannot go below (``smoothing_floor``),
        so a loss that stops near 0.5 is not mistaken for a model that stopped
        learning.

    Returns
    -------
    Figure with two axes (loss, error in %): a notebook shows it when it is a
    cell's value; save it with ``fig.savefig(path)``. Each epoch is a point
    (up to 30 epochs), so a one-epoch run shows too; the best test error is
    marked and given in the legend.
    """
    from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullLocator

    fig = figure(figsize=(10, 4))
    ax_loss, ax_err = fig.subplots(1, 2)
    epochs = [h["epoch"] for h in history]
    marker = "o" if len(history) <= 30 else None
    errors: list[float] = []
    for split, style in (("train", "--"), ("test", "-")):
        if history and all(f"{split}_loss" in h for h in history):
            ax_loss.plot(epochs, [h[f"{split}_loss"] for h in history], style, marker=marker,
                         markersize=3, label=split)
            err = [100 * (1 - h[f"{split}_acc"]) for h in history]
            errors += err
            ax_err.plot(epochs, err, style, marker=marker, markersize=3, label=split)
    if history and all("test_acc" in h for h in history):
        best = max(history, key=lambda h: h["test_acc"])
        best_err = 100 * (1 - best["test_acc"])
        ax_err.plot([best["epoch"]], [best_err], "*", color="C3", markersize=10, zorder=3,
                    label=f"best test {best_err:.2f}% (epoch {int(best['epoch'])})")
    if label_smoothing and num_classes:
        floor = smoothing_floor(label_smoothing, num_classes)
        ax_loss.axhline(floor, linestyle=":", color="0.4",
                        label=f"floor {floor:.2f}: label smoothing {label_smoothing:g} keeps "
                              "the loss above it")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="cross-entropy loss")
    ax_err.set(xlabel="epoch", ylabel="error", title="classification error")
    # linear below 1%, logarithmic above: both the first epochs' 50% and the
    # last epochs' 0.5% (or 0%) stay readable, with ticks at 1-2-5 steps
    ax_err.set_yscale("symlog", linthresh=1.0, linscale=1.0)
    if errors:
        lo = max([t for t in ERROR_TICKS if t <= min(errors)], default=0)
        hi = min([t for t in ERROR_TICKS if t >= max(errors)], default=100)
        if lo == hi:  # a single value on a tick: one step either side
            i = ERROR_TICKS.index(lo)
            lo, hi = ERROR_TICKS[max(i - 1, 0)], ERROR_TICKS[min(i + 1, len(ERROR_TICKS) - 1)]
        # 0.1% and 0.2% only where the axis stays below 2%: above, they crowd 0%
        ticks = [t for t in ERROR_TICKS if lo <= t <= hi and (hi <= 2 or t == 0 or t >= 0.5)]
        if len(ticks) < 4:  # a narrow range (say 55% to 90%): finer steps
            ticks = [t for t in FINE_ERROR_TICKS if lo <= t <= hi]
        ax_err.set_ylim(-0.05 * min(hi, 1) if lo == 0 else lo / 1.1, hi * 1.1)
        ax_err.yaxis.set_major_locator(FixedLocator(ticks))
    ax_err.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}%"))
    ax_err.yaxis.set_minor_locator(NullLocator())
    for ax in (ax_loss, ax_err):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # whole epochs
        if epochs and max(epochs) - min(epochs) < 2:
            ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_history(history: Sequence[Mapping[str, float]], path: str | Path,
                 title: str = "", **kwargs: Any) -> Path:
    """Draw ``learning_curves(history, title, **kwargs)`` and save it as a PNG
    at ``path``.

    Parameters
    ----------
    history : per-epoch records, as for :func:`learning_curves`.
    path : the PNG file to write (its folder is created); written to a
        temporary file first and renamed, so a reader never sees half a file.
    title : figure title.
    kwargs : ``label_smoothing`` and ``num_classes``, as for :func:`learning_curves`.

    Returns
    -------
    The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = learning_curves(history, title, **kwargs)
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    return path
