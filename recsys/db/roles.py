"""A read-only role for apps: it can SELECT the view ``current_recommendations`` and nothing else.

The view runs with its owner's rights (PostgreSQL's default for views), so the role needs no
grant on the tables behind it; it gets CONNECT on the database, USAGE on the schema and SELECT
on the view only. ``sql/roles/reader.sql`` is the same thing as a psql script.

Where recsys owns the database, PUBLIC loses CONNECT and TEMPORARY on it, so the role cannot
create TEMP tables (the owner keeps both). On the embedded server recsys also revokes PUBLIC's
CONNECT on every other database (``postgres``, ``template1``) at each start. On an external
server recsys touches no other database and, when it does not own its database, reports what
its owner should revoke.

The password never reaches the server in clear text: :func:`scram_verifier` computes the
SCRAM-SHA-256 verifier client-side (what libpq's ``PQencryptPasswordConn`` does) and the role
gets that. Where the role may, it also turns off statement logging for the transaction, so a
failing statement does not write even the verifier into the server log. Names are checked
before anything is sent.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import stringprep
import unicodedata
from dataclasses import dataclass, field

import sqlalchemy as sa
from psycopg import sql

from recsys.db.copy import driver_connection
from recsys.errors import RecsysError

_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
VIEW = "current_recommendations"
VIEWS = (VIEW, "current_similar_products")
"""What a reader may SELECT: the recommendations and the similar-products lists."""
RESERVED = frozenset({"public", "none", "current_user", "session_user", "current_role", "all"})
"""Role names PostgreSQL reserves or treats specially (``pg_*`` is reserved too)."""

SCRAM_ITERATIONS = 4096
"""PostgreSQL's default ``scram_iterations``."""


@dataclass
class ReaderResult:
    """What :func:`create_reader` did."""

    created: bool
    """True for a new role, False when an existing reader's password was changed."""
    notes: list[str] = field(default_factory=list)
    """One line each: what was revoked from PUBLIC, or what the database owner should revoke."""


def check_role_name(name: str) -> None:
    """Raise RecsysError for a name that is not a plain lowercase identifier or is reserved."""
    if not _NAME.match(name):
        raise RecsysError(
            f"bad role name {name!r}: use lowercase letters, digits and _ (at most 63)"
        )
    if name.startswith("pg_") or name in RESERVED:
        raise RecsysError(
            f"bad role name {name!r}: names starting with pg_ and {name} are reserved"
        )


def saslprep(password: str) -> str:
    """The SASLprep (RFC 4013) form PostgreSQL hashes, or the password unchanged where
    PostgreSQL would use it unchanged (pure ASCII, or prohibited characters)."""
    if password.isascii():
        return password
    mapped = "".join(
        " " if stringprep.in_table_c12(ch) else ch
        for ch in password
        if not stringprep.in_table_b1(ch)
    )
    normalised = unicodedata.normalize("NFKC", mapped)
    prohibited = (
        stringprep.in_table_c12,
        stringprep.in_table_c21,
        stringprep.in_table_c22,
        stringprep.in_table_c3,
        stringprep.in_table_c4,
        stringprep.in_table_c5,
        stringprep.in_table_c6,
        stringprep.in_table_c7,
        stringprep.in_table_c8,
        stringprep.in_table_c9,
        stringprep.in_table_a1,
    )
    if any(check(ch) for ch in normalised for check in prohibited):
        return password
    if any(stringprep.in_table_d1(ch) for ch in normalised):
        if any(stringprep.in_table_d2(ch) for ch in normalised) or not (
            stringprep.in_table_d1(normalised[0]) and stringprep.in_table_d1(normalised[-1])
        ):
            return password
    return normalised


