"""The training pipelines mix the classes, even on shards written in class order.

Split lists are sorted by class. The shards here are written round-robin in that order (as the
converter did before it shuffled), so each shard holds its videos in class order: the hardest
input for the reader. Every training pipeline must still give windows of consecutive videos
whose class counts look like random draws.
"""
import logging

import numpy as np
import pytest
import tensorflow as tf

from tbkeras.data import converter, pipelines, tfrecord
from tbkeras.data.pipelines import (PixelFormat, ReadOptions, SSLConfig, StudentConfig, SupervisedConfig,
                                    VideoSource)
from tbkeras.data.splits import VideoEntry
from tests.data.shard_fixtures import FakeVideo, write_ids_file, write_split

# More shards than the old cycle length (8) and more videos than the old shuffle buffer (64).
NUM_CLASSES, PER_CLASS, NUM_SHARDS = 8, 40, 16
VIDEOS = [FakeVideo(f"v_c{c}_g{i:02d}", 2, label_index=c, height=16, width=16)
          for c in range(NUM_CLASSES) for i in range(PER_CLASS)]  # class-sorted, as the split lists
CLASS_OF = {v.video_id: v.label_index for v in VIDEOS}
LABELED = [v.video_id for v in VIDEOS if int(v.video_id[-2:]) < 10]  # 10 per class
PIX = PixelFormat(crop_size=8)
# Seeded and deterministic: the stream, hence the statistics below, are the same on every run.
READ = ReadOptions(seed=3, deterministic=True)
WINDOW = 24  # 3 videos per class expected

# Upper-tail chi-square critical values (from the regularized incomplete gamma function): one
# window of 8 classes has 7 degrees of freedom, bounded at p = 0.0001 (29.878) since every window
# of a stream is checked; the sum over k windows has 7k, bounded at p = 0.001. Under a uniform
# random order a window's class counts are multivariate hypergeometric (drawn without
# replacement within an epoch), whose Pearson statistic is smaller than the multinomial's, so the
# bounds are conservative. The seeded, deterministic stream makes each statistic a fixed number.
WINDOW_CRITICAL = 29.878
SUM_CRITICAL = {70: 112.317, 140: 197.451, 182: 246.695}  # degrees of freedom: p = 0.001


