"""The JSON manifest beside a split's shards: what was converted, how, and what failed.

`{tfrecord_dir}/{split}-manifest.json`:
  {"split": "train", "tool_version": "0.1.0", "num_videos": N (written), "num_failed": F,
   "classes": [names in label-index order],
   "shuffle_seed": seed of the order the videos were dealt to the shards in (converter.py),
   "shards": [{"file": "train-00000-of-00004.tfrecord", "num_videos": n, "video_ids": [...]}],
   "failures": [{"path", "video_id", "reason"}],
   "warnings": [{"path", "video_id", "reason"}]   (kept videos, e.g. truncated by a few frames),
   "flags": {the conversion settings / CLI flags}}
Pipelines find their shards through `shard_paths`, never by globbing.
"""
from __future__ import annotations

import os
from typing import Any

import tensorflow as tf

from tbkeras.files import absolute_path, atomic_write_json, read_json

REQUIRED_KEYS = ("split", "tool_version", "num_videos", "num_failed", "classes", "shards", "failures", "flags")


def manifest_path(tfrecord_dir: str, split: str) -> str:
    """`{tfrecord_dir}/{split}-manifest.json`."""
    return os.path.join(tfrecord_dir, f"{split}-manifest.json")


def write_manifest(tfrecord_dir: str, split: str, manifest: dict[str, Any]) -> str:
    """Atomically write `manifest` (checked for the required keys); returns its path."""
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise ValueError(f"manifest for split {split!r} lacks {', '.join(missing)}")
    path = manifest_path(tfrecord_dir, split)
    atomic_write_json(path, manifest)
    return path


def load_manifest(tfrecord_dir: str, split: str) -> dict[str, Any]:
    """Read `{tfrecord_dir}/{split}-manifest.json`; FileNotFoundError naming the path if missing."""
    path = manifest_path(tfrecord_dir, split)
    manifest = read_json(path, what=f"TFRecord manifest of split {split!r}")
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise ValueError(f"{path} is not a tbkeras manifest: missing {', '.join(missing)}")
    return manifest


def shard_paths(tfrecord_dir: str, split: str) -> list[str]:
    """Absolute paths (or URLs, e.g. gs://) of the split's shards, in manifest order; error naming any
    missing shard."""
    manifest = load_manifest(tfrecord_dir, split)
    root = absolute_path(tfrecord_dir)
    paths = [os.path.join(root, shard["file"]) for shard in manifest["shards"]]
    missing = [p for p in paths if not tf.io.gfile.exists(p)]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} shard(s) listed in {manifest_path(tfrecord_dir, split)} are missing: {', '.join(missing)}"
        )
    return paths


def num_classes(manifest: dict[str, Any]) -> int:
    """Number of classes of the dataset the manifest describes."""
    return len(manifest["classes"])
