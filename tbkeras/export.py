"""Export a trained classifier (the student) as a SavedModel that TF Serving can serve.

Two serving signatures, so clients need not re-implement our preprocessing:
- `serving_default`: `clips` float32 `[B, T, S, S, 3]`, RGB in [0, 1] (the pipelines' pixels).
- `serve_jpeg`: `frames` string `[B, T]`, one JPEG per frame; decoded, short side resized to S,
  centre-cropped to S x S, exactly as the evaluation pipeline's single centre crop.
Both apply the training normalisation (mean/std) inside the graph and return `probabilities`
`[B, C]`, `logits` `[B, C]` and `classes` int64 `[B]`. Class names go to `assets/labels.txt`
and the export settings to `assets/export_config.json`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import uuid
from typing import Sequence

import keras
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """What a served model needs to know about its inputs."""

    clip_length: int = 8
    crop_size: int = 112
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    class_names: tuple[str, ...] = ()


def _normalize(clips: tf.Tensor, config: ExportConfig) -> tf.Tensor:
    if config.mean is None:
        return clips
    mean = tf.constant(config.mean, tf.float32)
    std = tf.constant(config.std if config.std is not None else (1.0, 1.0, 1.0), tf.float32)
    return (clips - mean) / std


def _centre_crop_frames(frames: tf.Tensor, crop_size: int) -> tf.Tensor:
    """uint8 `[T, H, W, 3]` -> float32 `[T, S, S, 3]` in [0, 1], short side resized to S."""
    shape = tf.shape(frames)
    height, width = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    scale = crop_size / tf.minimum(height, width)
    new_h = tf.maximum(crop_size, tf.cast(tf.round(height * scale), tf.int32))
    new_w = tf.maximum(crop_size, tf.cast(tf.round(width * scale), tf.int32))
    resized = tf.image.resize(tf.image.convert_image_dtype(frames, tf.float32), [new_h, new_w], antialias=True)
    top = (new_h - crop_size) // 2
    left = (new_w - crop_size) // 2
    return resized[:, top : top + crop_size, left : left + crop_size, :]


def export_classifier(model: keras.Model, export_dir: str, config: ExportConfig) -> str:
    """Write `model` (clip `[B, T, S, S, 3]` -> logits `[B, C]`) as a SavedModel at `export_dir`.

    The SavedModel is written beside `export_dir` and renamed into place, so a kill never leaves a
    half-written export where a server would load it. Returns `export_dir`.
    """
    if config.mean is None and config.std is not None:
        raise ValueError("ExportConfig.std is set but mean is not: give both or neither")
    probe = tf.zeros([1, config.clip_length, config.crop_size, config.crop_size, 3])
    num_classes = int(model(probe, training=False).shape[-1])  # works for subclassed models too
    if config.class_names and len(config.class_names) != num_classes:
        raise ValueError(
            f"ExportConfig.class_names has {len(config.class_names)} names but the model outputs "
            f"{num_classes} classes"
        )

    def predict(clips: tf.Tensor) -> dict[str, tf.Tensor]:
        logits = tf.cast(model(_normalize(clips, config), training=False), tf.float32)
        return {
            "probabilities": tf.nn.softmax(logits, axis=-1),
            "logits": logits,
            "classes": tf.argmax(logits, axis=-1),
        }

    def predict_jpeg(frames: tf.Tensor) -> dict[str, tf.Tensor]:
        def decode_video(jpegs: tf.Tensor) -> tf.Tensor:
            decoded = tf.map_fn(
                lambda j: tf.io.decode_jpeg(j, channels=3),
                jpegs,
                fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8),
            )
            return _centre_crop_frames(decoded, config.crop_size)

        clips = tf.map_fn(
            decode_video,
            frames,
            fn_output_signature=tf.TensorSpec([None, config.crop_size, config.crop_size, 3], tf.float32),
        )
        return predict(clips)

    archive = keras.export.ExportArchive()
    archive.track(model)
    size = config.crop_size
    archive.add_endpoint(
        name="serving_default",
        fn=predict,
        input_signature=[tf.TensorSpec([None, None, size, size, 3], tf.float32, name="clips")],
    )
    archive.add_endpoint(
        name="serve_jpeg",
        fn=predict_jpeg,
        input_signature=[tf.TensorSpec([None, None], tf.string, name="frames")],
    )

    tmp_dir = f"{export_dir.rstrip('/')}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        archive.write_out(tmp_dir, verbose=False)
        assets = os.path.join(tmp_dir, "assets")
        os.makedirs(assets, exist_ok=True)
        names = config.class_names or tuple(str(i) for i in range(num_classes))
        with open(os.path.join(assets, "labels.txt"), "w") as f:
            f.write("\n".join(names) + "\n")
        with open(os.path.join(assets, "export_config.json"), "w") as f:
            json.dump({**dataclasses.asdict(config), "class_names": list(names)}, f, indent=2)
        if os.path.exists(export_dir):
            shutil.rmtree(export_dir)
        os.rename(tmp_dir, export_dir)
    finally:
        if os.path.exists(tmp_dir):
            shutil.rmtree(tmp_dir)
    return export_dir


def load_class_names(export_dir: str) -> Sequence[str]:
    """The class names written by `export_classifier`, in label-index order."""
    path = os.path.join(export_dir, "assets", "labels.txt")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{export_dir} has no assets/labels.txt: not a tbkeras export")
    with open(path) as f:
        return [line.rstrip("\n") for line in f if line.strip()]
