"""The learning-rate policy of every stage: linear warmup, then halve the lr on a training-loss plateau
(the paper's), or a cosine decay to `min_lr` over the rest of the run (`schedule="cosine"`, one of
the official code's options: a short run then ends at a small lr, so its final weights are not a
random point of a noisy trajectory).

DESIGN.md section 2: Adam at `base_lr`, warmed up linearly over `warmup_epochs` (per step), then
multiplied by `factor` (0.5) whenever the epoch's training loss has not improved for `patience`
epochs, never below `min_lr`. The official code's bug (the lr left at 1% of base after epoch 0) is
not reproduced: warmup ends exactly at `base_lr`.

A plateau rule depends on the loss history, which a `LearningRateSchedule` (a function of the step)
cannot see, so this is a callback that writes `optimizer.learning_rate` before every step. Its state
(current plateau lr, best loss, epochs without improvement) is saved to a small JSON per finished
epoch, so a run resumed by `BackupAndRestore` at epoch e continues with the lr it had at epoch e.
"""
from __future__ import annotations

import math

import keras
import tensorflow as tf

from tbkeras.files import atomic_write_json, read_json

SCHEDULES = ("plateau", "cosine")


def warmup_lr(step: int, *, base_lr: float, warmup_steps: int, start_fraction: float) -> float:
    """The lr at global step `step` (0-based): linear from `start_fraction * base_lr` to `base_lr`.

    Reaches `base_lr` at `step == warmup_steps` and stays there; `warmup_steps == 0` means no warmup.
    """
    if step >= warmup_steps:
        return base_lr
    return base_lr * (start_fraction + (1.0 - start_fraction) * step / warmup_steps)


