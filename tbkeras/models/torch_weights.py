"""Port PyTorch weights into our backbones: torchvision `r3d_18` (also TCLR / TimeBalance R3D-18
checkpoints) into `R3D18`, PyTorchVideo `slow_r50` (`create_resnet`) into `R3D50`.

The state dict is passed as numpy arrays keyed by PyTorch names, so tbkeras needs no torch:
convert once with `{k: v.numpy() for k, v in torch.load(path)["state_dict"].items()}`
(PyTorchVideo's own checkpoints keep it under "model_state").
PyTorch conv kernels `[out, in, t, h, w]` become Keras kernels `[t, h, w, in, out]`; BatchNorm
`weight, bias, running_mean, running_var` become `gamma, beta, moving_mean, moving_variance`.
Because our convolutions pad exactly like PyTorch, ported weights give the same features.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from tbkeras.models.heads import Classifier
from tbkeras.models.r3d import R3D18, R3D50

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


def _slow_r50_modules(backbone: R3D50) -> tuple[dict[str, str], dict[str, str]]:
    """PyTorchVideo module prefix -> our layer name, for the convolutions and for the BatchNorms.

    `create_resnet` numbers its blocks: 0 is the stem (`conv`, `norm`, then a weightless max-pool),
    1-4 are stages res2-res5 (`res_blocks.{j}` with `branch1_conv` / `branch1_norm`, the projection
    shortcut, and `branch2.conv_{a,b,c}` / `norm_{a,b,c}`), 5 is the head (`proj`).
    """
    convs, batch_norms = {"blocks.0.conv": "stem_conv"}, {"blocks.0.norm": "stem_bn"}
    layer_names = {layer.name for layer in backbone.layers}
    for stage, depth in zip((2, 3, 4, 5), (3, 4, 6, 3)):
        for block in range(depth):
            torch_block, ours = f"blocks.{stage - 1}.res_blocks.{block}", f"res{stage}_block{block}"
            pairs = [(f"branch2.conv_{c}", f"branch2.norm_{c}", f"conv_{c}", f"bn_{c}") for c in "abc"]
            if f"{ours}_shortcut_conv" in layer_names:
                pairs.append(("branch1_conv", "branch1_norm", "shortcut_conv", "shortcut_bn"))
            for torch_conv, torch_bn, conv, bn in pairs:
                convs[f"{torch_block}.{torch_conv}"] = f"{ours}_{conv}"
                batch_norms[f"{torch_block}.{torch_bn}"] = f"{ours}_{bn}"
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


def _load(
    backbone,
    state_dict: Mapping[str, np.ndarray],
    convs: Mapping[str, str],
    batch_norms: Mapping[str, str],
    *,
    prefix: str,
    head: str,
    classifier: Classifier | None,
    what: str,
    layout: str,
) -> None:
    """Check the keys (every one, named), then the shapes, then assign: conv kernels
    `[out, in, t, h, w]` -> `[t, h, w, in, out]`, BatchNorm affine and running statistics, and the
    head Linear `[classes, C]` -> Dense `[C, classes]` into `classifier` when given."""
    weights = {key[len(prefix):]: np.asarray(value) for key, value in state_dict.items() if key.startswith(prefix)}
    expected = {f"{module}.weight" for module in convs}
    expected.update(f"{module}.{torch_name}" for module in batch_norms for torch_name in _BATCH_NORM_WEIGHTS)
    if classifier is not None:
        expected.update({f"{head}.weight", f"{head}.bias"})
    ignorable = {key for key in weights if key.endswith("num_batches_tracked") or key.startswith(f"{head}.")}
    missing = sorted(expected - set(weights))
    unexpected = sorted(set(weights) - expected - ignorable)
    if missing or unexpected:
        raise ValueError(f"{what} state_dict (prefix {prefix!r}) does not fit the {layout} layout: "
                         f"missing keys {missing}, unexpected keys {unexpected}")

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
        assignments += [(classifier.logits.kernel, weights[f"{head}.weight"].T, f"{head}.weight"),
                        (classifier.logits.bias, weights[f"{head}.bias"], f"{head}.bias")]
    _assign_all(assignments)


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
    convs, batch_norms = _r3d18_modules(backbone)
    _load(backbone, state_dict, convs, batch_norms, prefix=prefix, head="fc", classifier=classifier,
          what="R3D-18", layout="torchvision r3d_18")


def load_pytorchvideo_slow_r50_weights(
    backbone: R3D50,
    state_dict: Mapping[str, np.ndarray],
    *,
    prefix: str = "",
    classifier: Classifier | None = None,
) -> None:
    """Copy a PyTorchVideo `slow_r50` (`create_resnet`, depth 50) state dict into `backbone`
    (and the head `blocks.5.proj` into `classifier`).

    The layouts agree op for op (stem 1x7x7 stride (1,2,2) + max-pool 1x3x3 stride (1,2,2) padding
    (0,1,1); conv_a k_t x 1 x 1 with k_t = 1 in res2-res3 and 3 in res4-res5; the spatial stride on
    conv_b 1x3x3 and on branch1; eps 1e-5), so ported weights give the same features.

    The head: PyTorchVideo average-pools the last feature map with an (8, 7, 7) window, applies
    `proj` and averages what is left. At its 8x224x224 input that window is the whole map, so
    `proj` on our "pooled" features (Classifier in inference) gives its logits (before any softmax).

    Args:
        backbone: an `R3D50` whose width matches the checkpoint.
        state_dict: numpy arrays keyed by PyTorch names (`blocks.0.conv.weight` `[64, 3, 1, 7, 7]`,
            `blocks.3.res_blocks.0.branch2.conv_a.weight` `[256, 512, 3, 1, 1]`, ...).
        prefix: only keys starting with it are read, with it removed (e.g. "module."); other keys are
            ignored.
        classifier: if given, `blocks.5.proj.weight` `[classes, 2048]` / `.bias` are loaded into it;
            otherwise `blocks.5.*` keys are ignored.

    Raises:
        ValueError naming every missing or unexpected key, or the key whose shape does not fit.
    """
    convs, batch_norms = _slow_r50_modules(backbone)
    _load(backbone, state_dict, convs, batch_norms, prefix=prefix, head="blocks.5.proj", classifier=classifier,
          what="Slow-R50", layout="PyTorchVideo slow_r50")
