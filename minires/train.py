"""The training loop: forward, loss, backward, optimizer step, by hand.

``Trainer.fit`` runs epochs of::

    logits = model(x)                      # forward, every layer keeps its cache
    loss = criterion(logits, y)
    model.backward(criterion.backward())   # backward, gradients into .grad
    optimizer.step(); model.zero_grad()

with a tqdm progress bar (loss, accuracy, images per second). After every
epoch it evaluates on the test set, appends a record to ``history`` and, when
given an output folder, writes:

- ``checkpoint.npz``: model, optimizer (momentum buffers), schedule, epoch,
  random-generator states, config and history (``minires.checkpoint``:
  atomic, verified, no pickle);
- ``metrics.json`` and ``metrics.csv``: the history, one record per epoch;
- ``curves.png``: learning curves (redrawn at most every ``curves_every_s``
  seconds while training, and always when ``fit`` returns or stops).

A run stopped after epoch k and resumed with ``Trainer.resume`` ends with
bit-identical weights to an uninterrupted one: everything random follows
from the saved states (the ``DataLoader``'s shuffling and augmentation from
``(seed, epoch, batch)``, the initializer's generator from its saved state).

A Ctrl-C while an epoch is being saved waits for the save (a fraction of a
second): the checkpoint then holds every epoch the trainer counted.

If the loss, the test loss or any weight stops being finite, training stops
with ``TrainingDiverged`` before anything of that epoch is written, so the
checkpoint on disk is still the last good epoch.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from . import backend
from .atomic import atomic_write
from .checkpoint import load_checkpoint, save_checkpoint
from .grad_mode import no_grad
from .models import ResNet
from .nn import CrossEntropyLoss, Module, init
from .plot import plot_history


class TrainingDiverged(RuntimeError):
    """The loss (or a weight) became NaN or infinite; training stopped.

    Attributes
    ----------
    epoch : int, the epoch (1-based) in which it happened.
    checkpoint : Path or None, the last good checkpoint (None when none was
        written: no output folder, or the first epoch diverged).
    """

    def __init__(self, message: str, epoch: int, checkpoint: Path | None) -> None:
        super().__init__(message)
        self.epoch = epoch
        self.checkpoint = checkpoint


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold a Ctrl-C (SIGINT) that arrives inside the block until the block ends,
    then raise ``KeyboardInterrupt``.

    The trainer counts, records and saves each finished epoch inside such a
    block, so an interrupted run never holds an epoch in memory that its
    checkpoint lacks (nor a stepped schedule without the epoch). Only in the
    main thread, and only while Python's own SIGINT handler is installed;
    otherwise the block runs as it is.
    """
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


def _stateful(obj: Any) -> bool:
    return obj is not None and hasattr(obj, "state_dict") and hasattr(obj, "load_state_dict")


def count_correct(logits: Any, y: Any) -> int:
    """Number of rows of ``logits`` (N, K) whose largest entry is at ``y`` (N,)."""
    xp = backend.namespace(logits)
    return int(xp.sum(xp.astype(xp.argmax(logits, axis=1) == y, xp.int64)))


def confusion_matrix(y_true: Any, y_pred: Any, num_classes: int) -> np.ndarray:
    """Counts of (true class, predicted class) pairs.

    Parameters
    ----------
    y_true, y_pred : (N,) integer arrays (any backend) with values in
        ``[0, num_classes)``.
    num_classes : K; classes that occur nowhere still get a row and a column.

    Returns
    -------
    (K, K) int64 NumPy array ``C`` with ``C[i, j]`` = the number of samples of
    true class ``i`` predicted as ``j`` (rows: truth, columns: prediction, as
    in scikit-learn). ``C.sum()`` is N and ``trace(C)`` the number correct.
    """
    t = np.asarray(backend.to_numpy(y_true)).astype(np.int64).ravel()
    p = np.asarray(backend.to_numpy(y_pred)).astype(np.int64).ravel()
    if t.shape != p.shape:
        raise ValueError(f"confusion_matrix: y_true has {t.size} labels, y_pred {p.size}")
    for name, v in (("y_true", t), ("y_pred", p)):
        if v.size and (v.min() < 0 or v.max() >= num_classes):
            raise ValueError(f"confusion_matrix: {name} holds labels outside "
                             f"[0, {num_classes - 1}]")
    # one bin per (i, j) pair: bincount adds repeated pairs (C[t, p] += 1 would not)
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes)


