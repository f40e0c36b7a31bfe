"""minires (pure NumPy) against PyTorch on the CPU, side by side.

Three measurements in one run, both libraries at the same thread count:

1. **Ops** at the ResNet-20 CIFAR shapes (He et al. 2015): 3x3 convolutions
   on 16, 32 and 64 channels (32x32, 16x16, 8x8 maps), the two stride-2
   convolutions, the stem, batch norm, ReLU and global average pooling,
   forward and backward. Both libraries run in this one process; every
   repetition times minires and torch back to back (interleaved), and the
   tables show medians.
2. **The full training step** of ResNet-20 (forward, cross-entropy loss,
   backward, SGD with momentum 0.9 and weight decay 1e-4) on float32 inputs
   (N, 3, 32, 32), at batch 32 and 128. Each library runs in its own worker
   process; the parent asks them for one step at a time, alternating round by
   round, so drift in the machine's load hits both alike, with a pause
   (``--pause``, 0.5 s) before each step so that the thread pools of the
   other worker have stopped spinning. The table gives the ratio of the two
   medians and the *paired ratio*, the median over rounds of minires's step
   over torch's step of the same round (seconds apart, so the machine's
   drift cancels best). Each worker reports its peak resident
   memory (VmHWM, or ``ru_maxrss``) above a baseline taken right after its
   imports; the minires worker also reports the peak traced by
   ``tracemalloc`` (NumPy registers its buffers there) over one more step.
3. **float32 accuracy**: the float32 gradient of every ResNet-20 parameter
   against the float64 gradient for the same weights and batch (max-norm
   relative error per parameter tensor).

Threads: ``--threads T`` (default: the cores this process may use) sets
``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS`` and ``MKL_NUM_THREADS`` before
NumPy is imported, calls ``torch.set_num_threads(T)``, and, when threadpoolctl
is installed, also limits and reports every BLAS/OpenMP pool (the JSON records
which OpenBLAS kernel runs, e.g. ``SkylakeX``).

OpenBLAS core type: on some processors this workplace sets
``OPENBLAS_CORETYPE`` (and ``OPENBLAS_L2_SIZE``) because older OpenBLAS builds
misbehave there; with a current NumPy they select a slower kernel. The run
records both variables and the kernel; ``--native-openblas`` unsets the two
for this run only (never change them for tests or CI).

GPU (``--device cuda``): the same three measurements with minires on CuPy
(``MINIRES_BACKEND=cupy``) against PyTorch on CUDA, on an NVIDIA GPU. Every
timing starts and ends on a synchronized device (a GPU works asynchronously:
unsynchronized, a timer sees only the kernel launches); the ops get 3 untimed
repetitions and 25 timed ones by default, the steps run at batch 32, 128 and
512 with no pause between them. Memory is the GPU's: the most bytes held by
arrays at once during one step (torch's ``max_memory_allocated``; for CuPy,
a memory hook adding up its pool's allocations and frees) and what each
caching allocator took from the device for that step, starting from an
emptied cache (torch's ``max_memory_reserved``, the CuPy pool's
``total_bytes``). Both compute in IEEE float32: PyTorch's TF32 convolutions
are switched off unless ``--tf32`` (which also sets ``CUPY_TF32=1``).

Usage, from anywhere::

    python benchmarks/bench.py                 # ops at batch 128, steps at 32 and 128
    python benchmarks/bench.py --quick         # a short run: batch 32 only, fewer rounds
    python benchmarks/bench.py --skip-ops --batches 128 --rounds 11
    python benchmarks/bench.py --device cuda   # on a GPU: steps at 32, 128 and 512

Writes ``benchmarks/results/bench.json`` (``bench_cuda.json`` with
``--device cuda``; or ``--output``) and prints markdown tables. Timings on a
shared machine are noisy: compare the ratios, look at the load averages
recorded before and after, and re-run when the machine is quiet.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
if str(ROOT) not in sys.path:  # run as a script: make the repository importable
    sys.path.insert(0, str(ROOT))

OPENBLAS_CORE_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")

# ResNet-20 CIFAR shapes (per image) and how often each op runs in one step.
# (name, kind, C_in, C_out, H, stride, occurrences per forward pass)
OPS = [
    ("conv3x3 stem 3->16, 32x32", "conv", 3, 16, 32, 1, 1),
    ("conv3x3 16->16, 32x32", "conv", 16, 16, 32, 1, 6),
    ("conv3x3 32->32, 16x16", "conv", 32, 32, 16, 1, 5),
    ("conv3x3 64->64, 8x8", "conv", 64, 64, 8, 1, 5),
    ("conv3x3 stride 2 16->32, 32->16", "conv", 16, 32, 32, 2, 1),
    ("conv3x3 stride 2 32->64, 16->8", "conv", 32, 64, 16, 2, 1),
    ("batchnorm 16ch, 32x32", "bn", 16, 16, 32, 1, 7),
    ("batchnorm 32ch, 16x16", "bn", 32, 32, 16, 1, 6),
    ("batchnorm 64ch, 8x8", "bn", 64, 64, 8, 1, 6),
    ("relu 16ch, 32x32", "relu", 16, 16, 32, 1, 7),
    ("relu 32ch, 16x16", "relu", 32, 32, 16, 1, 6),
    ("relu 64ch, 8x8", "relu", 64, 64, 8, 1, 6),
    ("global avgpool 64ch, 8x8", "gap", 64, 64, 8, 1, 1),
]


# ---- environment ---------------------------------------------------------------

# glibc malloc settings for the step workers (both libraries alike): keep freed
# memory for reuse (trim threshold 1 GiB) and serve blocks up to 32 MiB from
# the heap instead of fresh mmap'ed pages. With glibc's defaults every new
# activation of a few MB is faulted in page by page; minires allocates a new
# array per op and its step was about 7% faster with these (PyTorch's: within
# noise). ``--default-malloc`` runs the workers with glibc's defaults.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(2**30)}


def configure_threads(threads: int, native_openblas: bool) -> None:
    """Set the thread count (and optionally the OpenBLAS core type) for this
    process and its workers. Must run before NumPy or torch is imported.
    minires runs ``threads`` threads of its own (``MINIRES_THREADS``; BLAS
    then on one thread per call, see ``minires.fast.parallel``)."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "MINIRES_THREADS"):
        os.environ[var] = str(threads)
    if native_openblas:
        for var in OPENBLAS_CORE_VARS:
            os.environ.pop(var, None)


