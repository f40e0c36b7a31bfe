"""The ``minires`` command: train, evaluate, finetune, gradcheck, models.

Run ``minires <command> --help`` for every option and examples. Each command
is a function ``cmd_<name>(args) -> exit code``; ``main(argv)`` parses the
arguments and runs one (also in-process, from tests and notebooks).

Exit codes: 0 success; 1 an error (unknown model or dataset, unreadable
checkpoint, an ``--out`` folder that holds a run, ...; one line on stderr);
2 training diverged, or the command line is malformed: argparse's errors, and
option values that can never work, checked before anything runs
(``--epochs 0``, ``--warmup -1``, ``--lr -1``, ``MINIRES_THREADS=abc``; one line on
stderr); 130 interrupted with Ctrl-C (the checkpoint of the last finished
epoch is kept: continue with ``--resume``).

Output folders: a run writes to ``--out``, by default the first of
``runs/<model>-<dataset>``, ``runs/<model>-<dataset>-2``, ... that does not
exist yet, so a second run never replaces the first. An ``--out`` that already
holds a run is refused unless resumed (``--resume``) or replaced
(``--overwrite``).

Datasets: ``cifar10`` is kept in the data folder, ``$MINIRES_DATA``, else
``~/.cache/minires`` (``minires.data.data_root``); ``--download`` fetches it.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

# NumPy is imported lazily, inside the commands: `main` first sets the threads
# (BLAS on one, which OpenBLAS reads from the environment when NumPy is first
# imported; see `limit_threads`).

# `minires train` with no arguments: a CIFAR-style ResNet-20 on the bundled digits
# (random crops after 1 pixel of padding). Chosen to reach >= 98% test accuracy
# in well under 90 s on two CPU cores: benchmarks/train_digits.py measures it
# (results in benchmarks/results/train_digits.json). Over seeds 0-5 (359 test
# images; one image is 0.28%): 12 epochs with label smoothing 0.1 and weight
# decay 1e-4 (the paper's) gave 98.6-99.7%, mean 99.1%, in about 30 s; weight
# decay 5e-4: 98.3-99.4%; lr 0.05 or 16 epochs: no better; 15 epochs without
# label smoothing: 97.5-99.4%, mean 98.8%.
TRAIN_DEFAULTS: dict[str, Any] = {
    "model": "resnet", "depth": 20, "dataset": "digits", "epochs": 12, "batch_size": 64,
    "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "schedule": "cosine", "warmup": 0,
    "label_smoothing": 0.1, "seed": 0,
}
# `minires finetune`: the new head learns at lr, the pretrained layers at backbone_lr.
FINETUNE_DEFAULTS: dict[str, Any] = {"lr": 0.05, "backbone_lr": 0.005}
EVAL_BATCH_SIZE = 256  # test batches (eval mode: the result does not depend on it)
MODEL_FAMILIES = ("resnet", "plain", "preact_resnet")

# Settings that define a run; a resumed run takes them from its checkpoint.
RUN_SETTINGS = ("model", "dataset", "classes", "per_class", "image_size", "seed", "batch_size",
                "lr", "momentum", "no_nesterov", "weight_decay", "schedule", "milestones",
                "warmup", "label_smoothing", "no_augment", "backbone_lr", "freeze_backbone",
                "freeze", "source")


class CommandError(Exception):
    """A problem with what the user asked for; printed as one line, exit code 1."""

    exit_code = 1


class UsageError(CommandError):
    """An option value that can never work (``--epochs 0``); found before anything
    runs, printed as one line, exit code 2 (argparse's code for a malformed
    command line)."""

    exit_code = 2


# Options that must be at least this; None (not given) is always allowed.
OPTION_MINIMUM = {"epochs": 1, "stop_after": 1, "warmup": 0, "image_size": 1, "batch_size": 1,
                  "per_class": 1, "threads": 1}
# Real-valued options and the interval (low, high; None: unbounded) that the
# optimizer and the loss accept (and gradcheck's tolerance): checked here to name
# the option, before anything runs.
OPTION_RANGE = {"lr": (0.0, None), "backbone_lr": (0.0, None), "momentum": (0.0, None),
                "weight_decay": (0.0, None), "label_smoothing": (0.0, 1.0), "tol": (0.0, None)}


def _flag(key: str) -> str:
    """The command-line flag of an ``args`` attribute: ``"batch_size"`` ->
    ``"--batch-size"`` (``"source"`` is ``--from``)."""
    return "--from" if key == "source" else "--" + key.replace("_", "-")


def check_options(args: argparse.Namespace) -> None:
    """Refuse option values that can never work, before anything runs.

    Raises
    ------
    UsageError naming the option (or ``MINIRES_THREADS``) and the value.
    """
    for key, least in OPTION_MINIMUM.items():
        value = getattr(args, key, None)
        if value is not None and value < least:
            kind = "positive" if least == 1 else "non-negative"
            raise UsageError(f"{_flag(key)} must be a {kind} integer, got {value}")
    for key, (low, high) in OPTION_RANGE.items():
        value = getattr(args, key, None)
        # written so that NaN fails too: every comparison with NaN is False
        if value is not None and not (low <= value and (high is None or value <= high)):
            need = f"lie in [{low:g}, {high:g}]" if high is not None else f"be >= {low:g}"
            raise UsageError(f"{_flag(key)} must {need}, got {value:g}")
    for key in ("classes", "milestones"):  # comma-separated integers (a CommandError)
        _parse_ints(getattr(args, key, None), key)
    classes = _parse_ints(getattr(args, "classes", None), "classes")
    if classes is not None and len(set(classes)) < 2:
        raise UsageError(f"--classes {args.classes}: a classifier needs at least "
                         f"2 distinct classes, got {len(set(classes))}")
    dataset = getattr(args, "dataset", None)
    if (getattr(args, "image_size", None) is not None and not getattr(args, "resume", None)
            and dataset in BUILTIN_SIZES):
        raise UsageError(f"--image-size resizes the images of a folder dataset; {dataset} is "
                         f"{BUILTIN_SIZES[dataset]} and is used at that size")
    env_threads()


def env_threads() -> int | None:
    """``MINIRES_THREADS`` as a number (None when unset or empty).

    Raises
    ------
    UsageError when it is set to anything but a positive integer.
    """
    text = os.environ.get("MINIRES_THREADS", "").strip()
    if not text:
        return None
    if not (text.isdigit() and int(text) >= 1):
        raise UsageError(f"MINIRES_THREADS must be a positive integer, got {text!r}")
    return int(text)


# ---- models --------------------------------------------------------------------------

def resolve_model_name(model: str | None, depth: int | None) -> str:
    """The model name ``get_model`` understands, from ``--model`` and ``--depth``.

    A family (``resnet``, ``plain``, ``preact_resnet``) takes its depth from
    ``depth`` (default ``TRAIN_DEFAULTS["depth"]``): ``("resnet", 32)`` ->
    ``"resnet32"``. A full name (``resnet20``, ``wrn16_4``, ``resnet18``) is
    kept; a ``depth`` that contradicts it is an error.
    """
    model = model or TRAIN_DEFAULTS["model"]
    key = model.lower().replace("-", "")
    family = key.replace("preactresnet", "preact_resnet").rstrip("_")
    if family in MODEL_FAMILIES:
        return f"{family}{depth if depth is not None else TRAIN_DEFAULTS['depth']}"
    if depth is not None:
        m = re.fullmatch(r"(resnet|plain|preact_?resnet)_?(\d+)", key)
        if m is None:
            raise CommandError(f"--depth {depth} goes with a model family "
                               f"({', '.join(MODEL_FAMILIES)}), not with {model!r}; give the "
                               "full name alone instead")
        if int(m[2]) != depth:
            raise CommandError(f"--model {model} already has depth {m[2]}, which contradicts "
                               f"--depth {depth}; use --model {m[1]} --depth {depth}")
    return model


def build_model(config: dict[str, Any]) -> Any:
    """``get_model(config["model"])`` for ``config["in_channels"]`` input
    channels and ``config["num_classes"]`` classes."""
    from .models import get_model

    return get_model(config["model"], in_channels=config["in_channels"],
                     num_classes=config["num_classes"])


def channels_note(model: Any) -> str:
    """Why a model's parameter count differs from the papers' when its input
    does not have 3 channels: only the first convolution sees the input, so it
    holds ``out_channels * KH * KW`` weights per input channel. Empty for 3."""
    from .nn import Conv2d

    first = next((m for m in model.modules() if isinstance(m, Conv2d)), None)
    channels = getattr(model, "in_channels", None)
    if first is None or channels is None or channels == 3:
        return ""
    per_channel = first.weight.numel() // first.in_channels
    diff = abs(3 - channels) * per_channel
    rgb = model.num_parameters() + (3 - channels) * per_channel
    word = "channel" if channels == 1 else "channels"
    return (f", {diff:,} {'fewer' if channels < 3 else 'more'} than for RGB images "
            f"({rgb:,}): the images have {channels} {word}, and the first convolution "
            f"{per_channel:,} weights per channel")


# ---- data ----------------------------------------------------------------------------

def _parse_ints(text: Any, what: str = "list") -> list[int] | None:
    if text is None or text == "":
        return None
    if isinstance(text, (list, tuple)):
        return [int(t) for t in text]
    try:
        return [int(t) for t in str(text).split(",") if t.strip()]
    except ValueError:
        raise CommandError(f"--{what}: expected comma-separated integers, got {text!r}") from None


def select_classes(images: np.ndarray, labels: np.ndarray, classes: Sequence[int] | None,
                   per_class: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep the listed classes, relabelled 0..k-1 in the order given, and at most
    ``per_class`` images of each (chosen with ``default_rng([seed, 1])``).

    Parameters
    ----------
    images : (N, C, H, W); labels : (N,) int.

    Returns
    -------
    images (M, C, H, W) and labels (M,), in their original order.
    """
    import numpy as np

    if classes is not None:
        present = set(np.unique(labels).tolist())
        unknown = [c for c in classes if c not in present]
        if unknown or len(set(classes)) != len(classes):
            raise CommandError(f"--classes {','.join(map(str, classes))}: expected distinct "
                               f"class indices among {sorted(present)}")
        keep = np.isin(labels, classes)
        images, labels = images[keep], labels[keep]
        lookup = np.zeros(max(classes) + 1, dtype=np.int64)
        lookup[classes] = np.arange(len(classes))
        labels = lookup[labels]
    if per_class is not None:
        if per_class < 1:
            raise CommandError(f"--per-class must be positive, got {per_class}")
        rng = np.random.default_rng([seed, 1])
        idx = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class]
                              for c in np.unique(labels)])
        idx = np.sort(idx)
        images, labels = images[idx], labels[idx]
    return images, labels


