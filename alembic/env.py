"""Alembic environment: the URL comes from recsys settings, or a caller hands in a connection.

``recsys init-db`` and the test fixtures pass their own connection through
``config.attributes["connection"]`` (the Alembic cookbook's "sharing a connection"), so the
migration runs inside the caller's transaction.
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from recsys.db.models import Base

config = context.config
target_metadata = Base.metadata


def _run(connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    if config.config_file_name is not None:
        fileConfig(config.config_file_name, disable_existing_loggers=False)
    from recsys.config import load_settings
    from recsys.db.engine import create_engine

    engine = create_engine(load_settings())
    with engine.connect() as connection:
        _run(connection)
        connection.commit()


if context.is_offline_mode():
    raise SystemExit("recsys migrations run online only (they need a live connection)")
run_migrations_online()
