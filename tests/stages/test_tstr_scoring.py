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
    _, dataset = _tstr_dataset(num_videos=3, ids=["a", "b", "a"], batch=3)
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


def test_scores_flow_from_real_shards_to_the_student(tmp_path):
    """tiny shards -> tstr_dataset -> score_videos -> tstr_scores.json -> student_dataset -> s."""
    from tbkeras.data import pipelines
    from tbkeras.stages.student import StudentConfig, StudentDistiller
    from tests.data.shard_fixtures import FakeVideo, write_ids_file, write_split

    videos = [FakeVideo(f"vid{i}", num_frames=20, label_index=i % 3) for i in range(6)]
    write_split(str(tmp_path / "shards"), "train", videos, num_shards=2)
    labeled_list = write_ids_file(str(tmp_path / "labeled.txt"), ["vid0", "vid1"])
    source = pipelines.VideoSource(str(tmp_path / "shards"), "train")
    pixels = pipelines.PixelFormat(crop_size=tiny.SIZE)

    tstr = pipelines.tstr_dataset(pipelines.TSTRConfig(source, batch_size=4, num_clips=2, clip_length=tiny.FRAMES,
                                                       pixels=pixels))
    inv, dist = _encoder(0), _encoder(1)
    scores = score_videos(*inv, *dist, tstr)
    assert sorted(scores) == [v.video_id for v in videos]
    scores_file = str(tmp_path / "tstr" / "tstr_scores.json")
    write_scores(scores_file, scores)

    student_data = pipelines.student_dataset(pipelines.StudentConfig(
        labeled=pipelines.VideoSource(str(tmp_path / "shards"), "train", include_ids_file=labeled_list),
        unlabeled=pipelines.VideoSource(str(tmp_path / "shards"), "train", exclude_ids_file=labeled_list),
        labeled_batch_size=2, unlabeled_batch_size=2, clip_length=tiny.FRAMES, stride=1,
        scores_file=scores_file, augment=None, pixels=pixels))
    element = next(iter(student_data))
    ids = [v.decode() for part in ("labeled", "unlabeled") for v in element[part]["video_id"].numpy()]
    distiller = StudentDistiller(tiny.classifier(0), tiny.classifier(1), tiny.classifier(2), StudentConfig())
    mean_s, _ = distiller.compute_terms(element, training=False)["mean_s"]
    np.testing.assert_allclose(float(mean_s), np.mean([scores[i] for i in ids]), rtol=1e-5)
