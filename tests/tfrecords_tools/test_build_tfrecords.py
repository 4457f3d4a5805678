import glob
import os
import signal
import subprocess
import time

import pytest
import tensorflow as tf

from tbkeras.data import converter, manifest, splits
from tbkeras.data.splits import VideoEntry
from tests.data.video_files import write_video
from tests.tfrecords_tools.cli import run_tool, tool_command, tool_env


def _run(*args):
    return run_tool("build_tfrecords.py", "--noprogress", *args)


def _ucf_lists(split_dir, train="A/v_A_g01_c01.avi 1\n", test="A/v_A_g02_c01.avi\n"):
    os.makedirs(split_dir, exist_ok=True)
    for name, text in (("classInd.txt", "1 A\n2 B\n"), ("trainlist01.txt", train), ("testlist01.txt", test)):
        with open(os.path.join(split_dir, name), "w") as f:
            f.write(text)


def test_bad_input_exits_nonzero_naming_the_path(tmp_path):
    out = str(tmp_path / "out")
    split_dir = str(tmp_path / "lists")
    _ucf_lists(split_dir, test="C/v_C_g01_c01.avi\n")
    cases = [
        (["--layout=ucf101", f"--split_dir={split_dir}", "--split_index=3"], os.path.join(split_dir, "trainlist03.txt")),
        (["--layout=ucf101", f"--split_dir={split_dir}", "--split=test"], "unknown class 'C'"),
        (["--layout=folders"], str(tmp_path / "empty_tree")),
    ]
    os.makedirs(tmp_path / "empty_tree" / "A")
    for args, expected in cases:
        result = _run(f"--videos_dir={tmp_path / 'empty_tree'}", f"--output_dir={out}", *args)
        assert result.returncode != 0, args
        assert expected in result.stderr, (args, result.stderr)
    assert not os.path.exists(out)


@pytest.mark.slow
def test_resume_after_kill(tmp_path):
    """Kill the converter while it waits on a video (a FIFO: opening it blocks until a writer
    comes), after shard 0 is finished; the rerun keeps shard 0 untouched and completes the rest."""
    videos, out = tmp_path / "videos", str(tmp_path / "out")
    for i in range(6):
        write_video(str(videos / f"C{i % 2}" / f"v{i}.avi"), seed=i)
    blocker = str(videos / "C0" / "v0_blocker.avi")
    os.mkfifo(blocker)
    entries = [VideoEntry(p, splits.video_id_from_path(p), 0, "") for p in glob.glob(str(videos / "*" / "*.avi"))]
    assert "v0_blocker" in [e.video_id for e in converter.assign_shards(entries, 2, seed=0)[1]]  # in shard 1 of 2
    args = [f"--videos_dir={videos}", f"--output_dir={out}", "--num_shards=2", "--short_side=32"]
    shard0 = os.path.join(out, "train-00000-of-00002.tfrecord")
    process = subprocess.Popen(tool_command("build_tfrecords.py", "--noprogress", *args, "--workers=1"), env=tool_env(), start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 90
        while not os.path.exists(shard0 + ".state.json"):
            assert process.poll() is None, process.stderr.read().decode()
            assert time.time() < deadline, "shard 0 never finished"
            time.sleep(0.05)
        time.sleep(0.5)  # let it block on the FIFO inside shard 1
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    leftovers = sorted(os.listdir(out))
    assert "train-00001-of-00002.tfrecord" not in leftovers and "train-manifest.json" not in leftovers
    assert any(".tmp-" in f for f in leftovers), leftovers  # shard 1 was being written
    before = os.stat(shard0)

    os.remove(blocker)
    write_video(blocker, seed=9)
    result = _run(*args, "--workers=2")
    assert result.returncode == 0, result.stderr
    assert "1 already complete" in result.stdout
    after = os.stat(shard0)
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (before.st_ino, before.st_mtime_ns, before.st_size)
    assert not [f for f in os.listdir(out) if ".tmp-" in f]
    loaded = manifest.load_manifest(out, "train")
    assert (loaded["num_videos"], loaded["num_failed"]) == (7, 0)
    ids = [tf.io.parse_single_sequence_example(r, context_features={"video/id": tf.io.FixedLenFeature([], tf.string)})[0]["video/id"].numpy().decode()
           for path in manifest.shard_paths(out, "train") for r in tf.data.TFRecordDataset(path)]
    assert sorted(ids) == sorted(sum((s["video_ids"] for s in loaded["shards"]), [])) and len(ids) == 7
    assert loaded["flags"]["workers"] == 2 and loaded["flags"]["num_shards"] == 2
    assert loaded["shuffle_seed"] == loaded["flags"]["shuffle_seed"] == 0
