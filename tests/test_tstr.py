"""TSTR (Eq. 5-7) against numpy float64 references written with explicit loops."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from tbkeras.tstr import (
    combine_teacher_predictions,
    temporal_similarity_matrix,
    temporal_similarity_score,
)
from tests import float32_tolerances as f32


def _score_atol(n, d):
    """A float32 score (Eq. 6) vs float64: the cosines' error (bound 2), then a mean over n^2 masked entries.

    Each cosine is off by <= cosine_atol(d), so their mean too; C_I + C_D, the sum of n^2 entries of
    size <= 2 and the division add (n^2 + 2) U. Counting the diagonal, dividing by 2 n^2, one
    teacher only or no clipping move the scores of these tests by >= 30000 times this.
    """
    return f32.cosine_atol(d) + f32.reduction_rtol(n * n + 2)


def _cos(u, v):
    return float(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v)))


def ref_matrix(z):
    z = np.asarray(z, np.float64)
    batch, n, _ = z.shape
    out = np.zeros((batch, n, n))
    for i in range(batch):
        for t1 in range(n):
            for t2 in range(n):
                out[i, t1, t2] = _cos(z[i, t1], z[i, t2])
    return out


def ref_score(z_inv, z_dist):
    c_inv, c_dist = ref_matrix(z_inv), ref_matrix(z_dist)
    batch, n, _ = c_inv.shape
    scores = []
    for i in range(batch):
        total = sum(c_inv[i, t1, t2] + c_dist[i, t1, t2] for t1 in range(n) for t2 in range(n) if t1 != t2)
        scores.append(min(max(total / (2 * n * (n - 1)), 0.0), 1.0))
    return np.array(scores)


def _embeddings(rng, batch, n, d=6):
    """Per-video shared direction plus noise of varying size: scores spread over [0, 1] and below 0."""
    shared = rng.normal(size=(batch, 1, d))
    noise_scale = rng.uniform(0.1, 3.0, size=(batch, 1, 1))
    return (shared + noise_scale * rng.normal(size=(batch, n, d))).astype(np.float32)


@pytest.mark.parametrize("n", [2, 4])
def test_similarity_matrix_matches_reference(n):
    z = _embeddings(np.random.default_rng(n), 5, n)
    got = temporal_similarity_matrix(z)
    assert tuple(got.shape) == (5, n, n)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(got), ref_matrix(z), rtol=0, atol=f32.cosine_atol(6))


@pytest.mark.parametrize("n", [2, 4])
def test_score_matches_reference_and_is_clipped(n):
    rng = np.random.default_rng(10 + n)
    z_inv, z_dist = _embeddings(rng, 16, n), _embeddings(rng, 16, n)
    got = keras.ops.convert_to_numpy(temporal_similarity_score(z_inv, z_dist))
    assert got.shape == (16,)
    np.testing.assert_allclose(got, ref_score(z_inv, z_dist), rtol=0, atol=_score_atol(n, 6))
    assert np.all((got >= 0) & (got <= 1))


def test_score_extremes():
    direction = np.array([1.0, 2.0, -1.0], np.float32)
    identical = np.stack([direction] * 4)[None]  # every clip alike: s = 1
    opposite = np.stack([direction, -direction])[None]  # n = 2, cos = -1: clipped to 0
    np.testing.assert_allclose(float(temporal_similarity_score(identical, identical)[0]), 1.0, atol=_score_atol(4, 3))
    assert float(temporal_similarity_score(opposite, opposite)[0]) == 0.0
    # One teacher sees identical clips, the other orthogonal ones: the mean of both, 0.5.
    orthogonal = np.eye(4, dtype=np.float32)[None]
    np.testing.assert_allclose(
        float(temporal_similarity_score(np.ones((1, 4, 4), np.float32), orthogonal)[0]), 0.5, atol=_score_atol(4, 4)
    )


def test_combination_matches_reference_and_reduces_to_one_teacher():
    rng = np.random.default_rng(3)
    p_inv = rng.dirichlet(np.ones(5), size=4).astype(np.float32)
    p_dist = rng.dirichlet(np.ones(5), size=4).astype(np.float32)
    s = rng.uniform(size=4).astype(np.float32)
    want = np.zeros((4, 5))
    for i in range(4):
        for c in range(5):
            want[i, c] = s[i] * p_inv[i, c] + (1 - s[i]) * p_dist[i, c]
    got = keras.ops.convert_to_numpy(combine_teacher_predictions(p_inv, p_dist, s))
    # 1 - s, two products and a sum of values <= 1: <= 3 U. The rows of the float32 inputs sum to 1
    # to within U (each entry rounded once), numpy's float32 sum of 5 adds 4 U: <= 8 U in all.
    # Swapping s and 1 - s moves an entry by 0.23.
    np.testing.assert_allclose(got, want, rtol=0, atol=f32.FEW_ROUNDINGS)
    np.testing.assert_allclose(got.sum(-1), 1.0, rtol=f32.FEW_ROUNDINGS)
    ones, zeros = np.ones(4, np.float32), np.zeros(4, np.float32)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(combine_teacher_predictions(p_inv, p_dist, ones)), p_inv)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(combine_teacher_predictions(p_inv, p_dist, zeros)), p_dist)


def test_bfloat16_embeddings_give_float32_scores():
    z = tf.cast(_embeddings(np.random.default_rng(4), 3, 4), tf.bfloat16)
    got = temporal_similarity_score(z, z)
    assert keras.backend.standardize_dtype(got.dtype) == "float32"
    np.testing.assert_allclose(   # bfloat16 -> float32 is exact: the float32 bound applies
        keras.ops.convert_to_numpy(got), ref_score(tf.cast(z, tf.float64).numpy(), tf.cast(z, tf.float64).numpy()),
        rtol=0, atol=_score_atol(4, 6),
    )


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="n >= 2"):
        temporal_similarity_score(np.ones((2, 1, 3), np.float32), np.ones((2, 1, 3), np.float32))
    with pytest.raises(ValueError, match="same shape"):
        temporal_similarity_score(np.ones((2, 2, 3), np.float32), np.ones((2, 3, 3), np.float32))
