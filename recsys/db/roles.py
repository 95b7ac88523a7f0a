"""A read-only role for apps: it can SELECT the view ``current_recommendations`` and nothing else.

The view runs with its owner's rights (PostgreSQL's default for views), so the role needs no
grant on the tables behind it; it gets CONNECT on the database, USAGE on the schema and SELECT
on the view only. ``sql/roles/reader.sql`` is the same thing as a psql script.
"""

from __future__ import annotations

import re

import sqlalchemy as sa
from psycopg import sql

from recsys.db.copy import driver_connection
from recsys.errors import RecsysError

_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
VIEW = "current_recommendations"


def create_reader(conn: sa.Connection, name: str, password: str) -> bool:
    """Create (or update the password of) the login role ``name`` that can read the view only.

    Args:
        conn: a connection as a role allowed to CREATE ROLE (the caller commits).
        name: the role name (lowercase letters, digits, underscore).
        password: its password (never logged).

    Returns:
        True when the role was created, False when it existed and was updated.

    Raises:
        RecsysError: a bad name, an empty password, or no right to create roles.
    """
    if not _NAME.match(name):
        raise RecsysError(
            f"bad role name {name!r}: use lowercase letters, digits and _ (at most 63)"
        )
    if not password:
        raise RecsysError("the reader role needs a non-empty password")
    raw = driver_connection(conn)
    exists = (
        conn.execute(sa.text("SELECT 1 FROM pg_roles WHERE rolname = :n"), {"n": name}).scalar()
        is not None
    )
    role = sql.Identifier(name)
    statements = [
        sql.SQL(
            "ALTER ROLE {} WITH LOGIN PASSWORD {}"
            if exists
            else "CREATE ROLE {} WITH LOGIN PASSWORD {}"
        ).format(role, sql.Literal(password)),
        sql.SQL("ALTER ROLE {} NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT").format(role),
        sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(raw.info.dbname), role),
        sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(role),
        sql.SQL("GRANT SELECT ON {} TO {}").format(sql.Identifier(VIEW), role),
    ]
    try:
        with raw.cursor() as cur:
            for statement in statements:
                cur.execute(statement)
    except Exception as err:
        message = str(getattr(err, "diag", None) and err.diag.message_primary or err)
        raise RecsysError(
            f"could not create reader role {name}: {message.splitlines()[0]}"
        ) from err
    return not exists