def window_chi2(video_ids, window=WINDOW):
    """Pearson chi-square of the class counts of each non-overlapping window of `window`
    consecutive videos against equal counts; `[num_windows]`."""
    classes = np.array([CLASS_OF[v] for v in video_ids])
    windows = classes[: len(classes) // window * window].reshape(-1, window)
    counts = np.stack([np.bincount(w, minlength=NUM_CLASSES) for w in windows])
    expected = window / NUM_CLASSES
    return ((counts - expected) ** 2 / expected).sum(axis=1)


def assert_classes_mixed(video_ids, num_windows):
    stats = window_chi2(video_ids)
    assert len(stats) == num_windows
    worst = int(np.argmax(stats))
    assert stats.max() < WINDOW_CRITICAL, (
        f"window {worst} holds classes {sorted(CLASS_OF[v] for v in video_ids[worst * WINDOW:(worst + 1) * WINDOW])}")
    assert stats.sum() < SUM_CRITICAL[(NUM_CLASSES - 1) * num_windows], stats


def stream(ds, num_batches, key=None):
    ids = []
    for batch in ds.take(num_batches):
        part = batch[key] if key else batch
        ids.extend(v.decode() for v in part["video_id"].numpy())
    return ids


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("class_sorted")
    tf_dir = str(root / "tfrecords")
    paths = write_split(tf_dir, "train", VIDEOS, num_shards=NUM_SHARDS,
                        classes=[f"class{c}" for c in range(NUM_CLASSES)])
    return {"dir": tf_dir, "paths": paths, "labeled": write_ids_file(str(root / "labeled.txt"), LABELED)}


def test_the_fixture_shards_are_in_class_order(data):
    # What the reader is up against: every shard in class order, so reading the shards one record
    # at a time from each gives back the list order, whose first window holds 2 of the 8 classes.
    shards = [[int(tfrecord.parse_video(r)[tfrecord.LABEL_INDEX_KEY]) for r in tf.data.TFRecordDataset(p)]
              for p in data["paths"]]
    assert all(labels == sorted(labels) for labels in shards)
    interleaved = [VIDEOS[NUM_SHARDS * r + s].video_id for r in range(len(shards[0])) for s in range(NUM_SHARDS)]
    assert window_chi2(interleaved)[0] > 2 * WINDOW_CRITICAL


def test_supervised_stream_mixes_the_classes(data):
    cfg = SupervisedConfig(VideoSource(data["dir"]), batch_size=8, clip_length=2, stride=1, augment=None,
                           pixels=PIX, read=READ)
    assert_classes_mixed(stream(pipelines.supervised_dataset(cfg), 80), 26)  # 640 videos: 2 epochs


def test_ssl_stream_mixes_the_classes(data):
    cfg = SSLConfig(VideoSource(data["dir"]), batch_size=8, num_clips=1, clip_length=2, views=1, augment=None,
                    pixels=PIX, read=READ)
    assert_classes_mixed(stream(pipelines.ssl_dataset(cfg), 80), 26)


def test_student_labeled_and_unlabeled_streams_mix_the_classes(data):
    cfg = StudentConfig(labeled=VideoSource(data["dir"], include_ids_file=data["labeled"]),
                        unlabeled=VideoSource(data["dir"], exclude_ids_file=data["labeled"]),
                        labeled_batch_size=4, unlabeled_batch_size=8, clip_length=2, stride=1, augment=None,
                        pixels=PIX, read=READ)
    ds = pipelines.student_dataset(cfg)
    labeled = stream(ds, 60, "labeled")  # 240 draws of the 80 labeled videos (cached): 3 epochs
    unlabeled = stream(ds, 60, "unlabeled")  # 480 draws of the 240 others: 2 epochs
    assert set(labeled) == set(LABELED) and not set(unlabeled) & set(LABELED)
    assert_classes_mixed(labeled, 10)
    assert_classes_mixed(unlabeled, 20)


def test_shards_dealt_as_the_converter_deals_them_mix_even_with_a_small_buffer(tmp_path):
    # A dataset too big for the byte budget gets a small buffer: the converter's order does the
    # mixing then. `write_split` deals round-robin in the order given, as the converter does after
    # `shuffle_order`.
    entries = [VideoEntry(f"{v.video_id}.avi", v.video_id, v.label_index, "") for v in VIDEOS]
    by_id = {v.video_id: v for v in VIDEOS}
    dealt = [by_id[e.video_id] for e in converter.shuffle_order(entries, seed=0)]
    tf_dir = str(tmp_path / "tfrecords")
    write_split(tf_dir, "train", dealt, num_shards=NUM_SHARDS, classes=[f"class{c}" for c in range(NUM_CLASSES)])
    cfg = SupervisedConfig(VideoSource(tf_dir), batch_size=8, clip_length=2, stride=1, augment=None, pixels=PIX,
                           read=ReadOptions(shuffle_buffer=16, seed=3, deterministic=True))
    assert_classes_mixed(stream(pipelines.supervised_dataset(cfg), 80), 26)


def test_auto_buffer_holds_the_selection_within_the_byte_budget(data, caplog):
    assert pipelines.shuffle_buffer_size(ReadOptions(), 96, 10 << 20) == 96
    assert pipelines.shuffle_buffer_size(ReadOptions(shuffle_buffer_bytes=1 << 20), 96, 8 << 20) == 12
    assert pipelines.shuffle_buffer_size(ReadOptions(shuffle_buffer_bytes=1), 96, 8 << 20) == 1
    assert pipelines.shuffle_buffer_size(ReadOptions(shuffle_buffer=5), 96, 8 << 20) == 5
    with pytest.raises(ValueError, match="ReadOptions.shuffle_buffer must be >= 0"):
        ReadOptions(shuffle_buffer=-1)

    cfg = SupervisedConfig(VideoSource(data["dir"], exclude_ids_file=data["labeled"]), batch_size=8,
                           clip_length=2, stride=1, augment=None, pixels=PIX, read=READ)
    with caplog.at_level(logging.INFO, logger="tbkeras.data.pipelines"):
        pipelines.supervised_dataset(cfg)
    (message,) = [r.getMessage() for r in caplog.records if "shuffle buffer" in r.getMessage()]
    assert "shuffle buffer of 240 video(s) (auto" in message
    assert f"from {NUM_SHARDS} shard(s), interleaved {NUM_SHARDS} at a time" in message
