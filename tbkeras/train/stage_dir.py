"""A stage's folder `model_dir/<stage>/`, and `fit_stage`, which trains into it so kills resume.

Layout of `model_dir/<stage>/` (`StageDir` names every path):

    config.json                the resolved config the stage runs with (written before training)
    DONE                       JSON {"config": ..., "metrics": ...}, written last; its presence with a
                               matching config means "finished, do not rerun"
    final.weights.h5           the trained weights (written atomically, before DONE)
    backup/                    keras BackupAndRestore state (deleted once DONE is written), with
    backup/latest.weights.h5   the weights (and optimizer state) after the last finished epoch
    lr_state.json              the lr schedule's plateau state per epoch (for resumption)
    train_log.csv, tensorboard/     per-epoch logs (CSV; TensorBoard scalars + profiler)
    workers/<task>-<id>/       non-chief workers' private copies of the above (multi-worker only)

How a stage uses this (the runner builds `TrainConfig` from its flags):

    from tbkeras.train.stage_dir import TrainConfig, fit_stage, is_done, stage_identity

    config = TrainConfig(epochs=100, steps_per_epoch=500, lr=1e-3, warmup_epochs=10)
    with strategy.scope():
        model = InvariantPretrainer(...)       # a keras.Model with its own train_step
        model.build(...)                       # BackupAndRestore needs a built model
    result = fit_stage(model, dataset, stage_dir=f"{model_dir}/pretrain_invariant",
                       config=config, stage_config=resolved_flags)
    # result.skipped is True if a DONE with the same config existed: the weights were loaded
    # from final.weights.h5 instead of training. result.metrics = last epoch's logs.
    # To test "already finished?" without building the model:
    #   is_done(stage_path, stage_identity(config, resolved_flags))

A stage that does not train (TSTR scoring, evaluation, export) uses the same marker directly:

    stage = StageDir(f"{model_dir}/tstr")
    if not is_done(stage.path, flags):
        ...write outputs with tbkeras.files.atomic_*...
        stage.mark_done(flags, metrics={"mean_score": m})
"""
from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
from typing import Any, Mapping, Sequence

import keras
import tensorflow as tf

from tbkeras.files import atomic_save_weights, atomic_write_json, read_json
from tbkeras.train.optimizers import FusedAdam
from tbkeras.train.schedules import SCHEDULES
from tbkeras.train.callbacks import NAN_ACTIONS, standard_callbacks
from tbkeras.train.strategy import enable_multi_worker_fit, is_chief, worker_task

