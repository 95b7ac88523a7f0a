"""Ingest: one module per source format -> normalised rows; load.py merges them into tables."""
