"""Building blocks of the 3D ResNets that Keras does not provide as-is.

- `TemporallyDilatedConv3D`: a Conv3D with temporal dilation *and* spatial stride (TCLR's layer4).
  Keras (and `tf.nn.convolution`) refuse strides > 1 together with dilation > 1, so we fold time.
- `SpatialAveragePooling3D`: `[B, T, H, W, C] -> [B, T, C]`, computed in float32.
- `conv3d_bn`: PyTorch-style convolution (explicit symmetric zero padding + 'valid' conv, no bias)
  followed by BatchNorm with PyTorch's epsilon / momentum, optionally ReLU.
- `SubsampledConv3D`: a strided Conv3D computed as a stride-1 convolution and a subsampling.
- `FusedBatchNormalization`: Keras' BatchNormalization (same weights, outputs and moving update)
  on TF's fused kernel for 5-D channels-last input.

Why subsample: on some CPUs and shapes TensorFlow's kernels for the *gradient* of a strided
Conv3D are pathologically slow. Measured on one 2-core machine (`benchmarks/bench_strided_conv.py`),
fwd+bwd of R3D-18's 3x7x7 stem at stride (1,2,2) took 16.0 s against 1.1 s at stride 1; on others
the native kernels win (BENCHMARKS.md). A stride-1 conv followed by `y[:, ::st, ::sh, ::sw]` gives
the same outputs and the same weights, so a backbone can use it in training
(`strided_conv="subsample"`); inference keeps the native strided conv, which is faster forward.
Which is faster is measured, not assumed: `tbkeras.models.strided_conv.resolve_strided_conv`
(the recipe's `--strided_conv=auto`).
"""
from __future__ import annotations

from typing import Sequence

import keras
from keras import ops

# PyTorch BatchNorm defaults: eps 1e-5, momentum 0.1 (= Keras momentum 0.9).
BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9


def conv_initializer() -> keras.initializers.Initializer:
    """He-normal with fan_out, the initialisation torchvision's video ResNets use."""
    return keras.initializers.VarianceScaling(scale=2.0, mode="fan_out", distribution="untruncated_normal")


def use_subsampled_strides(strided_conv: str) -> bool:
    """A backbone's `strided_conv` choice: "subsample", or "native" (also what "auto" means for a
    model built directly: it has no training shape to measure; the recipe resolves "auto" by a
    measurement first, `tbkeras.models.strided_conv`)."""
    if strided_conv not in STRIDED_CONV_CHOICES:
        raise ValueError(f"strided_conv must be one of {STRIDED_CONV_CHOICES}, got {strided_conv!r}")
    return strided_conv == "subsample"


STRIDED_CONV_CHOICES = ("auto", "native", "subsample")


def _subsample(x, strides):
    return x[:, :: strides[0], :: strides[1], :: strides[2], :]


