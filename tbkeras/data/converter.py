"""Videos -> sharded TFRecords of JPEG frames, resumable, with a manifest (the library behind
`tfrecords_tools/build_tfrecords.py`).

How the work is split: the videos are first put in a seeded pseudo-random order (`shuffle_order`:
sorted by a SHA-256 of the seed and the video id, so the order depends on nothing but the seed and
the ids, not on the Python or NumPy version), then video i of that order goes to shard
i % num_shards (round-robin). Split lists are sorted by class; without the shuffle every shard
would hold its videos in class order and a reader would see the classes one after the other.
Shards hold equal counts (within 1) of a random mix of classes, in random order; the seed is
recorded in the manifest ("shuffle_seed"). `workers` spawned processes decode + resize +
JPEG-encode whole videos (`video_io.read_video_jpeg_or_reason`; those processes never import
TensorFlow); the parent receives the JPEG bytes in order, builds the SequenceExample and writes
the shards one after the other, each to a temporary name renamed on completion.

Resume: after a shard is renamed into place, a sidecar `{shard}.state.json` records a fingerprint
of what the shard holds (the conversion settings and the exact ordered list of its input videos),
its byte size, its record count, and its failures and warnings. A shard is *complete and valid*
iff its sidecar exists and has the current fingerprint, and the shard file exists with exactly
that byte size and exactly that number of well-framed TFRecord records. A rerun skips valid
shards without touching them, rewrites the others, deletes stale temporaries of the split, then
writes the manifest from all sidecars. Since the fingerprint holds the shard's videos in order, a
rerun with another `shuffle_seed` (or another video list) redoes every shard whose videos change:
a completed run never leaves shards of two orders. A run that rewrites shards first deletes the
split's manifest, which no longer describes them (it is written again at the end). Two
conversions of the same split into the same directory at once are not supported.

Bad videos (missing, empty, unreadable, zero-frame, truncated) are recorded with their reason in
the shard's sidecar and the manifest, counted, and skipped; they never stop the run.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import os
import struct
import time
from typing import Any, Iterator, Mapping, Sequence

import tensorflow as tf
import tqdm

import tbkeras
from tbkeras.data import manifest as manifest_lib
from tbkeras.data import tfrecord, video_io
from tbkeras.data.splits import VideoEntry
from tbkeras.files import atomic_path, atomic_write_json, read_json

# Bump when the bytes written for the same inputs and settings change, so old shards are redone.
SHARD_FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class ConversionConfig:
    """Where and how to convert one split.

    Attributes:
      output_dir: directory of the shards, their sidecars and the manifest.
      split: split name used in file names ("train", "test", ...).
      num_shards: number of shards (1 <= num_shards <= number of videos).
      workers: decoding processes; 1 decodes in this process (no pool).
      short_side: resize so the short side is this many pixels; 0 keeps the size.
      fps: resample to this frame rate; 0 keeps the source rate.
      jpeg_quality: 1..100.
      max_frames: keep at most this many frames per video; 0 keeps all.
      min_decoded_fraction: see `video_io.DecodeOptions`.
      shuffle_seed: seed of the order of the videos before they are dealt to the shards
        (`shuffle_order`); recorded in the manifest. A rerun must use the same seed to keep the
        shards already written.
      show_progress: draw a tqdm bar (videos/s).
    """

    output_dir: str
    split: str = "train"
    num_shards: int = 1
    workers: int = 1
    short_side: int = 128
    fps: float = 0.0
    jpeg_quality: int = 90
    max_frames: int = 0
    min_decoded_fraction: float = 0.5
    shuffle_seed: int = 0
    show_progress: bool = True

    def decode_options(self) -> video_io.DecodeOptions:
        return video_io.DecodeOptions(
            short_side=self.short_side, fps=self.fps, max_frames=self.max_frames,
            min_decoded_fraction=self.min_decoded_fraction,
        )

    def content_settings(self) -> dict[str, Any]:
        """The settings that change the bytes of a shard (part of its fingerprint)."""
        return {
            "short_side": self.short_side, "fps": self.fps, "jpeg_quality": self.jpeg_quality,
            "max_frames": self.max_frames, "min_decoded_fraction": self.min_decoded_fraction,
        }


@dataclasses.dataclass(frozen=True)
class ConversionSummary:
    """Counts over the whole split (`num_*`) and over this run (`*_this_run`)."""

    num_videos: int
    num_written: int
    num_failed: int
    num_warnings: int
    shards_written: int
    shards_skipped: int
    videos_this_run: int
    frames_this_run: int
    seconds: float
    manifest_path: str

    @property
    def videos_per_second(self) -> float:
        return self.videos_this_run / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        return (
            f"{self.num_written}/{self.num_videos} videos written, {self.num_failed} failed, "
            f"{self.num_warnings} kept with warnings; shards: {self.shards_written} written, "
            f"{self.shards_skipped} already complete; this run: {self.videos_this_run} videos, "
            f"{self.frames_this_run} frames in {self.seconds:.1f}s ({self.videos_per_second:.1f} videos/s); "
            f"manifest: {self.manifest_path}"
        )


def state_path(shard_path: str) -> str:
    """The sidecar recording a finished shard: `{shard}.state.json`."""
    return shard_path + ".state.json"


def count_records(path: str) -> int | None:
    """Number of TFRecord records in `path` by walking the length framing (no CRC check), or
    None if the file ends inside a record. Much cheaper than parsing: reads 12 bytes per record."""
    size = tf.io.gfile.stat(path).length
    count = offset = 0
    with tf.io.gfile.GFile(path, "rb") as f:
        while offset < size:
            header = f.read(12)
            if len(header) < 12:
                return None
            (length,) = struct.unpack("<Q", header[:8])
            offset += 12 + length + 4
            if offset > size:
                return None
            f.seek(offset)
            count += 1
    return count


def shard_is_complete(shard_path: str, fingerprint: str) -> bool:
    """True iff the shard is complete and valid for `fingerprint` (definition in the module doc)."""
    sidecar = state_path(shard_path)
    if not (tf.io.gfile.exists(sidecar) and tf.io.gfile.exists(shard_path)):
        return False
    try:
        state = read_json(sidecar, what="shard state")
    except ValueError:
        return False
    if state.get("fingerprint") != fingerprint:
        return False
    if tf.io.gfile.stat(shard_path).length != state.get("bytes"):
        return False
    return count_records(shard_path) == state.get("num_videos")


def shuffle_order(entries: Sequence[VideoEntry], seed: int) -> list[VideoEntry]:
    """`entries` sorted by SHA-256 of "{seed}/{video_id}": a pseudo-random order that depends only
    on the seed and the (unique) ids, so a resumed conversion finds the same order."""
    def key(entry: VideoEntry) -> bytes:
        return hashlib.sha256(f"{seed}/{entry.video_id}".encode("utf-8")).digest()

    return sorted(entries, key=key)


def assign_shards(entries: Sequence[VideoEntry], num_shards: int, seed: int) -> list[list[VideoEntry]]:
    """Round-robin over `shuffle_order(entries, seed)`: shard s holds videos s, s + num_shards, ...
    of that order (sizes differ by at most 1)."""
    order = shuffle_order(entries, seed)
    return [order[s::num_shards] for s in range(num_shards)]


def _fingerprint(config: ConversionConfig, shard_index: int, entries: Sequence[VideoEntry]) -> str:
    payload = {
        "format": SHARD_FORMAT_VERSION, "split": config.split, "shard": shard_index,
        "num_shards": config.num_shards, "settings": config.content_settings(),
        "videos": [[e.path, e.video_id, e.label_index, e.label_text] for e in entries],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()


def _validate(entries: Sequence[VideoEntry], classes: Sequence[str], config: ConversionConfig) -> None:
    if not entries:
        raise ValueError(f"no videos to convert for split {config.split!r}")
    if not 1 <= config.num_shards <= len(entries):
        raise ValueError(f"num_shards must be in [1, {len(entries)}] (the number of videos), got {config.num_shards}")
    if not 1 <= config.jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be in [1, 100], got {config.jpeg_quality}")
    seen: set[str] = set()
    for entry in entries:
        if entry.video_id in seen:
            raise ValueError(f"video id {entry.video_id!r} appears twice ({entry.path})")
        seen.add(entry.video_id)
        if not tfrecord.UNLABELED <= entry.label_index < len(classes):
            raise ValueError(f"{entry.path}: label index {entry.label_index} outside [-1, {len(classes)})")


def _remove_stale_temporaries(config: ConversionConfig) -> None:
    for path in tf.io.gfile.glob(os.path.join(config.output_dir, f"{config.split}-*.tmp-*")):
        tf.io.gfile.remove(path)


def _decoded(tasks: list[tuple[str, video_io.DecodeOptions, int]], workers: int) -> Iterator[video_io.JpegVideo | str]:
    """Results of `read_video_jpeg_or_reason` over `tasks`, in order, from `workers` processes."""
    if workers <= 1:
        yield from map(video_io.read_video_jpeg_or_reason, tasks)
        return
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=video_io.init_worker) as pool:
        yield from pool.imap(video_io.read_video_jpeg_or_reason, tasks, chunksize=1)


def _write_shard(
    path: str,
    entries: Sequence[VideoEntry],
    results: Iterator[video_io.JpegVideo | str],
    progress: tqdm.tqdm,
    failed_before: int,
) -> dict[str, Any]:
    """Consume one result per entry, write the shard atomically; return its state (sans fingerprint)."""
    video_ids: list[str] = []
    failures: list[dict[str, str]] = []
    warnings: list[dict[str, str]] = []
    frames = 0
    with atomic_path(path) as tmp:
        with tf.io.TFRecordWriter(tmp) as writer:
            for entry in entries:
                result = next(results)
                progress.update(1)
                if isinstance(result, str):
                    failures.append({"path": entry.path, "video_id": entry.video_id, "reason": result})
                    progress.set_postfix(failed=failed_before + len(failures))
                    continue
                stats = result.stats
                writer.write(
                    tfrecord.encode_video(
                        tfrecord.VideoRecord(
                            video_id=entry.video_id, frames_jpeg=result.frames_jpeg, height=stats.height,
                            width=stats.width, fps=stats.fps, label_index=entry.label_index,
                            label_text=entry.label_text, filename=entry.path,
                        )
                    )
                )
                video_ids.append(entry.video_id)
                frames += len(result.frames_jpeg)
                if stats.warning:
                    warnings.append({"path": entry.path, "video_id": entry.video_id, "reason": stats.warning})
    return {
        "bytes": tf.io.gfile.stat(path).length, "num_videos": len(video_ids), "video_ids": video_ids,
        "num_frames": frames, "failures": failures, "warnings": warnings,
    }


def convert(
    entries: Sequence[VideoEntry],
    classes: Sequence[str],
    config: ConversionConfig,
    flags: Mapping[str, Any] | None = None,
) -> ConversionSummary:
    """Convert `entries` into `config.num_shards` shards plus `{split}-manifest.json`.

    Args:
      entries: the split's videos (`splits.parse_layout`); labels index into `classes`.
      classes: class names in label-index order (stored in the manifest).
      config: the conversion settings.
      flags: recorded in the manifest's "flags" (default: the config's fields).
    Returns:
      counts over the split and this run; failures are in the manifest.
    """
    _validate(entries, classes, config)
    start = time.perf_counter()
    tf.io.gfile.makedirs(config.output_dir)
    _remove_stale_temporaries(config)
    shards = assign_shards(entries, config.num_shards, config.shuffle_seed)
    paths = [os.path.join(config.output_dir, tfrecord.shard_filename(config.split, s, config.num_shards)) for s in range(config.num_shards)]
    fingerprints = [_fingerprint(config, s, shard) for s, shard in enumerate(shards)]
    pending = [s for s in range(config.num_shards) if not shard_is_complete(paths[s], fingerprints[s])]

    options = config.decode_options()
    tasks = [(entry.path, options, config.jpeg_quality) for s in pending for entry in shards[s]]
    manifest_file = manifest_lib.manifest_path(config.output_dir, config.split)
    if pending and tf.io.gfile.exists(manifest_file):
        tf.io.gfile.remove(manifest_file)  # it describes the shards about to be replaced
    frames = failed = 0
    progress = tqdm.tqdm(total=len(tasks), unit="video", desc=f"{config.split} shards", disable=not config.show_progress)
    with progress:
        results = _decoded(tasks, config.workers)
        try:
            for s in pending:
                if tf.io.gfile.exists(state_path(paths[s])):
                    tf.io.gfile.remove(state_path(paths[s]))
                state = _write_shard(paths[s], shards[s], results, progress, failed)
                atomic_write_json(state_path(paths[s]), {"fingerprint": fingerprints[s], **state})
                frames += state["num_frames"]
                failed += len(state["failures"])
        finally:
            results.close()  # terminates the worker pool if a write failed

    states = [read_json(state_path(p), what="shard state") for p in paths]
    failures = [f for state in states for f in state["failures"]]
    warnings = [w for state in states for w in state["warnings"]]
    written = sum(state["num_videos"] for state in states)
    manifest = {
        "split": config.split,
        "tool_version": tbkeras.__version__,
        "num_videos": written,
        "num_failed": len(failures),
        "classes": list(classes),
        "shuffle_seed": config.shuffle_seed,
        "shards": [
            {"file": os.path.basename(p), "num_videos": state["num_videos"], "video_ids": state["video_ids"]}
            for p, state in zip(paths, states)
        ],
        "failures": failures,
        "warnings": warnings,
        "flags": dict(flags) if flags is not None else dataclasses.asdict(config),
    }
    path = manifest_lib.write_manifest(config.output_dir, config.split, manifest)
    return ConversionSummary(
        num_videos=len(entries), num_written=written, num_failed=len(failures), num_warnings=len(warnings),
        shards_written=len(pending), shards_skipped=config.num_shards - len(pending), videos_this_run=len(tasks),
        frames_this_run=frames, seconds=time.perf_counter() - start, manifest_path=path,
    )