class WarmupPlateauSchedule(keras.callbacks.Callback):
    """Sets `optimizer.learning_rate` each step: warmup, then `factor`x on a training-loss plateau.

    Args:
        base_lr: lr after warmup (Adam 1e-3 in the paper).
        warmup_epochs: epochs of linear warmup, counted in steps (`warmup_epochs * steps_per_epoch`).
        patience: epochs after warmup without a new best `monitor` value before the lr is multiplied
            by `factor`; the count restarts after each reduction.
        factor: multiplier on a plateau (0.5 halves).
        min_lr: the plateau rule never goes below this.
        start_fraction: warmup starts at `start_fraction * base_lr`.
        min_delta: an epoch improves when `loss < best - min_delta`.
        steps_per_epoch: steps per epoch; defaults to the `steps` `fit` was given.
        monitor: the epoch log watched for a plateau ("loss" = training loss).
        state_path: JSON file keeping the plateau state per finished epoch, for resumption (None =
            memory only).

    The lr of each epoch is added to the epoch logs as "lr" (place this callback before loggers).
    """

    def __init__(
        self,
        base_lr: float,
        *,
        warmup_epochs: int = 10,
        patience: int = 5,
        factor: float = 0.5,
        min_lr: float = 1e-6,
        start_fraction: float = 0.01,
        min_delta: float = 0.0,
        steps_per_epoch: int | None = None,
        monitor: str = "loss",
        state_path: str | None = None,
        schedule: str = "plateau",
        epochs: int | None = None,
    ):
        super().__init__()
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
        if base_lr <= 0 or not 0 < factor < 1 or patience < 1 or warmup_epochs < 0:
            raise ValueError(
                "need base_lr > 0, 0 < factor < 1, patience >= 1, warmup_epochs >= 0; got "
                f"base_lr={base_lr}, factor={factor}, patience={patience}, "
                f"warmup_epochs={warmup_epochs}"
            )
        if not 0 < start_fraction <= 1:
            raise ValueError(f"start_fraction must be in (0, 1], got {start_fraction}")
        self.base_lr = float(base_lr)
        self.warmup_epochs = int(warmup_epochs)
        self.patience = int(patience)
        self.factor = float(factor)
        self.min_lr = float(min_lr)
        self.start_fraction = float(start_fraction)
        self.min_delta = float(min_delta)
        self.steps_per_epoch = steps_per_epoch
        self.monitor = monitor
        self.state_path = state_path
        self.schedule = schedule
        self.epochs = epochs
        self.plateau_lr = self.base_lr
        self.best = math.inf
        self.wait = 0
        self._epoch = 0
        self._restore_pending = True
        self._lr = self.base_lr

    # -- state -------------------------------------------------------------------------------
    def state(self) -> dict:
        return {"plateau_lr": self.plateau_lr, "best": self.best, "wait": self.wait}

    def _load_state(self, epoch: int) -> None:
        """Restore the state saved when epoch `epoch` was about to start (after a resume)."""
        if not self.state_path or epoch == 0 or not tf.io.gfile.exists(self.state_path):
            return
        history = read_json(self.state_path, what="learning-rate schedule state")
        saved = history.get(str(epoch))
        if saved is None:
            raise ValueError(
                f"{self.state_path} has no lr state for epoch {epoch} (has {sorted(history)}); "
                "the backup and the lr state are out of step"
            )
        self.plateau_lr = float(saved["plateau_lr"])
        self.best = float(saved["best"])
        self.wait = int(saved["wait"])

    def _save_state(self, next_epoch: int) -> None:
        if not self.state_path:
            return
        history = {}
        if tf.io.gfile.exists(self.state_path):
            history = read_json(self.state_path, what="learning-rate schedule state")
        history[str(next_epoch)] = self.state()
        atomic_write_json(self.state_path, history)

    # -- the rule ----------------------------------------------------------------------------
    def lr_at(self, epoch: int, batch: int) -> float:
        """The lr for step `batch` of epoch `epoch` given the current plateau state."""
        steps = self.steps_per_epoch or self.params.get("steps")
        if self.warmup_epochs and not steps:
            raise ValueError("WarmupPlateauSchedule needs steps_per_epoch (or fit(steps_per_epoch=))")
        warmup_steps = self.warmup_epochs * (steps or 0)
        step = epoch * (steps or 0) + batch
        if step < warmup_steps:
            return warmup_lr(step, base_lr=self.base_lr, warmup_steps=warmup_steps,
                             start_fraction=self.start_fraction)
        if self.schedule == "cosine":
            epochs = self.epochs or self.params.get("epochs")
            if not (steps and epochs):
                raise ValueError("schedule='cosine' needs epochs and steps_per_epoch (or fit(epochs=, steps_per_epoch=))")
            decay_steps = max(epochs * steps - warmup_steps, 1)
            progress = min((step - warmup_steps) / decay_steps, 1.0)
            return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.plateau_lr

    def update_plateau(self, epoch: int, value: float) -> None:
        """Apply the plateau rule after epoch `epoch` ended with `monitor == value`."""
        if not math.isfinite(value):
            return
        if value < self.best - self.min_delta:
            self.best = value
            self.wait = 0
            return
        if epoch < self.warmup_epochs:
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.plateau_lr = max(self.plateau_lr * self.factor, self.min_lr)
            self.wait = 0

    # -- Keras hooks -------------------------------------------------------------------------
    def on_train_begin(self, logs=None):
        self._restore_pending = True

    def on_epoch_begin(self, epoch, logs=None):
        if self._restore_pending:
            self._load_state(epoch)
            self._restore_pending = False
        self._epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        self._lr = self.lr_at(self._epoch, batch)
        self.model.optimizer.learning_rate = self._lr

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        logs["lr"] = self._lr
        if self.monitor not in logs:
            raise KeyError(f"WarmupPlateauSchedule monitors {self.monitor!r}, logs have {sorted(logs)}")
        if self.schedule == "plateau":
            self.update_plateau(epoch, float(logs[self.monitor]))
        self._save_state(epoch + 1)
