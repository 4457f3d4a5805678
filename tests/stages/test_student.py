import keras
import numpy as np
import pytest
import tensorflow as tf

from tbkeras.stages.student import StudentConfig, StudentDistiller
from tests import float32_tolerances as f32
from tests.losses.test_distillation import distillation_tolerance
from tests.stages import tiny
from tests.strategies import two_cpu_strategy


@pytest.fixture(scope="module")
def nets():
    """Student and the two teachers (different seeds, so their predictions differ)."""
    return {"student": tiny.classifier(0), "invariant": tiny.classifier(1), "distinctive": tiny.classifier(2)}


def _softmax(logits):
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _distance(p_t, p_s, kind):
    def kl(p, q):
        return np.sum(p * (np.log(np.clip(p, 1e-7, 1)) - np.log(np.clip(q, 1e-7, 1))), axis=-1)
    if kind == "l2":
        return np.mean((p_t - p_s) ** 2, axis=-1).mean()
    if kind == "kl":
        return kl(p_t, p_s).mean()
    m = (p_t + p_s) / 2
    return (0.5 * kl(p_t, m) + 0.5 * kl(p_s, m)).mean()


@pytest.mark.parametrize("teachers, reweighting, distill_loss", [
    ("both", "tstr", "l2"),
    ("both", "average", "kl"),
    ("invariant", "tstr", "js"),
    ("distinctive", "tstr", "l2"),
    ("none", "tstr", "l2"),
])
def test_ablations_choose_the_teachers_and_weights(nets, teachers, reweighting, distill_loss):
    config = StudentConfig(teachers=teachers, reweighting=reweighting, distill_loss=distill_loss,
                           omega_labeled=50.0, omega_unlabeled=100.0)
    distiller = StudentDistiller(nets["student"], nets["invariant"], nets["distinctive"], config)
    element = tiny.student_element(labeled=2, unlabeled=3)
    terms = {k: float(v[0] if isinstance(v, tuple) else v)
             for k, v in distiller.compute_terms(element, training=False).items()}

    lab, unl = element["labeled"], element["unlabeled"]
    clips = np.concatenate([lab["clip"], unl["clip"]])
    p = {name: _softmax(np.asarray(net(clips), np.float64)) for name, net in nets.items()}
    expected_s = {"both": np.concatenate([lab["score"], unl["score"]]) if reweighting == "tstr" else 0.5,
                  "invariant": 1.0, "distinctive": 0.0, "none": 0.0}[teachers]
    s = np.broadcast_to(np.asarray(expected_s, np.float64), (5,))[:, None]
    p_t = s * p["invariant"] + (1 - s) * p["distinctive"]
    ce = -np.log(p["student"][np.arange(2), lab["label"]]).mean()
    if teachers == "none":
        d_l = d_u = agreement = 0.0
    else:
        d_l = _distance(p_t[:2], p["student"][:2], distill_loss)
        d_u = _distance(p_t[2:], p["student"][2:], distill_loss)
        agreement = np.mean(p_t.argmax(-1) == p["student"].argmax(-1))

    # Float32 bounds (tests/float32_tolerances.py) on the same float32 logits: the nets ran on the
    # same 5 clips in one batch, as in compute_terms. mean_s: a mean of 5 scores >= 0 (bound 1).
    np.testing.assert_allclose(terms["mean_s"], s.mean(), rtol=f32.reduction_rtol(5))
    # ce: log-softmax of 3 logits (bound 4), the mean over 2 labeled clips (bound 1).
    logits = np.asarray(nets["student"](clips), np.float64)
    ce_atol = f32.logsumexp_term_atol(np.abs(logits).max(), 3) + f32.reduction_rtol(3) * ce
    np.testing.assert_allclose(terms["ce"], ce, rtol=0, atol=ce_atol)
    if teachers == "none":
        d_tolerances = [{"rtol": 0, "atol": 0}] * 2
    else:
        # Probabilities: a float32 softmax (bound 5), then p_T = s p_I + (1 - s) p_D (3 U). The
        # distances are small differences (JS ~ 1e-3 here): an absolute bound (bound 6), not rtol.
        logit_range = max(np.ptp(np.asarray(net(clips)), axis=-1).max() for net in nets.values())
        r = f32.softmax_rtol(3, logit_range) + 3 * f32.U
        d_tolerances = [distillation_tolerance(p_t[part], p["student"][part], distill_loss, probability_rtol=r)
                        for part in (slice(0, 2), slice(2, 5))]
    np.testing.assert_allclose(terms["distill_labeled"], d_l, **d_tolerances[0])
    np.testing.assert_allclose(terms["distill_unlabeled"], d_u, **d_tolerances[1])
    loss_bound = (ce_atol + 50 * (d_tolerances[0]["atol"] + d_tolerances[0]["rtol"] * d_l)
                  + 100 * (d_tolerances[1]["atol"] + d_tolerances[1]["rtol"] * d_u)
                  + f32.FEW_ROUNDINGS * (ce + 50 * d_l + 100 * d_u))
    f32.assert_within(terms["loss"], ce + 50 * d_l + 100 * d_u, loss_bound, "loss")
    # Fractions k / 5 and k / 2 of exact counts: one float32 rounding, U < rtol = 1e-7.
    np.testing.assert_allclose(terms["teacher_student_agreement"], agreement)
    np.testing.assert_allclose(terms["accuracy"], np.mean(p["student"][:2].argmax(-1) == lab["label"]))


