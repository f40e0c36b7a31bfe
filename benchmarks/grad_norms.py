"""Gradient norms at initialization: plain versus residual CIFAR networks.

He et al. (2015), section 4.1, argue that the degradation of deep plain
networks is *not* caused by vanishing gradients: with BatchNorm, the plain
nets' forward signals and backward gradients keep healthy norms. This script
measures that on one fixed random batch, at initialization, for the plain and
residual CIFAR networks of depth 20 and 56 (built from the same seed, so a
plain net and its ResNet twin have identical weights; shortcut option A adds
no parameters):

- the norm of every conv weight's gradient, ``||dL/dW||``;
- the norm of the gradient at each block's input, ``||dL/dx||``, and the RMS
  of the forward signal there.

Writes ``benchmarks/results/grad_norms.json`` and ``grad_norms.csv`` and prints
a table. Usage, from the repository root (or anywhere once minires is installed)::

    python -m benchmarks.grad_norms                 # depths 20 and 56, batch 128
    python -m benchmarks.grad_norms --depths 8 --batch 8 --size 8 --out /tmp/x
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from minires import backend
from minires.models import ResNet, plain_cifar, resnet_cifar
from minires.nn import init
from minires.nn.loss import CrossEntropyLoss

RESULTS = Path(__file__).resolve().parent / "results"


def _norm(a: Any) -> float:
    return float(np.linalg.norm(np.asarray(backend.to_numpy(a), dtype=np.float64).ravel()))


def _rms(a: Any) -> float:
    a = np.asarray(backend.to_numpy(a), dtype=np.float64)
    return float(np.sqrt(np.mean(a * a)))


def measure(model: ResNet, x: Any, y: Any) -> dict[str, Any]:
    """One forward and backward pass in training mode, child by child, so the
    signal and the gradient can be read at every block's input.

    Returns a dict with the loss, ``blocks`` (name, forward RMS at the block's
    input, ||dL/dx|| at the block's input), and ``convs`` (name, ||dL/dW||).
    """
    model.train()
    model.zero_grad()
    criterion = CrossEntropyLoss()
    forward_rms: dict[str, float] = {}
    h = x
    for name, child in model.named_children():
        if name.startswith("layer"):
            for i, block in enumerate(child):
                forward_rms[f"{name}.{i}"] = _rms(h)
                h = block(h)
        else:
            h = child(h)
    loss = criterion(h, y)
    dout = criterion.backward()
    grad_at_input: dict[str, float] = {}
    # The same steps as ResNet.backward, with the stages opened up.
    for name, child in reversed(list(model.named_children())):
        if name.startswith("layer"):
            for i in reversed(range(len(child))):
                dout = child[i].backward(dout)
                grad_at_input[f"{name}.{i}"] = _norm(dout)
        else:
            dout = child.backward(dout)
    blocks = [(k, forward_rms[k], grad_at_input[k]) for k in forward_rms]
    convs = [(k, _norm(p.grad)) for k, p in model.named_parameters()
             if k.endswith("weight") and len(p.shape) == 4]
    return {"loss": float(loss), "blocks": blocks, "convs": convs,
            "input_grad_norm": _norm(dout)}


def run(depths: tuple[int, ...] = (20, 56), batch: int = 128, size: int = 32,
        seed: int = 0, out_dir: Path | str | None = RESULTS, quiet: bool = False
        ) -> dict[str, Any]:
    """Measure plain and residual nets of each depth; write JSON and CSV to
    ``out_dir`` (None: write nothing); return the results."""
    rng = np.random.default_rng(seed)
    x = backend.asarray(rng.standard_normal((batch, 3, size, size)), dtype="float32")
    y = backend.asarray(rng.integers(0, 10, size=batch), dtype="int64")
    results: dict[str, Any] = {
        "config": {"depths": list(depths), "batch": batch, "image_size": size, "seed": seed,
                   "data": "fixed random batch, N(0,1) pixels, uniform random labels",
                   "dtype": "float32", "mode": "train (batch statistics)",
                   "shortcut": "A", "backend": backend.name(),
                   "machine": platform.machine(), "python": platform.python_version()},
        "models": {},
    }
    for depth in depths:
        for kind, factory in (("plain", plain_cifar), ("resnet", resnet_cifar)):
            init.manual_seed(seed)  # same weights for the plain net and its ResNet twin
            model = factory(depth)
            start = time.perf_counter()
            r = measure(model, x, y)
            r["seconds"] = time.perf_counter() - start
            results["models"][f"{kind}{depth}"] = r
    if out_dir is not None:
        write(results, Path(out_dir))
    if not quiet:
        print(table(results))
    return results


def write(results: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "grad_norms.json").write_text(json.dumps(results, indent=1) + "\n")
    with open(out_dir / "grad_norms.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", "quantity", "layer", "value"])
        for model, r in results["models"].items():
            for name, rms, g in r["blocks"]:
                w.writerow([model, "block_input_rms", name, f"{rms:.6g}"])
                w.writerow([model, "block_input_grad_norm", name, f"{g:.6g}"])
            for name, g in r["convs"]:
                w.writerow([model, "conv_weight_grad_norm", name, f"{g:.6g}"])


def table(results: dict[str, Any]) -> str:
    """Per-model summary, then ||dL/dx|| at each block's input side by side."""
    models = results["models"]
    cfg = results["config"]
    lines = [f"Gradient norms at initialization (batch {cfg['batch']}, "
             f"{cfg['image_size']}x{cfg['image_size']}, seed {cfg['seed']}, train mode)", ""]
    head = (f"{'model':<10} {'loss':>6} {'|dL/dx| first blk':>18} {'last blk':>10} "
            f"{'max/min':>8} {'|dL/dW| first conv':>19} {'last conv':>10} {'max/min':>8}")
    lines += [head, "-" * len(head)]
    for name, r in models.items():
        g = [b[2] for b in r["blocks"]]
        w = [c[1] for c in r["convs"]]
        lines.append(f"{name:<10} {r['loss']:6.3f} {g[0]:18.3e} {g[-1]:10.3e} "
                     f"{max(g) / min(g):8.2f} {w[0]:19.3e} {w[-1]:10.3e} "
                     f"{max(w) / min(w):8.2f}")
    lines += ["", "(last conv: the last 3x3 conv of the last block)"]
    for depth in cfg["depths"]:
        pair = [n for n in (f"plain{depth}", f"resnet{depth}") if n in models]
        lines += ["", f"depth {depth}: forward RMS and ||dL/dx|| at each block's input",
                  f"{'block':<10}" + "".join(f"{n + ' rms':>14}{n + ' |dL/dx|':>20}"
                                             for n in pair)]
        for i, (label, *_) in enumerate(models[pair[0]]["blocks"]):
            cells = "".join(f"{models[n]['blocks'][i][1]:14.3f}"
                            f"{models[n]['blocks'][i][2]:20.3e}" for n in pair)
            lines.append(f"{label:<10}{cells}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--depths", type=int, nargs="+", default=[20, 56])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    run(tuple(a.depths), a.batch, a.size, a.seed, a.out)


if __name__ == "__main__":
    main()
