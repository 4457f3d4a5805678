"""The teachers' self-supervised contrastive losses: L_I (Eq. 1), L_D1 (Eq. 3) and L_D2 (TCLR).

Notation: h(u, v) = exp(cos(u, v) / temperature). Each anchor's term is
-log(h(anchor, positive) / denominator), computed as logsumexp(logits) - positive_logit so that it
stays finite at small temperatures. `denominator` picks what is summed below the line:
- "standard" (default, as the official code): NT-Xent, the positive plus the negatives;
- "paper": the negatives only, as printed in Eq. 1 and Eq. 3.

Embeddings need not be normalised (they are L2-normalised here), any float dtype is accepted and
everything is computed in float32. Every loss returns the per-replica mean as a float32 scalar:
scaling for `tf.distribute` happens once, in the train step. Per-example weights `[B]` reduce as
mean(sample_weight * loss) over the batch (see `common.weighted_batch_mean`).
"""
from __future__ import annotations

import keras
from keras import ops

from tbkeras.losses.common import (
    check_num_clips,
    check_same_shape,
    check_temperature,
    l2_normalize,
    weighted_batch_mean,
)

DENOMINATORS = ("standard", "paper")

# Logit given to masked-out entries: exp(_MASKED_LOGIT - max) underflows to exactly 0, while
# staying finite, so neither the value nor the gradient can become NaN.
_MASKED_LOGIT = -1e9


def _check_denominator(denominator: str):
    if denominator not in DENOMINATORS:
        raise ValueError(f"denominator must be one of {DENOMINATORS}, got {denominator!r}")


def _contrastive_term(positive_logit, negative_logits, negative_mask, denominator: str):
    """-log(h(a, p) / denominator) per anchor, by log-sum-exp.

    Args:
      positive_logit: [...] cos(anchor, positive) / temperature.
      negative_logits: [..., K] cos(anchor, candidate) / temperature.
      negative_mask: bool, broadcastable to negative_logits: True where the candidate is a negative.
      denominator: "standard" (positive also below the line) or "paper" (negatives only).
    Returns:
      [...] the per-anchor loss.
    """
    negative_logits = ops.where(negative_mask, negative_logits, _MASKED_LOGIT)
    if denominator == "standard":
        negative_logits = ops.concatenate([positive_logit[..., None], negative_logits], axis=-1)
    return ops.logsumexp(negative_logits, axis=-1) - positive_logit


def _replica_negative_pool(z):
    """All replicas' embeddings, as negatives for the local anchors of L_I.

    The only place in the losses that touches `tf.distribute`: in a replica context with several
    replicas, returns `ReplicaContext.all_gather(z)` (concatenated in replica order) and the offset
    of this replica's examples in it. The all-gather has a gradient (all-reduce of the incoming
    gradients, then this replica's slice), so each replica's embeddings also get the gradient of
    the other replicas' losses through their role as negatives: summed across replicas, as Keras
    does, the gradients are those of the sum of the per-replica losses.

    Args:
      z: float32 [b, n, d], this replica's embeddings.
    Returns:
      (z_all [B_global, n, d], offset: int32 scalar), or (z, 0) with one replica.
    """
    if keras.backend.backend() != "tensorflow":
        raise ValueError(
            "gather_across_replicas=True needs the TensorFlow backend (tf.distribute), "
            f"the Keras backend is {keras.backend.backend()!r}"
        )
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None:
        raise RuntimeError(
            "gather_across_replicas=True must be called in a replica context "
            "(inside strategy.run or a Keras train_step), not in a cross-replica context"
        )
    if context.num_replicas_in_sync == 1:
        return z, 0
    z_all = context.all_gather(z, axis=0)
    # Local batch sizes may differ (last batch), so add up those of the replicas before this one.
    # The control dependency pins the order of the two collectives: every replica must issue
    # them in the same order.
    with tf.control_dependencies([z_all]):
        batch_sizes = context.all_gather(tf.shape(z)[:1], axis=0)
    offset = tf.reduce_sum(batch_sizes[: context.replica_id_in_sync_group])
    return z_all, offset


