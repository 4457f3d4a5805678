import keras
import numpy as np
import pytest
import tensorflow as tf

from tests import float32_tolerances as f32
from tests.models.model_checks import numpy_conv3d, run_model_checks
from tbkeras.models import R3D18, R3D50, build_backbone, r3d18, r3d50
from tbkeras.models.r3d_layers import SubsampledConv3D, TemporallyDilatedConv3D, use_subsampled_strides


def _trainable_params(model) -> int:
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def _clip(batch, frames, size, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, (batch, frames, size, size, 3)).astype("float32")


def test_parameter_counts_match_pytorch():
    # PyTorch's parameters() = Keras's trainable weights (BatchNorm moving statistics are extra).
    # Dilation changes no shapes, so the plain layer4 has the same count.
    # A StatelessScope defers variable initialisation: only shapes are created, which is fast.
    with keras.StatelessScope():
        assert _trainable_params(r3d18()) == 33_166_272
        assert _trainable_params(r3d50()) == 31_634_496


def test_r3d18_checks_and_dilated_layer4_keeps_4_of_16_frames(tmp_path):
    model = run_model_checks(
        lambda: r3d18(width_multiplier=0.125), _clip(2, 16, 32), {"pooled": (2, 64), "temporal": (2, 4, 64)},
        tmp_path,
    )
    assert model.feature_dim == 64
    # "pooled" is the temporal mean of "temporal": a mean of 4 features >= 0 (after a ReLU) on each
    # side, <= 4 U relative (bound 1). The spatial mean instead, or the last slice, is O(1) off.
    out = model(_clip(2, 16, 32, seed=1), training=False)
    np.testing.assert_allclose(out["pooled"], np.mean(out["temporal"], axis=1), rtol=2 * f32.reduction_rtol(4))


def test_r3d18_without_dilation_halves_time_in_layer4():
    out = r3d18(width_multiplier=0.125, dilated_layer4=False)(_clip(1, 16, 32), training=False)
    assert out["temporal"].shape == (1, 2, 64)


