"""Tiny TFRecord shards with identifiable frames, for any test that reads videos through tbkeras.

Every frame says which frame it is and where each pixel came from, so a test can check what a
pipeline sampled and cropped after JPEG decoding and resizing:
- red = 4 * (index % 64) and green = 64 * (index // 64): the frame index (flat over the frame);
- blue = the pixel's column, `round(x * 255 / (width - 1))`: where a crop came from.

`write_split` writes `{split}-XXXXX-of-XXXXX.tfrecord` shards plus `{split}-manifest.json` (through
`tbkeras.data.manifest`), so tests need neither video files nor the converter.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import numpy as np
import tensorflow as tf

from tbkeras.data import manifest, tfrecord
from tbkeras.files import atomic_write_json, atomic_write_text


@dataclasses.dataclass(frozen=True)
class FakeVideo:
    video_id: str
    num_frames: int
    label_index: int = tfrecord.UNLABELED
    height: int = 32
    width: int = 40


def frame_pixels(index: int, height: int, width: int) -> np.ndarray:
    """uint8 `[H, W, 3]` frame that encodes its index (red, green) and each column's x (blue)."""
    if not 0 <= index < 256:
        raise ValueError(f"frame index {index} outside the encodable range [0, 256)")
    frame = np.empty((height, width, 3), np.uint8)
    frame[..., 0] = 4 * (index % 64)
    frame[..., 1] = 64 * (index // 64)
    frame[..., 2] = np.round(np.arange(width) * 255.0 / max(width - 1, 1)).astype(np.uint8)[None, :]
    return frame


def encode_jpeg(frame: np.ndarray) -> bytes:
    # Full-resolution chroma and top quality keep the encoded index and ramp within ~2 levels.
    return tf.io.encode_jpeg(frame, quality=100, chroma_downsampling=False).numpy()


def frame_indices(frames: np.ndarray) -> np.ndarray:
    """Recover the frame index of each frame in `[..., H, W, 3]` (uint8 or float in [0, 1]).

    Only valid for frames without colour augmentation (crops and flips keep it).
    """
    x = np.asarray(frames, np.float64)
    if x.max() <= 1.0 + 1e-6:
        x = x * 255.0
    red = x[..., 0].mean(axis=(-2, -1))
    green = x[..., 1].mean(axis=(-2, -1))
    return (np.round(red / 4.0) + 64 * np.round(green / 64.0)).astype(np.int64)


def column_x(frames: np.ndarray, width: int) -> np.ndarray:
    """Source x coordinate of each output column, `[..., W_out]`, from the blue ramp."""
    x = np.asarray(frames, np.float64)
    if x.max() <= 1.0 + 1e-6:
        x = x * 255.0
    return x[..., 2].mean(axis=-2) * (width - 1) / 255.0


def video_record(video: FakeVideo) -> bytes:
    frames = [encode_jpeg(frame_pixels(i, video.height, video.width)) for i in range(video.num_frames)]
    return tfrecord.encode_video(tfrecord.VideoRecord(
        video_id=video.video_id, frames_jpeg=frames, height=video.height, width=video.width,
        fps=25.0, label_index=video.label_index,
        label_text="" if video.label_index < 0 else f"class{video.label_index}",
        filename=f"{video.video_id}.avi"))


def write_split(tfrecord_dir: str, split: str, videos: Sequence[FakeVideo], num_shards: int = 2,
                classes: Sequence[str] = ("class0", "class1", "class2")) -> list[str]:
    """Write `videos` round-robin into `num_shards` shards plus the split's manifest.

    Returns the shard paths.
    """
    os.makedirs(tfrecord_dir, exist_ok=True)
    shards = []
    for i in range(num_shards):
        name = tfrecord.shard_filename(split, i, num_shards)
        members = list(videos[i::num_shards])
        with tf.io.TFRecordWriter(os.path.join(tfrecord_dir, name)) as writer:
            for video in members:
                writer.write(video_record(video))
        shards.append({"file": name, "num_videos": len(members),
                       "video_ids": [v.video_id for v in members]})
    manifest.write_manifest(tfrecord_dir, split, {
        "split": split, "tool_version": "test", "num_videos": len(videos), "num_failed": 0,
        "classes": list(classes), "shards": shards, "failures": [], "flags": {},
    })
    return [os.path.join(tfrecord_dir, s["file"]) for s in shards]


def write_ids_file(path: str, video_ids: Sequence[str]) -> str:
    """A list file in the UCF101 train-list style (`Class/id.avi label`), one video per line."""
    atomic_write_text(path, "".join(f"Class/{v}.avi 1\n" for v in video_ids))
    return path


def write_scores(path: str, scores: dict[str, float]) -> str:
    """A TSTR scores file as the TSTR stage writes it."""
    atomic_write_json(path, {"scores": scores, "summary": {"count": len(scores)}})
    return path
