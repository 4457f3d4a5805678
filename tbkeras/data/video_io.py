"""Decode a video file with OpenCV: frames resized, optionally resampled in time, JPEG-encoded.

This module does not import TensorFlow on purpose: conversion workers are spawned processes that
import only this module, so each starts in well under a second instead of paying TF's import.

Failure policy (every failure is a `VideoDecodeError` with a `reason`):
  - missing file, 0-byte file, a file OpenCV cannot open as a video, or no decodable frame;
  - truncated: the container claims N frames and fewer than `min_decoded_fraction * N` decode
    (default 50%). A video that decodes at least that fraction but fewer than N frames is kept, with
    a `warning` on the result: container frame counts are often estimates that are off by a frame
    or two, and a clip of 95% of a video is still a good training example.
Frame counts are only checked when the whole video is read (not when `max_frames` stops early).
"""
from __future__ import annotations

import dataclasses
import math
import os
import stat
from typing import Callable

import cv2
import numpy as np


class VideoDecodeError(Exception):
    """A video that cannot be converted; `reason` is the short, human-readable cause."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class DecodeOptions:
    """How to turn a file into frames.

    Attributes:
      short_side: resize so min(H, W) == short_side, keeping the aspect ratio; 0 keeps the size.
      fps: resample to this frame rate by frame-index selection (drop or repeat frames); 0 keeps it.
      max_frames: stop after this many output frames; 0 reads the whole video.
      min_decoded_fraction: a video decoding fewer than this fraction of the frames its container
        claims is an error ("truncated"); between this and 100% it is kept with a warning.
    """

    short_side: int = 0
    fps: float = 0.0
    max_frames: int = 0
    min_decoded_fraction: float = 0.5


@dataclasses.dataclass(frozen=True)
class DecodeStats:
    """What happened while decoding: output frame rate and size, source frame counts, warning."""

    fps: float
    height: int
    width: int
    decoded_frames: int  # source frames read from the file
    claimed_frames: int  # frames the container says it holds (0 when unknown)
    warning: str = ""


@dataclasses.dataclass(frozen=True)
class DecodedVideo:
    """frames: RGB uint8 `[T, H, W, 3]`; fps: frame rate of `frames` (0.0 if unknown)."""

    frames: np.ndarray
    fps: float
    stats: DecodeStats


@dataclasses.dataclass(frozen=True)
class JpegVideo:
    """frames_jpeg: one JPEG (RGB content) per output frame, ready for `tfrecord.VideoRecord`."""

    frames_jpeg: list[bytes]
    stats: DecodeStats


def resized_shape(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(H', W') with min(H', W') == short_side and the aspect ratio kept; unchanged if short_side <= 0."""
    if short_side <= 0:
        return height, width
    if height <= width:
        return short_side, max(1, round(width * short_side / height))
    return max(1, round(height * short_side / width)), short_side


def resize_short_side(image: np.ndarray, short_side: int) -> np.ndarray:
    """Resize `[H, W, C]` so its short side is `short_side` (INTER_AREA shrinking, INTER_LINEAR growing)."""
    height, width = image.shape[:2]
    new_h, new_w = resized_shape(height, width, short_side)
    if (new_h, new_w) == (height, width):
        return image
    interpolation = cv2.INTER_AREA if new_h < height else cv2.INTER_LINEAR
    return cv2.resize(image, (new_w, new_h), interpolation=interpolation)


def encode_jpeg(image_rgb: np.ndarray, quality: int = 90) -> bytes:
    """JPEG-encode an RGB uint8 `[H, W, 3]` image."""
    return _encode_bgr(cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), quality)


def _encode_bgr(image_bgr: np.ndarray, quality: int) -> bytes:
    ok, buffer = cv2.imencode(".jpg", image_bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"OpenCV failed to JPEG-encode an image of shape {image_bgr.shape}")
    return buffer.tobytes()


def resample_indices(num_frames: int, source_fps: float, target_fps: float) -> list[int]:
    """Source frame index of each output frame when resampling `source_fps` -> `target_fps`.

    Output frame k shows source frame floor(k * source_fps / target_fps): frames are dropped when
    slowing down and repeated when speeding up. The reference for the streaming version below.
    """
    ratio = source_fps / target_fps
    count = math.ceil(num_frames / ratio - 1e-6)
    return [min(num_frames - 1, math.floor(k * ratio + 1e-6)) for k in range(count)]


