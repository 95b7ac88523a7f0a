"""Reads of what is served: one user's ratings and current list, as the shop's apps see it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from recsys.errors import RecsysError


@dataclass(frozen=True)
class RatedProduct:
    """One of the user's own ratings."""

    asin: str
    title: str | None
    brand: str | None
    rating: float


@dataclass(frozen=True)
class ServedRow:
    """One row of the user's published list (``current_recommendations``)."""

    rank: int
    asin: str
    title: str | None
    brand: str | None
    score: float
    strategy: str
    generated_at: datetime
    reason: str | None


@dataclass(frozen=True)
class UserRecommendations:
    """A user's top-rated products and their currently served list (empty: none published)."""

    user: str
    rated: list[RatedProduct]
    recommended: list[ServedRow]


def user_recommendations(conn: sa.Connection, user: str, n_rated: int = 10) -> UserRecommendations:
    """The top ``n_rated`` rated products and the served list of the user ``user``.

    Args:
        conn: the database.
        user: the user's external id.
        n_rated: how many of their ratings (best first, newest first among equals).

    Raises:
        RecsysError: the user is unknown, or nothing is published.
    """
    user_id = conn.execute(
        sa.text("SELECT id FROM users WHERE external_id = :u"), {"u": user}
    ).scalar()
    if user_id is None:
        raise RecsysError(f"unknown user {user!r}: no such external id in the users table")
    rated = conn.execute(
        sa.text(
            "SELECT p.external_id, p.title, p.brand, r.rating FROM ratings r "
            "JOIN products p ON p.id = r.product_id WHERE r.user_id = :u "
            "ORDER BY r.rating DESC, r.rated_at DESC, p.id LIMIT :n"
        ),
        {"u": user_id, "n": n_rated},
    ).all()
    if conn.execute(sa.text("SELECT run_id FROM published_recommendations")).scalar() is None:
        raise RecsysError("no recommendations are published yet; run `recsys run` (or score)")
    recommended = conn.execute(
        sa.text(
            "SELECT rank, asin, title, brand, score, strategy, generated_at, reason "
            "FROM current_recommendations WHERE user_external_id = :u ORDER BY rank"
        ),
        {"u": user},
    ).all()
    return UserRecommendations(
        user=user,
        rated=[RatedProduct(*row) for row in rated],
        recommended=[ServedRow(*row) for row in recommended],
    )


def most_active_model_user(conn: sa.Connection) -> str | None:
    """The user with the most ratings among those served a model list (None: no such user)."""
    return conn.execute(
        sa.text(
            "SELECT u.external_id FROM users u JOIN ratings r ON r.user_id = u.id "
            "WHERE EXISTS (SELECT 1 FROM current_recommendations c "
            "WHERE c.user_external_id = u.external_id AND c.strategy = 'model') "
            "GROUP BY u.id ORDER BY count(*) DESC, u.id LIMIT 1"
        )
    ).scalar()
