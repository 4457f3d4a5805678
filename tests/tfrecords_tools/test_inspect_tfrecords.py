import json
import os

import tensorflow as tf

from tests.data.shard_fixtures import FakeVideo, write_split
from tests.tfrecords_tools.cli import run_tool

VIDEOS = [FakeVideo(f"v{i}", 10 + i, i % 3) for i in range(6)]


def test_reports_a_sound_split_writes_contact_sheets_and_prints_json(tmp_path):
    tf_dir = str(tmp_path / "tfrecords")
    write_split(tf_dir, "train", VIDEOS, num_shards=2)
    sheets = tmp_path / "sheets"
    result = run_tool("inspect_tfrecords.py", f"--tfrecord_dir={tf_dir}", f"--sheets_dir={sheets}", "--num_sheets=3")
    assert result.returncode == 0, result.stderr
    assert f"split train of {tf_dir}: 6 videos in 2 shards" in result.stdout
    assert "frames per video: min 10, mean 12.5, max 15" in result.stdout and "problems: none" in result.stdout
    written = sorted(os.listdir(sheets))
    assert written == ["train-v0.jpg", "train-v2.jpg", "train-v4.jpg"]  # shard 0 holds v0, v2, v4
    assert tf.io.decode_jpeg(tf.io.read_file(str(sheets / written[0]))).shape == (32, 8 * 40, 3)

    result = run_tool("inspect_tfrecords.py", f"--tfrecord_dir={tf_dir}", "--json", "--nodecode")
    assert result.returncode == 0, result.stderr
    [report] = json.loads(result.stdout)
    assert report["num_videos"] == 6 and report["videos_per_class"] == {"class0": 2, "class1": 2, "class2": 2}


def test_a_broken_shard_exits_1_naming_it_and_a_missing_split_is_an_error(tmp_path):
    tf_dir = str(tmp_path / "tfrecords")
    paths = write_split(tf_dir, "train", VIDEOS, num_shards=2)
    with open(paths[1], "r+b") as f:
        f.truncate(os.path.getsize(paths[1]) // 2)
    result = run_tool("inspect_tfrecords.py", f"--tfrecord_dir={tf_dir}")
    assert result.returncode == 1
    assert f"{paths[1]} record 1: unreadable" in result.stdout

    result = run_tool("inspect_tfrecords.py", f"--tfrecord_dir={tf_dir}", "--splits=train,test")
    assert result.returncode == 1 and "inspect_tfrecords: error: --splits=test:" in result.stderr
    assert "test-manifest.json" in result.stderr
