"""The Ray scoring engine: blocks of users scored by Ray tasks on a cluster's workers.

The driver (the ``recsys`` process) reads the database in one snapshot, as the local engine
does. What travels:

* **once per run**, through Ray's object store (``ray.put``): the run's
  :class:`recsys.scoring.score.ScoringPart`, in its portable form (numpy arrays only): the
  model's user and product vectors (or its arrays: EASE, ALS), the product side of the rules
  (availability, boosts, caps, the fallback lists) and what the reasons need;
* **per block**, as the task's argument: the block's user ids and model indices and their
  ratings and exclusions (:class:`recsys.scoring.score.UserBlock`);
* **back**, per block: its rows and rule counts (:class:`recsys.scoring.score.BlockRows`).

Workers run :func:`recsys.scoring.score.score_user_block`, the local engine's own block
function, so both engines write the same rows. They need recsys and numpy installed, but no
model directory and no PostgreSQL. The driver writes every row into the run's unpublished
rows through :class:`recsys.scoring.publish.RunWriter` (COPY), so nothing is served until
every block has come back.

Failure: a task lost with its worker or node is retried by Ray (``max_retries``, on any node
that is left). A block that still fails, or gives no result within ``task_timeout_s``, fails
the run: :func:`recsys.scoring.score.score_and_write` records it ``failed`` with the reason
and the served recommendations stay as they were.

``ray.init`` always gets the explicit address: without one Ray silently starts a new local
instance. The address is probed first with a short TCP connect, so an unreachable cluster is
one line (:class:`ClusterUnavailable`) instead of Ray's long retries.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from recsys.errors import RecsysError

_log = logging.getLogger(__name__)

ENGINES = ("local", "ray")
"""Values of ``--engine`` / ``RECSYS_ENGINE``."""

CONNECT_TIMEOUT_S = 5.0
"""How long the probe of the cluster's address waits for a TCP connection."""


class ClusterError(RecsysError):
    """The cluster could not do the work (a block failed after Ray's retries, or timed out)."""


class ClusterUnavailable(ClusterError):
    """The Ray cluster cannot be reached, or Ray is not installed."""


@dataclass(frozen=True)
class EngineOptions:
    """Where the work runs."""

    engine: str = "local"
    """``local`` (this process) or ``ray`` (the cluster at ``ray_address``)."""
    ray_address: str | None = None
    """``host:port`` of the Ray head's GCS (what ``ray start --head --port`` listens on)."""
    max_retries: int = 3
    """Times Ray reruns a task whose worker or node died."""
    task_timeout_s: float = 600.0
    """Longest wait for one block's result (a cluster without free workers fails, not hangs)."""

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise RecsysError(f"unknown engine {self.engine!r} (one of {', '.join(ENGINES)})")
        if self.max_retries < 0:
            raise RecsysError(f"ray max retries must be at least 0, got {self.max_retries}")
        if self.task_timeout_s <= 0:
            raise RecsysError("ray task timeout must be positive")


def engine_options(
    settings: Any, engine: str | None = None, ray_address: str | None = None
) -> EngineOptions:
    """The engine options: explicit values first, then settings (``RECSYS_ENGINE``, ...)."""
    return EngineOptions(
        engine=engine or getattr(settings, "engine", None) or "local",
        ray_address=ray_address or getattr(settings, "ray_address", None),
        max_retries=int(getattr(settings, "ray_max_retries", 3)),
        task_timeout_s=float(getattr(settings, "ray_task_timeout_s", 600.0)),
    )


def require_ray() -> Any:
    """``import ray``, or one clear line saying how to install it."""
    try:
        import ray
    except ImportError as err:
        raise ClusterUnavailable(
            f"--engine ray needs Ray ({err}); install it with: pip install 'recsys[ray]'"
        ) from None
    return ray


def parse_address(address: str | None) -> tuple[str, int]:
    """``host:port`` -> (host, port); anything else is one clear error."""
    if not address:
        raise ClusterUnavailable(
            "--engine ray needs the cluster's address: --ray-address HOST:PORT "
            "(or RECSYS_RAY_ADDRESS)"
        )
    host, sep, port = address.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ClusterUnavailable(
            f"bad Ray address {address!r}: expected HOST:PORT of the head node, e.g. 10.0.0.5:6379"
        )
    return host.strip("[]"), int(port)


def probe(address: str | None, timeout: float = CONNECT_TIMEOUT_S) -> tuple[str, int]:
    """Check that something listens at the Ray head's address within ``timeout`` seconds."""
    host, port = parse_address(address)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ClusterUnavailable(
            f"cannot reach the Ray cluster at {host}:{port}: {reason} "
            "(is `ray start --head` running there?)"
        ) from None
    return host, port


def check_engine(options: EngineOptions) -> EngineOptions:
    """Fail early, in one line, when the Ray engine is asked for and cannot work: Ray not
    installed, no or a bad address, nothing listening there. Connects to nothing."""
    if options.engine == "ray":
        require_ray()
        probe(options.ray_address)
    return options


_STILL_RUNNING: list[threading.Thread] = []
"""Threads of this process that still use the Ray connection after their caller gave up on
them (a training past its timeout): :func:`connected` does not close the connection under
them, since Ray ends the whole process when a thread uses a connection that was shut down."""


