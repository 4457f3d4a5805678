"""Temporal Similarity based Teacher Reweighting (TSTR, paper Sec. 3.2, Eq. 5-7).

A video whose clips look alike through both teachers (high temporal similarity) leans on the
temporally-invariant teacher; one whose clips differ leans on the temporally-distinctive teacher.
Computed in float32 whatever the input dtype.
"""
from __future__ import annotations

from keras import ops

from tbkeras.losses.common import as_float32, check_num_clips, check_same_shape, l2_normalize


def temporal_similarity_matrix(z):
    """Cosine similarity between every pair of a video's clips (Eq. 5).

    Args:
      z: [B, n, d] one teacher's projections of n clips per video (need not be normalised).
    Returns:
      float32 [B, n, n], entry [i, t1, t2] = cos(z[i, t1], z[i, t2]).
    """
    z = l2_normalize(z)
    return ops.einsum("itd,iud->itu", z, z)


def temporal_similarity_score(z_inv, z_dist):
    """Temporal similarity score s (Eq. 6), clipped to [0, 1].

    s = sum of the off-diagonal entries of C_I and C_D / (2 n (n - 1)), i.e. the mean of the
    off-diagonal entries of both teachers' matrices together.

    Args:
      z_inv: [B, n, d] the invariant teacher's projections, n >= 2 (static).
      z_dist: [B, n, d] the distinctive teacher's projections of the same clips.
    Returns:
      float32 [B] in [0, 1].
    """
    n = check_num_clips(z_inv, "temporal_similarity_score: z_inv")
    check_same_shape(z_inv, z_dist, "temporal_similarity_score: z_inv and z_dist")
    off_diagonal = 1.0 - ops.eye(n, dtype="float32")
    both = temporal_similarity_matrix(z_inv) + temporal_similarity_matrix(z_dist)
    score = ops.sum(both * off_diagonal, axis=(1, 2)) / (2 * n * (n - 1))
    return ops.clip(score, 0.0, 1.0)


def combine_teacher_predictions(p_inv, p_dist, s):
    """Combined teacher prediction p_T = s * p_I + (1 - s) * p_D (Eq. 7).

    Args:
      p_inv: [B, C] probabilities of the invariant teacher.
      p_dist: [B, C] probabilities of the distinctive teacher.
      s: [B] temporal similarity scores in [0, 1].
    Returns:
      float32 [B, C].
    """
    s = ops.reshape(as_float32(s), (-1, 1))
    return s * as_float32(p_inv) + (1.0 - s) * as_float32(p_dist)
