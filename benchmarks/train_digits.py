"""Time `minires train` with its defaults and read the accuracy it reaches.

What it should show: on 2 CPU cores, `minires train` with no arguments
reaches >= 98% test accuracy on the bundled digits in <= 90 s of wall time,
start-up included.

For each seed, this runs the real command in a fresh temporary folder, in a
subprocess (`minires train` for the default seed 0, `minires train --seed S`
for the others), measures its wall time from launch to exit, the CPU time
it used, and the machine's load average around it (other work on the cores
stretches the wall time), then reads the final test accuracy from the
`metrics.json` the command wrote. Usage::

    python benchmarks/train_digits.py                  # seeds 0 1 2
    python benchmarks/train_digits.py --seeds 0 1 2 3 4 --out /tmp/t.json
    python benchmarks/train_digits.py --extra "--epochs 20"   # try other settings

Writes ``benchmarks/results/train_digits.json`` (or ``--out``). Exit code 1
if a run falls short of either figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from minires.cli import TRAIN_DEFAULTS

RESULTS = Path(__file__).resolve().parent / "results" / "train_digits.json"
TARGET_ACC, TARGET_S = 0.98, 90.0


def command() -> list[str]:
    """The installed console script, or the module when it is not on PATH."""
    script = shutil.which("minires")
    return [script] if script else [sys.executable, "-m", "minires.cli"]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def run_once(seed: int, extra: list[str]) -> dict:
    argv = [*command(), "train", *([] if seed == TRAIN_DEFAULTS["seed"] else
                                   ["--seed", str(seed)]), *extra]
    with tempfile.TemporaryDirectory(prefix="train_digits_") as tmp:
        load_before = os.getloadavg()
        cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        proc = subprocess.run(argv, cwd=tmp, capture_output=True, text=True)
        wall = time.perf_counter() - start
        cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        load_after = os.getloadavg()
        if proc.returncode != 0:
            raise SystemExit(f"{shlex.join(argv)} failed ({proc.returncode}):\n{proc.stderr}")
        metrics = next(Path(tmp).glob("runs/*/metrics.json"))
        history = json.loads(metrics.read_text())
    final = history[-1]
    return {
        "seed": seed,
        "command": shlex.join(["minires", *argv[len(command()):]]),
        "wall_s": round(wall, 2),
        "cpu_s": round((cpu_after.ru_utime - cpu_before.ru_utime)
                       + (cpu_after.ru_stime - cpu_before.ru_stime), 2),
        "train_and_eval_s": round(final["wall_s"], 2),
        "epochs": len(history),
        "test_acc": final["test_acc"],
        "test_errors": round((1 - final["test_acc"]) * 359),
        "best_test_acc": max(r["test_acc"] for r in history),
        "mean_epoch_s": round(sum(r["epoch_time_s"] for r in history) / len(history), 3),
        "load_avg_1min_before": round(load_before[0], 2),
        "load_avg_1min_after": round(load_after[0], 2),
        "last_line": proc.stdout.strip().splitlines()[-1],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--extra", default="", help="more `minires train` options (quoted)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    extra = shlex.split(args.extra)

    runs = []
    for seed in args.seeds:
        r = run_once(seed, extra)
        runs.append(r)
        print(f"seed {seed}: {100 * r['test_acc']:.2f}% test accuracy ({r['test_errors']} of 359 "
              f"wrong) in {r['wall_s']:.1f} s wall, {r['cpu_s']:.1f} s CPU "
              f"(load {r['load_avg_1min_before']:.2f} -> {r['load_avg_1min_after']:.2f})",
              flush=True)
    ok = all(r["test_acc"] >= TARGET_ACC and r["wall_s"] <= TARGET_S for r in runs)
    report = {
        "target": {"test_acc_min": TARGET_ACC, "wall_s_max": TARGET_S, "cpu_cores": 2},
        "met": ok,
        "defaults": TRAIN_DEFAULTS,
        "extra_options": extra,
        "summary": {"min_test_acc": min(r["test_acc"] for r in runs),
                    "max_wall_s": max(r["wall_s"] for r in runs),
                    "max_cpu_s": max(r["cpu_s"] for r in runs)},
        "runs": runs,
        "machine": {"cpus": os.cpu_count(), "cpu": cpu_model(), "platform": platform.platform(),
                    "python": sys.version.split()[0],
                    "blas_threads_env": {k: os.environ.get(k) for k in (
                        "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}},
        "note": "wall time includes interpreter start-up, imports, data loading, training, "
                "evaluation and writing the outputs; the load average shows how much other "
                "work shared the cores",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    summary = report["summary"]
    print(f"{'met' if ok else 'MISSED'}: min accuracy {100 * summary['min_test_acc']:.2f}%, "
          f"max wall time {summary['max_wall_s']:.1f} s; wrote {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
