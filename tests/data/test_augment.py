import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from tbkeras.data import augment
from tests.data.shard_fixtures import column_x, frame_pixels

H, W, S, T = 32, 40, 16, 4
PIX = augment.PixelFormat(S)
SEED = tf.constant([3, 4], tf.int64)

# Every op fires on every clip, so a per-frame draw could not hide.
ALWAYS = augment.AugmentConfig(
    crop_side=(0.5, 0.9), crop_aspect=(0.75, 1.33), flip_prob=1.0, brightness_prob=1.0,
    contrast_prob=1.0, saturation_prob=1.0, hue_prob=1.0, grayscale_prob=0.0, channel_drop_prob=0.0,
    erase_prob=1.0, erase_count=2)
NOTHING = augment.AugmentConfig(
    crop_side=(1.0, 1.0), flip_prob=0.0, brightness_prob=0.0, contrast_prob=0.0, saturation_prob=0.0,
    hue_prob=0.0, grayscale_prob=0.0, channel_drop_prob=0.0, erase_prob=0.0)


def _textured_frame(seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(H, W, 3), dtype=np.uint8)


def _identical_clip_frames():
    """T copies of one frame in separate rows, and 3 clips over them."""
    frames = np.stack([_textured_frame()] * T)
    ids = np.tile(np.arange(T), (3, 1))
    return tf.constant(frames), tf.constant(ids, tf.int32)


def _assert_frames_identical(clips):
    clips = np.asarray(clips)
    for c in range(clips.shape[0]):
        for t in range(1, clips.shape[1]):
            np.testing.assert_allclose(clips[c, t], clips[c, 0], atol=1e-6)


@pytest.mark.parametrize("config", [ALWAYS, augment.STRONG, augment.WEAK,
                                    dataclasses.replace(ALWAYS, grayscale_prob=1.0),
                                    dataclasses.replace(ALWAYS, channel_drop_prob=1.0)])
def test_every_frame_of_a_clip_gets_the_same_augmentation(config):
    frames, ids = _identical_clip_frames()
    for i in range(3):
        out = augment.augment_clips(frames, ids, tf.constant([i, 1], tf.int64), config, PIX).numpy()
        assert out.shape == (3, T, S, S, 3) and out.dtype == np.float32
        assert 0.0 <= out.min() and out.max() <= 1.0
        _assert_frames_identical(out)


ONLY = {  # configs that draw exactly one colour op on every clip
    "contrast": dataclasses.replace(NOTHING, contrast_prob=1.0, contrast=(1.5, 1.5)),
    "hue": dataclasses.replace(NOTHING, hue_prob=1.0, hue=(0.1, 0.1)),
    "saturation": dataclasses.replace(NOTHING, saturation_prob=1.0, saturation=(0.5, 0.5)),
    "brightness": dataclasses.replace(NOTHING, brightness_prob=1.0, brightness=(0.7, 0.7)),
    "grayscale": dataclasses.replace(NOTHING, grayscale_prob=1.0, gamma_prob=0.0),
    "channel_drop": dataclasses.replace(NOTHING, channel_drop_prob=1.0),
}
LUMA = np.array([0.299, 0.587, 0.114])


def _full_frame_clips():
    frames, ids = _identical_clip_frames()
    return augment.crop_clips(frames, ids, tf.constant([[0, 0, H, W, 0]] * 3), PIX)


def test_each_colour_op_matches_its_definition_and_keeps_frames_identical():
    x = _full_frame_clips()
    xn = x.numpy()
    gray = (xn @ LUMA)[..., None]
    mean = gray.mean(axis=(2, 3), keepdims=True)
    expected = {
        "contrast": np.clip(mean + 1.5 * (xn - mean), 0, 1),
        "saturation": np.clip(gray + 0.5 * (xn - gray), 0, 1),
        "brightness": np.clip(0.7 * xn, 0, 1),
        "grayscale": np.repeat(gray, 3, axis=-1),
    }
    for name, config in ONLY.items():
        out = augment.color_augment(x, SEED, config).numpy()
        _assert_frames_identical(out)
        assert np.abs(out - xn).max() > 0.05, f"{name} changed nothing"
        if name in expected:
            np.testing.assert_allclose(out, expected[name], atol=1e-5, err_msg=name)
        if name == "hue":  # a rotation of chroma: luma stays (where not clamped), colours move like HSV's
            inside = ((out > 0) & (out < 1)).all(axis=-1)
            np.testing.assert_allclose((out @ LUMA)[inside], (xn @ LUMA)[inside], atol=1e-4)
            hsv_shifted = tf.image.adjust_hue(x, 0.1).numpy()
            assert np.abs(out - hsv_shifted).mean() < np.abs(xn - hsv_shifted).mean()
        if name == "channel_drop":
            zero = (out == 0).all(axis=(1, 2, 3))  # [clips, 3]
            assert (zero.sum(axis=1) == 1).all()


