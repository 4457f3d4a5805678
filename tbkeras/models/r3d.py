"""3D ResNet video backbones: R3D-18 (torchvision `r3d_18`, TCLR's dilated layer4) and R3D-50
(PyTorchVideo Slow-R50).

Both are functional `keras.Model` subclasses built in `__init__` (KerasHub style) that map a clip
`[B, T, H, W, 3]` (T, H, W free) to a dict of float32 features:

    {"pooled": [B, C], "temporal": [B, T', C]}

"temporal" is spatially averaged with time kept (TCLR's unpooled features for the global-local loss,
L_D2); "pooled" is its mean over time (= global average pooling). C is `model.feature_dim`.

Layout follows PyTorch exactly (explicit symmetric zero padding, bias-free convs, BatchNorm eps 1e-5 /
momentum 0.1), so weights ported from torchvision / PyTorchVideo give the same outputs; see
`tbkeras.models.torch_weights`.

Serialisation: `get_config()` holds only the constructor arguments, and loading rebuilds the graph by
calling the constructor, then matches weights by the stable layer names. The dict outputs (keys
"pooled" and "temporal") are therefore recreated by the code, not stored in the file, and a `.keras`
round trip gives identical outputs.

Parameter counts (trainable weights, i.e. PyTorch's `parameters()`; BatchNorm moving statistics are
extra non-trainable weights in Keras): R3D-18 at width 1 has 33,166,272 (with or without dilation),
Slow-R50 31,634,496.
"""
from __future__ import annotations

import keras

from tbkeras.models.r3d_layers import SpatialAveragePooling3D, conv3d_bn, use_subsampled_strides


def _scaled(channels: int, width_multiplier: float) -> int:
    return max(1, int(round(channels * width_multiplier)))


def _check_width(width_multiplier: float) -> float:
    width_multiplier = float(width_multiplier)
    if not width_multiplier > 0:
        raise ValueError(f"width_multiplier must be > 0, got {width_multiplier}")
    return width_multiplier


def _video_input():
    return keras.Input(shape=(None, None, None, 3), name="video")


def _feature_outputs(x) -> dict:
    """`[B, T', H', W', C]` -> {"pooled": [B, C], "temporal": [B, T', C]}, both float32."""
    temporal = SpatialAveragePooling3D(name="temporal")(x)
    pooled = keras.layers.GlobalAveragePooling1D(dtype="float32", name="pooled")(temporal)
    return {"pooled": pooled, "temporal": temporal}


def _residual_out(x, shortcut, name: str):
    x = keras.layers.Add(name=f"{name}_add")([x, shortcut])
    return keras.layers.ReLU(name=f"{name}_out")(x)


def _basic_block(x, filters: int, stride: int, name: str, *, temporal_dilation: int = 1, subsample: bool):
    """torchvision `BasicBlock` with `Conv3DSimple`: two 3x3x3 convs, 1x1x1 projection shortcut
    when the shape changes. With `temporal_dilation > 1` (TCLR layer4) the temporal stride is 1."""
    strides = (1 if temporal_dilation > 1 else stride, stride, stride)
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = conv3d_bn(x, filters, (1, 1, 1), strides, conv_name=f"{name}_downsample_conv",
                             bn_name=f"{name}_downsample_bn", relu=False, subsample=subsample)
    x = conv3d_bn(x, filters, (3, 3, 3), strides, conv_name=f"{name}_conv1", bn_name=f"{name}_bn1",
                  relu=True, temporal_dilation=temporal_dilation, subsample=subsample)
    x = conv3d_bn(x, filters, (3, 3, 3), (1, 1, 1), conv_name=f"{name}_conv2", bn_name=f"{name}_bn2",
                  relu=False)
    return _residual_out(x, shortcut, name)


