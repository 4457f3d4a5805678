"""Export a trained classifier (the student) as a SavedModel that TF Serving can serve.

Three serving signatures, so clients need not re-implement our preprocessing. All three cut,
resize and normalise frames with the evaluation's own function (`pipelines.clip_views`), so a
served answer is the evaluated one:
- `serving_default`: `clips` float32 `[B, T, S, S, 3]`, RGB in [0, 1] (the pipelines' pixels before
  normalisation); returns `probabilities` `[B, C]`, `logits` `[B, C]`, `classes` int64 `[B]`.
- `serve_jpeg`: `frames` string `[B, T]`, each row one clip, one JPEG per frame, any frame size;
  one view per clip: the centre square of the short side, resized to S x S. Same outputs.
- `serve_video`: `frames` string `[B, N]`, each row one whole video (N >= 1 frames, any size);
  the evaluation's K x C views (`pipelines.video_views`) with their softmax averaged
  (`evaluate.view_averaged_probabilities`): `probabilities` `[B, C]`, `classes` int64 `[B]`.
  Videos of one request need the same frame count N (send one video per request otherwise).
Class names go to `assets/labels.txt` and the export settings to `assets/export_config.json`
(read back by `load_export_config`).

The graph has no XLA-compiled function: TF Serving runs XLA:CPU only with
`--xla_cpu_compilation_enabled`, so the preprocessing is built with `jit_compile=False`.
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

from tbkeras.data import augment, pipelines
from tbkeras.evaluate import view_averaged_probabilities

CONFIG_ASSET = "export_config.json"
LABELS_ASSET = "labels.txt"


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """What a served model needs to know about its inputs.

    clip_length, crop_size, mean, std: the classifier's clips (T, S, normalisation; both or
      neither of mean/std).
    num_clips, num_crops, stride: the evaluation's views (`pipelines.EvalConfig`), used by
      `serve_video`: K clips of T frames at `stride`, C crops (1 or 3).
    short_side, fps, jpeg_quality: how the training videos were converted
      (`converter.ConversionConfig`), so `experiments/predict.py` decodes a video file into the
      frames the evaluation would have read from its shard (0 = keep the size / frame rate).
    """

    clip_length: int = 8
    crop_size: int = 112
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    class_names: tuple[str, ...] = ()
    num_clips: int = 10
    num_crops: int = 3
    stride: int = 2
    short_side: int = 0
    fps: float = 0.0
    jpeg_quality: int = 90

    def __post_init__(self):
        if self.mean is None and self.std is not None:
            raise ValueError("ExportConfig.std is set but mean is not: give both or neither")
        if self.mean is not None and self.std is None:
            raise ValueError("ExportConfig.mean is set but std is not: give both or neither")
        for name in ("clip_length", "crop_size", "num_clips", "stride"):
            if getattr(self, name) < 1:
                raise ValueError(f"ExportConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_crops not in (1, 3):
            raise ValueError(f"ExportConfig.num_crops must be 1 or 3, got {self.num_crops}")
        if self.short_side < 0 or self.fps < 0:
            raise ValueError(f"ExportConfig.short_side and fps must be >= 0, got {self.short_side}, {self.fps}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"ExportConfig.jpeg_quality must be in [1, 100], got {self.jpeg_quality}")

    @property
    def pixels(self) -> augment.PixelFormat:
        """The classifier's input pixels (float32: the served graph computes in float32)."""
        return augment.PixelFormat(crop_size=self.crop_size, mean=self.mean, std=self.std, dtype="float32")