def test_gamma_follows_grayscale():
    x = _full_frame_clips()
    config = dataclasses.replace(ONLY["grayscale"], gamma_prob=1.0, gamma=(2.0, 2.0))
    gray = (x.numpy() @ LUMA)[..., None]
    np.testing.assert_allclose(augment.color_augment(x, SEED, config).numpy(),
                               np.repeat(gray ** 2, 3, axis=-1), atol=1e-5)


def test_compiled_gamma_matches_numpy_pow_including_black_pixels():
    frame = _textured_frame()
    frame[:4] = 0  # log 0 = -inf must still give 0, not nan
    frames = tf.constant(np.stack([frame] * T))
    ids = tf.constant(np.tile(np.arange(T), (3, 1)), tf.int32)
    config = dataclasses.replace(NOTHING, grayscale_prob=1.0, gamma_prob=1.0, gamma=(0.6, 1.6))
    plain = augment.crop_clips(frames, ids, tf.constant([[0, 0, H, W, 0]] * 3), PIX).numpy()
    out = augment.crop_clips(frames, ids, tf.constant([[0, 0, H, W, 0]] * 3), PIX, config, SEED).numpy()
    gray = plain @ LUMA  # [C, T, S, S]
    gammas = [np.log(out[c, 0, -1, -1, 0]) / np.log(gray[c, 0, -1, -1]) for c in range(3)]  # as drawn
    assert len({round(g, 3) for g in gammas}) == 3 and all(0.6 <= g <= 1.6 for g in gammas)
    for c, g in enumerate(gammas):
        np.testing.assert_allclose(out[c], np.repeat((gray[c] ** g)[..., None], 3, axis=-1), atol=2e-5)
    assert (out[:, :, 0] == 0).all() and np.isfinite(out).all()


@pytest.mark.parametrize("field,value,message", [
    ("gamma", (0.0, 1.0), "gamma must be > 0"),
    ("flip_prob", 1.5, "flip_prob must be in"),
    ("hue", (0.1, -0.1), "low <= high"),
    ("crop_side", (0.5, 1.2), "at most 1"),
    ("erase_count", -1, "erase_count"),
])
def test_bad_augment_settings_name_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(augment.STRONG, **{field: value})


def test_random_erase_zeroes_the_same_box_in_every_frame():
    x = _full_frame_clips()
    out = augment.random_erase(x, SEED, ALWAYS).numpy()
    _assert_frames_identical(out)
    erased = (out == 0).all(axis=(1, 4))  # [clips, S, S]
    assert erased.any(axis=(1, 2)).all()
    np.testing.assert_array_equal(out[~np.broadcast_to(erased[:, None, :, :, None], out.shape)],
                                  x.numpy()[~np.broadcast_to(erased[:, None, :, :, None], out.shape)])


def test_flip_flips_and_crop_crops():
    frame = frame_pixels(0, H, W)
    frames = tf.constant(frame[None])
    ids = tf.zeros([1, 1], tf.int32)
    plain = augment.augment_clips(frames, ids, SEED, NOTHING, PIX).numpy()[0, 0]
    flipped = augment.augment_clips(frames, ids, SEED, dataclasses.replace(NOTHING, flip_prob=1.0), PIX).numpy()[0, 0]
    np.testing.assert_allclose(flipped, plain[:, ::-1], atol=1e-6)
    xs = column_x(plain, W)
    assert xs[0] < 2 and xs[-1] > W - 3  # full frame
    half = dataclasses.replace(NOTHING, crop_side=(0.5, 0.5))
    for i in range(5):
        xs = column_x(augment.augment_clips(frames, ids, tf.constant([i, 0], tf.int64), half, PIX).numpy()[0, 0], W)
        span = xs[-1] - xs[0] + (W / 2) / S  # first to last column centre, plus one output pixel
        assert abs(span - W / 2) < 1.5
        assert xs[0] > -1 and xs[-1] < W


