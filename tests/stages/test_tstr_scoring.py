import json
import os

import numpy as np
import pytest
import tensorflow as tf

from tbkeras.stages.tstr_scoring import (
    ORDER,
    REPETITIVE,
    TSTRScores,
    plotted_videos,
    score_videos,
    summarize_scores,
    synthetic_class_kinds,
    write_figures,
    write_scores,
    write_tensorboard_summaries,
)
from tests import float32_tolerances as f32
from tests.stages import tiny

# score_videos projects 2 videos' clips per call, the checks below 1 video's: the same network on
# other batches, estimate 7 of tests/float32_tolerances.py (|dz| <= NETWORK_RTOL for unit-norm z),
# so a cosine, and a mean of cosines, moves by <= 2 NETWORK_RTOL. Another video's score differs by
# >= 6e-3 here (30 times this), another video's or teacher's matrix by >= 0.05.
TWO_BATCHINGS_ATOL = 2 * f32.NETWORK_RTOL


def _encoder(seed):
    backbone, head = tiny.backbone(seed), tiny.head(seed)
    head(np.zeros((1, backbone.feature_dim), np.float32))
    return backbone, head


def _cos_matrix(z):
    """Eq. 5 in float64: [n, d] -> [n, n] cosine similarities."""
    z = z / np.linalg.norm(z, axis=-1, keepdims=True)
    return z @ z.T


def _numpy_score(z_inv, z_dist):
    """Eq. 5-6 in float64: mean off-diagonal cosine of both teachers' n x n matrices, in [0, 1]."""
    n = z_inv.shape[0]
    off = ~np.eye(n, dtype=bool)
    return float(np.clip((_cos_matrix(z_inv)[off].sum() + _cos_matrix(z_dist)[off].sum()) / (2 * n * (n - 1)), 0, 1))


def _tstr_dataset(num_videos=5, n=3, batch=2, ids=None, labels=None):
    rng = np.random.default_rng(0)
    clips = rng.random((num_videos, n, tiny.FRAMES, tiny.SIZE, tiny.SIZE, 3), dtype=np.float32)
    ids = ids if ids is not None else [f"v_{i}" for i in range(num_videos)]
    elements = {"clips": clips, "video_id": ids}
    if labels is not None:
        elements["label"] = np.asarray(labels, np.int32)
    return clips, tf.data.Dataset.from_tensor_slices(elements).batch(batch)


def test_scores_every_video_once_against_numpy():
    inv, dist = _encoder(0), _encoder(1)
    clips, dataset = _tstr_dataset(num_videos=5, batch=2)   # last batch is partial
    result = score_videos(*inv, *dist, dataset)
    assert list(result.scores) == [f"v_{i}" for i in range(5)]
    assert result.labels == {f"v_{i}": -1 for i in range(5)}  # a dataset without labels: all unlabeled
    for i in range(5):
        z_inv = np.asarray(inv[1](inv[0](clips[i])["pooled"]), np.float64)
        z_dist = np.asarray(dist[1](dist[0](clips[i])["pooled"]), np.float64)
        np.testing.assert_allclose(result.scores[f"v_{i}"], _numpy_score(z_inv, z_dist),
                                   rtol=0, atol=TWO_BATCHINGS_ATOL)
    with pytest.raises(ValueError, match="keep_matrices=True"):
        result.matrices("v_0")


def test_labels_and_kept_matrices_against_numpy():
    inv, dist = _encoder(0), _encoder(1)
    clips, dataset = _tstr_dataset(num_videos=3, n=3, batch=2, labels=[2, -1, 0])
    result = score_videos(*inv, *dist, dataset, keep_matrices=True)
    assert result.labels == {"v_0": 2, "v_1": -1, "v_2": 0}
    assert result.c_inv.shape == result.c_dist.shape == (3, 3, 3)
    for i in range(3):
        c_inv, c_dist = result.matrices(f"v_{i}")
        z_inv = np.asarray(inv[1](inv[0](clips[i])["pooled"]), np.float64)
        z_dist = np.asarray(dist[1](dist[0](clips[i])["pooled"]), np.float64)
        np.testing.assert_allclose(c_inv, _cos_matrix(z_inv), atol=TWO_BATCHINGS_ATOL)
        np.testing.assert_allclose(c_dist, _cos_matrix(z_dist), atol=TWO_BATCHINGS_ATOL)
        off = ~np.eye(3, dtype=bool)  # s is the mean off-diagonal entry of both (Eq. 6)
        # From the kept float32 matrices themselves: C_I + C_D and a mean over 3 x 3 entries (bound 1).
        np.testing.assert_allclose(result.scores[f"v_{i}"], np.clip((c_inv[off].sum() + c_dist[off].sum()) / 12, 0, 1),
                                   atol=f32.reduction_rtol(3 * 3 + 2))
    with pytest.raises(KeyError, match="v_9"):
        result.matrices("v_9")


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


