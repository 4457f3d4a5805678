"""Read a split's shards back and check them against their manifest.

What to run after building shards and before spending accelerator hours on them: every record is
parsed, its video id, label and frame count are checked against the manifest and its own context,
and (optionally) its first and last frames are JPEG-decoded at the size the context states. Every
problem names the shard, the record index and the video id, so a broken file can be rebuilt alone.
"""
from __future__ import annotations

import collections
import dataclasses
import os
import statistics
from typing import Any

import numpy as np
import tensorflow as tf

from tbkeras.data import manifest, tfrecord


@dataclasses.dataclass
class SplitReport:
    """What one split's shards hold, and what is wrong with them (`problems`, empty when sound)."""

    tfrecord_dir: str
    split: str
    num_shards: int
    num_videos: int
    classes: list[str]
    videos_per_class: dict[str, int]  # class name (or "unlabeled") -> videos
    frames_per_video: tuple[int, float, int]  # min, mean, max
    frame_sizes: dict[str, int]  # "HxW" -> videos
    mean_jpeg_bytes: float
    total_bytes: int
    recorded_failures: int  # videos the converter could not convert (listed in the manifest)
    problems: list[str]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def inspect_split(tfrecord_dir: str, split: str, decode: bool = True) -> SplitReport:
    """Read every record of `split` under `tfrecord_dir` and check it.

    decode: also JPEG-decode each video's first and last frame (catches corrupt frames and a
      height/width that disagrees with the context, at ~2 decodes per video).
    Raises FileNotFoundError / ValueError (naming the path) only if the manifest is missing or
    unreadable; everything found in the shards is reported in `problems`.
    """
    m = manifest.load_manifest(tfrecord_dir, split)
    classes = list(m["classes"])
    problems: list[str] = []
    per_class: collections.Counter[str] = collections.Counter()
    sizes: collections.Counter[str] = collections.Counter()
    frame_counts: list[int] = []
    jpeg_bytes = total_bytes = 0
    seen: dict[str, str] = {}
    for shard in m["shards"]:
        path = os.path.join(tfrecord_dir, shard["file"])
        if not tf.io.gfile.exists(path):
            problems.append(f"{path}: missing (the manifest lists {shard['num_videos']} videos in it)")
            continue
        total_bytes += tf.io.gfile.stat(path).length
        ids = []
        for index, video in _records(path, problems):
            where = f"{path} record {index} (video {video['id']!r})"
            ids.append(video["id"])
            if video["id"] in seen:
                problems.append(f"{where}: video id also in {seen[video['id']]}")
            seen[video["id"]] = path
            label = video["label"]
            if label == tfrecord.UNLABELED:
                per_class["unlabeled"] += 1
            elif 0 <= label < len(classes):
                per_class[classes[label]] += 1
            else:
                problems.append(f"{where}: label index {label} outside the manifest's {len(classes)} classes")
            frames = video["frames"]
            if video["num_frames"] != len(frames):
                problems.append(f"{where}: context says {video['num_frames']} frames, the record holds {len(frames)}")
            if not frames:
                problems.append(f"{where}: no frames")
                continue
            frame_counts.append(len(frames))
            jpeg_bytes += sum(len(f) for f in frames)
            sizes[f"{video['height']}x{video['width']}"] += 1
            if decode:
                problems.extend(_check_frames(where, frames, video["height"], video["width"]))
        if ids != list(shard["video_ids"]):
            problems.append(f"{path}: holds {len(ids)} videos, the manifest lists {len(shard['video_ids'])}"
                            + ("" if len(ids) != len(shard["video_ids"]) else " (different ids or order)"))
    if len(seen) != m["num_videos"]:
        problems.append(f"{manifest.manifest_path(tfrecord_dir, split)}: says {m['num_videos']} videos, "
                        f"the shards hold {len(seen)}")
    frames_summary = ((min(frame_counts), round(statistics.fmean(frame_counts), 1), max(frame_counts))
                      if frame_counts else (0, 0.0, 0))
    return SplitReport(
        tfrecord_dir=tfrecord_dir, split=split, num_shards=len(m["shards"]), num_videos=len(seen),
        classes=classes, videos_per_class=dict(sorted(per_class.items())), frames_per_video=frames_summary,
        frame_sizes=dict(sizes.most_common()), mean_jpeg_bytes=round(jpeg_bytes / max(sum(frame_counts), 1), 1),
        total_bytes=total_bytes, recorded_failures=int(m["num_failed"]), problems=problems)


def _records(path: str, problems: list[str]):
    """(index, parsed video as Python values) per record; a record that does not parse or a
    corrupt stretch of the file is a problem naming both, and ends the shard."""
    iterator = iter(tf.data.TFRecordDataset(path))
    index = 0
    while True:
        try:
            serialized = next(iterator)
        except StopIteration:
            return
        except tf.errors.OpError as e:
            problems.append(f"{path} record {index}: unreadable ({e.message.splitlines()[0]}); rest of the shard skipped")
            return
        try:
            video = tfrecord.parse_video(serialized)
        except (tf.errors.OpError, ValueError) as e:
            problems.append(f"{path} record {index}: not a video SequenceExample "
                            f"({getattr(e, 'message', str(e)).splitlines()[0]}); rest of the shard skipped")
            return
        yield index, {
            "id": video[tfrecord.VIDEO_ID_KEY].numpy().decode("utf-8", "replace"),
            "label": int(video[tfrecord.LABEL_INDEX_KEY]),
            "num_frames": int(video[tfrecord.NUM_FRAMES_KEY]),
            "height": int(video[tfrecord.HEIGHT_KEY]),
            "width": int(video[tfrecord.WIDTH_KEY]),
            "frames": list(video[tfrecord.IMAGE_KEY].numpy()),
        }
        index += 1


def _check_frames(where: str, frames: list[bytes], height: int, width: int) -> list[str]:
    problems = []
    for i in sorted({0, len(frames) - 1}):
        try:
            shape = tuple(tf.io.decode_jpeg(frames[i], channels=3).shape)
        except tf.errors.OpError as e:
            problems.append(f"{where}: frame {i} is not a decodable JPEG ({e.message.splitlines()[0]})")
            continue
        if shape[:2] != (height, width):
            problems.append(f"{where}: frame {i} decodes to {shape[0]}x{shape[1]}, the context says {height}x{width}")
    return problems


def contact_sheet(frames_jpeg: list[bytes], count: int = 8) -> np.ndarray:
    """`count` evenly spaced frames of a video side by side: uint8 `[H, count * W, 3]`, to eyeball
    what a shard holds (e.g. that the frames are RGB, upright and move)."""
    if not frames_jpeg:
        raise ValueError("a contact sheet needs at least one frame")
    picks = np.linspace(0, len(frames_jpeg) - 1, num=min(count, len(frames_jpeg))).round().astype(int)
    return np.concatenate([tf.io.decode_jpeg(frames_jpeg[i], channels=3).numpy() for i in picks], axis=1)
