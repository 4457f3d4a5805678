import keras
import numpy as np
import pytest

from tests import float32_tolerances as f32
from tests.models.model_checks import numpy_conv3d
from tbkeras.models import Classifier, r3d18
from tbkeras.models.torch_weights import load_torchvision_r3d18_weights

WIDTHS = (8, 16, 32, 64)  # r3d18(width_multiplier=0.125)


def _torchvision_r3d18_state_dict(num_classes=5, seed=0):
    """Random arrays with torchvision r3d_18's names and PyTorch shapes, written from its layout."""
    rng = np.random.default_rng(seed)
    state = {}

    def conv(name, out_ch, in_ch, kernel):
        state[f"{name}.weight"] = rng.normal(0, 0.1, (out_ch, in_ch, *kernel)).astype("float32")

    def bn(name, ch):
        state[f"{name}.weight"] = rng.uniform(0.5, 1.5, ch).astype("float32")
        state[f"{name}.bias"] = rng.normal(0, 0.1, ch).astype("float32")
        state[f"{name}.running_mean"] = rng.normal(0, 0.1, ch).astype("float32")
        state[f"{name}.running_var"] = rng.uniform(0.5, 1.5, ch).astype("float32")
        state[f"{name}.num_batches_tracked"] = np.array(7)

    conv("stem.0", WIDTHS[0], 3, (3, 7, 7))
    bn("stem.1", WIDTHS[0])
    in_ch = WIDTHS[0]
    for layer, width in enumerate(WIDTHS, start=1):
        for block in range(2):
            prefix = f"layer{layer}.{block}"
            conv(f"{prefix}.conv1.0", width, in_ch, (3, 3, 3))
            bn(f"{prefix}.conv1.1", width)
            conv(f"{prefix}.conv2.0", width, width, (3, 3, 3))
            bn(f"{prefix}.conv2.1", width)
            if layer > 1 and block == 0:
                conv(f"{prefix}.downsample.0", width, in_ch, (1, 1, 1))
                bn(f"{prefix}.downsample.1", width)
            in_ch = width
    state["fc.weight"] = rng.normal(0, 0.1, (num_classes, WIDTHS[-1])).astype("float32")
    state["fc.bias"] = rng.normal(0, 0.1, num_classes).astype("float32")
    return state


def test_ported_stem_and_classifier_match_numpy():
    state = _torchvision_r3d18_state_dict()
    backbone, classifier = r3d18(width_multiplier=0.125), Classifier(5)
    load_torchvision_r3d18_weights(backbone, {f"module.{k}": v for k, v in state.items()}, prefix="module.",
                                   classifier=classifier)

    x = np.random.default_rng(1).uniform(0, 1, (1, 4, 12, 12, 3)).astype("float32")
    stem = keras.Model(backbone.input, backbone.get_layer("stem_bn").output)
    kernel = np.transpose(state["stem.0.weight"], (2, 3, 4, 1, 0))
    conv = numpy_conv3d(x, kernel, (1, 2, 2), (1, 3, 3))
    scale = state["stem.1.weight"] / np.sqrt(state["stem.1.running_var"] + 1e-5)
    expected = (conv - state["stem.1.running_mean"]) * scale + state["stem.1.bias"]
    # The conv: a float32 dot product of 441 terms (bound 1), scaled by BatchNorm; BatchNorm's own
    # few roundings and rsqrt (8 U and FUNCTION_ULPS) of its terms. A kernel not transposed from
    # PyTorch's layout, or statistics of another layer, are O(1) off.
    magnitudes = numpy_conv3d(np.abs(x), np.abs(kernel), (1, 2, 2), (1, 3, 3))
    bn_terms = (np.abs(conv) + np.abs(state["stem.1.running_mean"])) * np.abs(scale) + np.abs(state["stem.1.bias"])
    bound = f32.reduction_rtol(441) * magnitudes * np.abs(scale) + (8 * f32.U + f32.FUNCTION_ULPS * f32.EPS) * bn_terms
    f32.assert_within(stem(x, training=False), expected, bound, "stem conv + BatchNorm")

    # The dilated layer4 conv took its kernel too.
    np.testing.assert_array_equal(
        backbone.get_layer("layer4_block0_conv1").kernel.numpy(),
        np.transpose(state["layer4.0.conv1.0.weight"], (2, 3, 4, 1, 0)),
    )
    features = np.random.default_rng(2).normal(size=(2, WIDTHS[-1])).astype("float32")
    # x @ W.T + b of 64 inputs in float32 on both sides (numpy's too): twice bound 1, elementwise.
    magnitudes = np.abs(features) @ np.abs(state["fc.weight"]).T + np.abs(state["fc.bias"])
    f32.assert_within(classifier(features, training=False), features @ state["fc.weight"].T + state["fc.bias"],
                      2 * f32.reduction_rtol(65) * magnitudes, "classifier logits")


def test_bad_state_dicts_name_the_keys():
    backbone = r3d18(width_multiplier=0.125)
    state = _torchvision_r3d18_state_dict()
    missing = {k: v for k, v in state.items() if k != "layer2.0.downsample.1.running_var"}
    with pytest.raises(ValueError, match=r"missing keys \['layer2.0.downsample.1.running_var'\]"):
        load_torchvision_r3d18_weights(backbone, missing)
    with pytest.raises(ValueError, match=r"unexpected keys \['head.weight'\]"):
        load_torchvision_r3d18_weights(backbone, {**state, "head.weight": np.zeros(3)})
    stem_before = backbone.get_layer("stem_conv").kernel.numpy()
    wrong_shape = {**state, "layer3.1.conv2.0.weight": np.zeros((32, 32, 1, 3, 3), "float32")}
    with pytest.raises(ValueError, match=r"state_dict\['layer3.1.conv2.0.weight'\] has shape \(1, 3, 3, 32, 32\)"):
        load_torchvision_r3d18_weights(backbone, wrong_shape)
    # Shapes are checked before anything is assigned.
    np.testing.assert_array_equal(backbone.get_layer("stem_conv").kernel.numpy(), stem_before)
