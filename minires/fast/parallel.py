"""The engine's thread pool: run the work of one op on several CPU threads
(NumPy backend only).

Why: the matrices of a CIFAR ResNet are small (16 to 64 output channels).
OpenBLAS splits one such product over two cores poorly, and everything
around the products (the im2col copies, picking the outputs off the grid,
batch norm, ReLU) runs on one core in NumPy. Sharing out the *images* of
a convolution's batch instead, in chunks, each thread running the whole
loop of copies and single-threaded products on the chunks it takes, keeps
every core busy: on ResNet-20's 3x3 convolutions at batch 128 on 2 cores,
1.5 to 1.7x faster than one thread driving a 2-threaded BLAS. Batch norm,
ReLU and the skip connection's sum split their *channels*, one part per
thread (``over_channels``). NumPy releases Python's GIL inside its copies,
elementwise loops and BLAS calls, so plain Python threads run in parallel.

The images of a convolution are independent, so its chunks of images
(the loop of copies and products in ``minires/fast/conv.py``) can run on any
thread, and write disjoint slices of the output; only the weight gradient
is a sum over images. ``over_chunks`` hands the chunks out one at a time,
to whichever thread asks first, instead of cutting the batch into one
fixed part per thread: on a shared or virtual machine one core is often
slowed down for a while, and with fixed halves the other then waited at
the end of the call. On this 2-core VM, at batch 128, one thread sat idle
at the end of the convolutions for 56 ms of a 586 ms ResNet-20 step with
halves, 30 ms with shared chunks. (Cutting batch norm's channels into
smaller shared parts the same way was no faster: each part costs a dozen
NumPy calls.) Each chunk's result comes back tagged with
its chunk, and the caller adds the weight-gradient terms in chunk order:
the sum a single thread makes, whichever thread computed which chunk.
Batch norm's per-channel sums do not depend on the other channels. So the
numbers do not depend on the number of threads: a run with a given seed
gives the same weights, to the last bit, on a laptop and on a server.

With more than one thread, minires limits BLAS to one thread for the whole
process (through ``threadpoolctl``), not only while a convolution runs: an
OpenBLAS thread that has just finished a product spins for a while, waiting
for more, and takes the core from the convolution's threads that come next
(limiting BLAS only inside each convolution made a ResNet-20 step 1.3x
*slower*). ``set_threads(1)`` gives BLAS its threads back. The work runs
once, on everything, the plain loop, when: BLAS has more than one thread
when the op starts (other code may set it; two threads calling a
multi-threaded OpenBLAS at once gave wrong products), the array is small
(``MIN_PARALLEL_SIZE``), there is one thread, or the arrays are CuPy's
(the GPU is parallel already).

The calling thread works too, beside a pool of ``threads - 1`` workers, so
a call wakes one thread fewer.

The number of threads: ``MINIRES_THREADS`` if set, else the cores this
process may use; change it with ``set_threads``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")

_threads: int | None = None
_pool: ThreadPoolExecutor | None = None
_blas: list[Any] | None = None      # threadpoolctl's controllers of the loaded BLAS libraries
_blas_original: list[int] = []      # their thread counts before minires set them to 1


def threads() -> int:
    """Threads of ``over_chunks`` and ``over_channels`` (``MINIRES_THREADS``, else the cores)."""
    if _threads is None:
        env = os.environ.get("MINIRES_THREADS", "").strip()
        if env and not (env.isdigit() and int(env) >= 1):
            raise ValueError(f"MINIRES_THREADS must be a positive integer, got {env!r}")
        set_threads(int(env) if env else len(os.sched_getaffinity(0)))
    assert _threads is not None
    return _threads


def set_threads(n: int) -> None:
    """Use ``n`` threads for the images of a convolution; with ``n > 1`` BLAS
    runs on one thread, with ``n == 1`` minires starts no threads and BLAS
    gets back the threads it had."""
    global _threads, _pool, _blas_original
    n = int(n)
    if n < 1:
        raise ValueError(f"set_threads: expected a positive number of threads, got {n}")
    if _pool is not None and n != _threads:
        _pool.shutdown(wait=True)
        _pool = None
    blas = _blas_libraries()
    if n > 1 and not _blas_original:
        _blas_original = [lib.num_threads for lib in blas]
        for lib in blas:
            lib.set_num_threads(1)
    elif n == 1 and _blas_original:
        for lib, original in zip(blas, _blas_original, strict=True):
            lib.set_num_threads(original)
        _blas_original = []
    _threads = n


def _blas_libraries() -> list[Any]:
    global _blas
    if _blas is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # pragma: no cover - threadpoolctl is a dependency
            _blas = []
        else:
            _blas = list(ThreadpoolController().select(user_api="blas").lib_controllers)
    return _blas


def _blas_single_threaded() -> bool:
    """True when every BLAS library runs on one thread. Checked before each
    parallel call: a multi-threaded OpenBLAS called from two threads at once
    gave wrong products, and other code (``threadpoolctl``, the CLI) may
    have changed BLAS's threads since ``set_threads``."""
    blas = _blas_libraries()
    return bool(blas) and all(lib.num_threads == 1 for lib in blas)