def evaluate(model: Module, loader: Iterable, criterion: Module | None = None) -> dict[str, float]:
    """Mean loss and accuracy of ``model`` over ``loader``, in eval mode.

    Parameters
    ----------
    model : Module mapping x (N, C, H, W) to logits (N, K).
    loader : iterable of ``(x, y)`` batches, y (N,) int.
    criterion : the loss, default ``CrossEntropyLoss()``.

    Returns
    -------
    dict with ``loss`` (mean over images), ``acc`` (fraction correct) and
    ``images``. BatchNorm uses its running statistics, so the result does not
    depend on how the images are batched. The forwards run under
    ``minires.no_grad()`` (no layer keeps a cache: for ResNet-20 at batch
    1024, see benchmarks/nograd_memory.py); the model's mode is restored.
    """
    criterion = criterion or CrossEntropyLoss()
    was_training = model.training
    model.eval()
    total_loss, correct, seen = 0.0, 0, 0
    try:
        with no_grad():  # no backward follows: each layer drops its cache at once
            for x, y in loader:
                logits = model(x)
                n = int(x.shape[0])
                total_loss += float(criterion(logits, y)) * n
                correct += count_correct(logits, y)
                seen += n
    finally:
        model.train(was_training)
        for m in model.modules():  # free the activations kept for a backward
            m._cache = None
        criterion._cache = None
    return {"loss": total_loss / max(seen, 1), "acc": correct / max(seen, 1), "images": seen}


