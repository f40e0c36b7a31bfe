"""minires on CuPy against PyTorch on CUDA: the ResNet-20 training step.

The GPU companion of ``bench.py`` (run it on a machine with an NVIDIA GPU,
CuPy and a CUDA build of PyTorch). One process; for each batch size the two
libraries alternate step by step (the order flips every round), each step
timed from a synchronized device to a synchronized device. Reports the median
step time, images per second, the ratio minires / torch, and GPU memory:
PyTorch's ``max_memory_allocated`` and the bytes CuPy's memory pool holds
after one step from an emptied pool (blocks are cached, so this is the
pool's high-water mark for a step).

Usage::

    python benchmarks/bench_cuda.py                  # batches 32 128 512
    python benchmarks/bench_cuda.py --batches 128 --rounds 21

Writes ``benchmarks/results/bench_cuda.json`` (or ``--output``) and prints a
markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "benchmarks"):
    if str(path) not in sys.path:   # run as a script: make the repository importable
        sys.path.insert(0, str(path))


def steps(batch: int, rounds: int, warmup: int) -> dict[str, Any]:
    """Median step times of both libraries at ``batch``, alternating."""
    import cupy
    import numpy as np
    import torch
    from bench import torch_resnet_cifar

    from minires import backend, nn
    from minires.models import resnet_cifar
    from minires.optim import SGD

    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, batch)

    backend.use("cupy")
    nn.init.manual_seed(0)
    model = resnet_cifar(20)
    model.train()
    criterion = nn.CrossEntropyLoss()
    optimizer = SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    xc, yc = cupy.asarray(x), cupy.asarray(y)

    def minires_step() -> None:
        optimizer.zero_grad()
        criterion(model(xc), yc)
        model.backward(criterion.backward())
        optimizer.step()

    torch.manual_seed(0)
    tmodel = torch_resnet_cifar(torch).cuda().train()
    tcriterion = torch.nn.CrossEntropyLoss()
    toptimizer = torch.optim.SGD(tmodel.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    xt, yt = torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda()

    def torch_step() -> None:
        toptimizer.zero_grad()
        tcriterion(tmodel(xt), yt).backward()
        toptimizer.step()

    sync = {"minires": cupy.cuda.Device().synchronize, "torch": torch.cuda.synchronize}
    run = {"minires": minires_step, "torch": torch_step}
    samples: dict[str, list[float]] = {"minires": [], "torch": []}
    for r in range(warmup + rounds):
        for impl in (("minires", "torch") if r % 2 == 0 else ("torch", "minires")):
            sync[impl]()
            t0 = time.perf_counter()
            run[impl]()
            sync[impl]()
            if r >= warmup:
                samples[impl].append(time.perf_counter() - t0)
    pool = cupy.get_default_memory_pool()
    pool.free_all_blocks()
    minires_step()
    sync["minires"]()
    torch.cuda.reset_peak_memory_stats()
    torch_step()
    sync["torch"]()
    result: dict[str, Any] = {"batch": batch}
    for impl, mib in (("minires", pool.total_bytes() / 2**20),
                      ("torch", torch.cuda.max_memory_allocated() / 2**20)):
        ms = statistics.median(samples[impl]) * 1e3
        result[impl] = {"median_ms": ms, "images_per_s": batch / ms * 1e3, "memory_mib": mib,
                        "samples_ms": [s * 1e3 for s in samples[impl]]}
    result["time_ratio"] = result["minires"]["median_ms"] / result["torch"]["median_ms"]
    result["memory_ratio"] = result["minires"]["memory_mib"] / result["torch"]["memory_mib"]
    backend.use("numpy")
    return result


def markdown(report: dict[str, Any]) -> str:
    lines = ["### ResNet-20 training step on the GPU (minires on CuPy, PyTorch on CUDA)", "",
             "| batch | minires ms | torch ms | ratio | minires img/s | torch img/s "
             "| minires MiB | torch MiB | memory ratio |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in report["steps"]:
        m, t = s["minires"], s["torch"]
        lines.append(f"| {s['batch']} | {m['median_ms']:.1f} | {t['median_ms']:.1f} "
                     f"| {s['time_ratio']:.2f} | {m['images_per_s']:.0f} "
                     f"| {t['images_per_s']:.0f} | {m['memory_mib']:.0f} "
                     f"| {t['memory_mib']:.0f} | {s['memory_ratio']:.2f} |")
    lines += ["", f"Device: {report['device']}; CuPy {report['cupy']}, torch {report['torch']}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", type=int, nargs="+", default=[32, 128, 512])
    p.add_argument("--rounds", type=int, default=15, help="timed steps per library")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" /
                   "bench_cuda.json")
    args = p.parse_args(argv)
    import cupy
    import torch

    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0), "cupy": cupy.__version__,
        "torch": torch.__version__, "settings": {"rounds": args.rounds, "warmup": args.warmup},
        "steps": []}
    for batch in args.batches:
        print(f"training step at batch {batch} ...", file=sys.stderr, flush=True)
        report["steps"].append(steps(batch, args.rounds, args.warmup))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1) + "\n")
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
