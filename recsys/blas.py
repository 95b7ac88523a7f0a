"""The OpenBLAS kernels numpy and scipy use, chosen before either loads; the cores a process
may use; and work spread over threads that each run a one-thread BLAS.

The OpenBLAS inside numpy's and scipy's wheels picks its kernels from the CPU when it loads. On
AMD CPUs with AVX-512 (Zen 4 and later) it picks its AVX2 ``Haswell`` kernels, so every float32
matmul of the nightly run (scoring, EASE, similar products) runs at a fraction of what the same
cores do with its AVX-512 ``SkylakeX`` kernels (figures: benchmarks/RESULTS.md).
:func:`prefer_avx512_kernels` sets ``OPENBLAS_CORETYPE=SkylakeX`` there; ``import recsys``
calls it, so the ``recsys`` command and every process it starts (they inherit the environment)
use those kernels.

Nothing is changed when ``OPENBLAS_CORETYPE`` is already set (the user's choice wins), when
numpy is already loaded (too late to matter), off Linux, on other vendors (OpenBLAS already
detects Intel's AVX-512 models), or when the CPU lacks any AVX-512 subset those kernels use.
Only the summation order of a matmul changes, never what is computed.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

AVX512_FLAGS = frozenset({"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd"})
"""CPU flags the ``SkylakeX`` kernels need (Linux ``/proc/cpuinfo`` names)."""
CORETYPE = "SkylakeX"


def wanted_coretype(vendor: str, flags: set[str] | frozenset[str]) -> str | None:
    """The OpenBLAS core type to ask for on this CPU, or None to leave OpenBLAS's choice."""
    if vendor == "AuthenticAMD" and AVX512_FLAGS <= set(flags):
        return CORETYPE
    return None


def cpu_identity(path: str = "/proc/cpuinfo") -> tuple[str, set[str]]:
    """(vendor, flags) of the first CPU in ``path``; ("", set()) when it cannot be read."""
    vendor, flags = "", set()
    try:
        with open(path, encoding="ascii", errors="replace") as lines:
            for line in lines:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "vendor_id":
                    vendor = value.strip()
                elif key == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        return "", set()
    return vendor, flags


def prefer_avx512_kernels() -> str | None:
    """Set ``OPENBLAS_CORETYPE`` for this CPU if it helps and is still in time; returns it."""
    if "OPENBLAS_CORETYPE" in os.environ or "numpy" in sys.modules:
        return None
    if not sys.platform.startswith("linux"):
        return None
    coretype = wanted_coretype(*cpu_identity())
    if coretype:
        os.environ["OPENBLAS_CORETYPE"] = coretype
    return coretype


def local_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def ordered_in_threads(
    task: Callable[[Any], Any], items: Iterator[Any], threads: int
) -> Iterator[Any]:
    """``task(item)`` for every item on ``threads`` threads, results in the order of ``items``.

    The BLAS is limited to one thread meanwhile (the threads are the parallelism); at most
    ``2 * threads`` items are read ahead of the result being yielded. ``items`` is consumed
    in the calling thread only (it may read the database).
    """
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, "blas"), ThreadPoolExecutor(threads) as pool:
        pending: deque = deque()
        try:
            for item in items:
                pending.append(pool.submit(task, item))
                if len(pending) >= 2 * threads:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
