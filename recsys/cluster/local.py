"""A Ray cluster on this machine, for tests and benchmarks: a head plus worker nodes.

Each node is started by ``ray start`` in a session of its own, so the node's daemons (raylet,
agents; the GCS for the head) share that session's process group; the raylet's worker
processes are its descendants. Stopping the cluster, or killing one worker node, signals
exactly those groups and their descendants: ``ray stop`` is never used, because it stops every
Ray process on the host, other people's included.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from recsys.cluster.engine import ClusterError

START_TIMEOUT_S = 180.0
"""Longest wait for one ``ray start`` (a loaded 2-core machine takes tens of seconds)."""

START_ATTEMPTS = 3
"""Tries of each ``ray start`` before giving up."""


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ray_executable() -> str:
    candidate = Path(sys.executable).with_name("ray")
    return str(candidate) if candidate.exists() else "ray"


@dataclass
class LocalCluster:
    """A head node and ``workers`` worker nodes with ``cpus`` CPUs each, on 127.0.0.1.

    Args:
        workers: worker nodes besides the head.
        cpus: CPUs each node offers to Ray (the head too).
        env: extra environment of every node (e.g. ``PYTHONPATH``, so that its workers import
            the same recsys as the driver).
        head_cpus: CPUs of the head (None: ``cpus``).
    """

    workers: int = 1
    cpus: int = 1
    env: dict[str, str] = field(default_factory=dict)
    head_cpus: int | None = None
    """CPUs of the head node (None: ``cpus``; 0: the head runs no tasks)."""
    port: int = 0
    temp_dir: Path | None = None
    groups: list[int] = field(default_factory=list)
    """Process group of each node: the head's first."""
    worker_ports: list[int] = field(default_factory=list)
    """Node manager port of each worker node (``NodeManagerPort`` in ``ray.nodes()``)."""

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "RAY_USAGE_STATS_ENABLED": "0",
                # a dead node is noticed in seconds, not the default tens of seconds
                "RAY_health_check_period_ms": "1000",
                "RAY_health_check_timeout_ms": "1000",
                "RAY_health_check_failure_threshold": "3",
            }
        )
        env.update(self.env)
        return env

    def _start(self, args: list[str], cpus: int) -> int:
        process = subprocess.Popen(
            [_ray_executable(), "start", *args, f"--num-cpus={cpus}", "--disable-usage-stats"],
            env=self._env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        group = process.pid  # the session's process group: every daemon of the node
        try:
            output, _ = process.communicate(timeout=START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            _signal_group(group, signal.SIGKILL)
            raise ClusterError(f"ray start {' '.join(args)} did not finish in time") from None
        if process.returncode != 0:
            _signal_group(group, signal.SIGKILL)
            tail = " | ".join(output.strip().splitlines()[-3:])
            raise ClusterError(f"ray start {' '.join(args)} failed: {tail}")
        self.groups.append(group)
        return group

    def _start_node(self, args, cpus: int) -> int:
        """``ray start`` with ``args()``, up to :data:`START_ATTEMPTS` times: on a loaded machine
        a raylet can miss Ray's fixed 30 s registration wait."""
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                return self._start(args(), cpus)
            except ClusterError:
                if attempt == START_ATTEMPTS:
                    raise
                time.sleep(2)
        raise AssertionError("unreachable")

    def start(self) -> LocalCluster:
        """Start the head, then the worker nodes; stops what started if one fails."""
        self.port = self.port or free_port()
        self.temp_dir = Path(tempfile.mkdtemp(prefix="rsray"))  # short: Unix socket paths
        try:
            self._start_node(
                lambda: [
                    "--head",
                    f"--port={self.port}",
                    f"--temp-dir={self.temp_dir}",
                    "--include-dashboard=false",
                    f"--ray-client-server-port={free_port()}",
                    f"--node-manager-port={free_port()}",
                    f"--object-manager-port={free_port()}",
                ],
                self.cpus if self.head_cpus is None else self.head_cpus,
            )
            for _ in range(self.workers):
                self.add_worker()
        except BaseException:
            self.stop()
            raise
        return self

    def add_worker(self) -> int:
        """Start one more worker node; returns its process group."""
        ports: list[int] = []

        def args() -> list[str]:
            ports[:] = [free_port()]
            return [
                f"--address={self.address}",
                f"--node-manager-port={ports[0]}",
                f"--object-manager-port={free_port()}",
            ]

        group = self._start_node(args, self.cpus)
        self.worker_ports.append(ports[0])
        return group

    def kill_worker(self, index: int = 0, wait_s: float = 10.0) -> None:
        """SIGKILL every process of worker node ``index`` (0 = the first worker, not the head),
        and return once they are gone (or after ``wait_s``): nothing of that node runs after."""
        group = self.groups[1 + index]
        members = _signal_group(group, signal.SIGKILL)
        try:
            import psutil
        except ImportError:
            return
        psutil.wait_procs(members, timeout=wait_s)

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop every process of this cluster (SIGTERM, then SIGKILL after ``grace_s``)."""
        for group in reversed(self.groups):
            _signal_group(group, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(_alive(g) for g in self.groups):
            time.sleep(0.2)
        for group in self.groups:
            _signal_group(group, signal.SIGKILL)
        self.groups.clear()
        self.worker_ports.clear()
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _signal_group(group: int, sig: int) -> list:
    """Signal every process of the group and every descendant of them: the raylet starts its
    worker processes in process groups of their own. Returns the psutil processes signalled
    (empty without psutil)."""
    members = []
    try:
        import psutil

        for process in psutil.process_iter(["pid"]):
            try:
                if os.getpgid(process.pid) == group:
                    members.append(process)
                    members.extend(process.children(recursive=True))
            except (ProcessLookupError, psutil.Error, OSError):
                continue
    except ImportError:
        pass
    try:
        os.killpg(group, sig)
    except (ProcessLookupError, PermissionError):
        pass
    for process in members:
        try:
            process.send_signal(sig)
        except Exception:  # gone already
            continue
    return members


def _alive(group: int) -> bool:
    """Whether a live (not zombie) process is left in the group."""
    try:
        import psutil
    except ImportError:  # without psutil: whether the group still exists
        try:
            os.killpg(group, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    for process in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(process.pid) == group and process.info["status"] != "zombie":
                return True
        except (ProcessLookupError, psutil.Error, OSError):
            continue
    return False