def temporal_invariance_loss(
    z,
    temperature: float = 0.1,
    denominator: str = "standard",
    sample_weight=None,
    gather_across_replicas: bool = False,
):
    """Temporal-invariance loss L_I (Eq. 1): clips of one video attract, other videos repel.

    For video i and every ordered pair of timestamps t1 != t2 the anchor is z[i, t1], the positive
    z[i, t2], and the negatives are z[j, t1] and z[j, t2] for every other video j != i. The result
    is the mean over the n(n-1) ordered pairs, then the weighted mean over the batch.

    Args:
      z: [B, n, d] projections of n clips (timestamps) of B videos, n >= 2 (static).
      temperature: tau of h(u, v) = exp(cos(u, v) / tau).
      denominator: "standard" | "paper" (see the module docstring). "paper" needs B >= 2
        videos in the negative pool (otherwise there are no negatives).
      sample_weight: optional per-video weight [B]; reduction mean(w * loss).
      gather_across_replicas: if True, the negatives are taken from the videos of every replica
        (all-gather); anchors and positives stay local. Equals the plain loss with one replica.
    Returns:
      float32 scalar, the per-replica mean.
    """
    _check_denominator(denominator)
    check_temperature(temperature)
    n = check_num_clips(z, "temporal_invariance_loss: z")
    if denominator == "paper" and z.shape[0] == 1 and not gather_across_replicas:
        raise ValueError("temporal_invariance_loss with denominator='paper' needs a batch of B >= 2 videos")
    z = l2_normalize(z)
    pool, offset = _replica_negative_pool(z) if gather_across_replicas else (z, 0)

    # positive[i, t1, t2] = cos(z[i, t1], z[i, t2]) / tau.
    positive = ops.einsum("itd,iud->itu", z, z) / temperature
    # Negatives of the pair (t1, t2) for anchor (i, t1): pool[j, t1] (the anchor's timestamp)
    # and pool[j, t2] (the positive's timestamp), for j != i.
    same_timestamp = ops.einsum("itd,jtd->itj", z, pool) / temperature  # [b, n, B_pool]
    any_timestamp = ops.einsum("itd,jud->ituj", z, pool) / temperature  # [b, n(t1), n(t2), B_pool]
    same_timestamp = ops.broadcast_to(same_timestamp[:, :, None, :], ops.shape(any_timestamp))
    negatives = ops.concatenate([same_timestamp, any_timestamp], axis=-1)  # [b, n, n, 2 B_pool]

    batch_index = ops.arange(ops.shape(z)[0]) + offset
    other_video = batch_index[:, None] != ops.arange(ops.shape(pool)[0])[None, :]  # [b, B_pool]
    negative_mask = ops.concatenate([other_video, other_video], axis=-1)[:, None, None, :]

    per_pair = _contrastive_term(positive, negatives, negative_mask, denominator)  # [b, n, n]
    off_diagonal = 1.0 - ops.eye(n, dtype="float32")
    per_video = ops.sum(per_pair * off_diagonal, axis=(1, 2)) / (n * (n - 1))
    return weighted_batch_mean(per_video, sample_weight)


def temporal_distinctiveness_loss(
    z,
    z_aug,
    temperature: float = 0.1,
    denominator: str = "standard",
    sample_weight=None,
):
    """Pooled temporal-distinctiveness loss L_D1 (Eq. 3): same timestamp attracts, others repel.

    z and z_aug are two augmentations of the same n clips. Anchors come from both views: the
    positive of z[i, t] is z_aug[i, t] and that of z_aug[i, t] is z[i, t]; the negatives are the
    other timestamps t' != t of the same video, in both views (2(n - 1) of them). The result is
    the mean over the 2n anchors, then the weighted mean over the batch (not the official code's
    sum over the batch).

    Args:
      z, z_aug: [B, n, d] projections, n >= 2 (static).
      temperature: tau.
      denominator: "standard" | "paper".
      sample_weight: optional per-video weight [B]; reduction mean(w * loss).
    Returns:
      float32 scalar, the per-replica mean.
    """
    _check_denominator(denominator)
    check_temperature(temperature)
    n = check_num_clips(z, "temporal_distinctiveness_loss: z")
    check_same_shape(z, z_aug, "temporal_distinctiveness_loss: z and z_aug")
    z = l2_normalize(z)
    z_aug = l2_normalize(z_aug)

    positive = ops.sum(z * z_aug, axis=-1) / temperature  # [B, n], the same for both views
    positive = ops.concatenate([positive, positive], axis=1)  # [B, 2n], anchors z then z_aug
    views = ops.concatenate([z, z_aug], axis=1)  # [B, 2n, d]
    logits = ops.einsum("iad,ibd->iab", views, views) / temperature  # [B, 2n, 2n]
    timestamp = ops.arange(2 * n) % n
    other_timestamp = (timestamp[:, None] != timestamp[None, :])[None]  # [1, 2n, 2n]

    per_anchor = _contrastive_term(positive, logits, other_timestamp, denominator)  # [B, 2n]
    return weighted_batch_mean(ops.mean(per_anchor, axis=-1), sample_weight)


def global_local_loss(global_slices, local_pooled, temperature: float = 0.1, sample_weight=None):
    """Unpooled temporal-distinctiveness loss L_D2 (TCLR's global-local loss, Supp. D.2).

    A global clip spans the n local clips; its backbone output keeps n temporal slices. With
    M[i] = cos(global_slices[i, t], local_pooled[i, t']) / tau (n x n), slice t must match local clip
    t: cross-entropy with target t along each row of M[i] and along each row of M[i]^T. The result
    is the mean over the n timestamps and the 2 directions, then the weighted mean over the batch.

    Args:
      global_slices: [B, n, d] projections of the global clip's n temporal slices.
      local_pooled: [B, n, d] projections of the n pooled local clips.
      temperature: tau.
      sample_weight: optional per-video weight [B]; reduction mean(w * loss).
    Returns:
      float32 scalar, the per-replica mean.
    """
    check_temperature(temperature)
    check_num_clips(global_slices, "global_local_loss: global_slices")
    check_same_shape(global_slices, local_pooled, "global_local_loss: global_slices and local_pooled")
    logits = ops.einsum("itd,iud->itu", l2_normalize(global_slices), l2_normalize(local_pooled))
    logits = logits / temperature  # [B, n(global), n(local)]
    aligned = ops.diagonal(logits, axis1=1, axis2=2)  # [B, n]
    global_to_local = ops.logsumexp(logits, axis=2) - aligned
    local_to_global = ops.logsumexp(logits, axis=1) - aligned
    per_video = 0.5 * (ops.mean(global_to_local, axis=-1) + ops.mean(local_to_global, axis=-1))
    return weighted_batch_mean(per_video, sample_weight)
