import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from tbkeras.evaluate import (evaluate_classifier, metrics_from_probabilities, predict_videos, top1_by_group,
                              write_evaluation)
from tests import float32_tolerances as f32


def _reference(probabilities, labels, num_classes):
    """Loop-by-loop numpy reference."""
    top1 = top5 = 0
    confusion = np.zeros((num_classes, num_classes), int)
    for p, y in zip(probabilities, labels):
        order = sorted(range(num_classes), key=lambda c: (-p[c], c))
        top1 += order[0] == y
        top5 += y in order[:5]
        confusion[y, order[0]] += 1
    per_class = [confusion[c, c] / confusion[c].sum() if confusion[c].sum() else None for c in range(num_classes)]
    return top1 / len(labels), top5 / len(labels), confusion, per_class


def test_metrics_match_a_numpy_reference():
    rng = np.random.default_rng(3)
    num_classes = 7
    logits = rng.normal(size=(40, num_classes))
    labels = rng.integers(0, num_classes - 1, size=40)        # class 6 never appears
    logits[np.arange(0, 40, 3), labels[::3]] += 3.0            # some right, some wrong
    probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    result = metrics_from_probabilities(probabilities, labels, num_classes)
    top1, top5, confusion, per_class = _reference(probabilities, labels, num_classes)
    assert result.num_videos == 40
    np.testing.assert_allclose([result.top1, result.top5], [top1, top5])
    np.testing.assert_array_equal(np.array(result.confusion), confusion)
    assert result.per_class_accuracy[6] is None
    np.testing.assert_allclose(result.per_class_accuracy[:6], per_class[:6])
    np.testing.assert_allclose(result.mean_class_accuracy, np.mean(per_class[:6]))
    assert 0 < result.top1 < result.top5 < 1


def test_hand_made_case_and_json(tmp_path):
    probabilities = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1]])
    labels = np.array([0, 1, 1])
    result = metrics_from_probabilities(probabilities, labels, 3, class_names=["run", "jump", "sit"])
    assert result.top1 == pytest.approx(1 / 3) and result.top5 == 1.0    # top-5 = top-3 with 3 classes
    assert result.confusion == ((1, 0, 0), (1, 0, 1), (0, 0, 0))
    assert result.per_class_accuracy == (1.0, 0.0, None)
    path = str(tmp_path / "evaluation.json")
    write_evaluation(path, result)
    with open(path) as f:
        written = json.load(f)
    assert written["class_names"] == ["run", "jump", "sit"]
    assert written["per_class_accuracy"] == [1.0, 0.0, None]
    assert written["confusion"][1] == [1, 0, 1]


def test_top1_by_group_counts_the_videos_of_each_group_of_classes():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 5, size=60)
    labels[labels == 3] = 2                                     # class 3 has no video
    predicted = np.where(rng.random(60) < 0.5, labels, rng.integers(0, 5, size=60))
    probabilities = np.eye(5)[predicted]
    result = metrics_from_probabilities(probabilities, labels, 5)
    groups = ["rep", "order", "rep", "order", "none"]
    labels_group = np.array(groups)[labels]
    by_group = top1_by_group(result.confusion, groups)
    assert list(by_group) == ["rep", "order", "none"]
    for group in ("rep", "order", "none"):
        mine = labels_group == group
        assert by_group[group] == pytest.approx(np.mean(predicted[mine] == labels[mine]))
    # A prediction of another class of the same group is still wrong.
    assert top1_by_group([[0, 2], [0, 1]], ["a", "a"]) == {"a": pytest.approx(1 / 3)}
    assert top1_by_group([[1, 0], [0, 0]], ["a", "b"]) == {"a": 1.0, "b": None}
    with pytest.raises(ValueError, match="3 class groups for 2 classes"):
        top1_by_group([[1, 0], [0, 1]], ["a", "b", "c"])


def test_bad_labels_are_clear_errors():
    with pytest.raises(ValueError, match=r"labels outside \[0, 3\): \[3\]"):
        metrics_from_probabilities(np.full((2, 3), 1 / 3), np.array([0, 3]), 3)
    with pytest.raises(ValueError, match=r"probabilities must be \[N, 4\]"):
        metrics_from_probabilities(np.full((2, 3), 1 / 3), np.array([0, 1]), 4)


def _linear_video_classifier(num_classes=4):
    """Stand-in classifier with known logits: mean colour of the clip through a fixed Dense."""
    inputs = keras.Input((None, None, None, 3))
    x = keras.layers.GlobalAveragePooling3D()(inputs)
    dense = keras.layers.Dense(num_classes)
    model = keras.Model(inputs, dense(x))
    rng = np.random.default_rng(0)
    dense.set_weights([rng.normal(size=(3, num_classes)) * 5, rng.normal(size=num_classes)])
    return model, dense


def test_view_averaged_softmax_over_a_dataset():
    model, dense = _linear_video_classifier()
    rng = np.random.default_rng(1)
    views = rng.random((5, 6, 2, 4, 4, 3), dtype=np.float32)     # 5 videos, K*C = 6 views
    labels = np.array([0, 1, 2, 3, 0], np.int32)
    dataset = tf.data.Dataset.from_tensor_slices(
        {"views": views, "label": labels, "video_id": [f"v{i}" for i in range(5)]}).batch(2)
    probabilities, got_labels, ids = predict_videos(model, dataset)
    kernel, bias = (w.astype(np.float64) for w in dense.get_weights())
    mean_colour = views.astype(np.float64).mean(axis=(2, 3, 4))      # [5, 6, 3], float64 reference
    logits = mean_colour @ kernel + bias                              # [5, 6, C]
    per_view = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    # float32 bounds (tests/float32_tolerances.py): the mean of 32 values >= 0 (32 U relative,
    # bound 1) then 3 weights and a bias (4 U) give each logit's error; a probability moves by
    # twice that, relative (bound 5 adds the softmax's rounding), and its mean over 6 views by 6 U.
    # The softmax of the mean logits instead of the mean of the softmaxes is 2700 times this off.
    logit_error = (32 + 4) * f32.U * (mean_colour @ np.abs(kernel)) + 4 * f32.U * np.abs(bias)
    view_rtol = 2 * logit_error.max(-1) + f32.softmax_rtol(4, np.ptp(logits, axis=-1).max())  # [5, 6]
    video_rtol = view_rtol.max(-1, keepdims=True) + f32.reduction_rtol(6)                    # [5, 1]
    expected = per_view.mean(axis=1)
    f32.assert_within(probabilities, expected, video_rtol * expected, "view-averaged probabilities")
    np.testing.assert_array_equal(got_labels, labels)
    assert ids == [f"v{i}" for i in range(5)]
    result = evaluate_classifier(model, dataset, 4)
    assert result.top1 == pytest.approx(np.mean(per_view.mean(1).argmax(-1) == labels))
