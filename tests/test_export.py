import dataclasses

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf

from tbkeras import export
from tests import float32_tolerances as f32


def _tiny_classifier(num_classes=3, size=16):
    inputs = keras.Input([None, size, size, 3])
    x = keras.layers.Conv3D(4, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling3D()(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x))


def _jpeg(frame):
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    return buf.tobytes()


def test_saved_model_matches_keras_model(tmp_path):
    model = _tiny_classifier()
    cfg = export.ExportConfig(clip_length=4, crop_size=16, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3),
                              class_names=("a", "b", "c"))
    path = export.export_classifier(model, str(tmp_path / "student"), cfg)
    served = tf.saved_model.load(path)
    clips = np.random.default_rng(0).uniform(size=(2, 4, 16, 16, 3)).astype(np.float32)
    out = served.signatures["serving_default"](clips=tf.constant(clips))
    normalised = (clips - np.array(cfg.mean, np.float32)) / np.array(cfg.std, np.float32)
    expected = model(normalised, training=False).numpy()
    # The SavedModel's graph (its own normalisation, maybe other kernels) vs eager Keras: estimate 7
    # of tests/float32_tolerances.py. Skipping the normalisation, or std for mean, is O(1) off.
    np.testing.assert_allclose(out["logits"].numpy(), expected, **f32.network_tolerance(expected))
    # A softmax of 3 (bound 5), then numpy's float32 sum of 3 probabilities.
    logit_range = np.ptp(out["logits"].numpy(), axis=-1).max()
    np.testing.assert_allclose(out["probabilities"].numpy().sum(-1), 1.0,
                               rtol=f32.softmax_rtol(3, logit_range) + f32.reduction_rtol(3))
    np.testing.assert_array_equal(out["classes"].numpy(), expected.argmax(-1))
    assert list(export.load_class_names(path)) == ["a", "b", "c"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student"]


def test_jpeg_signature_centre_crops_like_numpy(tmp_path):
    model = _tiny_classifier(size=16)
    path = export.export_classifier(model, str(tmp_path / "m"), export.ExportConfig(clip_length=2, crop_size=16))
    served = tf.saved_model.load(path)
    rng = np.random.default_rng(1)
    # 16 x 24 frames: short side already 16, so the centre crop is columns 4..20, no resize.
    frames = rng.integers(0, 255, size=(2, 16, 24, 3), dtype=np.uint8)
    jpegs = tf.constant([[_jpeg(f) for f in frames]])
    out = served.signatures["serve_jpeg"](frames=jpegs)
    decoded = np.stack([tf.io.decode_jpeg(_jpeg(f)).numpy() for f in frames]).astype(np.float32) / 255.0
    expected = model(decoded[None, :, :, 4:20, :], training=False).numpy()
    # The same JPEG decoder on both sides; the graph's / 255 and network vs eager: estimate 7.
    np.testing.assert_allclose(out["logits"].numpy(), expected, **f32.network_tolerance(expected))


def test_jpeg_signature_crops_then_resizes_like_opencv(tmp_path):
    # 21 x 37 frames for a 16 px model: the centre 21 x 21 square (columns 8..29), then a bilinear
    # resize to 16 x 16 without antialiasing, as the evaluation (`pipelines.clip_views`). OpenCV's
    # INTER_LINEAR (half-pixel centres, no antialiasing) is the independent reference.
    model = _tiny_classifier(size=16)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    path = export.export_classifier(model, str(tmp_path / "m"),
                                    export.ExportConfig(clip_length=2, crop_size=16, mean=mean, std=std))
    served = tf.saved_model.load(path)
    rng = np.random.default_rng(5)
    frames = [_jpeg(rng.integers(0, 255, size=(21, 37, 3), dtype=np.uint8)) for _ in range(2)]
    out = served.signatures["serve_jpeg"](frames=tf.constant([frames]))
    decoded = [tf.io.decode_jpeg(f).numpy().astype(np.float32) for f in frames]
    clip = np.stack([cv2.resize(d[:, 8:29], (16, 16), interpolation=cv2.INTER_LINEAR) for d in decoded]) / 255.0
    expected = model((clip[None] - np.array(mean, np.float32)) / np.array(std, np.float32), training=False).numpy()
    # OpenCV's bilinear weights are fixed-point-free in float32 but summed in another order: a few
    # roundings of values <= 255, then the network two ways (estimate 7). Resizing the whole frame
    # first, or with antialiasing, changes the input pixels by whole grey levels.
    np.testing.assert_allclose(out["logits"].numpy(), expected, **f32.network_tolerance(expected))


def test_video_signature_averages_the_evaluation_views(tmp_path):
    # 7 frames of 20 x 20; K = 2 evenly spaced clips of 2 frames at stride 3; C = 3 crops, which on
    # a square frame are all the whole frame. Each view resized 20 -> 16 (OpenCV as reference).
    model = _tiny_classifier(size=16)
    cfg = export.ExportConfig(clip_length=2, crop_size=16, num_clips=2, num_crops=3, stride=3)
    served = tf.saved_model.load(export.export_classifier(model, str(tmp_path / "m"), cfg))
    rng = np.random.default_rng(6)
    jpegs = [_jpeg(rng.integers(0, 255, size=(20, 20, 3), dtype=np.uint8)) for _ in range(7)]
    out = served.signatures["serve_video"](frames=tf.constant([jpegs]))
    decoded = np.stack([tf.io.decode_jpeg(j).numpy().astype(np.float32) for j in jpegs])
    small = np.stack([cv2.resize(d, (16, 16), interpolation=cv2.INTER_LINEAR) for d in decoded]) / 255.0
    # evenly_spaced_clips: span (2-1)*3+1 = 4, last start 7-4 = 3, starts 0 and 3: frames [0, 3], [3, 6].
    clips = np.stack([small[[0, 3]], small[[3, 6]]])
    probabilities = tf.nn.softmax(model(clips, training=False)).numpy()
    expected = np.mean(np.repeat(probabilities, 3, axis=0), axis=0)
    np.testing.assert_allclose(out["probabilities"].numpy()[0], expected, rtol=0,
                               atol=2 * f32.NETWORK_RTOL * np.abs(model(clips).numpy()).max() + f32.softmax_rtol(3, 1.0))
    assert sorted(out) == ["classes", "probabilities"]


def test_export_config_round_trips_and_rejects_bad_fields(tmp_path):
    cfg = export.ExportConfig(clip_length=2, crop_size=16, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3),
                              num_clips=4, num_crops=1, stride=1, short_side=24, fps=12.5, jpeg_quality=80)
    path = export.export_classifier(_tiny_classifier(), str(tmp_path / "m"), cfg)
    assert export.load_export_config(path) == dataclasses.replace(cfg, class_names=("0", "1", "2"))
    with pytest.raises(ValueError, match="num_crops must be 1 or 3"):
        export.ExportConfig(num_crops=2)
    with pytest.raises(ValueError, match="mean is set but std is not"):
        export.ExportConfig(mean=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="jpeg_quality"):
        export.ExportConfig(jpeg_quality=0)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nothing")):
        export.load_export_config(str(tmp_path / "nothing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no saved_model.pb"):
        export.load_export_config(str(tmp_path / "empty"))


def test_class_name_count_mismatch_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="2 names but the model outputs 3"):
        export.export_classifier(_tiny_classifier(), str(tmp_path / "m"),
                                 export.ExportConfig(class_names=("a", "b"), crop_size=16))
