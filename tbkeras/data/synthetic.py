"""Synthetic action videos: a small, seedable stand-in for UCF101 that needs no download.

The classes mirror the two kinds of action in the TimeBalance paper (Fig. 1):

- *atomic, repetitive* actions (oscillate, rotate, pulse, blink, orbit): the motion repeats with a
  period of a few frames, so any two clips of a video look alike and the temporally-invariant
  teacher should do well on them;
- *composite* actions made of two ordered sub-actions ("slide right, then hop up" vs "hop up, then
  slide right"): clips taken at different times of the video differ, so the temporally-distinctive
  teacher should do well on them.

Every sub-action of a composite starts and ends in the object's rest pose and both halves last
equally long, so "A then B" and "B then A" rendered with the same random draws hold exactly the
same multiset of frames: a single frame or an unordered bag of frames cannot tell the two classes
apart, only the temporal order can. (Plain translations such as "move right then up" would not
have that property: the two paths trace different L shapes.)

Nuisances, drawn per group ("actor and scene", shared by the clips of a group as in UCF101): shape,
colour and textured background; per clip: size, orientation, start position, speed (period or
amplitude), idle time around a composite, motion direction and per-pixel noise. A group's scene is
the same in every class (group g of each class shares it), so by default appearance says nothing
about the class and only motion tells classes apart. (With a scene per class and group, a network
memorises the training groups' scenes and sits at chance on the unseen test groups.) With
`class_shape_probability` > 0 a video's object takes its family's typical shape with that chance,
as scenes and props hint at the class in UCF101: a cue that holds across time, which a temporally
invariant teacher can use, but that never tells "A then B" from "B then A".

Files are written UCF101-style so `build_tfrecords.py --layout=ucf101` converts them:
`{out}/videos/{Class}/v_{Class}_g{group:02d}_c{clip:02d}.avi` and `{out}/splits/classInd.txt`,
`trainlist01.txt`, `testlist01.txt`; the test groups are disjoint from the train groups.
"""
from __future__ import annotations

import colorsys
import contextlib
import dataclasses
import math
import multiprocessing
import os
import time
from typing import Any, Iterator

import cv2
import numpy as np

from tbkeras.files import atomic_path, atomic_write_json, atomic_write_text, read_json

ATOMIC = "atomic"
COMPOSITE = "composite"
SHAPES = ("circle", "triangle", "square", "hexagon", "cross")  # a group's actor is one of these
# A family's typical shape (`class_shape_probability`): one per atomic class or composite pair, in
# the order the families first appear in `ACTIONS`, so the 8-class demo's 6 families all differ.
FAMILY_SHAPES = ("circle", "triangle", "square", "hexagon", "cross", "pentagon")
_POLYGON_SIDES = {"triangle": 3, "square": 4, "pentagon": 5, "hexagon": 6}
# Codec / container pairs that OpenCV's pip wheels can write (checked with opencv-python-headless
# 5.0: H.264 ('avc1', 'H264') is not available there).
WORKING_CODECS = (("MJPG", ".avi"), ("XVID", ".avi"), ("mp4v", ".mp4"))
CONFIG_FILE = "synthetic_config.json"


@dataclasses.dataclass(frozen=True)
class ActionSpec:
    """One class: `parts` is the periodic motion (atomic) or the ordered sub-actions (composite)."""

    name: str
    kind: str
    parts: tuple[str, ...]


def _atomic(motion: str) -> ActionSpec:
    return ActionSpec(motion, ATOMIC, (motion,))


def _pair(first: str, second: str) -> tuple[ActionSpec, ActionSpec]:
    return (ActionSpec(f"{first}Then{second}", COMPOSITE, (first, second)),
            ActionSpec(f"{second}Then{first}", COMPOSITE, (second, first)))


# The fixed, well-mixed class order: the first N classes are a config's classes. The first 4 are
# the paper's atomic examples mixed with 2 composite pairs. A pair (A then B, B then A) stays whole,
# so that only the order tells its classes apart, unless N is 2, 6, 11, 13, 15 or 17.
ACTIONS: tuple[ActionSpec, ...] = (
    _atomic("Oscillate"), *_pair("SlideRight", "HopUp"),
    _atomic("Rotate"), _atomic("Pulse"), *_pair("Spin", "Grow"),
    _atomic("Blink"), _atomic("OscillateVertical"), _atomic("Orbit"),
    *_pair("HopUp", "Spin"), *_pair("SlideRight", "Grow"),
    *_pair("SlideRight", "Spin"), *_pair("HopUp", "Grow"),
)
_ACTIONS_BY_NAME = {a.name: (i, a) for i, a in enumerate(ACTIONS)}


