import keras
import numpy as np
import pytest

from tests.models.test_torch_weights import _pytorchvideo_slow_r50_state_dict, _torch_slow_r50
from tbkeras.models import Classifier, ProjectionHead, r3d18, r3d50
from tbkeras.models.flops import count_flops
from tbkeras.models.r3d_layers import SpatialAveragePooling3D, conv3d_bn


def _out(size, k, s, p):
    return (size + 2 * p - k) // s + 1


def test_count_of_a_tiny_model_equals_a_hand_count():
    """Every counted layer type once (strided SubsampledConv3D, dilated conv, plain conv, heads),
    on odd sizes, against output sizes and MACs worked out here with numpy."""
    keras.utils.set_random_seed(0)
    x = inputs = keras.Input((None, None, None, 3))
    x = conv3d_bn(x, 4, (3, 5, 5), (1, 2, 2), conv_name="stem", bn_name="stem_bn", relu=True, subsample=True)
    x = conv3d_bn(x, 6, (3, 3, 3), (1, 2, 2), conv_name="dilated", bn_name="dilated_bn", relu=True,
                  temporal_dilation=2)
    x = keras.layers.Conv3D(8, 1, strides=(2, 1, 1), name="pointwise")(x)
    pooled = keras.layers.GlobalAveragePooling1D(name="pooled")(SpatialAveragePooling3D(name="temporal")(x))
    outputs = [ProjectionHead(hidden_dim=5, output_dim=3, name="head")(pooled), Classifier(7, name="cls")(pooled)]
    model = keras.Model(inputs, outputs)

    t, h, w = 5, 17, 19
    sizes = {}
    sizes["stem"] = np.array([_out(t, 3, 1, 1), _out(h, 5, 2, 2), _out(w, 5, 2, 2)])
    sizes["dilated"] = np.array([sizes["stem"][0], _out(sizes["stem"][1], 3, 2, 1), _out(sizes["stem"][2], 3, 2, 1)])
    sizes["pointwise"] = np.array([_out(sizes["dilated"][0], 1, 2, 0), *sizes["dilated"][1:]])
    expected = {
        "stem": np.prod(sizes["stem"]) * 4 * (3 * 5 * 5) * 3,
        "dilated": np.prod(sizes["dilated"]) * 6 * 27 * 4,
        "pointwise": np.prod(sizes["pointwise"]) * 8 * 6,
        "head": 8 * 5 + 5 * 3,
        "cls": 8 * 7,
    }
    assert tuple(sizes["pointwise"]) == (3, 5, 5)  # 5 -> 5 -> 5 -> 3 frames; 17 -> 9 -> 5; 19 -> 10 -> 5

    counted = count_flops(model, (t, h, w, 3))
    assert counted["layers"] == {k: int(v) for k, v in expected.items()}
    assert counted["macs"] == sum(int(v) for v in expected.values())
    assert counted["flops"] == 2 * counted["macs"]
    assert {"FusedBatchNormalization", "ReLU", "ZeroPadding3D"} <= set(counted["uncounted"])


def test_full_width_counts_match_the_published_figures():
    """torchvision's model table: r3d_18 (plain layer4, with its 400-class fc) 40.70 GFLOPS (MACs)
    at 16x112x112; PyTorchVideo's model zoo: slow_r50 54.52 GFLOPs (MACs) at 8x256x256."""
    macs = count_flops(r3d18(dilated_layer4=False), (16, 112, 112, 3))["macs"] + 512 * 400
    assert round(macs / 1e9, 2) == 40.70
    macs = count_flops(r3d50(), (8, 256, 256, 3))["macs"] + 2048 * 400
    assert round(macs / 1e9, 2) == 54.52


def test_nested_backbone_and_head_add_up():
    backbone = r3d18(width_multiplier=0.125)
    inputs = keras.Input((None, None, None, 3))
    model = keras.Model(inputs, Classifier(5, name="cls")(backbone(inputs)["pooled"]))
    alone = count_flops(backbone, (8, 32, 32, 3))
    together = count_flops(model, (8, 32, 32, 3))
    assert together["macs"] == alone["macs"] + 64 * 5
    assert together["layers"]["r3d18/stem_conv"] == alone["layers"]["stem_conv"]


def test_bad_models_and_shapes_are_refused():
    inputs = keras.Input((4, 3))
    with pytest.raises(ValueError, match="no rule for layer 'lstm'"):
        count_flops(keras.Model(inputs, keras.layers.LSTM(2, name="lstm")(inputs)), (4, 3))
    with pytest.raises(ValueError, match="without the batch axis"):
        count_flops(r3d18(width_multiplier=0.125), (1, 8, 32, 32, 3))
    with pytest.raises(ValueError, match="functional"):
        count_flops(keras.Sequential([keras.layers.Dense(2)]), (3,))


def _torch_r3d18(torch, widths, dilated_layer4=True):
    """torchvision's r3d_18 layout (BasicBlocks, Conv3DSimple) with TCLR's dilated layer4, no fc."""
    nn = torch.nn

    def conv_bn(cin, cout, kernel, stride, padding, dilation=1):
        return [nn.Conv3d(cin, cout, kernel, stride, padding, dilation=dilation, bias=False), nn.BatchNorm3d(cout)]

    class Block(nn.Module):
        def __init__(self, cin, cout, stride, dilate):
            super().__init__()
            st = (1, stride, stride) if dilate else (stride,) * 3
            pad_dilation = (2, 1, 1) if dilate else 1  # TCLR: padding (2, 1, 1), dilation (2, 1, 1)
            self.body = nn.Sequential(*conv_bn(cin, cout, 3, st, pad_dilation, pad_dilation), nn.ReLU(),
                                      *conv_bn(cout, cout, 3, 1, 1))
            self.down = nn.Sequential(*conv_bn(cin, cout, 1, st, 0)) if stride != 1 or cin != cout else nn.Identity()

        def forward(self, x):
            return torch.relu(self.body(x) + self.down(x))

    layers = [*conv_bn(3, widths[0], (3, 7, 7), (1, 2, 2), (1, 3, 3)), nn.ReLU()]
    cin = widths[0]
    for i, cout in enumerate(widths):
        for b in range(2):
            stride = 2 if i > 0 and b == 0 else 1
            layers.append(Block(cin, cout, stride, dilate=dilated_layer4 and i == 3 and b == 0))
            cin = cout
    return nn.Sequential(*layers)


def _torch_flops(torch, model, clip_shape):
    from torch.utils.flop_counter import FlopCounterMode

    t, h, w, c = clip_shape
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(torch.zeros(1, c, t, h, w))
    return counter.get_total_flops()


def test_counts_equal_torch_flop_counter_on_hand_written_torch_models():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(2)
    shape = (16, 40, 36, 3)
    for dilated in (True, False):
        ours = count_flops(r3d18(width_multiplier=0.125, dilated_layer4=dilated), shape)["flops"]
        assert ours == _torch_flops(torch, _torch_r3d18(torch, (8, 16, 32, 64), dilated), shape)

    state = _pytorchvideo_slow_r50_state_dict(num_classes=5)
    inputs = keras.Input((None, None, None, 3))
    model = keras.Model(inputs, Classifier(5, name="cls")(r3d50(width_multiplier=0.125)(inputs)["pooled"]))
    shape = (4, 48, 40, 3)
    assert count_flops(model, shape)["flops"] == _torch_flops(torch, _torch_slow_r50(torch, state), shape)