def test_bad_choices_list_the_valid_ones():
    with pytest.raises(ValueError, match=r"teachers must be one of \('both', 'invariant', 'distinctive', 'none'\)"):
        StudentConfig(teachers="all")
    with pytest.raises(ValueError, match=r"reweighting must be one of \('tstr', 'average'\)"):
        StudentConfig(reweighting="max")
    with pytest.raises(ValueError, match=r"distill_loss must be one of \('l2', 'kl', 'js'\)"):
        StudentConfig(distill_loss="mse")


def test_missing_teacher_or_scores_are_clear_errors(nets):
    with pytest.raises(ValueError, match="needs the distinctive teacher"):
        StudentDistiller(nets["student"], nets["invariant"], None, StudentConfig(teachers="both"))
    distiller = StudentDistiller(nets["student"], nets["invariant"], nets["distinctive"], StudentConfig())
    with pytest.raises(ValueError, match="reweighting='tstr' needs each video's TSTR score"):
        distiller.compute_terms(tiny.student_element(scores=False), training=False)
    # Without TSTR reweighting no scores are needed.
    average = StudentDistiller(nets["student"], nets["invariant"], nets["distinctive"],
                               StudentConfig(reweighting="average"))
    average.compute_terms(tiny.student_element(scores=False), training=False)


@pytest.mark.slow
def test_student_learns_and_frozen_teachers_do_not_change():
    student, teacher_i, teacher_d = tiny.classifier(0, dropout=0.5), tiny.classifier(1), tiny.classifier(2)
    teachers_before = [np.asarray(v) for v in teacher_i.weights + teacher_d.weights]
    student_before = [np.asarray(v) for v in student.trainable_weights]
    distiller = StudentDistiller(student, teacher_i, teacher_d, StudentConfig())
    assert not teacher_i.trainable and not teacher_d.trainable
    assert {id(v) for v in distiller.trainable_variables} == {id(v) for v in student.trainable_variables}

    history = tiny.fit_history(distiller, tiny.student_element(labeled=3, unlabeled=3), steps=5)
    assert sorted(history) == sorted(["loss", "ce", "distill_labeled", "distill_unlabeled", "mean_s",
                                      "teacher_student_agreement", "accuracy"])
    tiny.assert_decreases(history["loss"], "student loss")
    for before, v in zip(teachers_before, teacher_i.weights + teacher_d.weights):
        np.testing.assert_array_equal(before, np.asarray(v), err_msg=v.path)
    assert all(not np.array_equal(b, np.asarray(v)) for b, v in zip(student_before, student.trainable_weights))


def _distiller_after_two_sgd_steps(strategy, element):
    with strategy.scope():
        student, teacher_i, teacher_d = tiny.classifier(0), tiny.classifier(1), tiny.classifier(2)
        for layer in student._flatten_layers():
            # Per-replica BatchNorm batch statistics differ from the global batch's by design;
            # frozen BN (inference mode) makes the replicas' sum equal the single-device step exactly.
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False
        distiller = StudentDistiller(student, teacher_i, teacher_d, StudentConfig())
        # SGD, not Adam: Adam is invariant to a gradient scale, so it would hide a wrong 1/replicas.
        distiller.compile(optimizer=keras.optimizers.SGD(0.05), jit_compile=False)
    before = [np.asarray(v) for v in student.trainable_weights]
    dataset = tf.data.Dataset.from_tensors(element).unbatch().batch(4).repeat()
    logs = distiller.fit(dataset, epochs=2, steps_per_epoch=1, verbose=0).history
    return before, [np.asarray(v) for v in student.trainable_weights], logs


@pytest.mark.slow
def test_mirrored_strategy_matches_single_device():
    element = tiny.student_element(labeled=4, unlabeled=4)
    fresh, single, single_logs = _distiller_after_two_sgd_steps(tf.distribute.OneDeviceStrategy("/cpu:0"), element)
    _, mirrored, mirrored_logs = _distiller_after_two_sgd_steps(
        two_cpu_strategy(), element)
    moved = max(np.abs(s - f).max() for s, f in zip(single, fresh))
    assert moved > 1e-3, "the student did not train, the comparison would be vacuous"
    # The same network and steps, summed in another order (per-replica halves, then an all-reduce):
    # estimate 7 of tests/float32_tolerances.py, on the updates. A missing (or double) division by
    # the number of replicas would double (or halve) them.
    for f, s, m in zip(fresh, single, mirrored):
        np.testing.assert_allclose(m - f, s - f, **f32.network_tolerance(s - f))
    for key in ("loss", "ce", "mean_s"):
        np.testing.assert_allclose(mirrored_logs[key], single_logs[key], rtol=f32.NETWORK_RTOL)


def test_terms_are_float32_under_mixed_bfloat16():
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        distiller = StudentDistiller(tiny.classifier(0), tiny.classifier(1), tiny.classifier(2), StudentConfig())
        terms = distiller.compute_terms(tiny.student_element(), training=True)
        for name, value in terms.items():
            value = value[0] if isinstance(value, tuple) else value
            assert value.dtype == tf.float32 and np.isfinite(float(value)), name
    finally:
        keras.mixed_precision.set_global_policy(previous)
