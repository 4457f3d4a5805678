"""The one place a `tf.distribute.Strategy` is made, and the Keras 3 multi-worker `fit` workaround.

`get_strategy` is called once, at the edge (the runner), and everything else reads the strategy off
the model (`model.distribute_strategy`), as Model Garden's `get_distribution_strategy` does.

Keras 3.15's `fit`/`evaluate` fail under `MultiWorkerMirroredStrategy` (keras-team/keras#20585), in
two places of `keras/src/backend/tensorflow/trainer.py`:

1. `_maybe_symbolic_build` peeks at the first distributed batch and calls
   `strategy.reduce("MEAN", batch, axis=None)` eagerly, outside `strategy.run`; the collective
   reduce then tries to convert the `PerReplica` batch to a tensor and raises
   `ValueError: Attempt to convert a value (PerReplica:{...}) ... to a Tensor`.
   The batch is only needed for its shapes and dtypes, so any one local replica's slice will do.
2. `reduce_per_replica(..., "auto")` reduces every log of the train/test step with
   `strategy.reduce("MEAN", v, axis=0)` in multi-worker mode; a scalar log has no axis 0:
   `ValueError: Invalid reduction dimension 0 for input with 0 dimensions`.
   Returning each scalar log as a `[1]` tensor makes that reduce average it over all replicas
   (what single-worker strategies do) and hand back a scalar.

`enable_multi_worker_fit(model)` applies both fixes to one model instance, and only when the model
lives under a multi-worker `MultiWorkerMirroredStrategy`; everywhere else it does nothing, so
`fit_stage` calls it for every stage unconditionally. Remove it once Keras fixes #20585.
"""
from __future__ import annotations

import functools
import json
import os

import tensorflow as tf

STRATEGY_NAMES = ("default", "one_device", "mirrored", "multi_worker_mirrored", "tpu")


def get_strategy(name: str, *, tpu: str = "", num_gpus: int = 0) -> tf.distribute.Strategy:
    """Build the distribution strategy called `name`.

    Args:
        name: one of `STRATEGY_NAMES`:
            "default": TF's default (no-op) strategy;
            "one_device": `OneDeviceStrategy` on the first GPU if `num_gpus > 0`, else the CPU;
            "mirrored": `MirroredStrategy` over `num_gpus` GPUs (all visible devices if 0);
            "multi_worker_mirrored": `MultiWorkerMirroredStrategy`; the cluster comes from the
                `TF_CONFIG` environment variable (one worker if it is unset);
            "tpu": `TPUStrategy` on the TPU named by `tpu` ("" = the local / default TPU).
        tpu: TPU name or grpc address, only for "tpu".
        num_gpus: GPUs per worker for "one_device" / "mirrored".

    Returns:
        The strategy; build and compile models inside `strategy.scope()`.
    """
    if name not in STRATEGY_NAMES:
        raise ValueError(f"unknown strategy {name!r}; valid strategies: {', '.join(STRATEGY_NAMES)}")
    if num_gpus < 0:
        raise ValueError(f"num_gpus must be >= 0, got {num_gpus}")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy("/gpu:0" if num_gpus > 0 else "/cpu:0")
    if name == "mirrored":
        devices = [f"/gpu:{i}" for i in range(num_gpus)] if num_gpus > 0 else None
        return tf.distribute.MirroredStrategy(devices)
    if name == "multi_worker_mirrored":
        _check_tf_config()
        return tf.distribute.MultiWorkerMirroredStrategy()
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def _check_tf_config() -> None:
    """Fail early with a readable message on a malformed TF_CONFIG (TF's own error is cryptic)."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"TF_CONFIG is not valid JSON: {e}") from e
    if "cluster" not in config or "task" not in config:
        raise ValueError(f"TF_CONFIG needs 'cluster' and 'task' entries, got keys {sorted(config)}")


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    """True for a `MultiWorkerMirroredStrategy` whose cluster has more than one worker."""
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and (
        strategy.extended._in_multi_worker_mode()  # pylint: disable=protected-access
    )


def worker_task(strategy: tf.distribute.Strategy) -> tuple[str, int]:
    """(task_type, task_id) of this process, ("chief", 0) outside multi-worker training."""
    if not is_multi_worker(strategy):
        return "chief", 0
    resolver = strategy.cluster_resolver
    return resolver.task_type, int(resolver.task_id)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the shared outputs (the chief, or worker 0 if there is none)."""
    if not is_multi_worker(strategy):
        return True
    task_type, task_id = worker_task(strategy)
    has_chief = "chief" in strategy.cluster_resolver.cluster_spec().as_dict()
    return task_type == "chief" or (not has_chief and task_type == "worker" and task_id == 0)


def enable_multi_worker_fit(model) -> None:
    """Make Keras 3.15 `fit`/`evaluate` work on `model` under MultiWorkerMirroredStrategy (#20585).

    Patches this instance only (never the Keras classes), and only in multi-worker mode. Idempotent.
    See the module docstring for the two failures it fixes.
    """
    strategy = model.distribute_strategy
    if not is_multi_worker(strategy) or getattr(model, "_tb_multi_worker_fit", False):
        return

    def maybe_symbolic_build(iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, batches in iterator:
                data_batch = tf.nest.map_structure(_first_local_value, next(batches))
                break
        with strategy.scope():
            model._symbolic_build(data_batch=data_batch)  # pylint: disable=protected-access

    def as_rank1_logs(step):
        @functools.wraps(step)
        def wrapped(data):
            return tf.nest.map_structure(_scalar_to_rank1, step(data))

        return wrapped

    # object.__setattr__ skips Keras' attribute tracking: these are behaviour, not state.
    object.__setattr__(model, "_maybe_symbolic_build", maybe_symbolic_build)
    object.__setattr__(model, "train_step", as_rank1_logs(model.train_step))
    object.__setattr__(model, "test_step", as_rank1_logs(model.test_step))
    object.__setattr__(model, "_tb_multi_worker_fit", True)


def _first_local_value(value):
    if isinstance(value, tf.distribute.DistributedValues):
        return value.values[0]
    return value


def _scalar_to_rank1(value):
    if isinstance(value, (tf.Tensor, tf.Variable)) and value.shape.rank == 0:
        return tf.reshape(value, [1])
    return value
