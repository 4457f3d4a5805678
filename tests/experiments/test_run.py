"""`experiments/run.py` as a user runs it: the demo recipe end to end on a tiny configuration."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The demo flagfile, shrunk to a few steps per stage on 4 classes of 12 tiny videos (3 groups: test, val, train).
TINY = [
    "--flagfile=experiments/demo.flags", "--synthetic_classes=4", "--synthetic_videos_per_class=12",
    "--synthetic_frames=40", "--synthetic_size=40", "--labeled_fraction=0.34", "--prepare_workers=1",
    "--width_multiplier=0.125", "--ssl_epochs=1", "--invariant_epochs=1", "--ssl_steps_per_epoch=2", "--ssl_batch_size=2",
    "--finetune_epochs=1", "--finetune_steps_per_epoch=2", "--student_epochs=1",
    "--student_steps_per_epoch=2", "--labeled_batch_size=2", "--unlabeled_batch_size=2",
    "--eval_clips=2", "--warmup_epochs=0",
]
STAGE_OUTPUTS = ["prepare_data", "pretrain_invariant", "pretrain_distinctive", "pretrain_ssl", "tstr",
                 "finetune_teachers/invariant", "finetune_teachers/distinctive", "supervised", "student",
                 "evaluate", "export"]


def _run(*args, check=True):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": REPO}
    result = subprocess.run([sys.executable, "experiments/run.py", *args], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=1200)
    if check and result.returncode != 0:
        raise AssertionError(f"run.py failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result


def _done_times(model_dir):
    return {s: os.stat(os.path.join(model_dir, s, "DONE")).st_mtime_ns for s in STAGE_OUTPUTS}


@pytest.mark.slow
def test_demo_recipe_end_to_end_then_resume_nothing(tmp_path):
    model_dir, data_dir = str(tmp_path / "run"), str(tmp_path / "data")
    flags = [*TINY, f"--model_dir={model_dir}", f"--synthetic_dir={data_dir}"]
    first = _run(*flags)
    assert "| student |" in first.stdout and "| supervised only |" in first.stdout, first.stdout
    finished = _done_times(model_dir)
    # The small-scale dataset settings reach the generator (the shape cue of small_scale.flags).
    with open(os.path.join(data_dir, "synthetic", "synthetic_config.json")) as f:
        assert json.load(f)["class_shape_probability"] == 0.5

    # The exported student serves 4-class probabilities for a batch of clips.
    served = tf.saved_model.load(os.path.join(model_dir, "export", "student"))
    out = served.signatures["serving_default"](clips=tf.zeros([2, 8, 32, 32, 3]))
    assert out["probabilities"].shape == (2, 4)
    np.testing.assert_allclose(out["probabilities"].numpy().sum(-1), 1.0, rtol=1e-5)

    # --stage=all on a finished model_dir reruns nothing.
    _run(*flags)
    assert _done_times(model_dir) == finished

    # A student-only change reruns the student and what depends on it, nothing upstream.
    _run(*flags, "--omega_unlabeled=10")
    after = _done_times(model_dir)
    rerun = {s for s in STAGE_OUTPUTS if after[s] != finished[s]}
    assert rerun == {"student", "evaluate", "export"}


def test_bad_flags_exit_nonzero_with_a_clear_message(tmp_path):
    unknown = _run("--stage=pretrain", f"--model_dir={tmp_path}", "--tfrecord_dir=x", check=False)
    assert unknown.returncode != 0 and "pretrain_invariant" in unknown.stderr
    missing = _run("--stage=tstr", f"--model_dir={tmp_path / 'm'}", f"--tfrecord_dir={tmp_path / 'none'}",
                   check=False)
    assert missing.returncode == 1
    assert "stage 'pretrain_invariant' has not finished" in missing.stderr
    no_data = _run("--stage=student", f"--model_dir={tmp_path / 'm'}", check=False)
    assert no_data.returncode != 0 and "--tfrecord_dir is required" in no_data.stderr
