"""Weight files handed from one stage to the next, and loading that proves it loaded.

Formats (Keras 3 `.weights.h5`, matched by layer names, so the receiving stage rebuilds the same
architecture with the same constructor arguments and loads into it):

- `<stage_dir>/backbone.weights.h5`: the backbone (`r3d18`/`r3d50` functional model) of a
  pretraining stage, written by `save_encoder` from `pretrainer.backbone`.
- `<stage_dir>/projection_head.weights.h5`: that stage's `ProjectionHead`, saved through a
  one-layer `keras.Sequential([Input((feature_dim,)), head])`, so its layer name must match
  (the default "projection_head" unless the caller names it).
- `<stage_dir>/classifier.weights.h5`: a whole `ClassifierModel` (backbone + Classifier head),
  written by the finetuning and student stages; the student stage loads finetuned teachers from it.

The official TimeBalance code silently finetunes from scratch when a checkpoint does not match.
`load_weights_verified` refuses to: a missing file, a shape mismatch or a file that changes
nothing (or leaves some kernels untouched) is an error naming the checkpoint.
"""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from tbkeras.files import atomic_save_weights

BACKBONE_WEIGHTS = "backbone.weights.h5"
HEAD_WEIGHTS = "projection_head.weights.h5"
CLASSIFIER_WEIGHTS = "classifier.weights.h5"


save_weights = atomic_save_weights  # re-exported: the stages' one way to write a weights file


def head_as_model(head: keras.layers.Layer, feature_dim: int) -> keras.Model:
    """Wrap a projection head (built or not) in a Sequential model so Keras can save/load it."""
    return keras.Sequential([keras.Input((feature_dim,)), head], name=f"{head.name}_weights")


def save_encoder(directory: str, backbone: keras.Model, head: keras.layers.Layer) -> dict:
    """Write `backbone.weights.h5` and `projection_head.weights.h5` into `directory`.

    Returns {"backbone": path, "head": path}.
    """
    paths = {"backbone": f"{directory}/{BACKBONE_WEIGHTS}", "head": f"{directory}/{HEAD_WEIGHTS}"}
    save_weights(backbone, paths["backbone"])
    save_weights(head_as_model(head, backbone.feature_dim), paths["head"])
    return paths


def load_weights_verified(model: keras.Model, path: str, what: str = "checkpoint") -> None:
    """Load `path` into the built `model` and check the weights really changed.

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: Keras could not load it (architecture or shape mismatch), nothing changed, or
            some kernels (weights with >= 2 dims) kept their fresh values, i.e. a partial load.
    """
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    before = [np.array(v) for v in model.weights]
    try:
        model.load_weights(path)
    except Exception as e:  # Keras raises ValueError/KeyError/... depending on the mismatch
        raise ValueError(f"could not load {what} {path} into {model.name!r}: {e}") from e
    changed = [not np.array_equal(b, np.array(v)) for b, v in zip(before, model.weights)]
    if not any(changed):
        raise ValueError(
            f"loading {what} {path} changed no weight of {model.name!r}: the file holds the values the "
            "fresh model already has (saved before training?)")
    untouched = [v.path for v, c in zip(model.weights, changed) if not c and len(v.shape) >= 2]
    if untouched:
        raise ValueError(f"loading {what} {path} left these kernels of {model.name!r} at their fresh "
                         f"values (partial load): {untouched}")


def load_encoder(directory: str, backbone: keras.Model, head: keras.layers.Layer | None = None,
                 what: str = "pretrained encoder") -> None:
    """Load a pretraining stage's `backbone.weights.h5` (and `projection_head.weights.h5` when a
    head is given) from `directory` into freshly built models, verified."""
    load_weights_verified(backbone, f"{directory}/{BACKBONE_WEIGHTS}", what=f"{what} backbone")
    if head is not None:
        load_weights_verified(head_as_model(head, backbone.feature_dim), f"{directory}/{HEAD_WEIGHTS}",
                              what=f"{what} projection head")