def limit_pools(threads: int) -> list[dict[str, Any]]:
    """Limit every thread pool threadpoolctl can see; return their description
    (empty when threadpoolctl is not installed: the environment variables
    set by ``configure_threads`` still apply)."""
    try:
        import threadpoolctl
    except ImportError:
        return []
    threadpoolctl.threadpool_limits(threads)
    keep = ("user_api", "internal_api", "prefix", "version", "num_threads",
            "threading_layer", "architecture")
    return [{k: pool.get(k) for k in keep if k in pool}
            for pool in threadpoolctl.threadpool_info()]


def import_torch(threads: int):
    """torch with ``threads`` intra-op threads, or None when it is not installed."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    return torch


def machine_info(threads: int, pools: list[dict[str, Any]], torch: Any) -> dict[str, Any]:
    import numpy as np

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__ if torch is not None else None,
        "cpu": cpu,
        "cores_available": len(os.sched_getaffinity(0)),
        "threads": threads,
        "thread_pools": pools,
        "openblas_env": {v: os.environ.get(v) for v in OPENBLAS_CORE_VARS},
        "load_average": os.getloadavg(),
    }


def median_ms(samples: list[float]) -> float:
    return 1e3 * statistics.median(samples)


class Device:
    """Where a run computes: ``"cpu"`` (minires on NumPy, torch on the CPU) or
    ``"cuda"`` (minires on CuPy, torch on CUDA). Moves the NumPy inputs there
    and waits for the GPU around every timing; on the CPU each of these does
    nothing."""

    def __init__(self, name: str = "cpu", tf32: bool = False) -> None:
        self.name, self.gpu, self.tf32 = name, name == "cuda", tf32

    def configure(self) -> None:
        """Environment for this process and its workers; before minires, CuPy
        or torch is imported. On CUDA, minires's backend is CuPy."""
        if self.gpu:
            os.environ["MINIRES_BACKEND"] = "cupy"
            os.environ["CUPY_TF32"] = "1" if self.tf32 else "0"

    def minires(self, a: Any) -> Any:
        """A NumPy array on minires's device, in the same memory layout
        (``cupy.asarray`` would copy a non-contiguous array into C order)."""
        if not self.gpu:
            return a
        import cupy
        import numpy as np

        order = np.argsort(a.strides, kind="stable")[::-1]       # slowest axis first
        return cupy.asarray(np.ascontiguousarray(a.transpose(order))).transpose(np.argsort(order))

    def torch(self, t: Any) -> Any:
        """A torch tensor on torch's device."""
        return t.cuda() if self.gpu else t

    def sync(self, impl: str) -> None:
        """Wait until the GPU has finished ``impl``'s ("minires" or "torch") work."""
        if not self.gpu:
            return
        if impl == "minires":
            import cupy

            cupy.cuda.Device().synchronize()
        else:
            import torch

            torch.cuda.synchronize()


CPU = Device("cpu")


def import_torch_on(device: Device, threads: int):
    """``import_torch``, and on CUDA: None unless torch sees a GPU; TF32
    convolutions and matrix products as ``--tf32`` asks (torch's default
    would run its float32 convolutions in TF32, minires's never are)."""
    torch = import_torch(threads)
    if torch is None or not device.gpu:
        return torch
    if not torch.cuda.is_available():
        return None
    torch.backends.cudnn.allow_tf32 = device.tf32
    torch.backends.cuda.matmul.allow_tf32 = device.tf32
    return torch


def gpu_info(torch: Any) -> dict[str, Any]:
    import cupy

    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    info: dict[str, Any] = {
        "gpu": props["name"].decode() if isinstance(props["name"], bytes) else props["name"],
        "gpu_memory_mib": props["totalGlobalMem"] / 2**20,
        "cupy": cupy.__version__,
        "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
        "cuda_driver": cupy.cuda.runtime.driverGetVersion(),
    }
    if torch is not None:
        info.update(torch_cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                    cudnn_benchmark=torch.backends.cudnn.benchmark,
                    cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                    matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32)
    return info


