"""FusedAdam: Keras' Adam, one fused kernel per variable; same maths, same state, any strategy."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from tbkeras.train.optimizers import FusedAdam
from tests import float32_tolerances as f32
from tests.strategies import two_cpu_strategy
from tests.train.tiny_model import make_dataset, make_model

BETA_1, BETA_2 = 0.9, 0.999


def _adam_float64(weights, gradients, learning_rates, epsilon):
    """Kingma & Ba's Adam (Alg. 1) in float64, epsilon added to sqrt(v) as Keras does; also returns
    the sum of |update| per element, which scales the float32 error bound."""
    w = np.asarray(weights, np.float64).copy()
    m, v, moved = np.zeros_like(w), np.zeros_like(w), np.zeros_like(w)
    for t, (g, lr) in enumerate(zip(gradients, learning_rates), start=1):
        m = BETA_1 * m + (1 - BETA_1) * g
        v = BETA_2 * v + (1 - BETA_2) * g * g
        update = lr * np.sqrt(1 - BETA_2**t) / (1 - BETA_1**t) * m / (np.sqrt(v) + epsilon)
        w -= update
        moved += np.abs(update)
    return w, moved


@pytest.mark.parametrize("epsilon", [1e-7, 1e-2])
def test_matches_a_float64_adam_with_a_changing_learning_rate(epsilon):
    """Six steps in a tf.function, as fit runs them, with the learning rate rewritten between steps
    as WarmupPlateauSchedule does. epsilon=1e-2 against gradients of ~1e-2 makes its placement
    matter; a missing bias correction is 3.2x at step 1, swapped betas change every step."""
    rng = np.random.default_rng(0)
    initial = rng.normal(size=(7, 5)).astype("float32")
    scales = np.array([1.0, 0.01, 3.0, 0.02, 1.0, 0.5])[:, None, None]
    gradients = (rng.normal(size=(6, 7, 5)) * scales).astype("float32")
    learning_rates = [1e-3, 2e-3, 3e-3, 3e-3, 1e-3, 5e-4]
    variable = keras.Variable(initial)
    optimizer = FusedAdam(learning_rates[0], beta_1=BETA_1, beta_2=BETA_2, epsilon=epsilon)
    optimizer.build([variable])
    apply = tf.function(lambda g: optimizer.apply_gradients([(g, variable)]))
    for g, lr in zip(gradients, learning_rates):
        optimizer.learning_rate = lr
        apply(tf.constant(g))
    expected, moved = _adam_float64(initial, gradients.astype(np.float64), learning_rates, epsilon)
    # Each update is a chain of <= 16 correctly rounded float32 operations (bound 8) on m and v that
    # carry <= 2 roundings per step, times two powers (FUNCTION_ULPS each); each subtraction from
    # the weight rounds once more (U |w|).
    steps = len(learning_rates)
    update_rtol = f32.FEW_ROUNDINGS + 2 * steps * f32.U + 2 * f32.FUNCTION_ULPS * f32.EPS
    bound = update_rtol * moved + steps * f32.U * np.abs(expected)
    f32.assert_within(variable.numpy(), expected, bound, "FusedAdam after 6 steps")
    assert np.abs(initial - expected).max() > 1e-3  # it moved


@pytest.mark.parametrize("amsgrad", [False, True])
def test_trains_like_keras_adam_on_one_device_and_two_replicas(amsgrad):
    """The recipe's models under MirroredStrategy: the fused kernel updates each replica's copy
    (distribute's update context), amsgrad takes Keras' own update."""
    def train(optimizer_cls, strategy):
        model = make_model(strategy, compile=False)
        with strategy.scope():
            model.compile(optimizer=optimizer_cls(0.05, amsgrad=amsgrad))
        model.fit(make_dataset(batch_size=8), epochs=1, steps_per_epoch=8, verbose=0)
        return model.get_weights()

    reference = train(keras.optimizers.Adam, tf.distribute.get_strategy())
    assert np.abs(reference[0]).max() > 0.2  # 8 Adam steps of 0.05 moved it
    for strategy in (tf.distribute.get_strategy(), two_cpu_strategy()):
        for a, b in zip(train(FusedAdam, strategy), reference):
            np.testing.assert_allclose(a, b, **f32.network_tolerance(b))


def test_state_and_config_are_interchangeable_with_keras_adam():
    """A backup written by one optimizer resumes in the other (the same variables by path), and the
    serialised config comes back as a FusedAdam."""
    fused_model, keras_model = make_model(compile=False), make_model(compile=False)
    fused_model.compile(optimizer=FusedAdam(0.05))
    keras_model.compile(optimizer=keras.optimizers.Adam(0.05))
    data = make_dataset(batch_size=8)
    fused_model.fit(data, epochs=1, steps_per_epoch=3, verbose=0)
    keras_model.optimizer.build(keras_model.trainable_variables)
    def layout(model):  # the optimizer's variables by name (without the model's), with their shapes
        return [(v.name.replace(model.name, ""), tuple(v.shape)) for v in model.optimizer.variables]

    assert layout(fused_model) == layout(keras_model) and len(layout(keras_model)) == 6
    store = {}
    fused_model.optimizer.save_own_variables(store)
    keras_model.optimizer.load_own_variables(store)
    keras_model.set_weights(fused_model.get_weights())
    for model in (fused_model, keras_model):
        model.fit(data, epochs=1, steps_per_epoch=2, verbose=0)
    for a, b in zip(fused_model.get_weights(), keras_model.get_weights()):
        np.testing.assert_allclose(a, b, **f32.network_tolerance(b))
    assert int(keras_model.optimizer.iterations.numpy()) == 5

    restored = keras.optimizers.deserialize(keras.optimizers.serialize(fused_model.optimizer))
    assert isinstance(restored, FusedAdam) and restored.get_config() == fused_model.optimizer.get_config()
