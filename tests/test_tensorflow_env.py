"""TensorFlow's CPU allocator: recsys asks, before TensorFlow loads, for the one that gives freed
memory back, and never overrides a setting the user made."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from recsys import tensorflow_env

PROBE = (
    "import os\n"
    "{before}"
    "import recsys\n"
    "print(__import__('json').dumps(os.environ.get('TF_ENABLE_ONEDNN_OPTS')))\n"
)

HOLD_AND_FREE = (
    "import gc, json, os, recsys\n"
    "import tensorflow as tf\n"
    "page = os.sysconf('SC_PAGE_SIZE')\n"
    "rss = lambda: int(open('/proc/self/statm').read().split()[1]) * page / 2**20\n"
    "tf.random.uniform((8, 8)).numpy()\n"
    "before = rss()\n"
    "held = [tf.random.uniform((1024, 16384)) for _ in range(12)]\n"
    "peak = rss()\n"
    "del held; gc.collect()\n"
    "print(json.dumps([peak - before, rss() - before]))\n"
)


def _run(code: str, env_update: dict[str, str]) -> str:
    env = {k: v for k, v in os.environ.items() if k != tensorflow_env.VARIABLE}
    env.update(env_update, TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout
    return out.strip().splitlines()[-1]


@pytest.mark.subprocess
def test_import_recsys_asks_for_the_returning_allocator_unless_told_or_too_late() -> None:
    assert json.loads(_run(PROBE.format(before=""), {})) == "0"
    assert json.loads(_run(PROBE.format(before=""), {tensorflow_env.VARIABLE: "1"})) == "1"
    assert json.loads(_run(PROBE.format(before="import tensorflow\n"), {})) is None


@pytest.mark.subprocess
def test_tensors_freed_after_import_recsys_leave_the_process() -> None:
    held, kept = json.loads(_run(HOLD_AND_FREE, {}))
    assert held > 600  # 768 MiB of tensors were held at once
    assert kept < 0.25 * held, (held, kept)
