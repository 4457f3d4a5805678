"""Tiny models and input elements shared by the stage tests (real R3D-18 at width 0.125, 16 px).

The elements follow the pipelines' structures exactly (DESIGN.md / contracts), built from random
numbers so the tests need no shards; a dataset repeats ONE batch so a loss curve is deterministic.
"""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from tbkeras.models import ProjectionHead, r3d18
from tbkeras.stages.finetune import ClassifierModel

WIDTH = 0.125          # R3D-18 widths 8-16-32-64: feature_dim 64
SIZE = 16              # crop size S
FRAMES = 8             # clip length L / T
NUM_CLASSES = 3


def backbone(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return r3d18(width_multiplier=WIDTH)


def head(seed: int = 0) -> ProjectionHead:
    keras.utils.set_random_seed(seed)
    return ProjectionHead(hidden_dim=32, output_dim=16)


def classifier(seed: int = 0, dropout: float = 0.0) -> ClassifierModel:
    return ClassifierModel(backbone(seed), NUM_CLASSES, dropout=dropout)


def video_ids(batch: int, prefix: str = "v") -> np.ndarray:
    return np.array([f"{prefix}{i:03d}".encode() for i in range(batch)])


def ssl_element(batch: int = 2, views: int = 2, n: int = 2, frames: int = FRAMES, seed: int = 0,
                global_frames: int | None = None) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "local": rng.random((batch, views, n, frames, SIZE, SIZE, 3), dtype=np.float32),
        "global": rng.random((batch, views, global_frames or frames, SIZE, SIZE, 3), dtype=np.float32),
        "video_id": video_ids(batch),
    }


def clips(batch: int, seed: int, frames: int = FRAMES) -> np.ndarray:
    """Clips whose class is visible: class c brightens colour channel c, so a few steps can fit them."""
    rng = np.random.default_rng(seed)
    labels = np.arange(batch) % NUM_CLASSES
    x = rng.random((batch, frames, SIZE, SIZE, 3), dtype=np.float32) * 0.5
    x[np.arange(batch), ..., labels] += 0.5
    return x, labels.astype(np.int32)


def supervised_element(batch: int = 4, seed: int = 0) -> dict:
    x, y = clips(batch, seed)
    return {"clip": x, "label": y, "video_id": video_ids(batch)}


def student_element(labeled: int = 2, unlabeled: int = 2, seed: int = 0, scores: bool = True) -> dict:
    x_l, y_l = clips(labeled, seed)
    x_u, _ = clips(unlabeled, seed + 1)
    rng = np.random.default_rng(seed + 2)
    element = {"labeled": {"clip": x_l, "label": y_l, "video_id": video_ids(labeled, "l")},
               "unlabeled": {"clip": x_u, "video_id": video_ids(unlabeled, "u")}}
    if scores:
        element["labeled"]["score"] = rng.random(labeled, dtype=np.float32)
        element["unlabeled"]["score"] = rng.random(unlabeled, dtype=np.float32)
    return element


def repeated(element: dict) -> tf.data.Dataset:
    """The same batch forever."""
    return tf.data.Dataset.from_tensors(element).repeat()


def fit_history(model: keras.Model, element: dict, steps: int, lr: float = 1e-3, eagerly: bool = False) -> dict:
    """Compile (Adam, no XLA) and train `steps` steps on one repeated batch; per-step logs.

    `eagerly` skips tracing the train step (~20 s for R3D-18 on a loaded 2-core machine), cheaper
    for a handful of steps when the graph path is covered by another test.
    """
    model.compile(optimizer=keras.optimizers.Adam(lr), jit_compile=False, run_eagerly=eagerly)
    return model.fit(repeated(element), epochs=steps, steps_per_epoch=1, verbose=0).history


def assert_decreases(values: list, what: str) -> None:
    """Mean of the last two steps below the mean of the first two."""
    first, last = np.mean(values[:2]), np.mean(values[-2:])
    assert last < first, f"{what} did not go down: {values}"