def test_r3d18_accepts_any_clip_length():
    model = r3d18(width_multiplier=0.125)
    for frames, size in [(8, 32), (5, 40)]:
        out = model(_clip(1, frames, size), training=False)
        assert out["temporal"].shape == (1, -(-frames // 4), 64)  # two stride-2 stages: ceil(T / 4)


def test_r3d50_checks_keep_every_frame(tmp_path):
    model = run_model_checks(
        lambda: r3d50(width_multiplier=0.125), _clip(1, 8, 32), {"pooled": (1, 256), "temporal": (1, 8, 256)},
        tmp_path,
    )
    assert model.feature_dim == 256


def test_stem_conv_pads_like_pytorch():
    model = r3d18(width_multiplier=0.125)
    stem = keras.Model(model.input, model.get_layer("stem_conv").output)
    x = _clip(1, 4, 10, seed=2)
    kernel = model.get_layer("stem_conv").kernel.numpy()
    expected = numpy_conv3d(x, kernel, strides=(1, 2, 2), padding=(1, 3, 3))
    # Each output is a float32 dot product of 3 * 7 * 7 * 3 = 441 terms: bound 1, elementwise.
    # Padding shifted by one pixel changes outputs by O(1).
    magnitudes = numpy_conv3d(np.abs(x), np.abs(kernel), strides=(1, 2, 2), padding=(1, 3, 3))
    f32.assert_within(stem(x), expected, f32.reduction_rtol(441) * magnitudes, "stem conv")


@pytest.mark.parametrize("frames", [8, 7])
def test_temporally_dilated_conv_matches_pytorch_semantics(frames):
    layer = TemporallyDilatedConv3D(5, (3, 3, 3), (1, 2, 2), temporal_dilation=2)
    x = np.random.default_rng(3).normal(size=(2, frames, 9, 8, 4)).astype("float32")
    y = layer(x)
    conv = dict(strides=(1, 2, 2), padding=(2, 1, 1), dilation=(2, 1, 1))
    expected = numpy_conv3d(x, layer.kernel.numpy(), **conv)
    assert y.shape == expected.shape == (2, frames, 5, 4, 5)
    # A float32 dot product of 3 * 3 * 3 * 4 = 108 terms per output (bound 1).
    magnitudes = numpy_conv3d(np.abs(x), np.abs(layer.kernel.numpy()), **conv)
    f32.assert_within(y, expected, f32.reduction_rtol(108) * magnitudes, "dilated conv")


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="width_multiplier"):
        r3d18(width_multiplier=0)
    with pytest.raises(ValueError, match="strides"):
        TemporallyDilatedConv3D(4, (3, 3, 3), (2, 2, 2))


@pytest.mark.parametrize("make", [
    lambda mode: r3d18(width_multiplier=0.125, strided_conv=mode),
    lambda mode: r3d50(width_multiplier=0.0625, strided_conv=mode),
], ids=["r3d18", "r3d50"])
def test_subsampled_strides_give_the_native_outputs_and_gradients(make):
    native, subsampled = make("native"), make("subsample")
    subsampled.set_weights(native.get_weights())
    x = tf.random.stateless_uniform([2, 8, 33, 31, 3], seed=[1, 2])
    results = []
    for model in (native, subsampled):
        with tf.GradientTape() as tape:
            out = model(x, training=True)
            loss = tf.reduce_sum(out["temporal"] ** 2)
        results.append((out, tape.gradient(loss, model.trainable_variables)))
    (out_n, grads_n), (out_s, grads_s) = results
    # The same products summed by other conv kernels: estimate 7 of tests/float32_tolerances.py,
    # at the scale of each output. A stride sampling the wrong pixels changes outputs by O(1).
    for key in ("pooled", "temporal"):
        np.testing.assert_allclose(out_s[key].numpy(), out_n[key].numpy(), **f32.network_tolerance(out_n[key].numpy()))
    for g_n, g_s in zip(grads_n, grads_s):
        # The backward pass is twice as deep and divides by training-mode BN's batch deviations
        # (gradients ~1e4): 10 NETWORK_RTOL relative, NETWORK_RTOL at the scale of each gradient.
        np.testing.assert_allclose(g_s.numpy(), g_n.numpy(), rtol=10 * f32.NETWORK_RTOL,
                                   atol=f32.NETWORK_RTOL * np.abs(g_n.numpy()).max())
    inference_n, inference_s = native(x, training=False), subsampled(x, training=False)
    np.testing.assert_allclose(inference_s["pooled"].numpy(), inference_n["pooled"].numpy(),
                               **f32.network_tolerance(inference_n["pooled"].numpy()))
    assert any(isinstance(layer, SubsampledConv3D) for layer in subsampled.layers)
    assert not any(isinstance(layer, SubsampledConv3D) for layer in native.layers)


def test_strided_conv_choice_is_checked_and_auto_is_native_in_a_model_built_directly():
    with pytest.raises(ValueError, match="strided_conv must be one of"):
        r3d18(width_multiplier=0.125, strided_conv="fast")
    assert use_subsampled_strides("auto") is False  # no training shape to measure: TF's kernels
    assert use_subsampled_strides("subsample") is True


def test_build_backbone_by_name_is_the_timebalance_layout():
    r18 = build_backbone("r3d18", width_multiplier=0.125, strided_conv="subsample", name="b")
    assert isinstance(r18, R3D18) and r18.name == "b" and r18.strided_conv == "subsample"
    assert r18.get_config()["dilated_layer4"] is True  # TCLR's layer4, as TimeBalance trains it
    assert isinstance(build_backbone("r3d50", width_multiplier=0.0625), R3D50)
    with pytest.raises(ValueError, match="unknown backbone 'r2plus1d'; valid: r3d18, r3d50"):
        build_backbone("r2plus1d")
