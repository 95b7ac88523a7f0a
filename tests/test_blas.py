"""numpy's OpenBLAS kernels: recsys asks for the AVX-512 ones on AMD CPUs that have them, before
numpy loads, and never overrides a core type the user set."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from recsys import blas

PROBE = (
    "import os, sys\n"
    "{before}"
    "import recsys, numpy, threadpoolctl\n"
    "info = [i for i in threadpoolctl.threadpool_info() if i['internal_api'] == 'openblas']\n"
    "print(__import__('json').dumps([os.environ.get('OPENBLAS_CORETYPE'),"
    " [i.get('architecture') for i in info]]))\n"
)


def _probe(env_update: dict[str, str | None], before: str = "") -> tuple[str | None, list]:
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    env.update({k: v for k, v in env_update.items() if v is not None})
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(before=before)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    coretype, architectures = json.loads(out.strip().splitlines()[-1])
    return coretype, architectures


def test_the_core_type_is_asked_for_only_on_amd_with_every_avx512_subset() -> None:
    full = set(blas.AVX512_FLAGS) | {"avx2", "fma"}
    assert blas.wanted_coretype("AuthenticAMD", full) == "SkylakeX"
    assert blas.wanted_coretype("AuthenticAMD", full - {"avx512vl"}) is None
    assert blas.wanted_coretype("AuthenticAMD", {"avx2", "fma"}) is None
    assert blas.wanted_coretype("GenuineIntel", full) is None  # OpenBLAS detects these itself


def test_cpuinfo_is_read_for_the_vendor_and_flags(tmp_path) -> None:
    path = tmp_path / "cpuinfo"
    path.write_text(
        "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu avx2 avx512f avx512bw\n\n"
        "processor\t: 1\nvendor_id\t: AuthenticAMD\nflags\t\t: other\n"
    )
    assert blas.cpu_identity(str(path)) == ("AuthenticAMD", {"fpu", "avx2", "avx512f", "avx512bw"})
    assert blas.cpu_identity(str(tmp_path / "missing")) == ("", set())


@pytest.mark.subprocess
def test_import_recsys_sets_the_kernels_numpy_then_loads() -> None:
    expected = blas.wanted_coretype(*blas.cpu_identity()) if sys.platform == "linux" else None
    coretype, architectures = _probe({})
    assert coretype == expected
    if expected:
        assert architectures and all(a == expected for a in architectures)


@pytest.mark.subprocess
def test_a_core_type_the_user_set_or_numpy_loaded_first_is_left_alone() -> None:
    coretype, architectures = _probe({"OPENBLAS_CORETYPE": "Haswell"})
    assert coretype == "Haswell" and all(a == "Haswell" for a in architectures)
    coretype, _ = _probe({}, before="import numpy\n")
    assert coretype is None


def test_work_in_threads_comes_back_in_order_with_a_one_thread_blas() -> None:
    import threading
    import time

    import numpy  # noqa: F401  (loads the BLAS that threadpoolctl limits)
    from threadpoolctl import threadpool_info

    read: list[int] = []
    seen: list[tuple[int, int]] = []  # (item, items read when its result was yielded)
    names: set[str] = set()

    def items():
        for i in range(12):
            read.append(i)
            yield i

    def task(i: int) -> tuple[int, list[int]]:
        time.sleep(0.02 if i % 3 == 0 else 0.0)  # earlier items finish later
        names.add(threading.current_thread().name)
        blas_threads = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
        return i, blas_threads

    for i, blas_threads in blas.ordered_in_threads(task, items(), 2):
        seen.append((i, len(read)))
        assert blas_threads and set(blas_threads) == {1}
    assert [i for i, _ in seen] == list(range(12))
    assert all(n_read - i <= 1 + 2 * 2 for i, n_read in seen)  # read at most 2 x threads ahead
    assert threading.current_thread().name not in names and len(names) >= 1


def test_work_in_threads_stops_reading_when_the_consumer_stops() -> None:
    read: list[int] = []

    def items():
        for i in range(1000):
            read.append(i)
            yield i

    results = blas.ordered_in_threads(lambda i: i * i, items(), 2)
    assert [next(results) for _ in range(3)] == [0, 1, 4]
    results.close()
    assert len(read) <= 3 + 2 * 2