def parts(n: int, k: int, grain: int = 1) -> list[slice]:
    """``range(n)`` cut into at most ``k`` contiguous slices of near-equal size
    that start at multiples of ``grain`` (whole chunks of ``grain`` items)."""
    chunks = -(-n // max(1, grain))
    k = max(1, min(k, chunks))
    bounds = [min(n, grain * (chunks * i // k)) for i in range(k + 1)]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


# Below this many elements an op runs on one thread: handing the parts to
# the threads and waiting for them costs some 50-100 us, more than it saves
# on small arrays (ResNet-20 on the 8x8 digits took 1.5x longer on 2 threads
# than on one: its largest arrays have 2**16 elements; CIFAR-10 at batch 32
# has 2**17 to 2**19, and there the threads win).
MIN_PARALLEL_SIZE = 2**17
# The same for ``over_channels``: batch norm and ReLU do a few passes over
# memory per element, far less work than a convolution's products, so their
# threads pay off only on larger arrays. On 2 cores, batch norm and ReLU on
# CIFAR batch 32's 16x16 and 8x8 maps (2**18 and 2**17 elements) took 1.1 to
# 2x *longer* on two threads than on one; from 2**19 elements on (the 32x32
# maps at batch 32, every map at batch 128) two threads are 1.1 to 1.4x faster.
MIN_PARALLEL_CHANNELS_SIZE = 2**19


def chunk_slices(n: int, chunk: int) -> list[slice]:
    """``range(n)`` in consecutive slices of ``chunk`` items, the last one
    shorter if ``chunk`` does not divide ``n``: the chunks of ``over_chunks``."""
    return [slice(a, min(a + chunk, n)) for a in range(0, n, max(1, chunk))]


def over_chunks(work: Callable[[Iterator[slice]], list[T]], x: Any, chunk: int = 1) -> list[T]:
    """Call ``work(chunks)`` on every thread, ``chunks`` one stream of the
    chunks of ``range(N)``, ``N = x.shape[0]``, shared by all: ``slice(0,
    chunk)``, ``slice(chunk, 2*chunk)``, ... Each chunk goes to the thread
    that asks for the next one first (module docstring).

    ``work`` returns one result per chunk it took, in the order it took
    them, or an empty list; ``over_chunks`` returns the results in chunk
    order, the list ``work(iter(all chunks))`` returns, which is what runs,
    once, on the calling thread, when the threads step aside: BLAS has more
    than one thread, ``x`` is smaller than ``MIN_PARALLEL_SIZE``, there is
    one thread or one chunk, or ``x`` is not a NumPy array. ``work`` must
    only write to its own chunks' slices and must use up its stream.
    """
    chunks = chunk_slices(x.shape[0], chunk)
    if len(chunks) == 1 or not _parallel(x, MIN_PARALLEL_SIZE):
        return list(work(iter(chunks)))
    lock = threading.Lock()
    order = iter(range(len(chunks)))

    def next_chunk() -> int | None:
        with lock:
            return next(order, None)

    def run() -> tuple[list[int], list[T]]:
        taken: list[int] = []
        k = next_chunk()
        if k is None:           # the other threads took every chunk already
            return taken, []

        def stream(k: int | None) -> Iterator[slice]:
            while k is not None:
                taken.append(k)
                yield chunks[k]
                k = next_chunk()

        return taken, list(work(stream(k)))

    done = _at_once([run] * threads())
    if next_chunk() is not None:
        raise RuntimeError("over_chunks: work stopped before the end of its chunks")
    results: list[Any] = [None] * len(chunks)
    returned = False
    for taken, got in done:
        if got:
            if len(got) != len(taken):
                raise RuntimeError(f"over_chunks: work returned {len(got)} results "
                                   f"for {len(taken)} chunks")
            for k, result in zip(taken, got, strict=True):
                results[k] = result
            returned = True
    return results if returned else []


def over_channels(work: Callable[[slice], T], x: Any) -> list[T]:
    """Call ``work(channels)`` for parts of the channel axis (axis 1) of
    ``x``, one contiguous part per thread, at the same time: for
    elementwise and per-channel work (ReLU, batch norm), whose parts are
    independent. Returns the results, one per part, in order. The work
    runs once, on all channels, where ``over_chunks`` would step aside, or
    for arrays under ``MIN_PARALLEL_CHANNELS_SIZE`` elements."""
    n = x.shape[1]
    split = parts(n, threads())
    if len(split) == 1 or not _parallel(x, MIN_PARALLEL_CHANNELS_SIZE):
        return [work(slice(0, n))]
    return _at_once([lambda part=part: work(part) for part in split])


def _parallel(x: Any, min_size: int) -> bool:
    """Whether work on ``x`` may be split over the threads (``over_chunks``)."""
    return (threads() > 1 and x.size >= min_size and _is_numpy(type(x))
            and _blas_single_threaded())


def _at_once(calls: list[Callable[[], T]]) -> list[T]:
    """The first call on the calling thread and the others on the pool of
    ``threads - 1`` workers, at the same time; their results, in order."""
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=threads() - 1, thread_name_prefix="minires")
    others = [_pool.submit(call) for call in calls[1:]]
    try:
        first = calls[0]()
    finally:
        wait(others)        # nothing may still be writing when this returns or raises
    return [first] + [f.result() for f in others]


def _is_numpy(array_type: type) -> bool:
    return issubclass(array_type, np.ndarray)
