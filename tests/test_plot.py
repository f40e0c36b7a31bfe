"""Learning curves in a notebook and in ``curves.png`` (issue 14, items 22 and 23)."""

from __future__ import annotations

import itertools
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from minires import nn
from minires.plot import learning_curves, smoothing_floor
from minires.train import Trainer, curves_title

ROOT = Path(__file__).resolve().parents[1]


def history(epochs, best_at=None):
    out = [{"epoch": e, "train_loss": 2 / e + 0.5, "train_acc": 1 - 0.8 / e ** 1.5,
            "test_loss": 2 / e + 0.55, "test_acc": 1 - 0.7 / e ** 1.3} for e in range(1, epochs + 1)]
    if best_at is not None:
        out[best_at - 1]["test_acc"] = 0.999
    return out


def drawn(fig):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def test_the_figure_renders_itself_as_png_for_a_notebook():
    fig = learning_curves(history(3))
    png = fig._repr_png_()
    assert png[:4] == b"\x89PNG" and len(png) > 10_000


@pytest.mark.parametrize("epochs", [1, 2, 3, 7, 40])
def test_epochs_are_whole_numbers_and_each_epoch_is_a_point(epochs):
    fig = learning_curves(history(epochs))
    drawn(fig)
    for ax in fig.axes:
        lo, hi = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
        assert lo < 1 and hi > epochs                          # the points are inside
        train = ax.lines[0]
        assert len(train.get_xdata()) == epochs
        assert (train.get_marker() == "o") == (epochs <= 30)   # one epoch: still visible


def test_error_axis_has_readable_percent_ticks():
    fig = learning_curves(history(12))
    drawn(fig)
    err_ax = fig.axes[1]
    labels = [t.get_text() for t in err_ax.get_yticklabels() if t.get_text()]
    assert labels and all(label.endswith("%") for label in labels)
    values = [float(label[:-1]) for label in labels]
    assert set(values) <= {0, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100}
    assert len(values) >= 4 and not err_ax.get_yticks(minor=True).size
    narrow = [{"epoch": e, "train_loss": 2.0, "train_acc": 0.1 + 0.1 * e, "test_loss": 2.0,
               "test_acc": 0.05 + 0.1 * e} for e in range(1, 4)]      # errors 60% to 85%
    fig = learning_curves(narrow)
    drawn(fig)
    labels = [t.get_text() for t in fig.axes[1].get_yticklabels() if t.get_text()]
    assert labels == ["50%", "60%", "70%", "80%", "90%", "100%"]


@pytest.mark.parametrize("lo, hi", [(0, 0), (0.28, 0.28), (0.3, 0.6), (1, 1.2), (2.5, 4),
                                    (9.9, 10.1), (10, 10), (11, 14), (12, 18), (45, 55),
                                    (96, 99), (100, 100)])
def test_a_narrow_range_of_errors_still_gets_two_tick_labels(lo, hi):
    """Errors that stay within a narrow band, on either side of a decade or on
    one: at least two distinct percent labels inside the axis, none overlapping
    (matplotlib's own symlog ticks showed none, or a single "10")."""
    runs = [{"epoch": e, "train_loss": 1.0, "train_acc": 1 - err / 100, "test_loss": 1.0,
             "test_acc": 1 - err / 100} for e, err in enumerate((lo, hi), start=1)]
    fig = learning_curves(runs)
    renderer = drawn(fig)
    ax = fig.axes[1]
    bottom, top = ax.get_ylim()
    shown = [(v, t) for v, t in zip(ax.get_yticks(), ax.get_yticklabels(), strict=True)
             if bottom <= v <= top and t.get_text()]
    labels = [t.get_text() for _, t in shown]
    assert len(set(labels)) >= 2 and all(label.endswith("%") for label in labels), labels
    assert min(v for v, _ in shown) <= lo and max(v for v, _ in shown) >= hi  # the data inside
    boxes = [t.get_window_extent(renderer) for _, t in shown]
    assert all(a.y1 <= b.y0 + 1 for a, b in itertools.pairwise(boxes)), labels  # readable


@pytest.mark.parametrize("best_at", [1, 12])
def test_best_test_error_is_in_the_legend_inside_the_figure(best_at):
    fig = learning_curves(history(12, best_at=best_at))
    renderer = drawn(fig)
    legend = fig.axes[1].get_legend()
    texts = [t.get_text() for t in legend.get_texts()]
    assert f"best test 0.10% (epoch {best_at})" in texts
    box, page = legend.get_window_extent(renderer), fig.bbox
    assert page.x0 <= box.x0 and box.x1 <= page.x1 and page.y0 <= box.y0 and box.y1 <= page.y1
    from matplotlib.text import Text

    for text in fig.findobj(lambda a: isinstance(a, Text) and "best" in a.get_text()):
        assert text in legend.get_texts()                      # no label left on the plot


