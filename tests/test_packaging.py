"""recsys as an installed package: the wheel carries the migrations and ``recsys init-db`` works.

The wheel is built without build isolation (setuptools and wheel come from the dev extra), so
the test runs offline. It installs into a fresh venv that sees the current environment's
site-packages for the dependencies but not its editable recsys, and runs from a folder outside
the repository with no PYTHONPATH, so every import of recsys comes from the wheel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import sqlalchemy as sa

from recsys.db import engine as db

REPO_ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("recsys", "alembic", "pyproject.toml", "setup.py", "README.md", "alembic.ini")

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=600, **kwargs)


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME"}}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a copy of the source tree (the checkout stays free of build output)."""
    for backend in ("setuptools", "wheel"):
        try:
            __import__(backend)
        except ImportError:
            pytest.skip(f"{backend} is not installed (pip install -e '.[dev]')")
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in SOURCES:
        path = REPO_ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        else:
            shutil.copy2(path, src / name)
    result = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index"]
        + ["--wheel-dir", str(work / "dist"), str(src)],
        cwd=work,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (built,) = (work / "dist").glob("recsys-*.whl")
    return built


def test_wheel_carries_the_migrations_under_a_private_name(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    versions = sorted(p.name for p in (REPO_ROOT / "alembic" / "versions").glob("*.py"))
    assert "recsys/_migrations/env.py" in names
    assert "recsys/_migrations/script.py.mako" in names
    assert {f"recsys/_migrations/versions/{v}" for v in versions} <= names
    assert not any(n.startswith("alembic/") for n in names)  # never shadows the library


def test_installed_wheel_migrates_a_database_from_any_directory(
    wheel: Path, db_url: str, tmp_path: Path
) -> None:
    engine = sa.create_engine(db_url, poolclass=sa.NullPool)
    db.downgrade(engine, "base")
    with engine.connect() as conn:
        assert db.current_revision(conn) is None

    venv = tmp_path / "venv"
    result = _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    assert result.returncode == 0, result.stderr
    python = venv / "bin" / "python"
    # the dependencies come from this environment's site-packages as a plain path entry: its
    # .pth files (among them an editable install of recsys) are not processed
    site = Path(
        _run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]
        ).stdout.strip()
    )
    (site / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    result = _run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps"]
        + ["--no-index", str(wheel)]
    )
    assert result.returncode == 0, result.stdout + result.stderr

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = _clean_env(RECSYS_DATABASE_URL=db_url, RECSYS_HOME=str(tmp_path / "home"))
    where = _run(
        [str(python), "-c", "import recsys; print(recsys.__file__)"], cwd=elsewhere, env=env
    )
    assert Path(where.stdout.strip()).is_relative_to(site), where.stdout + where.stderr

    result = _run([str(venv / "bin" / "recsys"), "init-db"], cwd=elsewhere, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    with engine.connect() as conn:
        assert db.current_revision(conn) == db.head_revision()
        assert {"users", "products", "ratings", "recommendations"} <= set(
            sa.inspect(conn).get_table_names()
        )
    engine.dispose()
