import numpy as np
import pytest

from tbkeras.stages import checkpoints
from tbkeras.stages.finetune import ClassifierModel, load_pretrained_backbone
from tbkeras.stages.pretrain import InvariantPretrainer
from tests import float32_tolerances as f32
from tests.stages import tiny


@pytest.mark.slow
def test_finetune_loss_goes_down_and_accuracy_is_logged():
    model = tiny.classifier(dropout=0.5)
    history = tiny.fit_history(model, tiny.supervised_element(batch=6), steps=5)
    assert sorted(history) == ["accuracy", "loss"]
    tiny.assert_decreases(history["loss"], "finetuning cross-entropy")
    assert all(0.0 <= a <= 1.0 for a in history["accuracy"])


def test_logged_loss_and_accuracy_match_numpy():
    model = tiny.classifier()
    element = tiny.supervised_element(batch=6)
    model.compile(jit_compile=False)
    logs = model.evaluate(tiny.repeated(element), steps=1, verbose=0, return_dict=True)
    logits = np.asarray(model(element["clip"]), np.float64)
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    labels = element["label"]
    # evaluate() runs a traced graph, model() eager ops: the logits may differ by estimate 7 of
    # tests/float32_tolerances.py (at their scale), which a log-softmax doubles; plus its own
    # rounding (bound 4) and the mean's over 6 (bound 1). A sum instead of the mean, or another
    # label, moves the loss by O(1).
    ce = -log_p[np.arange(6), labels].mean()
    scale = np.abs(logits).max()
    ce_atol = (2 * f32.NETWORK_RTOL * scale + f32.logsumexp_term_atol(scale, tiny.NUM_CLASSES)
               + f32.reduction_rtol(7) * ce)
    np.testing.assert_allclose(logs["loss"], ce, rtol=0, atol=ce_atol)
    # An exact count over 6: one float32 rounding.
    np.testing.assert_allclose(logs["accuracy"], np.mean(logits.argmax(-1) == labels), rtol=f32.FEW_ROUNDINGS)


def test_pretrained_backbone_is_really_loaded(tmp_path):
    pretrainer = InvariantPretrainer(tiny.backbone(0), tiny.head(0))
    for v in pretrainer.backbone.weights:          # stand-in for training
        v.assign(np.asarray(v) + 0.01)
    checkpoints.save_encoder(str(tmp_path), pretrainer.backbone, pretrainer.head)

    model = ClassifierModel(tiny.backbone(7), tiny.NUM_CLASSES)
    path = load_pretrained_backbone(model, str(tmp_path))
    assert path == f"{tmp_path}/{checkpoints.BACKBONE_WEIGHTS}"
    for a, b in zip(pretrainer.backbone.weights, model.backbone.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_missing_pretrained_backbone_is_an_error_not_training_from_scratch(tmp_path):
    model = tiny.classifier()
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}/empty_stage/backbone.weights.h5"):
        load_pretrained_backbone(model, str(tmp_path / "empty_stage"))


def test_classifier_weights_round_trip(tmp_path):
    """`classifier.weights.h5`: what finetuning and the student save, and the next stages load."""
    model = tiny.classifier(3)
    for v in model.weights:                         # stand-in for training
        v.assign(np.asarray(v) * 1.5 + 0.01)
    path = str(tmp_path / checkpoints.CLASSIFIER_WEIGHTS)
    checkpoints.save_weights(model, path)
    fresh = tiny.classifier(4)
    checkpoints.load_weights_verified(fresh, path, what="finetuned teacher")
    clip = tiny.supervised_element(batch=2)["clip"]
    # The same weights, inputs and kernels: equal bit for bit (1e-6 is 8 ulps of slack); a weight
    # left unloaded changes the outputs by O(1).
    np.testing.assert_allclose(np.asarray(fresh(clip)), np.asarray(model(clip)), rtol=1e-6)


def test_frozen_backbone_trains_the_classifier_alone():
    # train_backbone=False: the classifier's weights and the feature norm's statistics move, the
    # backbone's (convolutions and every batch-norm statistic: it runs in inference mode) stay
    # bit-identical.
    model = ClassifierModel(tiny.backbone(3), tiny.NUM_CLASSES, dropout=0.0, train_backbone=False)
    element = tiny.supervised_element(batch=6)
    backbone_before = [np.asarray(v).copy() for v in model.backbone.weights]
    head_before = [np.asarray(v).copy() for v in [*model.classifier.weights, *model.feature_norm.weights]]
    tiny.fit_history(model, element, steps=2, lr=1e-2, eagerly=True)
    for before, v in zip(backbone_before, model.backbone.weights):
        np.testing.assert_array_equal(before, np.asarray(v), err_msg=v.path)
    head_after = [*model.classifier.weights, *model.feature_norm.weights]
    assert all(np.abs(before - np.asarray(v)).max() > 1e-4 for before, v in zip(head_before, head_after))


def test_frozen_backbone_standardises_the_features():
    # In inference mode the feature norm is (x - moving_mean) / sqrt(moving_var + eps) before the
    # Dense (numpy reference, float64), so the logits equal the head applied to standardised features.
    model = ClassifierModel(tiny.backbone(3), tiny.NUM_CLASSES, dropout=0.0, train_backbone=False)
    rng = np.random.default_rng(0)
    mean, var = rng.normal(size=model.backbone.feature_dim), rng.uniform(0.5, 2.0, model.backbone.feature_dim)
    model.feature_norm.moving_mean.assign(mean.astype("float32"))
    model.feature_norm.moving_variance.assign(var.astype("float32"))
    clip = tiny.supervised_element(batch=3)["clip"]
    features = np.asarray(model.backbone(clip)["pooled"], np.float64)
    kernel, bias = (np.asarray(w, np.float64) for w in model.classifier.logits.weights)
    expected = (features - mean) / np.sqrt(var + model.feature_norm.epsilon) @ kernel + bias
    np.testing.assert_allclose(np.asarray(model(clip), np.float64), expected, rtol=1e-4, atol=1e-4)


def test_trained_backbone_moves_its_weights_and_statistics():
    # The contrast that makes the test above mean something: by default the backbone learns too.
    model = ClassifierModel(tiny.backbone(3), tiny.NUM_CLASSES, dropout=0.0)
    before = [np.asarray(v).copy() for v in model.backbone.weights]
    tiny.fit_history(model, tiny.supervised_element(batch=6), steps=2, lr=1e-2, eagerly=True)
    moved = [np.abs(b - np.asarray(v)).max() > 0 for b, v in zip(before, model.backbone.weights)]
    assert all(moved), [v.path for m, v in zip(moved, model.backbone.weights) if not m]