def export_classifier(model: keras.Model, export_dir: str, config: ExportConfig) -> str:
    """Write `model` (clip `[B, T, S, S, 3]` -> logits `[B, C]`) as a SavedModel at `export_dir`.

    The SavedModel is written beside `export_dir` and renamed into place, so a kill never leaves a
    half-written export where a server would load it. Returns `export_dir`.
    """
    pixels = config.pixels
    size, length = config.crop_size, config.clip_length
    probe = tf.zeros([1, length, size, size, 3])
    num_classes = int(model(probe, training=False).shape[-1])  # works for subclassed models too
    if config.class_names and len(config.class_names) != num_classes:
        raise ValueError(
            f"ExportConfig.class_names has {len(config.class_names)} names but the model outputs "
            f"{num_classes} classes"
        )

    def classify(normalised: tf.Tensor) -> dict[str, tf.Tensor]:
        logits = tf.cast(model(normalised, training=False), tf.float32)
        return {
            "probabilities": tf.nn.softmax(logits, axis=-1),
            "logits": logits,
            "classes": tf.argmax(logits, axis=-1),
        }

    def predict(clips: tf.Tensor) -> dict[str, tf.Tensor]:
        if pixels.mean is not None:
            clips = augment.normalize(clips, pixels.mean, pixels.std)
        return classify(clips)

    def predict_jpeg(frames: tf.Tensor) -> dict[str, tf.Tensor]:
        def one_clip(jpegs: tf.Tensor) -> tf.Tensor:  # string [T] -> [T, S, S, 3]
            indices = tf.range(tf.size(jpegs), dtype=tf.int32)[None]
            return pipelines.clip_views(jpegs, indices, 1, pixels, jit_compile=False)[0]

        clips = tf.map_fn(one_clip, frames, fn_output_signature=tf.TensorSpec([None, size, size, 3], tf.float32))
        return classify(clips)

    num_views = config.num_clips * config.num_crops

    def predict_video(frames: tf.Tensor) -> dict[str, tf.Tensor]:
        def one_video(jpegs: tf.Tensor) -> tf.Tensor:  # string [N] -> [K*C, T, S, S, 3]
            return pipelines.video_views(jpegs, num_clips=config.num_clips, num_crops=config.num_crops,
                                         clip_length=length, stride=config.stride, pixels=pixels,
                                         jit_compile=False)

        views = tf.map_fn(one_video, frames,
                          fn_output_signature=tf.TensorSpec([num_views, length, size, size, 3], tf.float32))
        probabilities = view_averaged_probabilities(model, views)
        return {"probabilities": probabilities, "classes": tf.argmax(probabilities, axis=-1)}

    archive = keras.export.ExportArchive()
    archive.track(model)
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
    archive.add_endpoint(
        name="serve_video",
        fn=predict_video,
        input_signature=[tf.TensorSpec([None, None], tf.string, name="frames")],
    )

    tmp_dir = f"{export_dir.rstrip('/')}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        archive.write_out(tmp_dir, verbose=False)
        assets = os.path.join(tmp_dir, "assets")
        os.makedirs(assets, exist_ok=True)
        names = config.class_names or tuple(str(i) for i in range(num_classes))
        with open(os.path.join(assets, LABELS_ASSET), "w") as f:
            f.write("\n".join(names) + "\n")
        with open(os.path.join(assets, CONFIG_ASSET), "w") as f:
            json.dump({**dataclasses.asdict(config), "class_names": list(names)}, f, indent=2)
        if os.path.exists(export_dir):
            shutil.rmtree(export_dir)
        os.rename(tmp_dir, export_dir)
    finally:
        if os.path.exists(tmp_dir):
            shutil.rmtree(tmp_dir)
    return export_dir


def check_export_dir(export_dir: str) -> None:
    """Raise FileNotFoundError naming `export_dir` unless it holds a SavedModel written here."""
    if not os.path.isdir(export_dir):
        raise FileNotFoundError(f"{export_dir}: no such directory (want a SavedModel export)")
    if not tf.saved_model.contains_saved_model(export_dir):
        raise FileNotFoundError(f"{export_dir}: no saved_model.pb in it, not a SavedModel export")
    if not os.path.exists(os.path.join(export_dir, "assets", CONFIG_ASSET)):
        raise FileNotFoundError(f"{export_dir}: a SavedModel without assets/{CONFIG_ASSET}: not a tbkeras export")


def load_export_config(export_dir: str) -> ExportConfig:
    """The `ExportConfig` a tbkeras export was written with (`assets/export_config.json`)."""
    check_export_dir(export_dir)
    path = os.path.join(export_dir, "assets", CONFIG_ASSET)
    with open(path) as f:
        raw = json.load(f)
    known = {f.name for f in dataclasses.fields(ExportConfig)}
    values = {k: v for k, v in raw.items() if k in known}  # exports from before a field keep its default
    for key in ("mean", "std", "class_names"):
        if values.get(key) is not None:
            values[key] = tuple(values[key])
    try:
        return ExportConfig(**values)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from None


def load_class_names(export_dir: str) -> Sequence[str]:
    """The class names written by `export_classifier`, in label-index order."""
    path = os.path.join(export_dir, "assets", LABELS_ASSET)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{export_dir} has no assets/labels.txt: not a tbkeras export")
    with open(path) as f:
        return [line.rstrip("\n") for line in f if line.strip()]
