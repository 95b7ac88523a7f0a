"""Scoring: exact top-k for every user, atomic publishing."""
