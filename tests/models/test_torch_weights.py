import keras
import numpy as np
import pytest

from tests import float32_tolerances as f32
from tests.models.model_checks import numpy_conv3d
from tbkeras.models import Classifier, r3d18, r3d50
from tbkeras.models.torch_weights import (
    _slow_r50_modules,
    load_pytorchvideo_slow_r50_weights,
    load_torchvision_r3d18_weights,
)

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


SLOW_R50_WIDTH = 0.125  # r3d50(width_multiplier=0.125): stem 8, inner 8-16-32-64, outputs 32-64-128-256
SLOW_R50_STAGES = ((3, 1, 1), (4, 1, 2), (6, 3, 2), (3, 3, 2))  # (depth, conv_a temporal kernel, spatial stride)


def _pytorchvideo_slow_r50_state_dict(width=SLOW_R50_WIDTH, num_classes=5, seed=0):
    """Random arrays with PyTorchVideo `create_resnet` (slow_r50) names and PyTorch shapes, written
    from its layout (not from our model). Conv weights are He-normal and BatchNorm statistics of the
    order of the activations, so features stay O(1) through all 16 bottlenecks and a statistic not
    ported changes them by far more than rounding."""
    rng = np.random.default_rng(seed)
    state = {}

    def conv(name, out_ch, in_ch, kernel):
        fan_in = in_ch * int(np.prod(kernel))
        state[f"{name}.weight"] = rng.normal(0, np.sqrt(2 / fan_in), (out_ch, in_ch, *kernel)).astype("float32")

    def bn(name, ch, gamma=(0.5, 1.5)):
        state[f"{name}.weight"] = rng.uniform(*gamma, ch).astype("float32")
        state[f"{name}.bias"] = rng.normal(0, 0.2, ch).astype("float32")
        state[f"{name}.running_mean"] = rng.normal(0, 0.3, ch).astype("float32")
        state[f"{name}.running_var"] = rng.uniform(0.3, 2.0, ch).astype("float32")
        state[f"{name}.num_batches_tracked"] = np.array(7)

    stem = round(64 * width)
    conv("blocks.0.conv", stem, 3, (1, 7, 7))
    bn("blocks.0.norm", stem)
    in_ch = stem
    for stage, (depth, temporal_kernel, _) in enumerate(SLOW_R50_STAGES, start=1):
        inner = round(64 * 2 ** (stage - 1) * width)
        for block in range(depth):
            prefix = f"blocks.{stage}.res_blocks.{block}"
            if block == 0:
                conv(f"{prefix}.branch1_conv", 4 * inner, in_ch, (1, 1, 1))
                bn(f"{prefix}.branch1_norm", 4 * inner)
            conv(f"{prefix}.branch2.conv_a", inner, in_ch, (temporal_kernel, 1, 1))
            bn(f"{prefix}.branch2.norm_a", inner)
            conv(f"{prefix}.branch2.conv_b", inner, inner, (1, 3, 3))
            bn(f"{prefix}.branch2.norm_b", inner)
            conv(f"{prefix}.branch2.conv_c", 4 * inner, inner, (1, 1, 1))
            bn(f"{prefix}.branch2.norm_c", 4 * inner, gamma=(0.1, 0.5))  # small, as trained ResNets end blocks
            in_ch = 4 * inner
    state["blocks.5.proj.weight"] = rng.normal(0, np.sqrt(1 / in_ch), (num_classes, in_ch)).astype("float32")
    state["blocks.5.proj.bias"] = rng.normal(0, 0.1, num_classes).astype("float32")
    return state


