"""Classify video files with an exported classifier, exactly as `evaluate` scores a shard's video.

A file is decoded by the converter's own decoder (`video_io.read_video_jpeg`, with the conversion
settings the export recorded: short side, frame rate, JPEG quality), so its frames are the bytes
the training shards hold; they then go through the export's `serve_video` signature, whose K x C
views and softmax averaging are the evaluation's (`pipelines.video_views`,
`evaluate.view_averaged_probabilities`).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Iterable, Sequence

import numpy as np
import tensorflow as tf

from tbkeras import export
from tbkeras.data import video_io
from tbkeras.data.splits import VIDEO_EXTENSIONS

VIDEO_SIGNATURE = "serve_video"


@dataclasses.dataclass(frozen=True)
class VideoPrediction:
    """One file's answer: view-averaged `probabilities` float32 `[C]` over `num_frames` frames."""

    path: str
    probabilities: np.ndarray
    num_frames: int

    def top_k(self, class_names: Sequence[str], k: int) -> list[tuple[str, float]]:
        """The k most probable (class name, probability), most probable first (ties: lower index)."""
        order = np.argsort(-self.probabilities, kind="stable")[: max(1, k)]
        return [(class_names[i], float(self.probabilities[i])) for i in order]


def expand_video_paths(paths: Iterable[str]) -> list[str]:
    """Files as given, folders replaced by the video files under them (sorted, by extension:
    `splits.VIDEO_EXTENSIONS`). A given file is kept whatever its name: the decoder judges it.
    A folder holding no video raises FileNotFoundError naming it."""
    out: list[str] = []
    for path in paths:
        if not os.path.isdir(path):
            out.append(path)
            continue
        found = sorted(
            os.path.join(root, name)
            for root, _, names in os.walk(path)
            for name in names
            if name.lower().endswith(VIDEO_EXTENSIONS) and not name.startswith(".")
        )
        if not found:
            raise FileNotFoundError(f"{path}: a folder with no video file (extensions {', '.join(VIDEO_EXTENSIONS)})")
        out.extend(found)
    return out


class VideoPredictor:
    """A loaded export that classifies video files (`predict`) or already-decoded JPEG frames."""

    def __init__(self, export_dir: str):
        self.config = export.load_export_config(export_dir)  # names export_dir if it is not an export
        self.class_names = list(export.load_class_names(export_dir))
        saved_model = tf.saved_model.load(export_dir)
        if VIDEO_SIGNATURE not in saved_model.signatures:
            raise ValueError(f"{export_dir}: no {VIDEO_SIGNATURE!r} signature (exported before it existed): re-export it")
        self._saved_model = saved_model  # keeps the signature's variables alive
        self._signature = saved_model.signatures[VIDEO_SIGNATURE]
        self.export_dir = export_dir

    @property
    def decode_options(self) -> video_io.DecodeOptions:
        return video_io.DecodeOptions(short_side=self.config.short_side, fps=self.config.fps)

    def frames(self, path: str) -> list[bytes]:
        """The JPEG frames the converter would store for `path`; `video_io.VideoDecodeError` naming
        the path if it is missing, empty, unreadable, truncated or has no frame."""
        return video_io.read_video_jpeg(path, self.decode_options, self.config.jpeg_quality).frames_jpeg

    def predict_frames(self, frames_jpeg: Sequence[bytes]) -> np.ndarray:
        """View-averaged probabilities float32 `[C]` of one video given as JPEG frames."""
        if not frames_jpeg:
            raise ValueError("a video needs at least one frame")
        out = self._signature(frames=tf.constant([list(frames_jpeg)], tf.string))
        return out["probabilities"].numpy()[0]

    def predict(self, path: str) -> VideoPrediction:
        """Decode `path` and classify it. Decoding errors raise `video_io.VideoDecodeError`; frames
        that the graph cannot decode raise ValueError naming the path."""
        frames = self.frames(path)
        try:
            probabilities = self.predict_frames(frames)
        except tf.errors.InvalidArgumentError as e:
            raise ValueError(f"{path}: the model rejected its frames: {e.message}") from None
        return VideoPrediction(path=path, probabilities=probabilities, num_frames=len(frames))
