import numpy as np
import pytest
import tensorflow as tf
import keras

from tbkeras import probe


def _reference_centroid(train_x, train_y, x, num_classes):
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    t, q = unit((train_x - mean) / std), unit((x - mean) / std)
    scores = []
    for c in range(num_classes):
        centroid = t[train_y == c].mean(0)
        scores.append([float(np.dot(row, centroid) / np.linalg.norm(centroid)) for row in q])
    return np.argmax(np.array(scores).T, axis=1)


def test_nearest_centroid_matches_a_loop_reference_and_separates_clusters():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 6)) * 4
    train_y = np.repeat(np.arange(3), 4)
    train_x = centres[train_y] + rng.normal(size=(12, 6))
    y = np.repeat(np.arange(3), 10)
    x = centres[y] + rng.normal(size=(30, 6))
    pred = probe.nearest_centroid(train_x, train_y, x, 3)
    np.testing.assert_array_equal(pred, _reference_centroid(train_x, train_y, x, 3))
    assert np.mean(pred == y) > 0.9
    # A class without a training video is never predicted.
    keep = train_y != 1
    assert 1 not in probe.nearest_centroid(train_x[keep], train_y[keep], x, 3)


def test_ridge_classifier_is_the_closed_form_least_squares():
    rng = np.random.default_rng(1)
    train_x, train_y = rng.normal(size=(40, 5)), rng.integers(0, 4, 40)
    x = rng.normal(size=(9, 5))
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    a = np.c_[(train_x - mean) / std, np.ones(40)]
    w, *_ = np.linalg.lstsq(np.r_[a, np.sqrt(2.0) * np.eye(6)], np.r_[np.eye(4)[train_y], np.zeros((6, 4))],
                            rcond=None)
    expected = (np.c_[(x - mean) / std, np.ones(9)] @ w).argmax(1)
    np.testing.assert_array_equal(probe.ridge_classifier(train_x, train_y, x, 4, l2=2.0), expected)


def test_video_features_average_the_pooled_output_over_views():
    inputs = keras.Input((2, 4, 4, 3))
    pooled = keras.layers.Dense(5)(keras.layers.Flatten()(inputs))
    backbone = keras.Model(inputs, {"pooled": pooled, "temporal": keras.ops.expand_dims(pooled, 1)})
    views = np.random.default_rng(2).normal(size=(5, 3, 2, 4, 4, 3)).astype("float32")
    ds = tf.data.Dataset.from_tensor_slices({"views": views, "label": np.arange(5, dtype="int32"),
                                             "video_id": [f"v{i}" for i in range(5)]}).batch(2)
    feats, labels, ids = probe.video_features(backbone, ds)
    expected = backbone(views.reshape(15, 2, 4, 4, 3))["pooled"].numpy().reshape(5, 3, 5).mean(1)
    np.testing.assert_allclose(feats, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(labels, np.arange(5))
    assert ids == [f"v{i}" for i in range(5)]
    with pytest.raises(ValueError, match="empty"):
        probe.video_features(backbone, ds.take(0))
