"""Adam with one fused kernel per variable.

Why: `keras.optimizers.Adam` updates each variable with ~13 elementwise ops (two casts, two powers,
sub/mul/assign_add for m and v, sqrt, divide, assign_sub), each a full pass over the variable's
memory and one executor dispatch. On a CPU that is 4,348 ops and 98 ms of a 1.26 s Slow-R50 bf16
finetune step (161 variables, 32M parameters), and ~1,700 small ops per step of the demo's
width-0.25 R3D-18, where dispatch dominates (BENCHMARKS.md, "Fused Adam"). TensorFlow's
`ResourceApplyAdam` does the same update in one pass and one op, as PyTorch's `fused=True` Adam.

Same maths as Keras' Adam (Kingma & Ba 2015, Alg. 1, with the epsilon-hat form), the same
variables (so checkpoints and `BackupAndRestore` state are interchangeable with
`keras.optimizers.Adam`) and the same serialisation. Falls back to Keras' update for what the
kernel does not cover: amsgrad, sparse (`IndexedSlices`) gradients and other backends.
"""
from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="tbkeras")
class FusedAdam(keras.optimizers.Adam):
    """`keras.optimizers.Adam` whose dense update is TF's fused `ResourceApplyAdam` kernel."""

    def update_step(self, gradient, variable, learning_rate):
        import tensorflow as tf

        if self.amsgrad or keras.backend.backend() != "tensorflow" or isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        index = self._get_variable_index(variable)
        momentum, velocity = self._momentums[index], self._velocities[index]
        local_step = tf.cast(self.iterations + 1, dtype)
        beta_1 = tf.cast(self.beta_1, dtype)
        beta_2 = tf.cast(self.beta_2, dtype)
        tf.raw_ops.ResourceApplyAdam(
            var=_handle(variable), m=_handle(momentum), v=_handle(velocity),
            beta1_power=tf.pow(beta_1, local_step), beta2_power=tf.pow(beta_2, local_step),
            lr=tf.cast(learning_rate, dtype), beta1=beta_1, beta2=beta_2,
            epsilon=tf.cast(self.epsilon, dtype), grad=tf.cast(gradient, dtype), use_locking=False)


def _handle(variable):
    """The resource handle of a Keras or tf.Variable (the local copy inside a distributed update)."""
    if isinstance(variable, keras.Variable):
        variable = variable.value
    return variable.handle