def _family_key(action: ActionSpec):
    """An atomic class is its own family; "A then B" and "B then A" are one family."""
    return action.name if action.kind == ATOMIC else frozenset(action.parts)


_FAMILIES = tuple(dict.fromkeys(_family_key(a) for a in ACTIONS))


def family_shape(class_name: str) -> str:
    """The typical shape of a class's family (both classes of a composite pair share it)."""
    return FAMILY_SHAPES[_FAMILIES.index(_family_key(action_spec(class_name))) % len(FAMILY_SHAPES)]


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """What to generate. Defaults are the demo dataset (8 classes x 40 videos, 64 x 128 x 128).

    Videos of a class are numbered in groups of `clips_per_group` (UCF101's g/c numbering); the
    first `round(test_fraction * groups)` groups (at least one, never all) form the test split.
    `class_shape_probability` is the chance that a video's object takes its family's typical shape
    (`family_shape`) instead of its group's: appearance then hints at the class, as scenes and props
    do in UCF101, but never at the order that separates the two classes of a composite pair.
    `period_frames` bounds the integer period of atomic actions (their speed); `object_radius` bounds
    the object's circumradius as a fraction of the frame's short side; `noise_std_max` bounds the
    per-clip standard deviation of the per-pixel (uniform, integer) noise, in 0..255 units.
    """

    num_classes: int = 8
    videos_per_class: int = 40
    clips_per_group: int = 4
    test_fraction: float = 0.28
    num_frames: int = 64
    height: int = 128
    width: int = 128
    fps: float = 25.0
    seed: int = 0
    codec: str = "MJPG"
    extension: str = ".avi"
    period_frames: tuple[int, int] = (8, 16)
    object_radius: tuple[float, float] = (0.18, 0.26)
    noise_std_max: float = 5.0
    class_shape_probability: float = 0.0

    def __post_init__(self) -> None:
        def bad(field: str, why: str) -> ValueError:
            return ValueError(f"SyntheticConfig.{field}={getattr(self, field)!r}: {why}")

        if not 1 <= self.num_classes <= len(ACTIONS):
            n_atomic = sum(a.kind == ATOMIC for a in ACTIONS)
            raise bad("num_classes", f"must be in 1..{len(ACTIONS)} (there are {n_atomic} atomic "
                                     f"and {len(ACTIONS) - n_atomic} composite synthetic classes)")
        if self.num_frames < 4:
            raise bad("num_frames", "need at least 4 frames per video")
        if self.height < 16 or self.width < 16:
            raise bad("height" if self.height < 16 else "width", "frames must be at least 16x16")
        if not self.fps > 0:
            raise bad("fps", "must be positive")
        if self.clips_per_group < 1:
            raise bad("clips_per_group", "must be at least 1")
        if self.num_groups < 2:
            raise bad("videos_per_class", f"with clips_per_group={self.clips_per_group} this gives "
                                          f"{self.num_groups} group(s); need >= 2 to split train/test")
        if not 0.0 < self.test_fraction < 1.0:
            raise bad("test_fraction", "must be strictly between 0 and 1")
        if len(self.codec) != 4:
            raise bad("codec", "must be a FourCC of 4 characters, e.g. 'MJPG' or 'mp4v'")
        if not (self.extension.startswith(".") and len(self.extension) > 1):
            raise bad("extension", "must look like '.avi' or '.mp4'")
        low, high = self.period_frames
        if not 2 <= low <= high:
            raise bad("period_frames", "must be (low, high) with 2 <= low <= high")
        r_low, r_high = self.object_radius
        if not 0 < r_low <= r_high <= 0.3:
            raise bad("object_radius", "must be (low, high) with 0 < low <= high <= 0.3 (fractions of "
                                       "the short side; larger objects leave no room to move)")
        if self.noise_std_max < 0:
            raise bad("noise_std_max", "must be >= 0")
        if not 0.0 <= self.class_shape_probability <= 1.0:
            raise bad("class_shape_probability", "must be a probability in [0, 1]")

    @property
    def num_groups(self) -> int:
        return math.ceil(self.videos_per_class / self.clips_per_group)

    @property
    def test_groups(self) -> tuple[int, ...]:
        """1-based group numbers of the test split (the first groups, like UCF101 split 1)."""
        k = min(max(1, round(self.test_fraction * self.num_groups)), self.num_groups - 1)
        return tuple(range(1, k + 1))


