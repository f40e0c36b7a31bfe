"""The training loop: forward, loss, backward, optimizer step, by hand.

``Trainer.fit`` runs epochs of::

    logits = model(x)                  # forward, every layer keeps its cache
    loss = criterion(logits, y)
    model.backward(criterion.backward())   # backward, gradients into .grad
    optimizer.step(); model.zero_grad()

with a tqdm progress bar (loss, accuracy, images per second), per-epoch train
and test metrics kept in ``history`` and written to ``metrics.json`` and
``metrics.csv``, learning curves in ``curves.png``, and a checkpoint after every
epoch (``checkpoint.npz``, written atomically). A run stopped after epoch k and
resumed with ``Trainer.resume`` ends with bit-identical weights to an
uninterrupted one: the checkpoint holds the model, the optimizer's momentum
buffers, the schedule, the epoch and the state of every random generator.

If the loss stops being finite, training stops with ``TrainingDiverged`` and
the last checkpoint (the last good epoch) is left untouched.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from . import backend
from .checkpoint import load_checkpoint, save_checkpoint
from .nn import CrossEntropyLoss, Module
from .plot import plot_history


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


def _stateful(obj: Any) -> bool:
    return obj is not None and hasattr(obj, "state_dict") and hasattr(obj, "load_state_dict")


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
    config : a JSON-serializable dict saved in every checkpoint.
    progress : show tqdm progress bars.
    log : print one line of metrics per epoch.
    """

    def __init__(self, model: Module, optimizer: Any, train_loader: Iterable,
                 test_loader: Iterable | None = None, scheduler: Any = None,
                 criterion: Module | None = None, out_dir: str | Path | None = None,
                 config: dict | None = None, progress: bool = True,
                 log: bool = True) -> None:
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.train_loader, self.test_loader = train_loader, test_loader
        self.criterion = criterion or CrossEntropyLoss()
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.config = dict(config or {})
        self.progress, self.log = progress, log
        self.epoch = 0  # epochs completed
        self.history: list[dict[str, float]] = []

    # ---- one pass over the data ------------------------------------------
    def train_epoch(self) -> dict[str, float]:
        """One epoch of training; returns mean loss, accuracy and images/s."""
        self.model.train()
        total_loss, correct, seen = 0.0, 0, 0
        start = time.perf_counter()
        bar = tqdm(self.train_loader, desc=f"epoch {self.epoch + 1}", leave=False,
                   disable=not self.progress, unit="batch")
        for batch, (x, y) in enumerate(bar):
            logits = self.model(x)
            loss = float(self.criterion(logits, y))
            if not math.isfinite(loss):
                raise TrainingDiverged(
                    f"loss became {loss} at epoch {self.epoch + 1}, batch {batch + 1}; "
                    f"stopping. The last good checkpoint (epoch {self.epoch}) is "
                    f"{self.checkpoint_path or 'not saved (no out_dir)'}. "
                    "Try a lower learning rate."
                )
            self.model.backward(self.criterion.backward())
            self.optimizer.step()
            self.model.zero_grad()
            n = int(x.shape[0])
            total_loss += loss * n
            correct += _count_correct(logits, y)
            seen += n
            rate = seen / max(time.perf_counter() - start, 1e-9)
            bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.3f}",
                            img_s=f"{rate:.0f}")
        elapsed = time.perf_counter() - start
        return {"train_loss": total_loss / max(seen, 1), "train_acc": correct / max(seen, 1),
                "images_per_s": seen / max(elapsed, 1e-9), "epoch_time_s": elapsed}

    def evaluate(self, loader: Iterable | None = None) -> dict[str, float]:
        """Loss and accuracy in eval mode (BatchNorm uses running statistics)."""
        loader = loader if loader is not None else self.test_loader
        if loader is None:
            raise ValueError("Trainer.evaluate: no loader given and no test_loader set")
        was_training = self.model.training
        self.model.eval()
        total_loss, correct, seen = 0.0, 0, 0
        for x, y in loader:
            logits = self.model(x)
            n = int(x.shape[0])
            total_loss += float(self.criterion(logits, y)) * n
            correct += _count_correct(logits, y)
            seen += n
        self.model.train(was_training)
        self.model._cache = None
        return {"loss": total_loss / max(seen, 1), "acc": correct / max(seen, 1)}

    # ---- the loop -----------------------------------------------------------
    def fit(self, epochs: int) -> list[dict[str, float]]:
        """Train until ``epochs`` epochs are completed in total (a resumed run
        continues from ``self.epoch``). Returns the history."""
        outer = tqdm(total=epochs, initial=self.epoch, desc="training", unit="epoch",
                     disable=not self.progress)
        while self.epoch < epochs:
            record: dict[str, float] = {"epoch": self.epoch + 1,
                                        "lr": float(self.optimizer.param_groups[0]["lr"])}
            record.update(self.train_epoch())
            if self.test_loader is not None:
                test = self.evaluate()
                record.update(test_loss=test["loss"], test_acc=test["acc"])
            if self.scheduler is not None:
                self.scheduler.step()
            self.epoch += 1
            self.history.append(record)
            self._write_outputs()
            outer.update(1)
            outer.set_postfix({k: f"{v:.4f}" for k, v in record.items()
                               if k in ("train_loss", "test_acc")})
            if self.log:
                tqdm.write(_format_record(record))
        outer.close()
        return self.history

    # ---- checkpoints ----------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path | None:
        return self.out_dir / "checkpoint.npz" if self.out_dir is not None else None

    def state(self) -> dict[str, Any]:
        """Everything a checkpoint needs to continue exactly."""
        rng = {}
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
        save_checkpoint(path, **self.state())
        return Path(path)

    def resume(self, path: str | Path) -> None:
        """Restore model, optimizer, schedule, epoch, history and generators."""
        ckpt = load_checkpoint(path)
        self.model.load_state_dict(ckpt["model_state"])
        self.optimizer.load_state_dict(ckpt["optimizer_state"])
        if self.scheduler is not None and ckpt.get("scheduler_state") is not None:
            self.scheduler.load_state_dict(ckpt["scheduler_state"])
        for name, obj in (("train_loader", self.train_loader), ("test_loader", self.test_loader)):
            saved = (ckpt.get("rng_state") or {}).get(name)
            if saved is not None and _stateful(obj):
                obj.load_state_dict(saved)
        self.epoch = int(ckpt["epoch"])
        self.history = list((ckpt.get("extra") or {}).get("history", []))

    def _write_outputs(self) -> None:
        if self.out_dir is None:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.save(self.checkpoint_path)
        (self.out_dir / "metrics.json").write_text(json.dumps(self.history, indent=1))
        with open(self.out_dir / "metrics.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(self.history[0]))
            writer.writeheader()
            writer.writerows(self.history)
        plot_history(self.history, self.out_dir / "curves.png",
                     title=str(self.config.get("model", "")))


def _count_correct(logits: Any, y: Any) -> int:
    xp = backend.namespace(logits)
    return int(xp.sum(xp.astype(xp.argmax(logits, axis=1) == y, xp.int64)))


def _format_record(r: dict[str, float]) -> str:
    parts = [f"epoch {int(r['epoch'])}", f"lr {r['lr']:.4g}",
             f"train loss {r['train_loss']:.4f}", f"train acc {r['train_acc']:.4f}"]
    if "test_acc" in r:
        parts += [f"test loss {r['test_loss']:.4f}", f"test acc {r['test_acc']:.4f}"]
    parts.append(f"{r['images_per_s']:.0f} img/s")
    return " | ".join(parts)
