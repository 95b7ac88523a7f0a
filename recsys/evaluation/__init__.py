"""Evaluation: the notebook's and the ranking protocol's splits, metrics and peers."""
