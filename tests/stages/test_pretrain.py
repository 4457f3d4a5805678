import keras
import numpy as np
import pytest
import tensorflow as tf

from tbkeras.losses import global_local_loss, temporal_distinctiveness_loss, temporal_invariance_loss
from tbkeras.stages.pretrain import (
    ContrastiveConfig,
    DistinctivePretrainer,
    InvariantPretrainer,
    LossWeights,
    SSLPretrainer,
    pool_time,
)
from tests import float32_tolerances as f32
from tests.stages import tiny

# The projections z here come from the same network run on other batches (one call for every
# clip vs one clip at a time): estimate 7 of tests/float32_tolerances.py, |dz| <= NETWORK_RTOL
# for unit-norm z, so a cosine moves by <= 2 NETWORK_RTOL, a logit cos / tau by 2 NETWORK_RTOL / tau
# and a contrastive loss (bound 4) by twice that. The float32 losses' own rounding (~5e-5,
# bound 4) is small next to it. Transposing views and timestamps, batch and views, or the global
# slices moves at least one term of these tests by >= 0.06, over 10 times this.
TWO_BATCHINGS_ATOL = 4 * f32.NETWORK_RTOL / ContrastiveConfig().temperature


@pytest.mark.slow
@pytest.mark.parametrize("make, terms, eagerly", [
    (lambda b, h: InvariantPretrainer(b, h), ["loss_i"], True),
    (lambda b, h: DistinctivePretrainer(b, h), ["loss_d1", "loss_d2"], True),
    (lambda b, h: SSLPretrainer(b, h), ["loss_i", "loss_d1", "loss_d2"], False),   # the traced train step
], ids=["invariant", "distinctive", "ssl"])
def test_pretrainer_loss_goes_down_and_logs_its_terms(make, terms, eagerly):
    model = make(tiny.backbone(), tiny.head())
    history = tiny.fit_history(model, tiny.ssl_element(), steps=3 if eagerly else 4, eagerly=eagerly)
    assert sorted(history) == sorted(["loss"] + terms)
    tiny.assert_decreases(history["loss"], type(model).__name__)
    total = sum(np.array(history[t]) for t in terms)
    # loss = the sum of <= 3 weighted terms >= 0 in float32, logged exactly (one step per epoch).
    np.testing.assert_allclose(history["loss"], total, rtol=f32.FEW_ROUNDINGS)


def _projections(model, clips):
    """z of clips `[..., L, S, S, 3]`, one clip at a time (inference mode), `[..., d]`."""
    lead = clips.shape[:-4]
    flat = clips.reshape((-1,) + clips.shape[-4:])
    z = np.stack([np.asarray(model(flat[i:i + 1]))[0] for i in range(flat.shape[0])])
    return z.reshape(lead + (z.shape[-1],))


def _global_slices(model, global_clips, n):
    flat = global_clips.reshape((-1,) + global_clips.shape[-4:])
    temporal = np.asarray(model.backbone(flat)["temporal"])
    z = np.asarray(model.head(pool_time(temporal, n)))
    return z.reshape(global_clips.shape[:2] + (n, z.shape[-1]))


@pytest.mark.parametrize("global_frames", [None, 2 * tiny.FRAMES], ids=["one_call", "longer_global_clip"])
def test_batched_terms_equal_losses_on_individually_projected_clips(global_frames):
    """The one-call batching (reshape of [B, V, n] clips) keeps videos, views and timestamps apart;
    so does the second call that a global clip of its own length takes."""
    model = SSLPretrainer(tiny.backbone(), tiny.head(), weights=LossWeights(1.0, 2.0, 3.0))
    element = tiny.ssl_element(batch=2, views=2, n=2, global_frames=global_frames)
    terms = {k: float(v) for k, v in model.compute_terms(element, training=False).items()}
    z = _projections(model, element["local"])                          # [B, V, n, d]
    slices = _global_slices(model, element["global"], n=2)               # [B, V, n, d]
    expected_i = np.mean([temporal_invariance_loss(z[:, v]) for v in range(2)])
    expected_d1 = float(temporal_distinctiveness_loss(z[:, 0], z[:, 1]))
    expected_d2 = np.mean([global_local_loss(slices[:, v], z[:, v]) for v in range(2)])
    np.testing.assert_allclose(terms["loss_i"], expected_i, rtol=0, atol=TWO_BATCHINGS_ATOL)
    np.testing.assert_allclose(terms["loss_d1"], expected_d1, rtol=0, atol=TWO_BATCHINGS_ATOL)
    np.testing.assert_allclose(terms["loss_d2"], expected_d2, rtol=0, atol=TWO_BATCHINGS_ATOL)
    np.testing.assert_allclose(terms["loss"], expected_i + 2 * expected_d1 + 3 * expected_d2,
                               rtol=0, atol=(1 + 2 + 3) * TWO_BATCHINGS_ATOL)


