"""The ``minires`` command: train, evaluate, finetune, gradcheck, models.

Run ``minires <command> --help`` for every option and examples.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import backend

# `minires train` with no arguments: a CIFAR-style ResNet on the bundled digits.
# Chosen to reach >= 98% test accuracy in about a minute on two CPU cores
# (benchmarks/train_digits.py measures it).
TRAIN_DEFAULTS: dict[str, Any] = {
    "model": "resnet20", "dataset": "digits", "epochs": 15, "batch_size": 64, "lr": 0.1,
    "momentum": 0.9, "weight_decay": 5e-4, "schedule": "cosine", "warmup": 0,
    "label_smoothing": 0.0, "seed": 0,
}

EPILOG_TRAIN = """examples:
  minires train                                  # ResNet-20 on the bundled digits
  minires train --model plain20 --out runs/plain20
  minires train --dataset cifar10 --epochs 164 --batch-size 128 --schedule multistep \\
                --milestones 82,123 --weight-decay 1e-4     # the paper's recipe
  minires train --dataset path/to/images --image-size 32 --model resnet8
  minires train --resume runs/resnet20-digits/checkpoint.npz --epochs 30
"""

EPILOG_FINETUNE = """examples:
  minires train --classes 0,1,2,3,4 --out runs/pretrain
  minires finetune --from runs/pretrain/checkpoint.npz --classes 5,6,7,8,9 \\
                   --per-class 10 --out runs/finetune
  minires finetune --from resnet18.pt --dataset my_photos/ --image-size 64 --freeze-backbone
"""


# ---- data ------------------------------------------------------------------------

def _parse_ints(text: str | None) -> list[int] | None:
    if text is None or text == "":
        return None
    return [int(t) for t in str(text).split(",") if t.strip()]


def _select(images: np.ndarray, labels: np.ndarray, classes: Sequence[int] | None,
            per_class: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep the listed classes (relabelled 0..k-1 in the order given), and at
    most ``per_class`` randomly chosen (seeded) images of each."""
    if classes is not None:
        keep = np.isin(labels, classes)
        images, labels = images[keep], labels[keep]
        lookup = {c: i for i, c in enumerate(classes)}
        labels = np.array([lookup[int(c)] for c in labels], dtype=np.int64)
    if per_class is not None:
        rng = np.random.default_rng([seed, 1])
        idx = np.concatenate([np.sort(rng.permutation(np.flatnonzero(labels == c))[:per_class])
                              for c in np.unique(labels)])
        images, labels = images[np.sort(idx)], labels[np.sort(idx)]
    return images, labels


