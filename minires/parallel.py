"""Run the work of one op on several CPU threads (NumPy backend only).

Why: the matrices of a CIFAR ResNet are small (16 to 64 output channels).
OpenBLAS splits one such product over two cores poorly, and everything
around the products (the im2col copies, picking the outputs off the grid,
batch norm, ReLU) runs on one core in NumPy. Splitting the *images* of a
convolution's batch instead, one contiguous part per thread, each thread
running the whole loop of copies and single-threaded products on its own
part, keeps every core busy: on ResNet-20's 3x3 convolutions at batch 128
on 2 cores, 1.5 to 1.7x faster than one thread driving a 2-threaded BLAS.
Batch norm and ReLU split their *channels* the same way
(``over_channels``). NumPy releases Python's GIL inside its copies,
elementwise loops and BLAS calls, so plain Python threads run in parallel.

The images of a convolution are independent, so the parts write disjoint
slices of the output; only the weight gradient is a sum over images. The
parts are made of whole chunks of the convolution's loop (a part starts at
a multiple of its chunk size), each part returns its chunks' terms, and the
caller adds all terms in chunk order: the sum a single thread makes. Batch
norm's per-channel sums do not depend on the other channels. So the numbers
do not depend on the number of threads: a run with a given seed gives the
same weights, to the last bit, on a laptop and on a server.

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

The calling thread runs the first part itself and a pool of ``threads - 1``
workers the others, so a call wakes one thread fewer.

The number of threads: ``MINIRES_THREADS`` if set, else the cores this
process may use; change it with ``set_threads``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")

_threads: int | None = None
_pool: ThreadPoolExecutor | None = None
_blas: list[Any] | None = None      # threadpoolctl's controllers of the loaded BLAS libraries
_blas_original: list[int] = []      # their thread counts before minires set them to 1


def threads() -> int:
    """How many threads ``over_images`` uses (``MINIRES_THREADS``, else the cores)."""
    if _threads is None:
        env = os.environ.get("MINIRES_THREADS", "").strip()
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


def over_images(work: Callable[[slice], T], x: Any, grain: int = 1) -> list[T]:
    """Call ``work(images)`` for parts of ``range(N)``, ``N = x.shape[0]``,
    that together cover it, each starting at a multiple of ``grain``.

    On NumPy with more than one thread, BLAS on one thread (module
    docstring) and ``x`` of at least ``MIN_PARALLEL_SIZE`` elements, the
    parts run at the same time, one per thread; otherwise ``work`` runs
    once, on ``slice(0, N)``. Returns the results, one per part, in order.
    ``work`` must only write to its own images' slices.
    """
    return _over(work, x, 0, grain, MIN_PARALLEL_SIZE)


def over_channels(work: Callable[[slice], T], x: Any) -> list[T]:
    """``over_images`` for parts of the channel axis (axis 1) of ``x``: for
    elementwise and per-channel work (ReLU, batch norm), whose parts are
    independent too. Arrays under ``MIN_PARALLEL_CHANNELS_SIZE`` elements
    stay on one thread."""
    return _over(work, x, 1, 1, MIN_PARALLEL_CHANNELS_SIZE)


def _over(work: Callable[[slice], T], x: Any, axis: int, grain: int,
          min_size: int) -> list[T]:
    global _pool
    n = x.shape[axis]
    split = parts(n, threads(), grain)
    if (len(split) == 1 or x.size < min_size or not _is_numpy(type(x))
            or not _blas_single_threaded()):
        return [work(slice(0, n))]
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=threads() - 1, thread_name_prefix="minires")
    # The calling thread takes the first part itself instead of waiting idle:
    # one thread fewer to wake per call (ResNet-20 makes about 130 such calls
    # a step).
    others = [_pool.submit(work, part) for part in split[1:]]
    try:
        first = work(split[0])
    finally:
        wait(others)        # no part may still be writing when this returns or raises
    return [first] + [f.result() for f in others]


def _is_numpy(array_type: type) -> bool:
    return issubclass(array_type, np.ndarray)
