"""Settings: one typed object read once in the CLI group and passed down.

Every setting can come from the environment with the prefix ``RECSYS_``
(``RECSYS_DATABASE_URL``, ``RECSYS_HOME``, ...).
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_home() -> Path:
    """Per-user data directory: ``$XDG_DATA_HOME/recsys`` or ``~/.local/share/recsys``."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "recsys"


class Settings(BaseSettings):
    """recsys configuration."""

    model_config = SettingsConfigDict(
        env_prefix="RECSYS_", env_nested_delimiter="__", extra="ignore"
    )

    database_url: str | None = None
    """PostgreSQL URL; unset means the embedded server under `home`."""

    home: Path = default_home()
    """Where the embedded database (``home/pgdata``) and model artifacts (``home/models``) live."""

    max_reject_rate: float = 0.01
    """Default share of malformed lines above which a file load is rolled back."""

    keep_runs: int = 3
    """How many published recommendation runs are kept for rollback."""

    gate_full_lists_min: float = 1.0
    """Gate: least share of users with a full list (among users the catalogue allows one)."""
    gate_coverage_min: float = 0.005
    """Gate: least share of the available rated catalogue that appears in some list."""
    gate_overlap_min: float = 0.01
    """Gate: least share of the new lists' rows also in the served run (same users)."""
    gate_overlap_max: float = 1.0
    """Gate: most share of rows shared with the served run (1.0: identical lists allowed)."""
    gate_ndcg_ratio_min: float = 1.0
    """Gate: least ratio of the model's internal NDCG@10 to popularity's on the same split."""

    @field_validator("database_url")
    @classmethod
    def _psycopg_driver(cls, value: str | None) -> str | None:
        """Accept postgres:// and postgresql:// URLs and use the psycopg 3 driver."""
        if not value:
            return None
        for prefix in ("postgres://", "postgresql://"):
            if value.startswith(prefix):
                return "postgresql+psycopg://" + value[len(prefix) :]
        return value

    @field_validator("home")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return Path(value).expanduser()

    @property
    def models_dir(self) -> Path:
        """Model artifacts, one folder per run."""
        return self.home / "models"


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment, with explicit overrides taking precedence."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
