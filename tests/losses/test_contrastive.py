"""Contrastive losses against numpy float64 references written straight from the definitions (issue 4)."""
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tbkeras.losses import (
    global_local_loss,
    temporal_distinctiveness_loss,
    temporal_invariance_loss,
)
from tests import float32_tolerances as f32
from tests.strategies import two_cpu_strategy


# ---------------------------------------------------------------- numpy float64 references


def _cos(u, v):
    return float(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v)))


def _h(u, v, tau):
    return math.exp(_cos(u, v) / tau)


def _term(anchor, positive, negatives, tau, denominator):
    """-log(h(anchor, positive) / denominator); the "standard" denominator includes the positive."""
    above = _h(anchor, positive, tau)
    below = sum(_h(anchor, negative, tau) for negative in negatives)
    if denominator == "standard":
        below += above
    return -math.log(above / below)


def _reduce(per_example, sample_weight):
    per_example = np.asarray(per_example, np.float64)
    weight = np.ones_like(per_example) if sample_weight is None else np.asarray(sample_weight, np.float64)
    return float(np.mean(weight * per_example))


def ref_invariance_per_video(z, tau, denominator, anchors=None):
    """L_I per anchor video i (in `anchors`, default all), negatives from every other video of z."""
    z = np.asarray(z, np.float64)
    batch, n, _ = z.shape
    anchors = range(batch) if anchors is None else anchors
    per_video = []
    for i in anchors:
        terms = []
        for t1 in range(n):
            for t2 in range(n):
                if t1 == t2:
                    continue
                negatives = [z[j, t1] for j in range(batch) if j != i] + [z[j, t2] for j in range(batch) if j != i]
                terms.append(_term(z[i, t1], z[i, t2], negatives, tau, denominator))
        per_video.append(np.mean(terms))
    return per_video


def ref_invariance(z, tau, denominator, sample_weight=None):
    return _reduce(ref_invariance_per_video(z, tau, denominator), sample_weight)


def ref_distinctiveness(z, z_aug, tau, denominator, sample_weight=None):
    z = np.asarray(z, np.float64)
    z_aug = np.asarray(z_aug, np.float64)
    batch, n, _ = z.shape
    per_video = []
    for i in range(batch):
        terms = []
        for anchor_view, positive_view in ((z, z_aug), (z_aug, z)):
            for t in range(n):
                others = [u for u in range(n) if u != t]
                negatives = [z[i, u] for u in others] + [z_aug[i, u] for u in others]
                terms.append(_term(anchor_view[i, t], positive_view[i, t], negatives, tau, denominator))
        per_video.append(np.mean(terms))
    return _reduce(per_video, sample_weight)


def ref_global_local(global_slices, local_pooled, tau, sample_weight=None):
    global_slices = np.asarray(global_slices, np.float64)
    local_pooled = np.asarray(local_pooled, np.float64)
    batch, n, _ = global_slices.shape
    per_video = []
    for i in range(batch):
        m = np.zeros((n, n))
        for t in range(n):
            for u in range(n):
                m[t, u] = _cos(global_slices[i, t], local_pooled[i, u]) / tau
        terms = []
        for t in range(n):
            terms.append(-math.log(math.exp(m[t, t]) / sum(math.exp(m[t, u]) for u in range(n))))
            terms.append(-math.log(math.exp(m[t, t]) / sum(math.exp(m[u, t]) for u in range(n))))
        per_video.append(np.mean(terms))
    return _reduce(per_video, sample_weight)


# ---------------------------------------------------------------- helpers


def _tolerance(temperature, d, k, terms, weight=None, sides=1):
    """assert_allclose keywords: the float32 loss's worst-case error (tests/float32_tolerances.py, bound 4).

    k candidates per log-sum-exp, `terms` terms and divisions averaged into the loss; `sides=2` when
    both sides are float32. Every plausible bug tried (tau off by 1%, the other denominator, the
    negatives of one timestamp only, the own video's clips as negatives, / n^2 instead of
    / n(n - 1), one view's anchors only, one direction of L_D2, the sum or sum(w) normalisation
    over the batch) moved these tests' losses by at least 100 times this tolerance.
    """
    max_weight = 1.0 if weight is None else float(np.max(weight))
    return {"rtol": 0.0, "atol": sides * f32.contrastive_loss_atol(temperature, d, k, terms, max_weight)}


