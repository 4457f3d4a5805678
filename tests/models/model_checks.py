"""Checks every model test runs the same way (KerasHub `test_case` style), and a numpy conv reference.

`run_model_checks` builds the model under float32, checks output shapes and dtypes, round-trips it
through a real `.keras` file (weights randomised first, so BatchNorm statistics are exercised) and
demands identical outputs, then rebuilds it under `mixed_bfloat16` and checks shapes, dtypes and
finiteness. The global dtype policy is restored in a `finally`.
"""
from __future__ import annotations

import itertools
from typing import Callable

import keras
import numpy as np


def numpy_conv3d(x, kernel, strides=(1, 1, 1), padding=(0, 0, 0), dilation=(1, 1, 1)):
    """PyTorch `Conv3d` semantics (cross-correlation, symmetric zero padding), float64.

    x `[B, T, H, W, C]`, kernel `[k_t, k_h, k_w, C, O]` -> `[B, T', H', W', O]`.
    """
    x = np.pad(np.asarray(x, np.float64), [(0, 0)] + [(p, p) for p in padding] + [(0, 0)])
    kernel = np.asarray(kernel, np.float64)
    out_sizes = [
        (size - d * (k - 1) - 1) // s + 1
        for size, k, s, d in zip(x.shape[1:4], kernel.shape[:3], strides, dilation)
    ]
    out = np.zeros((x.shape[0], *out_sizes, kernel.shape[-1]))
    for offsets in itertools.product(*(range(k) for k in kernel.shape[:3])):
        window = tuple(
            slice(o * d, o * d + s * (n - 1) + 1, s)
            for o, d, s, n in zip(offsets, dilation, strides, out_sizes)
        )
        out += np.einsum("bthwc,co->bthwo", x[(slice(None), *window)], kernel[offsets])
    return out


def randomize_weights(model: keras.layers.Layer, seed: int = 0) -> None:
    """Perturb every weight (positive moving variances), so a save/load that drops any weight shows."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        value = np.asarray(weight.numpy(), np.float64)
        if "moving_variance" in weight.path:
            value = rng.uniform(0.5, 1.5, value.shape)
        else:
            value = value + rng.normal(0.0, 0.05, value.shape)
        weight.assign(value.astype(weight.dtype))


def _as_dict(outputs) -> dict:
    return outputs if isinstance(outputs, dict) else {"output": outputs}


def _check_outputs(outputs, expected_shapes, where: str) -> None:
    outputs, expected_shapes = _as_dict(outputs), _as_dict(expected_shapes)
    assert sorted(outputs) == sorted(expected_shapes), f"{where}: output keys {sorted(outputs)}"
    for key, expected in expected_shapes.items():
        value = outputs[key]
        assert tuple(value.shape) == tuple(expected), f"{where}: {key} has shape {tuple(value.shape)}"
        assert value.dtype == "float32", f"{where}: {key} has dtype {value.dtype}"
        assert np.all(np.isfinite(np.asarray(value))), f"{where}: {key} is not finite"


def _as_model(model: keras.layers.Layer, inputs: np.ndarray) -> keras.Model:
    """Layers are saved inside a one-layer functional model, as they would be in practice."""
    if isinstance(model, keras.Model):
        return model
    x = keras.Input(shape=inputs.shape[1:])
    return keras.Model(x, model(x))


def run_model_checks(
    make_model: Callable[[], keras.layers.Layer],
    inputs: np.ndarray,
    expected_shapes,
    tmp_path,
) -> keras.layers.Layer:
    """Build with `make_model()` and check shapes, `.keras` round trip and mixed_bfloat16.

    Args:
        make_model: builds a fresh model or layer (called once per dtype policy).
        inputs: a batch for the model.
        expected_shapes: a shape tuple, or a dict of shapes for dict outputs; all outputs must be float32.
        tmp_path: pytest's tmp_path, for the `.keras` file.

    Returns the float32 model (with randomised weights).
    """
    model = make_model()
    model(inputs, training=False)
    randomize_weights(model)
    wrapped = _as_model(model, inputs)
    outputs = wrapped(inputs, training=False)
    _check_outputs(outputs, expected_shapes, "float32")

    path = str(tmp_path / "model.keras")
    wrapped.save(path)
    restored = keras.saving.load_model(path)  # rebuilds from get_config(): checks it too
    restored_model = restored if isinstance(model, keras.Model) else restored.layers[-1]
    assert type(restored_model) is type(model)
    assert restored_model.get_config() == model.get_config()
    restored_outputs = _as_dict(restored(inputs, training=False))
    for key, value in _as_dict(outputs).items():
        np.testing.assert_array_equal(np.asarray(restored_outputs[key]), np.asarray(value), err_msg=key)

    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        _check_outputs(make_model()(inputs, training=False), expected_shapes, "mixed_bfloat16")
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
    return model
