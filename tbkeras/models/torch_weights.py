"""Port torchvision `r3d_18` weights (also TCLR / TimeBalance R3D-18 checkpoints) into `R3D18`.

The state dict is passed as numpy arrays keyed by PyTorch names, so tbkeras needs no torch:
convert once with `{k: v.numpy() for k, v in torch.load(path)["state_dict"].items()}`.
PyTorch conv kernels `[out, in, t, h, w]` become Keras kernels `[t, h, w, in, out]`; BatchNorm
`weight, bias, running_mean, running_var` become `gamma, beta, moving_mean, moving_variance`.
Because our convolutions pad exactly like PyTorch, ported weights give the same features.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from tbkeras.models.heads import Classifier
from tbkeras.models.r3d import R3D18

_BATCH_NORM_WEIGHTS = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean",
                       "running_var": "moving_variance"}


def _r3d18_modules(backbone: R3D18) -> tuple[dict[str, str], dict[str, str]]:
    """PyTorch module prefix -> our layer name, for the convolutions and for the BatchNorms."""
    convs, batch_norms = {"stem.0": "stem_conv"}, {"stem.1": "stem_bn"}
    layer_names = {layer.name for layer in backbone.layers}
    for layer in range(1, 5):
        for block in range(2):
            torch_block, ours = f"layer{layer}.{block}", f"layer{layer}_block{block}"
            pairs = [("conv1", "conv1", "bn1"), ("conv2", "conv2", "bn2")]
            if f"{ours}_downsample_conv" in layer_names:
                pairs.append(("downsample", "downsample_conv", "downsample_bn"))
            for torch_name, conv, bn in pairs:
                convs[f"{torch_block}.{torch_name}.0"] = f"{ours}_{conv}"
                batch_norms[f"{torch_block}.{torch_name}.1"] = f"{ours}_{bn}"
    return convs, batch_norms


def _assign_all(assignments: list[tuple[object, np.ndarray, str]]) -> None:
    """Check every shape first, so a bad checkpoint leaves the model untouched."""
    for variable, value, torch_key in assignments:
        if tuple(variable.shape) != tuple(value.shape):
            raise ValueError(
                f"state_dict[{torch_key!r}] has shape {tuple(value.shape)} (after layout conversion) but "
                f"{variable.path} expects {tuple(variable.shape)}: wrong width_multiplier or architecture?"
            )
    for variable, value, _ in assignments:
        variable.assign(value.astype(variable.dtype))


def load_torchvision_r3d18_weights(
    backbone: R3D18,
    state_dict: Mapping[str, np.ndarray],
    *,
    prefix: str = "",
    classifier: Classifier | None = None,
) -> None:
    """Copy a torchvision-layout R3D-18 state dict into `backbone` (and `fc` into `classifier`).

    Args:
        backbone: an `R3D18` whose width / dilation match the checkpoint (the dilated layer4 has the
            same weight shapes as the plain one, so either loads either).
        state_dict: numpy arrays keyed by PyTorch names (`stem.0.weight`, `layer4.0.conv1.0.weight`, ...).
        prefix: only keys starting with it are read, with it removed (e.g. "module." for DataParallel
            checkpoints, "backbone." for a wrapped model); other keys are ignored.
        classifier: if given, `fc.weight` `[classes, C]` / `fc.bias` are loaded into it; otherwise
            `fc.*` keys are ignored.

    Raises:
        ValueError naming every missing or unexpected key, or the key whose shape does not fit.
    """
    weights = {key[len(prefix):]: np.asarray(value) for key, value in state_dict.items() if key.startswith(prefix)}
    convs, batch_norms = _r3d18_modules(backbone)
    expected = {f"{module}.weight" for module in convs}
    expected.update(f"{module}.{torch_name}" for module in batch_norms for torch_name in _BATCH_NORM_WEIGHTS)
    if classifier is not None:
        expected.update({"fc.weight", "fc.bias"})
    ignorable = {key for key in weights if key.endswith("num_batches_tracked") or key.startswith("fc.")}
    missing = sorted(expected - set(weights))
    unexpected = sorted(set(weights) - expected - ignorable)
    if missing or unexpected:
        raise ValueError(
            f"R3D-18 state_dict (prefix {prefix!r}) does not fit the torchvision r3d_18 layout: "
            f"missing keys {missing}, unexpected keys {unexpected}"
        )

    assignments = [
        (backbone.get_layer(name).kernel, np.transpose(weights[f"{module}.weight"], (2, 3, 4, 1, 0)),
         f"{module}.weight")
        for module, name in convs.items()
    ]
    assignments += [
        (getattr(backbone.get_layer(name), ours), weights[f"{module}.{torch_name}"], f"{module}.{torch_name}")
        for module, name in batch_norms.items()
        for torch_name, ours in _BATCH_NORM_WEIGHTS.items()
    ]
    if classifier is not None:
        if not classifier.built:
            classifier.build((None, backbone.feature_dim))
        assignments += [(classifier.logits.kernel, weights["fc.weight"].T, "fc.weight"),
                        (classifier.logits.bias, weights["fc.bias"], "fc.bias")]
    _assign_all(assignments)
