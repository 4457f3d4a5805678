"""Stage folders: DONE markers, skipping finished stages, rerunning changed ones, kill-and-resume."""
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from tbkeras.train.stage_dir import StageDir, TrainConfig, fit_stage, is_done, stage_identity
from tests.train.stage_worker import STAGE_CONFIG, run, tiny_config
from tests.train.tiny_model import make_dataset, make_model

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class RecordEpochs(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)


def test_is_done_needs_a_marker_with_the_same_config(tmp_path):
    stage = StageDir(str(tmp_path / "tstr"))
    config = {"n": 4, "teachers": ("invariant", "distinctive")}
    assert not is_done(stage.path, config)
    stage.mark_done(config, {"mean_score": 0.5})
    assert is_done(stage.path, config)  # the tuple compares equal to the list read back
    assert not is_done(stage.path, {**config, "n": 8})
    assert stage.read_done()["metrics"] == {"mean_score": 0.5}


def test_fit_stage_writes_its_folder_and_a_finished_stage_is_skipped(tmp_path):
    stage = StageDir(str(tmp_path / "pretrain"))
    model, result = run(stage.path, tiny_config(epochs=2, steps=3))
    assert not result.skipped
    for path in (stage.config_path, stage.done_path, stage.final_weights_path, stage.csv_log_path,
                 stage.lr_state_path):
        assert os.path.exists(path), path
    assert not os.path.exists(stage.backup_dir)  # removed once DONE is written, its latest weights with it
    assert os.path.dirname(stage.latest_weights_path) == stage.backup_dir
    assert set(result.metrics) >= {"loss", "lr"}
    assert json.load(open(stage.done_path))["metrics"] == result.metrics

    assert is_done(stage.path, stage_identity(tiny_config(epochs=2, steps=3), STAGE_CONFIG))

    record = RecordEpochs()
    watched_differently = dataclasses.replace(tiny_config(epochs=2, steps=3), verbose=1, log_every=2)
    again, skipped = run(stage.path, watched_differently, callbacks=[record])
    assert skipped.skipped and record.epochs == []  # nothing trained...
    for a, b in zip(again.get_weights(), model.get_weights()):  # ...the final weights were loaded
        np.testing.assert_array_equal(a, b)
    assert skipped.metrics == result.metrics


def test_a_changed_config_reruns_from_scratch(tmp_path):
    stage = str(tmp_path / "student")
    run(stage, tiny_config(epochs=2, steps=3))
    record = RecordEpochs()
    _, result = run(stage, tiny_config(epochs=3, steps=3), callbacks=[record])
    assert not result.skipped and record.epochs == [0, 1, 2]
    assert json.load(open(os.path.join(stage, "DONE")))["config"]["train"]["epochs"] == 3


def test_bad_configs_name_the_field(tmp_path):
    with pytest.raises(ValueError, match="TrainConfig.nan_action"):
        TrainConfig(epochs=1, steps_per_epoch=1, nan_action="ignore")
    with pytest.raises(ValueError, match="mixed_bfloat16"):
        fit_stage(make_model(), make_dataset(), stage_dir=str(tmp_path),
                  config=TrainConfig(epochs=1, steps_per_epoch=1, mixed_precision="mixed_bfloat16"))


def _backup_epoch(stage: StageDir) -> int:
    path = os.path.join(stage.backup_dir, "training_metadata.json")
    try:
        with open(path) as f:
            return json.load(f)["epoch"]
    except (OSError, ValueError):
        return 0


@pytest.mark.slow
def test_a_killed_stage_resumes_from_its_backup(tmp_path):
    stage = StageDir(str(tmp_path / "pretrain"))
    epochs, steps = 12, 3
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.train.stage_worker", stage.path, f"--epochs={epochs}",
         f"--steps={steps}", "--sleep=0.15"],
        cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": REPO_ROOT},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.time() + 90
        while _backup_epoch(stage) < 2 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, f"worker ended before it was killed:\n{proc.stdout.read().decode()}"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert not os.path.exists(stage.done_path)
    assert os.path.exists(stage.latest_weights_path)  # a killed stage's last epoch, readable by a user
    resumed_from = _backup_epoch(stage)
    assert 2 <= resumed_from < epochs

    record = RecordEpochs()
    _, result = run(stage.path, tiny_config(epochs, steps), callbacks=[record])
    assert not result.skipped
    assert record.epochs == list(range(resumed_from, epochs))  # from the backup, not from 0
    assert is_done(stage.path, json.load(open(stage.config_path)))
    logged = [int(row.split(",")[0]) for row in open(stage.csv_log_path).read().split()[1:]]
    assert set(logged) == set(range(epochs))  # the CSV log continues across the kill
