"""The ``--engine`` / ``--ray-address`` options, shared by ``recsys score``, ``run`` and
``schedule`` (one definition; the values go to :func:`recsys.cluster.engine.engine_options`)."""

from __future__ import annotations

from collections.abc import Callable

import click

ENGINE_OPTIONS = (
    click.option(
        "--engine",
        type=click.Choice(["local", "ray"]),
        default=None,
        help="Where scoring runs: this process (local) or a Ray cluster (ray). "
        "Default: RECSYS_ENGINE, else local.",
    ),
    click.option(
        "--ray-address",
        default=None,
        metavar="HOST:PORT",
        help="The Ray head of --engine ray (default: RECSYS_RAY_ADDRESS).",
    ),
)


def engine_options(f: Callable) -> Callable:
    """Add ``--engine`` and ``--ray-address`` (keyword arguments ``engine``, ``ray_address``)."""
    for option in reversed(ENGINE_OPTIONS):
        f = option(f)
    return f