def _invariance_tolerance(z, temperature, weight=None, sides=1, batch=None):
    """L_I of z [b, n, d]: 2 B + 1 candidates (B the negative pool's videos), n^2 masked pairs per video."""
    b, n, d = np.shape(z)
    batch = b if batch is None else batch
    return _tolerance(temperature, d, 2 * batch + 1, n * n + b + 2, weight, sides)


def _distinctiveness_tolerance(z, temperature, weight=None):
    """L_D1: 2n + 1 candidates, 2n anchors per video."""
    b, n, d = np.shape(z)
    return _tolerance(temperature, d, 2 * n + 1, 2 * n + b + 2, weight)


def _global_local_tolerance(z, temperature, weight=None):
    """L_D2: n candidates, n anchors in each of 2 directions per video."""
    b, n, d = np.shape(z)
    return _tolerance(temperature, d, n, 2 * n + b + 3, weight)


def _embeddings(rng, batch, n, d=8):
    """Random, deliberately unnormalised embeddings (the losses normalise)."""
    return (rng.normal(size=(batch, n, d)) * rng.uniform(0.5, 3.0, size=(batch, n, 1))).astype(np.float32)


def _weights(rng, batch, weighted):
    return rng.uniform(0.0, 2.0, size=batch).astype(np.float32) if weighted else None


def _gradients_are_finite(loss_fn, *inputs):
    variables = [tf.Variable(x) for x in inputs]
    with tf.GradientTape() as tape:
        loss = loss_fn(*variables)
    gradients = tape.gradient(loss, variables)
    return np.isfinite(float(loss)) and all(np.all(np.isfinite(g.numpy())) for g in gradients)


# ---------------------------------------------------------------- values against the references


@pytest.mark.parametrize("n", [2, 4])
@pytest.mark.parametrize("denominator", ["standard", "paper"])
@pytest.mark.parametrize("weighted", [False, True])
def test_invariance_matches_reference(n, denominator, weighted):
    rng = np.random.default_rng(n * 10 + weighted)
    z = _embeddings(rng, 5, n)
    weight = _weights(rng, 5, weighted)
    got = temporal_invariance_loss(z, temperature=0.1, denominator=denominator, sample_weight=weight)
    assert got.shape == () and keras.backend.standardize_dtype(got.dtype) == "float32"
    want = ref_invariance(z, 0.1, denominator, weight)
    np.testing.assert_allclose(float(got), want, **_invariance_tolerance(z, 0.1, weight))


@pytest.mark.parametrize("n", [2, 4])
@pytest.mark.parametrize("denominator", ["standard", "paper"])
@pytest.mark.parametrize("weighted", [False, True])
def test_distinctiveness_matches_reference(n, denominator, weighted):
    rng = np.random.default_rng(n * 10 + weighted + 1)
    z, z_aug = _embeddings(rng, 3, n), _embeddings(rng, 3, n)
    weight = _weights(rng, 3, weighted)
    got = temporal_distinctiveness_loss(z, z_aug, temperature=0.2, denominator=denominator, sample_weight=weight)
    want = ref_distinctiveness(z, z_aug, 0.2, denominator, weight)
    np.testing.assert_allclose(float(got), want, **_distinctiveness_tolerance(z, 0.2, weight))


@pytest.mark.parametrize("n", [2, 4])
@pytest.mark.parametrize("weighted", [False, True])
def test_global_local_matches_reference(n, weighted):
    rng = np.random.default_rng(n * 10 + weighted + 2)
    global_slices, local_pooled = _embeddings(rng, 3, n), _embeddings(rng, 3, n)
    weight = _weights(rng, 3, weighted)
    got = global_local_loss(global_slices, local_pooled, temperature=0.1, sample_weight=weight)
    want = ref_global_local(global_slices, local_pooled, 0.1, weight)
    np.testing.assert_allclose(float(got), want, **_global_local_tolerance(global_slices, 0.1, weight))


