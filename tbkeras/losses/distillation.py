"""Distillation losses D(p_T, p_S) between the combined teacher and the student (Eq. 8, Table 6).

Inputs are probabilities (softmax outputs), not logits. Everything is computed in float32; logs
clip the probabilities to [EPSILON, 1], so one-hot (or zero) probabilities give finite values and
gradients. Per-example weights `[B]` reduce as mean(sample_weight * loss) over the batch (see
`common.weighted_batch_mean`); the result is the per-replica mean, a float32 scalar.
"""
from __future__ import annotations

from keras import ops

from tbkeras.losses.common import as_float32, check_rank, check_same_shape, weighted_batch_mean

KINDS = ("l2", "kl", "js")

# Probability floor inside logs: 0 * log(EPSILON) = 0 keeps the 0 log 0 = 0 convention.
EPSILON = 1e-7


def _kl_divergence(p, q):
    """KL(p || q) = sum_c p_c log(p_c / q_c), per example: [B, C] -> [B]."""
    log_p = ops.log(ops.clip(p, EPSILON, 1.0))
    log_q = ops.log(ops.clip(q, EPSILON, 1.0))
    return ops.sum(p * (log_p - log_q), axis=-1)


def distillation_loss(p_teacher, p_student, kind: str = "l2", sample_weight=None):
    """Distance between teacher and student class probabilities.

    - "l2" (Eq. 8, the paper's default): mean over classes of (p_t - p_s)^2;
    - "kl": KL(p_t || p_s) = sum over classes of p_t log(p_t / p_s);
    - "js": 0.5 KL(p_t || m) + 0.5 KL(p_s || m), m = (p_t + p_s) / 2.
    Each is then reduced over the batch as mean(sample_weight * loss).

    The teacher is not stopped here: the student train step only differentiates the student's
    variables.

    Args:
      p_teacher: [B, C] teacher probabilities (e.g. `combine_teacher_predictions`, Eq. 7).
      p_student: [B, C] student probabilities.
      kind: "l2" | "kl" | "js".
      sample_weight: optional per-example weight [B].
    Returns:
      float32 scalar, the per-replica mean.
    """
    if kind not in KINDS:
        raise ValueError(f"distillation_loss: kind must be one of {KINDS}, got {kind!r}")
    check_rank(p_teacher, 2, "distillation_loss: p_teacher", "[B, C]")
    check_same_shape(p_teacher, p_student, "distillation_loss: p_teacher and p_student")
    p_teacher = as_float32(p_teacher)
    p_student = as_float32(p_student)
    if kind == "l2":
        per_example = ops.mean(ops.square(p_teacher - p_student), axis=-1)
    elif kind == "kl":
        per_example = _kl_divergence(p_teacher, p_student)
    else:
        middle = 0.5 * (p_teacher + p_student)
        per_example = 0.5 * _kl_divergence(p_teacher, middle) + 0.5 * _kl_divergence(p_student, middle)
    return weighted_batch_mean(per_example, sample_weight)