# ---- the PyTorch twin of minires.models.resnet_cifar(20) ----------------------

def torch_resnet_cifar(torch: Any, depth: int = 20, num_classes: int = 10):
    """ResNet-``depth`` for CIFAR in PyTorch, option A shortcuts, with the same
    parameter names as ``minires.models.resnet_cifar`` (so state dicts copy
    across). ReLUs are in place, as torchvision writes them."""
    nn, F = torch.nn, torch.nn.functional

    class ShortcutA(nn.Module):
        def __init__(self, in_planes: int, planes: int, stride: int) -> None:
            super().__init__()
            self.extra, self.stride = planes - in_planes, stride

        def forward(self, x):
            x = x[:, :, ::self.stride, ::self.stride]
            return F.pad(x, (0, 0, 0, 0, 0, self.extra))

    class BasicBlock(nn.Module):
        def __init__(self, in_planes: int, planes: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.shortcut = (ShortcutA(in_planes, planes, stride)
                             if stride != 1 or in_planes != planes else nn.Identity())

        def forward(self, x):
            out = F.relu(self.bn1(self.conv1(x)), inplace=True)
            out = self.bn2(self.conv2(out))
            return F.relu(out + self.shortcut(x), inplace=True)

    class ResNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            n = (depth - 2) // 6
            self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(16)
            planes_in = 16
            for i, (planes, stride) in enumerate(((16, 1), (32, 2), (64, 2))):
                blocks = []
                for j in range(n):
                    blocks.append(BasicBlock(planes_in, planes, stride if j == 0 else 1))
                    planes_in = planes
                setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            self.fc = nn.Linear(64, num_classes)
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")

        def forward(self, x):
            x = F.relu(self.bn1(self.conv1(x)), inplace=True)
            x = self.layer3(self.layer2(self.layer1(x)))
            return self.fc(x.mean((2, 3)))

    return ResNet()


# ---- one training step in each library ----------------------------------------

class MiniresStep:
    """ResNet-20 from ``minires.models.resnet_cifar(20)``, SGD with momentum."""

    name = "minires"

    def __init__(self, batch: int, seed: int = 0, device: Device = CPU) -> None:
        import numpy as np

        from minires.models import resnet_cifar
        from minires.nn.loss import CrossEntropyLoss
        from minires.optim import SGD

        rng = np.random.default_rng(seed)
        self.model = resnet_cifar(20)
        self.model.train()
        self.criterion = CrossEntropyLoss()
        self.optimizer = SGD(self.model.parameters(), lr=0.1, momentum=0.9,
                             weight_decay=1e-4)
        self.x = device.minires(rng.standard_normal((batch, 3, 32, 32)).astype(np.float32))
        self.y = device.minires(rng.integers(0, 10, batch))

    def step(self) -> float:
        self.optimizer.zero_grad()
        loss = self.criterion(self.model(self.x), self.y)
        # parameter gradients only, like torch for an input without requires_grad
        self.model.backward(self.criterion.backward(), input_grad=False)
        self.optimizer.step()
        return float(loss)


class TorchStep:
    """The same network and update in PyTorch (default NCHW, autograd)."""

    name = "torch"

    def __init__(self, batch: int, seed: int = 0, threads: int = 1,
                 device: Device = CPU) -> None:
        torch = import_torch_on(device, threads)
        torch.manual_seed(seed)
        g = torch.Generator().manual_seed(seed)
        self.torch = torch
        self.model = device.torch(torch_resnet_cifar(torch))
        self.model.train()
        self.criterion = torch.nn.CrossEntropyLoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9,
                                         weight_decay=1e-4)
        self.x = device.torch(torch.randn(batch, 3, 32, 32, generator=g))
        self.y = device.torch(torch.randint(0, 10, (batch,), generator=g))

    def step(self) -> float:
        self.optimizer.zero_grad()
        loss = self.criterion(self.model(self.x), self.y)
        loss.backward()
        self.optimizer.step()
        return loss.item()