def _summary_tags(log_dir) -> dict[str, str]:
    """{tag: plugin name} of every summary in the event files under `log_dir`."""
    tags = {}
    for event_file in tf.io.gfile.glob(f"{log_dir}/events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(event_file):
            tags.update({v.tag: v.metadata.plugin_data.plugin_name for v in event.summary.value})
    return tags


def test_tensorboard_summaries(tmp_path):
    write_tensorboard_summaries(str(tmp_path), {"a": 0.1, "b": 0.9, "c": 0.5})
    assert _summary_tags(tmp_path) == {"tstr/scores": "histograms"}


# Synthetic demo classes: label 0, 3 repetitive (atomic), 1, 2 order-dependent (composite).
CLASSES = ["Oscillate", "SlideRightThenHopUp", "HopUpThenSlideRight", "Rotate"]


def _fake_result(num_videos=12, n=4, seed=0):
    rng = np.random.default_rng(seed)
    ids = [f"v{i:02d}" for i in range(num_videos)]
    labels = {v: (i % 5) - 1 for i, v in enumerate(ids)}  # every 5th video unlabeled
    scores = {v: float(rng.uniform()) for v in ids}
    c = rng.uniform(-1, 1, (2, num_videos, n, n)).astype(np.float32)
    return TSTRScores(scores, labels, c[0], c[1])


def test_synthetic_class_kinds():
    assert synthetic_class_kinds(CLASSES) == [REPETITIVE, ORDER, ORDER, REPETITIVE]
    with pytest.raises(ValueError, match="unknown synthetic class 'Fencing'"):
        synthetic_class_kinds(["Fencing"])


def test_per_class_and_per_kind_means_against_numpy():
    result = _fake_result()
    kinds = synthetic_class_kinds(CLASSES)
    summary = summarize_scores(result.scores, labels=result.labels, class_names=CLASSES, class_kinds=kinds)
    ids = np.array(list(result.scores))
    s = np.array(list(result.scores.values()))
    label = np.array([result.labels[v] for v in ids])
    for c, name in enumerate(CLASSES):
        assert summary["per_class"][name]["count"] == (label == c).sum()
        np.testing.assert_allclose(summary["per_class"][name]["mean"], s[label == c].mean())
    assert summary["unlabeled_count"] == (label == -1).sum()
    for kind, classes in ((REPETITIVE, [0, 3]), (ORDER, [1, 2])):
        members = np.isin(label, classes)
        assert summary["per_kind"][kind]["count"] == members.sum()
        np.testing.assert_allclose(summary["per_kind"][kind]["mean"], s[members].mean())
    plain = summarize_scores(result.scores)  # no labels: no groups
    assert "per_class" not in plain and "per_kind" not in plain
    # A kind without videos has no mean; its count says so.
    only_repetitive = {v: label for v, label in result.labels.items() if label in (0, 3)}
    summary = summarize_scores({v: result.scores[v] for v in only_repetitive}, labels=only_repetitive,
                               class_names=CLASSES, class_kinds=kinds)
    assert summary["per_kind"][ORDER] == {"count": 0, "mean": None}


def test_plotted_videos_are_the_median_of_each_kind_or_the_extremes():
    result = _fake_result()
    kinds = synthetic_class_kinds(CLASSES)
    chosen = plotted_videos(result, kinds)
    assert [why.split(",")[0] for _, why in chosen] == [REPETITIVE, ORDER]
    for (video_id, _), classes in zip(chosen, ([0, 3], [1, 2])):
        members = sorted((s, v) for v, s in result.scores.items() if result.labels[v] in classes)
        assert video_id == members[(len(members) - 1) // 2][1]
    extremes = plotted_videos(result)
    assert [v for v, _ in extremes] == [max(result.scores, key=result.scores.get),
                                        min(result.scores, key=result.scores.get)]


@pytest.mark.parametrize("with_kinds", [True, False])
def test_figures_are_written_and_logged_as_images(tmp_path, with_kinds):
    result = _fake_result()
    kinds = synthetic_class_kinds(CLASSES) if with_kinds else None
    written = write_figures(str(tmp_path), result, class_names=CLASSES, class_kinds=kinds,
                            log_dir=str(tmp_path / "tensorboard"))
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["similarity_matrices.png", "tstr_histogram.png"]
    for png in written.values():
        assert tf.io.decode_png(tf.io.read_file(png)).shape[0] > 100
    assert _summary_tags(tmp_path / "tensorboard") == {"tstr/histogram": "images",
                                                       "tstr/similarity_matrices": "images"}


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
    result = score_videos(*inv, *dist, tstr)
    scores = result.scores
    assert sorted(scores) == [v.video_id for v in videos]
    assert result.labels == {v.video_id: v.label_index for v in videos}
    scores_file = str(tmp_path / "tstr" / "tstr_scores.json")
    summary = write_scores(scores_file, scores, labels=result.labels, class_names=["a", "b", "c"])
    assert {k: v["count"] for k, v in summary["per_class"].items()} == {"a": 2, "b": 2, "c": 2}

    student_data = pipelines.student_dataset(pipelines.StudentConfig(
        labeled=pipelines.VideoSource(str(tmp_path / "shards"), "train", include_ids_file=labeled_list),
        unlabeled=pipelines.VideoSource(str(tmp_path / "shards"), "train", exclude_ids_file=labeled_list),
        labeled_batch_size=2, unlabeled_batch_size=2, clip_length=tiny.FRAMES, stride=1,
        scores_file=scores_file, augment=None, pixels=pixels))
    element = next(iter(student_data))
    ids = [v.decode() for part in ("labeled", "unlabeled") for v in element[part]["video_id"].numpy()]
    distiller = StudentDistiller(tiny.classifier(0), tiny.classifier(1), tiny.classifier(2), StudentConfig())
    mean_s, _ = distiller.compute_terms(element, training=False)["mean_s"]
    # The JSON scores read as float32 (one rounding), then a mean of 4 (bound 1).
    np.testing.assert_allclose(float(mean_s), np.mean([scores[i] for i in ids]), rtol=f32.reduction_rtol(5))