def class_names(config: SyntheticConfig) -> list[str]:
    """The config's classes in label order (label index = position, classInd number = position + 1)."""
    return [a.name for a in ACTIONS[: config.num_classes]]


def action_spec(name: str) -> ActionSpec:
    """The `ActionSpec` of a class name; ValueError listing the valid names otherwise."""
    if name not in _ACTIONS_BY_NAME:
        raise ValueError(f"unknown synthetic class {name!r}; valid: {[a.name for a in ACTIONS]}")
    return _ACTIONS_BY_NAME[name][1]


# ----------------------------------------------------------------------------------------------
# Rendering


@dataclasses.dataclass(frozen=True)
class Scene:
    """What stays fixed within a group: the actor's shape and colour and the background."""

    shape: str
    color: np.ndarray  # float32 [3], RGB 0..255
    background: np.ndarray  # float32 [H, W, 3], RGB 0..255


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h, s, v), np.float32) * 255.0


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A muted two-colour texture [H, W, 3]: gradient, stripes, checkers or smooth blobs."""
    c0, c1 = (_hsv(rng.random(), rng.uniform(0.0, 0.4), rng.uniform(0.15, 0.6)) for _ in range(2))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    phi = rng.uniform(0, 2 * np.pi)
    along = xx * np.cos(phi) + yy * np.sin(phi)
    kind = rng.integers(4)
    if kind == 0:
        mix = (along - along.min()) / max(float(np.ptp(along)), 1.0)
    elif kind == 1:
        mix = 0.5 + 0.5 * np.sin(2 * np.pi * along / rng.uniform(6, 24) + rng.uniform(0, 2 * np.pi))
    elif kind == 2:
        cell = rng.uniform(6, 20)
        across = -xx * np.sin(phi) + yy * np.cos(phi)
        mix = ((np.floor(along / cell) + np.floor(across / cell)) % 2).astype(np.float32)
    else:
        grid = rng.random((int(rng.integers(3, 8)), int(rng.integers(3, 8)))).astype(np.float32)
        mix = np.clip(cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC), 0, 1)
    return (c0 + mix[..., None] * (c1 - c0)).astype(np.float32)


def draw_scene(rng: np.random.Generator, config: SyntheticConfig) -> Scene:
    """Draw a shape, a vivid colour and a textured background for one group of clips."""
    shape = SHAPES[rng.integers(len(SHAPES))]
    color = _hsv(rng.random(), rng.uniform(0.6, 1.0), rng.uniform(0.8, 1.0))
    return Scene(shape, color, _background(rng, config.height, config.width))


@dataclasses.dataclass
class _Pose:
    """Per-frame pose of the object, each [T]: offset from the anchor (pixels), angle, scale, alpha."""

    dx: np.ndarray
    dy: np.ndarray
    angle: np.ndarray
    scale: np.ndarray
    visible: np.ndarray

    @classmethod
    def rest(cls, num_frames: int) -> "_Pose":
        zeros = np.zeros(num_frames, np.float32)
        return cls(zeros, zeros.copy(), zeros.copy(), zeros + 1.0, zeros + 1.0)


def _atomic_pose(motion: str, rng: np.random.Generator, config: SyntheticConfig) -> _Pose:
    """A motion that repeats exactly every `period` frames (an integer, so frame t == t + period)."""
    t = np.arange(config.num_frames, dtype=np.float32)
    period = int(rng.integers(config.period_frames[0], config.period_frames[1] + 1))
    phase = rng.integers(period)
    wave = 2 * np.pi * (t + phase) / period
    direction = rng.choice([-1.0, 1.0])
    pose = _Pose.rest(config.num_frames)
    if motion == "Oscillate":
        pose.dx = rng.uniform(0.12, 0.22) * config.width * np.sin(wave)
    elif motion == "OscillateVertical":
        pose.dy = rng.uniform(0.12, 0.22) * config.height * np.sin(wave)
    elif motion == "Orbit":
        amplitude = rng.uniform(0.12, 0.2) * min(config.height, config.width)
        pose.dx, pose.dy = amplitude * np.cos(wave), direction * amplitude * np.sin(wave)
    elif motion == "Rotate":
        pose.angle = direction * wave
    elif motion == "Pulse":
        pose.scale = 1.0 + rng.uniform(0.25, 0.45) * np.sin(wave)
    elif motion == "Blink":
        pose.visible = ((t + phase) % period < period / 2).astype(np.float32)  # exact on/off
    else:
        raise ValueError(f"unknown atomic motion {motion!r}")
    return pose


def _sub_action(part: str, rng: np.random.Generator, config: SyntheticConfig):
    """Draw one sub-action's parameters; return a function of u in [0, 1) -> (field, values).

    Every sub-action leaves the object in its rest pose at u = 0 and u -> 1, so halves join smoothly.
    """
    if part == "SlideRight":
        d = rng.uniform(0.25, 0.4) * config.width
        return lambda u: ("dx", d * np.sin(np.pi * u))
    if part == "HopUp":
        d = rng.uniform(0.25, 0.4) * config.height
        return lambda u: ("dy", -d * np.sin(np.pi * u))
    if part == "Spin":
        direction = rng.choice([-1.0, 1.0])
        return lambda u: ("angle", direction * 2 * np.pi * u)
    if part == "Grow":
        a = rng.uniform(0.3, 0.5)
        return lambda u: ("scale", 1.0 + a * np.sin(np.pi * u))
    raise ValueError(f"unknown sub-action {part!r}")


def _composite_pose(parts: tuple[str, ...], rng: np.random.Generator,
                    config: SyntheticConfig) -> _Pose:
    """Idle, then each sub-action over an equal share of frames, then idle.

    Parameters are drawn in sorted sub-action order, so "A then B" and "B then A" rendered from the
    same generator state differ only in the order of their frames.
    """
    num_frames = config.num_frames
    idle = int(rng.integers(0, num_frames // 4 + 1))
    lead = int(rng.integers(0, idle + 1))
    span = (num_frames - idle) // len(parts)
    profiles = {part: _sub_action(part, rng, config) for part in sorted(parts)}
    pose = _Pose.rest(num_frames)
    u = np.arange(span, dtype=np.float32) / span
    for k, part in enumerate(parts):
        field, values = profiles[part](u)
        getattr(pose, field)[lead + k * span: lead + (k + 1) * span] = values
    return pose


def _signed_distance(shape: str, dx: np.ndarray, dy: np.ndarray, radius: np.ndarray,
                     angle: np.ndarray) -> np.ndarray:
    """Distance (pixels, < 0 inside) from pixel offsets [T, B, B] to a shape of circumradius r."""
    if shape == "circle":
        return np.sqrt(dx * dx + dy * dy) - radius
    if shape == "cross":
        u = np.abs(dx * np.cos(angle) + dy * np.sin(angle))
        v = np.abs(-dx * np.sin(angle) + dy * np.cos(angle))
        arm = radius / 3
        return np.minimum(np.maximum(u - radius, v - arm), np.maximum(v - radius, u - arm))
    sides = _POLYGON_SIDES[shape]
    dist = None
    for k in range(sides):  # convex polygon: the largest projection onto the side normals
        a = angle + 2 * np.pi * k / sides
        proj = dx * np.cos(a) + dy * np.sin(a)
        dist = proj if dist is None else np.maximum(dist, proj)
    return dist - radius * np.cos(np.pi / sides)


def _coverage(distance: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] from a signed distance (one-pixel soft edge)."""
    return np.clip(0.5 - distance, 0.0, 1.0)