class Trainer:
    """Fit a model with a hand-written backward pass.

    Parameters
    ----------
    model : Module mapping images (N, C, H, W) to logits (N, K).
    optimizer : a ``minires.optim`` optimizer over the model's parameters.
    train_loader, test_loader : iterables of ``(x, y)`` batches; x (N, C, H, W)
        float, y (N,) int. Loaders with ``state_dict``/``load_state_dict``
        (``minires.data.DataLoader``) are saved in checkpoints for exact resume.
    scheduler : optional learning-rate schedule, stepped once per epoch.
    criterion : the loss, default ``CrossEntropyLoss()``.
    out_dir : where checkpoints, metrics and curves go (None: nowhere).
    config : a JSON-like dict saved in every checkpoint.
    progress : show tqdm progress bars.
    log : print one line of metrics per epoch.
    curves_every_s : redraw ``curves.png`` after an epoch when at least this
        many seconds have passed since the last drawing (a drawing costs about
        0.3 s); it is always drawn when ``fit`` ends.

    Attributes
    ----------
    epoch : int, epochs completed.
    history : list of per-epoch dicts: ``epoch``, ``lr``, ``train_loss``,
        ``train_acc``, ``images_per_s``, ``epoch_time_s``, ``test_loss``,
        ``test_acc`` (with a test loader) and ``wall_s`` (training and
        evaluation time since the start of the run, summed over resumes).
    """

    def __init__(self, model: Module, optimizer: Any, train_loader: Iterable,
                 test_loader: Iterable | None = None, scheduler: Any = None,
                 criterion: Module | None = None, out_dir: str | Path | None = None,
                 config: dict | None = None, progress: bool = True,
                 log: bool = True, curves_every_s: float = 60.0) -> None:
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.train_loader, self.test_loader = train_loader, test_loader
        self.criterion = criterion or CrossEntropyLoss()
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.config = dict(config or {})
        self.progress, self.log = progress, log
        self.curves_every_s = curves_every_s
        self.epoch = 0
        self.history: list[dict[str, float]] = []
        self._last_curves = -math.inf

    # ---- one pass over the data ------------------------------------------
    def train_epoch(self) -> dict[str, float]:
        """One epoch of training.

        Returns
        -------
        dict with ``train_loss`` and ``train_acc`` (means over the epoch's
        images, measured on the fly in training mode), ``images_per_s`` and
        ``epoch_time_s``.

        Raises
        ------
        TrainingDiverged as soon as a batch's loss is NaN or infinite (before
        its backward pass and update); ValueError when the loader gives no batch.
        """
        self.model.train()
        total_loss, correct, seen = 0.0, 0, 0
        start = time.perf_counter()
        # The bar is told the length rather than handed the loader: tqdm.auto's
        # class calls iter() on an iterable it wraps, which would start (and
        # throw away) one extra epoch of a DataLoader, shifting its shuffling.
        total = len(self.train_loader) if hasattr(self.train_loader, "__len__") else None
        bar = tqdm(total=total, desc=f"epoch {self.epoch + 1}", leave=False,
                   disable=not self.progress, unit="batch")
        try:
            for batch, (x, y) in enumerate(self.train_loader):
                logits = self.model(x)
                loss = float(self.criterion(logits, y))
                if not math.isfinite(loss):
                    self._diverged(f"the training loss became {loss} at epoch "
                                   f"{self.epoch + 1}, batch {batch + 1}")
                dlogits = self.criterion.backward()
                if isinstance(self.model, ResNet):
                    # the parameters' gradients only: the stem skips dx
                    self.model.backward(dlogits, input_grad=False)
                else:
                    self.model.backward(dlogits)
                self.optimizer.step()
                self.model.zero_grad()
                n = int(x.shape[0])
                total_loss += loss * n
                correct += count_correct(logits, y)
                seen += n
                rate = seen / max(time.perf_counter() - start, 1e-9)
                bar.update(1)
                bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.3f}",
                                img_s=f"{rate:.0f}", refresh=False)
        finally:
            bar.close()
        if seen == 0:  # not a silent epoch with loss 0.0
            raise ValueError(f"Trainer: the training loader gave no batches in epoch "
                             f"{self.epoch + 1}")
        elapsed = time.perf_counter() - start
        return {"train_loss": total_loss / max(seen, 1), "train_acc": correct / max(seen, 1),
                "images_per_s": seen / max(elapsed, 1e-9), "epoch_time_s": elapsed}

    def evaluate(self, loader: Iterable | None = None) -> dict[str, float]:
        """Loss and accuracy on ``loader`` (default: the test loader) in eval
        mode; see :func:`evaluate`."""
        loader = loader if loader is not None else self.test_loader
        if loader is None:
            raise ValueError("Trainer.evaluate: no loader given and no test_loader set")
        return evaluate(self.model, loader, self.criterion)

    # ---- the loop -----------------------------------------------------------
    def fit(self, epochs: int) -> list[dict[str, float]]:
        """Train until ``epochs`` epochs are completed in total (a resumed run
        continues from ``self.epoch``). Returns the history.

        Raises
        ------
        TrainingDiverged when the loss, the test loss or a weight becomes NaN
        or infinite; the checkpoint of the last good epoch is left untouched.
        """
        outer = tqdm(total=epochs, initial=min(self.epoch, epochs), desc="training",
                     unit="epoch", disable=not self.progress)
        first = self.epoch
        # NumPy's overflow warnings would only precede the clear message below.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            self._fit(epochs, outer, first)
        return self.history

    def _fit(self, epochs: int, outer: Any, first: int) -> None:
        try:
            while self.epoch < epochs:
                start = time.perf_counter()
                record: dict[str, float] = {"epoch": self.epoch + 1,
                                            "lr": float(self.optimizer.param_groups[0]["lr"])}
                record.update(self.train_epoch())
                if self.test_loader is not None:
                    test = self.evaluate()
                    record.update(test_loss=test["loss"], test_acc=test["acc"])
                self._check_finite(record)
                # the epoch is counted, recorded and saved together: a Ctrl-C here waits
                with interrupts_deferred():
                    if self.scheduler is not None:
                        self.scheduler.step()
                    self.epoch += 1
                    previous = self.history[-1].get("wall_s", 0.0) if self.history else 0.0
                    record["wall_s"] = previous + time.perf_counter() - start
                    self.history.append(record)
                    self._write_outputs()
                outer.update(1)
                outer.set_postfix({k: f"{v:.4f}" for k, v in record.items()
                                   if k in ("train_loss", "test_acc")})
                if self.log:
                    tqdm.write(format_record(record))
        finally:
            outer.close()
            if self.epoch > first:
                self.write_curves()

    def _check_finite(self, record: dict[str, float]) -> None:
        """Stop before saving an epoch whose test loss or weights are not finite."""
        for key in ("train_loss", "test_loss"):
            if key in record and not math.isfinite(record[key]):
                self._diverged(f"the {key.replace('_', ' ')} became {record[key]} after "
                               f"epoch {self.epoch + 1}")
        bad = nonfinite_arrays(self.model)
        if bad:
            shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
            self._diverged(f"NaN or infinite values in {shown} after epoch {self.epoch + 1}")

    def _diverged(self, what: str) -> None:
        ckpt = self.checkpoint_path
        if ckpt is None:
            where = "no checkpoint is kept (no output folder)"
        elif self.epoch == 0 or not ckpt.exists():
            where = "no checkpoint was written yet (it diverged in the first epoch)"
            ckpt = None
        else:
            where = f"the last good checkpoint, after epoch {self.epoch}, is {ckpt}"
        lr = self.optimizer.param_groups[0]["lr"]
        raise TrainingDiverged(
            f"training diverged: {what}. Stopped; {where}. "
            f"Try a lower learning rate (it was {lr:g}) or a warm-up.",
            epoch=self.epoch + 1, checkpoint=ckpt)

    # ---- checkpoints ----------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path | None:
        """``out_dir / "checkpoint.npz"``, or None without an output folder."""
        return self.out_dir / "checkpoint.npz" if self.out_dir is not None else None

    def state(self) -> dict[str, Any]:
        """Everything a checkpoint needs to continue exactly: the keyword
        arguments of ``minires.checkpoint.save_checkpoint``."""
        rng: dict[str, Any] = {"init": init.get_rng().bit_generator.state}
        for name, obj in (("train_loader", self.train_loader), ("test_loader", self.test_loader)):
            if _stateful(obj):
                rng[name] = obj.state_dict()
        return dict(
            model_state=self.model.state_dict(),
            optimizer_state=self.optimizer.state_dict(),
            scheduler_state=self.scheduler.state_dict() if self.scheduler is not None else None,
            epoch=self.epoch,
            rng_state=rng,
            config=self.config,
            extra={"history": self.history},
        )

    def save(self, path: str | Path) -> Path:
        """Write a checkpoint of the current state (atomically) to ``path``."""
        save_checkpoint(path, **self.state())
        return Path(path)

    def resume(self, path: str | Path, restore_scheduler: bool = True) -> dict[str, Any]:
        """Restore model, optimizer, schedule, epoch, history and random
        generators (the loaders' positions and the initializer's generator)
        from a checkpoint written by ``save``. Returns the loaded checkpoint.

        The trainer must have been built like the one that wrote it (same
        model, optimizer parameter groups, schedule type, loaders).
        ``restore_scheduler=False`` keeps this trainer's schedule as it is (to
        continue with a re-planned one; the optimizer's lrs are then the saved
        ones until the caller sets them).

        All or nothing: a checkpoint that does not fit (another model, other
        parameter groups, another schedule type) raises and leaves the trainer
        as it was.
        """
        ckpt = load_checkpoint(path)
        undo = self.state()  # what this trainer goes back to if a part does not fit
        try:
            self._restore(ckpt, restore_scheduler)
        except Exception:
            self._restore(undo, restore_scheduler)
            raise
        self.epoch = int(ckpt["epoch"])
        self.history = list((ckpt.get("extra") or {}).get("history", []))
        return ckpt

    def _restore(self, state: dict[str, Any], restore_scheduler: bool) -> None:
        """Load a checkpoint's pieces. The optimizer (whose load checks the
        parameter groups and changes nothing if they do not match) comes
        first and the model's weights (checked in full before any is written)
        last, so that a checkpoint of another model or grouping raises before
        the weights are replaced; ``resume`` undoes the pieces in between."""
        self.optimizer.load_state_dict(state["optimizer_state"])
        if (restore_scheduler and self.scheduler is not None
                and state.get("scheduler_state") is not None):
            self.scheduler.load_state_dict(state["scheduler_state"])
        rng = state.get("rng_state") or {}
        for name, obj in (("train_loader", self.train_loader), ("test_loader", self.test_loader)):
            if rng.get(name) is not None and _stateful(obj):
                obj.load_state_dict(rng[name])
        if rng.get("init") is not None:
            init.get_rng().bit_generator.state = rng["init"]
        self.model.load_state_dict(state["model_state"])

    # ---- files ------------------------------------------------------------------
    def _write_outputs(self) -> None:
        if self.out_dir is None:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.save(self.checkpoint_path)
        write_metrics(self.history, self.out_dir)
        if time.perf_counter() - self._last_curves >= self.curves_every_s:
            self.write_curves()

    def write_curves(self) -> Path | None:
        """Draw the history to ``out_dir/curves.png`` (None without out_dir)."""
        if self.out_dir is None or not self.history:
            return None
        self._last_curves = time.perf_counter()
        fc = getattr(self.model, "fc", None)
        classes = self.config.get("num_classes") or getattr(fc, "out_features", None)
        return plot_history(self.history, self.out_dir / "curves.png",
                            title=curves_title(self.config),
                            label_smoothing=getattr(self.criterion, "label_smoothing", 0.0),
                            num_classes=classes)


