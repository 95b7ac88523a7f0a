"""TensorFlow's CPU allocator, chosen before TensorFlow loads: one that gives freed memory back.

On x86 TensorFlow enables its oneDNN operations by default (``TF_ENABLE_ONEDNN_OPTS``), and with
them a pooling CPU allocator that keeps every byte it ever held: once the ranker's training has
freed its tensors, the process still holds the training's peak until it ends, and the steps
after it (scoring, similar products) add their own memory on top. With oneDNN off TensorFlow
allocates from the C heap, and what training frees goes back to the operating system.

:func:`prefer_returning_allocator` sets ``TF_ENABLE_ONEDNN_OPTS=0``; ``import recsys`` calls it,
so the ``recsys`` command and every process it starts (they inherit the environment) use it.
Nothing is changed when the variable is already set (the user's choice wins) or when
TensorFlow is already loaded (too late to matter). What it costs in training speed is measured
by ``benchmarks/tf_memory.py``.
"""

from __future__ import annotations

import os
import sys

VARIABLE = "TF_ENABLE_ONEDNN_OPTS"


def prefer_returning_allocator() -> str | None:
    """Set ``TF_ENABLE_ONEDNN_OPTS=0`` if it is still in time and unset; returns the value set."""
    if VARIABLE in os.environ or "tensorflow" in sys.modules:
        return None
    os.environ[VARIABLE] = "0"
    return "0"
