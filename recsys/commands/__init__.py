"""CLI commands, one module per area; ``recsys.cli`` attaches everything listed in COMMANDS.

Each module owns its commands; keep them thin: parse options, call the area's functions,
print results.
"""

from __future__ import annotations

from recsys.commands import database, features, ingest, models, nightly, report

COMMANDS = [
    *database.COMMANDS,
    *ingest.COMMANDS,
    *features.COMMANDS,
    *models.COMMANDS,
    *nightly.COMMANDS,
    *report.COMMANDS,
]
