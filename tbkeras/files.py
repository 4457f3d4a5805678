"""Crash-safe file writes: nothing finished is lost, nothing half-written is ever read.

Every artefact a stage or tool produces (shards, manifests, scores, DONE markers) is written to a
temporary name beside its final path and renamed into place, so a kill leaves either the old file
or the new one. `tf.io.gfile` makes the same code work on local disks and on GCS; it is imported
only when first used, so tools that never touch TensorFlow (the video generator) start fast.
"""
from __future__ import annotations

import contextlib
import json
import os
import uuid
from typing import Any, Iterator


def absolute_path(path: str) -> str:
    """`path` made absolute if it is a local path; URLs (gs://...) and "" (none) unchanged.

    Stage identities record paths: one spelling per location means `data` and `./data` (or a run
    from another working directory) find the same DONE stages instead of retraining them."""
    return path if not path or "://" in path else os.path.abspath(path)


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = "") -> Iterator[str]:
    """Yield a temporary path to write; rename it to `path` only if the block succeeds.

    `suffix` ends the temporary name, for writers that insist on one (Keras: ".weights.h5").
    """
    import tensorflow as tf

    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}{suffix}"
    parent = os.path.dirname(path)
    if parent:
        tf.io.gfile.makedirs(parent)
    try:
        yield tmp
        tf.io.gfile.rename(tmp, path, overwrite=True)
    finally:
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.remove(tmp)


def atomic_write_text(path: str, text: str) -> None:
    """Write `text` to `path` atomically."""
    import tensorflow as tf

    with atomic_path(path) as tmp:
        with tf.io.gfile.GFile(tmp, "w") as f:
            f.write(text)


def atomic_write_json(path: str, obj: Any) -> None:
    """Write `obj` as indented JSON to `path` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str, what: str = "file") -> Any:
    """Read JSON, with an error naming the path and what it was expected to be."""
    import tensorflow as tf

    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    with tf.io.gfile.GFile(path, "r") as f:
        text = f.read()
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} {path} is not valid JSON: {e}") from e


def atomic_save_weights(model: Any, path: str) -> None:
    """`model.save_weights(path)` (a `.weights.h5` file), atomically."""
    with atomic_path(path, suffix=".weights.h5") as tmp:
        model.save_weights(tmp)