def load_dataset(name: str, image_size: int | None = None, classes: Sequence[int] | None = None,
                 per_class: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Train and test arrays (host NumPy), class names, and the augmentation
    that suits the data (digits are not mirror-symmetric: no flips)."""
    from . import data

    if name == "digits":
        (xtr, ytr), (xte, yte) = data.load_digits("train"), data.load_digits("test")
        names = list(data.DIGITS_CLASSES)
        crop_pad, flip = 1, False
    elif name == "cifar10":
        (xtr, ytr), (xte, yte) = data.load_cifar10("train"), data.load_cifar10("test")
        names = list(data.CIFAR10_CLASSES)
        crop_pad, flip = 4, True
    elif Path(name).is_dir():
        images, labels, names = data.load_image_folder(name, size=image_size or 32)
        train_idx, test_idx = data.stratified_split(labels, test_fraction=0.2, seed=seed)
        xtr, ytr, xte, yte = images[train_idx], labels[train_idx], images[test_idx], labels[
            test_idx]
        crop_pad, flip = max(1, xtr.shape[-1] // 8), True
    else:
        raise SystemExit(f"minires: unknown dataset {name!r}; expected 'digits', 'cifar10' "
                         "or a folder of class sub-folders")
    if classes is not None:
        names = [names[c] for c in classes]
    xtr, ytr = _select(xtr, ytr, classes, per_class, seed)
    xte, yte = _select(xte, yte, classes, None, seed)
    return {"train": (xtr, ytr), "test": (xte, yte), "classes": names,
            "crop_pad": crop_pad, "flip": flip}


def make_loaders(ds: dict[str, Any], batch_size: int, seed: int, augment: bool,
                 mean: Sequence[float], std: Sequence[float]):
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
    test = DataLoader(xte, yte, max(batch_size, 256), transform=norm)
    return train, test


# ---- optimization ------------------------------------------------------------------

def make_optimizer(params: Any, args: argparse.Namespace, steps_per_epoch: int):
    """SGD with momentum (the paper's) and the chosen per-epoch schedule."""
    from . import optim

    opt = optim.SGD(params, lr=args.lr, momentum=args.momentum,
                    weight_decay=args.weight_decay, nesterov=args.momentum > 0)
    if args.schedule == "cosine":
        main = optim.CosineAnnealingLR(opt, T_max=max(1, args.epochs - args.warmup))
    elif args.schedule == "multistep":
        milestones = _parse_ints(args.milestones) or [args.epochs // 2, args.epochs * 3 // 4]
        main = optim.MultiStepLR(opt, [max(0, m - args.warmup) for m in milestones], gamma=0.1)
    else:
        main = optim.ConstantLR(opt, factor=1.0, total_iters=0)
    if args.warmup > 0:
        warm = optim.LinearLR(opt, start_factor=0.1, total_iters=args.warmup)
        return opt, optim.SequentialLR(opt, [warm, main], milestones=[args.warmup])
    return opt, main


# ---- commands ----------------------------------------------------------------------

def _build_model(config: dict[str, Any]):
    from .models import get_model

    return get_model(config["model"], in_channels=config["in_channels"],
                     num_classes=config["num_classes"])


def _fit(args: argparse.Namespace, model: Any, ds: dict[str, Any], params: Any,
         config: dict[str, Any], resume: str | None) -> int:
    from .train import Trainer, TrainingDiverged

    train, test = make_loaders(ds, args.batch_size, args.seed, not args.no_augment,
                               config["mean"], config["std"])
    opt, sched = make_optimizer(params, args, len(train))
    out = Path(args.out)
    trainer = Trainer(model, opt, train, test, scheduler=sched, out_dir=out, config=config,
                      progress=not args.quiet and sys.stderr.isatty(), log=not args.quiet)
    if resume:
        trainer.resume(resume)
        print(f"resumed from {resume} after epoch {trainer.epoch}")
    n_params = model.num_parameters()
    print(f"{config['model']} ({n_params:,} parameters) on {config['dataset']}: "
          f"{len(ds['train'][1])} train / {len(ds['test'][1])} test images, "
          f"{len(ds['classes'])} classes, backend {backend.name()}; writing to {out}/")
    start = time.perf_counter()
    try:
        trainer.fit(args.epochs)
    except TrainingDiverged as err:
        print(f"minires: {err}", file=sys.stderr)
        return 2
    final = trainer.history[-1] if trainer.history else {}
    if "test_acc" in final:
        print(f"done in {time.perf_counter() - start:.1f} s: test accuracy "
              f"{100 * final['test_acc']:.2f}% (error {100 * (1 - final['test_acc']):.2f}%); "
              f"checkpoint {out / 'checkpoint.npz'}, metrics {out / 'metrics.csv'}, "
              f"curves {out / 'curves.png'}")
    return 0


def _data_config(args: argparse.Namespace, ds: dict[str, Any]) -> dict[str, Any]:
    from .data import channel_stats

    mean, std = channel_stats(ds["train"][0])
    return {"dataset": args.dataset, "classes": _parse_ints(args.classes),
            "image_size": args.image_size, "in_channels": int(ds["train"][0].shape[1]),
            "num_classes": len(ds["classes"]), "class_names": ds["classes"],
            "mean": [float(m) for m in mean], "std": [float(s) for s in std]}


def cmd_train(args: argparse.Namespace) -> int:
    from .checkpoint import load_checkpoint
    from .nn import init

    if args.resume:  # continue with the saved run's model, data and settings
        saved = load_checkpoint(args.resume)["config"]
        for key in ("model", "dataset", "classes", "per_class", "image_size", "seed",
                    "batch_size", "lr", "momentum", "weight_decay", "schedule", "milestones",
                    "warmup", "label_smoothing", "no_augment"):
            if key in saved:
                setattr(args, key, saved[key] if key != "classes" else
                        ",".join(map(str, saved[key])) if saved[key] else None)
    init.manual_seed(args.seed)
    ds = load_dataset(args.dataset, args.image_size, _parse_ints(args.classes),
                      args.per_class, args.seed)
    config = {**_data_config(args, ds), "model": args.model, "per_class": args.per_class,
              **{k: getattr(args, k) for k in ("seed", "batch_size", "lr", "momentum",
                                                "weight_decay", "schedule", "milestones",
                                                "warmup", "label_smoothing", "no_augment",
                                                "epochs")}}
    model = _build_model(config)
    if args.out is None:
        args.out = f"runs/{args.model}-{Path(args.dataset).name}"
    return _fit(args, model, ds, model.parameters(), config, args.resume)


def cmd_finetune(args: argparse.Namespace) -> int:
    from .checkpoint import CheckpointError, load_checkpoint
    from .finetune import finetune_param_groups, freeze, load_pretrained, replace_head
    from .nn import init

    init.manual_seed(args.seed)
    ds = load_dataset(args.dataset, args.image_size, _parse_ints(args.classes),
                      args.per_class, args.seed)
    config = {**_data_config(args, ds), "per_class": args.per_class, "finetuned_from":
              str(args.source), **{k: getattr(args, k) for k in (
                  "seed", "batch_size", "lr", "backbone_lr", "momentum", "weight_decay",
                  "schedule", "milestones", "warmup", "no_augment", "epochs")}}
    pre_config: dict[str, Any] = {}
    if str(args.source).endswith(".npz"):
        try:
            pre_config = load_checkpoint(args.source)["config"] or {}
        except CheckpointError:
            pre_config = {}  # a weights-only file: the model must be named
    config["model"] = args.model or pre_config.get("model")
    if not config["model"]:
        raise SystemExit("minires finetune: --model is needed when --from holds bare weights")
    if pre_config.get("mean") and len(pre_config["mean"]) == config["in_channels"]:
        # keep the pretraining normalization: the backbone's features expect it
        config["mean"], config["std"] = pre_config["mean"], pre_config["std"]
    model = _build_model({**config, "num_classes": pre_config.get("num_classes",
                                                                  config["num_classes"])})
    missing, unexpected = load_pretrained(model, args.source)
    replace_head(model, config["num_classes"])
    print(f"loaded {args.source}: {len(missing)} missing, {len(unexpected)} unexpected keys; "
          f"new head for {config['num_classes']} classes")
    if args.freeze_backbone:
        frozen = freeze(model, except_prefixes=("fc.",))
        print(f"froze {len(frozen)} backbone parameters")
    params = finetune_param_groups(model, lr=args.lr, backbone_lr=args.backbone_lr,
                                   weight_decay=args.weight_decay)
    if args.out is None:
        args.out = f"runs/finetune-{config['model']}-{Path(args.dataset).name}"
    return _fit(args, model, ds, params, config, None)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .checkpoint import load_checkpoint
    from .data import DataLoader, Normalize
    from .train import Trainer

    ckpt = load_checkpoint(args.checkpoint)
    config = ckpt["config"] or {}
    if "model" not in config:
        raise SystemExit(f"minires evaluate: {args.checkpoint} has no model configuration")
    dataset = args.dataset or config["dataset"]
    ds = load_dataset(dataset, config.get("image_size"), config.get("classes"), None,
                      config.get("seed", 0))
    model = _build_model(config)
    model.load_state_dict(ckpt["model_state"])
    x, y = ds[args.split]
    loader = DataLoader(x, y, 256, transform=Normalize(config["mean"], config["std"]))
    result = Trainer(model, optimizer=None, train_loader=[], progress=False).evaluate(loader)
    result = {"checkpoint": str(args.checkpoint), "epoch": ckpt["epoch"], "dataset": dataset,
              "split": args.split, "images": len(y), **result}
    print(json.dumps(result) if args.json else
          f"{config['model']} after epoch {ckpt['epoch']} on {dataset} {args.split} "
          f"({len(y)} images): loss {result['loss']:.4f}, accuracy "
          f"{100 * result['acc']:.2f}%")
    return 0


def cmd_gradcheck(args: argparse.Namespace) -> int:
    from .selfcheck import run_all

    rows = run_all(quick=args.quick, seed=args.seed)
    width = max(len(name) for name, _, _ in rows)
    tw = max(len(tensor) for _, tensor, _ in rows)
    print(f"{'check':<{width}}  {'tensor':<{tw}}  {'rel. error':>10}  result")
    failed = 0
    for name, tensor, err in rows:
        ok = err <= args.tol
        failed += not ok
        print(f"{name:<{width}}  {tensor:<{tw}}  {err:>10.2e}  {'ok' if ok else 'FAIL'}")
    print(f"{len(rows) - failed} of {len(rows)} gradients agree with finite differences "
          f"(tolerance {args.tol:.0e})")
    return 1 if failed else 0


def cmd_models(args: argparse.Namespace) -> int:
    from .models import available_models, get_model

    for name in available_models():
        if args.count:
            print(f"{name:<18} {get_model(name).num_parameters():>12,}")
        else:
            print(name)
    return 0


# ---- the parser ----------------------------------------------------------------------

def _training_options(p: argparse.ArgumentParser, finetune: bool = False) -> None:
    d = TRAIN_DEFAULTS
    p.add_argument("--dataset", default="digits",
                   help="digits (bundled), cifar10 (archive in data/ or $MINIRES_DATA), "
                        "or a folder root/<class>/*.png (default: digits)")
    p.add_argument("--classes", default=None,
                   help="comma-separated class indices to keep, relabelled 0..k-1")
    p.add_argument("--per-class", type=int, default=None,
                   help="use at most this many training images per class")
    p.add_argument("--image-size", type=int, default=None,
                   help="resize image-folder images to this size (default 32)")
    p.add_argument("--epochs", type=int, default=d["epochs"], help="default %(default)s")
    p.add_argument("--batch-size", type=int, default=d["batch_size"],
                   help="default %(default)s")
    p.add_argument("--lr", type=float, default=0.05 if finetune else d["lr"],
                   help="learning rate (of the head, when fine-tuning); default %(default)s")
    p.add_argument("--momentum", type=float, default=d["momentum"], help="default %(default)s")
    p.add_argument("--weight-decay", type=float, default=d["weight_decay"],
                   help="default %(default)s")
    p.add_argument("--schedule", choices=["cosine", "multistep", "constant"],
                   default=d["schedule"], help="per-epoch schedule; default %(default)s")
    p.add_argument("--milestones", default=None,
                   help="epochs at which multistep divides the lr by 10 (default: 50%%, 75%%)")
    p.add_argument("--warmup", type=int, default=d["warmup"],
                   help="epochs of linear warm-up from lr/10; default %(default)s")
    p.add_argument("--label-smoothing", type=float, default=d["label_smoothing"])
    p.add_argument("--no-augment", action="store_true",
                   help="no random crops or flips")
    p.add_argument("--seed", type=int, default=d["seed"],
                   help="seeds weights, shuffling and augmentation; default %(default)s")
    p.add_argument("--out", default=None, help="output folder (default runs/<model>-<dataset>)")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minires", description="Residual networks built by hand: train, evaluate, "
        "fine-tune and gradient-check them.")
    parser.add_argument("--backend", choices=["numpy", "cupy"], default=None,
                        help="array backend (default: $MINIRES_BACKEND or numpy)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a network", epilog=EPILOG_TRAIN,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Train a model; writes checkpoint.npz, metrics.csv, "
                                   "metrics.json and curves.png to the output folder.")
    p.add_argument("--model", default=TRAIN_DEFAULTS["model"],
                   help="resnet20, plain20, preact_resnet20, resnet18, ... "
                        "(`minires models` lists them); default %(default)s")
    p.add_argument("--resume", default=None, help="continue the run saved in this checkpoint")
    _training_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a checkpoint",
                       epilog="example:\n  minires evaluate runs/resnet20-digits/checkpoint.npz",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a checkpoint.npz written by minires train/finetune")
    p.add_argument("--dataset", default=None, help="default: the one it was trained on")
    p.add_argument("--split", choices=["train", "test"], default="test")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("finetune", help="fine-tune a trained model on new classes or data",
                       epilog=EPILOG_FINETUNE,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from", dest="source", required=True,
                   help="checkpoint.npz, a minires weights .npz, or a PyTorch .pt state dict")
    p.add_argument("--model", default=None,
                   help="architecture (default: the one saved in the checkpoint)")
    p.add_argument("--backbone-lr", type=float, default=0.005,
                   help="learning rate of the pretrained layers; default %(default)s")
    p.add_argument("--freeze-backbone", action="store_true",
                   help="train only the new classifier head")
    _training_options(p, finetune=True)
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("gradcheck", help="check every backward pass against finite "
                       "differences (a first sanity check of an install)",
                       epilog="example:\n  minires gradcheck --quick",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="ops and one block of each kind only")
    p.add_argument("--tol", type=float, default=1e-6, help="default %(default)s")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_gradcheck)

    p = sub.add_parser("models", help="list the model names")
    p.add_argument("--count", action="store_true", help="also count parameters")
    p.set_defaults(func=cmd_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.backend:
        backend.use(args.backend)
    try:
        return int(args.func(args) or 0)
    except (backend.BackendError, ValueError, FileNotFoundError, KeyError) as err:
        print(f"minires {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
