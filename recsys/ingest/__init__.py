"""Ingest: one module per source format -> normalised rows; load.py merges them into tables."""

from __future__ import annotations

from recsys.ingest import amazon2014, amazon2018, amazon2023, movielens, ratings_csv

FORMAT_MODULES = (ratings_csv, amazon2018, amazon2014, amazon2023, movielens)
"""Importing these registers their formats in ``recsys.ingest.rows.FORMATS``."""
