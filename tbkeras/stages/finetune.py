"""Teacher finetuning (paper Sec. 3.1 end, Algorithm 1 lines 17-21): a pretrained backbone + a new
`Classifier`, cross-entropy on the labeled videos.

`ClassifierModel` is also the network of the student stage and what evaluation and export run, so
one weight format (`classifier.weights.h5`, see `tbkeras.stages.checkpoints`) serves every stage
after pretraining.

Input element (`supervised_dataset`): {"clip": [B, T, S, S, 3], "label": int32 [B]}.
Logged metrics: "loss" (cross-entropy), "accuracy".
"""
from __future__ import annotations

import keras
from keras import ops

from tbkeras.models import Classifier
from tbkeras.stages.base import StageModel
from tbkeras.stages.checkpoints import BACKBONE_WEIGHTS, load_weights_verified


def cross_entropy_and_accuracy(labels, logits) -> tuple:
    """Mean sparse cross-entropy (Eq. 4) and top-1 accuracy of float32 `logits [B, C]`."""
    labels = ops.cast(labels, "int32")
    ce = ops.mean(keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True))
    correct = ops.cast(ops.equal(ops.cast(ops.argmax(logits, axis=-1), "int32"), labels), "float32")
    return ce, ops.mean(correct)


class ClassifierModel(StageModel):
    """Backbone + `Classifier` head: clip `[B, T, S, S, 3]` -> float32 logits `[B, num_classes]`.

    Args:
        backbone: a built video backbone ({"pooled": [B, C], ...}, attribute `feature_dim`).
        num_classes: number of action classes.
        dropout: dropout before the classifier's Dense (0.5 as the official code).
        train_backbone: False trains the classifier alone on the frozen backbone, a linear probe: the
            backbone runs in inference mode and gets no update, and its pooled features are
            standardised by a batch norm without scale or offset (`feature_norm`, as MAE's linear
            probe), since raw SSL features share a large common component that a linear head on
            its own barely gets past. With a few labeled videos per class finetuning everything
            can forget what self-supervision learned; the paper finetunes everything (True).
            The two kinds have different weights: load a checkpoint into the kind that wrote it.

    Example:
        model = ClassifierModel(r3d18(width_multiplier=0.25), num_classes=101)
        load_pretrained_backbone(model, "model_dir/pretrain_invariant")
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
        model.fit(supervised_dataset(cfg), epochs=...)
    """

    def __init__(self, backbone: keras.Model, num_classes: int, dropout: float = 0.5,
                 train_backbone: bool = True, name: str = "classifier_model", **kwargs):
        super().__init__(["loss", "accuracy"], name=name, **kwargs)
        self.backbone = backbone
        self.classifier = Classifier(num_classes, dropout=dropout, name="classifier")
        self.classifier(ops.zeros((1, backbone.feature_dim)))  # build, so weights can be loaded now
        self.num_classes = int(num_classes)
        self.train_backbone = bool(train_backbone)
        self.feature_norm = None
        if not self.train_backbone:
            self.feature_norm = keras.layers.BatchNormalization(center=False, scale=False, dtype="float32",
                                                                name="feature_norm")
            self.feature_norm.build((None, backbone.feature_dim))
        self.built = True

    def call(self, clip, training=False):
        features = self.backbone(clip, training=training and self.train_backbone)["pooled"]
        if self.feature_norm is not None:
            # No backward graph through a frozen backbone; the norm's statistics follow the batches.
            features = self.feature_norm(ops.stop_gradient(ops.cast(features, "float32")), training=training)
        return self.classifier(features, training=training)

    def trainable_weights_to_update(self) -> list:
        if self.train_backbone:
            return self.trainable_variables
        return self.classifier.trainable_variables

    def compute_terms(self, data, training: bool) -> dict:
        logits = self(data["clip"], training=training)
        ce, accuracy = cross_entropy_and_accuracy(data["label"], logits)
        return {"loss": ce, "accuracy": (accuracy, ops.shape(logits)[0])}


def load_pretrained_backbone(model: ClassifierModel, pretrain_dir: str) -> str:
    """Load `<pretrain_dir>/backbone.weights.h5` (a stage-1/2/SSL checkpoint) into `model.backbone`.

    Verified: raises FileNotFoundError / ValueError naming the checkpoint if it is missing, does not
    match the architecture, or changes nothing. Returns the checkpoint path.
    """
    path = f"{pretrain_dir}/{BACKBONE_WEIGHTS}"
    load_weights_verified(model.backbone, path, what="pretrained backbone checkpoint")
    return path
