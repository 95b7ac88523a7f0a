"""Package layout for setuptools; everything else is in pyproject.toml.

The top-level ``alembic/`` folder (where ``alembic upgrade head`` from the repository root finds
it) ships inside the wheel as ``recsys/_migrations``, a name that cannot shadow the ``alembic``
library. ``recsys.db.engine.alembic_config()`` looks for the migrations there first and in the
repository checkout second.
"""

from __future__ import annotations

from setuptools import find_packages, setup

MIGRATIONS = "recsys._migrations"

setup(
    packages=[*find_packages(include=["recsys", "recsys.*"]), MIGRATIONS, f"{MIGRATIONS}.versions"],
    package_dir={MIGRATIONS: "alembic", f"{MIGRATIONS}.versions": "alembic/versions"},
    package_data={MIGRATIONS: ["script.py.mako"]},
)
