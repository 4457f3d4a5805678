"""Building blocks shared by the contrastive losses, the distillation losses and TSTR.

Everything is computed in float32, whatever the input dtype (e.g. bfloat16 under
`mixed_bfloat16`): similarities divided by a temperature of 0.05 and the logs of small
probabilities lose too much precision in bfloat16.
"""
from __future__ import annotations

from keras import ops

# Squared-norm floor of the L2 normalisation: a zero vector stays zero (cosine 0) instead of NaN.
_NORM_EPSILON = 1e-12


def as_float32(x):
    """Casts a tensor (or array) to float32."""
    return ops.cast(x, "float32")


def l2_normalize(x):
    """L2-normalises the last axis in float32, so that dot products are cosine similarities."""
    x = as_float32(x)
    squared_norm = ops.sum(ops.square(x), axis=-1, keepdims=True)
    return x * ops.rsqrt(ops.maximum(squared_norm, _NORM_EPSILON))


def check_rank(x, rank: int, name: str, shape_text: str):
    """Raises a ValueError naming the argument when its static rank is not `rank`."""
    if len(x.shape) != rank:
        raise ValueError(f"{name} must have shape {shape_text}, got shape {tuple(x.shape)}")


def check_same_shape(a, b, what: str):
    """Raises a ValueError when two arguments' static shapes differ; `what` names the function and both."""
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"{what} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def check_num_clips(x, name: str, minimum: int = 2) -> int:
    """Returns the static number of clips n of `x` [B, n, d], requiring at least `minimum`.

    n must be static: the losses build n x n masks from it.
    """
    check_rank(x, 3, name, "[B, n, d]")
    n = x.shape[1]
    if n is None or n < minimum:
        raise ValueError(f"{name} needs a static number of clips n >= {minimum}, got shape {tuple(x.shape)}")
    return int(n)


def check_temperature(temperature: float):
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def weighted_batch_mean(per_example, sample_weight=None):
    """Reduces a per-example loss [B] to a scalar: mean over the batch of sample_weight * loss.

    This is Keras' "sum_over_batch_size" reduction: sum(w * l) / B, with B the (per-replica)
    batch size, so a weight acts as a multiplier of that example's loss and weights of all
    ones give the plain mean (it is NOT normalised by sum(w)).

    Args:
      per_example: float32 [B].
      sample_weight: optional [B] (any float dtype), or None for all ones.
    Returns:
      A float32 scalar.
    """
    if sample_weight is None:
        return ops.mean(per_example)
    sample_weight = ops.reshape(as_float32(sample_weight), (-1,))
    if (
        sample_weight.shape[0] is not None
        and per_example.shape[0] is not None
        and sample_weight.shape[0] != per_example.shape[0]
    ):
        raise ValueError(
            f"sample_weight must have shape [B] = [{per_example.shape[0]}], "
            f"got {sample_weight.shape[0]} values"
        )
    return ops.mean(sample_weight * per_example)
