"""The CLI end to end, in a subprocess (absl flags are process-global; other tools define the same
names)."""
import json
import os
import subprocess
import sys

import pytest

_SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "tfrecords_tools", "make_synthetic.py")


def _run(*argv):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, _SCRIPT, *argv], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.mark.slow  # ~10 s idle, mostly importing TensorFlow (via tbkeras.files); more when loaded
def test_cli_writes_the_dataset_and_prints_a_json_summary(tmp_path):
    out = str(tmp_path / "synth")
    proc = _run(f"--output_dir={out}", "--num_classes=2", "--videos_per_class=2",
                "--clips_per_group=1", "--num_frames=6", "--height=32", "--width=32", "--workers=2",
                "--codec=mp4v", "--extension=mp4")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["classes"] == ["Oscillate", "SlideRightThenHopUp"]
    assert summary["num_videos"] == summary["videos_written"] == 4
    assert os.path.isfile(os.path.join(out, "videos", "Oscillate", "v_Oscillate_g02_c01.mp4"))
    with open(os.path.join(out, "splits", "trainlist01.txt")) as f:
        assert f.read().splitlines() == ["Oscillate/v_Oscillate_g02_c01.mp4 1",
                                         "SlideRightThenHopUp/v_SlideRightThenHopUp_g02_c01.mp4 2"]
