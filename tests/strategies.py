"""A MirroredStrategy over conftest's two logical CPUs that any number of tests can create.

TF caches each collective's shape by (group key, instance key), and every MirroredStrategy on the
same devices starts from the same group key: in one pytest process a later strategy whose first
collective has another shape fails with "Shape mismatch in the collective instance 100". TF's own
tests offset `_collective_key_base` per strategy (strategy_combinations.py); so do we.
"""
import itertools

import tensorflow as tf

TWO_CPUS = ("/cpu:0", "/cpu:1")
_KEY_BASES = itertools.count(start=100_000, step=100_000)


def two_cpu_strategy() -> tf.distribute.MirroredStrategy:
    """A fresh `MirroredStrategy(["/cpu:0", "/cpu:1"])` with collective keys of its own."""

    class IsolatedMirroredStrategy(tf.distribute.MirroredStrategy):
        _collective_key_base = next(_KEY_BASES)

    return IsolatedMirroredStrategy(list(TWO_CPUS))
