"""Which frames a clip takes: frame-index samplers as TensorFlow ops.

Every sampler returns int32 frame indices (never pixels), so a pipeline JPEG-decodes only the
frames it needs. All are graph-safe and vectorised (no Python loop over frames), so they run inside
a `tf.data` map. Random samplers take a stateless seed (int `[2]`), which makes a pipeline
reproducible when it is given a fixed seed.

Short videos loop-pad: an index past the end wraps round (`index mod num_frames`), as in the
official TimeBalance code, so every clip has its full length whatever the video's length.
"""
from __future__ import annotations

import tensorflow as tf


def loop_pad(indices: tf.Tensor, num_frames: tf.Tensor) -> tf.Tensor:
    """Wrap indices past the end of a video of `num_frames` frames back to its start."""
    return tf.math.floormod(tf.cast(indices, tf.int32), tf.cast(num_frames, tf.int32))


def _random_start(num_frames: tf.Tensor, span: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Uniform start in `[0, num_frames - span]`, or 0 when the span does not fit."""
    last = tf.maximum(tf.cast(num_frames, tf.int32) - span, 0)
    return tf.random.stateless_uniform([], seed, minval=0, maxval=last + 1, dtype=tf.int32)


def fitting_stride(num_frames: tf.Tensor, clip_length: int, stride: int) -> tf.Tensor:
    """`stride` if a clip of `clip_length` frames at that stride fits in the video, else 1.

    The official code halves its skip of 2 for short videos; a stride-1 clip that still does not
    fit is loop-padded by the caller.
    """
    span = (clip_length - 1) * stride + 1
    return tf.where(tf.cast(num_frames, tf.int32) >= span, stride, 1)


def ssl_span(
    num_frames: tf.Tensor, seed: tf.Tensor, *, num_clips: int = 4, clip_length: int = 16,
    global_length: int | None = None,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Frames of one SSL sample: a span of `num_clips * clip_length` frames from a random start.

    Local clip t is the `clip_length` consecutive frames starting at `t * clip_length` of the span;
    the global clip is `global_length` (default `clip_length`, the official code's) frames evenly
    strided over the whole span (stride `span / global_length`), so global frames
    `[t * G / n, (t + 1) * G / n)` fall inside local clip t (the alignment the global-local loss L_D2
    relies on). A longer global clip keeps more temporal slices through the backbone: L_D2 needs n.

    Returns:
      (local int32 `[num_clips, clip_length]`, global int32 `[global_length]`), loop-padded.
    """
    span = num_clips * clip_length
    global_length = clip_length if global_length is None else global_length
    if global_length < 1 or span % global_length or global_length % num_clips:
        raise ValueError(f"global clip length {global_length} must divide the span num_clips * clip_length = "
                         f"{span} and be a multiple of num_clips = {num_clips}")
    start = _random_start(num_frames, span, seed)
    local = start + tf.reshape(tf.range(span, dtype=tf.int32), [num_clips, clip_length])
    global_ = start + (span // global_length) * tf.range(global_length, dtype=tf.int32)
    return loop_pad(local, num_frames), loop_pad(global_, num_frames)


def supervised_clip(
    num_frames: tf.Tensor, seed: tf.Tensor, *, clip_length: int = 8, stride: int = 2
) -> tf.Tensor:
    """`clip_length` frames at `stride` from a random start (stride 1 if the video is too short,
    loop-padded if shorter still). Returns int32 `[clip_length]`."""
    step = fitting_stride(num_frames, clip_length, stride)
    start = _random_start(num_frames, (clip_length - 1) * step + 1, seed)
    return loop_pad(start + step * tf.range(clip_length, dtype=tf.int32), num_frames)


def evenly_spaced_clips(
    num_frames: tf.Tensor, *, num_clips: int, clip_length: int, stride: int
) -> tf.Tensor:
    """`num_clips` clips whose starts are evenly spaced from the first frame to the last start
    that fits (all at 0 when none fits). Deterministic: used for TSTR scoring and evaluation.

    A clip is `clip_length` frames at `stride`, falling back to stride 1 when the video is too
    short (`fitting_stride`), loop-padded. Start k is `floor(k * (N - span) / (num_clips - 1))`.

    Returns:
      int32 `[num_clips, clip_length]`.
    """
    step = fitting_stride(num_frames, clip_length, stride)
    span = (clip_length - 1) * step + 1
    last = tf.maximum(tf.cast(num_frames, tf.int32) - span, 0)
    k = tf.range(num_clips, dtype=tf.int32)
    starts = (k * last) // max(num_clips - 1, 1)
    offsets = step * tf.range(clip_length, dtype=tf.int32)
    return loop_pad(starts[:, None] + offsets[None, :], num_frames)