def curves_title(config: dict[str, Any]) -> str:
    """The title of ``curves.png`` from a run's config: the model, the dataset
    (its classes when only some are used) and, for a fine-tune, where its
    weights came from, e.g. ``"resnet8 fine-tuned on digits (classes 5,6,7)
    from pretrain/checkpoint.npz"``. Keys that are missing are left out."""
    title = str(config.get("model") or "")
    finetune = config.get("command") == "finetune"
    if finetune:
        title += " fine-tuned" if title else "fine-tuned"
    if config.get("dataset"):
        title += f" on {Path(str(config['dataset'])).name}"
        if config.get("classes"):
            title += f" (classes {','.join(str(c) for c in config['classes'])})"
    if finetune and config.get("source"):
        title += " from " + "/".join(Path(str(config["source"])).parts[-2:])
    return title.strip()


def write_metrics(history: list[dict[str, float]], folder: str | Path) -> None:
    """Write ``history`` to ``folder/metrics.json`` (a list of per-epoch dicts)
    and ``folder/metrics.csv`` (one row per epoch), each atomically."""
    folder = Path(folder)
    fields: list[str] = []
    for record in history:
        fields += [k for k in record if k not in fields]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    _write_text(folder / "metrics.csv", text.getvalue())
    _write_text(folder / "metrics.json", json.dumps(history, indent=1) + "\n")


def _write_text(path: Path, text: str) -> None:
    with atomic_write(path, "w") as f:
        f.write(text)


def nonfinite_arrays(model: Module) -> list[str]:
    """Names of the floating parameters and buffers of ``model`` holding a
    NaN or an infinity (an empty list when all are finite)."""
    bad = []
    for name, value in model.state_dict().items():
        xp = backend.namespace(value)
        if xp.isdtype(value.dtype, "real floating") and not bool(xp.all(xp.isfinite(value))):
            bad.append(name)
    return bad


def format_record(r: dict[str, float]) -> str:
    """One line of an epoch's metrics, as the trainer prints it."""
    parts = [f"epoch {int(r['epoch'])}", f"lr {r['lr']:.4g}",
             f"train loss {r['train_loss']:.4f}", f"train acc {r['train_acc']:.4f}"]
    if "test_acc" in r:
        parts += [f"test loss {r['test_loss']:.4f}", f"test acc {r['test_acc']:.4f}"]
    parts.append(f"{r['images_per_s']:.0f} img/s")
    return " | ".join(parts)
