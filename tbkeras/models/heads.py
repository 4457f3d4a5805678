"""Heads on top of a backbone's features: the contrastive projection head and the classifier.

Both return float32 whatever the global dtype policy, so losses and softmax under `mixed_bfloat16`
are computed in float32.
"""
from __future__ import annotations

import keras
from keras import ops

from tbkeras.models.r3d_layers import BN_EPSILON, BN_MOMENTUM


class _Float32OutputLayer(keras.layers.Layer):
    """A layer whose output is float32 under any policy (its last op runs in float32), so symbolic
    outputs must say float32 too rather than the layer's compute dtype."""

    def compute_output_spec(self, x, training=None):
        return keras.KerasTensor(self.compute_output_shape(x.shape), dtype="float32")


@keras.saving.register_keras_serializable(package="tbkeras")
class ProjectionHead(_Float32OutputLayer):
    """Dense(hidden) -> BN -> ReLU -> Dense(output, no bias) -> BN -> L2 normalise (Supp. B.1.2).

    Takes pooled clip features `[B, C]` or per-slice features `[B, n, C]` (the same weights for
    both: BatchNorm statistics are taken over every leading axis) and returns float32 unit vectors
    `[B, d]` / `[B, n, d]`, the z of Eq. 1-3 and 5.

    Args:
        hidden_dim: width of the hidden layer (512 in the paper).
        output_dim: embedding size d (128 in the paper).

    Example:
        head = ProjectionHead()
        z = head(np.ones((4, 512), "float32"), training=False)  # [4, 128] float32, unit rows
        z_slices = head(np.ones((4, 3, 512), "float32"), training=False)  # [4, 3, 128]
    """

    def __init__(self, hidden_dim: int = 512, output_dim: int = 128, **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = int(hidden_dim)
        self.output_dim = int(output_dim)
        self.hidden = keras.layers.Dense(self.hidden_dim, dtype=self.dtype_policy, name="hidden")
        self.hidden_bn = keras.layers.BatchNormalization(
            epsilon=BN_EPSILON, momentum=BN_MOMENTUM, dtype=self.dtype_policy, name="hidden_bn"
        )
        self.output_dense = keras.layers.Dense(
            self.output_dim, use_bias=False, dtype=self.dtype_policy, name="output_dense"
        )
        # float32 so the normalised embedding (and every similarity built on it) is float32.
        self.output_bn = keras.layers.BatchNormalization(
            epsilon=BN_EPSILON, momentum=BN_MOMENTUM, dtype="float32", name="output_bn"
        )

    def build(self, input_shape):
        # Sub-layers see rows [N, C]: any leading axes are flattened in `call`.
        self.hidden.build((None, input_shape[-1]))
        self.hidden_bn.build((None, self.hidden_dim))
        self.output_dense.build((None, self.hidden_dim))
        self.output_bn.build((None, self.output_dim))

    def call(self, x, training=None):
        leading = ops.shape(x)[:-1]
        x = ops.reshape(x, (-1, x.shape[-1]))
        x = ops.relu(self.hidden_bn(self.hidden(x), training=training))
        x = self.output_bn(self.output_dense(x), training=training)
        x = x / ops.sqrt(ops.maximum(ops.sum(ops.square(x), axis=-1, keepdims=True), 1e-12))
        return ops.reshape(x, (*leading, self.output_dim))

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.output_dim)

    def get_config(self):
        return {**super().get_config(), "hidden_dim": self.hidden_dim, "output_dim": self.output_dim}


@keras.saving.register_keras_serializable(package="tbkeras")
class Classifier(_Float32OutputLayer):
    """Dropout -> Dense(num_classes): `[B, C]` features -> float32 logits `[B, num_classes]`.

    The Dense runs in float32 (the mixed-precision rule for the last layer), so logits and
    softmax probabilities keep full precision under `mixed_bfloat16`.

    Args:
        num_classes: number of action classes.
        dropout: dropout rate before the Dense (0.5 in the official code).

    Example:
        classifier = Classifier(101)
        logits = classifier(np.ones((4, 512), "float32"), training=True)  # [4, 101] float32
    """

    def __init__(self, num_classes: int, dropout: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.dropout_rate = float(dropout)
        if self.num_classes < 1:
            raise ValueError(f"Classifier: num_classes must be >= 1, got {num_classes}")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"Classifier: dropout must be in [0, 1), got {dropout}")
        self.dropout = keras.layers.Dropout(self.dropout_rate, name="dropout")
        self.logits = keras.layers.Dense(self.num_classes, dtype="float32", name="logits")

    def build(self, input_shape):
        self.logits.build(input_shape)

    def call(self, x, training=None):
        return self.logits(self.dropout(x, training=training))

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.num_classes)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "dropout": self.dropout_rate}
