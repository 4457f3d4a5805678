"""`FusedBatchNormalization` against Keras' own BatchNormalization: the same outputs, gradients
and moving statistics, in float32 and under mixed_bfloat16, and the same saved weights."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from tbkeras.models.r3d_layers import BN_EPSILON, BN_MOMENTUM, FusedBatchNormalization


def _pair(channels: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    layers = (FusedBatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM),
              keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM))
    weights = [rng.uniform(0.5, 1.5, channels), rng.normal(size=channels), rng.normal(size=channels),
               rng.uniform(0.5, 2.0, channels)]  # gamma, beta, moving mean, moving variance
    for layer in layers:
        layer.build((None, 2, 3, 3, channels))
        layer.set_weights([w.astype("float32") for w in weights])
    return layers


def _run(layer, x, training):
    # A loss with random weights per element: sum(y^2) alone is constant in training mode (the
    # batch is normalised), so its input gradient would be ~0 and compare nothing.
    weights = tf.constant(np.random.default_rng(9).normal(size=x.shape).astype("float32"))
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=training)
        loss = tf.reduce_sum(tf.cast(y, tf.float32) ** 2 * weights)
    grads = tape.gradient(loss, [x, layer.gamma, layer.beta])
    return [np.asarray(t, np.float64) for t in (y, *grads)] + [np.asarray(v, np.float64) for v in
                                                               (layer.moving_mean, layer.moving_variance)]


@pytest.mark.parametrize("training", [True, False])
def test_fused_batch_norm_equals_keras_in_float32(training):
    fused, reference = _pair(6)
    x = np.random.default_rng(1).normal(1.5, 2.0, (2, 3, 4, 5, 6)).astype("float32")
    for name, a, b in zip(("y", "dx", "dgamma", "dbeta", "moving_mean", "moving_variance"),
                          _run(fused, x, training), _run(reference, x, training)):
        # float32 sums over 120 values per channel, computed in another order: a few roundings of the
        # largest magnitude involved.
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max(), err_msg=name)


def test_fused_batch_norm_moves_the_statistics_as_keras_does():
    # The update uses the biased batch variance (Keras), not the unbiased one the kernel returns:
    # with 2 x 1 x 1 x 2 = 4 values per channel the two differ by 4/3, far beyond rounding.
    fused, _ = _pair(3)
    x = np.random.default_rng(2).normal(size=(2, 1, 1, 2, 3)).astype("float32")
    before = np.asarray(fused.moving_variance, np.float64)
    fused(tf.constant(x), training=True)
    flat = x.reshape(-1, 3).astype(np.float64)
    expected = BN_MOMENTUM * before + (1 - BN_MOMENTUM) * flat.var(axis=0)
    np.testing.assert_allclose(np.asarray(fused.moving_variance), expected, rtol=1e-5)


def test_fused_batch_norm_under_mixed_bfloat16():
    # bfloat16 in and out, float32 statistics: within bfloat16's rounding (8 bits) of Keras' result.
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        fused, reference = _pair(4)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    x = tf.cast(np.random.default_rng(3).normal(0.5, 1.0, (2, 2, 3, 3, 4)).astype("float32"), tf.bfloat16)
    a, b = fused(x, training=True), reference(x, training=True)
    assert a.dtype == b.dtype == tf.bfloat16
    np.testing.assert_allclose(np.asarray(tf.cast(a, tf.float32)), np.asarray(tf.cast(b, tf.float32)),
                               rtol=2 ** -7, atol=2 ** -7 * float(np.abs(np.asarray(tf.cast(b, tf.float32))).max()))
    np.testing.assert_allclose(np.asarray(fused.moving_mean), np.asarray(reference.moving_mean), rtol=1e-5, atol=1e-6)


def test_other_ranks_fall_back_to_keras():
    # A 4-D input is outside the fused path: Keras' own computation, the same numbers.
    fused, reference = (FusedBatchNormalization(), keras.layers.BatchNormalization())
    x = np.random.default_rng(4).normal(size=(3, 4, 4, 2)).astype("float32")
    np.testing.assert_allclose(np.asarray(fused(x, training=True)), np.asarray(reference(x, training=True)),
                               rtol=1e-6, atol=1e-6)