@keras.saving.register_keras_serializable(package="tbkeras")
class SubsampledConv3D(keras.layers.Conv3D):
    """A bias-free, 'valid', activation-free Conv3D whose stride is applied by subsampling when
    training.

    Same weights and outputs as `keras.layers.Conv3D` with the same arguments; see the module
    docstring for why. Only the gradient is slow natively: in inference (`training` falsy) the
    native strided conv runs, which is 4-5x faster forward than stride 1 + subsampling.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.use_bias or self.padding != "valid" or self.activation is not keras.activations.linear:
            raise ValueError(f"{self.name}: SubsampledConv3D supports use_bias=False, padding='valid', no activation")

    def call(self, inputs, training=None):
        if not training:
            return super().call(inputs)
        kernel = ops.cast(self.kernel, inputs.dtype)
        return _subsample(ops.conv(inputs, kernel, strides=1, padding="valid"), self.strides)


@keras.saving.register_keras_serializable(package="tbkeras")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` computed by TF's fused kernel (`FusedBatchNormV3`, oneDNN
    on CPU) for 5-D channels-last input: the same variables, outputs (to float32 rounding) and
    moving-statistics update (momentum on the biased batch variance, as Keras does).

    Why: Keras computes batch norm from ~10 elementwise ops in float32, upcasting bfloat16
    activations and casting them back; the fused kernel normalises bfloat16 input with float32
    statistics in one pass, and its gradient in another. In the bf16 train steps measured against
    PyTorch, Keras' batch norm was a third of R3D-18's gap and 61% of Slow-R50's (BENCHMARKS.md,
    "Where the time goes"). Another backend, rank or axis, a mask, renorm, synchronized statistics
    or a missing scale / offset fall back to Keras' own computation.
    """

    def _fused(self, inputs, mask) -> bool:
        return (keras.backend.backend() == "tensorflow" and mask is None and not self.renorm
                and not self.synchronized and self.center and self.scale and len(inputs.shape) == 5
                and self.axis in (-1, 4))

    def call(self, inputs, training=None, mask=None):
        if not self._fused(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        if inputs.dtype not in (tf.float32, tf.bfloat16):  # the kernel's input types on CPU
            inputs = tf.cast(inputs, tf.float32)
        # [B, T, H, W, C] -> [B*T, H, W, C]: the same per-channel statistics, and TF hands 4-D NHWC
        # batch norm to oneDNN (2-3x faster than its 5-D kernel, forward + gradient, measured).
        shape = tf.shape(inputs)
        x = tf.reshape(inputs, tf.concat([[-1], shape[2:]], axis=0))
        if training and self.trainable:
            empty = tf.constant([], tf.float32)
            y, mean, variance, *_ = tf.raw_ops.FusedBatchNormV3(
                x=x, scale=self.gamma, offset=self.beta, mean=empty, variance=empty, epsilon=self.epsilon,
                exponential_avg_factor=1.0, data_format="NHWC", is_training=True)
            # The kernel normalises by the biased batch variance but returns the unbiased one.
            count = tf.cast(tf.size(x, out_type=tf.int64) // tf.cast(shape[-1], tf.int64), tf.float32)
            variance = variance * (count - 1.0) / tf.maximum(count, 1.0)
            self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        else:
            y, *_ = tf.raw_ops.FusedBatchNormV3(
                x=x, scale=self.gamma, offset=self.beta, mean=self.moving_mean, variance=self.moving_variance,
                epsilon=self.epsilon, exponential_avg_factor=1.0, data_format="NHWC", is_training=False)
        y = tf.reshape(y, shape)
        y.set_shape(inputs.shape)
        return ops.cast(y, self.compute_dtype)


def conv3d_bn(
    x,
    filters: int,
    kernel_size: Sequence[int],
    strides: Sequence[int],
    *,
    conv_name: str,
    bn_name: str,
    relu: bool,
    temporal_dilation: int = 1,
    subsample: bool = False,
):
    """Conv3D (no bias, PyTorch padding `k // 2` on each side) -> BatchNorm -> optional ReLU.

    With `temporal_dilation > 1` the temporal padding is `dilation * (k_t // 2)`, as in TCLR's
    `padding=(2, 1, 1), dilation=(2, 1, 1)`, so the temporal length only changes by the stride.
    `subsample=True` computes a strided conv as stride 1 + subsampling (`SubsampledConv3D`).
    """
    kernel_size, strides = tuple(kernel_size), tuple(strides)
    if temporal_dilation > 1:
        x = TemporallyDilatedConv3D(
            filters, kernel_size, strides, temporal_dilation=temporal_dilation, subsample=subsample,
            name=conv_name,
        )(x)
    else:
        padding = "valid"
        if all(st == 1 for st in strides) and all(k % 2 for k in kernel_size):
            # Stride 1, odd kernel: TF's "same" is PyTorch's symmetric k // 2, with no Pad op (a Pad
            # feeding a conv trips Grappler's remapper on train-step graphs: "Mutation::Apply error").
            padding = "same"
        elif any(k > 1 for k in kernel_size):
            # Strided: TF's "same" would pad only after (for even sizes), PyTorch pads both sides.
            x = keras.layers.ZeroPadding3D(tuple((k // 2, k // 2) for k in kernel_size), name=f"{conv_name}_pad")(x)
        # A strided 1x1x1 conv's gradient is fast natively (benchmarks/bench_strided_conv.py).
        strided = any(st > 1 for st in strides) and any(k > 1 for k in kernel_size)
        conv = SubsampledConv3D if subsample and strided else keras.layers.Conv3D
        x = conv(
            filters, kernel_size, strides=strides, padding=padding, use_bias=False,
            kernel_initializer=conv_initializer(), name=conv_name,
        )(x)
    x = FusedBatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=bn_name)(x)
    if relu:
        x = keras.layers.ReLU(name=f"{bn_name}_relu")(x)
    return x


@keras.saving.register_keras_serializable(package="tbkeras")
class TemporallyDilatedConv3D(keras.layers.Layer):
    """Conv3D, no bias, with temporal dilation d, spatial stride and PyTorch symmetric zero padding.

    A dilated temporal convolution only ever mixes frames that are congruent modulo d, so we split
    the clip into its d phases (frames r, r+d, r+2d, ...), move the phases into the batch, run an
    ordinary undilated conv (temporal padding `k_t // 2` per phase = `d * (k_t // 2)` overall), and
    interleave the phases back. The result equals PyTorch's
    `Conv3d(kernel_size, stride=(1, sh, sw), padding=(d * (kt // 2), kh // 2, kw // 2), dilation=(d, 1, 1))`.

    The kernel has Keras's Conv3D layout `[k_t, k_h, k_w, C_in, C_out]`.

    Args:
        filters: output channels.
        kernel_size: `(k_t, k_h, k_w)`, odd sizes.
        strides: `(1, s_h, s_w)`; temporal stride must be 1.
        temporal_dilation: d >= 1.
    """

    def __init__(self, filters: int, kernel_size, strides=(1, 1, 1), *, temporal_dilation: int = 2,
                 subsample: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.subsample = bool(subsample)
        self.filters = int(filters)
        self.kernel_size = tuple(int(k) for k in kernel_size)
        self.strides = tuple(int(s) for s in strides)
        self.temporal_dilation = int(temporal_dilation)
        if len(self.kernel_size) != 3 or any(k % 2 == 0 for k in self.kernel_size):
            raise ValueError(f"{self.name}: kernel_size must be 3 odd sizes, got {kernel_size}")
        if len(self.strides) != 3 or self.strides[0] != 1:
            raise ValueError(f"{self.name}: strides must be (1, s_h, s_w), got {strides}")
        if self.temporal_dilation < 1:
            raise ValueError(f"{self.name}: temporal_dilation must be >= 1, got {temporal_dilation}")

    def build(self, input_shape):
        self.kernel = self.add_weight(
            name="kernel",
            shape=(*self.kernel_size, int(input_shape[-1]), self.filters),
            initializer=conv_initializer(),
        )

    def call(self, x, training=None):
        d = self.temporal_dilation
        kt, kh, kw = self.kernel_size
        shape = ops.shape(x)
        batch, frames, channels = shape[0], shape[1], x.shape[-1]
        # Pad time to a multiple of d: the extra zero frames stand in for the conv's own zero padding.
        phase_len = (frames + d - 1) // d
        x = ops.pad(x, [(0, 0), (0, phase_len * d - frames), (0, 0), (0, 0), (0, 0)])
        x = ops.reshape(x, (batch, phase_len, d, shape[2], shape[3], channels))
        x = ops.transpose(x, (0, 2, 1, 3, 4, 5))  # [B, d, T/d, H, W, C]
        x = ops.reshape(x, (batch * d, phase_len, shape[2], shape[3], channels))
        x = ops.pad(x, [(0, 0), (kt // 2, kt // 2), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)])
        kernel = ops.cast(self.kernel, x.dtype)
        if self.subsample and training:
            y = _subsample(ops.conv(x, kernel, strides=1, padding="valid"), self.strides)
        else:
            y = ops.conv(x, kernel, strides=self.strides, padding="valid")
        out_shape = ops.shape(y)
        y = ops.reshape(y, (batch, d, phase_len, out_shape[2], out_shape[3], self.filters))
        y = ops.transpose(y, (0, 2, 1, 3, 4, 5))  # [B, T/d, d, H', W', C_out]
        y = ops.reshape(y, (batch, phase_len * d, out_shape[2], out_shape[3], self.filters))
        return y[:, :frames]

    def compute_output_shape(self, input_shape):
        def out(size, k, s):
            return None if size is None else (size + 2 * (k // 2) - k) // s + 1

        _, t, h, w, _ = input_shape
        return (input_shape[0], t, out(h, self.kernel_size[1], self.strides[1]),
                out(w, self.kernel_size[2], self.strides[2]), self.filters)

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "temporal_dilation": self.temporal_dilation,
            "subsample": self.subsample,
        }


@keras.saving.register_keras_serializable(package="tbkeras")
class SpatialAveragePooling3D(keras.layers.Layer):
    """Mean over height and width: `[B, T, H, W, C] -> [B, T, C]`.

    Runs in float32 by default (inputs are autocast), so backbone features leave the network in
    float32 under `mixed_bfloat16` and averages over many positions keep their precision.
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)

    def call(self, x):
        return ops.mean(x, axis=(2, 3))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[1], input_shape[4])
