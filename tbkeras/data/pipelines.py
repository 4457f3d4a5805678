"""The `tf.data` input pipelines of every stage: shards in, batches of clips out.

Data flows one way (TF Model Garden style): shard files -> records (interleaved across shards,
each carrying its shard's path for error messages) -> parsed videos (frames still JPEG) -> the
videos of the chosen subset -> shuffled -> one element per video (sample frame indices, decode only
those frames, crop and augment) -> batches -> prefetch.

Reading order of the training pipelines: split lists are sorted by class, so any stage that keeps
a run of that order makes windows of the stream hold a few classes. Three stages break it up:
the converter deals the videos to the shards in a seeded random order (each shard a random mix
of classes, in random order); every epoch reshuffles the order of the shard files, and the
records are interleaved one at a time across all the shards read (`ReadOptions.cycle_length`);
the shuffle buffer holds all the selected videos unless they exceed a byte budget
(`ReadOptions.shuffle_buffer`, `shuffle_buffer_bytes`), and the stream repeats after the
shuffle, so each epoch is then a uniform random order of its videos, even on shards written in
class order (by older converters).

Element structures (images RGB in [0, 1] or mean/std normalised, float32 or bfloat16 as
`PixelFormat` says; S = crop size):
  ssl_dataset:        {"local": [B, V, n, L, S, S, 3], "global": [B, V, G, S, S, 3], "video_id": [B]}
  supervised_dataset: {"clip": [B, T, S, S, 3], "label": int32 [B], "video_id": [B]}
  student_dataset:    {"labeled": {"clip", "label", "video_id"[, "score"]},
                       "unlabeled": {"clip", "video_id"[, "score"]}}   ("score" float32 [B])
  tstr_dataset:       {"clips": [B, n, L, S, S, 3], "video_id": [B]}       finite, each video once
  eval_dataset:       {"views": [B, K*C, T, S, S, 3], "label": int32 [B], "video_id": [B]}  finite
Training pipelines (ssl, supervised, student) repeat forever and drop the last partial batch, so
shapes are static; tstr and eval pass over the data once, in shard order.

Distribution: every pipeline takes an optional `tf.distribute.InputContext`; `distribute(strategy,
pipeline, config)` builds one per input pipeline with the per-replica batch size and its share of
the shard files (or of the records, with a warning, when there are fewer shards than pipelines).

Bad input, found as early as possible, since errors from inside tf.data are hard to read:
- at build time: a missing manifest or shard; a shard whose first record does not parse (named);
  a subset that selects no video; a scores file lacking a selected video's id (named);
- while reading: a video with no frames, or an unlabeled video in a labeled pipeline, fails a
  `tf.debugging.Assert` whose message names the video id and its shard.
A record corrupted past a shard's first record fails with TensorFlow's own `DataLossError`.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import re
from typing import Any, Callable

import tensorflow as tf

from tbkeras.data import augment, manifest, sampling, splits, tfrecord
from tbkeras.data.augment import AugmentConfig, PixelFormat
from tbkeras.files import read_json

logger = logging.getLogger(__name__)

AUTOTUNE = tf.data.AUTOTUNE

# The per-video functions use no Python control flow on tensors (tf.cond where needed), so
# AutoGraph's source conversion, which costs seconds per pipeline build, is skipped.
_graph_fn = tf.autograph.experimental.do_not_convert


# --------------------------------------------------------------------------- configs

@dataclasses.dataclass(frozen=True)
class VideoSource:
    """Which videos: the shards of one split, optionally narrowed by video-id list files.

    include_ids_file: only these videos (e.g. the labeled list).
    exclude_ids_file: all but these videos (e.g. the labeled list, to get the unlabeled set); a
      tuple of files excludes the videos of each (e.g. the labeled and the validation lists).
    Lists are read with `tbkeras.data.splits.read_video_ids` (any of the split list formats).
    """

    tfrecord_dir: str
    split: str = "train"
    include_ids_file: str | None = None
    exclude_ids_file: str | tuple[str, ...] | None = None

    @property
    def exclude_files(self) -> tuple[str, ...]:
        files = self.exclude_ids_file
        return () if not files else (files,) if isinstance(files, str) else tuple(files)


@dataclasses.dataclass(frozen=True)
class ReadOptions:
    """How records are read.

    shuffle_buffer: videos held for shuffling; 0 (default) = auto: all the videos the pipeline
      reads, or fewer so that they take about `shuffle_buffer_bytes` (at least 1), logged at INFO.
      A positive value is an explicit count (each video holds all its JPEG frames).
    shuffle_buffer_bytes: the auto buffer's budget, against the estimated size of the records.
    seed / deterministic: with `deterministic=True` and a seed, the batches are identical run to
      run (file order, shuffle, sampling and augmentation are all seeded, parallel ops keep order);
      otherwise parallel ops may reorder elements for speed.
    cycle_length: shards read concurrently; 0 (default) = all the shards the pipeline reads, so
      consecutive records come from different shards. A positive value caps it, for memory and
      threads: tf.data's parallel interleave keeps about 9 records (whole videos) per unit of
      cycle length (3 from each open shard, for cycle_length open and 2 x cycle_length opened
      ahead; measured on TF 2.21) and a thread for each, so with thousands of shards (Kinetics)
      cap it at a few hundred.
    check_shards: parse the first record of every shard at build time (error naming the shard).
    cache_limit_bytes: a training subset that is less than half its split (e.g. a labeled list)
      and whose records are estimated below this size is cached in memory after its first pass:
      otherwise every epoch would parse and discard all the other videos of its shards (at 1%
      labeled, ~100 parses per labeled clip). 0 never caches.
    """

    shuffle_buffer: int = 0
    shuffle_buffer_bytes: int = 1 << 30
    seed: int | None = None
    deterministic: bool = False
    cycle_length: int = 0
    check_shards: bool = True
    cache_limit_bytes: int = 2 << 30

    def __post_init__(self):
        for name in ("shuffle_buffer", "shuffle_buffer_bytes", "cycle_length"):
            if getattr(self, name) < 0:
                raise ValueError(f"ReadOptions.{name} must be >= 0, got {getattr(self, name)}")


@dataclasses.dataclass(frozen=True)
class SSLConfig:
    """Self-supervised pretraining: n local clips of L frames + 1 global clip of G frames (None:
    G = L), V views each.

    group_pattern: "" (the paper) batches videos in shuffled order. A regex (see
      `group_pattern_regex`) makes every batch hold videos of one group, so the other videos of a
      batch (L_I's negatives, Eq. 1) share its actor and scene: the scene alone can then not tell
      them apart and the invariant encoder must use the action itself.
    """

    source: VideoSource
    batch_size: int
    num_clips: int = 4
    clip_length: int = 16
    global_clip_length: int | None = None
    views: int = 2
    augment: AugmentConfig | None = augment.STRONG
    pixels: PixelFormat = PixelFormat()
    read: ReadOptions = ReadOptions()
    group_pattern: str = ""

    def __post_init__(self):
        if self.group_pattern:
            group_pattern_regex(self.group_pattern)  # rejects a bad pattern at config time


def group_pattern_regex(pattern: str) -> re.Pattern:
    """The compiled `SSLConfig.group_pattern`: a regex searched in each video id whose first
    capture group names the video's group (UCF101 and the synthetic data: r"_g(\d+)_c\d+$")."""
    try:
        regex = re.compile(pattern)
    except re.error as e:
        raise ValueError(f"group_pattern {pattern!r} is not a regular expression: {e}") from None
    if regex.groups < 1:
        raise ValueError(f"group_pattern {pattern!r} needs a capture group, e.g. r'_g(\d+)_c\d+$'")
    return regex


def video_groups(video_ids: list[str], pattern: str) -> list[int]:
    """The group index of each video id (groups numbered in order of first appearance). Raises
    ValueError naming a video id the pattern does not match."""
    regex = group_pattern_regex(pattern)
    groups: dict[str, int] = {}
    indices = []
    for video_id in video_ids:
        found = regex.search(video_id)
        if found is None:
            raise ValueError(f"group_pattern {pattern!r} does not match video id {video_id!r}: every video of a "
                             "group-batched pipeline needs a group (or leave the pattern empty)")
        indices.append(groups.setdefault(found.group(1), len(groups)))
    return indices


@dataclasses.dataclass(frozen=True)
class SupervisedConfig:
    """Finetuning: one clip of `clip_length` frames at `stride` per video, with its label."""

    source: VideoSource
    batch_size: int
    clip_length: int = 8
    stride: int = 2
    augment: AugmentConfig | None = augment.WEAK
    pixels: PixelFormat = PixelFormat()
    read: ReadOptions = ReadOptions()


@dataclasses.dataclass(frozen=True)
class StudentConfig:
    """Semi-supervised student: a labeled and an unlabeled batch per element.

    The two sets cycle independently. `scores_file` (the TSTR stage's JSON) attaches each clip's
    score s; every video of both sets must have one.
    """

    labeled: VideoSource
    unlabeled: VideoSource
    labeled_batch_size: int
    unlabeled_batch_size: int
    clip_length: int = 8
    stride: int = 2
    scores_file: str | None = None
    augment: AugmentConfig | None = augment.WEAK
    pixels: PixelFormat = PixelFormat()
    read: ReadOptions = ReadOptions()


@dataclasses.dataclass(frozen=True)
class TSTRConfig:
    """TSTR scoring: n evenly spaced clips of L frames at `stride`, centre crop, no augmentation.
    Unlabeled videos are scored too (their label is -1); s itself never uses the label."""

    source: VideoSource
    batch_size: int
    num_clips: int = 4
    clip_length: int = 16
    stride: int = 1
    pixels: PixelFormat = PixelFormat()
    read: ReadOptions = ReadOptions()


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Multi-view evaluation: K evenly spaced clips x C crops (3: both ends and centre; 1: centre)."""

    source: VideoSource
    batch_size: int
    num_clips: int = 10
    num_crops: int = 3
    clip_length: int = 8
    stride: int = 2
    pixels: PixelFormat = PixelFormat()
    read: ReadOptions = ReadOptions()


# --------------------------------------------------------------------------- selection

@dataclasses.dataclass(frozen=True)
class _Selection:
    """The videos a `VideoSource` resolves to, and the shards that hold them."""

    source: VideoSource
    shard_paths: list[str]
    video_ids: list[str]
    num_split_videos: int
    shard_videos: list[int]  # selected videos of each shard of `shard_paths`
    shard_bytes: list[int]  # estimated size of their records

    @property
    def filtered(self) -> bool:
        return len(self.video_ids) < self.num_split_videos

    @property
    def selected_bytes(self) -> int:
        return sum(self.shard_bytes)


def _select(source: VideoSource, check_shards: bool) -> _Selection:
    m = manifest.load_manifest(source.tfrecord_dir, source.split)
    paths = manifest.shard_paths(source.tfrecord_dir, source.split)
    include = set(splits.read_video_ids(source.include_ids_file)) if source.include_ids_file else None
    exclude = {v for path in source.exclude_files for v in splits.read_video_ids(path)}
    kept_paths, kept_ids, all_ids, kept_counts, kept_bytes = [], [], set(), [], []
    for path, shard in zip(paths, m["shards"]):
        all_ids.update(shard["video_ids"])
        ids = [v for v in shard["video_ids"] if (include is None or v in include) and v not in exclude]
        if ids:
            kept_paths.append(path)
            kept_ids.extend(ids)
            kept_counts.append(len(ids))
            kept_bytes.append(tf.io.gfile.stat(path).length * len(ids) // len(shard["video_ids"]))
    where = f"split {source.split!r} of {source.tfrecord_dir}"
    if include is not None and include - all_ids:
        unknown = sorted(include - all_ids)
        logger.warning("%d video(s) of %s are not in %s (failed conversion?), e.g. %s",
                       len(unknown), source.include_ids_file, where, ", ".join(unknown[:5]))
    if not kept_ids:
        raise ValueError(f"no video selected from {where} (include_ids_file={source.include_ids_file}, "
                         f"exclude_ids_file={source.exclude_ids_file})")
    if check_shards:
        for path in kept_paths:
            _check_shard(path)
    return _Selection(source, kept_paths, kept_ids, len(all_ids), kept_counts, kept_bytes)


def _check_shard(path: str) -> None:
    """Parse the shard's first record eagerly, so a wrong or corrupt file is named at build time."""
    try:
        for serialized in tf.data.TFRecordDataset(path).take(1):
            tfrecord.parse_video(serialized)
            return
    except (tf.errors.OpError, ValueError) as e:
        message = getattr(e, "message", str(e))
        raise ValueError(f"shard {path} is not a readable video TFRecord: {message}") from e
    raise ValueError(f"shard {path} is empty, but its manifest lists videos in it")


def _string_table(keys: list[str], values: tf.Tensor, default) -> tf.lookup.StaticHashTable:
    return tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(keys, tf.string), values), default)