def _torch_slow_r50(torch, state):
    """A hand-written PyTorchVideo Slow-R50: modules named so its state_dict has `create_resnet`'s
    keys, the ops of `create_res_basic_stem` / `create_bottleneck_block` / `create_res_block`.
    Widths are read from `state`, loaded with strict=True (so the key list is checked too)."""
    nn = torch.nn

    class Stem(nn.Module):
        def __init__(self, out_ch):
            super().__init__()
            self.conv = nn.Conv3d(3, out_ch, (1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False)
            self.norm = nn.BatchNorm3d(out_ch, eps=1e-5, momentum=0.1)
            self.pool = nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))

        def forward(self, x):
            return self.pool(torch.relu(self.norm(self.conv(x))))

    class Bottleneck(nn.Module):
        def __init__(self, in_ch, inner, temporal_kernel, stride):
            super().__init__()
            self.conv_a = nn.Conv3d(in_ch, inner, (temporal_kernel, 1, 1), padding=(temporal_kernel // 2, 0, 0),
                                    bias=False)
            self.norm_a = nn.BatchNorm3d(inner)
            self.conv_b = nn.Conv3d(inner, inner, (1, 3, 3), stride=(1, stride, stride), padding=(0, 1, 1),
                                    bias=False)
            self.norm_b = nn.BatchNorm3d(inner)
            self.conv_c = nn.Conv3d(inner, 4 * inner, (1, 1, 1), bias=False)
            self.norm_c = nn.BatchNorm3d(4 * inner)

        def forward(self, x):
            x = torch.relu(self.norm_a(self.conv_a(x)))
            x = torch.relu(self.norm_b(self.conv_b(x)))
            return self.norm_c(self.conv_c(x))

    class ResBlock(nn.Module):
        def __init__(self, in_ch, inner, temporal_kernel, stride):
            super().__init__()
            self.branch1_conv = self.branch1_norm = None
            if in_ch != 4 * inner or stride != 1:
                self.branch1_conv = nn.Conv3d(in_ch, 4 * inner, (1, 1, 1), stride=(1, stride, stride), bias=False)
                self.branch1_norm = nn.BatchNorm3d(4 * inner)
            self.branch2 = Bottleneck(in_ch, inner, temporal_kernel, stride)

        def forward(self, x):
            shortcut = x if self.branch1_conv is None else self.branch1_norm(self.branch1_conv(x))
            return torch.relu(self.branch2(x) + shortcut)

    class Stage(nn.Module):
        def __init__(self, blocks):
            super().__init__()
            self.res_blocks = nn.ModuleList(blocks)

        def forward(self, x):
            for block in self.res_blocks:
                x = block(x)
            return x

    class Head(nn.Module):
        def __init__(self, in_ch, num_classes):
            super().__init__()
            self.proj = nn.Linear(in_ch, num_classes)

    class SlowR50(nn.Module):
        def __init__(self):
            super().__init__()
            stem = state["blocks.0.conv.weight"].shape[0]
            blocks, in_ch = [Stem(stem)], stem
            for stage, (depth, temporal_kernel, stride) in enumerate(SLOW_R50_STAGES, start=1):
                inner = state[f"blocks.{stage}.res_blocks.0.branch2.conv_a.weight"].shape[0]
                res_blocks = []
                for block in range(depth):
                    res_blocks.append(ResBlock(in_ch, inner, temporal_kernel, stride if block == 0 else 1))
                    in_ch = 4 * inner
                blocks.append(Stage(res_blocks))
            blocks.append(Head(in_ch, state["blocks.5.proj.weight"].shape[0]))
            self.blocks = nn.ModuleList(blocks)

        def forward(self, x):
            """[B, 3, T, H, W] -> pooled features [B, C], logits [B, classes]."""
            for block in self.blocks[:5]:
                x = block(x)
            pooled = x.mean(dim=(2, 3, 4))
            return pooled, self.blocks[5].proj(pooled)

    model = SlowR50()
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}, strict=True)
    return model.eval()


def _slow_r50_rounding_estimate(state, evaluations: int) -> float:
    """Estimate 7 of tests/float32_tolerances.py, with the random walk carried across layers too.

    A conv of fan-in k rounds each output by ~sqrt(k) U of its scale (random-sign errors); the
    roundings of different layers are independent too, so they add in quadrature: sqrt(sum_l k_l) U
    relative to the scale of the output, per float32 evaluation (and in quadrature over several).
    (Estimate 7 adds the layers linearly, sum_l sqrt(k_l) U: 3.6e-5 here, an upper estimate.)
    """
    fan_ins = [int(np.prod(v.shape[1:])) for k, v in state.items() if k.endswith(".weight") and v.ndim == 5]
    return float(np.sqrt(evaluations * sum(fan_ins)) * f32.U)