def test_global_clip_as_extra_timestamp():
    model = InvariantPretrainer(tiny.backbone(), tiny.head(), ContrastiveConfig(global_clip_as_timestamp=True))
    element = tiny.ssl_element(batch=2, views=1, n=2)
    loss_i = float(model.compute_terms(element, training=False)["loss_i"])
    z_local = _projections(model, element["local"][:, 0])                # [B, n, d]
    z_global = _projections(model, element["global"][:, 0])              # [B, d]
    z = np.concatenate([z_local, z_global[:, None]], axis=1)             # [B, n + 1, d]
    np.testing.assert_allclose(loss_i, float(temporal_invariance_loss(z)), rtol=0, atol=TWO_BATCHINGS_ATOL)
    # Without the global clip the loss differs by 0.07 here: demand 10 times the tolerance.
    assert abs(loss_i - float(temporal_invariance_loss(z_local))) > 10 * TWO_BATCHINGS_ATOL


def test_pool_time_is_adaptive_average_pooling():
    x = np.arange(2 * 5 * 3, dtype=np.float32).reshape(2, 5, 3)
    # torch.nn.AdaptiveAvgPool1d(3) over 5 steps averages spans [0, 2), [1, 4), [3, 5). Small
    # integers: the sums are exact and both sides divide once, correctly rounded: equal.
    expected = np.stack([x[:, 0:2].mean(1), x[:, 1:4].mean(1), x[:, 3:5].mean(1)], axis=1)
    np.testing.assert_allclose(pool_time(x, 3), expected)
    np.testing.assert_allclose(pool_time(x[:, :4], 2), np.stack([x[:, 0:2].mean(1), x[:, 2:4].mean(1)], 1))
    np.testing.assert_array_equal(pool_time(x, 5), x)
    with pytest.raises(ValueError, match=r"has 5 temporal slices but L_D2 needs one per local clip \(n=6\)"):
        pool_time(x, 6)


def test_global_clip_with_too_few_slices_is_a_clear_error():
    # Without the dilated layer4 an 8-frame global clip keeps 1 slice; n = 2 local clips.
    keras.utils.set_random_seed(0)
    from tbkeras.models import r3d18
    model = DistinctivePretrainer(r3d18(width_multiplier=tiny.WIDTH, dilated_layer4=False), tiny.head())
    with pytest.raises(ValueError, match="temporal slices but L_D2 needs one per local clip"):
        model.compute_terms(tiny.ssl_element(n=2), training=False)


def test_distinctive_needs_two_views():
    model = DistinctivePretrainer(tiny.backbone(), tiny.head())
    with pytest.raises(ValueError, match="L_D1 needs 2 views"):
        model.compute_terms(tiny.ssl_element(views=1), training=False)


def test_bad_settings_are_clear_errors():
    with pytest.raises(ValueError, match="denominator must be one of"):
        ContrastiveConfig(denominator="nope")
    with pytest.raises(ValueError, match="at least one > 0"):
        LossWeights(0.0, 0.0, 0.0)


def test_zero_weight_skips_the_term_and_the_global_clip():
    model = SSLPretrainer(tiny.backbone(), tiny.head(), weights=LossWeights(1.0, 1.0, 0.0))
    element = tiny.ssl_element()
    element["global"] = element["global"][:, :, :1]   # unusable global clip: must not be touched
    terms = model.compute_terms(element, training=False)
    assert sorted(terms) == ["loss", "loss_d1", "loss_i"]


@pytest.mark.slow
def test_one_step_under_mixed_bfloat16():
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = SSLPretrainer(tiny.backbone(), tiny.head())
        logs = tiny.fit_history(model, tiny.ssl_element(), steps=1, eagerly=True)
        assert all(np.isfinite(v[0]) for v in logs.values()), logs
        terms = model.compute_terms(tiny.ssl_element(), training=False)
        assert all(v.dtype == tf.float32 for v in terms.values())
    finally:
        keras.mixed_precision.set_global_policy(previous)