def test_sample_weight_is_a_multiplier_over_the_batch_size():
    """mean(w * l): all-ones equals no weight, and doubling every weight doubles the loss."""
    rng = np.random.default_rng(3)
    z = _embeddings(rng, 4, 2)
    plain = float(temporal_invariance_loss(z))
    # The same per-video losses times 1 or 2 (exact): only the mean over the 4 videos (terms >= 0)
    # may round in another order, by <= 4 U on each side. sum(w) normalisation would give plain.
    same_mean = 2 * f32.reduction_rtol(4)
    np.testing.assert_allclose(float(temporal_invariance_loss(z, sample_weight=np.ones(4))), plain, rtol=same_mean)
    np.testing.assert_allclose(
        float(temporal_invariance_loss(z, sample_weight=2 * np.ones(4))), 2 * plain, rtol=same_mean
    )
    with pytest.raises(ValueError, match="sample_weight"):
        temporal_invariance_loss(z, sample_weight=np.ones(3))


def test_bfloat16_inputs_are_computed_in_float32():
    rng = np.random.default_rng(4)
    z = tf.cast(_embeddings(rng, 4, 4), tf.bfloat16)
    z_aug = tf.cast(_embeddings(rng, 4, 4), tf.bfloat16)
    z64, z_aug64 = tf.cast(z, tf.float64).numpy(), tf.cast(z_aug, tf.float64).numpy()
    # bfloat16 -> float32 is exact, so the float32 bounds of the float32 losses apply.
    for got, want, tolerance in [
        (temporal_invariance_loss(z), ref_invariance(z64, 0.1, "standard"), _invariance_tolerance(z64, 0.1)),
        (temporal_distinctiveness_loss(z, z_aug), ref_distinctiveness(z64, z_aug64, 0.1, "standard"),
         _distinctiveness_tolerance(z64, 0.1)),
        (global_local_loss(z, z_aug), ref_global_local(z64, z_aug64, 0.1), _global_local_tolerance(z64, 0.1)),
    ]:
        assert keras.backend.standardize_dtype(got.dtype) == "float32"
        np.testing.assert_allclose(float(got), want, **tolerance)


# ---------------------------------------------------------------- stability and gradients


@pytest.mark.parametrize("denominator", ["standard", "paper"])
def test_identical_embeddings_at_low_temperature_are_finite(denominator):
    batch, n = 4, 4
    z = np.ones((batch, n, 16), np.float32)
    invariance = float(temporal_invariance_loss(z, temperature=0.05, denominator=denominator))
    distinctiveness = float(temporal_distinctiveness_loss(z, z, temperature=0.05, denominator=denominator))
    global_local = float(global_local_loss(z, z, temperature=0.05))
    # Every h is exp(20): the loss is the log of the number of terms below the line. The logits
    # are 20 = 1 / tau, so every ulp of a cosine is 20 ulps of a logit: the float32 loss is only
    # good to ~1e-4 absolute (bound 4; issue 10: rtol=1e-6 failed on an AVX-512/AMX Xeon, off by
    # 3.5e-6). One term more or less below the line moves it by >= log(8 / 7) = 0.13.
    extra = 1 if denominator == "standard" else 0
    np.testing.assert_allclose(invariance, math.log(2 * (batch - 1) + extra), **_invariance_tolerance(z, 0.05))
    np.testing.assert_allclose(distinctiveness, math.log(2 * (n - 1) + extra), **_distinctiveness_tolerance(z, 0.05))
    np.testing.assert_allclose(global_local, math.log(n), **_global_local_tolerance(z, 0.05))
    assert _gradients_are_finite(
        lambda a: temporal_invariance_loss(a, temperature=0.05, denominator=denominator), z
    )
    assert _gradients_are_finite(
        lambda a, b: temporal_distinctiveness_loss(a, b, temperature=0.05, denominator=denominator), z, z
    )
    assert _gradients_are_finite(lambda a, b: global_local_loss(a, b, temperature=0.05), z, z)