def test_random_crop_boxes_respect_ranges():
    h, w = 120, 160
    config = dataclasses.replace(NOTHING, crop_side=(0.4, 0.8), crop_aspect=(0.5, 2.0), flip_prob=0.5)
    top, left, height, width, flip = augment.random_crop_boxes(SEED, 500, h, w, config).numpy().T
    side = np.sqrt((height / h) * (width / w))
    assert side.min() >= 0.4 - 0.01 and side.max() <= 0.8 + 0.01
    ratio = (width / w) / (height / h)
    assert ratio.min() < 0.7 and ratio.max() > 1.4  # the aspect really varies
    assert top.min() >= 0 and (top + height).max() <= h and left.min() >= 0 and (left + width).max() <= w
    assert len(set(top)) > 20 and len(set(left)) > 20  # positions really vary
    assert 0.4 < flip.mean() < 0.6


def test_augmentation_is_seeded():
    frames, ids = _identical_clip_frames()
    a = augment.augment_clips(frames, ids, SEED, augment.STRONG, PIX).numpy()
    b = augment.augment_clips(frames, ids, SEED, augment.STRONG, PIX).numpy()
    c = augment.augment_clips(frames, ids, tf.constant([9, 9], tf.int64), augment.STRONG, PIX).numpy()
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 0.01


@pytest.mark.parametrize("num_crops,lefts", [(3, [0, 4, 8]), (1, [4])])
def test_eval_crops_cover_both_ends_and_centre_of_the_long_side(num_crops, lefts):
    frame = tf.constant(frame_pixels(0, H, W)[None])
    boxes = augment.eval_crop_boxes(H, W, num_crops)
    out = augment.crop_clips(frame, tf.zeros([num_crops, 1], tf.int32), boxes, PIX).numpy()
    for crop, left in zip(out[:, 0], lefts):
        xs = column_x(crop, W)
        # Short side (32) resized to 16: output column j comes from x = left + 2j + 0.5.
        np.testing.assert_allclose(xs, left + 2 * np.arange(S) + 0.5, atol=1.0)


def test_eval_crops_of_a_portrait_frame_run_along_its_height():
    boxes = augment.eval_crop_boxes(40, 32, 3).numpy()
    np.testing.assert_array_equal(boxes, [[0, 0, 32, 32, 0], [4, 0, 32, 32, 0], [8, 0, 32, 32, 0]])
    with pytest.raises(ValueError, match="num_crops"):
        augment.eval_crop_boxes(40, 32, 2)


def test_normalize():
    x = tf.constant([[0.5, 0.25, 1.0]])
    np.testing.assert_allclose(augment.normalize(x, (0.5, 0.25, 0.0), (0.5, 0.25, 2.0)).numpy(), [[0, 0, 0.5]])


def test_pixel_format_rejects_bad_fields():
    for kwargs, match in [({"dtype": "float16"}, "dtype"), ({"mean": (0.5,) * 3}, "both mean and std"),
                          ({"mean": (0.5, 0.5), "std": (1.0, 1.0)}, "3 values"),
                          ({"mean": (0.5,) * 3, "std": (1.0, 0.0, 1.0)}, "std > 0"), ({"crop_size": 0}, "crop_size")]:
        with pytest.raises(ValueError, match=match):
            augment.PixelFormat(**{"crop_size": S, **kwargs})


@pytest.mark.parametrize("config", [None, augment.STRONG])
def test_bfloat16_output_is_the_float32_output_rounded(config):
    frames, ids = _identical_clip_frames()
    for pixels in [PIX, augment.PixelFormat(S, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))]:
        full = augment.augment_clips(frames, ids, SEED, config, pixels).numpy()
        half = augment.augment_clips(frames, ids, SEED, config, dataclasses.replace(pixels, dtype="bfloat16"))
        assert half.dtype == tf.bfloat16 and half.shape == full.shape
        np.testing.assert_array_equal(tf.cast(half, tf.float32).numpy(), tf.cast(tf.cast(full, tf.bfloat16), tf.float32).numpy())
