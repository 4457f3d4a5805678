import json
import os

import numpy as np
import pytest
import tensorflow as tf

from tbkeras.stages.tstr_scoring import (
    render_histogram,
    score_videos,
    summarize_scores,
    write_scores,
    write_tensorboard_summaries,
)
from tests.stages import tiny


def _encoder(seed):
    backbone, head = tiny.backbone(seed), tiny.head(seed)
    head(np.zeros((1, backbone.feature_dim), np.float32))
    return backbone, head


def _numpy_score(z_inv, z_dist):
    """Eq. 5-6 in float64: mean off-diagonal cosine of both teachers' n x n matrices, in [0, 1]."""
    def cos_matrix(z):
        z = z / np.linalg.norm(z, axis=-1, keepdims=True)
        return z @ z.T
    n = z_inv.shape[0]
    off = ~np.eye(n, dtype=bool)
    return float(np.clip((cos_matrix(z_inv)[off].sum() + cos_matrix(z_dist)[off].sum()) / (2 * n * (n - 1)), 0, 1))


def _tstr_dataset(num_videos=5, n=3, batch=2, ids=None):
    rng = np.random.default_rng(0)
    clips = rng.random((num_videos, n, tiny.FRAMES, tiny.SIZE, tiny.SIZE, 3), dtype=np.float32)
    ids = ids if ids is not None else [f"v_{i}" for i in range(num_videos)]
    return clips, tf.data.Dataset.from_tensor_slices({"clips": clips, "video_id": ids}).batch(batch)


def test_scores_every_video_once_against_numpy():
    inv, dist = _encoder(0), _encoder(1)
    clips, dataset = _tstr_dataset(num_videos=5, batch=2)   # last batch is partial
    scores = score_videos(*inv, *dist, dataset)
    assert sorted(scores) == [f"v_{i}" for i in range(5)]
    for i in range(5):
        z_inv = np.asarray(inv[1](inv[0](clips[i])["pooled"]), np.float64)
        z_dist = np.asarray(dist[1](dist[0](clips[i])["pooled"]), np.float64)
        np.testing.assert_allclose(scores[f"v_{i}"], _numpy_score(z_inv, z_dist), rtol=1e-4, atol=1e-6)


def test_a_video_scored_twice_is_an_error():
    inv = _encoder(0)
    _, dataset = _tstr_dataset(num_videos=3, ids=["a", "b", "a"])
    with pytest.raises(ValueError, match="video id 'a' appears twice"):
        score_videos(*inv, *inv, dataset)


def test_scores_file_and_summary(tmp_path):
    scores = {"b": 0.25, "a": 0.75, "c": 1.0, "d": 0.0}
    path = str(tmp_path / "tstr" / "tstr_scores.json")
    summary = write_scores(path, scores, bins=4)
    with open(path) as f:
        written = json.load(f)
    assert written["scores"] == scores and list(written["scores"]) == ["a", "b", "c", "d"]
    values = np.array(list(scores.values()))
    assert written["summary"] == summary
    assert summary["count"] == 4
    np.testing.assert_allclose([summary["mean"], summary["std"], summary["min"], summary["max"]],
                               [values.mean(), values.std(), 0.0, 1.0])
    assert summary["histogram"] == {"bin_edges": [0.0, 0.25, 0.5, 0.75, 1.0], "counts": [1, 1, 0, 2]}
    assert os.listdir(tmp_path / "tstr") == ["tstr_scores.json"]


def test_render_histogram():
    image = render_histogram([0, 5, 10], height=20, bar_width=3, gap=1)
    assert image.shape == (20, 12, 3) and image.dtype == np.uint8
    bar_height = (image[:, :, 0] != 255).sum(axis=0)
    np.testing.assert_array_equal(bar_height, [0, 0, 0, 0, 10, 10, 10, 0, 19, 19, 19, 0])


def test_tensorboard_summaries(tmp_path):
    write_tensorboard_summaries(str(tmp_path), {"a": 0.1, "b": 0.9, "c": 0.5})
    tags = set()
    for event_file in tf.io.gfile.glob(str(tmp_path / "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(event_file):
            tags.update(v.tag for v in event.summary.value)
    assert {"tstr/scores", "tstr/histogram"} <= tags


def test_summary_of_one_video():
    assert summarize_scores({"a": 0.5}, bins=2)["histogram"]["counts"] == [0, 1]