def test_zero_embeddings_give_finite_losses_and_gradients():
    z = np.zeros((2, 2, 4), np.float32)
    assert _gradients_are_finite(temporal_invariance_loss, z)
    assert _gradients_are_finite(temporal_distinctiveness_loss, z, z)
    assert _gradients_are_finite(global_local_loss, z, z)


def test_random_gradients_are_finite_and_nonzero():
    rng = np.random.default_rng(5)
    z = tf.Variable(_embeddings(rng, 3, 4))
    with tf.GradientTape() as tape:
        loss = temporal_invariance_loss(z, temperature=0.05)
    gradient = tape.gradient(loss, z).numpy()
    assert np.all(np.isfinite(gradient)) and np.abs(gradient).max() > 0


# ---------------------------------------------------------------- behaviour


def test_invariance_low_when_clips_agree_and_videos_differ_high_in_reverse():
    batch, n = 4, 4
    basis = np.eye(8, dtype=np.float32)
    clips_agree = np.stack([np.stack([basis[i]] * n) for i in range(batch)])  # z[i, t] = e_i
    clips_differ = np.stack([basis[:n]] * batch)  # z[i, t] = e_t: videos agree, clips differ
    low = float(temporal_invariance_loss(clips_agree))
    high = float(temporal_invariance_loss(clips_differ))
    assert low < 1e-3
    assert high > 5.0


def test_distinctiveness_low_when_timestamps_differ_high_when_clips_agree():
    basis = np.eye(8, dtype=np.float32)
    distinct = np.stack([basis[:4]] * 2)  # z[i, t] = e_t, the augmented view agrees
    same = np.ones((2, 4, 8), np.float32)
    assert float(temporal_distinctiveness_loss(distinct, distinct)) < 1e-3
    assert float(temporal_distinctiveness_loss(same, same)) > 1.0
    assert float(global_local_loss(distinct, distinct)) < 1e-3


# ---------------------------------------------------------------- errors