def render_video(action: str | int, rng: np.random.Generator, config: SyntheticConfig,
                 scene: Scene | None = None) -> np.ndarray:
    """Render one video of `action` (class name, or label index into `class_names(config)`).

    Args:
      action: class name from `ACTIONS` or label index.
      rng: generator for every random choice (scene if not given, size, motion, position, noise).
      config: frames, size and nuisance ranges.
      scene: fixed shape / colour / background (drawn from `rng` when None).
    Returns:
      uint8 RGB frames [T, H, W, 3], T = config.num_frames.
    """
    if isinstance(action, (int, np.integer)):
        if not 0 <= action < config.num_classes:
            raise ValueError(f"label index {action} out of range for {config.num_classes} classes")
        action = class_names(config)[action]
    spec = action_spec(action)
    if scene is None:
        scene = draw_scene(rng, config)
    T, H, W = config.num_frames, config.height, config.width
    radius = rng.uniform(*config.object_radius) * min(H, W)
    angle0 = rng.uniform(0, 2 * np.pi)
    if spec.kind == ATOMIC:
        pose = _atomic_pose(spec.parts[0], rng, config)
    else:
        pose = _composite_pose(spec.parts, rng, config)

    # Anchor the motion so the object stays inside the frame over the whole video.
    margin = radius * float(pose.scale.max()) + 1.0
    cx0, cy0 = (_uniform_or_mid(rng, margin - float(d.min()), size - margin - float(d.max()))
                for d, size in ((pose.dx, W), (pose.dy, H)))
    frames = np.repeat(np.round(scene.background).astype(np.uint8)[None], T, axis=0)
    _draw_object(frames, scene, cx0 + pose.dx, cy0 + pose.dy, radius * pose.scale,
                 angle0 + pose.angle, pose.visible)
    # Per-pixel noise: uniform integers in [-k, k] (std ~ sigma), added in int16 to clip once.
    k = int(round(rng.uniform(0.0, config.noise_std_max) * math.sqrt(3)))
    if k == 0:
        return frames
    noisy = rng.integers(-k, k + 1, frames.shape, dtype=np.int16)
    noisy += frames
    return np.clip(noisy, 0, 255, out=noisy).astype(np.uint8)


