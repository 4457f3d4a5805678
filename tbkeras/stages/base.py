"""The train/test step every stage shares, so loss scaling is written (and tested) once.

A stage model computes a dict of scalar terms from one input element (`compute_terms`); the key
"loss" is what is minimised. This base class turns that into Keras' `train_step` / `test_step`:

- the hand-written loss is a per-replica mean, and Keras sums gradients across replicas, so it is
  divided by `num_replicas_in_sync` once, here, and nowhere else;
- `optimizer.scale_loss` is applied before the gradient (a no-op unless a LossScaleOptimizer is used
  for float16), and `apply_gradients` undoes it;
- every term is logged UNscaled through a `keras.metrics.Mean` tracker named after its key, so the
  logs show per-replica means averaged over replicas and steps.

A term may be a scalar, or a `(value, weight)` pair to weight that step in the running mean (e.g.
an accuracy weighted by the number of clips it was measured on).
"""
from __future__ import annotations

from typing import Iterable

import keras
import tensorflow as tf


def _unpack(data):
    """`fit` passes the dataset element itself; `train_on_batch(x)` wraps it as `(x, None, None)`."""
    if isinstance(data, tuple) and len(data) == 3 and data[1] is None and data[2] is None:
        return data[0]
    return data


class StageModel(keras.Model):
    """A `keras.Model` whose train/test steps minimise and log the terms of `compute_terms`.

    Args:
        metric_names: the keys `compute_terms` returns (must include "loss"); one Mean tracker each.
        **kwargs: passed to `keras.Model` (e.g. `name`).
    """

    def __init__(self, metric_names: Iterable[str], **kwargs):
        super().__init__(**kwargs)
        names = list(metric_names)
        if "loss" not in names:
            raise ValueError(f"metric_names must include 'loss', got {names}")
        self._tracker_names = tuple(names)
        self._trackers = [keras.metrics.Mean(name=n) for n in names]

    @property
    def metrics(self):
        return list(self._trackers)

    def compute_terms(self, data, training: bool) -> dict:
        """Return {name: scalar float32 or (scalar, weight)} for one element; "loss" is minimised."""
        raise NotImplementedError

    def trainable_weights_to_update(self) -> list:
        """The variables the optimizer updates (all trainable weights unless a stage says otherwise)."""
        return self.trainable_variables

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Build only the optimizer: stage models are built in `__init__` and compiled without
        Keras losses/metrics, so there is nothing else to build.

        Keras' own version (TF backend, whenever the model was created under a strategy scope)
        first MEAN-reduces one distributed input batch, which fails on the string `video_id`
        features of our elements under MirroredStrategy (AddN on strings) and on PerReplica values
        under MultiWorkerMirroredStrategy (keras-team/keras#20585). Overriding this private hook
        is the smallest fix; revisit when upgrading Keras.
        """
        if self.optimizer is not None and not self.optimizer.built:
            with self.distribute_strategy.scope():
                self.optimizer.build(self.trainable_weights_to_update())

    def train_step(self, data):
        data = _unpack(data)
        variables = self.trainable_weights_to_update()
        with tf.GradientTape() as tape:
            terms = self.compute_terms(data, training=True)
            loss, _ = _value_and_weight(terms["loss"])
            loss = loss / self.distribute_strategy.num_replicas_in_sync
            scaled_loss = self.optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled_loss, variables)
        self.optimizer.apply_gradients(zip(gradients, variables))
        return self._log(terms)

    def test_step(self, data):
        return self._log(self.compute_terms(_unpack(data), training=False))

    def _log(self, terms: dict) -> dict:
        missing = set(self._tracker_names) - set(terms)
        if missing:
            raise ValueError(f"{type(self).__name__}.compute_terms did not return {sorted(missing)}")
        for name, tracker in zip(self._tracker_names, self._trackers):
            value, weight = _value_and_weight(terms[name])
            tracker.update_state(value, sample_weight=weight)
        return {tracker.name: tracker.result() for tracker in self._trackers}


def _value_and_weight(term):
    if isinstance(term, tuple):
        value, weight = term
        return keras.ops.cast(value, "float32"), keras.ops.cast(weight, "float32")
    return keras.ops.cast(term, "float32"), None