def _open(path: str) -> cv2.VideoCapture:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise VideoDecodeError(path, "missing file") from None
    except OSError as e:
        raise VideoDecodeError(path, f"cannot access file: {e.strerror}") from None
    if stat.S_ISDIR(info.st_mode):
        raise VideoDecodeError(path, "is a directory, not a video file")
    if stat.S_ISREG(info.st_mode) and info.st_size == 0:
        raise VideoDecodeError(path, "empty file (0 bytes)")
    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        raise VideoDecodeError(path, "unreadable: OpenCV cannot open it as a video")
    return capture


def _decode(
    path: str, options: DecodeOptions, on_frame: Callable[[np.ndarray, int], None]
) -> DecodeStats:
    """Stream `path`, calling `on_frame(resized BGR frame, times)` once per kept source frame.

    `times` > 1 when resampling to a higher frame rate repeats the frame.
    """
    capture = _open(path)
    try:
        source_fps = capture.get(cv2.CAP_PROP_FPS)
        source_fps = float(source_fps) if source_fps and math.isfinite(source_fps) and source_fps > 0 else 0.0
        claimed = capture.get(cv2.CAP_PROP_FRAME_COUNT)
        claimed = int(claimed) if claimed and math.isfinite(claimed) and claimed > 0 else 0
        resample = options.fps > 0 and source_fps > 0
        ratio = source_fps / options.fps if resample else 1.0
        out_fps = options.fps if resample else source_fps
        decoded = emitted = next_output = 0
        shape = (0, 0)
        stopped_early = False
        while True:
            if options.max_frames and emitted >= options.max_frames:
                stopped_early = True
                break
            # Output frames next_output.. that show this source frame (see `resample_indices`).
            times = 0
            while math.floor((next_output + times) * ratio + 1e-6) <= decoded:
                times += 1
            if times == 0:  # dropped frame: grab() skips the colour conversion of read()
                if not capture.grab():
                    break
                decoded += 1
                continue
            try:
                ok, frame = capture.read()
            except cv2.error as e:
                raise VideoDecodeError(path, f"decode error at frame {decoded}: {e}") from None
            if not ok or frame is None:
                break
            decoded += 1
            if options.max_frames:
                times = min(times, options.max_frames - emitted)
            frame = resize_short_side(frame, options.short_side)
            shape = frame.shape[:2]
            on_frame(frame, times)
            emitted += times
            next_output += times
    finally:
        capture.release()
    if emitted == 0:
        raise VideoDecodeError(path, f"zero frames decoded (container claims {claimed})")
    warning = ""
    if not stopped_early and claimed and decoded < claimed:
        message = f"truncated: decoded {decoded} of {claimed} frames the container claims"
        if decoded < options.min_decoded_fraction * claimed:
            raise VideoDecodeError(path, message)
        warning = message + "; kept"
    if not source_fps:
        warning = (warning + "; " if warning else "") + "unknown frame rate (stored as 0)"
    return DecodeStats(
        fps=out_fps, height=shape[0], width=shape[1], decoded_frames=decoded, claimed_frames=claimed,
        warning=warning,
    )


def read_video(path: str, options: DecodeOptions = DecodeOptions()) -> DecodedVideo:
    """Decode `path` to RGB uint8 `[T, H, W, 3]` (resized / resampled per `options`)."""
    frames: list[np.ndarray] = []

    def keep(frame_bgr: np.ndarray, times: int) -> None:
        rgb = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB)
        frames.extend([rgb] * times)

    stats = _decode(path, options, keep)
    return DecodedVideo(frames=np.stack(frames), fps=stats.fps, stats=stats)


def read_video_jpeg(path: str, options: DecodeOptions = DecodeOptions(), quality: int = 90) -> JpegVideo:
    """Decode `path` and JPEG-encode each output frame (a repeated frame is encoded once)."""
    frames_jpeg: list[bytes] = []

    def keep(frame_bgr: np.ndarray, times: int) -> None:
        frames_jpeg.extend([_encode_bgr(frame_bgr, quality)] * times)

    stats = _decode(path, options, keep)
    return JpegVideo(frames_jpeg=frames_jpeg, stats=stats)


def read_video_jpeg_or_reason(task: tuple[str, DecodeOptions, int]) -> JpegVideo | str:
    """`read_video_jpeg(*task)`, or the failure reason: the unit of work of a conversion worker.

    Any exception becomes a reason string, so one bad video never stops a conversion.
    """
    path, options, quality = task
    try:
        return read_video_jpeg(path, options, quality)
    except VideoDecodeError as e:
        return e.reason
    except Exception as e:  # noqa: BLE001 - a crash in OpenCV on one file must not end the run
        return f"unexpected error: {type(e).__name__}: {e}"


def init_worker() -> None:
    """Process initialiser for conversion workers: one OpenCV thread each (one process per core),
    and die with the parent on Linux so a killed conversion leaves no orphans."""
    cv2.setNumThreads(1)
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
