"""Models: the seed notebook's Keras models, baselines, the ranking hybrid, their registry."""
