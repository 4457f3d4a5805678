"""Multiply-accumulate counts of our Keras models, from their layer shapes (no run, no tracing).

Why: speed figures (GFLOP/s achieved on a CPU, GPU-hours at paper scale) need the work of a clip,
and the work must come from the model we actually build (R3D-18 with TCLR's dilated layer4 does
more than torchvision's `r3d_18`), not from a number copied from elsewhere.

Convention (the one of torchvision's model tables and `torch.utils.flop_counter`):
- counted: convolutions (every Keras Conv1D/2D/3D, our `SubsampledConv3D` and
  `TemporallyDilatedConv3D`) and matrix products (Dense, `ProjectionHead`, `Classifier`), as
  multiply-accumulates (MACs); FLOPs = 2 x MACs. A conv's MACs are
  `output positions x C_out x k_t k_h k_w x C_in / groups`, zero padding included, bias excluded.
- not counted: BatchNorm, activations, additions, pooling, padding, dropout, the L2 normalisation
  (together well under 1% of a 3D ResNet's work). Their layer types are listed under "uncounted".
- a strided convolution is counted at its strided output (the work of the native kernel): in
  training `SubsampledConv3D` computes every stride-1 position and discards the rest, so on CPU
  with `strided_conv="subsample"` the real work is larger than counted.
- forward only. A training step (forward + backward) is counted as `TRAIN_FLOPS_PER_FORWARD` = 3
  forwards: the backward pass computes the gradients of the inputs and of the weights, each about
  one forward.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import keras

from tbkeras.models.heads import Classifier, ProjectionHead
from tbkeras.models.r3d_layers import TemporallyDilatedConv3D

TRAIN_FLOPS_PER_FORWARD = 3.0

_CONV_TYPES = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)  # SubsampledConv3D is a Conv3D


def count_flops(model: keras.Model, input_shape: Sequence[int]) -> dict[str, Any]:
    """Forward multiply-accumulates and FLOPs of one clip through a functional Keras model.

    Args:
        model: a functional `keras.Model` (e.g. `r3d18()`, `r3d50()`, or a functional model that
            calls a backbone and a head from `tbkeras.models.heads`); nested functional models are
            walked too. A layer type that has weights but no rule here raises ValueError rather than
            being counted as free.
        input_shape: one clip's shape without the batch axis, e.g. `(16, 112, 112, 3)`.

    Returns:
        {"macs": int, "flops": int (= 2 x macs), "gflops": float, "input_shape": list,
         "layers": {"path/to/layer": macs} for every counted layer, "uncounted": sorted layer types
         that were counted as 0 by the convention above}. Per clip (batch 1), forward only.
    """
    if not _is_functional(model):
        raise ValueError(f"count_flops needs a functional keras.Model, got {type(model).__name__} "
                         "(wrap a subclassed model's parts in keras.Model(inputs, outputs))")
    if len(model.inputs) != 1:
        raise ValueError(f"count_flops supports one input, {model.name} has {len(model.inputs)}")
    shape = (1, *(int(s) for s in input_shape))
    if len(shape) != len(model.inputs[0].shape):
        raise ValueError(f"input_shape {tuple(input_shape)} does not match {model.name}'s input "
                         f"{tuple(model.inputs[0].shape[1:])} (give it without the batch axis)")
    layers: dict[str, int] = {}
    uncounted: set[str] = set()
    _walk(model, [keras.KerasTensor(shape, dtype=model.inputs[0].dtype)], "", layers, uncounted)
    macs = sum(layers.values())
    return {"macs": macs, "flops": 2 * macs, "gflops": 2 * macs / 1e9, "input_shape": list(shape[1:]),
            "layers": layers, "uncounted": sorted(uncounted)}


def _is_functional(op) -> bool:
    # Keras 3 has no public "is functional" test; functional models (and subclasses built from
    # inputs/outputs, like R3D18) are the ones with a node graph.
    return isinstance(op, keras.Model) and hasattr(op, "_nodes_by_depth") and hasattr(op, "_run_through_graph")


def _walk(model, inputs: list, prefix: str, layers: dict, uncounted: set):
    """Run `model`'s graph on concrete-shaped KerasTensors, recording each layer's MACs.

    Uses Keras' private `Function._run_through_graph` (what `compute_output_spec` itself uses) so
    each layer sees the shapes of this clip; tests/models/test_flops.py fails loudly if a Keras
    upgrade changes it.
    """
    def operation_fn(op):
        def run(*args, **kwargs):
            path = f"{prefix}{op.name}"
            if _is_functional(op):
                return _walk(op, keras.tree.flatten(args[0]), f"{path}/", layers, uncounted)
            outputs = op.compute_output_spec(*args, **kwargs)
            macs = _layer_macs(op, args[0] if args else None, outputs)
            if macs is None:
                uncounted.add(type(op).__name__)
            else:
                if path in layers:
                    raise ValueError(f"count_flops: layer {path} is called more than once; give it distinct names")
                layers[path] = macs
            return outputs
        return run

    return model._run_through_graph(inputs, operation_fn=operation_fn)


def _rows(shape) -> int:
    return math.prod(int(s) for s in shape[:-1])


def _layer_macs(layer, x, outputs) -> int | None:
    """MACs of one (non-functional) layer with input `x` and `outputs` specs; None = not counted."""
    if isinstance(layer, _CONV_TYPES):
        out = outputs.shape
        return _rows(out) * out[-1] * math.prod(layer.kernel_size) * (int(x.shape[-1]) // layer.groups)
    if isinstance(layer, TemporallyDilatedConv3D):
        out = outputs.shape
        return _rows(out) * out[-1] * math.prod(layer.kernel_size) * int(x.shape[-1])
    if isinstance(layer, keras.layers.Dense):
        return _rows(x.shape) * int(x.shape[-1]) * layer.units
    if isinstance(layer, ProjectionHead):
        return _rows(x.shape) * (int(x.shape[-1]) * layer.hidden_dim + layer.hidden_dim * layer.output_dim)
    if isinstance(layer, Classifier):
        return _rows(x.shape) * int(x.shape[-1]) * layer.num_classes
    if isinstance(layer, keras.layers.BatchNormalization) or not layer.weights:
        return None
    raise ValueError(f"count_flops: no rule for layer {layer.name!r} of type {type(layer).__name__}, "
                     "which has weights; add one to tbkeras/models/flops.py")
