"""Frozen-feature probes: does a self-supervised backbone encode the classes, before any finetuning?

Self-supervised video work reports such probes (k-NN, linear) because they are cheap and say what
the pretraining learned, apart from what finetuning on a few labels adds. Two probes, on the
backbone's pooled features averaged over a video's views (the evaluation's K clips x C crops):

- `nearest_centroid`: one centroid per class from the labeled videos only (features standardised
  by the labeled set's statistics, then L2-normalised; cosine to each centroid). What a user with
  just the labeled list gets from the frozen features.
- `ridge_classifier`: one-vs-all ridge regression on every training video with its label, i.e.
  labels the semi-supervised setting does not have: an oracle measure of linear separability,
  to report, never to select with.
"""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from tbkeras.evaluate import map_videos


def video_features(backbone: keras.Model, dataset: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The backbone's "pooled" output averaged over each video's views.

    `dataset`: `eval_dataset` elements {"views": [B, V, T, S, S, 3], "label", "video_id"};
    `backbone` maps clips `[M, T, S, S, 3]` to {"pooled": [M, D], ...} (training=False).
    Returns (features float32 [N, D], labels int [N], video ids [N]).
    """
    def features(views):
        num_views = views.shape[1]
        pooled = backbone(ops.reshape(views, (-1,) + tuple(views.shape[2:])), training=False)["pooled"]
        pooled = ops.cast(pooled, "float32")
        return ops.mean(ops.reshape(pooled, (-1, num_views, pooled.shape[-1])), axis=1)

    return map_videos(features, dataset)


def _standardise(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    mean, std = train.mean(axis=0), train.std(axis=0) + 1e-6
    return [(x - mean) / std for x in (train, *others)]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)


def nearest_centroid(train_x: np.ndarray, train_y: np.ndarray, x: np.ndarray, num_classes: int) -> np.ndarray:
    """Predicted class of each row of `x` [N, D]: the class whose centroid (mean of the unit
    vectors of its standardised training features) has the largest cosine. A class with no
    training video is never predicted."""
    train_x, x = _standardise(np.asarray(train_x, np.float64), np.asarray(x, np.float64))
    train_x, x = _unit(train_x), _unit(x)
    scores = np.full((len(x), num_classes), -np.inf)
    for c in range(num_classes):
        members = train_x[train_y == c]
        if len(members):
            scores[:, c] = x @ _unit(members.mean(axis=0, keepdims=True))[0]
    return scores.argmax(axis=1)


def ridge_classifier(train_x: np.ndarray, train_y: np.ndarray, x: np.ndarray, num_classes: int,
                     l2: float = 10.0) -> np.ndarray:
    """Predicted class of each row of `x`: argmax of W^T [x, 1], with W minimising
    ||[X, 1] W - onehot(y)||^2 + l2 ||W||^2 on the standardised training features (closed form)."""
    train_x, x = _standardise(np.asarray(train_x, np.float64), np.asarray(x, np.float64))
    a = np.concatenate([train_x, np.ones((len(train_x), 1))], axis=1)
    targets = np.eye(num_classes)[np.asarray(train_y)]
    w = np.linalg.solve(a.T @ a + l2 * np.eye(a.shape[1]), a.T @ targets)
    return (np.concatenate([x, np.ones((len(x), 1))], axis=1) @ w).argmax(axis=1)
