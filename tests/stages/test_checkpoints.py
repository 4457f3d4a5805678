import os

import keras
import numpy as np
import pytest

from tbkeras.models import r3d18
from tbkeras.stages import checkpoints
from tests.stages import tiny


def _perturbed(model, seed=1):
    """Stand-in for training: every weight moved, so a checkpoint differs from any fresh model."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        v.assign(np.asarray(v) + rng.normal(0, 0.01, v.shape).astype(np.float32))
    return model


def test_encoder_round_trip_is_verified(tmp_path):
    backbone, head = _perturbed(tiny.backbone(0)), tiny.head(0)
    head(np.zeros((1, backbone.feature_dim), np.float32))
    _perturbed(checkpoints.head_as_model(head, backbone.feature_dim))
    paths = checkpoints.save_encoder(str(tmp_path), backbone, head)
    assert sorted(os.listdir(tmp_path)) == [checkpoints.BACKBONE_WEIGHTS, checkpoints.HEAD_WEIGHTS]
    assert paths["backbone"].endswith(checkpoints.BACKBONE_WEIGHTS)

    fresh_backbone, fresh_head = tiny.backbone(5), tiny.head(5)
    checkpoints.load_encoder(str(tmp_path), fresh_backbone, fresh_head)
    for a, b in zip(backbone.weights + head.weights, fresh_backbone.weights + fresh_head.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_missing_checkpoint_names_the_path(tmp_path):
    path = str(tmp_path / "pretrain_invariant" / checkpoints.BACKBONE_WEIGHTS)
    with pytest.raises(FileNotFoundError, match="pretrain_invariant/backbone.weights.h5"):
        checkpoints.load_weights_verified(tiny.backbone(), path, what="pretrained backbone")


def test_wrong_architecture_names_the_path(tmp_path):
    path = str(tmp_path / checkpoints.BACKBONE_WEIGHTS)
    checkpoints.save_weights(_perturbed(tiny.backbone()), path)
    keras.utils.set_random_seed(0)
    wider = r3d18(width_multiplier=2 * tiny.WIDTH)
    with pytest.raises(ValueError, match=f"could not load pretrained backbone {path}"):
        checkpoints.load_weights_verified(wider, path, what="pretrained backbone")


def test_checkpoint_that_changes_nothing_is_refused(tmp_path):
    path = str(tmp_path / checkpoints.BACKBONE_WEIGHTS)
    backbone = tiny.backbone(0)
    checkpoints.save_weights(backbone, path)
    with pytest.raises(ValueError, match="changed no weight"):
        checkpoints.load_weights_verified(tiny.backbone(0), path)


def test_save_weights_is_atomic_and_leaves_no_temp_files(tmp_path):
    path = str(tmp_path / "classifier.weights.h5")
    checkpoints.save_weights(tiny.backbone(), path)
    checkpoints.save_weights(tiny.backbone(), path)   # overwrite in place
    assert os.listdir(tmp_path) == ["classifier.weights.h5"]


def test_partial_load_is_refused(tmp_path, monkeypatch):
    """Keras can skip a nested layer with only a warning; a kernel left fresh must be an error."""
    def two_layers():
        return keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, name="a"), keras.layers.Dense(2, name="b")])
    path = str(tmp_path / "model.weights.h5")
    checkpoints.save_weights(_perturbed(two_layers()), path)
    model = two_layers()
    reference = two_layers()
    reference.load_weights(path)

    def load_only_first_layer(_):
        for v, ref in zip(model.layers[0].weights, reference.layers[0].weights):
            v.assign(ref)
    monkeypatch.setattr(model, "load_weights", load_only_first_layer)
    with pytest.raises(ValueError, match=r"left these kernels .* at their fresh values \(partial load\).*b/kernel"):
        checkpoints.load_weights_verified(model, path)