def test_unknown_denominator_lists_valid_values():
    z = np.ones((2, 2, 4), np.float32)
    with pytest.raises(ValueError, match="standard.*paper.*'nt-xent'"):
        temporal_invariance_loss(z, denominator="nt-xent")
    with pytest.raises(ValueError, match="standard.*paper"):
        temporal_distinctiveness_loss(z, z, denominator="Paper")


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match=r"n >= 2"):
        temporal_invariance_loss(np.ones((2, 1, 4), np.float32))
    with pytest.raises(ValueError, match=r"\[B, n, d\]"):
        temporal_invariance_loss(np.ones((2, 4), np.float32))
    with pytest.raises(ValueError, match="same shape"):
        temporal_distinctiveness_loss(np.ones((2, 2, 4), np.float32), np.ones((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match="same shape"):
        global_local_loss(np.ones((2, 2, 4), np.float32), np.ones((2, 2, 5), np.float32))
    with pytest.raises(ValueError, match="B >= 2"):
        temporal_invariance_loss(np.ones((1, 2, 4), np.float32), denominator="paper")
    with pytest.raises(ValueError, match="temperature"):
        global_local_loss(np.ones((2, 2, 4), np.float32), np.ones((2, 2, 4), np.float32), temperature=0.0)


# ---------------------------------------------------------------- cross-replica negatives


def test_gathering_outside_a_strategy_equals_the_plain_loss():
    z = _embeddings(np.random.default_rng(6), 4, 4)
    # Outside a strategy the pool is z itself: the same ops on the same inputs, bit for bit.
    assert float(temporal_invariance_loss(z, gather_across_replicas=True)) == float(temporal_invariance_loss(z))


def _run_on_replicas(strategy, z_per_replica, temperature, denominator):
    """Per-replica losses and gradients (w.r.t. each replica's local z) of L_I with gathering."""
    distributed = strategy.experimental_distribute_values_from_function(
        lambda context: tf.constant(z_per_replica[context.replica_id_in_sync_group])
    )

    @tf.function
    def step(z_local):
        with tf.GradientTape() as tape:
            tape.watch(z_local)
            loss = temporal_invariance_loss(
                z_local, temperature=temperature, denominator=denominator, gather_across_replicas=True
            )
        return loss, tape.gradient(loss, z_local)

    losses, gradients = strategy.run(step, args=(distributed,))
    return (
        [float(x) for x in strategy.experimental_local_results(losses)],
        [g.numpy() for g in strategy.experimental_local_results(gradients)],
    )


def test_one_replica_strategy_equals_the_plain_loss():
    z = _embeddings(np.random.default_rng(7), 3, 2)
    losses, _ = _run_on_replicas(tf.distribute.MirroredStrategy(["/cpu:0"]), [z], 0.1, "standard")
    # A traced graph (which grappler may rewrite) against eager ops: two float32 results.
    np.testing.assert_allclose(losses[0], float(temporal_invariance_loss(z)), **_invariance_tolerance(z, 0.1, sides=2))


@pytest.fixture(scope="module")
def two_replica_strategy():
    return two_cpu_strategy()


@pytest.mark.parametrize("denominator", ["standard", "paper"])
@pytest.mark.parametrize("local_sizes", [(2, 2), (3, 1)])
def test_two_replicas_see_the_global_batch_as_negatives(two_replica_strategy, denominator, local_sizes):
    rng = np.random.default_rng(8)
    n, tau = 2, 0.2
    z = _embeddings(rng, sum(local_sizes), n, d=3)
    bounds = np.cumsum((0,) + local_sizes)
    replica_anchors = [range(bounds[r], bounds[r + 1]) for r in range(2)]

    losses, gradients = _run_on_replicas(two_replica_strategy, [z[a.start : a.stop] for a in replica_anchors], tau, denominator)

    def ref_replica_losses(z_global):
        return [np.mean(ref_invariance_per_video(z_global, tau, denominator, anchors)) for anchors in replica_anchors]

    np.testing.assert_allclose(
        losses, ref_replica_losses(z), **_invariance_tolerance(z[:max(local_sizes)], tau, batch=len(z))
    )
    # Keras sums the replicas' gradients: each replica's local z must receive the gradient of the
    # SUM of the per-replica losses (own anchors/positives, plus its role as others' negatives).
    step = 1e-4
    numeric = np.zeros(z.shape)
    for index in np.ndindex(*z.shape):
        plus, minus = z.astype(np.float64), z.astype(np.float64)
        plus[index] += step
        minus[index] -= step
        numeric[index] = (sum(ref_replica_losses(plus)) - sum(ref_replica_losses(minus))) / (2 * step)
    # The float32 gradients (size <= 2.4) are softmax weights off by <= 2 logit_atol(0.2, 3) = 1.6e-5
    # relative (bound 4), so <= 4e-5; the float64 central difference is off by ~step^2 / tau^3 = 1e-6.
    # A missing gradient through the all-gather changes them by O(1).
    np.testing.assert_allclose(np.concatenate(gradients), numeric, rtol=1e-3, atol=1e-4)


def test_invariance_compiles_with_an_unknown_batch_size_under_xla():
    z = _embeddings(np.random.default_rng(9), 5, 4)
    compiled = tf.function(
        lambda x: temporal_invariance_loss(x, denominator="paper"),
        input_signature=[tf.TensorSpec([None, 4, 8])],
        jit_compile=True,
    )
    # XLA's own exp/log and reduction order: bound 4 holds for any order and functions within 4 ulps.
    np.testing.assert_allclose(float(compiled(z)), ref_invariance(z, 0.1, "paper"), **_invariance_tolerance(z, 0.1))