def _scores_table(scores_file: str, selections: list[_Selection]) -> tf.lookup.StaticHashTable:
    """Score per video id; error naming the first ids the file lacks."""
    content = read_json(scores_file, what="TSTR scores file")
    scores = content.get("scores") if isinstance(content, dict) else None
    if not isinstance(scores, dict):
        raise ValueError(f"TSTR scores file {scores_file} has no 'scores' object {{video_id: score}}")
    missing = [v for sel in selections for v in sel.video_ids if v not in scores]
    if missing:
        raise ValueError(
            f"TSTR scores file {scores_file} has no score for video id {missing[0]!r}"
            + (f" (nor for {len(missing) - 1} more, e.g. {', '.join(missing[1:4])})" if len(missing) > 1 else ""))
    keys = sorted(scores)
    return _string_table(keys, tf.constant([float(scores[k]) for k in keys], tf.float32), -1.0)


# --------------------------------------------------------------------------- reading

def _per_replica(batch_size: int, ctx: tf.distribute.InputContext | None) -> int:
    return ctx.get_per_replica_batch_size(batch_size) if ctx is not None else batch_size


def _pipeline_seed(read: ReadOptions, ctx: tf.distribute.InputContext | None) -> int | None:
    if read.seed is None:
        return None
    return read.seed + (ctx.input_pipeline_id if ctx is not None else 0)