def _status_mib(field: str) -> float | None:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in MiB, None if unreadable."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def reset_peak_rss() -> float:
    """Start a fresh peak-memory measurement; return the resident memory now (MiB).

    Linux lets a process reset its high-water mark (write 5 to
    /proc/self/clear_refs), so a transient peak while importing does not hide
    the step's own peak. Where that fails, the baseline is the peak so far
    (``ru_maxrss``), and the step's peak counts only what rises above it.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
        rss = _status_mib("VmRSS")
        if rss is not None:
            return rss
    except OSError:
        pass
    return peak_rss_mib()


def peak_rss_mib() -> float:
    """The process's peak resident memory since the last reset, in MiB."""
    hwm = _status_mib("VmHWM")
    if hwm is not None:
        return hwm
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def gpu_step_memory(impl: str, runner: Any) -> dict[str, float]:
    """GPU memory of one more step from an emptied allocator cache, in MiB:
    ``gpu_peak_mib``, the most bytes held by arrays (tensors) at once, and
    ``gpu_pool_mib``, what the library's caching allocator took from the
    device (module docstring)."""
    if impl == "torch":
        import torch

        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        runner.step()
        torch.cuda.synchronize()
        return {"gpu_peak_mib": torch.cuda.max_memory_allocated() / 2**20,
                "gpu_pool_mib": torch.cuda.max_memory_reserved() / 2**20}
    import cupy
    from cupy.cuda import memory_hook

    class PeakHook(memory_hook.MemoryHook):
        """Adds up the pool's allocations and frees; keeps the highest sum."""

        name = "bench_peak"

        def __init__(self, used: int) -> None:
            self.used = self.peak = used

        def malloc_postprocess(self, **kw: Any) -> None:
            self.used += kw["mem_size"]
            self.peak = max(self.peak, self.used)

        def free_postprocess(self, **kw: Any) -> None:
            self.used -= kw["mem_size"]

    pool = cupy.get_default_memory_pool()
    cupy.cuda.Device().synchronize()
    pool.free_all_blocks()
    hook = PeakHook(pool.used_bytes())
    with hook:
        runner.step()
    cupy.cuda.Device().synchronize()
    return {"gpu_peak_mib": hook.peak / 2**20, "gpu_pool_mib": pool.total_bytes() / 2**20}


def worker(impl: str, batch: int, threads: int, device: Device = CPU) -> None:
    """Serve one implementation's training step over stdin/stdout.

    Commands (one per line): ``step`` -> ``{"seconds": t, "loss": l}``;
    ``memory`` -> peak RSS above the baseline (and, for minires, the peak
    that tracemalloc sees during one more step; on a GPU, the step's GPU
    memory instead, ``gpu_step_memory``); ``quit``.
    """
    import numpy  # noqa: F401  (part of the baseline for both workers)

    if impl == "torch":
        import_torch_on(device, threads)
    else:
        import minires.models  # noqa: F401
    pools = limit_pools(threads)
    baseline = reset_peak_rss()
    runner = (TorchStep(batch, threads=threads, device=device) if impl == "torch"
              else MiniresStep(batch, device=device))
    out = sys.stdout
    out.write(json.dumps({"ready": impl, "baseline_mib": baseline, "pools": pools}) + "\n")
    out.flush()
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "step":
            device.sync(impl)
            t0 = time.perf_counter()
            loss = runner.step()
            device.sync(impl)
            reply: dict[str, Any] = {"seconds": time.perf_counter() - t0, "loss": loss}
        elif cmd == "memory":
            reply = {"peak_rss_mib": peak_rss_mib() - baseline, "baseline_mib": baseline}
            if device.gpu:
                reply.update(gpu_step_memory(impl, runner))
            elif impl == "minires":
                import tracemalloc

                tracemalloc.start()
                runner.step()
                reply["tracemalloc_peak_mib"] = tracemalloc.get_traced_memory()[1] / 2**20
                tracemalloc.stop()
        elif cmd == "quit":
            return
        else:
            reply = {"error": f"unknown command {cmd!r}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()


class Worker:
    """The parent's handle on a worker process."""

    def __init__(self, impl: str, batch: int, args: argparse.Namespace) -> None:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", impl,
               "--batches", str(batch), "--threads", str(args.threads)]
        if args.native_openblas:
            cmd.append("--native-openblas")
        cmd += ["--device", args.device] + (["--tf32"] if args.tf32 else [])
        self.impl = impl
        env = os.environ.copy() if args.default_malloc else {**os.environ, **MALLOC_ENV}
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env)
        self.hello = self._read()

    def _read(self) -> dict[str, Any]:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.impl} worker exited (code {self.proc.wait()})")
        return json.loads(line)

    def ask(self, cmd: str) -> dict[str, Any]:
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
        except (BrokenPipeError, ValueError):
            pass
        self.proc.wait(timeout=60)


def bench_steps(batch: int, args: argparse.Namespace, have_torch: bool) -> dict[str, Any]:
    """Alternate the workers step by step: warm-up, then ``args.rounds`` timed
    rounds (the order within a round flips every round)."""
    impls = ["minires", "torch"] if have_torch else ["minires"]
    workers = [Worker(impl, batch, args) for impl in impls]
    try:
        samples: dict[str, list[float]] = {w.impl: [] for w in workers}
        losses: dict[str, list[float]] = {w.impl: [] for w in workers}
        for r in range(args.warmup + args.rounds):
            order = workers if r % 2 == 0 else workers[::-1]
            for w in order:
                # Let the other worker's idle thread pools stop spinning first
                # (OpenBLAS and OpenMP threads busy-wait for a while after a
                # call): without the pause, each library's step is slowed by
                # the one that ran just before it.
                time.sleep(args.pause)
                reply = w.ask("step")
                losses[w.impl].append(reply["loss"])
                if r >= args.warmup:
                    samples[w.impl].append(reply["seconds"])
            print(f"  batch {batch} round {r + 1}/{args.warmup + args.rounds}: "
                  + ", ".join(f"{w.impl} {1e3 * samples[w.impl][-1]:.0f} ms"
                              if samples[w.impl] and r >= args.warmup else f"{w.impl} warm-up"
                              for w in workers), file=sys.stderr, flush=True)
        memory = {w.impl: w.ask("memory") for w in workers}
    finally:
        for w in workers:
            w.close()
    result: dict[str, Any] = {"batch": batch}
    for impl in impls:
        ms = median_ms(samples[impl])
        result[impl] = {"median_ms": ms, "images_per_s": batch / (ms / 1e3),
                        "samples_ms": [1e3 * s for s in samples[impl]],
                        "first_loss": losses[impl][0], **memory[impl]}
    if have_torch:
        memory_key = "gpu_peak_mib" if args.device == "cuda" else "peak_rss_mib"
        result["time_ratio"] = result["minires"]["median_ms"] / result["torch"]["median_ms"]
        # the two steps of a round ran seconds apart: the median of their
        # ratios cancels the machine's drift between rounds best
        result["paired_ratio"] = statistics.median(
            m / t for m, t in zip(samples["minires"], samples["torch"], strict=True))
        result["memory_ratio"] = (result["minires"][memory_key]
                                  / max(result["torch"][memory_key], 1e-9))
    result["pools"] = {w.impl: w.hello.get("pools") for w in workers}
    return result