def keep_connected_while(thread: threading.Thread) -> None:
    """Keep this process's Ray connection open while ``thread`` runs (see :func:`connected`)."""
    _STILL_RUNNING.append(thread)


@contextlib.contextmanager
def connected(options: EngineOptions) -> Iterator[Any]:
    """The ``ray`` module, connected to the cluster at ``options.ray_address`` for the block.

    Probes the address first and raises one clear :class:`ClusterUnavailable` if it cannot
    connect; a connection made here is closed on exit (one that already existed is kept), unless
    a thread given to :func:`keep_connected_while` still runs: then it stays open, with a
    warning, and the next :func:`connected` reuses it. The cluster itself keeps running.
    """
    ray = require_ray()
    host, port = probe(options.ray_address)
    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(
                address=f"{host}:{port}",
                namespace="recsys",
                logging_level=logging.WARNING,
                log_to_driver=False,
            )
        except Exception as err:
            raise ClusterUnavailable(
                f"cannot connect to the Ray cluster at {host}:{port}: {_one_line(err)}"
            ) from None
    try:
        yield ray
    finally:
        _STILL_RUNNING[:] = [t for t in _STILL_RUNNING if t.is_alive()]
        if started_here and _STILL_RUNNING:
            _log.warning(
                "the Ray connection stays open: %d training(s) given up on still run on the "
                "cluster",
                len(_STILL_RUNNING),
            )
        elif started_here:
            ray.shutdown()


@contextlib.contextmanager
def block_runner(options: EngineOptions) -> Iterator[Any]:
    """The scoring runner of ``options``: None (the local engine) or a connected Ray runner.

    With the Ray engine, connects to the cluster on entry (one clear error if it cannot) and
    disconnects on exit (see :func:`connected`).
    """
    if options.engine == "local":
        yield None
        return
    with connected(options) as ray:
        yield RayBlocks(ray, options)


class RayBlocks:
    """A :data:`recsys.scoring.score.BlockRunner` that scores blocks as Ray tasks.

    The part goes into the object store once; at most ``window`` blocks are in flight (two per
    CPU of the cluster), and results are taken in block order, so the driver reads the next
    blocks' ratings while the workers score.
    """

    def __init__(self, ray: Any, options: EngineOptions) -> None:
        self.ray = ray
        self.options = options
        self.task = ray.remote(_score_remote).options(
            num_cpus=1, max_retries=options.max_retries, retry_exceptions=False
        )

    @property
    def window(self) -> int:
        cpus = int(self.ray.cluster_resources().get("CPU", 1))
        return max(2, 2 * cpus)

    def __call__(self, part: Any, blocks: Iterator[Any]) -> Iterator[Any]:
        ray = self.ray
        portable = part.portable()
        new_text = part.run.new_text
        if new_text is not None and len(new_text) and portable is not part:
            name = part.model.model_type or type(part.model.recommender).__name__
            raise ClusterError(
                f"--cold-start is not available with --engine ray for model {name} "
                "(its text path stays on the driver); drop one of them"
            )
        try:
            part_ref = ray.put(portable)
        except Exception as err:
            raise ClusterError(
                f"the model cannot be sent to the Ray workers: {_one_line(err)}"
            ) from None
        window = self.window
        pending: deque = deque()
        try:
            for block in blocks:
                # the part travels inside a list: Ray then passes the reference itself, and each
                # worker process deserialises the part once (see _score_remote)
                pending.append(self.task.remote([part_ref], block))
                if len(pending) >= window:
                    yield self._result(pending.popleft())
            while pending:
                yield self._result(pending.popleft())
        finally:
            for ref in pending:
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)

    def _result(self, ref: Any) -> Any:
        ray = self.ray
        exceptions = ray.exceptions
        try:
            return ray.get(ref, timeout=self.options.task_timeout_s)
        except exceptions.GetTimeoutError:
            raise ClusterError(
                f"a scoring block gave no result within {self.options.task_timeout_s:g} s "
                "(are there workers with a free CPU?)"
            ) from None
        except exceptions.RayTaskError as err:
            cause = getattr(err, "cause", None)
            if isinstance(cause, RecsysError):
                raise cause from None
            raise ClusterError(
                f"a scoring block failed on the cluster: {_one_line(cause or err)}"
            ) from None
        except exceptions.RayError as err:
            raise ClusterError(
                f"a scoring block was lost on the cluster after {self.options.max_retries} "
                f"retries: {_one_line(err)}"
            ) from None


_PART: tuple[str, Any] | None = None
"""(object id, part) last used by this worker process: deserialised once per run."""


def _score_remote(part_box: list, block: Any) -> Any:
    """The Ray task: one block through the local engine's own block function."""
    global _PART
    import ray

    from recsys.scoring.score import score_user_block

    ref = part_box[0]
    key = ref.hex()
    if _PART is None or _PART[0] != key:
        _PART = (key, ray.get(ref))
    return score_user_block(_PART[1], block)


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    first = next((line.strip() for line in text if line.strip()), "")
    return f"{type(err).__name__}: {first}" if first else type(err).__name__
