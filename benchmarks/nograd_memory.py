"""Memory that ``minires.no_grad()`` saves when evaluating ResNet-20.

Evaluates a CIFAR ResNet-20 (3x32x32 inputs, float32, eval mode) the way
``minires.train.evaluate`` does, on a few batches of 1024 random images,
with and without ``no_grad``, and reports the peak of the memory NumPy
allocated (``tracemalloc`` sees NumPy's array buffers) above what was
allocated before: the weights and the input batches are not counted.

Without ``no_grad`` every layer keeps its forward's cache (inputs, masks,
normalized activations) until the next forward replaces it, so the second
batch runs while the first batch's caches are still alive. Under
``no_grad`` each layer drops its cache as soon as its forward returns.

Usage::

    python benchmarks/nograd_memory.py [--batch 1024] [--batches 2]

Writes ``benchmarks/results/nograd_memory.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tracemalloc
from pathlib import Path

import numpy as np

import minires
from minires.models import get_model

RESULTS = Path(__file__).resolve().parent / "results" / "nograd_memory.json"


def peak_mib(model, batches, grad: bool) -> float:
    """Peak NumPy memory (MiB) above the starting point over the batches."""
    for m in model.modules():
        m._cache = None
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    with contextlib.nullcontext() if grad else minires.no_grad():
        for x in batches:
            model(x)
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    for m in model.modules():
        m._cache = None
    return peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    model = get_model("resnet20").eval()
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((args.batch, 3, 32, 32), dtype=np.float32)
               for _ in range(args.batches)]
    with_caches = peak_mib(model, batches, grad=True)
    without = peak_mib(model, batches, grad=False)
    result = {"model": "resnet20", "input": [args.batch, 3, 32, 32], "batches": args.batches,
              "dtype": "float32", "peak_mib_with_caches": round(with_caches, 1),
              "peak_mib_no_grad": round(without, 1),
              "saved_mib": round(with_caches - without, 1),
              "ratio": round(without / with_caches, 3)}
    print(json.dumps(result, indent=1))
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