def shuffle_buffer_size(read: ReadOptions, num_videos: int, num_bytes: int) -> int:
    """Videos held by the training shuffle buffer of a pipeline reading `num_videos` videos whose
    records take about `num_bytes`: `read.shuffle_buffer` if positive, otherwise all of them, or
    `num_videos * read.shuffle_buffer_bytes / num_bytes` (at least 1) if they exceed the budget."""
    if read.shuffle_buffer > 0:
        return read.shuffle_buffer
    if num_bytes <= read.shuffle_buffer_bytes:
        return max(1, num_videos)
    return max(1, num_videos * read.shuffle_buffer_bytes // num_bytes)


def _videos(sel: _Selection, read: ReadOptions, ctx: tf.distribute.InputContext | None,
            training: bool, needs_label: bool) -> tf.data.Dataset:
    """Parsed videos of the selection: dicts of "frames" (JPEG string [N]), "video_id", "label",
    "shard". Training: shard order reshuffled every epoch, records interleaved across all the
    shards read (or `read.cycle_length` of them), videos shuffled (`shuffle_buffer_size`) within
    each epoch, epochs repeated forever."""
    paths = sel.shard_paths
    share = list(range(len(paths)))  # the shards (of `sel`) this pipeline reads
    shard_by_data = False
    if ctx is not None and ctx.num_input_pipelines > 1:
        if len(paths) >= ctx.num_input_pipelines:
            share = share[ctx.input_pipeline_id::ctx.num_input_pipelines]
            paths = [paths[i] for i in share]
        else:
            logger.warning(
                "%d shard(s) for %d input pipelines in split %r of %s: sharding by record instead of "
                "by file (every pipeline reads every shard)", len(paths), ctx.num_input_pipelines,
                sel.source.split, sel.source.tfrecord_dir)
            shard_by_data = True
    seed = _pipeline_seed(read, ctx)
    cache = (training and 2 * len(sel.video_ids) < sel.num_split_videos
             and sel.selected_bytes < read.cache_limit_bytes)
    files = tf.data.Dataset.from_tensor_slices(paths)
    if training:
        # Sharding by record: with a seed, every pipeline shuffles the files alike, so their shares
        # stay disjoint; without one, each reads a random share.
        file_seed = read.seed if shard_by_data else seed
        files = files.shuffle(len(paths), seed=file_seed, reshuffle_each_iteration=True)

    @_graph_fn
    def read_shard(path):
        return tf.data.TFRecordDataset(path).map(lambda record: (path, record))

    cycle_length = min(read.cycle_length, len(paths)) if read.cycle_length > 0 else len(paths)
    records = files.interleave(read_shard, cycle_length=cycle_length,
                               num_parallel_calls=AUTOTUNE, deterministic=read.deterministic or not training)
    if shard_by_data:
        records = records.shard(ctx.num_input_pipelines, ctx.input_pipeline_id)

    @_graph_fn
    def parse(path, record):
        video = tfrecord.parse_video(record)
        frames = video[tfrecord.IMAGE_KEY]
        video_id = video[tfrecord.VIDEO_ID_KEY]
        label = tf.cast(video[tfrecord.LABEL_INDEX_KEY], tf.int32)
        checks = [tf.debugging.Assert(tf.size(frames) >= 1, [
            "video", video_id, "in shard", path, "has no frames (a video needs at least 1)"])]
        if needs_label:
            checks.append(tf.debugging.Assert(label >= 0, [
                "video", video_id, "in shard", path, "is unlabeled (label -1) in a labeled pipeline"]))
        with tf.control_dependencies(checks):
            return {"frames": tf.identity(frames), "video_id": video_id, "label": label, "shard": path}

    videos = records.map(parse, num_parallel_calls=AUTOTUNE, deterministic=read.deterministic or not training)
    if sel.filtered:
        table = _string_table(sel.video_ids, tf.ones([len(sel.video_ids)], tf.int32), 0)
        videos = videos.filter(_graph_fn(lambda v: table.lookup(v["video_id"]) > 0))
    if cache:
        videos = videos.cache()
    if training:
        num_videos = sum(sel.shard_videos[i] for i in share)
        num_bytes = sum(sel.shard_bytes[i] for i in share)
        if shard_by_data:
            num_videos = -(-num_videos // ctx.num_input_pipelines)
            num_bytes //= ctx.num_input_pipelines
        buffer = shuffle_buffer_size(read, num_videos, num_bytes)
        logger.info("split %r of %s: shuffle buffer of %d video(s) (%s) of the %d (~%.0f MiB) this "
                    "pipeline reads from %d shard(s), interleaved %d at a time", sel.source.split,
                    sel.source.tfrecord_dir, buffer, "ReadOptions.shuffle_buffer" if read.shuffle_buffer
                    else f"auto, budget {read.shuffle_buffer_bytes / 2**20:.0f} MiB", num_videos,
                    num_bytes / 2**20, len(paths), cycle_length)
        # Shuffle, then repeat: an epoch ends when the buffer is empty, so with the whole epoch in
        # the buffer every epoch is a uniform random order. Repeating first would let the next
        # epoch's records, in shard order, stream into a buffer they then dominate.
        videos = videos.shuffle(buffer, seed=seed, reshuffle_each_iteration=True).repeat()
    return videos


def _dataset(sel: _Selection, make: Callable[[dict, tf.Tensor], dict], batch_size: int, read: ReadOptions,
             ctx: tf.distribute.InputContext | None, *, training: bool, needs_label: bool,
             group_pattern: str = "") -> tf.data.Dataset:
    """Videos of `sel` -> `make(video, seed)` per video (seed: its own stateless int64 `[2]`) ->
    per-replica batches -> prefetch. Training: infinite, last partial batch dropped. With a
    `group_pattern` (training only) every batch holds videos of one group, each group's videos
    taken in the shuffled order as they arrive (`tf.data.Dataset.group_by_window`)."""
    videos = _videos(sel, read, ctx, training=training, needs_label=needs_label)
    if training:
        seeds = tf.data.Dataset.random(seed=_pipeline_seed(read, ctx)).batch(2)
    else:
        seeds = tf.data.Dataset.from_tensors(tf.zeros([2], tf.int64)).repeat()
    deterministic = read.deterministic or not training
    elements = tf.data.Dataset.zip(videos, seeds).map(
        _graph_fn(make), num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    per_replica = _per_replica(batch_size, ctx)
    if group_pattern and training:
        indices = video_groups(sel.video_ids, group_pattern)
        sizes = collections.Counter(indices)
        small = [i for i, n in sizes.items() if n < per_replica]
        if small:
            first = sel.video_ids[indices.index(small[0])]
            raise ValueError(
                f"group_pattern {group_pattern!r}: {len(small)} of the {len(sizes)} groups of {sel.source.split!r} in "
                f"{sel.source.tfrecord_dir} have fewer videos than a batch ({per_replica}), e.g. the group of "
                f"{first!r} ({sizes[small[0]]}): a batch would repeat videos. Use a smaller batch or no pattern")
        groups = _string_table(sel.video_ids, tf.constant(indices, tf.int64), -1)
        batched = elements.group_by_window(
            key_func=_graph_fn(lambda element: groups.lookup(element["video_id"])),
            reduce_func=_graph_fn(lambda _, window: window.batch(per_replica, drop_remainder=True)),
            window_size=per_replica)
    else:
        batched = elements.batch(per_replica, drop_remainder=training)
    options = tf.data.Options()
    options.deterministic = deterministic
    return batched.prefetch(AUTOTUNE).with_options(options)


# --------------------------------------------------------------------------- per-video parsers

def _unique_rows(indices: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Distinct frame indices (each is decoded once: loop-padding and overlapping clips repeat
    frames) and, for each entry of `indices`, its row among them (same static shape)."""
    unique, rows = tf.unique(tf.reshape(indices, [-1]))
    shape = indices.shape if indices.shape.is_fully_defined() else tf.shape(indices)  # keep it static
    return unique, tf.reshape(rows, shape)


def _decode(frames: tf.Tensor, indices: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Decoded uint8 `[U, H, W, 3]` of the distinct frames of `indices`, and their rows."""
    unique, rows = _unique_rows(indices)
    return tfrecord.decode_frames(frames, unique), rows


def _shared_crop_clips(frames: tf.Tensor, indices: tf.Tensor, seed: tf.Tensor, aug: AugmentConfig | None,
                       pixels: PixelFormat) -> tf.Tensor:
    """Clips `[C, T, S, S, 3]` of frames `indices` `[C, T]` that all share one crop box (a single
    training clip, or centre crops): only the box of each frame is JPEG-decoded.

    The same clips as `augment.augment_clips` on whole decoded frames, with the same seed.
    """
    s = tf.random.experimental.stateless_split(seed, 2)
    unique, rows = _unique_rows(indices)
    frame_hw = tf.io.extract_jpeg_shape(frames[unique[0]])[:2]  # a video's frames share one size
    box = augment.crop_boxes(s[0], 1, frame_hw[0], frame_hw[1], aug)[0]
    decoded = tfrecord.decode_frames(frames, unique, window=box[:4])
    whole_window = tf.concat([tf.zeros([2], tf.int32), box[2:]], axis=0)  # the flip stays
    boxes = tf.tile(whole_window[None], [indices.shape[0], 1])
    return augment.crop_clips(decoded, rows, boxes, pixels, aug, s[1])


def _one_clip(video, seed, clip_length: int, stride: int, aug: AugmentConfig | None,
              pixels: PixelFormat) -> tf.Tensor:
    """A training clip `[T, S, S, 3]`: random start, `stride` (1 if too short), augmented."""
    s = tf.random.experimental.stateless_split(seed, 2)
    indices = sampling.supervised_clip(tf.size(video["frames"]), s[0], clip_length=clip_length, stride=stride)
    clip = _shared_crop_clips(video["frames"], indices[None], s[1], aug, pixels)[0]
    size = pixels.crop_size
    return tf.ensure_shape(clip, [clip_length, size, size, 3])


def _clip_dataset(sel: _Selection, batch_size: int, clip_length: int, stride: int,
                  aug: AugmentConfig | None, pixels: PixelFormat, read: ReadOptions,
                  ctx: tf.distribute.InputContext | None, with_label: bool,
                  scores: tf.lookup.StaticHashTable | None) -> tf.data.Dataset:
    """Training clips with video id, optionally the label and the TSTR score."""

    def make(video, seed):
        out = {"clip": _one_clip(video, seed, clip_length, stride, aug, pixels)}
        if with_label:
            out["label"] = video["label"]
        out["video_id"] = video["video_id"]
        if scores is not None:
            out["score"] = scores.lookup(video["video_id"])
        return out

    return _dataset(sel, make, batch_size, read, ctx, training=True, needs_label=with_label)


# --------------------------------------------------------------------------- public pipelines

def ssl_dataset(cfg: SSLConfig, input_context: tf.distribute.InputContext | None = None) -> tf.data.Dataset:
    """SSL pretraining batches (stages 1-2).

    Per video: a span of n*L frames from a random start; local clip t = span frames [tL, tL+L),
    global clip = G frames (`global_clip_length`, default L) at stride n*L/G over the span
    (`sampling.ssl_span`). Each of the n+1 clips
    of each of the V views gets its own strong augmentation. Only the span's frames are decoded
    (the global clip's frames are among them).

    Returns: {"local": [B, V, n, L, S, S, 3], "global": [B, V, G, S, S, 3], "video_id": string [B]}.
    """
    n, length, views, size = cfg.num_clips, cfg.clip_length, cfg.views, cfg.pixels.crop_size
    global_length = cfg.global_clip_length or length
    sel = _select(cfg.source, cfg.read.check_shards)

    def make(video, seed):
        s = tf.random.experimental.stateless_split(seed, 2)
        local, global_ = sampling.ssl_span(tf.size(video["frames"]), s[0], num_clips=n, clip_length=length,
                                           global_length=global_length)
        decoded, rows = _decode(video["frames"], tf.concat([tf.reshape(local, [-1]), global_], axis=0))
        local_rows = tf.reshape(rows[:n * length], [n, length])
        global_rows = tf.reshape(rows[n * length:], [1, global_length])
        seeds = tf.random.experimental.stateless_split(s[1], 2)
        # Local and global clips are cut separately, so no copy is needed to split them apart.
        local_clips = augment.augment_clips(decoded, tf.tile(local_rows, [views, 1]), seeds[0], cfg.augment, cfg.pixels)
        global_clips = augment.augment_clips(decoded, tf.tile(global_rows, [views, 1]), seeds[1], cfg.augment,
                                             cfg.pixels)
        return {"local": tf.reshape(local_clips, [views, n, length, size, size, 3]),
                "global": tf.reshape(global_clips, [views, global_length, size, size, 3]),
                "video_id": video["video_id"]}

    return _dataset(sel, make, cfg.batch_size, cfg.read, input_context, training=True, needs_label=False,
                    group_pattern=cfg.group_pattern)


def supervised_dataset(cfg: SupervisedConfig,
                       input_context: tf.distribute.InputContext | None = None) -> tf.data.Dataset:
    """Finetuning batches (stage 4): {"clip": [B, T, S, S, 3], "label": int32 [B], "video_id": [B]}."""
    sel = _select(cfg.source, cfg.read.check_shards)
    return _clip_dataset(sel, cfg.batch_size, cfg.clip_length, cfg.stride, cfg.augment, cfg.pixels,
                         cfg.read, input_context, with_label=True, scores=None)


def student_dataset(cfg: StudentConfig,
                    input_context: tf.distribute.InputContext | None = None) -> tf.data.Dataset:
    """Student batches (stage 5): {"labeled": {"clip", "label", "video_id"[, "score"]},
    "unlabeled": {"clip", "video_id"[, "score"]}}, batch sizes `labeled_batch_size` and
    `unlabeled_batch_size`; each set repeats and reshuffles on its own."""
    read = cfg.read
    labeled = _select(cfg.labeled, read.check_shards)
    unlabeled = _select(cfg.unlabeled, read.check_shards)
    scores = _scores_table(cfg.scores_file, [labeled, unlabeled]) if cfg.scores_file else None
    # Different seeds for the two sets, so a video in both would not get the same clips.
    unlabeled_read = read if read.seed is None else dataclasses.replace(read, seed=read.seed + 7919)
    common = dict(clip_length=cfg.clip_length, stride=cfg.stride, aug=cfg.augment, pixels=cfg.pixels,
                  ctx=input_context, scores=scores)
    return tf.data.Dataset.zip({
        "labeled": _clip_dataset(labeled, cfg.labeled_batch_size, read=read, with_label=True, **common),
        "unlabeled": _clip_dataset(unlabeled, cfg.unlabeled_batch_size, read=unlabeled_read,
                                   with_label=False, **common),
    })


def tstr_dataset(cfg: TSTRConfig, input_context: tf.distribute.InputContext | None = None) -> tf.data.Dataset:
    """TSTR scoring batches (stage 3), one pass, each video once:
    {"clips": [B, n, L, S, S, 3] (evenly spaced, centre crop), "label": int32 [B] (-1 = unlabeled),
    "video_id": [B]}. The label only groups the scores for the stage's figures and summary."""
    n, length, size = cfg.num_clips, cfg.clip_length, cfg.pixels.crop_size
    sel = _select(cfg.source, cfg.read.check_shards)

    def make(video, seed):  # seed: zeros outside training, and unused with no augmentation
        indices = sampling.evenly_spaced_clips(
            tf.size(video["frames"]), num_clips=n, clip_length=length, stride=cfg.stride)
        clips = _shared_crop_clips(video["frames"], indices, seed, None, cfg.pixels)
        return {"clips": tf.ensure_shape(clips, [n, length, size, size, 3]),
                "label": video["label"], "video_id": video["video_id"]}

    return _dataset(sel, make, cfg.batch_size, cfg.read, input_context, training=False, needs_label=False)


def clip_views(frames: tf.Tensor, indices: tf.Tensor, num_crops: int, pixels: PixelFormat,
               jit_compile: bool = True) -> tf.Tensor:
    """The evaluation's views of given clips: the one preprocessing that evaluation, every serving
    signature of `tbkeras.export` and so `experiments/predict.py` share.

    Only the frames the clips use are JPEG-decoded; each clip is then cut under each of the
    `num_crops` boxes of `augment.eval_crop_boxes` (squares of the short side: centre, or start,
    centre, end of the long side), resized to S x S (bilinear, no antialiasing) and scaled and
    normalised as `pixels` says (`augment.crop_clips`).

    Args:
      frames: string `[N]`, one JPEG per frame (frames of one video share a size).
      indices: int `[K, T]` with static K, the frames of each clip.
      num_crops: C, 1 or 3.
      pixels: crop size S, mean/std, dtype.
      jit_compile: False for graphs that must run without XLA (exported SavedModels).
    Returns:
      `[K*C, T, S, S, 3]`; view k*C + c is clip k under crop c.
    """
    k = indices.shape[0]
    decoded, rows = _decode(frames, indices)
    boxes = augment.eval_crop_boxes(tf.shape(decoded)[1], tf.shape(decoded)[2], num_crops)
    return augment.crop_clips(decoded, tf.repeat(rows, num_crops, axis=0), tf.tile(boxes, [k, 1]), pixels,
                              jit_compile=jit_compile)


def video_views(frames: tf.Tensor, *, num_clips: int, num_crops: int, clip_length: int, stride: int,
                pixels: PixelFormat, jit_compile: bool = True) -> tf.Tensor:
    """The K x C evaluation views of one whole video: K evenly spaced clips of `clip_length` frames
    at `stride` (`sampling.evenly_spaced_clips`), each under C crops (`clip_views`).

    `frames`: string `[N]` JPEGs, any N >= 1. Returns `[K*C, T, S, S, 3]`.
    """
    indices = sampling.evenly_spaced_clips(
        tf.size(frames), num_clips=num_clips, clip_length=clip_length, stride=stride)
    return clip_views(frames, indices, num_crops, pixels, jit_compile=jit_compile)


def eval_dataset(cfg: EvalConfig, input_context: tf.distribute.InputContext | None = None) -> tf.data.Dataset:
    """Multi-view evaluation batches, one pass: {"views": [B, K*C, T, S, S, 3], "label": int32 [B],
    "video_id": [B]}; view k*C + c is clip k (evenly spaced) under crop c (short side resized to S,
    then C squares along the long side: start, centre, end; or the centre). See `video_views`."""
    k, c, length, size = cfg.num_clips, cfg.num_crops, cfg.clip_length, cfg.pixels.crop_size
    augment.eval_crop_boxes(1, 1, c)  # rejects a bad num_crops at build time
    sel = _select(cfg.source, cfg.read.check_shards)

    def make(video, seed):
        del seed
        views = video_views(video["frames"], num_clips=k, num_crops=c, clip_length=length, stride=cfg.stride,
                            pixels=cfg.pixels)
        return {"views": tf.ensure_shape(views, [k * c, length, size, size, 3]),
                "label": video["label"], "video_id": video["video_id"]}

    return _dataset(sel, make, cfg.batch_size, cfg.read, input_context, training=False, needs_label=True)


def distribute(strategy: tf.distribute.Strategy,
               pipeline: Callable[[Any, tf.distribute.InputContext | None], tf.data.Dataset],
               config: Any) -> tf.distribute.DistributedDataset:
    """Build `pipeline(config, input_context)` once per input pipeline of `strategy`.

    Each copy batches with the per-replica batch size (global / replicas) and reads its share of
    the shard files; e.g. `distribute(strategy, ssl_dataset, SSLConfig(...))`.
    """
    return strategy.distribute_datasets_from_function(lambda ctx: pipeline(config, ctx))
