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


def test_class_name_count_mismatch_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="2 names but the model outputs 3"):
        export.export_classifier(_tiny_classifier(), str(tmp_path / "m"),
                                 export.ExportConfig(class_names=("a", "b"), crop_size=16))