def _draw_object(frames: np.ndarray, scene: Scene, cx: np.ndarray, cy: np.ndarray,
                 radius: np.ndarray, angle: np.ndarray, visible: np.ndarray) -> None:
    """Blend the object, pose given per frame ([T] each), into uint8 `frames` [T, H, W, 3].

    Works on a [T, B, B] patch around the object only, vectorised over frames.
    """
    T, H, W = frames.shape[:3]
    box = min(int(math.ceil(2 * float(radius.max()))) + 4, H, W)
    x0 = np.clip(np.floor(cx - box / 2), 0, W - box).astype(np.int64)
    y0 = np.clip(np.floor(cy - box / 2), 0, H - box).astype(np.int64)
    column = lambda v: np.asarray(v, np.float32)[:, None, None]  # noqa: E731  [T] -> [T, 1, 1]
    offsets = np.arange(box)
    dx = column(x0) + (offsets[None, None, :] + 0.5) - column(cx)  # [T, 1, B]
    dy = column(y0) + (offsets[None, :, None] + 0.5) - column(cy)  # [T, B, 1]
    r, a = column(radius), column(angle)
    body = _coverage(_signed_distance(scene.shape, dx, dy, r, a)) * column(visible)
    # A dark marker dot towards one corner makes rotation visible on every shape, circles included.
    sides = _POLYGON_SIDES.get(scene.shape)
    corner = a + (np.pi / sides if sides else 0.0)
    mark_x, mark_y = dx - 0.5 * r * np.cos(corner), dy - 0.5 * r * np.sin(corner)
    mark = _coverage(np.sqrt(mark_x * mark_x + mark_y * mark_y) - 0.2 * r) * column(visible)
    rows = y0[:, None, None] + offsets[None, :, None]  # [T, B, 1]
    cols = x0[:, None, None] + offsets[None, None, :]  # [T, 1, B]
    patch = scene.background[rows, cols]  # [T, B, B, 3]
    patch += body[..., None] * (scene.color - patch)
    patch += mark[..., None] * (0.3 * scene.color - patch)
    frames[np.arange(T)[:, None, None], rows, cols] = np.round(patch).astype(np.uint8)


def _uniform_or_mid(rng: np.random.Generator, low: float, high: float) -> float:
    """Uniform in [low, high], or the midpoint if the range is empty (one draw either way)."""
    u = rng.random()
    return low + u * (high - low) if high > low else 0.5 * (low + high)


# ----------------------------------------------------------------------------------------------
# Files


@dataclasses.dataclass(frozen=True)
class _VideoTask:
    class_name: str
    group: int
    clip: int
    path: str
    config: SyntheticConfig


def video_relpath(class_name: str, group: int, clip: int, extension: str = ".avi") -> str:
    """UCF101's relative path, e.g. "Rotate/v_Rotate_g03_c02.avi"."""
    return f"{class_name}/v_{class_name}_g{group:02d}_c{clip:02d}{extension}"


