"""The strategy factory, and the loss-scaling convention every stage's train_step relies on."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from tbkeras.train.strategy import (enable_multi_worker_fit, get_strategy, is_chief,
                                    is_multi_worker, worker_task)
from tests import float32_tolerances as f32
from tests.train.tiny_model import TinyRegressor, make_dataset, make_model
from tests.strategies import two_cpu_strategy



def _train(strategy, steps=5):
    model = make_model(strategy, lr=0.05)
    model.fit(make_dataset(batch_size=8), epochs=1, steps_per_epoch=steps, verbose=0)
    return model.get_weights()


def test_mirrored_over_two_cpus_matches_one_device():
    """Loss / num_replicas_in_sync once + Keras' gradient sum == the single-device mean gradient."""
    single = _train(tf.distribute.get_strategy())
    mirrored = _train(two_cpu_strategy())
    assert np.abs(single[0]).max() > 0.1  # it really trained
    # The same steps with each gradient summed in two halves: estimate 7 of
    # tests/float32_tolerances.py. A missing division doubles every step (the next test: > 1e-3).
    for a, b in zip(single, mirrored):
        np.testing.assert_allclose(a, b, **f32.network_tolerance(a))


class NotDividing(TinyRegressor):
    """The mistake the convention prevents: a per-replica mean loss not divided by the replicas."""

    def train_step(self, data):
        with tf.GradientTape() as tape:
            loss = self.optimizer.scale_loss(self._loss(data, training=True))
        grads = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}


def test_the_comparison_detects_a_missing_division():
    strategy = two_cpu_strategy()
    with strategy.scope():
        model = NotDividing()
        model.build()
        model.compile(optimizer=keras.optimizers.SGD(0.05))
    model.fit(make_dataset(batch_size=8), epochs=1, steps_per_epoch=5, verbose=0)
    single = _train(tf.distribute.get_strategy())
    assert not np.allclose(model.get_weights()[0], single[0], rtol=1e-3)


def test_factory_builds_each_local_strategy():
    assert get_strategy("default") is tf.distribute.get_strategy()
    assert isinstance(get_strategy("one_device"), tf.distribute.OneDeviceStrategy)
    assert isinstance(get_strategy("mirrored"), tf.distribute.MirroredStrategy)


def test_unknown_strategy_lists_the_valid_names():
    with pytest.raises(ValueError, match="default, one_device, mirrored, multi_worker_mirrored, tpu"):
        get_strategy("horovod")


def test_malformed_tf_config_is_named(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="TF_CONFIG"):
        get_strategy("multi_worker_mirrored")
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {}}')
    with pytest.raises(ValueError, match="'task'"):
        get_strategy("multi_worker_mirrored")


def test_single_process_is_chief_and_the_workaround_is_a_no_op():
    strategy = two_cpu_strategy()
    assert not is_multi_worker(strategy)
    assert is_chief(strategy) and worker_task(strategy) == ("chief", 0)
    model = make_model(strategy)
    enable_multi_worker_fit(model)
    assert "train_step" not in vars(model)  # nothing patched outside multi-worker training
