"""Imports point one way: commands -> pipeline -> {ingest, features, model, ...} -> data/db.

Every module under recsys/ is parsed (no import runs), and every ``import`` and ``from ...
import`` in it, at module level or inside a function, is checked against the layers below. An
import from a lower layer into a higher one, or between two packages of the middle layer that
are not an allowed pair, fails the test, unless it is one of the listed known exceptions. A
known exception that no longer occurs also fails, so the list can only shrink. Imports by
string (``importlib.import_module``) are not seen.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = REPO_ROOT / "recsys"

# a module belongs to the longest prefix listed here; a higher rank may import a lower one
LAYERS: dict[str, int] = {
    # the command line and the scheduler
    "recsys.cli": 4,
    "recsys.__main__": 4,
    "recsys.commands": 4,
    "recsys.scheduler": 4,
    # the nightly job
    "recsys.pipeline": 3,
    # the steps and what they produce
    "recsys.ingest": 2,
    "recsys.features": 2,
    "recsys.model": 2,
    "recsys.scoring": 2,
    "recsys.evaluation": 2,
    "recsys.report": 2,
    "recsys.cluster": 2,
    # the pure parts of evaluation that models tune with: splits, metrics, the tuning split
    "recsys.evaluation.splits": 1,
    "recsys.evaluation.metrics": 1,
    "recsys.evaluation.tuning": 1,
    # shared value types, the database layer and the basics
    "recsys": 0,
    "recsys.data": 0,
    "recsys.db": 0,
    "recsys.config": 0,
    "recsys.errors": 0,
    "recsys.progress": 0,
}
STEPS = 2

# the allowed imports between two different packages of the steps layer: importer -> imported
# prefixes. Everything else between them would make two steps depend on each other.
STEP_EDGES: dict[str, tuple[str, ...]] = {
    "recsys.features": ("recsys.ingest.api",),
    "recsys.model": ("recsys.features",),
    "recsys.scoring": ("recsys.model", "recsys.features"),
    # the cluster engine runs the scoring's own block function and the ranker's trainer on its
    # workers
    "recsys.cluster": ("recsys.scoring", "recsys.model"),
    "recsys.report": (
        "recsys.ingest",
        "recsys.features",
        "recsys.model",
        "recsys.scoring",
        "recsys.evaluation",
    ),
}

# (importing module, imported module): why it is still there
KNOWN_EXCEPTIONS: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Edge:
    importer: str
    imported: str
    line: int


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _edges(modules: dict[str, Path]) -> list[Edge]:
    edges = []
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = name.split(".")
                    anchor = anchor if is_package else anchor[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                for alias in node.names:
                    # ``from recsys.model import catalog`` imports the module recsys.model.catalog
                    candidate = f"{base}.{alias.name}"
                    targets.append(candidate if candidate in modules else base)
            for target in targets:
                if target == "recsys" or target.startswith("recsys."):
                    edges.append(Edge(name, target, node.lineno))
    return edges


def _layer(module: str) -> str:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in LAYERS:
            return prefix
    raise AssertionError(f"{module} is in no layer: add its package to LAYERS in {__file__}")


def _allowed(edge: Edge) -> bool:
    own, other = _layer(edge.importer), _layer(edge.imported)
    if own == other or LAYERS[other] < LAYERS[own]:
        return True
    if LAYERS[other] > LAYERS[own]:
        return False
    if LAYERS[own] != STEPS:  # the basics, or the command line: each is one layer
        return True
    return any(
        edge.imported == prefix or edge.imported.startswith(prefix + ".")
        for prefix in STEP_EDGES.get(own, ())
    )


def _violations() -> tuple[list[Edge], set[tuple[str, str]]]:
    bad, excused = [], set()
    for edge in _edges(_modules()):
        if _allowed(edge):
            continue
        key = (edge.importer, edge.imported)
        if key in KNOWN_EXCEPTIONS:
            excused.add(key)
        else:
            bad.append(edge)
    return bad, excused


def test_imports_point_down_the_layers() -> None:
    bad, _ = _violations()
    assert not bad, "imports against the layers:\n" + "\n".join(
        f"  {e.importer} (line {e.line}) imports {e.imported} "
        f"[{_layer(e.importer)} -> {_layer(e.imported)}]"
        for e in bad
    )


def test_every_known_exception_still_occurs() -> None:
    _, excused = _violations()
    stale = sorted(set(KNOWN_EXCEPTIONS) - excused)
    assert not stale, f"no longer needed, remove from KNOWN_EXCEPTIONS: {stale}"


def test_the_checker_sees_function_level_and_relative_imports(tmp_path: Path) -> None:
    modules = _modules()
    edges = {(e.importer, e.imported) for e in _edges(modules)}
    # function-level imports count as much as module-level ones
    assert ("recsys.pipeline", "recsys.evaluation.protocol") in edges
    assert ("recsys.cli", "recsys.commands") in edges
    # and the rules reject what runs back up
    assert not _allowed(Edge("recsys.db.engine", "recsys.pipeline", 1))
    assert not _allowed(Edge("recsys.evaluation.metrics", "recsys.model.base", 1))
    assert not _allowed(Edge("recsys.features.importer", "recsys.ingest.load", 1))
    assert not _allowed(Edge("recsys.model.catalog", "recsys.evaluation.protocol", 1))
    assert not _allowed(Edge("recsys.evaluation.splits", "recsys.evaluation.protocol", 1))
    assert _allowed(Edge("recsys.model.ranker", "recsys.evaluation.tuning", 1))
    assert _allowed(Edge("recsys.pipeline", "recsys.scoring.score", 1))
    assert _allowed(Edge("recsys.features.importer", "recsys.ingest.api", 1))
    assert _allowed(Edge("recsys.cluster.engine", "recsys.scoring.score", 1))
    assert _allowed(Edge("recsys.pipeline", "recsys.cluster.engine", 1))
    assert not _allowed(Edge("recsys.scoring.score", "recsys.cluster.engine", 1))