def _video_rngs(config: SyntheticConfig, class_name: str, group: int,
                clip: int) -> tuple[np.random.Generator, np.random.Generator, np.random.Generator]:
    """A video's random streams: (scene, shared by group `group` of every class; clip, and the
    class-shape draw, both of (seed, class, group, clip)). Separate streams, so one setting's draws
    never shift another's."""
    class_id = _ACTIONS_BY_NAME[class_name][0]  # stable across num_classes
    scene = np.random.default_rng([config.seed, group, 0, 0])
    clip_rng = np.random.default_rng([config.seed, class_id, group, clip, 1])
    shape_rng = np.random.default_rng([config.seed, class_id, group, clip, 2])
    return scene, clip_rng, shape_rng


def _scene(config: SyntheticConfig, class_name: str, scene_rng: np.random.Generator,
           shape_rng: np.random.Generator) -> Scene:
    scene = draw_scene(scene_rng, config)
    if shape_rng.random() < config.class_shape_probability:
        scene = dataclasses.replace(scene, shape=family_shape(class_name))
    return scene


def video_scene(config: SyntheticConfig, class_name: str, group: int, clip: int) -> Scene:
    """A video's scene: its group's, with the object's shape replaced by the family's typical one
    with probability `class_shape_probability` (drawn from a stream of its own, so the other
    draws of the video do not depend on it)."""
    scene_rng, _, shape_rng = _video_rngs(config, class_name, group, clip)
    return _scene(config, class_name, scene_rng, shape_rng)


def render_dataset_video(config: SyntheticConfig, class_name: str, group: int,
                         clip: int) -> np.ndarray:
    """The exact frames `generate_dataset` writes for one video, uint8 [T, H, W, 3]."""
    scene_rng, clip_rng, shape_rng = _video_rngs(config, class_name, group, clip)
    return render_video(class_name, clip_rng, config, scene=_scene(config, class_name, scene_rng, shape_rng))


def write_video(path: str, frames: np.ndarray, fps: float, codec: str = "MJPG") -> None:
    """Encode RGB uint8 [T, H, W, 3] to `path` atomically (temp name keeps the extension)."""
    extension = os.path.splitext(path)[1]
    # VideoWriter picks the container from the file extension, so the temp name must end in it.
    with atomic_path(path, suffix=extension) as tmp:
        height, width = frames.shape[1:3]
        writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*codec), float(fps), (width, height))
        if not writer.isOpened():
            raise RuntimeError(
                f"OpenCV cannot write codec {codec!r} to a {extension!r} file ({path}); "
                f"pairs that work with opencv-python-headless: {WORKING_CODECS}")
        try:
            for frame in np.ascontiguousarray(frames[..., ::-1]):  # RGB -> BGR
                writer.write(frame)
        finally:
            writer.release()


def _make_video(task: _VideoTask) -> bool:
    """Render and write one video unless it already exists; True if it was written."""
    if os.path.exists(task.path):
        return False
    frames = render_dataset_video(task.config, task.class_name, task.group, task.clip)
    write_video(task.path, frames, task.config.fps, task.config.codec)
    return True


def _init_worker() -> None:
    cv2.setNumThreads(1)  # one process per core already; OpenCV threads would oversubscribe


def _tasks(config: SyntheticConfig, out_dir: str) -> Iterator[_VideoTask]:
    for name in class_names(config):
        for index in range(config.videos_per_class):
            group, clip = divmod(index, config.clips_per_group)
            rel = video_relpath(name, group + 1, clip + 1, config.extension)
            yield _VideoTask(name, group + 1, clip + 1, os.path.join(out_dir, "videos", rel), config)


def _check_config_matches(config: SyntheticConfig, out_dir: str) -> None:
    """A rerun must resume the same dataset, never mix two configs in one tree."""
    path = os.path.join(out_dir, CONFIG_FILE)
    wanted = _json_config(config)
    if os.path.exists(path):
        found = read_json(path, what="synthetic dataset config")
        diff = sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))
        if diff:
            raise ValueError(f"{out_dir} already holds a synthetic dataset made with a different "
                             f"config (fields {diff} differ, see {path}); use a new output_dir")
    else:
        atomic_write_json(path, wanted)