def _bottleneck_block(x, inner: int, temporal_kernel: int, spatial_stride: int, name: str, *, subsample: bool):
    """PyTorchVideo `BottleneckBlock`: conv_a (k_t x 1 x 1) -> conv_b (1 x 3 x 3, spatial stride)
    -> conv_c (1 x 1 x 1, 4x channels); projection shortcut ("branch1") when the shape changes."""
    filters = 4 * inner
    strides = (1, spatial_stride, spatial_stride)
    shortcut = x
    if spatial_stride != 1 or x.shape[-1] != filters:
        shortcut = conv3d_bn(x, filters, (1, 1, 1), strides, conv_name=f"{name}_shortcut_conv",
                             bn_name=f"{name}_shortcut_bn", relu=False, subsample=subsample)
    x = conv3d_bn(x, inner, (temporal_kernel, 1, 1), (1, 1, 1), conv_name=f"{name}_conv_a",
                  bn_name=f"{name}_bn_a", relu=True)
    x = conv3d_bn(x, inner, (1, 3, 3), strides, conv_name=f"{name}_conv_b", bn_name=f"{name}_bn_b",
                  relu=True, subsample=subsample)
    x = conv3d_bn(x, filters, (1, 1, 1), (1, 1, 1), conv_name=f"{name}_conv_c", bn_name=f"{name}_bn_c",
                  relu=False)
    return _residual_out(x, shortcut, name)


@keras.saving.register_keras_serializable(package="tbkeras")
class R3D18(keras.Model):
    """R3D-18 backbone (torchvision `r3d_18` without its classifier), optionally with TCLR's
    temporally dilated layer4.

    Layout: stem Conv3D 3x7x7 stride (1,2,2) + BN + ReLU; layers 1-4 of two BasicBlocks with
    64/128/256/512 channels (times `width_multiplier`); stride 2 on every axis at the first block of
    layers 2-4. With `dilated_layer4=True` layer4's first conv is 3x3x3, stride (1,2,2), temporal
    dilation 2 (padding (2,1,1)) and its downsample has stride (1,2,2), so a 16-frame clip keeps 4
    temporal slices instead of 2.

    References: Tran et al., "A Closer Look at Spatiotemporal Convolutions for Action Recognition",
    CVPR 2018; Dave et al., "TCLR", CVIU 2022; Dave et al., "TimeBalance", CVPR 2023 (Sec. 4.1).

    Args:
        width_multiplier: scales every channel count (0.25 gives a 16-64-... tiny net for CPU runs).
        dilated_layer4: TCLR's layer4 (True, used by TimeBalance) or torchvision's plain layer4.
        strided_conv: "native" (also "auto", the default, here), or "subsample" (strided convs as
            stride 1 + subsampling: same weights and outputs, much faster gradients on some CPUs;
            `tbkeras.models.strided_conv.resolve_strided_conv` measures which on this machine).
        name: model name.

    Example:
        backbone = tbkeras.models.r3d18(width_multiplier=0.25)
        features = backbone(np.zeros((2, 16, 64, 64, 3), "float32"), training=False)
        # features["pooled"]: [2, 128] float32; features["temporal"]: [2, 4, 128] float32
    """

    def __init__(self, *, width_multiplier: float = 1.0, dilated_layer4: bool = True, strided_conv: str = "auto",
                 name: str = "r3d18", **kwargs):
        width_multiplier = _check_width(width_multiplier)
        subsample = use_subsampled_strides(strided_conv)
        widths = [_scaled(c, width_multiplier) for c in (64, 128, 256, 512)]
        inputs = _video_input()
        x = conv3d_bn(inputs, widths[0], (3, 7, 7), (1, 2, 2), conv_name="stem_conv", bn_name="stem_bn",
                      relu=True, subsample=subsample)
        for layer, filters in enumerate(widths, start=1):
            for block in range(2):
                stride = 2 if (layer > 1 and block == 0) else 1
                dilation = 2 if (dilated_layer4 and layer == 4 and block == 0) else 1
                x = _basic_block(x, filters, stride, f"layer{layer}_block{block}", temporal_dilation=dilation,
                                 subsample=subsample)
        super().__init__(inputs=inputs, outputs=_feature_outputs(x), name=name, **kwargs)
        self.width_multiplier = width_multiplier
        self.dilated_layer4 = bool(dilated_layer4)
        self.strided_conv = strided_conv
        self.feature_dim = widths[-1]

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "width_multiplier": self.width_multiplier,
            "dilated_layer4": self.dilated_layer4,
            "strided_conv": self.strided_conv,
        }


