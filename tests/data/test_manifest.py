import os

import pytest

from tbkeras.data import manifest


def _manifest(files):
    return {
        "split": "train", "tool_version": "0.1.0", "num_videos": 3, "num_failed": 1, "classes": ["a", "b"],
        "shards": [{"file": f, "num_videos": 1, "video_ids": [f"v{i}"]} for i, f in enumerate(files)],
        "failures": [{"path": "x.avi", "video_id": "x", "reason": "missing file"}], "flags": {"short_side": 128},
    }


def test_write_load_and_shard_paths(tmp_path):
    files = ["train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord"]
    for f in files:
        (tmp_path / f).write_bytes(b"")
    path = manifest.write_manifest(str(tmp_path), "train", _manifest(files))
    assert path == os.path.join(str(tmp_path), "train-manifest.json")
    loaded = manifest.load_manifest(str(tmp_path), "train")
    assert loaded == _manifest(files)
    assert manifest.num_classes(loaded) == 2
    paths = manifest.shard_paths(os.path.relpath(str(tmp_path)), "train")
    assert paths == [os.path.join(str(tmp_path), f) for f in files] and all(os.path.isabs(p) for p in paths)


def test_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=os.path.join(str(tmp_path), "test-manifest.json")):
        manifest.load_manifest(str(tmp_path), "test")
    manifest.write_manifest(str(tmp_path), "train", _manifest(["train-00000-of-00001.tfrecord"]))
    with pytest.raises(FileNotFoundError, match="train-00000-of-00001.tfrecord"):
        manifest.shard_paths(str(tmp_path), "train")
    with pytest.raises(ValueError, match="classes"):
        manifest.write_manifest(str(tmp_path), "x", {k: v for k, v in _manifest([]).items() if k != "classes"})
    (tmp_path / "bad-manifest.json").write_text('{"split": "bad"}')
    with pytest.raises(ValueError, match="bad-manifest.json is not a tbkeras manifest"):
        manifest.load_manifest(str(tmp_path), "bad")
