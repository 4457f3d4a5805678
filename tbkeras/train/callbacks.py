"""The callbacks every stage trains with, and the one function that lists them for a stage directory.

- `NonFiniteLossGuard`: a NaN/inf loss either stops training with an error naming the step, or
  (Model Garden's recovery action) restores the last good weights and optimizer state and goes on.
- `tensorboard_callback`: TensorBoard logs, with the profiler on `profile_batch`.
- `standard_callbacks`: lr schedule, BackupAndRestore, NaN guard, CSV and TensorBoard logs under
  `model_dir/<stage>/`, in the order their hooks depend on. BackupAndRestore's weights file is also
  the stage's latest checkpoint (`StageDir.latest_weights_path`): a second per-epoch save of the
  same weights (Keras' ModelCheckpoint) cost the demo's student stage ~10 s of its ~2 minutes
  (three networks, ~1 s per save; BENCHMARKS.md).
"""
from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import keras
import numpy as np

from tbkeras.train.schedules import WarmupPlateauSchedule

if TYPE_CHECKING:
    from tbkeras.train.stage_dir import StageDir, TrainConfig

NAN_ACTIONS = ("stop", "restore")


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss (the message names the step)."""


class NonFiniteLossGuard(keras.callbacks.Callback):
    """Checks the loss after every step; acts on the first non-finite value.

    Args:
        action: "stop": raise `NonFiniteLossError` naming the global step, epoch and batch.
            "restore": put back the weights and optimizer state of the last snapshot (taken when
            training starts, after any BackupAndRestore, and at the end of every epoch whose losses
            were all finite), reset the running metrics, and continue with the next batch. The
            snapshot lives in host memory (model + optimizer variables).
        max_restores: after this many restores in one `fit`, stop as "stop" does.
        monitor: the batch log to check.
    """

    def __init__(self, action: str = "stop", *, max_restores: int = 3, monitor: str = "loss"):
        super().__init__()
        if action not in NAN_ACTIONS:
            raise ValueError(f"unknown nan_action {action!r}; valid: {', '.join(NAN_ACTIONS)}")
        self.action = action
        self.max_restores = max_restores
        self.monitor = monitor
        self.restores = 0
        self._epoch = 0
        self._epoch_clean = True
        self._snapshot = None

    def _variables(self):
        return list(self.model.weights) + list(self.model.optimizer.variables)

    def _take_snapshot(self):
        if self.action == "restore":
            self._snapshot = [np.array(keras.ops.convert_to_numpy(v)) for v in self._variables()]

    def on_train_begin(self, logs=None):
        self.restores = 0
        self._take_snapshot()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._epoch_clean = True

    def on_train_batch_end(self, batch, logs=None):
        if not logs or self.monitor not in logs:
            return
        value = float(keras.ops.convert_to_numpy(logs[self.monitor]))
        if math.isfinite(value):
            return
        steps = self.params.get("steps")
        if steps:
            step = self._epoch * steps + batch
        else:  # unknown epoch length: count the optimizer's updates (this step's included)
            step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)) - 1
        where = f"step {step} (epoch {self._epoch + 1}, batch {batch + 1})"
        if self.action == "stop" or self.restores >= self.max_restores:
            extra = f" after {self.restores} restores" if self.restores else ""
            raise NonFiniteLossError(f"non-finite {self.monitor} ({value}) at {where}{extra}")
        for variable, saved in zip(self._variables(), self._snapshot):
            variable.assign(saved)
        for metric in self.model.metrics:
            metric.reset_state()
        self.restores += 1
        self._epoch_clean = False
        logging.warning("non-finite %s (%s) at %s: restored the last good weights (%d/%d)",
                        self.monitor, value, where, self.restores, self.max_restores)

    def on_epoch_end(self, epoch, logs=None):
        if self._epoch_clean:
            self._take_snapshot()


def tensorboard_callback(log_dir: str, *, profile_batch=0, update_freq="epoch"):
    """TensorBoard scalars under `log_dir`; `profile_batch` (int or (start, stop)) runs the profiler."""
    return keras.callbacks.TensorBoard(
        log_dir=log_dir, profile_batch=profile_batch, update_freq=update_freq, write_graph=False
    )


def standard_callbacks(stage: "StageDir", config: "TrainConfig") -> list[keras.callbacks.Callback]:
    """The callbacks of a stage writing into `stage` (a `StageDir`), configured by `config`.

    Order matters: the lr schedule first (it adds "lr" to the epoch logs the loggers write, and
    saves its state before the backup); loggers before BackupAndRestore, so a
    kill between them repeats an epoch's log row rather than losing it; the NaN guard after
    BackupAndRestore, so its first snapshot is the restored state.
    """
    return [
        WarmupPlateauSchedule(
            config.lr,
            warmup_epochs=config.warmup_epochs,
            start_fraction=config.warmup_start_fraction,
            patience=config.plateau_patience,
            factor=config.plateau_factor,
            min_lr=config.min_lr,
            steps_per_epoch=config.steps_per_epoch,
            state_path=stage.lr_state_path,
            schedule=config.lr_schedule,
            epochs=config.epochs,
        ),
        keras.callbacks.CSVLogger(stage.csv_log_path, append=True),
        tensorboard_callback(
            stage.tensorboard_dir, profile_batch=config.profile_batch, update_freq=config.log_every
        ),
        keras.callbacks.BackupAndRestore(
            stage.backup_dir,
            save_freq=config.backup_every_steps or "epoch",
            double_checkpoint=True,
            delete_checkpoint=False,  # fit_stage deletes it once DONE is written
        ),
        NonFiniteLossGuard(config.nan_action, max_restores=config.max_nan_restores),
    ]
