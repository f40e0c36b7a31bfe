"""Fine-tuning with ten labelled images per class, against training from scratch.

1. Pretrain `minires train`'s default ResNet on the digits 0-4 (all their
   training images).
2. For each seed, draw 10 training images of each of the digits 5-9 (50 in
   all) and train three ways, with the same number of epochs and batches:

   - ``finetune``: `minires finetune --from pretrain`: new 5-class head at
     ``--lr``, the pretrained backbone at the lower ``--backbone-lr`` (a tenth);
   - ``finetune_mid``: the same with the backbone at ``--mid-backbone-lr``;
   - ``frozen``: the same with ``--freeze-backbone`` (only the head learns);
   - ``scratch``: `minires train` on the same 50 images, from random weights.

3. Report each one's test accuracy on all test images of the digits 5-9.

Everything goes through the `minires` command (``minires.cli.main``, in this
process). Usage::

    python benchmarks/finetune_demo.py                 # seeds 0-4, ~4 minutes
    python benchmarks/finetune_demo.py --seeds 0 --epochs 20

Writes ``benchmarks/results/finetune_demo.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from minires import cli

RESULTS = Path(__file__).resolve().parent / "results" / "finetune_demo.json"
OLD, NEW = "0,1,2,3,4", "5,6,7,8,9"


def minires(*argv: object) -> None:
    """Run one `minires` command in this process; stop on failure."""
    argv = [str(a) for a in argv]
    code = cli.main(argv)
    if code != 0:
        raise SystemExit(f"`minires {' '.join(argv)}` failed with exit code {code}")


def final_accuracy(folder: Path) -> dict:
    history = json.loads((folder / "metrics.json").read_text())
    return {"test_acc": history[-1]["test_acc"],
            "best_test_acc": max(r["test_acc"] for r in history),
            "train_acc": history[-1]["train_acc"], "seconds": history[-1]["wall_s"],
            "test_acc_by_epoch": [round(r["test_acc"], 4) for r in history]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--per-class", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=30,
                        help="epochs of every few-shot run (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.05, help="head (and scratch) lr")
    parser.add_argument("--backbone-lr", type=float, default=0.005)
    parser.add_argument("--mid-backbone-lr", type=float, default=0.02,
                        help="backbone lr of the finetune_mid variant")
    parser.add_argument("--frozen-lr", type=float, default=0.1, help="head lr, frozen backbone")
    parser.add_argument("--scratch-lr", type=float, default=0.05)
    parser.add_argument("--pretrain-epochs", type=int, default=None,
                        help="default: minires train's default")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    few = ["--classes", NEW, "--per-class", args.per_class, "--batch-size", args.batch_size,
           "--epochs", args.epochs, "--quiet"]
    with tempfile.TemporaryDirectory(prefix="finetune_demo_") as tmp:
        root = Path(tmp)
        pre = root / "pretrain"
        extra = ["--epochs", args.pretrain_epochs] if args.pretrain_epochs else []
        minires("train", "--classes", OLD, "--out", pre, "--quiet", *extra)
        pretrain = final_accuracy(pre)
        print(f"pretrained on digits {OLD}: test accuracy {100 * pretrain['test_acc']:.2f}%")
        runs = []
        for seed in args.seeds:
            ckpt = pre / "checkpoint.npz"
            variants = {
                "finetune": ["finetune", "--from", ckpt, "--lr", args.lr,
                             "--backbone-lr", args.backbone_lr],
                "finetune_mid": ["finetune", "--from", ckpt, "--lr", args.lr,
                                 "--backbone-lr", args.mid_backbone_lr],
                "frozen": ["finetune", "--from", ckpt, "--lr", args.frozen_lr,
                           "--freeze-backbone"],
                "scratch": ["train", "--lr", args.scratch_lr],
            }
            for name, command in variants.items():
                out = root / f"{name}-{seed}"
                minires(*command, *few, "--seed", seed, "--out", out)
                result = {"variant": name, "seed": seed, **final_accuracy(out)}
                runs.append(result)
                print(f"seed {seed} {name:<8} test accuracy on digits {NEW}: "
                      f"{100 * result['test_acc']:.2f}%")
    summary = {}
    for name in ("finetune", "finetune_mid", "frozen", "scratch"):
        chosen = [r for r in runs if r["variant"] == name]
        accs = [r["test_acc"] for r in chosen]
        summary[name] = {"mean_test_acc": statistics.fmean(accs),
                         "min_test_acc": min(accs), "max_test_acc": max(accs)}
        for epoch in sorted({5, 10, args.epochs} & set(range(1, args.epochs + 1))):
            summary[name][f"mean_test_acc_epoch_{epoch}"] = statistics.fmean(
                r["test_acc_by_epoch"][epoch - 1] for r in chosen)
    report = {
        "what": f"pretrain on digits {OLD} (all training images), then learn digits {NEW} "
                f"from {args.per_class} labelled images per class; test accuracy on all test "
                f"images of {NEW}, after the last epoch",
        "pretrain": {"classes": OLD, "model": cli.resolve_model_name(None, None), **pretrain},
        "settings": {"epochs": args.epochs, "batch_size": args.batch_size,
                     "per_class": args.per_class, "head_lr": args.lr,
                     "backbone_lr": args.backbone_lr, "scratch_lr": args.scratch_lr,
                     "seeds": args.seeds},
        "summary": summary,
        "runs": runs,
        "seconds": time.perf_counter() - start,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": sys.version.split()[0]},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    for name, s in summary.items():
        print(f"{name:<8} mean {100 * s['mean_test_acc']:.2f}% (min "
              f"{100 * s['min_test_acc']:.2f}%, max {100 * s['max_test_acc']:.2f}%)")
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
