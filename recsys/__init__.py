"""recsys: a nightly batch recommender for online shops."""

__version__ = "0.1.0"