BUILTIN_SIZES = {"digits": "8x8 pixels", "cifar10": "32x32 pixels"}
DATA_FOLDER_RULE = "$MINIRES_DATA, else ~/.cache/minires"


def load_dataset(name: str, image_size: int | None = None, classes: Sequence[int] | None = None,
                 per_class: int | None = None, seed: int = 0, download: bool = False,
                 progress: bool = False, channels: int | None = None) -> dict[str, Any]:
    """Train and test arrays, class names, and the augmentation that suits the data.

    Parameters
    ----------
    name : ``"digits"`` (bundled 8x8 digits), ``"cifar10"`` (in the data
        folder, ``$MINIRES_DATA`` or ``~/.cache/minires``; fetched there when
        ``download``) or a folder ``root/<class>/*.png`` (split 80/20 per
        class, always with the same seed).
    image_size : images of a folder are resized to this (default 32).
    classes : keep these classes only, relabelled 0..k-1.
    per_class : at most this many training images per class (seeded by ``seed``).
    download : fetch CIFAR-10 into the data folder when it is not there.
    progress : show a progress bar while downloading.
    channels : read a folder's images as grayscale when 1, else as RGB (3
        channels; the default), so that they fit a model's first
        convolution; the bundled datasets keep their own channels.

    Returns
    -------
    dict with ``"train"`` and ``"test"``: (images (N, C, H, W) float32,
    labels (N,) int64) on the host; ``"classes"``: names; ``"crop_pad"`` and
    ``"flip"``: the augmentation (digits are not mirror-symmetric: no flips);
    ``"folder"``: where the files were read (None for the bundled digits).
    """
    from . import data

    folder = None
    if name == "digits":
        (xtr, ytr), (xte, yte) = data.load_digits("train"), data.load_digits("test")
        names = list(data.DIGITS_CLASSES)
        crop_pad, flip = 1, False
    elif name == "cifar10":
        folder = data.data_root()
        try:
            xtr, ytr = data.load_cifar10("train", download=download, progress=progress)
            xte, yte = data.load_cifar10("test")
        except data.CifarNotFound as err:
            raise CommandError(
                f"CIFAR-10 is not in the data folder {folder} ({DATA_FOLDER_RULE}): add "
                f"--download to fetch it (170 MB, MD5-checked), or download "
                f"{data.CIFAR10_URL} yourself and save it as {err.archive}") from None
        names = list(data.CIFAR10_CLASSES)
        crop_pad, flip = 4, True
    elif Path(name).is_dir():
        folder = Path(name)
        images, labels, names = data.load_image_folder(name, size=image_size or 32,
                                                       mode="L" if channels == 1 else "RGB")
        train_idx, test_idx = data.stratified_split(labels, test_fraction=0.2, seed=0)
        xtr, ytr, xte, yte = images[train_idx], labels[train_idx], images[test_idx], labels[
            test_idx]
        crop_pad, flip = max(1, xtr.shape[-1] // 8), True
    else:
        hint = " (no such folder)" if ("/" in name or "\\" in name or "." in name) else ""
        raise CommandError(f"unknown dataset {name!r}{hint}; expected 'digits', 'cifar10' "
                           "or a folder with one sub-folder of images per class")
    if classes is not None:
        if max(classes) >= len(names) or min(classes) < 0:
            raise CommandError(f"--classes {','.join(map(str, classes))}: {name} has classes "
                               f"0..{len(names) - 1}")
        names = [names[c] for c in classes]
    xtr, ytr = select_classes(xtr, ytr, classes, per_class, seed)
    xte, yte = select_classes(xte, yte, classes, None, seed)
    return {"train": (xtr, ytr), "test": (xte, yte), "classes": names,
            "crop_pad": crop_pad, "flip": flip, "folder": folder}


def make_loaders(ds: dict[str, Any], batch_size: int, seed: int, augment: bool,
                 mean: Sequence[float], std: Sequence[float]) -> tuple[Any, Any]:
    """The training loader (shuffled, seeded, random crops and flips as
    ``ds`` says, normalized) and the test loader (normalized only)."""
    from .data import Compose, DataLoader, Normalize, RandomCrop, RandomHorizontalFlip

    (xtr, ytr), (xte, yte) = ds["train"], ds["test"]
    norm = Normalize(mean, std)
    steps: list[Any] = []
    if augment:
        steps.append(RandomCrop(tuple(xtr.shape[2:]), padding=ds["crop_pad"]))
        if ds["flip"]:
            steps.append(RandomHorizontalFlip())
    train = DataLoader(xtr, ytr, batch_size, shuffle=True, seed=seed,
                       transform=Compose([*steps, norm]))
    test = DataLoader(xte, yte, EVAL_BATCH_SIZE, transform=norm)
    return train, test


# ---- optimization --------------------------------------------------------------------

def make_optimizer(params: Any, settings: dict[str, Any], epochs: int) -> tuple[Any, Any]:
    """SGD with Nesterov momentum (classical momentum, as in He et al. 2015,
    with ``no_nesterov``; plain SGD when momentum is 0) and the per-epoch
    schedule of ``settings`` over ``epochs`` epochs.

    ``settings`` holds ``lr``, ``momentum``, ``no_nesterov`` (absent in runs
    saved before it existed: Nesterov), ``weight_decay``, ``schedule``
    (cosine, multistep or constant), ``milestones`` (multistep; default 50%
    and 75% of the epochs) and ``warmup`` (epochs of linear warm-up from lr/10).
    """
    from . import optim

    opt = optim.SGD(params, lr=settings["lr"], momentum=settings["momentum"],
                    weight_decay=settings["weight_decay"],
                    nesterov=settings["momentum"] > 0 and not settings.get("no_nesterov", False))
    warmup = settings["warmup"]
    if settings["schedule"] == "cosine":
        main = optim.CosineAnnealingLR(opt, T_max=max(1, epochs - warmup))
    elif settings["schedule"] == "multistep":
        milestones = _parse_ints(settings["milestones"], "milestones") or [epochs // 2,
                                                                          epochs * 3 // 4]
        main = optim.MultiStepLR(opt, [max(0, m - warmup) for m in milestones], gamma=0.1)
    elif settings["schedule"] == "constant":
        main = optim.ConstantLR(opt, factor=1.0, total_iters=0)
    else:
        raise CommandError(f"unknown schedule {settings['schedule']!r}; expected cosine, "
                           "multistep or constant")
    if warmup > 0:
        warm = optim.LinearLR(opt, start_factor=0.1, total_iters=warmup)
        return opt, optim.SequentialLR(opt, [warm, main], milestones=[warmup])
    return opt, main


# ---- train and finetune ----------------------------------------------------------------

def _data_config(ds: dict[str, Any]) -> dict[str, Any]:
    from .data import channel_stats

    mean, std = channel_stats(ds["train"][0])
    return {"in_channels": int(ds["train"][0].shape[1]), "num_classes": len(ds["classes"]),
            "class_names": ds["classes"], "mean": [float(m) for m in mean],
            "std": [float(s) for s in std]}


def _settings(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """The run's settings from the command line (defaults filled in)."""
    keys = [k for k in RUN_SETTINGS if hasattr(args, k)]
    settings = {k: getattr(args, k) for k in keys}
    settings["command"] = command
    settings["classes"] = _parse_ints(args.classes, "classes")
    settings["epochs"] = args.epochs if args.epochs is not None else TRAIN_DEFAULTS["epochs"]
    return settings


def _resumed_settings(args: argparse.Namespace, command: str) -> tuple[dict[str, Any], tuple]:
    """Settings of the run saved in ``args.resume`` (``--epochs`` may change its
    length), with a note on the options given now that it overrides.

    Returns the settings and ``(checkpoint path, epochs done, epochs planned)``.
    """
    from .checkpoint import load_checkpoint

    ckpt = load_checkpoint(args.resume)
    saved = dict(ckpt["config"] or {})
    if "model" not in saved or "dataset" not in saved:
        raise CommandError(f"--resume {args.resume}: the checkpoint holds no run settings "
                           "(not written by minires train or finetune)")
    if saved.get("command", "train") != command:
        raise CommandError(f"--resume {args.resume}: this run was started by `minires "
                           f"{saved.get('command')}`; resume it with that command")
    ignored = []
    for key in RUN_SETTINGS:
        if key in saved and key != "model" and hasattr(args, key):
            given = getattr(args, key)
            if key == "classes":
                given = _parse_ints(given, "classes")
            if given != args.parser.get_default(key) and given != saved[key]:
                ignored.append(f"{_flag(key)} {given}")
    if args.model is not None or getattr(args, "depth", None) is not None:
        ignored.append("--model/--depth")
    if ignored:
        print(f"note: resuming keeps the run's own settings; ignoring {', '.join(ignored)}",
              file=sys.stderr)
    settings = {**saved, "command": command}
    if args.epochs is not None:
        settings["epochs"] = args.epochs
    return settings, (args.resume, int(ckpt["epoch"]), int(saved.get("epochs", 0)))


RUN_FILES = ("checkpoint.npz", "metrics.json", "metrics.csv", "curves.png")


def _continues_in_place(args: argparse.Namespace, out: Path) -> bool:
    """Whether ``--resume`` continues a run in its own folder ``out``."""
    return bool(args.resume) and out.resolve() == Path(args.resume).parent.resolve()


def _check_out(args: argparse.Namespace) -> None:
    """Refuse an explicit ``--out`` that is a file (or lies under one) or that
    holds another run, before any data is loaded."""
    if args.out is None:
        return
    out = Path(args.out)
    for path in (out, *out.parents):
        if path.exists():
            if not path.is_dir():
                where = "is a file" if path == out else f"lies under {path}, a file"
                raise CommandError(f"--out {out} {where}; --out names the folder where the "
                                   "run's checkpoint, metrics and curves go")
            break
    if _continues_in_place(args, out):
        return  # the resumed run continues in its own folder
    held = [name for name in RUN_FILES if (out / name).exists()]
    if held and not args.overwrite:
        raise CommandError(f"--out {out} already holds a run ({', '.join(held)}); continue it "
                           f"with --resume {out / 'checkpoint.npz'}, replace it with "
                           "--overwrite, or choose another --out")


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist, deepest first."""
    return [p for p in (folder, *folder.parents) if not p.exists()]


def _output_folder(args: argparse.Namespace, default: str) -> tuple[Path, list[Path]]:
    """Create the run's folder: ``--out``, or the first of ``default``,
    ``default-2``, ... that does not exist yet. With ``--overwrite`` the files
    of the run it held are deleted first. Returns the folder and the folders
    this call created, deepest first (sets ``args.out``)."""
    if args.out is None and not args.overwrite:
        base = Path(default)
        for k in itertools.count(1):
            folder = base if k == 1 else base.with_name(f"{base.name}-{k}")
            created = _missing_folders(folder)
            try:
                folder.mkdir(parents=True)  # fails if it exists: two runs never share one
            except FileExistsError:
                continue
            except OSError as err:
                raise CommandError(f"cannot create the output folder {folder}: "
                                   f"{err.strerror or err}") from None
            if k > 1:
                print(f"note: {base} holds an earlier run; this run goes to {folder}/ "
                      "(choose the folder with --out, replace the earlier run with "
                      "--overwrite)", file=sys.stderr)
            args.out = str(folder)
            return folder, created
    out = Path(args.out if args.out is not None else default)
    args.out = str(out)
    created = _missing_folders(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CommandError(f"cannot create the output folder {out}: "
                           f"{err.strerror or err}") from None
    if args.overwrite and not _continues_in_place(args, out):
        removed = [name for name in RUN_FILES if (out / name).exists()]
        for name in removed:
            (out / name).unlink()
        if removed:
            print(f"note: --overwrite: deleted the earlier run's {', '.join(removed)} in "
                  f"{out}/", file=sys.stderr)
    return out, created


def _saved_epoch(path: Path) -> int | None:
    """The epoch the checkpoint at ``path`` holds (None: no readable checkpoint)."""
    from .checkpoint import CheckpointError, load_checkpoint

    try:
        return int(load_checkpoint(path)["epoch"])
    except CheckpointError:
        return None


def _fit(args: argparse.Namespace, model: Any, ds: dict[str, Any], params: Any,
         config: dict[str, Any], resume: tuple[str, int, int] | None, default_out: str) -> int:
    """Train ``model`` as ``config`` says into ``--out`` (default ``default_out``);
    ``resume`` is (checkpoint, epochs done, epochs planned when it was written)
    or None. The folders this call created are removed again if nothing was
    saved in them."""
    out, created = _output_folder(args, default_out)
    try:
        return _fit_into(out, args, model, ds, params, config, resume)
    finally:
        for folder in created:  # rmdir: only if empty; nothing saved, nothing left behind
            try:
                folder.rmdir()
            except OSError:
                break


def _is_image_folder(config: dict[str, Any], ds: dict[str, Any]) -> bool:
    """Whether the run's dataset is a folder of images (not digits or cifar10)."""
    return ds.get("folder") is not None and Path(config["dataset"]) == ds["folder"]


def _fit_into(out: Path, args: argparse.Namespace, model: Any, ds: dict[str, Any], params: Any,
              config: dict[str, Any], resume: tuple[str, int, int] | None) -> int:
    from . import backend
    from .nn import CrossEntropyLoss
    from .train import Trainer, TrainingDiverged

    epochs = config["epochs"]
    train, test = make_loaders(ds, config["batch_size"], config["seed"],
                               not config["no_augment"], config["mean"], config["std"])
    opt, sched = make_optimizer(params, config, epochs)
    trainer = Trainer(model, opt, train, test, scheduler=sched,
                      criterion=CrossEntropyLoss(config["label_smoothing"]), out_dir=out,
                      config=config, progress=not args.quiet and sys.stderr.isatty(),
                      log=not args.quiet)
    if resume is not None:
        path, done, planned = resume
        if planned == epochs:
            trainer.resume(path)
        else:  # a new length: the schedule continues as if planned for `epochs` from the start
            for _ in range(done):
                sched.step()
            lrs = [group["lr"] for group in opt.param_groups]
            trainer.resume(path, restore_scheduler=False)
            for group, lr in zip(opt.param_groups, lrs, strict=True):
                group["lr"] = lr
            print(f"note: {planned} epochs were planned, now {epochs}: the {config['schedule']} "
                  "schedule continues as planned for the new length", file=sys.stderr)
        print(f"resumed from {path} after epoch {trainer.epoch}")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    count = f"{model.num_parameters():,} parameters" + (
        f", {trainable:,} trainable" if trainable < model.num_parameters() else "") + (
        channels_note(model))
    folder = ds.get("folder")  # where cifar10 lies; a folder dataset's name is its path
    source = f" (from {folder})" if folder and not _is_image_folder(config, ds) else ""
    print(f"{config['model']} ({count}) on {config['dataset']}{source}: "
          f"{len(ds['train'][1])} train / {len(ds['test'][1])} test images, "
          f"{len(ds['classes'])} classes, backend {backend.name()}; writing to {out}/")
    stop = min(epochs, args.stop_after) if args.stop_after is not None else epochs
    if trainer.epoch >= stop:
        print(f"nothing to do: the checkpoint is at epoch {trainer.epoch} of {epochs}")
        return 0
    start = time.perf_counter()
    try:
        trainer.fit(stop)
    except TrainingDiverged as err:
        print(f"minires {config['command']}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        ckpt = out / "checkpoint.npz"
        saved = _saved_epoch(ckpt)  # what the file holds, whenever the Ctrl-C came
        if saved is None:
            print("\ninterrupted before the first epoch was saved; nothing to resume",
                  file=sys.stderr)
        else:
            print(f"\ninterrupted; the checkpoint holds epoch {saved} of {epochs}; continue "
                  f"with: minires {config['command']} --resume {ckpt}", file=sys.stderr)
        return 130
    final = trainer.history[-1]
    print(f"done in {time.perf_counter() - start:.1f} s: epoch {trainer.epoch} of {epochs}, "
          f"test accuracy {100 * final['test_acc']:.2f}% (error "
          f"{100 * (1 - final['test_acc']):.2f}%); wrote checkpoint.npz, metrics.csv, "
          f"metrics.json, curves.png to {out}/")
    if trainer.epoch < epochs:
        print(f"stopped early as asked; continue with: minires {config['command']} --resume "
              f"{out / 'checkpoint.npz'}")
    return 0


def _prepare(args: argparse.Namespace, command: str,
             channels: int | None = None) -> tuple[dict, dict, Any]:
    """Settings (from the command line or the resumed checkpoint), the dataset
    and the resume information (None for a fresh run). A folder of images is
    read with ``channels`` (1: grayscale, else RGB); a resumed run reads it
    with the channels its model takes."""
    from .nn import init

    if args.resume:
        settings, resume = _resumed_settings(args, command)
        channels = settings.get("in_channels")
        if args.out is None:
            args.out = str(Path(args.resume).parent)
    else:
        settings, resume = _settings(args, command), None
    init.manual_seed(settings["seed"])
    ds = load_dataset(settings["dataset"], settings["image_size"], settings["classes"],
                      settings["per_class"], settings["seed"], download=args.download,
                      progress=not args.quiet and sys.stderr.isatty(), channels=channels)
    config = {**settings, **_data_config(ds)}
    if resume is not None:  # the data's statistics as saved, so the inputs match exactly
        config.update({k: settings[k] for k in ("mean", "std") if k in settings})
    return config, ds, resume


def cmd_train(args: argparse.Namespace) -> int:
    """``minires train``: build a model and train it from scratch (or resume)."""
    if not args.resume:
        args.model = resolve_model_name(args.model, args.depth)
    _check_out(args)
    config, ds, resume = _prepare(args, "train")
    model = build_model(config)
    default_out = f"runs/{config['model']}-{Path(config['dataset']).name}"
    return _fit(args, model, ds, model.parameters(), config, resume, default_out)


def cmd_finetune(args: argparse.Namespace) -> int:
    """``minires finetune``: load pretrained weights, new head, freeze, train."""
    from .checkpoint import CheckpointError, load_checkpoint, load_state_dict_file
    from .finetune import (
        finetune_param_groups,
        freeze,
        input_channels,
        load_pretrained,
        read_weights,
        replace_head,
    )

    if not args.resume and not args.source:
        raise CommandError("--from is required (a checkpoint.npz, a weights .npz or a "
                           "PyTorch .pt state dict), unless resuming with --resume")
    if args.model is not None and not args.resume:
        args.model = resolve_model_name(args.model, args.depth)
    elif args.depth is not None and not args.resume:
        raise CommandError("--depth goes with --model (a family such as resnet); without "
                           "--model the checkpoint's architecture is used")
    if not args.resume:
        source = Path(args.source)
        if not source.exists():
            raise CommandError(f"--from {source}: no such file")
        if source.is_dir():
            raise CommandError(f"--from {source} is a folder; expected a checkpoint.npz, a "
                               "weights .npz or a PyTorch .pt/.pth file")
    _check_out(args)
    pre_config: dict[str, Any] = {}
    weights: dict[str, Any] = {}
    if not args.resume:  # the weights first: a folder of images is read to fit them
        if str(args.source).endswith(".npz"):
            try:
                pre_config = load_checkpoint(args.source)["config"] or {}
            except CheckpointError:
                load_state_dict_file(args.source)  # a weights-only file, or its own error
                pre_config = {}  # weights only: the model must be named
        if not (args.model or pre_config.get("model")):
            raise CommandError("--model is needed when --from holds bare weights")
        weights = read_weights(args.source)
    channels = input_channels(weights)
    config, ds, resume = _prepare(args, "finetune", channels)
    if resume is None:
        if _is_image_folder(config, ds):
            how = "grayscale (1 channel)" if config["in_channels"] == 1 else "RGB (3 channels)"
            if channels == config["in_channels"]:
                why = f", as the first convolution of {args.source} expects"
            elif channels:
                why = (f"; the first convolution of {args.source} takes {channels} channels, "
                       "so it starts from random weights")
            else:
                why = ""
            print(f"read the images of {config['dataset']} as {how}{why}")
        config["model"] = args.model or pre_config["model"]
        if pre_config.get("mean") and len(pre_config["mean"]) == config["in_channels"]:
            # keep the pretraining normalization: the backbone's features expect it
            config["mean"], config["std"] = pre_config["mean"], pre_config["std"]
        old_classes = pre_config.get("num_classes")
        model = build_model({**config, "num_classes": old_classes or config["num_classes"]})
        missing, unexpected = load_pretrained(model, weights)
        replace_head(model, config["num_classes"])
        shown = f" ({', '.join(missing)})" if 0 < len(missing) <= 4 else ""
        replaced = f" replaces the one for {old_classes}" if old_classes else ""
        print(f"loaded {args.source}: {len(missing)} missing{shown}, {len(unexpected)} "
              f"unexpected keys; a new head (fc) for {config['num_classes']} "
              f"classes{replaced}")
    else:
        model = build_model(config)  # the weights come from the checkpoint
    frozen: list[str] = []
    if config["freeze_backbone"]:
        frozen = freeze(model, except_prefixes=("fc.",))
    elif config["freeze"]:
        frozen = freeze(model, prefixes=[p.strip() for p in config["freeze"].split(",")
                                         if p.strip()])
    if frozen and resume is None:
        print(f"froze {len(frozen)} parameters ({frozen[0]} ... {frozen[-1]})")
    params = finetune_param_groups(model, lr=config["lr"], backbone_lr=config["backbone_lr"],
                                   weight_decay=config["weight_decay"])
    default_out = f"runs/finetune-{config['model']}-{Path(config['dataset']).name}"
    return _fit(args, model, ds, params, config, resume, default_out)


# ---- evaluate, gradcheck, models ---------------------------------------------------------

def cmd_evaluate(args: argparse.Namespace) -> int:
    """``minires evaluate CKPT``: loss and accuracy of a saved model."""
    from .checkpoint import load_checkpoint
    from .data import DataLoader, Normalize
    from .nn import CrossEntropyLoss
    from .train import evaluate

    ckpt = load_checkpoint(args.checkpoint)
    config = ckpt["config"] or {}
    if "model" not in config:
        raise CommandError(f"{args.checkpoint} has no model configuration (not written by "
                           "minires train or finetune)")
    dataset = args.dataset or config["dataset"]
    ds = load_dataset(dataset, config.get("image_size"), config.get("classes"),
                      config.get("per_class") if args.split == "train" else None,
                      config.get("seed", 0), download=args.download,
                      progress=sys.stderr.isatty(), channels=config.get("in_channels"))
    model = build_model(config)
    model.load_state_dict(ckpt["model_state"])
    x, y = ds[args.split]
    loader = DataLoader(x, y, EVAL_BATCH_SIZE, transform=Normalize(config["mean"], config["std"]))
    # the loss as training measured it (with its label smoothing), so it matches metrics.json
    smoothing = float(config.get("label_smoothing") or 0.0)
    result = evaluate(model, loader, CrossEntropyLoss(smoothing))
    result = {"checkpoint": str(args.checkpoint), "model": config["model"],
              "epoch": ckpt["epoch"], "dataset": dataset, "split": args.split,
              "label_smoothing": smoothing, **result}
    print(json.dumps(result) if args.json else
          f"{config['model']} after epoch {ckpt['epoch']} on {dataset} {args.split} "
          f"({result['images']} images): loss {result['loss']:.4f}"
          + (f" (label smoothing {smoothing:g})" if smoothing else "") + ", accuracy "
          f"{100 * result['acc']:.2f}% (error {100 * (1 - result['acc']):.2f}%)")
    return 0


def cmd_gradcheck(args: argparse.Namespace) -> int:
    """``minires gradcheck``: a table of relative errors, op by op and block by block."""
    from .selfcheck import run_all

    rows = run_all(quick=args.quick, seed=args.seed)
    width = max(len(name) for name, _, _ in rows)
    tw = max(len(tensor) for _, tensor, _ in rows)
    print(f"{'check':<{width}}  {'gradient of':<{tw}}  {'rel. error':>10}  result")
    failed = 0
    for name, tensor, err in rows:
        ok = err <= args.tol
        failed += not ok
        print(f"{name:<{width}}  {tensor:<{tw}}  {err:>10.2e}  {'ok' if ok else 'FAIL'}")
    print(f"{len(rows) - failed} of {len(rows)} gradients agree with centred finite "
          f"differences in float64 (tolerance {args.tol:.0e})")
    return 1 if failed else 0


def cmd_models(args: argparse.Namespace) -> int:
    """``minires models``: the names ``--model`` accepts; ``--count`` adds the
    parameters, for the input and classes they are counted with."""
    from .models import available_models, get_model

    if args.count:
        print(f"{'model':<18} {'parameters':>12}  input (C, H, W), classes")
    for name in available_models():
        if args.count:
            model = get_model(name)
            size = 224 if model.fc.out_features == 1000 else 32   # ImageNet or CIFAR
            print(f"{name:<18} {model.num_parameters():>12,}  "
                  f"({model.in_channels}, {size}, {size}), {model.fc.out_features}")
        else:
            print(name)
    if args.count:
        print("Counted as the papers do, for RGB input and 10 classes (CIFAR) or 1000\n"
              "(ImageNet). The image size does not change a count; the input's channels\n"
              "(the first convolution) and the classes (fc) do: on the 1-channel digits,\n"
              "resnet20 has 269,434. `model.summary(input_shape)` adds shapes and FLOPs.")
    return 0


# ---- the parser ------------------------------------------------------------------------

EPILOG_MAIN = """examples:
  minires train                           # ResNet-20 on the bundled digits, ~30 s
  minires evaluate runs/resnet20-digits/checkpoint.npz
  minires gradcheck --quick
  minires <command> --help                # options and examples of each command
"""

EPILOG_TRAIN = """examples:
  minires train                                  # ResNet-20 on the bundled digits
  minires train --seed 1                         # a 2nd run: runs/resnet20-digits-2
  minires train --model plain --depth 20 --out runs/plain20
  minires train --model resnet --depth 32 --epochs 20 --seed 1
  minires train --model resnext29_digits         # a small ResNeXt-29: ~98%, < 1 min
  minires train --dataset cifar10 --download --epochs 164 --batch-size 128 \\
                --schedule multistep --milestones 82,123   # the paper's recipe
  minires train --dataset path/to/images --image-size 32 --model resnet8
  minires train --epochs 15 --stop-after 5 --out runs/a  # stop after epoch 5 ...
  minires train --resume runs/a/checkpoint.npz           # ... and continue to 15
"""

EPILOG_FINETUNE = """examples:
  minires train --classes 0,1,2,3,4 --out runs/pretrain
  minires finetune --from runs/pretrain/checkpoint.npz --classes 5,6,7,8,9 \\
                   --per-class 10 --batch-size 10 --epochs 30 --out runs/finetune
  minires finetune --from runs/pretrain/checkpoint.npz --classes 5,6,7,8,9 \\
                   --freeze-backbone --out runs/frozen   # train the new head only
  minires finetune --from resnet18.pt --model resnet18 --dataset my_photos/ \\
                   --image-size 64 --freeze conv1,bn1,layer1
  minires finetune --resume runs/finetune/checkpoint.npz --epochs 40
"""

EPILOG_EVALUATE = """examples:
  minires evaluate runs/resnet20-digits/checkpoint.npz
  minires evaluate runs/resnet20-digits/checkpoint.npz --split train --json
"""

EPILOG_GRADCHECK = """examples:
  minires gradcheck --quick        # ops and one block of each kind, a few seconds
  minires gradcheck                # every block in train and eval mode, and a ResNet-8
"""

EPILOG_MODELS = """examples:
  minires models
  minires models --count
"""


def _add_backend(p: argparse.ArgumentParser, top: bool = False) -> None:
    # On the main parser and on each command; a command's copy does not
    # override the main one's value unless given (default SUPPRESS).
    p.add_argument("--backend", choices=["numpy", "cupy"],
                   default=None if top else argparse.SUPPRESS,
                   help="array backend (default: $MINIRES_BACKEND or numpy)")
    p.add_argument("--threads", type=int, default=None if top else argparse.SUPPRESS,
                   help="CPU threads (default: the usable cores, or $MINIRES_THREADS); "
                        "BLAS runs on one thread")


def _training_options(p: argparse.ArgumentParser, finetune: bool = False) -> None:
    d = TRAIN_DEFAULTS
    p.add_argument("--model", default=None,
                   help="a family (resnet, plain, preact_resnet) with --depth, or a full "
                        "name: resnet20, plain56, preact_resnet110, wrn16_4, resnet18 "
                        "(`minires models` lists them); default "
                        + ("the checkpoint's" if finetune else f"{d['model']}"))
    p.add_argument("--depth", type=int, default=None,
                   help="depth of a model family: 6n+2 for resnet/plain/preact_resnet "
                        "(8, 14, 20, 32, 44, 56, 110, ...); 18, 34, 50, 101, 152 give "
                        "torchvision's ImageNet ResNets; default "
                        + ("the checkpoint's" if finetune else f"{d['depth']}"))
    p.add_argument("--dataset", default=d["dataset"],
                   help="digits (bundled), cifar10 (kept in the data folder: "
                        f"{DATA_FOLDER_RULE}; --download fetches it), or a folder "
                        "root/<class>/*.png; default %(default)s")
    p.add_argument("--download", action="store_true",
                   help="download CIFAR-10 (170 MB, MD5-checked) into the data folder if it "
                        "is not there")
    p.add_argument("--classes", default=None,
                   help="comma-separated class indices to keep, relabelled 0..k-1")
    p.add_argument("--per-class", type=int, default=None,
                   help="use at most this many training images per class")
    p.add_argument("--image-size", type=int, default=None,
                   help="resize the images of a folder dataset to this size (default 32)")
    p.add_argument("--epochs", type=int, default=None,
                   help=f"epochs in all (default {d['epochs']}; when resuming, the run's)")
    p.add_argument("--stop-after", type=int, default=None, metavar="K",
                   help="stop after epoch K of the planned --epochs (the schedule keeps "
                        "its length); continue later with --resume")
    p.add_argument("--batch-size", type=int, default=d["batch_size"],
                   help="default %(default)s")
    p.add_argument("--lr", type=float,
                   default=FINETUNE_DEFAULTS["lr"] if finetune else d["lr"],
                   help=("learning rate of the new head" if finetune else "learning rate")
                        + "; default %(default)s")
    p.add_argument("--momentum", type=float, default=d["momentum"],
                   help="Nesterov momentum (0: plain SGD); default %(default)s")
    p.add_argument("--no-nesterov", action="store_true",
                   help="classical momentum instead of Nesterov's (He et al. 2015 used "
                        "classical momentum 0.9)")
    p.add_argument("--weight-decay", type=float, default=d["weight_decay"],
                   help="default %(default)s")
    p.add_argument("--schedule", choices=["cosine", "multistep", "constant"],
                   default=d["schedule"], help="per-epoch schedule; default %(default)s")
    p.add_argument("--milestones", default=None,
                   help="epochs at which multistep divides the lr by 10 (default: 50%%, 75%%)")
    p.add_argument("--warmup", type=int, default=d["warmup"],
                   help="epochs of linear warm-up from lr/10; default %(default)s")
    p.add_argument("--label-smoothing", type=float, default=d["label_smoothing"],
                   help="default %(default)s")
    p.add_argument("--no-augment", action="store_true", help="no random crops or flips")
    p.add_argument("--seed", type=int, default=d["seed"],
                   help="seeds the weights, the shuffling and the augmentation; "
                        "default %(default)s")
    p.add_argument("--resume", default=None, metavar="CKPT",
                   help="continue the run saved in this checkpoint.npz, with its settings")
    p.add_argument("--out", default=None,
                   help="output folder (default: the first of runs/<model>-<dataset>, "
                        "runs/<model>-<dataset>-2, ... that does not exist yet; when "
                        "resuming, the checkpoint's folder); one that holds a run is refused")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run in --out (its checkpoint, metrics and curves are "
                        "deleted before training starts)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    _add_backend(p)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``minires`` command and its subcommands."""
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="minires", epilog=EPILOG_MAIN, formatter_class=raw,
        description="Residual networks built by hand: train, evaluate, fine-tune and "
                    "gradient-check them.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"minires {__version__}")
    _add_backend(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a network (no options: ResNet-20 on the digits)",
                       epilog=EPILOG_TRAIN, formatter_class=raw,
                       description="Train a model with SGD; after every epoch write "
                                   "checkpoint.npz, metrics.csv and metrics.json to the "
                                   "output folder, and curves.png at the end.")
    _training_options(p)
    p.set_defaults(func=cmd_train, parser=p)

    p = sub.add_parser("evaluate", help="loss and accuracy of a checkpoint",
                       epilog=EPILOG_EVALUATE, formatter_class=raw,
                       description="Evaluate a saved model on its dataset's test (or train) "
                                   "split, in eval mode.")
    p.add_argument("checkpoint", help="a checkpoint.npz written by minires train/finetune")
    p.add_argument("--dataset", default=None, help="default: the one it was trained on")
    p.add_argument("--download", action="store_true",
                   help="download CIFAR-10 into the data folder if it is not there")
    p.add_argument("--split", choices=["train", "test"], default="test",
                   help="default %(default)s")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    _add_backend(p)
    p.set_defaults(func=cmd_evaluate, parser=p)

    p = sub.add_parser("finetune", help="fine-tune a trained model on new classes or data",
                       epilog=EPILOG_FINETUNE, formatter_class=raw,
                       description="Load pretrained weights (a minires checkpoint or "
                                   "weights file, or a torchvision-layout PyTorch state "
                                   "dict), put a new classifier head for the new classes, "
                                   "optionally freeze layers, and train: the head at --lr, "
                                   "the pretrained layers at --backbone-lr. A folder of "
                                   "images is read in grayscale or in RGB, as the pretrained "
                                   "first convolution takes them.")
    p.add_argument("--from", dest="source", default=None, metavar="WEIGHTS",
                   help="checkpoint.npz, a minires weights .npz, or a PyTorch .pt/.pth "
                        "state dict (torchvision names)")
    p.add_argument("--backbone-lr", type=float, default=FINETUNE_DEFAULTS["backbone_lr"],
                   help="learning rate of the pretrained layers; default %(default)s")
    p.add_argument("--freeze-backbone", action="store_true",
                   help="train only the new classifier head (fc)")
    p.add_argument("--freeze", default=None, metavar="PREFIXES",
                   help="freeze the parameters whose names start with one of these "
                        "comma-separated prefixes, e.g. conv1,bn1,layer1")
    _training_options(p, finetune=True)
    p.set_defaults(func=cmd_finetune, parser=p)

    p = sub.add_parser("gradcheck", help="check every backward pass against finite "
                       "differences (a first sanity check of an install)",
                       epilog=EPILOG_GRADCHECK, formatter_class=raw,
                       description="Print the largest relative error between each "
                                   "hand-written gradient and centred finite differences "
                                   "(float64, random upstream gradient), op by op and "
                                   "block by block; exit code 1 if one exceeds --tol.")
    p.add_argument("--quick", action="store_true",
                   help="ops and one block of each kind in training mode only")
    p.add_argument("--tol", type=float, default=1e-6, help="default %(default)s")
    p.add_argument("--seed", type=int, default=0, help="default %(default)s")
    p.set_defaults(func=cmd_gradcheck, parser=p)

    p = sub.add_parser("models", help="list the model names", epilog=EPILOG_MODELS,
                       formatter_class=raw,
                       description="The model names --model accepts, at the papers' depths.")
    p.add_argument("--count", action="store_true", help="also count parameters")
    p.set_defaults(func=cmd_models, parser=p)
    return parser


_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def limit_threads(threads: int | None) -> contextlib.AbstractContextManager:
    """Run a command on ``threads`` CPU threads, with BLAS on one thread.

    minires splits each convolution's images, and batch norm's and ReLU's
    channels, over its own threads (``minires.fast.parallel``); BLAS then runs one
    thread per call, because the matrices of a CIFAR-style ResNet are too
    small to share out (a ResNet-20 epoch on the digits took 1.8 s with one
    BLAS thread and 11 to 32 s with two, on two cores shared with other
    work: waiting BLAS threads spin and stall each other; minires's threads
    wait without spinning).

    ``None`` means the usable cores, unless ``MINIRES_THREADS`` is set (then
    it is left alone; a value that is not a positive integer is a
    ``UsageError``). Before NumPy is imported (the ``minires`` command)
    this sets ``MINIRES_THREADS`` and the environment variables the BLAS
    reads at load time; afterwards (``main`` called from Python) it sets
    them through ``minires.fast.parallel`` and ``threadpoolctl`` for the
    command's duration. Returns a context manager.
    """
    if threads is None:
        if env_threads() is not None:  # a bad value is a UsageError naming the variable
            return contextlib.nullcontext()
        threads = len(os.sched_getaffinity(0))
    if threads < 1:
        raise UsageError(f"--threads must be a positive integer, got {threads}")
    if "numpy" not in sys.modules:
        os.environ["MINIRES_THREADS"] = str(threads)
        for v in _THREAD_VARIABLES:
            os.environ[v] = "1"
        return contextlib.nullcontext()
    return _threads_while_running(threads)


@contextlib.contextmanager
def _threads_while_running(threads: int):
    from threadpoolctl import threadpool_limits

    from .fast import parallel

    before = parallel.threads()
    parallel.set_threads(threads)     # first: set_threads(1) hands BLAS its threads back
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
    finally:
        parallel.set_threads(before)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``minires`` command with ``argv`` (default ``sys.argv[1:]``);
    returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        check_options(args)
        threads = limit_threads(args.threads)
    except CommandError as err:
        print(f"minires {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    with threads:
        try:
            return _run(args)
        except BrokenPipeError:  # output piped into `head` and cut off: not an error
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (flushed at exit, silently)
            return 0


def _run(args: argparse.Namespace) -> int:
    from . import backend
    from .checkpoint import CheckpointError
    from .data import CifarError

    try:
        if args.backend:
            backend.use(args.backend)
        return int(args.func(args) or 0)
    except CommandError as err:
        print(f"minires {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except (CheckpointError, CifarError, backend.BackendError, ValueError,
            FileNotFoundError, KeyError, ImportError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"minires {args.command}: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
