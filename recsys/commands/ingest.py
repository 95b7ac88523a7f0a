"""CLI commands of this area (see recsys/commands/__init__.py)."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
