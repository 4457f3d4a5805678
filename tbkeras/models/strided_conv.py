"""Choose how an R3D backbone runs its strided Conv3Ds in training, by timing both on this CPU.

Why a measurement: TensorFlow's CPU gradient of a strided Conv3D is fast on some CPUs and shapes
and many times slower than stride 1 + subsampling on others (BENCHMARKS.md, issue 13: native was
1.5-2x faster at the demo's shapes on an AMD EPYC and 1.4-1.5x faster on an Intel Xeon with AMX,
subsampling 5.9x faster at 16x32x32 on another EPYC). No rule of thumb holds, so "auto" times one
forward + backward of the backbone both ways at the training shape, alternating, and keeps the
faster. The answer is cached per CPU model, TensorFlow version and shape, so it costs a few seconds
once per machine. Both choices give the same outputs and gradients (tests/models/test_r3d.py).
With a GPU or TPU there is nothing to measure: the native kernels are the fast ones there.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import statistics
import time

import keras
import tensorflow as tf

from tbkeras.files import atomic_write_json, read_json
from tbkeras.machine import cpu_model
from tbkeras.models.r3d import BACKBONES, build_backbone
from tbkeras.models.r3d_layers import STRIDED_CONV_CHOICES

CACHE_DIR_ENV = "TBKERAS_CACHE_DIR"
CACHE_FILE = "strided_conv.json"


@dataclasses.dataclass(frozen=True)
class StridedConvProbe:
    """The training shape to measure: backbone, width, clips per step and clip size (T, H, W)."""

    backbone: str = "r3d18"
    width_multiplier: float = 1.0
    batch_size: int = 8
    clip_shape: tuple[int, int, int] = (8, 112, 112)

    def __post_init__(self):
        if self.backbone not in BACKBONES:
            raise ValueError(f"StridedConvProbe.backbone must be one of {tuple(BACKBONES)}, got {self.backbone!r}")
        if self.batch_size < 1 or len(self.clip_shape) != 3 or min(self.clip_shape) < 1:
            raise ValueError(f"StridedConvProbe needs batch_size >= 1 and a (T, H, W) clip_shape, got "
                             f"{self.batch_size} and {self.clip_shape}")

    def cache_key(self) -> str:
        t, h, w = self.clip_shape
        return (f"{cpu_model()} | tf {tf.__version__} | {keras.config.dtype_policy().name} | {self.backbone} "
                f"x{self.width_multiplier:g} | {self.batch_size}x{t}x{h}x{w}")


def default_cache_path() -> str:
    root = os.environ.get(CACHE_DIR_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "tbkeras")
    return os.path.join(root, CACHE_FILE)


def time_strided_convs(probe: StridedConvProbe, steps: int = 3) -> dict[str, float]:
    """Median seconds of one training-mode forward + backward per choice: {"native": s, "subsample": s}.

    The two are warmed up (traced) first, then timed in alternation, so a machine that slows down
    mid-measurement slows both."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    x = tf.random.stateless_uniform([probe.batch_size, *probe.clip_shape, 3], seed=[0, 1])
    step_fns = {}
    for choice in ("native", "subsample"):
        model = build_backbone(probe.backbone, width_multiplier=probe.width_multiplier, strided_conv=choice)

        @tf.function
        def step(clip, model=model):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.cast(model(clip, training=True)["pooled"], tf.float32) ** 2)
            return tape.gradient(loss, model.trainable_variables)

        step(x)  # trace and warm up
        step_fns[choice] = step
    seconds = {choice: [] for choice in step_fns}
    for _ in range(steps):
        for choice, step in step_fns.items():
            start = time.perf_counter()
            tf.nest.map_structure(lambda g: g.numpy(), step(x))
            seconds[choice].append(time.perf_counter() - start)
    return {choice: statistics.median(s) for choice, s in seconds.items()}


def resolve_strided_conv(strided_conv: str, probe: StridedConvProbe, *, cache_path: str | None = None,
                         steps: int = 3) -> str:
    """"native" or "subsample" for `strided_conv` ("auto" is decided as the module docstring says).

    A cached answer for this probe's key is reused; a new measurement is added to the cache
    (written atomically, so concurrent runs never leave a torn file)."""
    if strided_conv not in STRIDED_CONV_CHOICES:
        raise ValueError(f"strided_conv must be one of {STRIDED_CONV_CHOICES}, got {strided_conv!r}")
    if strided_conv != "auto":
        return strided_conv
    if tf.config.list_physical_devices("GPU") or tf.config.list_physical_devices("TPU"):
        return "native"
    path = cache_path or default_cache_path()
    cache = read_json(path, what="strided_conv cache") if os.path.exists(path) else {}
    key = probe.cache_key()
    if key not in cache:
        seconds = time_strided_convs(probe, steps)
        cache[key] = {"choice": min(seconds, key=seconds.get), "seconds": seconds}
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        atomic_write_json(path, cache)
        logging.info("strided_conv=auto: measured %s on %s -> %s (cached in %s)", seconds, key,
                     cache[key]["choice"], path)
    return cache[key]["choice"]
