"""Distillation losses against numpy float64 references written straight from the definitions (issue 4)."""
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tbkeras.losses import distillation_loss
from tests import float32_tolerances as f32


def _kl(p, q):
    """sum_c p_c log(p_c / q_c), with 0 log(0 / q) = 0."""
    return sum(p_c * math.log(p_c / q_c) for p_c, q_c in zip(p, q) if p_c > 0)


def ref_distillation(p_teacher, p_student, kind, sample_weight=None):
    p_teacher = np.asarray(p_teacher, np.float64)
    p_student = np.asarray(p_student, np.float64)
    batch, classes = p_teacher.shape
    per_example = []
    for i in range(batch):
        p, q = p_teacher[i], p_student[i]
        if kind == "l2":
            per_example.append(sum((p[c] - q[c]) ** 2 for c in range(classes)) / classes)
        elif kind == "kl":
            per_example.append(_kl(p, q))
        else:
            m = [(p[c] + q[c]) / 2 for c in range(classes)]
            per_example.append(0.5 * _kl(p, m) + 0.5 * _kl(q, m))
    weight = np.ones(batch) if sample_weight is None else np.asarray(sample_weight, np.float64)
    return float(np.mean(weight * np.asarray(per_example)))


def distillation_tolerance(p_teacher, p_student, kind, sample_weight=None, probability_rtol=0.0):
    """assert_allclose keywords: the float32 loss's worst-case error (tests/float32_tolerances.py).

    p_teacher, p_student: [B, C] the exact (float64) probabilities, of which the float32 inputs are
    off by at most `probability_rtol` relative (0: the same float32 values on both sides).
    "l2": a mean of squares (every term >= 0): bound 1 relative, plus the inputs' error through
    the squares. "kl", "js": bound 6, absolute (a divergence of close distributions is a small
    difference of large terms); (p + q) / 2 adds U. Then the mean over the batch of weighted terms
    >= 0 (bound 1). The plausible bugs tried (a sum over classes, KL(q || p), KL instead of JS, JS
    without the 1/2, sum(w) normalisation) moved these tests' losses by at least 3000 times this.
    (A floor of 1e-4 in the logs does not show on these probabilities; the one-hot test catches it.)
    """
    p = np.asarray(p_teacher, np.float64)
    q = np.asarray(p_student, np.float64)
    batch, classes = p.shape
    max_weight = 1.0 if sample_weight is None else float(np.max(sample_weight))
    r = probability_rtol
    if kind == "l2":
        inputs = np.mean(2 * np.abs(p - q) * r * (p + q), axis=-1).max()
        return {"rtol": f32.reduction_rtol(classes + batch + 4), "atol": max_weight * inputs}
    if kind == "kl":
        atol = f32.divergence_atol(p, q, r)
    else:
        m = (p + q) / 2
        atol = 0.5 * (f32.divergence_atol(p, m, r + f32.U) + f32.divergence_atol(q, m, r + f32.U))
    return {"rtol": f32.reduction_rtol(batch + 2), "atol": max_weight * atol}


def _probabilities(rng, batch, classes):
    logits = rng.normal(size=(batch, classes)) * 2.0
    return (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("kind", ["l2", "kl", "js"])
@pytest.mark.parametrize("weighted", [False, True])
def test_matches_reference(kind, weighted):
    rng = np.random.default_rng(1 + weighted)
    p_teacher, p_student = _probabilities(rng, 6, 5), _probabilities(rng, 6, 5)
    weight = rng.uniform(0.0, 2.0, size=6).astype(np.float32) if weighted else None
    got = distillation_loss(p_teacher, p_student, kind=kind, sample_weight=weight)
    assert got.shape == () and keras.backend.standardize_dtype(got.dtype) == "float32"
    want = ref_distillation(p_teacher, p_student, kind, weight)
    np.testing.assert_allclose(float(got), want, **distillation_tolerance(p_teacher, p_student, kind, weight))


def test_default_is_l2_and_weights_multiply():
    rng = np.random.default_rng(3)
    p_teacher, p_student = _probabilities(rng, 4, 3), _probabilities(rng, 4, 3)
    plain = float(distillation_loss(p_teacher, p_student))
    l2_tolerance = distillation_tolerance(p_teacher, p_student, "l2")
    np.testing.assert_allclose(plain, ref_distillation(p_teacher, p_student, "l2"), **l2_tolerance)
    weight = np.array([1.0, 0.0, 0.0, 0.0], np.float32)
    np.testing.assert_allclose(
        float(distillation_loss(p_teacher, p_student, sample_weight=weight)),
        ref_distillation(p_teacher[:1], p_student[:1], "l2") / 4,
        **l2_tolerance,
    )


@pytest.mark.parametrize("kind", ["l2", "kl", "js"])
def test_identical_distributions_give_zero(kind):
    # Exactly 0 in float32: p - p, log p - log p (the same op on the same values) and (p + p) / 2 = p.
    p = _probabilities(np.random.default_rng(4), 3, 4)
    assert float(distillation_loss(p, p, kind=kind)) == 0.0
    one_hot = np.eye(4, dtype=np.float32)[:3]
    assert float(distillation_loss(one_hot, one_hot, kind=kind)) == 0.0


@pytest.mark.parametrize("kind", ["l2", "kl", "js"])
def test_one_hot_probabilities_are_finite_with_finite_gradients(kind):
    classes = 4
    p_teacher = tf.Variable(np.eye(classes, dtype=np.float32)[[0, 1]])
    p_student = tf.Variable(np.eye(classes, dtype=np.float32)[[1, 1]])  # first row disagrees completely
    with tf.GradientTape() as tape:
        loss = distillation_loss(p_teacher, p_student, kind=kind)
    gradients = tape.gradient(loss, [p_teacher, p_student])
    assert np.isfinite(float(loss))
    assert all(np.all(np.isfinite(g.numpy())) for g in gradients)
    # The second row agrees (0); the first gives: l2 2/C, js log 2, kl large but finite.
    expected = {"l2": (2 / classes) / 2, "js": math.log(2) / 2}
    if kind in expected:
        # l2 is exact in float32; js is one float32 log(0.5) (<= 4 ulps) and exact halvings and sums.
        np.testing.assert_allclose(float(loss), expected[kind], rtol=f32.FEW_ROUNDINGS)
    else:
        assert 5.0 < float(loss) < 20.0


def test_bfloat16_inputs_give_float32():
    rng = np.random.default_rng(5)
    p_teacher = tf.cast(_probabilities(rng, 3, 4), tf.bfloat16)
    p_student = tf.cast(_probabilities(rng, 3, 4), tf.bfloat16)
    got = distillation_loss(p_teacher, p_student, kind="js")
    assert keras.backend.standardize_dtype(got.dtype) == "float32"
    p64, q64 = tf.cast(p_teacher, tf.float64).numpy(), tf.cast(p_student, tf.float64).numpy()
    want = ref_distillation(p64, q64, "js")
    # bfloat16 -> float32 is exact: the float32 bound applies.
    np.testing.assert_allclose(float(got), want, **distillation_tolerance(p64, q64, "js"))


def test_bad_arguments_are_named():
    p = np.full((2, 3), 1 / 3, np.float32)
    with pytest.raises(ValueError, match=r"'l2', 'kl', 'js'.*'mse'"):
        distillation_loss(p, p, kind="mse")
    with pytest.raises(ValueError, match="same shape"):
        distillation_loss(p, p[:, :2])
    with pytest.raises(ValueError, match=r"\[B, C\]"):
        distillation_loss(p[0], p[0])
