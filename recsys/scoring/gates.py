"""Gates: checks a finished run must pass before the pointer moves to it.

Each gate compares one figure of the run with thresholds from settings
(``RECSYS_GATE_*``; defaults in :class:`recsys.config.Settings`):

* ``full_lists``: users with k rows / users whose catalogue allows k rows under the rules
  (every scored user minus those for whom the scorer ran out of candidates); min 1.0.
* ``coverage``: distinct products in the run's lists / available products with at least one
  rating; min 0.005 (one list for everybody in a large catalogue fails it).
* ``overlap``: rows of the new run whose (user, product) is also in the served run, over the
  new run's rows of users in both; min 0.01, max 1.0. Not measured when nothing is served.
* ``ndcg_vs_popularity``: the model's internal-validation NDCG@10 divided by popularity's on
  the same split (``model_runs.metrics["internal"]``); min 1.0. Not measured when the model
  run did not record it (models trained without the train-internal evaluation).

A gate that is not measured has ``value`` null and passes. The result is stored on the run as
``recommendation_runs.gates`` = ``{"passed", "forced", "checks": [{"gate", "value", "min",
"max", "passed"}]}``. A failing gate leaves the served run as it is; ``force`` serves the run
anyway and records ``"forced": true``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from recsys.errors import RecsysError
from recsys.scoring.publish import prune_runs, publish_run, published_run_id

_log = logging.getLogger(__name__)


class GateFailed(RecsysError):
    """A finished run failed a gate; the previous run stays served."""


@dataclass(frozen=True)
class GateThresholds:
    full_lists_min: float = 1.0
    coverage_min: float = 0.005
    overlap_min: float = 0.01
    overlap_max: float = 1.0
    ndcg_ratio_min: float = 1.0

    @classmethod
    def from_settings(cls, settings: Any) -> GateThresholds:
        """The thresholds in ``settings`` (``gate_*`` fields), defaults where absent."""
        names = ("full_lists_min", "coverage_min", "overlap_min", "overlap_max", "ndcg_ratio_min")
        values = {
            n: getattr(settings, f"gate_{n}") for n in names if hasattr(settings, f"gate_{n}")
        }
        return cls(**values)


def _check(gate: str, value: float | None, low: float | None, high: float | None) -> dict:
    passed = value is None or (
        (low is None or value >= low - 1e-12) and (high is None or value <= high + 1e-12)
    )
    return {"gate": gate, "value": value, "min": low, "max": high, "passed": bool(passed)}


def evaluate_gates(conn: sa.Connection, run_id: int, thresholds: GateThresholds) -> dict:
    """Measure every gate of a ready run against the run served now (does not store them)."""
    run = conn.execute(
        sa.text("SELECT k, n_users, params, model_run_id FROM recommendation_runs WHERE id = :r"),
        {"r": run_id},
    ).one()
    k, n_users, params, model_run_id = run
    params = params or {}
    full = conn.execute(
        sa.text(
            "SELECT count(*) FROM (SELECT user_id FROM recommendations WHERE run_id = :r "
            "GROUP BY user_id HAVING count(*) >= :k) s"
        ),
        {"r": run_id, "k": k},
    ).scalar_one()
    total = int(params.get("users_total", n_users))
    allowed = total - int(params.get("short_users", 0))
    checks = [
        _check(
            "full_lists",
            None if allowed <= 0 else round(full / allowed, 6),
            thresholds.full_lists_min,
            None,
        )
    ]
    distinct, catalogue = conn.execute(
        sa.text(
            "SELECT (SELECT count(DISTINCT product_id) FROM recommendations WHERE run_id = :r), "
            "(SELECT count(*) FROM products p WHERE p.available AND EXISTS "
            "(SELECT 1 FROM ratings x WHERE x.product_id = p.id))"
        ),
        {"r": run_id},
    ).one()
    checks.append(
        _check(
            "coverage",
            None if not catalogue else round(distinct / catalogue, 6),
            thresholds.coverage_min,
            None,
        )
    )
    served = published_run_id(conn)
    overlap = None
    if served is not None and served != run_id:
        shared, rows = conn.execute(
            sa.text(
                "SELECT count(o.product_id), count(*) FROM recommendations n "
                "LEFT JOIN recommendations o ON o.run_id = :s AND o.user_id = n.user_id "
                "AND o.product_id = n.product_id WHERE n.run_id = :r AND EXISTS "
                "(SELECT 1 FROM recommendations q WHERE q.run_id = :s AND q.user_id = n.user_id)"
            ),
            {"r": run_id, "s": served},
        ).one()
        overlap = None if not rows else round(shared / rows, 6)
    checks.append(_check("overlap", overlap, thresholds.overlap_min, thresholds.overlap_max))
    ratio = None
    if model_run_id is not None:
        metrics = conn.execute(
            sa.text("SELECT metrics FROM model_runs WHERE id = :m"), {"m": model_run_id}
        ).scalar()
        internal = (metrics or {}).get("internal") or {}
        model_ndcg, pop_ndcg = internal.get("ndcg@10"), internal.get("popularity_ndcg@10")
        if model_ndcg is not None and pop_ndcg is not None:
            ratio = round(min(1e6, float(model_ndcg) / max(float(pop_ndcg), 1e-9)), 6)
    checks.append(_check("ndcg_vs_popularity", ratio, thresholds.ndcg_ratio_min, None))
    return {"passed": all(c["passed"] for c in checks), "forced": False, "checks": checks}


def describe_failures(gates: dict) -> str:
    """``coverage 0.001 < min 0.005, ...`` for the failed checks."""
    parts = []
    for c in gates["checks"]:
        if c["passed"]:
            continue
        if c["min"] is not None and c["value"] < c["min"]:
            parts.append(f"{c['gate']} {c['value']:.4g} < min {c['min']:.4g}")
        else:
            parts.append(f"{c['gate']} {c['value']:.4g} > max {c['max']:.4g}")
    return ", ".join(parts)


def _store(conn: sa.Connection, run_id: int, gates: dict) -> None:
    conn.execute(
        sa.text("UPDATE recommendation_runs SET gates = CAST(:g AS jsonb) WHERE id = :r"),
        {"r": run_id, "g": json.dumps(gates, default=_json_number)},
    )


def _json_number(value: Any) -> Any:
    return float(value)


def publish_gated(
    engine: Engine,
    run_id: int,
    *,
    keep: int,
    thresholds: GateThresholds | None = None,
    force: bool = False,
) -> tuple[int | None, dict]:
    """Check the gates, record them on the run, and serve it when they pass (or ``force``).

    The gates are measured and the pointer moved in one transaction, so the overlap is taken
    against the run that is replaced. Old runs beyond ``keep`` are pruned afterwards.

    Returns:
        (the previously served run, the gates as stored).

    Raises:
        GateFailed: a gate failed and ``force`` is False; the gates are stored on the run and
            the previous run stays served.
        RecsysError: the run does not exist or is not ready.
    """
    thresholds = thresholds or GateThresholds()
    with engine.begin() as conn:
        status = conn.execute(
            sa.text("SELECT status FROM recommendation_runs WHERE id = :r"), {"r": run_id}
        ).scalar()
        if status != "ready":
            publish_run(conn, run_id)  # raises the one-line error for missing / unfinished
        gates = evaluate_gates(conn, run_id, thresholds)
        gates["forced"] = bool(force and not gates["passed"])
        _store(conn, run_id, gates)
        if not gates["passed"] and not force:
            served = published_run_id(conn)
            message = (
                f"recommendation run {run_id} failed its gates: {describe_failures(gates)}; "
                f"still serving run {served} (`recsys publish --run {run_id} --force` serves it)"
            )
        else:
            message = None
            previous = publish_run(conn, run_id)
    if message is not None:  # the gate figures were committed with the run above
        raise GateFailed(message)
    if gates["forced"]:
        _log.warning("run %d served although it failed gates: %s", run_id, describe_failures(gates))
    with engine.begin() as conn:
        prune_runs(conn, keep)
    return previous, gates
