import keras
import numpy as np
import pytest

from tests import float32_tolerances as f32
from tests.models.model_checks import run_model_checks
from tbkeras.models import Classifier, ProjectionHead


def _features(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def test_projection_head_checks_pooled(tmp_path):
    head = run_model_checks(lambda: ProjectionHead(hidden_dim=32, output_dim=8), _features(4, 16), (4, 8), tmp_path)
    z = np.asarray(head(_features(4, 16, seed=1), training=False))
    # |z|^2 is the cosine of z with itself, in float32 on both sides: bound 2.
    np.testing.assert_allclose(np.linalg.norm(z, axis=-1), 1.0, rtol=0, atol=f32.cosine_atol(8))


def test_projection_head_checks_slices(tmp_path):
    run_model_checks(lambda: ProjectionHead(hidden_dim=32, output_dim=8), _features(2, 3, 16), (2, 3, 8), tmp_path)


def test_projection_head_applies_the_same_weights_to_each_slice():
    head = ProjectionHead(hidden_dim=32, output_dim=8)
    slices = _features(2, 3, 16)
    z_slices = np.asarray(head(slices, training=False))
    z_rows = np.asarray(head(slices.reshape(6, 16), training=False)).reshape(2, 3, 8)
    # [2, 3, 16] and [6, 16] may go through other matmul kernels: estimate 7 of
    # tests/float32_tolerances.py. Other weights per slice, or statistics per slice, are O(1) off.
    np.testing.assert_allclose(z_slices, z_rows, **f32.network_tolerance(z_rows))
    # In training, BatchNorm normalises over every slice of every clip, as over flattened rows.
    z_rows = np.reshape(head(slices.reshape(6, 16), training=True), (2, 3, 8))
    np.testing.assert_allclose(head(slices, training=True), z_rows, **f32.network_tolerance(z_rows))


def test_projection_head_matches_numpy_reference():
    keras.utils.set_random_seed(0)  # unseeded weights occasionally give a near-zero row: float32 noise
    head = ProjectionHead(hidden_dim=6, output_dim=3)
    x = _features(5, 4)
    z = np.asarray(head(x, training=False))
    w1, b1 = head.hidden.kernel.numpy(), head.hidden.bias.numpy()
    w2 = head.output_dense.kernel.numpy()
    eps = 1e-5  # fresh BatchNorm in inference: (x - 0) / sqrt(1 + eps)
    h = np.maximum((x @ w1 + b1) / np.sqrt(1 + eps), 0)
    o = (h @ w2) / np.sqrt(1 + eps)
    # Two small float32 layers and a normalisation against float64: estimate 7 at the scale of z.
    # A missing ReLU moves z by 0.87 (the biases are fresh zeros and BatchNorm's fresh scale
    # cancels in the normalisation, so neither can show here).
    np.testing.assert_allclose(z, o / np.linalg.norm(o, axis=-1, keepdims=True), **f32.network_tolerance(z))


def test_classifier_checks_and_dropout(tmp_path):
    classifier = run_model_checks(lambda: Classifier(7, dropout=0.5), _features(3, 16), (3, 7), tmp_path)
    x = _features(3, 16, seed=1)
    kernel, bias = classifier.logits.kernel.numpy(), classifier.logits.bias.numpy()
    expected = x @ kernel + bias
    # x @ W + b of 16 inputs in float32 on both sides (numpy's too): twice bound 1, elementwise.
    f32.assert_within(classifier(x, training=False), expected,
                      2 * f32.reduction_rtol(17) * (np.abs(x) @ np.abs(kernel) + np.abs(bias)), "logits")
    assert not np.allclose(classifier(x, training=True), expected)


def test_classifier_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_classes"):
        Classifier(0)
    with pytest.raises(ValueError, match="dropout"):
        Classifier(3, dropout=1.0)