# ---- ops --------------------------------------------------------------------

def minires_layout(a: Any) -> Any:
    """A copy of ``a`` (N, C, H, W) in the memory order that minires's own
    convolution gives its outputs, so each op sees its input as it would
    inside the network (a channels-last buffer, say, seen as NCHW)."""
    import numpy as np

    from minires import functional as F

    probe, _ = F.conv2d_forward(np.zeros((2, 2, 3, 3), a.dtype), np.zeros((2, 2, 1, 1), a.dtype))
    order = [int(i) for i in np.argsort(probe.strides)[::-1]]   # slowest axis first
    return np.ascontiguousarray(np.transpose(a, order)).transpose(np.argsort(order))


def make_op(kind: str, c_in: int, c_out: int, h: int, stride: int, batch: int, torch: Any,
            rng: Any, device: Device = CPU):
    """Return (minires_fwd, minires_bwd, minires_dout, torch_fwd, torch_bwd)
    closures and data for one op, on ``device``."""
    import numpy as np

    from minires import functional as F  # the public ops: the engine unless MINIRES_FAST=0

    on = device.minires
    x = rng.standard_normal((batch, c_in, h, h)).astype(np.float32)
    xm = on(minires_layout(x))
    if kind == "conv":
        w = (rng.standard_normal((c_out, c_in, 3, 3)) * np.sqrt(2 / (9 * c_in))).astype(np.float32)
        oh = (h - 1) // stride + 1
        dout = rng.standard_normal((batch, c_out, oh, oh)).astype(np.float32)
        wm = on(w)
        m_fwd = lambda: F.conv2d_forward(xm, wm, None, stride, 1)
        m_bwd = lambda cache, d: F.conv2d_backward(d, cache)
        t_args = [torch.from_numpy(w)] if torch is not None else []
        t_fwd = lambda tx, tw: torch.nn.functional.conv2d(tx, tw, None, stride, 1)
    elif kind == "bn":
        gamma = np.ones(c_in, np.float32) + 0.1 * rng.standard_normal(c_in).astype(np.float32)
        beta = 0.1 * rng.standard_normal(c_in).astype(np.float32)
        rm, rv = np.zeros(c_in, np.float32), np.ones(c_in, np.float32)
        dout = rng.standard_normal(x.shape).astype(np.float32)
        gm, bm, rmm, rvm = on(gamma), on(beta), on(rm), on(rv)
        m_fwd = lambda: F.batchnorm_forward(xm, gm, bm, rmm, rvm, training=True)
        m_bwd = lambda cache, d: F.batchnorm_backward(d, cache)
        if torch is not None:
            t_args = [torch.from_numpy(gamma), torch.from_numpy(beta)]
            trm = device.torch(torch.from_numpy(rm.copy()))
            trv = device.torch(torch.from_numpy(rv.copy()))
        t_fwd = lambda tx, g, b: torch.nn.functional.batch_norm(tx, trm, trv, g, b, True)
    elif kind == "relu":
        dout = rng.standard_normal(x.shape).astype(np.float32)
        m_fwd = lambda: F.relu_forward(xm)
        m_bwd = lambda cache, d: F.relu_backward(d, cache)
        t_args = []
        t_fwd = lambda tx: torch.nn.functional.relu(tx)
    elif kind == "gap":
        dout = rng.standard_normal((batch, c_in)).astype(np.float32)
        m_fwd = lambda: F.global_avgpool2d_forward(xm)
        m_bwd = lambda cache, d: F.global_avgpool2d_backward(d, cache)
        t_args = []
        t_fwd = lambda tx: tx.mean((2, 3))
    else:
        raise ValueError(f"unknown op kind {kind!r}")
    dm = on(minires_layout(dout) if dout.ndim == 4 else dout)
    if torch is None:
        return m_fwd, m_bwd, dm, None, None
    tx = device.torch(torch.from_numpy(x)).requires_grad_(True)
    t_params = [device.torch(t).requires_grad_(True) for t in t_args]
    tdout = device.torch(torch.from_numpy(dout))

    def torch_forward():
        return t_fwd(tx, *t_params)

    def torch_backward(out):
        return torch.autograd.grad(out, [tx, *t_params], tdout)

    return m_fwd, m_bwd, dm, torch_forward, torch_backward


