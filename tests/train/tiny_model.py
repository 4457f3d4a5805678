"""One tiny model with the train-step convention every stage uses, shared by the train tests.

The hand-written loss is a per-replica mean divided ONCE by `num_replicas_in_sync` (Keras sums
gradients over replicas) and passed through `optimizer.scale_loss`; the logged loss is unscaled.
"""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

FEATURES = 3
TRUE_WEIGHTS = np.array([[1.0], [-2.0], [0.5]], dtype="float32")


class TinyRegressor(keras.Model):
    """Linear regression `[B, 3] -> [B, 1]` with a hand-written squared error in `train_step`."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(1, kernel_initializer="zeros", name="dense")
        self.loss_tracker = keras.metrics.Mean(name="loss")

    def build(self, input_shape=(None, FEATURES)):
        self.dense.build(input_shape)
        super().build(input_shape)

    def call(self, x):
        return self.dense(x)

    @property
    def metrics(self):
        return [self.loss_tracker]

    def _loss(self, data, training):
        x, y = data
        return tf.reduce_mean(tf.square(self(x, training=training) - y))

    def train_step(self, data):
        with tf.GradientTape() as tape:
            loss = self._loss(data, training=True)
            scaled = self.optimizer.scale_loss(loss / self.distribute_strategy.num_replicas_in_sync)
        grads = tape.gradient(scaled, self.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}

    def test_step(self, data):
        self.loss_tracker.update_state(self._loss(data, training=False))
        return {"loss": self.loss_tracker.result()}


def make_model(strategy=None, lr: float = 0.05, compile: bool = True) -> TinyRegressor:
    """A built (and by default SGD-compiled) TinyRegressor under `strategy`'s scope."""
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        model = TinyRegressor()
        model.build()
        if compile:
            model.compile(optimizer=keras.optimizers.SGD(lr))
    return model


def make_data(num: int = 64, seed: int = 0, nan_rows: tuple[int, ...] = ()):
    """`(x [num, 3], y [num, 1])` float32 of a noiseless linear target; NaN in `x` at `nan_rows`."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num, FEATURES)).astype("float32")
    y = x @ TRUE_WEIGHTS
    x[list(nan_rows)] = np.nan
    return x, y


def make_dataset(batch_size: int = 8, num: int = 64, repeat: bool = True, **kwargs) -> tf.data.Dataset:
    """`make_data` as a batched, un-shuffled dataset (repeated forever by default)."""
    ds = tf.data.Dataset.from_tensor_slices(make_data(num, **kwargs))
    if repeat:
        ds = ds.repeat()
    return ds.batch(batch_size)
