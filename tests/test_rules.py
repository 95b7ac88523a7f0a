"""Rules, reasons and gates through the real nightly commands (`recsys run`, `publish`, ...).

Every check of the published lists is one SQL statement over the whole table.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from recsys.cli import cli
from recsys.config import Settings
from recsys.errors import RecsysError

K = 5
RUN = ["run", "--no-features", "--model", "bias", "--min-ratings", "0", "--no-evaluate"]
RUN += ["-k", str(K)]
"""A cheap model (item and user biases; rating scores) for the rule and gate tests."""
RANKER_RUN = ["run", "--no-features", "--model", "ranker", "--epochs", "2", "--embedding-dim", "8"]
RANKER_RUN += ["--min-ratings", "0", "--no-evaluate", "-k", str(K)]


def _invoke(args: list[str], env: dict[str, str], code: int = 0):
    """Run a command in-process; ``code`` 2 expects the RecsysError the CLI prints as one line."""
    result = CliRunner().invoke(cli, args, env=env)
    if code == 2:
        assert isinstance(result.exception, RecsysError), (result.output, result.exception)
        assert result.exception.exit_code == 2
        assert len(str(result.exception).splitlines()) == 1
        result.output_line = str(result.exception)
        return result
    assert result.exit_code == code, (result.output, result.exception)
    return result


def _subprocess(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "recsys", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def shop(engine: sa.Engine, settings: Settings, tmp_path: Path) -> sa.Engine:
    """A sample shop: ratings, metadata (categories, brands) and text vectors."""
    from recsys.features.store import build_features
    from recsys.ingest.load import load_files
    from recsys.ingest.sample import write_sample

    files = write_sample(tmp_path / "sample", users=120, products=80, ratings=2000, seed=5)
    load_files(engine, settings, ratings=[files.ratings_path], metadata=[files.metadata_path])
    build_features(engine, settings, dim=16, epochs=2, min_count=1)
    return engine


def _served(engine: sa.Engine) -> int | None:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT run_id FROM published_recommendations")).scalar()


def _scalar(engine: sa.Engine, sql: str, **params) -> object:
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).scalar()


def test_rules_hold_in_every_list_after_a_run(
    shop: sa.Engine, cli_env: dict[str, str], tmp_path: Path
) -> None:
    _invoke(RUN, cli_env)
    with shop.begin() as conn:
        popular = (
            conn.execute(
                sa.text(
                    "SELECT asin FROM current_recommendations GROUP BY asin "
                    "ORDER BY count(*) DESC, asin LIMIT 6"
                )
            )
            .scalars()
            .all()
        )
        # by SQL, as a shop would: the most listed product goes out of stock
        conn.execute(
            sa.text("UPDATE products SET available = false WHERE external_id = :a"),
            {"a": popular[0]},
        )
        # every user returned the product at the top of their list (excluded forever) ...
        conn.execute(
            sa.text(
                "INSERT INTO user_exclusions (user_external_id, asin, reason) "
                "SELECT user_external_id, asin, 'returned' FROM current_recommendations "
                "WHERE rank = 1 AND asin <> :a"
            ),
            {"a": popular[0]},
        )
        # ... and an exclusion that has expired does nothing
        expired_asin = conn.execute(
            sa.text(
                "SELECT min(external_id) FROM products WHERE external_id NOT IN "
                "(SELECT asin FROM current_recommendations WHERE rank = 1)"
            )
        ).scalar()
        conn.execute(
            sa.text(
                "INSERT INTO user_exclusions (user_external_id, asin, until) "
                "SELECT external_id, :a, now() - interval '1 day' FROM users"
            ),
            {"a": expired_asin},
        )
    # in bulk, from a file
    csv = tmp_path / "availability.csv"
    csv.write_text(f"asin,available\n{popular[3]},false\n{popular[4]},true\n")
    out = _invoke(["load-db", "--availability", str(csv)], cli_env)
    assert "1 unavailable" in out.output

    _invoke([*RUN, "--max-per-category", "1", "--max-per-brand", "1"], cli_env)
    run_id = _served(shop)
    assert run_id is not None
    bad = _scalar(
        shop,
        "SELECT count(*) FROM current_recommendations c JOIN products p ON p.external_id = c.asin "
        "WHERE NOT p.available",
    )
    excluded = _scalar(
        shop,
        "SELECT count(*) FROM current_recommendations c JOIN user_exclusions e "
        "ON e.user_external_id = c.user_external_id AND e.asin = c.asin "
        "WHERE e.until IS NULL OR e.until > now()",
    )
    over_category = _scalar(
        shop,
        "SELECT count(*) FROM (SELECT c.user_external_id FROM current_recommendations c "
        "JOIN products p ON p.external_id = c.asin "
        "WHERE coalesce(p.categories[cardinality(p.categories)], p.main_category) IS NOT NULL "
        "GROUP BY c.user_external_id, "
        "coalesce(p.categories[cardinality(p.categories)], p.main_category) "
        "HAVING count(*) > 1) s",
    )
    over_brand = _scalar(
        shop,
        "SELECT count(*) FROM (SELECT c.user_external_id FROM current_recommendations c "
        "JOIN products p ON p.external_id = c.asin WHERE nullif(btrim(p.brand), '') IS NOT NULL "
        "GROUP BY c.user_external_id, lower(btrim(p.brand)) HAVING count(*) > 1) s",
    )
    short = _scalar(
        shop,
        "SELECT count(*) FROM users u WHERE (SELECT count(*) FROM current_recommendations c "
        "WHERE c.user_external_id = u.external_id) <> :k",
        k=K,
    )
    rated = _scalar(
        shop,
        "SELECT count(*) FROM recommendations r JOIN ratings x ON x.user_id = r.user_id "
        "AND x.product_id = r.product_id WHERE r.run_id = :r",
        r=run_id,
    )
    assert (bad, excluded, over_category, over_brand, short, rated) == (0, 0, 0, 0, 0, 0)
    with shop.connect() as conn:
        counts, gates = conn.execute(
            sa.text("SELECT rule_counts, gates FROM recommendation_runs WHERE id = :r"),
            {"r": run_id},
        ).one()
        # the expired exclusion is not in force
        from recsys.scoring import reads

        users = reads.user_ids(conn)
        _, excluded_products = reads.excluded_pairs(conn, users)
        expired = conn.execute(
            sa.text("SELECT id FROM products WHERE external_id = :a"), {"a": expired_asin}
        ).scalar()
        params = conn.execute(
            sa.text("SELECT params FROM recommendation_runs WHERE id = :r"), {"r": run_id}
        ).scalar()
    assert set(counts) == {
        "unavailable",
        "excluded",
        "category_cap",
        "brand_cap",
        "boosted",
        "backfilled_users",
    }
    assert counts["unavailable"] > 0 and counts["excluded"] > 0
    assert counts["category_cap"] + counts["brand_cap"] > 0
    assert gates["passed"] and not gates["forced"]
    assert len(excluded_products) > 0 and expired not in set(excluded_products.tolist())
    assert params["max_per_category"] == 1 and params["max_per_brand"] == 1


def test_rules_added_between_runs_apply_at_the_next_run_and_boosts_lift(
    shop: sa.Engine, cli_env: dict[str, str]
) -> None:
    _invoke(RUN, cli_env)
    with shop.begin() as conn:
        user, top, last = conn.execute(
            sa.text(
                "SELECT user_external_id, max(asin) FILTER (WHERE rank = 1), "
                "max(asin) FILTER (WHERE rank = :k) FROM current_recommendations "
                "WHERE strategy = 'model' GROUP BY 1 ORDER BY 1 LIMIT 1"
            ),
            {"k": K},
        ).one()
        conn.execute(
            sa.text("INSERT INTO user_exclusions (user_external_id, asin) VALUES (:u, :a)"),
            {"u": user, "a": top},
        )
        # a boost valid now lifts the user's last product to the top of the next list;
        # one that starts tomorrow does nothing yet
        conn.execute(
            sa.text("INSERT INTO product_boosts (asin, factor) VALUES (:a, 10)"), {"a": last}
        )
        conn.execute(
            sa.text(
                "INSERT INTO product_boosts (asin, factor, valid_from) "
                "VALUES (:a, 10, now() + interval '1 day')"
            ),
            {"a": top},
        )
        before = conn.execute(
            sa.text(
                "SELECT score FROM current_recommendations "
                "WHERE user_external_id = :u AND asin = :a"
            ),
            {"u": user, "a": last},
        ).scalar()
    _invoke(RUN, cli_env)
    with shop.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT asin, score FROM current_recommendations "
                "WHERE user_external_id = :u ORDER BY rank"
            ),
            {"u": user},
        ).all()
        boosted = conn.execute(
            sa.text(
                "SELECT rule_counts->>'boosted' FROM recommendation_runs "
                "WHERE id = (SELECT run_id FROM published_recommendations)"
            )
        ).scalar()
    assert top not in [a for a, _ in rows]
    assert rows[0][0] == last
    # a rating score (the bias model's predicted rating): the boost multiplies it
    assert rows[0][1] == pytest.approx(before * 10, rel=1e-5)
    assert int(boosted) > 0


def test_a_failing_gate_keeps_the_served_run_and_force_serves_it(
    shop: sa.Engine, cli_env: dict[str, str]
) -> None:
    _invoke(RUN, cli_env)
    first = _served(shop)
    strict = {**cli_env, "RECSYS_GATE_COVERAGE_MIN": "0.999"}
    result = _invoke(RUN, strict, code=2)
    assert "coverage" in result.output_line and f"still serving run {first}" in result.output_line
    assert _served(shop) == first
    with shop.connect() as conn:
        failed, gates = conn.execute(
            sa.text("SELECT id, gates FROM recommendation_runs ORDER BY id DESC LIMIT 1")
        ).one()
    coverage = next(c for c in gates["checks"] if c["gate"] == "coverage")
    assert not gates["passed"] and not coverage["passed"] and coverage["min"] == 0.999
    assert 0 < coverage["value"] < 0.999
    overlap = next(c for c in gates["checks"] if c["gate"] == "overlap")
    assert overlap["value"] is not None and overlap["passed"]
    ndcg = next(c for c in gates["checks"] if c["gate"] == "ndcg_vs_popularity")
    assert ndcg["value"] is None and ndcg["passed"]  # trained with --no-evaluate
    # publish checks the same gates (a real process: exit 2, one line), --force serves it
    process = _subprocess(["publish", "--run", str(failed)], strict)
    lines = [line for line in process.stderr.splitlines() if line.strip()]
    assert process.returncode == 2 and len(lines) == 1, process.stderr
    assert lines[0].startswith(f"recsys: error: recommendation run {failed} failed its gates")
    assert _served(shop) == first
    out = _invoke(["publish", "--run", str(failed), "--force"], strict)
    assert "forced" in out.output and _served(shop) == failed
    forced = _scalar(
        shop, "SELECT gates->>'forced' FROM recommendation_runs WHERE id = :r", r=failed
    )
    assert forced == "true"
    listing = _invoke(["publish", "--list"], cli_env).output
    assert "coverage" in listing and "FORCED" in listing


def test_unknown_asins_are_rejected(
    shop: sa.Engine, cli_env: dict[str, str], tmp_path: Path
) -> None:
    known = _scalar(shop, "SELECT min(external_id) FROM products")
    csv = tmp_path / "availability.csv"
    csv.write_text(f"{known},false\nNO-SUCH-ASIN,false\n")
    result = _invoke(["load-db", "--availability", str(csv)], cli_env, code=2)
    assert "line 2: 'NO-SUCH-ASIN'" in result.output_line
    assert "nothing was changed" in result.output_line
    assert _scalar(shop, "SELECT count(*) FROM products WHERE NOT available") == 0
    bad = tmp_path / "bad.csv"
    bad.write_text(f"{known},maybe\n")
    result = _invoke(["load-db", "--availability", str(bad)], cli_env, code=2)
    assert "bad.csv:1" in result.output_line
    with pytest.raises(sa.exc.IntegrityError):
        with shop.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO user_exclusions (user_external_id, asin) "
                    "VALUES ('anyone', 'NO-SUCH-ASIN')"
                )
            )


def test_ranker_reasons_name_the_rated_product_that_contributes_most(
    shop: sa.Engine, settings: Settings, cli_env: dict[str, str]
) -> None:
    from recsys.scoring.score import load_model

    _invoke(RANKER_RUN, cli_env)
    model = load_model(shop, settings)
    ranker = model.recommender
    assert ranker.name == "ranker"
    with shop.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT r.user_id, r.product_id, r.score, r.reason, r.because_product_id, "
                "c.reason, c.because_asin FROM recommendations r "
                "JOIN users u ON u.id = r.user_id JOIN products p ON p.id = r.product_id "
                "JOIN current_recommendations c ON c.user_external_id = u.external_id "
                "AND c.rank = r.rank WHERE r.run_id = (SELECT run_id FROM "
                "published_recommendations) AND r.strategy = 'model' ORDER BY r.user_id, r.rank "
                "LIMIT 60"
            )
        ).all()
        asin_of = dict(conn.execute(sa.text("SELECT id, external_id FROM products")).all())
        rated = {}
        for u, p in conn.execute(sa.text("SELECT user_id, product_id FROM ratings")).all():
            rated.setdefault(u, set()).add(p)
    assert rows
    user_index = {int(u): i for i, u in enumerate(model.user_ids)}
    product_index = {int(p): i for i, p in enumerate(model.product_ids)}
    # direct computation from the Keras tower: product j alone as history gives H[j]; the
    # user vector is sum_j H[j] / sqrt(n), so j contributes H[j] . V[i] / sqrt(n)
    text = ranker.text
    vectors, bias = (np.asarray(a) for a in ranker.tower.product_vectors(text))
    for user, product, score, reason, because, view_reason, because_asin in rows:
        u = user_index[user]
        history = ranker.history[u].indices
        one_hot = np.zeros((len(history), ranker.n_products), dtype=np.float32)
        one_hot[np.arange(len(history)), history] = 1.0
        h = np.asarray(ranker.tower.user_vectors(np.full(len(history), u, dtype=np.int32), one_hot))
        i = product_index[product]
        contributions = h @ vectors[i] / np.sqrt(len(history))
        best = int(model.product_ids[history[int(np.argmax(contributions))]])
        assert reason == "because you rated" and because == best
        assert because in rated[user]
        assert because_asin == asin_of[because] and view_reason.startswith("because you rated ")
        assert contributions.sum() + bias[i] == pytest.approx(score, abs=1e-3)


def test_fallback_and_cold_rows_say_why(shop: sa.Engine, cli_env: dict[str, str]) -> None:
    with shop.begin() as conn:
        conn.execute(sa.text("INSERT INTO users (external_id) VALUES ('newcomer')"))
    _invoke(RUN, cli_env)
    with shop.connect() as conn:
        reasons = conn.execute(
            sa.text(
                "SELECT DISTINCT strategy, reason, because_asin IS NULL FROM "
                "current_recommendations WHERE user_external_id = 'newcomer'"
            )
        ).all()
    assert reasons == [("popularity", "popular", True)]
    out = _invoke(["recommend", "newcomer"], cli_env).output
    assert "popular" in out and "reason" in out


def test_similar_products_are_published_with_the_run(
    shop: sa.Engine, cli_env: dict[str, str]
) -> None:
    from recsys.scoring import reads

    with shop.begin() as conn:
        hidden = conn.execute(sa.text("SELECT min(external_id) FROM products")).scalar()
        conn.execute(
            sa.text("UPDATE products SET available = false WHERE external_id = :a"), {"a": hidden}
        )
    _invoke(RUN, cli_env)
    with shop.connect() as conn:
        per_kind = dict(
            conn.execute(
                sa.text(
                    "SELECT kind, count(DISTINCT asin) FROM current_similar_products GROUP BY 1"
                )
            ).all()
        )
        bad = conn.execute(
            sa.text(
                "SELECT count(*) FROM current_similar_products WHERE asin = similar_asin "
                "OR similar_asin = :h OR rank > 20"
            ),
            {"h": hidden},
        ).scalar()
        n_products = conn.execute(sa.text("SELECT count(*) FROM products")).scalar()
        product = conn.execute(sa.text("SELECT max(id) FROM products")).scalar()
        listed = (
            conn.execute(
                sa.text(
                    "SELECT s.similar_product_id FROM similar_products s "
                    "JOIN published_similar_products p ON p.run_id = s.run_id "
                    "WHERE s.product_id = :p AND s.kind = 'text' ORDER BY s.rank"
                ),
                {"p": product},
            )
            .scalars()
            .all()
        )
        ids, vectors = reads.text_vectors(conn, reads.latest_feature_set(conn))
        hidden_id = conn.execute(
            sa.text("SELECT id FROM products WHERE external_id = :a"), {"a": hidden}
        ).scalar()
    assert per_kind["text"] == n_products and per_kind["co_rating"] > 0 and bad == 0
    # the text list equals a direct cosine ranking of every other available product
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    cosine = unit @ unit[list(ids).index(product)]
    expected = [
        int(i)
        for _, i in sorted(zip((-cosine).tolist(), ids.tolist(), strict=True))
        if i not in (product, hidden_id)
    ][:20]
    assert listed == expected
