"""Business rules, reasons, gates and item-to-item lists.

Revision ID: 0006
Revises: 0004
Create Date: 2026-12-01

* ``products.available``: false keeps a product out of every list.
* ``user_exclusions``: (user, product) pairs never recommended until ``until`` (NULL: forever).
  ``asin`` references ``products.external_id``, so an unknown product is rejected on insert.
* ``product_boosts``: a factor (> 0) on a product's score while ``valid_from <= now() <
  valid_until`` (NULL bounds are open).
* ``recommendation_runs.gates`` / ``rule_counts``: the gate figures checked before a run is
  served, and how many candidates each rule removed.
* ``recommendations.reason`` / ``because_product_id``: why each row is there.
* ``similar_product_runs``, ``similar_products``, ``published_similar_products`` and the view
  ``current_similar_products``: per product its most similar products by text and by
  co-rating, published with the same single-row pointer as the recommendations.
* the view ``current_recommendations`` gains ``reason``, ``because_asin`` and ``because_title``
  (``sql/views`` holds the current text of both views).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

CURRENT_RECOMMENDATIONS_V1 = """
CREATE VIEW current_recommendations AS
SELECT u.external_id AS user_external_id,
       r.rank,
       p.external_id AS asin,
       p.title,
       p.brand,
       r.score,
       r.strategy,
       rr.generated_at
FROM published_recommendations pub
JOIN recommendation_runs rr ON rr.id = pub.run_id
JOIN recommendations r ON r.run_id = pub.run_id
JOIN users u ON u.id = r.user_id
JOIN products p ON p.id = r.product_id
"""

CURRENT_RECOMMENDATIONS_V2 = """
CREATE VIEW current_recommendations AS
SELECT u.external_id AS user_external_id,
       r.rank,
       p.external_id AS asin,
       p.title,
       p.brand,
       r.score,
       r.strategy,
       rr.generated_at,
       CASE WHEN b.id IS NULL THEN r.reason
            ELSE r.reason || ' ' || coalesce(b.title, b.external_id) END AS reason,
       b.external_id AS because_asin,
       b.title AS because_title
FROM published_recommendations pub
JOIN recommendation_runs rr ON rr.id = pub.run_id
JOIN recommendations r ON r.run_id = pub.run_id
JOIN users u ON u.id = r.user_id
JOIN products p ON p.id = r.product_id
LEFT JOIN products b ON b.id = r.because_product_id
"""

CURRENT_SIMILAR_PRODUCTS = """
CREATE VIEW current_similar_products AS
SELECT p.external_id AS asin,
       s.kind,
       s.rank,
       q.external_id AS similar_asin,
       q.title AS similar_title,
       q.brand AS similar_brand,
       s.score,
       sr.generated_at