OP_PAUSE = 0.05   # seconds of rest before each library's turn at an op


def bench_ops(batch: int, reps: int, torch: Any, device: Device = CPU, warmup: int = 1,
              pause: float = OP_PAUSE) -> list[dict[str, Any]]:
    """Median forward and backward time of each op, minires and torch timed
    back to back in every repetition (``warmup`` untimed repetitions first),
    with a short rest (``pause``) before each library's turn: torch's OpenMP
    threads busy-wait after an op and would slow minires's threads if it ran
    straight after (without the rest, minires's forward convolutions, timed
    right after torch's backward, took up to twice as long). On a GPU each
    timing starts and stops on a synchronized device."""
    import numpy as np

    rng = np.random.default_rng(0)
    rows = []
    for name, kind, c_in, c_out, h, stride, count in OPS:
        m_fwd, m_bwd, dm, t_fwd, t_bwd = make_op(kind, c_in, c_out, h, stride, batch, torch, rng,
                                                 device)
        times: dict[str, list[float]] = {"minires_fwd": [], "minires_bwd": [],
                                         "torch_fwd": [], "torch_bwd": []}
        for r in range(reps + warmup):
            time.sleep(pause)
            device.sync("minires")
            t0 = time.perf_counter()
            _, cache = m_fwd()
            device.sync("minires")
            t1 = time.perf_counter()
            m_bwd(cache, dm)
            device.sync("minires")
            t2 = time.perf_counter()
            del cache
            if r >= warmup:
                times["minires_fwd"].append(t1 - t0)
                times["minires_bwd"].append(t2 - t1)
            if t_fwd is None:
                continue
            time.sleep(pause)
            device.sync("torch")
            t0 = time.perf_counter()
            out = t_fwd()
            device.sync("torch")
            t1 = time.perf_counter()
            t_bwd(out)
            device.sync("torch")
            t2 = time.perf_counter()
            del out
            if r >= warmup:
                times["torch_fwd"].append(t1 - t0)
                times["torch_bwd"].append(t2 - t1)
        row: dict[str, Any] = {"op": name, "batch": batch, "per_step": count}
        for key, samples in times.items():
            row[key + "_ms"] = median_ms(samples) if samples else None
        for part in ("fwd", "bwd"):
            t = row[f"torch_{part}_ms"]
            row[f"ratio_{part}"] = row[f"minires_{part}_ms"] / t if t else None
        rows.append(row)
        print(f"  {name}: fwd {row['minires_fwd_ms']:.2f} ms, bwd {row['minires_bwd_ms']:.2f} ms",
              file=sys.stderr, flush=True)
    return rows


def ops_per_step(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """Each op's median times the number of times it runs in one step, summed."""
    total: dict[str, float | None] = {}
    for key in ("minires_fwd", "minires_bwd", "torch_fwd", "torch_bwd"):
        values = [r[key + "_ms"] for r in rows]
        total[key] = (None if any(v is None for v in values)
                      else sum(v * r["per_step"] for v, r in zip(values, rows, strict=True)))
    for part in ("fwd", "bwd"):
        t = total[f"torch_{part}"]
        total[f"ratio_{part}"] = total[f"minires_{part}"] / t if t else None
    return total


# ---- float32 against float64 ------------------------------------------------

def float32_gradient_error(batch: int = 8, seed: int = 0) -> dict[str, Any]:
    """Max-norm relative error of each float32 ResNet-20 parameter gradient
    against the float64 gradient (same weights, same batch, training mode)."""
    import numpy as np

    from minires import backend
    from minires.models import resnet_cifar
    from minires.nn import init
    from minires.nn.loss import CrossEntropyLoss

    # seeded weights: for a few draws a pre-activation lies within float32's
    # rounding of 0 and its ReLU flips between the precisions (see
    # tests/test_fast_paths.py), which is not accumulation error
    init.manual_seed(seed)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, 3, 32, 32))
    y = backend.asarray(rng.integers(0, 10, batch))      # on the active backend
    grads = {}
    model64 = None
    for dtype in ("float64", "float32"):
        model = resnet_cifar(20, dtype=dtype)
        if model64 is None:
            model64 = model
        else:
            model.load_state_dict(model64.state_dict())
        criterion = CrossEntropyLoss()
        criterion(model(backend.asarray(x, dtype=dtype)), y)
        model.backward(criterion.backward())
        grads[dtype] = {name: np.asarray(backend.to_numpy(p.grad), dtype=np.float64)
                        for name, p in model.named_parameters()}
    errors = {}
    for name, g64 in grads["float64"].items():
        g32 = grads["float32"][name]
        errors[name] = float(np.max(np.abs(g32 - g64)) / max(np.max(np.abs(g64)), 1e-30))
    worst = max(errors, key=errors.get)
    return {"batch": batch, "max_rel_error": errors[worst], "worst_parameter": worst,
            "per_parameter": errors}


# ---- report -------------------------------------------------------------------