@keras.saving.register_keras_serializable(package="tbkeras")
class R3D50(keras.Model):
    """R3D-50 backbone: PyTorchVideo's Slow-R50 (`create_slow`/`slow_r50`) without its head.

    Layout: stem Conv3D 1x7x7 stride (1,2,2) + BN + ReLU + max-pool 1x3x3 stride (1,2,2) padding
    (0,1,1); bottleneck stages res2-res5 of depth 3/4/6/3, inner widths 64/128/256/512 and output
    widths 256/512/1024/2048 (times `width_multiplier`); conv_a's temporal kernel is 1 in res2-res3
    and 3 in res4-res5; the spatial stride (2 in res3-res5) sits in conv_b. No temporal stride, so
    T' = T.

    References: Feichtenhofer et al., "SlowFast Networks for Video Recognition", ICCV 2019 (Slow
    pathway); Dave et al., "TimeBalance", CVPR 2023 (Sec. 4.1).

    Args:
        width_multiplier: scales every channel count.
        strided_conv: "auto", "native" or "subsample", as for `R3D18`.
        name: model name.

    Example:
        backbone = tbkeras.models.r3d50(width_multiplier=0.125)
        features = backbone(np.zeros((1, 8, 64, 64, 3), "float32"), training=False)
        # features["pooled"]: [1, 256] float32; features["temporal"]: [1, 8, 256] float32
    """

    def __init__(self, *, width_multiplier: float = 1.0, strided_conv: str = "auto", name: str = "r3d50", **kwargs):
        width_multiplier = _check_width(width_multiplier)
        subsample = use_subsampled_strides(strided_conv)
        inputs = _video_input()
        x = conv3d_bn(inputs, _scaled(64, width_multiplier), (1, 7, 7), (1, 2, 2), conv_name="stem_conv",
                      bn_name="stem_bn", relu=True, subsample=subsample)
        # Zero padding equals PyTorch's -inf padding here: the input is post-ReLU (>= 0).
        x = keras.layers.ZeroPadding3D(((0, 0), (1, 1), (1, 1)), name="stem_pool_pad")(x)
        x = keras.layers.MaxPooling3D((1, 3, 3), strides=(1, 2, 2), padding="valid", name="stem_pool")(x)
        stages = zip((2, 3, 4, 5), (3, 4, 6, 3), (64, 128, 256, 512), (1, 1, 3, 3))
        for stage, depth, inner, temporal_kernel in stages:
            for block in range(depth):
                spatial_stride = 2 if (stage > 2 and block == 0) else 1
                x = _bottleneck_block(x, _scaled(inner, width_multiplier), temporal_kernel, spatial_stride,
                                      f"res{stage}_block{block}", subsample=subsample)
        super().__init__(inputs=inputs, outputs=_feature_outputs(x), name=name, **kwargs)
        self.width_multiplier = width_multiplier
        self.strided_conv = strided_conv
        self.feature_dim = int(x.shape[-1])

    def get_config(self):
        return {"name": self.name, "trainable": self.trainable, "width_multiplier": self.width_multiplier,
                "strided_conv": self.strided_conv}


def r3d18(*, width_multiplier: float = 1.0, dilated_layer4: bool = True, strided_conv: str = "auto",
          name: str = "r3d18") -> R3D18:
    """R3D-18 backbone `[B, T, H, W, 3] -> {"pooled": [B, C], "temporal": [B, T', C]}`; see `R3D18`."""
    return R3D18(width_multiplier=width_multiplier, dilated_layer4=dilated_layer4, strided_conv=strided_conv,
                 name=name)


def r3d50(*, width_multiplier: float = 1.0, strided_conv: str = "auto", name: str = "r3d50") -> R3D50:
    """Slow-R50 backbone `[B, T, H, W, 3] -> {"pooled": [B, C], "temporal": [B, T, C]}`; see `R3D50`."""
    return R3D50(width_multiplier=width_multiplier, strided_conv=strided_conv, name=name)


BACKBONES = {"r3d18": r3d18, "r3d50": r3d50}  # by the name flags and configs use


def build_backbone(backbone: str, *, width_multiplier: float = 1.0, strided_conv: str = "auto",
                   name: str | None = None) -> keras.Model:
    """A backbone by name: "r3d18" (with TCLR's dilated layer4, as TimeBalance) or "r3d50" (Slow-R50)."""
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; valid: {', '.join(BACKBONES)}")
    return BACKBONES[backbone](width_multiplier=width_multiplier, strided_conv=strided_conv, name=name or backbone)
