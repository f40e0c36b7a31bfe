"""The engine against the textbook: what ``minires.fast`` buys, op by op.

Every op the engine stands in for (``minires/fast/``), timed with the engine
on and with it off (``minires.fast.enabled``), at the ResNet-20 CIFAR shapes
of ``bench.py``, float32, batch 128 by default; then the whole ResNet-20
training step (forward, loss, backward, SGD with momentum) both ways.

Each repetition times the two versions back to back, alternating which goes
first, with a short rest before each; the table gives the median time of
each and the median and range over repetitions of the ratio reference /
engine, the speed-up the engine gives. Both versions compute the same
numbers (``tests/test_fast_paths.py``).

An op timed alone is not an op inside a step (the caches are warm or cold,
the threads awake or asleep), so the last rows time the training step with
the whole engine against the engine with one family of fast paths on its
reference code: the ratio is what that family buys in the step.

Threads: ``--threads T`` (default: the usable cores). The engine runs T
threads of its own (``minires.fast.parallel``); the reference code runs on
one. BLAS runs on one thread for both, as minires sets it whenever it has
threads of its own and as the ``minires`` command runs: on the 2-core
development machine, loaded, the reference's training step took 1.5-2.0 s
at batch 32 with one BLAS thread and 6.4-8.4 s with two (waiting OpenBLAS
threads spin).

Usage::

    python benchmarks/engine.py                  # batch 128, 7 repetitions, 5 steps
    python benchmarks/engine.py --batch 32 --reps 5 --steps 3

Writes ``benchmarks/results/engine.json`` (or ``--output``) and prints a
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench  # noqa: E402  (the shapes, the layout, the thread settings)

PAUSE = 0.05     # seconds of rest before each timing


def _ops(batch: int) -> list[tuple[str, Any, Any]]:
    """(name, run, arrays) for each op: ``run()`` calls the public op once."""
    import numpy as np

    from minires import functional as F

    rng = np.random.default_rng(0)
    rows = []
    for name, kind, c_in, c_out, h, stride, _ in bench.OPS:
        if kind not in ("conv", "bn", "relu"):
            continue
        fwd, bwd, dout, _, _ = bench.make_op(kind, c_in, c_out, h, stride, batch, None, rng)
        cache = {}

        def forward(fwd=fwd, cache=cache):
            cache["last"] = fwd()[1]

        def backward(bwd=bwd, dout=dout, cache=cache):
            bwd(cache["last"], dout)

        rows.append((f"{name} forward", forward))
        rows.append((f"{name} backward", backward))
        if kind == "relu":
            a = bench.minires_layout(rng.standard_normal((batch, c_in, h, h)).astype(np.float32))
            b = bench.minires_layout(rng.standard_normal(a.shape).astype(np.float32))
            rows.append((f"add {c_in}ch, {h}x{h}", lambda a=a, b=b: F.add(a, b)))
    x = bench.minires_layout(rng.standard_normal((batch, 16, 32, 32)).astype(np.float32))
    rows.append(("im2col 16ch, 32x32, 3x3", lambda: F.im2col(x, 3, 1, 1)))
    return rows


def _engine(on: bool, threads: int) -> None:
    import minires.fast
    from minires.fast import parallel

    minires.fast.enable(on)
    parallel.set_threads(threads)       # T threads, BLAS on one (a no-op after the first call)


def _interleaved(run: Any, switch: Any, reps: int, warmup: int) -> dict[str, Any]:
    """Median ms of ``run`` after ``switch(True)`` and after ``switch(False)``,
    the two alternating in A-B, B-A order, and the paired ratios off/on."""
    times: dict[bool, list[float]] = {True: [], False: []}
    for r in range(warmup + reps):
        for on in ((True, False) if r % 2 == 0 else (False, True)):
            switch(on)
            time.sleep(PAUSE)
            t0 = time.perf_counter()
            run()
            dt = time.perf_counter() - t0
            if r >= warmup:
                times[on].append(dt)
    ratios = [off / on for on, off in zip(times[True], times[False], strict=True)]
    return {"engine_ms": 1e3 * statistics.median(times[True]),
            "reference_ms": 1e3 * statistics.median(times[False]),
            "speedup": statistics.median(ratios), "speedup_min": min(ratios),
            "speedup_max": max(ratios), "reps": reps}


def _time_pair(run: Any, reps: int, threads: int, warmup: int = 1) -> dict[str, Any]:
    """Median ms of ``run`` on the engine and on the reference, and the ratios."""
    return _interleaved(run, lambda on: _engine(on, threads), reps, warmup)


# The engine's fast paths, family by family (the public ops of minires.functional).
FAMILIES = {
    "convolution": ("conv2d_forward", "conv2d_backward", "im2col"),
    "batch norm": ("batchnorm_forward", "batchnorm_backward"),
    "ReLU": ("relu_forward", "relu_backward"),
    "sum (add)": ("add", "add_forward"),
}


def _time_without(run: Any, names: tuple[str, ...], reps: int, threads: int,
                  warmup: int = 1) -> dict[str, Any]:
    """``run`` on the whole engine against the engine with the ops ``names``
    on their reference code: "speedup" is what those fast paths buy there."""
    from minires import functional as F

    ops = [getattr(F, name) for name in names]
    fast = [op.fast for op in ops]

    def use_fast(on: bool) -> None:
        for op, f in zip(ops, fast, strict=True):
            op.fast = f if on else op.reference

    _engine(True, threads)
    try:
        return _interleaved(run, use_fast, reps, warmup)
    finally:
        use_fast(True)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import os

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--reps", type=int, default=7, help="timed repetitions per op (default 7)")
    p.add_argument("--steps", type=int, default=5,
                   help="timed ResNet-20 steps each way (default 5; 0 skips the step)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--output", type=Path, default=bench.RESULTS / "engine.json")
    args = p.parse_args(argv)
    bench.configure_threads(args.threads, native_openblas=False)
    pools = bench.limit_pools(args.threads)
    rows = []
    for name, run in _ops(args.batch):
        rows.append({"op": name, **_time_pair(run, args.reps, args.threads)})
        print(f"{name}: {rows[-1]['speedup']:.2f}x", file=sys.stderr, flush=True)
    if args.steps:
        runner = bench.MiniresStep(args.batch)
        rows.append({"op": f"ResNet-20 step, batch {args.batch}",
                     **_time_pair(runner.step, args.steps, args.threads)})
        for family, names in FAMILIES.items():
            rows.append({"op": f"step: the engine without its {family}",
                         **_time_without(runner.step, names, args.steps, args.threads)})
            print(f"{rows[-1]['op']}: {rows[-1]['speedup']:.2f}x", file=sys.stderr, flush=True)
    _engine(True, args.threads)
    report = {"batch": args.batch, "threads": args.threads, "rows": rows,
              "machine": bench.machine_info(args.threads, pools, None),
              "load_after": os.getloadavg()}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"| op (batch {args.batch}, {args.threads} threads) | engine ms | reference ms "
          "| reference / engine (range) |")
    # (for the "without" rows, "reference ms" is the step with that family on its reference)
    print("|---|---:|---:|---:|")
    for row in rows:
        print(f"| {row['op']} | {row['engine_ms']:.1f} | {row['reference_ms']:.1f} | "
              f"{row['speedup']:.2f}x ({row['speedup_min']:.2f}-{row['speedup_max']:.2f}) |")
    return report


if __name__ == "__main__":
    main()