def fmt(v: Any, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def markdown(report: dict[str, Any]) -> str:
    lines = []
    steps = report.get("steps", [])
    gpu = report["settings"].get("device") == "cuda"
    if steps:
        memory_key, memory_name = (("gpu_peak_mib", "GPU peak MiB") if gpu
                                   else ("peak_rss_mib", "peak MiB"))
        lines += ["### ResNet-20 training step (forward, loss, backward, SGD momentum)"
                  + (": minires on CuPy, PyTorch on CUDA" if gpu else ""), "",
                  "| batch | minires ms | torch ms | ratio | paired ratio | minires img/s "
                  f"| torch img/s | minires {memory_name} | torch {memory_name} "
                  "| memory ratio |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for s in steps:
            t = s.get("torch", {})
            lines.append(
                f"| {s['batch']} | {fmt(s['minires']['median_ms'])} | {fmt(t.get('median_ms'))} "
                f"| {fmt(s.get('time_ratio'), 2)} | {fmt(s.get('paired_ratio'), 2)} "
                f"| {fmt(s['minires']['images_per_s'], 0)} "
                f"| {fmt(t.get('images_per_s'), 0)} | {fmt(s['minires'][memory_key], 0)} "
                f"| {fmt(t.get(memory_key), 0)} | {fmt(s.get('memory_ratio'), 2)} |")
        lines.append("")
    if steps and gpu:
        lines.append("GPU memory of one step: the most bytes held by arrays at once (torch: "
                     "max_memory_allocated; CuPy: its pool's allocations and frees, added up "
                     "by a memory hook). Taken from the device by the caching allocators, "
                     "minires / torch: "
                     + ", ".join(f"batch {s['batch']} {s['minires']['gpu_pool_mib']:.0f} / "
                                 f"{fmt(s.get('torch', {}).get('gpu_pool_mib'), 0)} MiB"
                                 for s in steps) + ".")
        lines.append("")
    elif steps:
        lines.append("Peak memory: resident set above a baseline taken after imports, one "
                     "process per library; minires's tracemalloc peak: "
                     + ", ".join(f"batch {s['batch']} {s['minires']['tracemalloc_peak_mib']:.0f} "
                                 "MiB" for s in steps) + ".")
        if not report["settings"].get("default_malloc"):
            lines.append("Both step workers ran with glibc malloc's "
                         + " ".join(f"{k}={v}" for k, v in MALLOC_ENV.items())
                         + " (freed memory kept for reuse; `--default-malloc` for glibc's "
                         "defaults).")
        lines.append("")
    ops = report.get("ops", [])
    if ops:
        lines += [f"### Ops at the ResNet-20 shapes, batch {ops[0]['batch']} (median ms)", "",
                  "| op | per step | minires fwd | torch fwd | ratio | minires bwd | torch bwd "
                  "| ratio |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in ops:
            lines.append(
                f"| {r['op']} | {r['per_step']} | {fmt(r['minires_fwd_ms'], 2)} "
                f"| {fmt(r['torch_fwd_ms'], 2)} | {fmt(r['ratio_fwd'], 2)} "
                f"| {fmt(r['minires_bwd_ms'], 2)} | {fmt(r['torch_bwd_ms'], 2)} "
                f"| {fmt(r['ratio_bwd'], 2)} |")
        total = report["ops_per_step_ms"]
        lines.append(
            f"| **all of the above, times per step** | | {fmt(total['minires_fwd'])} "
            f"| {fmt(total['torch_fwd'])} | {fmt(total['ratio_fwd'], 2)} "
            f"| {fmt(total['minires_bwd'])} | {fmt(total['torch_bwd'])} "
            f"| {fmt(total['ratio_bwd'], 2)} |")
        lines.append("")
    prec = report.get("float32_gradients")
    if prec:
        lines.append(f"float32 vs float64 gradients (batch {prec['batch']}): max relative "
                     f"error {prec['max_rel_error']:.2e} (worst: {prec['worst_parameter']}).")
        lines.append("")
    m = report["machine"]
    busy = m["load_average"][0]              # before the run: other people's work
    if busy > 0.5 * m["cores_available"]:
        lines.append(f"**Busy machine** (1-minute load {busy:.1f} on "
                     f"{m['cores_available']} cores before the run): a thread pool "
                     "waits for its descheduled helper thread at every parallel call, so "
                     "multi-threaded timings are inflated and erratic. Re-run when the "
                     "machine is quiet, or compare at --threads 1.")
        lines.append("")
    if gpu:
        g = m["gpu"]
        lines.append(f"GPU: {g['gpu']}, CuPy {g['cupy']} (CUDA runtime {g['cuda_runtime']}), "
                     f"torch {m['torch']} (CUDA {g.get('torch_cuda')}, cuDNN {g.get('cudnn')}, "
                     f"TF32 {'on' if report['settings'].get('tf32') else 'off'}, "
                     f"cudnn.benchmark {g.get('cudnn_benchmark')}); host: {m['cpu']}, "
                     f"{m['threads']} threads.")
        return "\n".join(lines)
    blas = [p for p in m["thread_pools"] if p.get("user_api") == "blas"]
    kernel = ", ".join(f"{p.get('internal_api')} {p.get('version')} {p.get('architecture')}"
                       for p in blas) or "unknown (threadpoolctl not installed)"
    lines.append(f"Machine: {m['cpu']}, {m['threads']} threads, NumPy {m['numpy']} "
                 f"(BLAS: {kernel}), torch {m['torch']}; OpenBLAS env {m['openblas_env']}; "
                 f"load average before {tuple(round(v, 2) for v in m['load_average'])}, "
                 f"after {tuple(round(v, 2) for v in report['load_average_after'])}.")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cpu: minires on NumPy against torch on the CPU (default); cuda: "
                        "minires on CuPy against torch on CUDA")
    p.add_argument("--tf32", action="store_true",
                   help="with --device cuda: let both libraries use TF32 (default: IEEE float32)")
    p.add_argument("--quick", action="store_true",
                   help="short run: batch 32 only, ops at batch 32, 5 rounds, 2 warm-up steps")
    p.add_argument("--batches", type=int, nargs="+", default=None,
                   help="batch sizes of the full step (default 32 128; 32 128 512 on cuda)")
    p.add_argument("--ops-batch", type=int, default=None, help="batch of the op timings "
                   "(default 128, 32 with --quick)")
    p.add_argument("--rounds", type=int, default=None, help="timed steps per implementation "
                   "(default 15, 5 with --quick)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3)")
    p.add_argument("--op-reps", type=int, default=None, help="timed repetitions per op "
                   "(default 7, 5 with --quick; 25 and 10 on cuda)")
    p.add_argument("--pause", type=float, default=None,
                   help="seconds of rest before each timed step (default 0.5; 0 on cuda)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                   help="threads for both libraries (default: the usable cores)")
    p.add_argument("--native-openblas", action="store_true",
                   help=f"unset {' and '.join(OPENBLAS_CORE_VARS)} for this run (benchmark only)")
    p.add_argument("--default-malloc", action="store_true",
                   help="run the step workers with glibc malloc's default settings "
                        f"(default: {' '.join(f'{k}={v}' for k, v in MALLOC_ENV.items())})")
    p.add_argument("--skip-ops", action="store_true")
    p.add_argument("--skip-steps", action="store_true")
    p.add_argument("--skip-precision", action="store_true")
    p.add_argument("--output", type=Path, default=None,
                   help="default benchmarks/results/bench.json (bench_cuda.json on cuda)")
    p.add_argument("--worker", choices=("minires", "torch"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    gpu = args.device == "cuda"
    args.batches = args.batches or ([32] if args.quick else [32, 128, 512] if gpu else [32, 128])
    args.ops_batch = args.ops_batch or (32 if args.quick else 128)
    args.rounds = args.rounds or (5 if args.quick else 15)
    args.warmup = args.warmup if args.warmup is not None else (2 if args.quick else 3)
    args.op_reps = args.op_reps or ((10 if args.quick else 25) if gpu
                                    else (5 if args.quick else 7))
    args.pause = args.pause if args.pause is not None else (0.0 if gpu else 0.5)
    args.output = args.output or RESULTS / ("bench_cuda.json" if gpu else "bench.json")
    if min(args.rounds, args.op_reps) < 1 or args.threads < 1:
        p.error("rounds, op-reps and threads must be at least 1")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = parse_args(argv)
    configure_threads(args.threads, args.native_openblas)
    device = Device(args.device, args.tf32)
    device.configure()
    if args.worker:
        worker(args.worker, args.batches[0], args.threads, device)
        return None
    import numpy  # noqa: F401  (loaded before threadpoolctl looks for BLAS)

    if device.gpu:
        from minires import backend

        backend.use("cupy")          # a clear error here when CuPy or the GPU is missing
    torch = import_torch_on(device, args.threads)
    pools = limit_pools(args.threads)
    if torch is None:
        print("torch is not installed" + (" or sees no GPU" if device.gpu else "")
              + ": timing minires alone", file=sys.stderr)
    report: dict[str, Any] = {"machine": machine_info(args.threads, pools, torch),
                              "settings": {k: (str(v) if isinstance(v, Path) else v)
                                           for k, v in vars(args).items() if k != "worker"}}
    if device.gpu:
        report["machine"]["gpu"] = gpu_info(torch)
    if not args.skip_precision:
        print("float32 vs float64 gradients ...", file=sys.stderr, flush=True)
        report["float32_gradients"] = float32_gradient_error()
    if not args.skip_ops:
        print(f"ops at batch {args.ops_batch} ...", file=sys.stderr, flush=True)
        report["ops"] = bench_ops(args.ops_batch, args.op_reps, torch, device,
                                  warmup=3 if device.gpu else 1,
                                  pause=0.0 if device.gpu else OP_PAUSE)
        report["ops_per_step_ms"] = ops_per_step(report["ops"])
    if not args.skip_steps:
        report["steps"] = []
        for batch in args.batches:
            print(f"training step at batch {batch} ...", file=sys.stderr, flush=True)
            report["steps"].append(bench_steps(batch, args, torch is not None))
    report["load_average_after"] = os.getloadavg()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1) + "\n")
    print(markdown(report))
    print(f"\n(written to {args.output})", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