FROM published_similar_products pub
JOIN similar_product_runs sr ON sr.id = pub.run_id
JOIN similar_products s ON s.run_id = pub.run_id
JOIN products p ON p.id = s.product_id
JOIN products q ON q.id = s.similar_product_id
WHERE q.available
"""


def _now() -> sa.TextClause:
    return sa.text("now()")


def _view_readers(view: str) -> list[str]:
    """Roles other than the owner that may SELECT ``view`` (kept when the view is recreated)."""
    rows = op.get_bind().execute(
        sa.text(
            "SELECT DISTINCT grantee FROM information_schema.role_table_grants "
            "WHERE table_name = :v AND privilege_type = 'SELECT' AND grantee <> current_user"
        ),
        {"v": view},
    )
    return [r[0] for r in rows]


def _grant_select(views: tuple[str, ...], roles: list[str]) -> None:
    quote = op.get_bind().dialect.identifier_preparer.quote
    for role in roles:
        op.execute(f"GRANT SELECT ON {', '.join(quote(v) for v in views)} TO {quote(role)}")


def upgrade() -> None:
    op.add_column(
        "products",
        sa.Column("available", sa.Boolean, nullable=False, server_default=sa.true()),
    )
    op.create_table(
        "user_exclusions",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("user_external_id", sa.Text, nullable=False),
        sa.Column(
            "asin",
            sa.Text,
            sa.ForeignKey("products.external_id", ondelete="CASCADE", onupdate="CASCADE"),
            nullable=False,
        ),
        sa.Column("reason", sa.Text),
        sa.Column("until", sa.DateTime(timezone=True)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
    )
    op.create_index("ix_user_exclusions_user", "user_exclusions", ["user_external_id"])
    op.create_table(
        "product_boosts",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column(
            "asin",
            sa.Text,
            sa.ForeignKey("products.external_id", ondelete="CASCADE", onupdate="CASCADE"),
            nullable=False,
        ),
        sa.Column("factor", sa.Float, nullable=False),
        sa.Column("valid_from", sa.DateTime(timezone=True)),
        sa.Column("valid_until", sa.DateTime(timezone=True)),
        sa.CheckConstraint("factor > 0 AND factor < 'Infinity'", name="factor_positive"),
        sa.CheckConstraint(
            "valid_from IS NULL OR valid_until IS NULL OR valid_until > valid_from",
            name="valid_range",
        ),
    )
    op.add_column("recommendation_runs", sa.Column("gates", JSONB))
    op.add_column(
        "recommendation_runs",
        sa.Column("rule_counts", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    )
    op.add_column("recommendations", sa.Column("reason", sa.Text))
    op.add_column("recommendations", sa.Column("because_product_id", sa.BigInteger))
    readers = _view_readers("current_recommendations")
    op.execute("DROP VIEW current_recommendations")
    op.execute(CURRENT_RECOMMENDATIONS_V2)

    op.create_table(
        "similar_product_runs",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("k", sa.Integer, nullable=False),
        sa.Column("feature_set_id", sa.BigInteger),
        sa.Column(
            "generated_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()
        ),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("n_rows", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("counts", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("message", sa.Text),
        sa.CheckConstraint("status IN ('building', 'ready', 'failed')", name="status"),
    )
    op.create_table(
        "similar_products",
        sa.Column("run_id", sa.BigInteger, nullable=False),
        sa.Column("product_id", sa.BigInteger, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("rank", sa.SmallInteger, nullable=False),
        sa.Column("similar_product_id", sa.BigInteger, nullable=False),
        sa.Column("score", sa.Float(24), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "product_id", "kind", "rank"),
        sa.CheckConstraint("kind IN ('text', 'co_rating')", name="kind"),
    )
    op.create_table(
        "published_similar_products",
        sa.Column("id", sa.SmallInteger, primary_key=True, server_default="1"),
        sa.Column(
            "run_id",
            sa.BigInteger,
            sa.ForeignKey("similar_product_runs.id", ondelete="RESTRICT"),
            nullable=False,
        ),
        sa.Column(
            "published_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()
        ),
        sa.CheckConstraint("id = 1", name="single_row"),
    )
    op.execute(CURRENT_SIMILAR_PRODUCTS)
    # the app roles that read the old view read both views now
    _grant_select(("current_recommendations", "current_similar_products"), readers)


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS current_similar_products")
    op.drop_table("published_similar_products")
    op.drop_table("similar_products")
    op.drop_table("similar_product_runs")
    readers = _view_readers("current_recommendations")
    op.execute("DROP VIEW current_recommendations")
    op.execute(CURRENT_RECOMMENDATIONS_V1)
    _grant_select(("current_recommendations",), readers)
    op.drop_column("recommendations", "because_product_id")
    op.drop_column("recommendations", "reason")
    op.drop_column("recommendation_runs", "rule_counts")
    op.drop_column("recommendation_runs", "gates")
    op.drop_table("product_boosts")
    op.drop_index("ix_user_exclusions_user", table_name="user_exclusions")
    op.drop_table("user_exclusions")
    op.drop_column("products", "available")
