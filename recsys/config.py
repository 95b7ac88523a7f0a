"""Settings: one typed object read once in the CLI group and passed down.

Every setting can come from the environment with the prefix ``RECSYS_``
(``RECSYS_DATABASE_URL``, ``RECSYS_HOME``, ...).
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, field_validator
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

    max_line_bytes: int = Field(default=1 << 20, ge=1)
    """Longest input line loaded, in bytes (default 1 MiB); a longer line is rejected unread."""

    future_slack_seconds: float = Field(default=86_400.0, ge=0)
    """How far ahead of the clock a rating's timestamp may be (default 1 day); later: rejected."""

    keep_runs: int = 3
    """How many published recommendation runs are kept for rollback."""

    umask: int = 0o077
    """File-creation mask for everything recsys writes (``RECSYS_UMASK``, octal, e.g. ``022``).

    The default makes ``RECSYS_HOME``, model artifacts and other outputs private to the user
    running recsys: folders 0700, files 0600.
    """
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
    engine: str = "local"
    """Where scoring runs: ``local`` (this process) or ``ray`` (``RECSYS_ENGINE``)."""
    ray_address: str | None = None
    """``host:port`` of the Ray head for ``engine = ray`` (``RECSYS_RAY_ADDRESS``)."""
    ray_max_retries: int = Field(default=3, ge=0)
    """Times Ray reruns a scoring task whose worker or node died."""
    ray_task_timeout_s: float = Field(default=600.0, gt=0)
    """Longest wait for one block's result on the cluster, in seconds."""

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

    @field_validator("umask", mode="before")
    @classmethod
    def _octal_umask(cls, value: object) -> object:
        """``RECSYS_UMASK`` is octal text (``077``, ``0o022``); an int is taken as is."""
        if isinstance(value, str):
            text = value.strip().lower().removeprefix("0o")
            try:
                value = int(text, 8)
            except ValueError:
                raise ValueError(f"RECSYS_UMASK must be octal like 077, got {value!r}") from None
        if isinstance(value, int) and not 0 <= value <= 0o777:
            raise ValueError(f"RECSYS_UMASK must be between 000 and 777, got {value:o}")
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