def _json_config(config: SyntheticConfig) -> dict[str, Any]:
    """The config as JSON-ready values (tuples as lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}


def _remove_stale_temps(out_dir: str, names: list[str]) -> None:
    """Drop half-written temp files a killed run left behind."""
    for name in names:
        folder = os.path.join(out_dir, "videos", name)
        for entry in os.listdir(folder):
            if ".tmp-" in entry:
                os.remove(os.path.join(folder, entry))


def write_split_lists(config: SyntheticConfig, out_dir: str) -> dict[str, str]:
    """Write classInd.txt, trainlist01.txt and testlist01.txt in UCF101's line formats."""
    names = class_names(config)
    test_groups = set(config.test_groups)
    train_lines, test_lines = [], []
    for task in _tasks(config, out_dir):
        rel = video_relpath(task.class_name, task.group, task.clip, config.extension)
        if task.group in test_groups:
            test_lines.append(rel)
        else:
            train_lines.append(f"{rel} {names.index(task.class_name) + 1}")
    files = {
        "classInd": "\n".join(f"{i + 1} {name}" for i, name in enumerate(names)),
        "trainlist01": "\n".join(train_lines),
        "testlist01": "\n".join(test_lines),
    }
    paths = {}
    for stem, text in files.items():
        paths[stem] = os.path.join(out_dir, "splits", f"{stem}.txt")
        atomic_write_text(paths[stem], text + "\n")
    return paths


def generate_dataset(config: SyntheticConfig, out_dir: str, workers: int = 2,
                     progress: bool = False) -> dict[str, Any]:
    """Write every video of `config` under `out_dir` plus the UCF101 split lists.

    Resumable: videos already present are skipped (each file is renamed into place only when
    complete). The frames of a video depend only on (seed, class, group, clip), never on `workers`.
    Returns a summary dict (counts, classes, split sizes, paths, seconds).
    """
    if workers < 1:
        raise ValueError(f"workers={workers}: must be >= 1")
    start = time.perf_counter()
    names = class_names(config)
    os.makedirs(out_dir, exist_ok=True)
    _check_codec(config, out_dir)
    _check_config_matches(config, out_dir)
    for name in names:
        os.makedirs(os.path.join(out_dir, "videos", name), exist_ok=True)
    _remove_stale_temps(out_dir, names)

    tasks = list(_tasks(config, out_dir))
    with contextlib.ExitStack() as stack:
        if workers == 1:
            results: Iterator[bool] = map(_make_video, tasks)
        else:
            # spawn, not fork: a forked child of a process whose OpenCV or TensorFlow thread pools
            # are running can deadlock (seen in the test suite). This module and its imports do
            # not load TensorFlow, so a spawned worker starts in well under a second.
            context = multiprocessing.get_context("spawn")
            pool = stack.enter_context(context.Pool(workers, initializer=_init_worker))
            results = pool.imap_unordered(_make_video, tasks, chunksize=4)
        if progress:
            from tqdm import tqdm  # only needed for the bar

            results = stack.enter_context(tqdm(results, total=len(tasks), unit="video",
                                               desc="synthetic videos"))
        written = sum(results)

    split_paths = write_split_lists(config, out_dir)
    seconds = time.perf_counter() - start
    test_groups = list(config.test_groups)
    num_test = sum(task.group in test_groups for task in tasks)
    return {
        "out_dir": out_dir,
        "classes": names,
        "num_classes": len(names),
        "num_atomic": sum(action_spec(n).kind == ATOMIC for n in names),
        "num_composite": sum(action_spec(n).kind == COMPOSITE for n in names),
        "num_videos": len(tasks),
        "videos_written": written,
        "videos_skipped": len(tasks) - written,
        "train_videos": len(tasks) - num_test,
        "test_videos": num_test,
        "train_groups": [g for g in range(1, config.num_groups + 1) if g not in test_groups],
        "test_groups": test_groups,
        "frames": config.num_frames,
        "size": [config.height, config.width],
        "fps": config.fps,
        "codec": config.codec,
        "extension": config.extension,
        "split_files": split_paths,
        "seconds": round(seconds, 2),
        "videos_per_second": round(written / seconds, 2) if written else 0.0,
    }


def _check_codec(config: SyntheticConfig, out_dir: str) -> None:
    """Fail fast, before any work, if this OpenCV build cannot write the requested codec."""
    probe = os.path.join(out_dir, f"codec-probe{config.extension}")
    try:
        write_video(probe, np.zeros((2, 16, 16, 3), np.uint8), config.fps, config.codec)
    finally:
        if os.path.exists(probe):
            os.remove(probe)