def test_ported_slow_r50_matches_a_torch_slow_r50():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(2)
    state = _pytorchvideo_slow_r50_state_dict()
    backbone, classifier = r3d50(width_multiplier=SLOW_R50_WIDTH), Classifier(5)
    load_pytorchvideo_slow_r50_weights(backbone, {f"module.{k}": v for k, v in state.items()}, prefix="module.",
                                       classifier=classifier)

    x = np.random.default_rng(1).uniform(0, 1, (2, 8, 64, 64, 3)).astype("float32")
    ours = backbone(x, training=False)
    ours_pooled, ours_logits = np.asarray(ours["pooled"]), np.asarray(classifier(ours["pooled"], training=False))
    model = _torch_slow_r50(torch, state)
    with torch.no_grad():
        clip = torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 4, 1, 2, 3))))  # [B, 3, T, H, W]
        torch_pooled, torch_logits = (t.numpy() for t in model(clip))
        exact_pooled, exact_logits = (t.numpy() for t in model.double()(clip.double()))  # float64 reference
    assert np.std(exact_pooled) > 0.5 and np.mean(exact_pooled > 0) > 0.9  # features alive and O(1)

    # The 1e-5, relative to the scale of the output. The estimate for these 53 convs
    # (sum_l k_l = 9,427) is 5.8e-6 for one float32 evaluation (against float64 torch) and 8.2e-6
    # for two (against float32 torch); measured on a 2-core AMD EPYC, worst of features and logits:
    # 2.3e-7 and 2.8e-7. A layout bug moves them by 5-80 % of that scale (by hand: BatchNorm
    # statistics not ported 0.78, conv_b's in/out axes swapped 0.74, the stride on conv_a instead of
    # conv_b 0.079, h and w swapped 0.049).
    rtol = 1e-5
    for name, actual, desired, evaluations in [
        ("pooled vs float64 torch", ours_pooled, exact_pooled, 1),
        ("logits vs float64 torch", ours_logits, exact_logits, 1),
        ("pooled vs float32 torch", ours_pooled, torch_pooled, 2),
        ("logits vs float32 torch", ours_logits, torch_logits, 2),
    ]:
        assert _slow_r50_rounding_estimate(state, evaluations) < rtol
        np.testing.assert_allclose(actual, desired, err_msg=name, **f32.network_tolerance(desired, rtol))


def test_full_width_r3d50_takes_every_slow_r50_key_and_shape():
    # PyTorchVideo's shapes at width 1 (the hub checkpoint's): parameters() of the backbone are
    # DESIGN's 31,634,496, and every key maps to one of our variables of the converted shape.
    state = _pytorchvideo_slow_r50_state_dict(width=1.0, num_classes=400)
    assert state["blocks.0.conv.weight"].shape == (64, 3, 1, 7, 7)
    assert state["blocks.4.res_blocks.0.branch2.conv_a.weight"].shape == (512, 1024, 3, 1, 1)
    backbone_params = sum(v.size for k, v in state.items()
                          if not k.startswith("blocks.5.") and k.endswith((".weight", ".bias")))
    assert backbone_params == 31_634_496
    with keras.StatelessScope():
        backbone = r3d50()
    convs, batch_norms = _slow_r50_modules(backbone)
    mapped = {f"{m}.weight": backbone.get_layer(n).kernel.shape for m, n in convs.items()}
    mapped.update({f"{m}.{t}": backbone.get_layer(n).gamma.shape for m, n in batch_norms.items()
                   for t in ("weight", "bias", "running_mean", "running_var")})
    in_state = {k: v.shape for k, v in state.items() if not k.startswith("blocks.5.") and "num_batches" not in k}
    assert sorted(mapped) == sorted(in_state)
    for key, shape in in_state.items():
        converted = (*shape[2:], shape[1], shape[0]) if len(shape) == 5 else shape
        assert tuple(mapped[key]) == tuple(converted), key


def test_bad_slow_r50_state_dicts_name_the_keys():
    backbone = r3d50(width_multiplier=SLOW_R50_WIDTH)
    state = _pytorchvideo_slow_r50_state_dict()
    key = "blocks.3.res_blocks.4.branch2.norm_b.running_mean"
    with pytest.raises(ValueError, match=rf"missing keys \['{key}'\]"):
        load_pytorchvideo_slow_r50_weights(backbone, {k: v for k, v in state.items() if k != key})
    with pytest.raises(ValueError, match=r"unexpected keys \['blocks.1.res_blocks.1.branch1_conv.weight'\]"):
        load_pytorchvideo_slow_r50_weights(
            backbone, {**state, "blocks.1.res_blocks.1.branch1_conv.weight": np.zeros((32, 32, 1, 1, 1), "float32")})
    with pytest.raises(ValueError, match=r"missing keys \['blocks.5.proj.bias'\]"):
        load_pytorchvideo_slow_r50_weights(backbone, {k: v for k, v in state.items() if k != "blocks.5.proj.bias"},
                                           classifier=Classifier(5))
    stem_before = backbone.get_layer("stem_conv").kernel.numpy()
    # conv_a of res4 has a temporal kernel of 3: a checkpoint with 1 (an R50 of another family) is refused.
    key = "blocks.3.res_blocks.0.branch2.conv_a.weight"
    wrong_shape = {**state, key: np.zeros((32, 64, 1, 1, 1), "float32")}
    with pytest.raises(ValueError, match=rf"state_dict\['{key}'\] has shape \(1, 1, 1, 64, 32\)"):
        load_pytorchvideo_slow_r50_weights(backbone, wrong_shape)
    np.testing.assert_array_equal(backbone.get_layer("stem_conv").kernel.numpy(), stem_before)