DTYPE_POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How a stage trains (DESIGN.md section 2 defaults); dumped to config.json and DONE.

    Attributes:
        epochs, steps_per_epoch: the length of training (steps of the global batch).
        lr: base learning rate (Adam) reached after warmup.
        warmup_epochs, warmup_start_fraction: linear per-step warmup from fraction * lr to lr.
        plateau_patience, plateau_factor, min_lr: lr *= factor after `patience` epochs without a
            new best training loss, never below min_lr.
        lr_schedule: "plateau" (the paper's, above) or "cosine" (after warmup, a cosine from lr
            to min_lr at the last step; plateau_* unused).
        mixed_precision: the Keras dtype policy the model must have been built with (the runner
            sets it with `keras.config.set_dtype_policy` before building; checked here).
        jit_compile: XLA-compile the train step (off by default: slower to start on CPU).
        profile_batch: TensorBoard profiler batch, int or (start, stop); 0 = off.
        nan_action, max_nan_restores: see `NonFiniteLossGuard`.
        log_every: TensorBoard `update_freq`: "epoch" or every N steps.
        backup_every_steps: BackupAndRestore frequency in steps; 0 = at each epoch end.
        validation_steps: steps of `validation_data` per epoch (None = until exhausted).
        verbose: Keras `fit` verbosity (2 = one line per epoch, good for logs).
    """

    epochs: int
    steps_per_epoch: int
    lr: float = 1e-3
    warmup_epochs: int = 10
    warmup_start_fraction: float = 0.01
    plateau_patience: int = 5
    plateau_factor: float = 0.5
    min_lr: float = 1e-6
    lr_schedule: str = "plateau"
    mixed_precision: str = "float32"
    jit_compile: bool = False
    profile_batch: int | tuple[int, int] = 0
    nan_action: str = "stop"
    max_nan_restores: int = 3
    log_every: int | str = "epoch"
    backup_every_steps: int = 0
    validation_steps: int | None = None
    verbose: int = 2

    def __post_init__(self):
        def check(ok: bool, field: str, need: str):
            if not ok:
                raise ValueError(f"TrainConfig.{field} must be {need}, got {getattr(self, field)!r}")

        check(self.epochs >= 1, "epochs", ">= 1")
        check(self.steps_per_epoch >= 1, "steps_per_epoch", ">= 1")
        check(self.lr > 0, "lr", "> 0")
        check(self.warmup_epochs >= 0, "warmup_epochs", ">= 0")
        check(self.plateau_patience >= 1, "plateau_patience", ">= 1")
        check(self.lr_schedule in SCHEDULES, "lr_schedule", f"one of {SCHEDULES}")
        check(self.mixed_precision in DTYPE_POLICIES, "mixed_precision", f"one of {DTYPE_POLICIES}")
        check(self.nan_action in NAN_ACTIONS, "nan_action", f"one of {NAN_ACTIONS}")
        check(self.backup_every_steps >= 0, "backup_every_steps", ">= 0")
        check(self.log_every == "epoch" or (isinstance(self.log_every, int) and self.log_every > 0),
              "log_every", '"epoch" or a positive int')

    def to_json(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))


@dataclasses.dataclass(frozen=True)
class StageDir:
    """The paths of one stage's folder (see the module docstring for the layout)."""

    path: str

    def _join(self, *parts: str) -> str:
        return os.path.join(self.path, *parts)

    @property
    def config_path(self) -> str:
        return self._join("config.json")

    @property
    def done_path(self) -> str:
        return self._join("DONE")

    @property
    def final_weights_path(self) -> str:
        return self._join("final.weights.h5")

    @property
    def backup_dir(self) -> str:
        return self._join("backup")

    @property
    def lr_state_path(self) -> str:
        return self._join("lr_state.json")

    @property
    def latest_weights_path(self) -> str:
        """Keras' BackupAndRestore writes this file after every epoch (its own file name); it goes
        with `backup/` once DONE is written, when `final.weights.h5` holds the last epoch's weights."""
        return os.path.join(self.backup_dir, "latest.weights.h5")

    @property
    def csv_log_path(self) -> str:
        return self._join("train_log.csv")

    @property
    def tensorboard_dir(self) -> str:
        return self._join("tensorboard")

    def worker(self, task_type: str, task_id: int) -> "StageDir":
        """The private folder of a non-chief worker (so workers never write the same file)."""
        return StageDir(self._join("workers", f"{task_type}-{task_id}"))

    def write_config(self, config: Mapping[str, Any]) -> None:
        atomic_write_json(self.config_path, _normalise(config))

    def mark_done(self, config: Mapping[str, Any], metrics: Mapping[str, Any]) -> None:
        """Write DONE (last, atomically): the config the outputs were made with + final metrics."""
        atomic_write_json(self.done_path, {"config": _normalise(config), "metrics": _normalise(metrics)})

    def read_done(self) -> dict | None:
        if not tf.io.gfile.exists(self.done_path):
            return None
        return read_json(self.done_path, what="DONE marker")

    def clear_training_state(self) -> None:
        """Remove what a run with another config left (backup, lr state, logs, DONE)."""
        for path in (self.backup_dir, self.lr_state_path, self.csv_log_path, self.done_path,
                     self.final_weights_path):  # backup_dir holds latest_weights_path
            if tf.io.gfile.isdir(path):
                tf.io.gfile.rmtree(path)
            elif tf.io.gfile.exists(path):
                tf.io.gfile.remove(path)


