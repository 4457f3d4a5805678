import json
import os

import numpy as np
import pytest
import tensorflow as tf

from tbkeras.data import inspect, tfrecord
from tests.data.shard_fixtures import FakeVideo, encode_jpeg, frame_indices, frame_pixels, video_record, write_split

VIDEOS = [FakeVideo("a", 12, 0), FakeVideo("b", 7, 1), FakeVideo("c", 20, 1), FakeVideo("d", 5, -1, height=24),
          FakeVideo("e", 9, 2)]


def _write(tmp_path, videos=VIDEOS, num_shards=2):
    tf_dir = str(tmp_path / "tfrecords")
    paths = write_split(tf_dir, "train", videos, num_shards=num_shards)
    return tf_dir, paths


def _rewrite_shard(path, records):
    with tf.io.TFRecordWriter(path) as writer:
        for record in records:
            writer.write(record)


def test_sound_split_is_summarised_without_problems(tmp_path):
    tf_dir, paths = _write(tmp_path)
    report = inspect.inspect_split(tf_dir, "train")
    assert report.problems == []
    assert (report.num_videos, report.num_shards) == (5, 2)
    assert report.videos_per_class == {"class0": 1, "class1": 2, "class2": 1, "unlabeled": 1}
    counts = [v.num_frames for v in VIDEOS]
    assert report.frames_per_video == (min(counts), round(float(np.mean(counts)), 1), max(counts))
    assert report.frame_sizes == {"32x40": 4, "24x40": 1}
    assert report.total_bytes == sum(os.path.getsize(p) for p in paths)
    assert report.recorded_failures == 0
    json.dumps(report.to_json())  # serialisable


def test_problems_name_the_shard_record_and_video(tmp_path):
    tf_dir, paths = _write(tmp_path)
    # Shard 0 holds a, c, e: give c a label outside the 3 classes and e a corrupt last frame.
    bad_label = video_record(FakeVideo("c", 20, 7))
    e = tfrecord.parse_video(video_record(VIDEOS[4]))
    frames = list(e[tfrecord.IMAGE_KEY].numpy())
    frames[-1] = b"not a jpeg"
    corrupt = tfrecord.encode_video(tfrecord.VideoRecord("e", frames, 32, 40, 25.0, 2))
    _rewrite_shard(paths[0], [video_record(VIDEOS[0]), bad_label, corrupt])
    # Shard 1 (b, d) loses its last record, and the manifest's count no longer holds.
    _rewrite_shard(paths[1], [video_record(VIDEOS[1])])
    report = inspect.inspect_split(tf_dir, "train")
    text = "\n".join(report.problems)
    assert f"{paths[0]} record 1 (video 'c'): label index 7 outside the manifest's 3 classes" in text
    assert f"{paths[0]} record 2 (video 'e'): frame 8 is not a decodable JPEG" in text
    assert f"{paths[1]}: holds 1 videos, the manifest lists 2" in text
    assert "says 5 videos, the shards hold 4" in text
    # Without decoding, the corrupt frame goes unnoticed; the rest is still found.
    assert not any("JPEG" in p for p in inspect.inspect_split(tf_dir, "train", decode=False).problems)


def test_truncated_and_missing_shards_are_named(tmp_path):
    tf_dir, paths = _write(tmp_path, num_shards=3)  # shards: (a, d), (b, e), (c)
    with open(paths[0], "rb") as f:
        data = f.read()
    with open(paths[0], "wb") as f:
        f.write(data[:len(data) - 40])  # cut into its second record
    os.remove(paths[2])
    text = "\n".join(inspect.inspect_split(tf_dir, "train").problems)
    assert f"{paths[0]} record 1: unreadable" in text
    assert f"{paths[2]}: missing (the manifest lists 1 videos in it)" in text


def test_a_video_id_in_two_shards_is_named(tmp_path):
    tf_dir, paths = _write(tmp_path, VIDEOS + [FakeVideo("a", 3, 0)])  # shards: (a, c, e), (b, d, a)
    text = "\n".join(inspect.inspect_split(tf_dir, "train").problems)
    assert f"{paths[1]} record 2 (video 'a'): video id also in {paths[0]}" in text


def test_missing_manifest_is_an_error_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-manifest.json"):
        inspect.inspect_split(str(tmp_path), "train")


def test_contact_sheet_shows_evenly_spaced_frames():
    frames = [encode_jpeg(frame_pixels(i, 16, 20)) for i in range(29)]
    sheet = inspect.contact_sheet(frames, count=8)
    assert sheet.shape == (16, 8 * 20, 3) and sheet.dtype == np.uint8
    per_frame = sheet.reshape(16, 8, 20, 3).transpose(1, 0, 2, 3)
    np.testing.assert_array_equal(frame_indices(per_frame), np.round(np.linspace(0, 28, 8)).astype(int))
    assert inspect.contact_sheet(frames[:3], count=8).shape == (16, 3 * 20, 3)