def scram_verifier(
    password: str, *, iterations: int = SCRAM_ITERATIONS, salt: bytes | None = None
) -> str:
    """The ``SCRAM-SHA-256$iter:salt$StoredKey:ServerKey`` verifier PostgreSQL stores."""
    salt = os.urandom(16) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha256", saslprep(password).encode("utf-8"), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii")

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def create_reader(
    conn: sa.Connection, name: str, password: str, *, own_server: bool = False
) -> ReaderResult:
    """Create (or update the password of) the login role ``name`` that can read the view only.

    Args:
        conn: a connection as a role allowed to CREATE ROLE (the caller commits).
        name: the role name (lowercase letters, digits, underscore; not ``pg_*``).
        password: its password (sent only as a SCRAM verifier, never logged).
        own_server: recsys runs this server (the embedded one): PUBLIC's CONNECT on the other
            databases is revoked too.

    Returns:
        Whether the role is new, and notes on what was revoked from PUBLIC.

    Raises:
        RecsysError: a bad name, an empty password, an existing role that is more than a
            reader (superuser, or one that can create roles or databases, or recsys's own), or
            no right to create roles.
    """
    check_role_name(name)
    if not password:
        raise RecsysError("the reader role needs a non-empty password")
    raw = driver_connection(conn)
    existing = conn.execute(
        sa.text(
            "SELECT rolsuper OR rolcreaterole OR rolcreatedb OR rolreplication OR rolbypassrls "
            "OR rolname = current_user FROM pg_roles WHERE rolname = :n"
        ),
        {"n": name},
    ).first()
    if existing is not None and existing[0]:
        raise RecsysError(
            f"role {name} exists and is more than a reader (a superuser, recsys's own role, or "
            "one that can create roles or databases): choose another name"
        )
    database = raw.info.dbname
    quiet = _can_silence_logging(conn)
    iterations = _scram_iterations(conn)
    role = sql.Identifier(name)
    verifier = sql.Literal(scram_verifier(password, iterations=iterations))
    statements = []
    if quiet:
        statements += [
            sql.SQL("SET LOCAL log_statement = 'none'"),
            sql.SQL("SET LOCAL log_min_error_statement = 'panic'"),
            sql.SQL("SET LOCAL log_min_duration_statement = -1"),
        ]
    statements += [
        sql.SQL(
            "ALTER ROLE {} WITH LOGIN PASSWORD {}"
            if existing is not None
            else "CREATE ROLE {} WITH LOGIN PASSWORD {}"
        ).format(role, verifier),
        sql.SQL(
            "ALTER ROLE {} NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS"
        ).format(role),
        sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(database), role),
        sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(role),
        sql.SQL("GRANT SELECT ON {} TO {}").format(
            sql.SQL(", ").join(sql.Identifier(v) for v in VIEWS), role
        ),
    ]
    notes: list[str] = []
    owns_database = bool(
        conn.execute(
            sa.text(
                "SELECT pg_has_role(current_user, datdba, 'USAGE') FROM pg_database "
                "WHERE datname = current_database()"
            )
        ).scalar()
    )
    if owns_database:
        statements.append(
            sql.SQL("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC").format(
                sql.Identifier(database)
            )
        )
        notes.append(f"PUBLIC may no longer connect to or create TEMP tables in {database}")
    else:
        notes.append(
            f"recsys does not own database {database}: its owner should run REVOKE CONNECT, "
            f"TEMPORARY ON DATABASE {database} FROM PUBLIC so that {name} cannot create TEMP "
            "tables"
        )
    if own_server:
        others = conn.execute(
            sa.text(
                "SELECT datname FROM pg_database WHERE datallowconn "
                "AND datname <> current_database() ORDER BY datname"
            )
        ).scalars()
        for other in others:
            statements.append(
                sql.SQL("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC").format(
                    sql.Identifier(other)
                )
            )
        notes.append("PUBLIC may no longer connect to the server's other databases")
    try:
        with raw.cursor() as cur:
            for statement in statements:
                cur.execute(statement)
    except Exception as err:
        message = str(getattr(err, "diag", None) and err.diag.message_primary or err)
        raise RecsysError(
            f"could not create reader role {name}: {message.splitlines()[0]}"
        ) from err
    return ReaderResult(created=existing is None, notes=notes)


def _can_silence_logging(conn: sa.Connection) -> bool:
    if driver_connection(conn).info.server_version >= 150000:
        query = (
            "SELECT has_parameter_privilege('log_min_error_statement', 'SET') "
            "AND has_parameter_privilege('log_statement', 'SET') "
            "AND has_parameter_privilege('log_min_duration_statement', 'SET')"
        )
    else:  # before PostgreSQL 15 only superusers may set them
        query = "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
    return bool(conn.execute(sa.text(query)).scalar())


def _scram_iterations(conn: sa.Connection) -> int:
    value = conn.execute(
        sa.text("SELECT setting FROM pg_settings WHERE name = 'scram_iterations'")
    ).scalar()
    return int(value) if value else SCRAM_ITERATIONS