def _normalise(obj: Any) -> Any:
    """JSON round trip, so tuples/lists and int/float keys compare like what is read back."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    return json.loads(json.dumps(obj, default=str))


# TrainConfig fields that change how a run is watched, not what it produces: not part of its identity.
OPERATIONAL_FIELDS = ("verbose", "profile_batch", "log_every", "backup_every_steps")


def stage_identity(config: TrainConfig, stage_config: Mapping[str, Any] | None = None) -> dict:
    """What a trained stage's DONE and config.json record, and `is_done` compares.

    `{"train": <config without OPERATIONAL_FIELDS>, "stage": <stage_config>}`: rerunning with
    another verbosity or profiler batch does not retrain; any other change does.
    """
    train = {k: v for k, v in config.to_json().items() if k not in OPERATIONAL_FIELDS}
    return {"train": train, "stage": _normalise(stage_config or {})}


def is_done(stage_dir: str, config: Mapping[str, Any]) -> bool:
    """True only if `stage_dir/DONE` exists and was written with a config equal to `config`."""
    done = StageDir(stage_dir).read_done()
    return done is not None and done.get("config") == _normalise(config)


@dataclasses.dataclass(frozen=True)
class StageResult:
    """What `fit_stage` did: `skipped` (already DONE; weights loaded), final epoch `metrics`."""

    skipped: bool
    metrics: dict
    final_weights_path: str


def fit_stage(
    model: keras.Model,
    train_data,
    *,
    stage_dir: str,
    config: TrainConfig,
    stage_config: Mapping[str, Any] | None = None,
    validation_data=None,
    extra_callbacks: Sequence[keras.callbacks.Callback] = (),
    optimizer: keras.optimizers.Optimizer | None = None,
) -> StageResult:
    """Train `model` into `stage_dir`: resume a killed run, skip a finished one.

    Args:
        model: a built `keras.Model` with its own `train_step`, created under the strategy's scope.
            Compiled here with `FusedAdam(config.lr)` (or `optimizer`) unless already compiled.
        train_data: a repeated `tf.data.Dataset` (or anything `fit` takes).
        stage_dir: `model_dir/<stage>`.
        config: the training parameters.
        stage_config: the stage's own resolved settings (flags); with `config` they make the run's
            identity (`stage_identity`): a DONE with the same identity skips training, another
            identity restarts from scratch (the old backup is discarded, never resumed).
        validation_data: optional, evaluated at each epoch end for `config.validation_steps`.
        extra_callbacks: appended after the standard ones.
        optimizer: used when the model is not compiled yet.

    Returns:
        `StageResult`; `metrics` are the last epoch's logs (also stored in DONE).
    """
    stage = StageDir(stage_dir)
    run_config = stage_identity(config, stage_config)
    if model.dtype_policy.name != config.mixed_precision:
        raise ValueError(
            f"model {model.name} was built with dtype policy {model.dtype_policy.name!r} but "
            f"TrainConfig.mixed_precision is {config.mixed_precision!r}: call "
            "keras.config.set_dtype_policy(...) before building the model"
        )
    if not model.built:
        raise ValueError(f"model {model.name} must be built before fit_stage (BackupAndRestore needs it)")

    if is_done(stage.path, run_config):
        logging.info("stage %s is DONE with this config: loading %s", stage.path, stage.final_weights_path)
        model.load_weights(stage.final_weights_path)
        return StageResult(True, stage.read_done()["metrics"], stage.final_weights_path)

    strategy = model.distribute_strategy
    chief = is_chief(strategy)
    own = stage if chief else stage.worker(*worker_task(strategy))
    if tf.io.gfile.exists(own.config_path):
        previous = read_json(own.config_path, what="stage config")
        if previous != run_config:
            logging.warning("config of %s changed: discarding its previous training state", own.path)
            own.clear_training_state()
    own.write_config(run_config)

    if getattr(model, "optimizer", None) is None:
        with strategy.scope():
            model.compile(optimizer=optimizer or FusedAdam(config.lr),
                          jit_compile=config.jit_compile)
    enable_multi_worker_fit(model)

    history = model.fit(
        train_data,
        epochs=config.epochs,
        steps_per_epoch=config.steps_per_epoch,
        validation_data=validation_data,
        validation_steps=config.validation_steps,
        callbacks=standard_callbacks(own, config) + list(extra_callbacks),
        verbose=config.verbose,
        shuffle=False,  # datasets shuffle themselves; Keras only warns that it ignores this
    )
    metrics = _last_epoch_metrics(history, own.csv_log_path)
    atomic_save_weights(model, own.final_weights_path)
    own.mark_done(run_config, metrics)
    if tf.io.gfile.isdir(own.backup_dir):
        tf.io.gfile.rmtree(own.backup_dir)
    return StageResult(False, metrics, own.final_weights_path)


def _last_epoch_metrics(history, csv_path: str) -> dict:
    """The last epoch's logs; from the CSV log when a resumed `fit` had no epoch left to run."""
    if history.history:
        return {k: float(v[-1]) for k, v in history.history.items()}
    if not tf.io.gfile.exists(csv_path):
        return {}
    with tf.io.gfile.GFile(csv_path) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return {}
    return {k: float(v) for k, v in rows[-1].items() if k != "epoch" and v not in ("", "NA")}