def test_label_smoothing_floor_is_explained_and_right():
    assert smoothing_floor(0.0, 10) == 0.0
    assert smoothing_floor(0.1, 10) == pytest.approx(0.5003, abs=1e-4)
    # the loss of predicting the smoothed targets exactly is the floor
    k, e = 10, 0.1
    target = np.full((1, k), e / k)
    target[0, 3] += 1 - e
    loss = float(nn.CrossEntropyLoss(e)(np.log(target), np.array([3])))
    assert loss == pytest.approx(smoothing_floor(e, k), rel=1e-12)
    fig = learning_curves(history(5), label_smoothing=e, num_classes=k)
    loss_ax = fig.axes[0]
    labels = [t.get_text() for t in loss_ax.get_legend().get_texts()]
    assert "floor 0.50: label smoothing 0.1 keeps the loss above it" in labels
    floor = [line for line in loss_ax.lines if "floor" in line.get_label()][0]
    assert np.allclose(floor.get_ydata(), smoothing_floor(e, k))
    assert not any("floor" in line.get_label() for line in learning_curves(history(5)).axes[0].lines)


def test_title_names_model_dataset_and_fine_tune():
    assert curves_title({}) == ""
    assert curves_title({"model": "resnet20", "dataset": "digits", "command": "train"}) == \
        "resnet20 on digits"
    assert curves_title({"model": "resnet8", "dataset": "digits", "command": "finetune",
                         "classes": [5, 6, 7], "source": "runs/pretrain/checkpoint.npz"}) == \
        "resnet8 fine-tuned on digits (classes 5,6,7) from pretrain/checkpoint.npz"
    assert curves_title({"model": "resnet18", "dataset": "/data/my_photos",
                         "command": "finetune", "source": "resnet18.pt"}) == \
        "resnet18 fine-tuned on my_photos from resnet18.pt"


def test_trainer_draws_curves_with_title_and_smoothing_floor(tmp_path, monkeypatch, rng):
    import minires.train as train_module

    seen = {}
    monkeypatch.setattr(train_module, "plot_history",
                        lambda history, path, **kw: seen.update(kw, path=path) or path)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    from minires.data import DataLoader
    from minires.optim import SGD

    x, y = rng.standard_normal((6, 1, 2, 2)).astype(np.float32), np.arange(6) % 3
    trainer = Trainer(model, SGD(model.parameters(), lr=0.1), DataLoader(x, y, 3),
                      DataLoader(x, y, 6), criterion=nn.CrossEntropyLoss(0.2), out_dir=tmp_path,
                      config={"model": "mlp", "dataset": "toy", "command": "finetune",
                              "num_classes": 3}, progress=False, log=False)
    trainer.fit(1)
    assert seen["title"] == "mlp fine-tuned on toy"
    assert seen["label_smoothing"] == 0.2 and seen["num_classes"] == 3


def test_notebooks_extra_brings_ipywidgets_and_the_bars_use_tqdm_auto():
    import tqdm.auto

    import minires.train

    extra = re.search(r"^notebooks = \[(.*)\](?:\s*#.*)?$",  # a comment may follow
                      (ROOT / "pyproject.toml").read_text(), re.M)
    assert extra and '"ipywidgets>=' in extra[1]
    assert minires.train.tqdm is tqdm.auto.tqdm


@pytest.mark.slow
def test_figures_and_progress_bars_in_a_fresh_jupyter_kernel(tmp_path):
    """A new kernel that never imported pyplot shows the curves as a PNG, and
    the trainer's bars are tqdm's notebook widgets (``tqdm.auto`` picks them
    there, with ipywidgets installed)."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(
            "from minires.plot import learning_curves\n"
            "learning_curves([{'epoch': 1, 'train_loss': 2.0, 'train_acc': 0.3,\n"
            "                  'test_loss': 2.1, 'test_acc': 0.25}], title='one epoch')"),
        nbformat.v4.new_code_cell(
            "import sys, tqdm.notebook, minires.train\n"
            "print('matplotlib.pyplot' in sys.modules,\n"
            "      issubclass(minires.train.tqdm, tqdm.notebook.tqdm))"),
    ]
    env_path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = env_path
    try:
        client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                                         resources={"metadata": {"path": str(tmp_path)}})
        client.execute()
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old
    figure_outputs = nb.cells[0].outputs
    assert any("image/png" in out.get("data", {}) for out in figure_outputs), figure_outputs
    text = "".join(out.get("text", "") for out in nb.cells[1].outputs)
    assert text.split() == ["False", "True"], (text, sys.executable)
