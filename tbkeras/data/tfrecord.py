"""The TFRecord layout of a video: one `tf.train.SequenceExample` per video.

Keys follow the DMVR / TF Model Garden convention so that other tools read our shards: the
feature list `image/encoded` holds one JPEG per frame, the context holds the label and metadata.
Parsing keeps frames as encoded bytes, so a pipeline JPEG-decodes only the frames a clip samples.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import tensorflow as tf

IMAGE_KEY = "image/encoded"
LABEL_INDEX_KEY = "clip/label/index"
LABEL_TEXT_KEY = "clip/label/text"
FILENAME_KEY = "video/filename"
VIDEO_ID_KEY = "video/id"
NUM_FRAMES_KEY = "video/num_frames"
FPS_KEY = "video/fps"
HEIGHT_KEY = "video/height"
WIDTH_KEY = "video/width"

UNLABELED = -1


@dataclasses.dataclass(frozen=True)
class VideoRecord:
    """One video as stored: JPEG bytes per frame plus its metadata."""

    video_id: str
    frames_jpeg: Sequence[bytes]
    height: int
    width: int
    fps: float
    label_index: int = UNLABELED
    label_text: str = ""
    filename: str = ""


def _bytes(value: bytes | str) -> tf.train.Feature:
    if isinstance(value, str):
        value = value.encode("utf-8")
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int(value: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def _float(value: float) -> tf.train.Feature:
    return tf.train.Feature(float_list=tf.train.FloatList(value=[float(value)]))


def encode_video(record: VideoRecord) -> bytes:
    """Serialise a `VideoRecord` to SequenceExample bytes (one TFRecord entry)."""
    if not record.frames_jpeg:
        raise ValueError(f"video {record.video_id!r} has no frames; nothing to write")
    context = tf.train.Features(
        feature={
            LABEL_INDEX_KEY: _int(record.label_index),
            LABEL_TEXT_KEY: _bytes(record.label_text),
            FILENAME_KEY: _bytes(record.filename),
            VIDEO_ID_KEY: _bytes(record.video_id),
            NUM_FRAMES_KEY: _int(len(record.frames_jpeg)),
            FPS_KEY: _float(record.fps),
            HEIGHT_KEY: _int(record.height),
            WIDTH_KEY: _int(record.width),
        }
    )
    frames = tf.train.FeatureList(
        feature=[tf.train.Feature(bytes_list=tf.train.BytesList(value=[f])) for f in record.frames_jpeg]
    )
    example = tf.train.SequenceExample(
        context=context, feature_lists=tf.train.FeatureLists(feature_list={IMAGE_KEY: frames})
    )
    return example.SerializeToString()


_CONTEXT_SPEC = {
    LABEL_INDEX_KEY: tf.io.FixedLenFeature([], tf.int64, default_value=UNLABELED),
    LABEL_TEXT_KEY: tf.io.FixedLenFeature([], tf.string, default_value=""),
    FILENAME_KEY: tf.io.FixedLenFeature([], tf.string, default_value=""),
    VIDEO_ID_KEY: tf.io.FixedLenFeature([], tf.string),
    NUM_FRAMES_KEY: tf.io.FixedLenFeature([], tf.int64),
    FPS_KEY: tf.io.FixedLenFeature([], tf.float32, default_value=0.0),
    HEIGHT_KEY: tf.io.FixedLenFeature([], tf.int64, default_value=0),
    WIDTH_KEY: tf.io.FixedLenFeature([], tf.int64, default_value=0),
}
_SEQUENCE_SPEC = {IMAGE_KEY: tf.io.FixedLenSequenceFeature([], tf.string)}


def parse_video(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """Parse one serialised video, leaving the frames JPEG-encoded.

    Returns a dict with the context keys above (scalars) and `IMAGE_KEY`: string `[num_frames]`.
    Works in graph mode, so it can sit in a `tf.data` map.
    """
    context, sequence = tf.io.parse_single_sequence_example(
        serialized, context_features=_CONTEXT_SPEC, sequence_features=_SEQUENCE_SPEC
    )
    return {**context, IMAGE_KEY: sequence[IMAGE_KEY]}


def decode_frames(encoded: tf.Tensor, frame_indices: tf.Tensor, window: tf.Tensor | None = None) -> tf.Tensor:
    """JPEG-decode only the frames at `frame_indices`, and only `window` of each if given.

    Args:
      encoded: string `[num_frames]`, the `IMAGE_KEY` of `parse_video`.
      frame_indices: int `[T]`, indices into `encoded` (may repeat, e.g. loop-padding).
      window: optional int32 `[4]`: top, left, height, width. Decoding just a crop skips most
        of the work outside it (`tf.io.decode_and_crop_jpeg`).
    Returns:
      uint8 `[T, H, W, 3]` (or `[T, height, width, 3]`), RGB.
    """
    picked = tf.gather(encoded, tf.cast(frame_indices, tf.int32))
    if window is None:
        decode = lambda jpeg: tf.io.decode_jpeg(jpeg, channels=3)
    else:
        decode = lambda jpeg: tf.io.decode_and_crop_jpeg(jpeg, window, channels=3)
    return tf.map_fn(decode, picked, fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8))


def shard_filename(split: str, index: int, num_shards: int) -> str:
    """`{split}-{i:05d}-of-{n:05d}.tfrecord`, the shard naming of DESIGN.md."""
    return f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord"
