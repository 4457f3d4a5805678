import dataclasses
import logging
import os

import numpy as np
import pytest
import tensorflow as tf

from tbkeras.data import augment, pipelines, sampling, tfrecord
from tbkeras.data.pipelines import (EvalConfig, PixelFormat, ReadOptions, SSLConfig, StudentConfig,
                                    SupervisedConfig, TSTRConfig, VideoSource)
from tests.data.shard_fixtures import (FakeVideo, column_x, frame_indices, write_ids_file, write_scores,
                                       write_split)
from tests.strategies import two_cpu_strategy

H, W, S = 32, 40, 16
FRAME_COUNTS = [70, 40, 20, 9, 5, 64, 33, 12, 50]
VIDEOS = [FakeVideo(f"v{i}", n, label_index=i % 3, height=H, width=W) for i, n in enumerate(FRAME_COUNTS)]
NUM_FRAMES = {v.video_id: v.num_frames for v in VIDEOS}
LABELS = {v.video_id: v.label_index for v in VIDEOS}
LABELED = ["v0", "v3", "v5"]
PIX = PixelFormat(crop_size=S)
SEEDED = ReadOptions(shuffle_buffer=8, seed=1, deterministic=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    tf_dir = str(root / "tfrecords")
    write_split(tf_dir, "train", VIDEOS, num_shards=3)
    labeled_list = write_ids_file(str(root / "labeled.txt"), LABELED)
    scores = {v.video_id: round(0.1 * i, 2) for i, v in enumerate(VIDEOS)}
    scores_file = write_scores(str(root / "scores.json"), scores)
    return {"root": root, "dir": tf_dir, "labeled": labeled_list, "scores": scores, "scores_file": scores_file}


def _ids(batch):
    return [v.decode() for v in np.asarray(batch["video_id"])]


def _take(ds, n):
    return [tf.nest.map_structure(lambda t: t.numpy(), x) for x in ds.take(n)]


def test_ssl_shapes_and_frame_alignment(data):
    cfg = SSLConfig(VideoSource(data["dir"]), batch_size=3, num_clips=2, clip_length=4, views=2,
                    augment=None, pixels=PIX, read=SEEDED)
    for batch in _take(pipelines.ssl_dataset(cfg), 4):
        assert batch["local"].shape == (3, 2, 2, 4, S, S, 3) and batch["local"].dtype == np.float32
        assert batch["global"].shape == (3, 2, 4, S, S, 3)
        for b, vid in enumerate(_ids(batch)):
            n = NUM_FRAMES[vid]
            local = frame_indices(batch["local"][b])  # [V, n, L]
            global_ = frame_indices(batch["global"][b])  # [V, L]
            start = local[0, 0, 0]
            np.testing.assert_array_equal(local[0], (start + np.arange(8).reshape(2, 4)) % n)
            np.testing.assert_array_equal(global_[0], (start + 2 * np.arange(4)) % n)
            np.testing.assert_array_equal(local[1], local[0])  # no augmentation: views agree


def test_ssl_global_clip_of_its_own_length(data):
    cfg = SSLConfig(VideoSource(data["dir"]), batch_size=2, num_clips=2, clip_length=4, global_clip_length=8,
                    views=2, augment=None, pixels=PIX, read=SEEDED)
    for batch in _take(pipelines.ssl_dataset(cfg), 2):
        assert batch["local"].shape == (2, 2, 2, 4, S, S, 3) and batch["global"].shape == (2, 2, 8, S, S, 3)
        for b, vid in enumerate(_ids(batch)):
            local, global_ = frame_indices(batch["local"][b]), frame_indices(batch["global"][b])
            np.testing.assert_array_equal(global_[0], (local[0, 0, 0] + np.arange(8)) % NUM_FRAMES[vid])


def test_ssl_strong_views_differ_and_stay_in_range(data):
    cfg = SSLConfig(VideoSource(data["dir"]), batch_size=2, num_clips=2, clip_length=4, pixels=PIX, read=SEEDED)
    batch = _take(pipelines.ssl_dataset(cfg), 1)[0]
    assert 0.0 <= batch["local"].min() and batch["local"].max() <= 1.0
    assert np.abs(batch["local"][:, 0] - batch["local"][:, 1]).max() > 0.05


def test_supervised_clips_labels_and_normalisation(data):
    pix = PixelFormat(crop_size=S, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    cfg = SupervisedConfig(VideoSource(data["dir"]), batch_size=4, augment=None, pixels=pix, read=SEEDED)
    for batch in _take(pipelines.supervised_dataset(cfg), 3):
        assert batch["clip"].shape == (4, 8, S, S, 3) and batch["label"].dtype == np.int32
        for b, vid in enumerate(_ids(batch)):
            assert batch["label"][b] == LABELS[vid]
            n = NUM_FRAMES[vid]
            got = frame_indices(batch["clip"][b] * 0.25 + 0.5)
            stride = 2 if n >= 15 else 1
            np.testing.assert_array_equal(got, (got[0] + stride * np.arange(8)) % n)


def test_include_and_exclude_lists_select_disjoint_videos(data):
    def ids_seen(source):
        cfg = TSTRConfig(source, batch_size=4, num_clips=1, clip_length=2, pixels=PIX)
        return sorted(v for batch in _take(pipelines.tstr_dataset(cfg), 100) for v in _ids(batch))

    assert ids_seen(VideoSource(data["dir"], include_ids_file=data["labeled"])) == sorted(LABELED)
    others = ids_seen(VideoSource(data["dir"], exclude_ids_file=data["labeled"]))
    assert others == sorted(set(NUM_FRAMES) - set(LABELED))


def test_student_mix_ids_and_scores(data):
    cfg = StudentConfig(
        labeled=VideoSource(data["dir"], include_ids_file=data["labeled"]),
        unlabeled=VideoSource(data["dir"], exclude_ids_file=data["labeled"]),
        labeled_batch_size=2, unlabeled_batch_size=5, scores_file=data["scores_file"], pixels=PIX, read=SEEDED)
    seen_labeled, seen_unlabeled = set(), set()
    for element in _take(pipelines.student_dataset(cfg), 6):
        lab, unl = element["labeled"], element["unlabeled"]
        assert set(lab) == {"clip", "label", "video_id", "score"} and set(unl) == {"clip", "video_id", "score"}
        assert lab["clip"].shape == (2, 8, S, S, 3) and unl["clip"].shape == (5, 8, S, S, 3)
        assert lab["score"].dtype == np.float32
        for part, seen in ((lab, seen_labeled), (unl, seen_unlabeled)):
            ids = _ids(part)
            seen.update(ids)
            np.testing.assert_allclose(part["score"], [data["scores"][v] for v in ids], rtol=1e-6)
        assert [LABELS[v] for v in _ids(lab)] == list(lab["label"])
    assert seen_labeled == set(LABELED)  # 12 labeled draws cycle through the 3 labeled videos
    assert seen_unlabeled == set(NUM_FRAMES) - set(LABELED)  # 30 draws over the other 6


def test_student_without_scores_has_no_score(data):
    cfg = StudentConfig(labeled=VideoSource(data["dir"], include_ids_file=data["labeled"]),
                        unlabeled=VideoSource(data["dir"]), labeled_batch_size=1, unlabeled_batch_size=1,
                        pixels=PIX, read=SEEDED)
    element = _take(pipelines.student_dataset(cfg), 1)[0]
    assert "score" not in element["labeled"] and "score" not in element["unlabeled"]


def test_missing_score_is_named(data):
    partial = {k: v for k, v in data["scores"].items() if k != "v4"}
    scores_file = write_scores(str(data["root"] / "partial.json"), partial)
    cfg = StudentConfig(labeled=VideoSource(data["dir"], include_ids_file=data["labeled"]),
                        unlabeled=VideoSource(data["dir"], exclude_ids_file=data["labeled"]),
                        labeled_batch_size=1, unlabeled_batch_size=1, scores_file=scores_file, pixels=PIX)
    with pytest.raises(ValueError, match="'v4'"):
        pipelines.student_dataset(cfg)


def test_tstr_each_video_once_at_deterministic_positions(data):
    cfg = TSTRConfig(VideoSource(data["dir"]), batch_size=4, num_clips=3, clip_length=4, pixels=PIX)
    batches = _take(pipelines.tstr_dataset(cfg), 100)
    assert [b["clips"].shape[0] for b in batches] == [4, 4, 1]
    ids = [v for b in batches for v in _ids(b)]
    assert sorted(ids) == sorted(NUM_FRAMES)
    for batch in batches:
        assert batch["label"].dtype == np.int32
        assert list(batch["label"]) == [LABELS[v] for v in _ids(batch)]
        for b, vid in enumerate(_ids(batch)):
            expected = sampling.evenly_spaced_clips(tf.constant(NUM_FRAMES[vid]), num_clips=3, clip_length=4,
                                                    stride=1).numpy()
            np.testing.assert_array_equal(frame_indices(batch["clips"][b]), expected)
    again = [v for b in _take(pipelines.tstr_dataset(cfg), 100) for v in _ids(b)]
    assert again == ids


@pytest.mark.parametrize("num_crops,lefts", [(3, [0, 4, 8]), (1, [4])])
def test_eval_views_cover_clips_and_crops(data, num_crops, lefts):
    cfg = EvalConfig(VideoSource(data["dir"]), batch_size=5, num_clips=2, num_crops=num_crops, clip_length=4,
                     pixels=PIX)
    batches = _take(pipelines.eval_dataset(cfg), 100)
    assert sum(b["views"].shape[0] for b in batches) == len(VIDEOS)
    for batch in batches:
        assert batch["views"].shape[1:] == (2 * num_crops, 4, S, S, 3)
        for b, vid in enumerate(_ids(batch)):
            assert batch["label"][b] == LABELS[vid]
            clips = sampling.evenly_spaced_clips(tf.constant(NUM_FRAMES[vid]), num_clips=2, clip_length=4,
                                                 stride=2).numpy()
            views = batch["views"][b]
            for k in range(2):
                for c, left in enumerate(lefts):
                    view = views[k * num_crops + c]
                    np.testing.assert_array_equal(frame_indices(view), clips[k])
                    # Short side 32 -> 16: output column j comes from x = left + 2j + 0.5.
                    np.testing.assert_allclose(column_x(view[0], W), left + 2 * np.arange(S) + 0.5, atol=1.0)


def test_deterministic_mode_repeats_batches(data):
    def first_batches(seed):
        cfg = SSLConfig(VideoSource(data["dir"]), batch_size=2, num_clips=2, clip_length=4, pixels=PIX,
                        read=dataclasses.replace(SEEDED, seed=seed))
        return _take(pipelines.ssl_dataset(cfg), 3)

    a, b, c = first_batches(5), first_batches(5), first_batches(6)
    for x, y in zip(a, b):
        assert list(x["video_id"]) == list(y["video_id"])
        np.testing.assert_array_equal(x["local"], y["local"])
        np.testing.assert_array_equal(x["global"], y["global"])
    assert any(not np.array_equal(x["local"], z["local"]) for x, z in zip(a, c))


def test_mirrored_strategy_gets_per_replica_batches(data):
    strategy = two_cpu_strategy()
    cfg = StudentConfig(labeled=VideoSource(data["dir"], include_ids_file=data["labeled"]),
                        unlabeled=VideoSource(data["dir"], exclude_ids_file=data["labeled"]),
                        labeled_batch_size=4, unlabeled_batch_size=6, pixels=PIX, read=SEEDED)
    element = next(iter(pipelines.distribute(strategy, pipelines.student_dataset, cfg)))
    labeled = strategy.experimental_local_results(element["labeled"]["clip"])
    unlabeled = strategy.experimental_local_results(element["unlabeled"]["clip"])
    assert [x.shape[0] for x in labeled] == [2, 2]
    assert [x.shape[0] for x in unlabeled] == [3, 3]


def _context(num_pipelines, pipeline_id):
    return tf.distribute.InputContext(num_input_pipelines=num_pipelines, input_pipeline_id=pipeline_id,
                                      num_replicas_in_sync=num_pipelines)


@pytest.mark.parametrize("num_pipelines", [2, 4])
def test_input_pipelines_split_the_videos(data, caplog, num_pipelines):
    # 3 shards: 2 pipelines shard by file; 4 pipelines fall back to sharding by record, with a warning.
    cfg = TSTRConfig(VideoSource(data["dir"]), batch_size=num_pipelines, num_clips=1, clip_length=2, pixels=PIX)
    seen = []
    with caplog.at_level(logging.WARNING, logger="tbkeras.data.pipelines"):
        for i in range(num_pipelines):
            seen.append([v for b in _take(pipelines.tstr_dataset(cfg, _context(num_pipelines, i)), 100)
                         for v in _ids(b)])
    assert sorted(v for part in seen for v in part) == sorted(NUM_FRAMES)
    warned = any("sharding by record" in r.getMessage() for r in caplog.records)
    assert warned == (num_pipelines == 4)


def test_corrupt_shard_is_named(data, tmp_path):
    tf_dir = str(tmp_path / "bad")
    paths = write_split(tf_dir, "train", VIDEOS[:4], num_shards=2)
    with open(paths[1], "wb") as f:
        f.write(b"this is not a tfrecord file at all")
    with pytest.raises(ValueError, match=os.path.basename(paths[1])):
        pipelines.supervised_dataset(SupervisedConfig(VideoSource(tf_dir), batch_size=1, pixels=PIX))


def _frameless_record(video_id):
    example = tf.train.SequenceExample()
    example.context.feature[tfrecord.VIDEO_ID_KEY].bytes_list.value.append(video_id.encode())
    example.context.feature[tfrecord.NUM_FRAMES_KEY].int64_list.value.append(0)
    example.feature_lists.feature_list[tfrecord.IMAGE_KEY]  # present but empty
    return example.SerializeToString()


def test_video_without_frames_and_unlabeled_video_are_named(data, tmp_path):
    tf_dir = str(tmp_path / "odd")
    paths = write_split(tf_dir, "train", [FakeVideo("ok", 10, label_index=1), FakeVideo("u_nolabel", 10)],
                        num_shards=1)
    with tf.io.TFRecordWriter(paths[0]) as writer:  # rewrite the shard with a frameless video first
        writer.write(_frameless_record("v_empty"))
    ds = pipelines.tstr_dataset(TSTRConfig(VideoSource(tf_dir), batch_size=1, num_clips=1, clip_length=2,
                                           pixels=PIX, read=ReadOptions(check_shards=False)))
    with pytest.raises(tf.errors.InvalidArgumentError, match="v_empty"):
        _take(ds, 1)

    write_split(tf_dir, "train", [FakeVideo("ok", 10, label_index=1), FakeVideo("u_nolabel", 10)], num_shards=1)
    ds = pipelines.tstr_dataset(TSTRConfig(VideoSource(tf_dir), batch_size=2, num_clips=1, clip_length=2, pixels=PIX))
    batch = _take(ds, 1)[0]  # TSTR scores unlabeled videos too: their label is -1
    assert dict(zip(_ids(batch), batch["label"].tolist())) == {"ok": 1, "u_nolabel": -1}

    write_split(tf_dir, "train", [FakeVideo("u_nolabel", 10)], num_shards=1)
    ds = pipelines.eval_dataset(EvalConfig(VideoSource(tf_dir), batch_size=1, num_clips=1, num_crops=1,
                                           clip_length=2, pixels=PIX))
    with pytest.raises(tf.errors.InvalidArgumentError, match="u_nolabel"):
        _take(ds, 1)


def test_bad_selection_and_missing_manifest(data, tmp_path):
    empty = write_ids_file(str(tmp_path / "none.txt"), ["not_a_video"])
    with pytest.raises(ValueError, match="no video selected"):
        pipelines.supervised_dataset(SupervisedConfig(VideoSource(data["dir"], include_ids_file=empty),
                                                      batch_size=1, pixels=PIX))
    with pytest.raises(FileNotFoundError, match="manifest"):
        pipelines.supervised_dataset(SupervisedConfig(VideoSource(str(tmp_path), split="test"),
                                                      batch_size=1, pixels=PIX))


@pytest.mark.parametrize("aug,num_clips", [(augment.WEAK, 1), (augment.STRONG, 1), (None, 3)])
def test_decoding_only_the_crop_box_gives_the_clips_of_whole_frames(aug, num_clips):
    # Camera-like JPEGs (4:2:0 chroma, quality 90), so crop decoding meets real chroma upsampling.
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, 86)[None, :, None]
    frames = [np.clip(ramp + rng.normal(0, 20, (64, 86, 3)) + 8 * i, 0, 255).astype(np.uint8) for i in range(12)]
    jpegs = tf.constant([tf.io.encode_jpeg(f, quality=90).numpy() for f in frames])
    indices = tf.constant(np.arange(12).reshape(3, 4)[:num_clips], tf.int32)
    whole = tfrecord.decode_frames(jpegs, tf.range(12))
    for i in range(4):
        seed = tf.constant([i, 7], tf.int64)
        cropped = pipelines._shared_crop_clips(jpegs, indices, seed, aug, PIX).numpy()
        expected = augment.augment_clips(whole, indices, seed, aug, PIX).numpy()
        assert cropped.shape == expected.shape == (num_clips, 4, S, S, 3)
        np.testing.assert_allclose(cropped, expected, atol=3 / 255)
        assert np.abs(cropped - expected).mean() < 0.5 / 255


def test_bfloat16_pixels_give_the_same_batches_rounded(data):
    def first_batch(pixels):
        cfg = SSLConfig(VideoSource(data["dir"]), batch_size=2, num_clips=2, clip_length=4, pixels=pixels, read=SEEDED)
        return _take(pipelines.ssl_dataset(cfg), 1)[0]

    full, half = first_batch(PIX), first_batch(dataclasses.replace(PIX, dtype="bfloat16"))
    assert _ids(full) == _ids(half)
    for key in ("local", "global"):
        assert half[key].dtype == tf.bfloat16.as_numpy_dtype and half[key].shape == full[key].shape
        np.testing.assert_array_equal(half[key].astype(np.float32),
                                      full[key].astype(tf.bfloat16.as_numpy_dtype).astype(np.float32))


GROUPED = [FakeVideo(f"v_C{c}_g{g:02d}_c{i:02d}", 12, label_index=c, height=H, width=W)
           for g in (1, 2, 7) for c in range(2) for i in range(3)]


def test_ssl_group_batches_hold_one_group_each(tmp_path):
    tf_dir = str(tmp_path / "tfrecords")
    write_split(tf_dir, "train", GROUPED, num_shards=3)
    cfg = SSLConfig(VideoSource(tf_dir), batch_size=3, num_clips=2, clip_length=4, augment=None, pixels=PIX,
                    read=SEEDED, group_pattern=r"_g(\d+)_c\d+$")
    groups_seen = []
    for batch in _take(pipelines.ssl_dataset(cfg), 12):
        groups = {vid.split("_")[2] for vid in _ids(batch)}
        assert len(groups) == 1, _ids(batch)
        groups_seen.append(groups.pop())
    assert set(groups_seen) == {"g01", "g02", "g07"}
    # Without the pattern, batches mix the groups.
    plain = dataclasses.replace(cfg, group_pattern="")
    assert any(len({vid.split("_")[2] for vid in _ids(b)}) > 1 for b in _take(pipelines.ssl_dataset(plain), 12))


def test_bad_group_pattern_is_named(tmp_path):
    tf_dir = str(tmp_path / "tfrecords")
    write_split(tf_dir, "train", GROUPED + [FakeVideo("v_C0_nogroup", 12, label_index=0, height=H, width=W)])
    with pytest.raises(ValueError, match="needs a capture group"):
        SSLConfig(VideoSource(tf_dir), batch_size=3, group_pattern=r"_g\d+_")
    with pytest.raises(ValueError, match="not a regular expression"):
        SSLConfig(VideoSource(tf_dir), batch_size=3, group_pattern=r"_g(\d+")
    cfg = SSLConfig(VideoSource(tf_dir), batch_size=3, pixels=PIX, read=SEEDED, group_pattern=r"_g(\d+)_c\d+$")
    with pytest.raises(ValueError, match="does not match video id 'v_C0_nogroup'"):
        pipelines.ssl_dataset(cfg)
    # Groups of 6 videos cannot fill batches of 8 without repeating a video.
    cfg = SSLConfig(VideoSource(tf_dir, exclude_ids_file=write_ids_file(str(tmp_path / "x.txt"), ["v_C0_nogroup"])),
                    batch_size=8, pixels=PIX, read=SEEDED, group_pattern=r"_g(\d+)_c\d+$")
    with pytest.raises(ValueError, match=r"3 of the 3 groups .* fewer videos than a batch \(8\)"):
        pipelines.ssl_dataset(cfg)
