"""Running the nightly work on a cluster: Ray as the engine for scoring (``--engine ray``).

``import ray`` happens only when the Ray engine is asked for, so the base install works
without the ``ray`` extra.
"""
