"""Clip-consistent augmentation: parameters drawn once per clip, applied to every frame of it.

A video model learns motion from how frames differ; an augmentation that differed from frame to
frame would invent motion. So each clip draws one crop box, one flip, one set of colour factors and
one erasing box, and every op below is vectorised over `[C, T, ...]` (C clips of T frames) with the
per-clip parameters broadcast over frames, never a Python loop per frame.

Cost matters (the input pipeline shares the CPU with everything else), so the ops are fused: each
clip is sliced and resized once, all the colour ops but the gamma are one affine map per clip, and
everything after the resize (colour, clamp, gamma, erasing, scaling, mean/std) is one XLA-compiled
function, a single pass over the pixels (`_finisher`).

Pixels leave as RGB in [0, 1], or normalised by a mean/std, as float32 or bfloat16 (`PixelFormat`).

The settings and the order of the ops follow the official TimeBalance loaders
(`dataloaders/dl_ssl.py` for `STRONG`, `dl_semisup_2clips.py` for `WEAK`): resized crop, contrast,
hue, saturation, brightness, then grayscale (with a gamma change) or dropping one colour channel,
horizontal flip (done with the crop: it commutes with the colour ops), random erasing. Deliberate
differences: hue is a YIQ chroma rotation (not an HSV round trip) and values are clamped once,
after the colour ops, not after each; see `color_augment`.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import numpy as np
import tensorflow as tf

Range = tuple[float, float]


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """What a training clip may undergo. A `*_prob` of 0 switches the op off.

    crop_side: side of the crop as a fraction of the frame's side, uniform in the range.
    crop_aspect: log-uniform multiplier of the crop's aspect ratio relative to the frame's
      (1 = same shape as the frame, as the official code; the crop is then resized to S x S).
    brightness / contrast / saturation: multiplicative factor ranges; hue: shift range in turns of
      the hue circle (torchvision's `hue_factor`); each applied with its probability.
    grayscale_prob: to grayscale, then a gamma in `gamma` with `gamma_prob`.
    channel_drop_prob: zero one random colour channel (exclusive with grayscale, as the official).
    erase_prob / erase_height / erase_width / erase_count: `erase_count` independent chances to
      zero a box whose sides are fractions of the crop size.
    """

    crop_side: Range = (0.5, 1.0)
    crop_aspect: Range = (1.0, 1.0)
    flip_prob: float = 0.5
    brightness: Range = (0.75, 1.25)
    brightness_prob: float = 0.3
    contrast: Range = (0.75, 1.25)
    contrast_prob: float = 0.25
    saturation: Range = (0.75, 1.25)
    saturation_prob: float = 0.3
    hue: Range = (-0.1, 0.1)
    hue_prob: float = 0.3
    grayscale_prob: float = 0.175
    gamma: Range = (0.75, 1.25)
    gamma_prob: float = 0.75
    channel_drop_prob: float = 0.125
    erase_prob: float = 0.7
    erase_height: Range = (0.18, 0.36)
    erase_width: Range = (0.24, 0.48)
    erase_count: int = 1

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name.endswith("_prob") and not 0.0 <= value <= 1.0:
                raise ValueError(f"AugmentConfig.{field.name} must be in [0, 1], got {value}")
            # Annotations are strings here (`from __future__ import annotations`).
            if field.type == "Range" and not (len(value) == 2 and value[0] <= value[1]):
                raise ValueError(f"AugmentConfig.{field.name} must be a (low, high) pair with low <= high, got {value}")
        positive = {"crop_side": self.crop_side[0], "crop_aspect": self.crop_aspect[0], "gamma": self.gamma[0]}
        for name, low in positive.items():
            if low <= 0:
                raise ValueError(f"AugmentConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.crop_side[1] > 1:
            raise ValueError(f"AugmentConfig.crop_side is a fraction of the frame (at most 1), got {self.crop_side}")
        if self.erase_count < 0:
            raise ValueError(f"AugmentConfig.erase_count must be >= 0, got {self.erase_count}")


# SSL pretraining (official dl_ssl.py: cropping_fac 0.5; erase sizes are its H/6..H/3 and
# W/6..W/3 of a 320x240 UCF101 frame, as fractions of a 224 crop).
STRONG = AugmentConfig()

# Finetuning and the student (official dl_semisup_2clips.py: min_crop_factor_training 0.4, halved
# jitter probabilities, narrower ranges). DESIGN.md keeps random erasing for SSL only; the official
# student loader also erased (p=0.4, twice): `dataclasses.replace(WEAK, erase_prob=0.4,
# erase_count=2)` reproduces it.
WEAK = AugmentConfig(
    crop_side=(0.4, 1.0),
    brightness=(0.9, 1.1),
    brightness_prob=0.15,
    contrast=(0.9, 1.1),
    contrast_prob=0.125,
    saturation=(0.9, 1.1),
    saturation_prob=0.15,
    hue=(-0.05, 0.05),
    hue_prob=0.15,
    grayscale_prob=0.1,
    gamma=(0.85, 1.15),
    channel_drop_prob=0.0,
    erase_prob=0.0,
)


# Output dtypes: float32, or bfloat16 (half the bytes to batch and to copy to the accelerator; what
# the model computes in anyway under the `mixed_bfloat16` policy).
DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class PixelFormat:
    """Output frames: S x S crops in [0, 1], optionally normalised with a per-channel mean and std,
    as float32 or bfloat16."""

    crop_size: int = 112
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    dtype: str = "float32"

    def __post_init__(self):
        if self.crop_size < 1:
            raise ValueError(f"PixelFormat.crop_size must be positive, got {self.crop_size}")
        if (self.mean is None) != (self.std is None):
            raise ValueError(f"PixelFormat needs both mean and std, or neither (mean={self.mean}, std={self.std})")
        if self.mean is not None:
            if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
                raise ValueError(f"PixelFormat mean/std need 3 values (RGB), std > 0: mean={self.mean}, std={self.std}")
            object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))  # hashable, for the compiled cache
            object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if self.dtype not in DTYPES:
            raise ValueError(f"PixelFormat.dtype must be one of {DTYPES}, got {self.dtype!r}")


def normalize(x: tf.Tensor, mean: Sequence[float], std: Sequence[float]) -> tf.Tensor:
    """`(x - mean) / std` over the last (RGB) axis; `x` float in [0, 1]."""
    mean = tf.constant(mean, x.dtype)
    std = tf.constant(std, x.dtype)
    return (x - mean) / std


# --------------------------------------------------------------------------- crops

# A crop box is int32 `[5]`: top, left, height, width (pixels of the decoded frame) and flip (0/1).

def random_crop_boxes(seed: tf.Tensor, num_clips: int, frame_h, frame_w, config: AugmentConfig) -> tf.Tensor:
    """One random resized crop per clip, mirrored with `config.flip_prob`: int32 `[num_clips, 5]`."""
    s = tf.random.experimental.stateless_split(seed, 5)
    h = tf.cast(frame_h, tf.float32)
    w = tf.cast(frame_w, tf.float32)
    side = tf.random.stateless_uniform([num_clips], s[0], *config.crop_side)
    log_lo, log_hi = (tf.math.log(float(a)) for a in config.crop_aspect)
    aspect = tf.exp(tf.random.stateless_uniform([num_clips], s[1], log_lo, log_hi))
    crop_h = tf.clip_by_value(tf.round(side * h / tf.sqrt(aspect)), 1.0, h)
    crop_w = tf.clip_by_value(tf.round(side * w * tf.sqrt(aspect)), 1.0, w)
    top = tf.floor(tf.random.stateless_uniform([num_clips], s[2]) * (h - crop_h + 1))
    left = tf.floor(tf.random.stateless_uniform([num_clips], s[3]) * (w - crop_w + 1))
    flip = tf.cast(tf.random.stateless_uniform([num_clips], s[4]) < config.flip_prob, tf.float32)
    return tf.cast(tf.stack([top, left, crop_h, crop_w, flip], axis=-1), tf.int32)


def eval_crop_boxes(frame_h, frame_w, num_crops: int) -> tf.Tensor:
    """Boxes int32 `[num_crops, 5]` of the evaluation crops.

    The short side is resized to the crop size, so each crop is the square of side = short side;
    with 3 crops they sit at the start, centre and end of the long side, with 1 crop at the centre
    (the official code's single centre crop).
    """
    if num_crops not in (1, 3):
        raise ValueError(f"num_crops must be 1 (centre) or 3 (both ends and centre), got {num_crops}")
    h = tf.cast(frame_h, tf.int32)
    w = tf.cast(frame_w, tf.int32)
    short = tf.minimum(h, w)
    halves = tf.constant([1] if num_crops == 1 else [0, 1, 2])  # offsets in halves of the slack
    side = tf.fill([num_crops], short)
    return tf.stack([halves * (h - short) // 2, halves * (w - short) // 2, side, side,
                     tf.zeros([num_crops], tf.int32)], axis=-1)


def _resize_clips(frames: tf.Tensor, frame_ids: tf.Tensor, boxes: tf.Tensor, size: int) -> list[tf.Tensor]:
    """Crop clip c's frames with box c and resize them to `size` (bilinear, half-pixel centres).

    Each clip is sliced once and resized as a batch of frames, a loop over the (static) number of
    clips; ~40% cheaper than `tf.image.crop_and_resize`, which samples every pixel separately.
    Returns C float32 `[T, size, size, 3]` tensors still in 0..255: `_finisher` stacks and scales
    them inside its fused pass, which saves two copies of every output pixel.
    """
    num_clips = frame_ids.shape[0]
    if num_clips is None:
        raise ValueError("cropping needs a static number of clips (frame_ids.shape[0])")
    clips = []
    for c in range(num_clips):
        top, left, height, width, flip = tf.unstack(boxes[c])
        region = tf.gather(frames, frame_ids[c])[:, top:top + height, left:left + width]
        # Mirror the uint8 region: 4x fewer bytes than the float output.
        region = tf.cond(flip > 0, lambda: tf.reverse(region, axis=[2]), lambda: region)
        # TF's bilinear kernel is ~15% faster on float input than on uint8 (cast included).
        clips.append(tf.image.resize(tf.cast(region, tf.float32), [size, size]))
    return clips


def crop_boxes(seed: tf.Tensor, num_clips: int, frame_h, frame_w, config: AugmentConfig | None) -> tf.Tensor:
    """The boxes `augment_clips` cuts: a random resized crop per clip (`random_crop_boxes`), or
    with no augmentation the centre crop of the short side. int32 `[num_clips, 5]`."""
    if config is None:
        return tf.tile(eval_crop_boxes(frame_h, frame_w, 1), [num_clips, 1])
    return random_crop_boxes(seed, num_clips, frame_h, frame_w, config)


def crop_clips(frames: tf.Tensor, frame_ids: tf.Tensor, boxes: tf.Tensor, pixels: PixelFormat,
               config: AugmentConfig | None = None, seed: tf.Tensor | None = None,
               jit_compile: bool = True) -> tf.Tensor:
    """Cut clips with the given boxes, then (with `config`) colour-augment and erase each.

    Args:
      frames: uint8 `[N, H, W, 3]` (decoded frames, 0..255).
      frame_ids: int `[C, T]` with static C, the frames (rows of `frames`) of each clip.
      boxes: int32 `[C, 5]`, one box per clip (see above).
      pixels: output size, normalisation and dtype.
      config, seed: the augmentation past the crop and its stateless seed (`[2]`); None for
        evaluation views and centre crops.
      jit_compile: fuse the pass after the resize with XLA (`_finisher`). False gives the same
        ops unfused, for graphs that must run without XLA's JIT: an exported SavedModel, which TF
        Serving runs with XLA:CPU off unless `--xla_cpu_compilation_enabled` is given.
    Returns:
      `[C, T, S, S, 3]` of `pixels.dtype`, in [0, 1] or normalised.
    """
    if config is not None and seed is None:
        raise ValueError("crop_clips with an augmentation config needs a seed")
    seed = tf.zeros([2], tf.int64) if seed is None else seed
    return _finish(_resize_clips(frames, frame_ids, boxes, pixels.crop_size), seed, config, pixels, jit_compile)


# --------------------------------------------------------------------------- colour and erasing

def _draw(u_apply: tf.Tensor, u_value: tf.Tensor, value_range: Range, prob: float, identity: float
          ) -> tuple[tf.Tensor, tf.Tensor]:
    """Per clip, from two uniforms: whether the op applies (`[C]` bool) and its factor (`[C]`,
    `identity` where it does not)."""
    applies = u_apply < prob
    return applies, tf.where(applies, _in_range(u_value, value_range), identity)


def _in_range(u: tf.Tensor, value_range: Range) -> tf.Tensor:
    """Uniforms in [0, 1) mapped onto `value_range`."""
    lo, hi = value_range
    return lo + (hi - lo) * u


_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, as torchvision's grayscale
_RGB_TO_YIQ = (_LUMA, (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))


def _hue_matrices(delta: tf.Tensor) -> tf.Tensor:
    """`[C, 3, 3]`: rotate hue by `delta` turns as a rotation of the chroma plane in YIQ space
    (NVIDIA DALI's hue op). It approximates torchvision's HSV hue shift (same direction and range,
    luma kept exactly) and, being linear, folds into one matrix with the other colour ops."""
    theta = -2.0 * 3.141592653589793 * delta  # sign chosen to match HSV's direction
    cos, sin = tf.cos(theta), tf.sin(theta)
    one, zero = tf.ones_like(cos), tf.zeros_like(cos)
    rotation = tf.reshape(tf.stack([one, zero, zero, zero, cos, -sin, zero, sin, cos], axis=-1), [-1, 3, 3])
    return tf.einsum("ij,cjk,kl->cil", tf.constant(np.linalg.inv(_RGB_TO_YIQ), tf.float32), rotation,
                     tf.constant(_RGB_TO_YIQ, tf.float32))


def _blend_with_gray(weight: tf.Tensor) -> tf.Tensor:
    """`[C, 3, 3]`: `weight * x + (1 - weight) * gray(x)` (saturation; weight 0 = grayscale)."""
    eye = tf.eye(3)[None]
    to_gray = tf.tile(tf.constant(_LUMA, tf.float32)[None, :], [3, 1])[None]  # every row = luma
    return weight[:, None, None] * eye + (1.0 - weight)[:, None, None] * to_gray


# The per-clip random numbers are drawn as one `[C, K]` uniform tensor by one op outside XLA
# (stateless RNG ops take ~0.4 s each to compile) and turned into parameters inside it.
_COLOR_DRAWS = 12
_ERASE_DRAWS = 5  # per erase chance


def _uniforms(seed: tf.Tensor, num_clips: int, count: int) -> tf.Tensor:
    return tf.random.stateless_uniform([num_clips, count], seed)


def _color_params(u: tf.Tensor, config: AugmentConfig):
    """From uniforms `u` `[C, _COLOR_DRAWS]`, per clip: the affine colour map (`[C, 3, 3]` matrix,
    contrast factor `[C]`) and the gamma (`[C]` exponent, `[C]` bool whether it applies)."""
    _, contrast = _draw(u[:, 0], u[:, 1], config.contrast, config.contrast_prob, 1.0)
    _, hue = _draw(u[:, 2], u[:, 3], config.hue, config.hue_prob, 0.0)
    _, saturation = _draw(u[:, 4], u[:, 5], config.saturation, config.saturation_prob, 1.0)
    _, brightness = _draw(u[:, 6], u[:, 7], config.brightness, config.brightness_prob, 1.0)
    to_gray = u[:, 8] < config.grayscale_prob
    drop = (u[:, 8] >= config.grayscale_prob) & (u[:, 8] < config.grayscale_prob + config.channel_drop_prob)
    channel = tf.minimum(tf.cast(u[:, 9] * 3.0, tf.int32), 2)
    gamma_applies = _gamma_applies(u, config)
    gamma = tf.where(gamma_applies, _in_range(u[:, 11], config.gamma), 1.0)
    # Column-vector convention: out = M x, M = drop . gray . brightness . saturation . hue.
    matrix = tf.matmul(_blend_with_gray(saturation), _hue_matrices(hue))
    matrix = brightness[:, None, None] * matrix
    matrix = tf.matmul(_blend_with_gray(tf.where(to_gray, 0.0, 1.0)), matrix)
    keep = 1.0 - tf.one_hot(channel, 3) * tf.cast(drop, tf.float32)[:, None]  # [C, 3]
    return keep[:, :, None] * matrix, contrast, gamma, gamma_applies


def color_augment(clips: tf.Tensor, seed: tf.Tensor, config: AugmentConfig) -> tf.Tensor:
    """Colour jitter, then grayscale (with a gamma) or dropping a channel; one draw per clip.

    In the official order: contrast (blend with the frame's mean gray), hue, saturation,
    brightness, grayscale or channel drop, each with its probability. All but the gamma are affine
    in RGB, so they are composed into one 3x3 matrix per clip and a per-frame offset (contrast),
    applied as one elementwise expression and clamped to [0, 1] once at the end (torchvision clamps
    after every op; the difference only shows where an intermediate leaves [0, 1]). Under XLA
    (`augment_clips`) the whole function is one pass over the pixels.

    `clips`: float `[C, T, S, S, 3]` with static C, in [0, 1]. Returns the same shape, in [0, 1].
    """
    return _color(clips, _uniforms(seed, _static_clips(clips), _COLOR_DRAWS), config)


def _static_clips(clips: tf.Tensor) -> int:
    if clips.shape[0] is None:
        raise ValueError("clip augmentation needs a static number of clips (shape[0])")
    return clips.shape[0]


def _color(clips: tf.Tensor, u: tf.Tensor, config: AugmentConfig, scale: float = 1.0,
           gamma: bool = True) -> tf.Tensor:
    """`color_augment` with its uniforms `u` `[C, _COLOR_DRAWS]` given, for `clips` in
    [0, 1 / scale] (`scale` is folded into the colour matrix: 0..255 input costs nothing extra).
    `gamma=False` skips the gamma, for callers that know no clip drew it (`_gamma_drawn`)."""
    num_clips, frames, height, width, _ = clips.shape
    matrix, contrast, gammas, gamma_applies = _color_params(u, config)
    matrix = matrix * scale
    # Contrast first: c * x + (1 - c) * mean_t, so out = c M x + (1 - c) mean_t M 1. The frame
    # means are a matrix-vector product (one fast read), not a reduction over a colour map.
    pixels = tf.reshape(clips, [num_clips * frames, height * width * 3])
    luma = tf.tile(tf.constant(_LUMA) * (scale / (height * width)), [height * width])
    frame_mean = tf.reshape(tf.linalg.matvec(pixels, luma), [num_clips, frames])
    offset = (1.0 - contrast)[:, None, None] * frame_mean[:, :, None] * tf.reduce_sum(matrix, axis=2)[:, None, :]
    out = tf.clip_by_value(_rgb_map(clips, contrast[:, None, None] * matrix) + offset[:, :, None, None, :], 0.0, 1.0)
    if not gamma:
        return out
    # The gamma is the costliest op here, hence `gamma=False` where no clip drew it. x^g is written
    # exp(g log x): XLA's CPU exp and log are vectorised and its pow is not (on [10, 16, 112, 112, 3]
    # the pass took 11 ms instead of 16); same values to 1e-7, and 0 -> exp(-inf) = 0 for g > 0.
    gammas = gammas[:, None, None, None, None]
    return tf.where(gamma_applies[:, None, None, None, None], tf.exp(gammas * tf.math.log(out)), out)


def _gamma_applies(u: tf.Tensor, config: AugmentConfig) -> tf.Tensor:
    """`[C]` bool: the clips that went grayscale and drew the gamma (uniforms as `_color_params`)."""
    return (u[:, 8] < config.grayscale_prob) & (u[:, 10] < config.gamma_prob)


def _gamma_drawn(u: tf.Tensor, config: AugmentConfig) -> tf.Tensor:
    """Whether any clip drew the gamma (a few cheap ops, run before choosing a compiled variant)."""
    if config.grayscale_prob <= 0 or config.gamma_prob <= 0:
        return tf.constant(False)
    return tf.reduce_any(_gamma_applies(u, config))


def _rgb_map(x: tf.Tensor, matrices: tf.Tensor) -> tf.Tensor:
    """`out[c] = matrices[c] @ rgb` for every pixel of clip c: `[C, T, S, S, 3]` and `[C, K, 3]`
    -> `[C, T, S, S, K]`, written as broadcast products (XLA fuses them into one loop; a dot with
    an inner dimension of 3 would not be)."""
    m = matrices[:, None, None, None]  # [C, 1, 1, 1, K, 3]
    return x[..., 0:1] * m[..., 0] + x[..., 1:2] * m[..., 1] + x[..., 2:3] * m[..., 2]


def _erase_mask(u: tf.Tensor, size: int, config: AugmentConfig) -> tf.Tensor:
    """Float `[C, S, S]` from uniforms `u` `[C, _ERASE_DRAWS * erase_count]`: 0 inside each clip's
    erased box (the same pixels in every frame), else 1; `erase_count` chances of `erase_prob`.

    The box's top-left corner is uniform over the crop and the box is clipped at its edges, as
    torchvision's `erase` in the official loader.
    """
    size_f = float(size)
    pos = tf.range(size, dtype=tf.float32)[None, :]  # [1, S]
    erased = None
    for i in range(config.erase_count):
        apply, top, left, height, width = tf.unstack(u[:, _ERASE_DRAWS * i:_ERASE_DRAWS * (i + 1)], axis=1)
        top = tf.floor(top * size_f)[:, None]
        left = tf.floor(left * size_f)[:, None]
        height = tf.round(_in_range(height, config.erase_height) * size_f)[:, None]
        width = tf.round(_in_range(width, config.erase_width) * size_f)[:, None]
        rows = (pos >= top) & (pos < top + height)  # [C, S]
        cols = (pos >= left) & (pos < left + width)
        box = rows[:, :, None] & cols[:, None, :] & (apply < config.erase_prob)[:, None, None]
        erased = box if erased is None else erased | box
    return 1.0 - tf.cast(erased, tf.float32)


def _erases(config: AugmentConfig | None) -> bool:
    return config is not None and config.erase_prob > 0 and config.erase_count > 0


def random_erase(clips: tf.Tensor, seed: tf.Tensor, config: AugmentConfig) -> tf.Tensor:
    """Zero one box per clip in every frame, `erase_count` chances of `erase_prob` (`_erase_mask`):
    `[C, T, S, S, 3]` with static C and S."""
    u = _uniforms(seed, _static_clips(clips), _ERASE_DRAWS * config.erase_count)
    return clips * _erase_mask(u, clips.shape[2], config)[:, None, :, :, None]


def _num_draws(config: AugmentConfig | None) -> int:
    """Uniforms per clip that `_finisher(config, ...)` consumes."""
    if config is None:
        return 1
    return _COLOR_DRAWS + (_ERASE_DRAWS * config.erase_count if _erases(config) else 0)


@functools.lru_cache(maxsize=None)
def _finisher(config: AugmentConfig | None, pixels: PixelFormat, gamma: bool = False, jit_compile: bool = True):
    """One XLA-compiled function per (augmentation, output format): (the C resized clips in
    0..255, uniforms `[C, _num_draws(config)]`) -> colour, clamp, erase, scale and normalise, which
    XLA fuses into about one pass over the pixels (then `_to_bfloat16` if that is the dtype).

    Unfused, each of these is a separate memory-bound TensorFlow op over `[C, T, S, S, 3]` floats,
    plus dozens of tiny ops building the parameters; see BENCHMARKS.md for what fusing saves.
    Shapes are static (clips and crop size), so each pipeline compiles it once (~1-2 s).
    `jit_compile=False`: the same function as plain TensorFlow ops (for exported graphs).
    """

    @tf.function(jit_compile=jit_compile, autograph=False)
    def finish(clips: list[tf.Tensor], u: tf.Tensor) -> tf.Tensor:
        clips = tf.stack(clips)
        if config is None:
            x = clips * (1.0 / 255.0)
        else:
            x = _color(clips, u[:, :_COLOR_DRAWS], config, scale=1.0 / 255.0, gamma=gamma)
            if _erases(config):
                x = x * _erase_mask(u[:, _COLOR_DRAWS:], clips.shape[2], config)[:, None, :, :, None]
        if pixels.mean is not None:
            x = normalize(x, pixels.mean, pixels.std)
        return x

    if pixels.dtype == "bfloat16":
        # A separate compiled conversion: fused into `finish`, it made the whole loop ~3x slower.
        return lambda clips, u: _to_bfloat16(finish(clips, u))
    return finish


def _to_bfloat16(x: tf.Tensor) -> tf.Tensor:
    """float32 -> bfloat16, rounding to nearest even as `tf.cast` does (bit-exact for finite values).

    On CPU, TF's and XLA's converts to bfloat16 are not vectorised: ~3x the cost of a float32 pass,
    and fused into `_finisher` they slowed its whole loop as much. These integer ops, compiled on
    their own, cost about a third of a pass; the bits leave XLA as uint16 and the bitcast is free.
    """
    return tf.bitcast(_bfloat16_bits(x), tf.bfloat16)


@tf.function(jit_compile=True, autograph=False)
def _bfloat16_bits(x: tf.Tensor) -> tf.Tensor:
    bits = tf.bitcast(x, tf.uint32)
    shift = tf.constant(16, tf.uint32)
    lowest_kept = tf.bitwise.bitwise_and(tf.bitwise.right_shift(bits, shift), tf.constant(1, tf.uint32))
    rounded = bits + tf.constant(0x7FFF, tf.uint32) + lowest_kept
    return tf.cast(tf.bitwise.right_shift(rounded, shift), tf.uint16)


def _finish(clips: list[tf.Tensor], seed: tf.Tensor, config: AugmentConfig | None, pixels: PixelFormat,
            jit_compile: bool = True) -> tf.Tensor:
    u = _uniforms(seed, len(clips), _num_draws(config))
    if config is None:
        return _finisher(None, pixels, jit_compile=jit_compile)(clips, u)
    # Two compiled variants, so the pow runs only in calls where some clip drew the gamma.
    return tf.cond(_gamma_drawn(u, config),
                   lambda: _finisher(config, pixels, True, jit_compile)(clips, u),
                   lambda: _finisher(config, pixels, False, jit_compile)(clips, u))


def augment_clips(frames: tf.Tensor, frame_ids: tf.Tensor, seed: tf.Tensor,
                  config: AugmentConfig | None, pixels: PixelFormat) -> tf.Tensor:
    """Cut C training clips out of decoded frames, each with its own augmentation.

    Args:
      frames: uint8 `[N, H, W, 3]`, decoded frames (clips may share them).
      frame_ids: int `[C, T]`, rows of `frames` that make each clip.
      seed: int `[2]` stateless seed; same seed, same augmentation.
      config: the augmentation; None gives the deterministic centre crop of the short side.
      pixels: output size S, normalisation and dtype.
    Returns:
      `[C, T, S, S, 3]` of `pixels.dtype`, in [0, 1] or normalised.
    """
    num_clips = frame_ids.shape[0]
    if num_clips is None:
        raise ValueError("augment_clips needs a static number of clips (frame_ids.shape[0])")
    s = tf.random.experimental.stateless_split(seed, 2)
    boxes = crop_boxes(s[0], num_clips, tf.shape(frames)[1], tf.shape(frames)[2], config)
    return crop_clips(frames, frame_ids, boxes, pixels, config, s[1])
