"""Feature store: product text cleaning, averaged word vectors, pgvector storage."""
