"""Multi-view video evaluation: softmax averaged over K clips x C crops per video (DESIGN.md
section 2: 10 x 3 in the paper), then top-1 / top-5, per-class accuracy and the confusion matrix.

Input: `eval_dataset` elements {"views": [B, K*C, T, S, S, 3], "label": int32 [B], "video_id": [B]}.
All B*K*C views of a batch go through the classifier in one call.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from tbkeras.files import atomic_write_json


@dataclasses.dataclass(frozen=True)
class EvaluationResult:
    """Video-level metrics.

    Attributes:
        num_videos: videos evaluated.
        top1, top5: accuracy of the view-averaged prediction (top5 is top-min(5, classes)).
        mean_class_accuracy: mean of `per_class_accuracy` over classes that have videos.
        per_class_accuracy: accuracy per true class; None for a class with no video.
        confusion: [num_classes][num_classes] counts, rows = true class, columns = predicted.
        class_names: names in label-index order (may be empty).
    """

    num_videos: int
    top1: float
    top5: float
    mean_class_accuracy: float
    per_class_accuracy: tuple
    confusion: tuple
    class_names: tuple = ()

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["per_class_accuracy"] = list(self.per_class_accuracy)
        d["confusion"] = [list(row) for row in self.confusion]
        d["class_names"] = list(self.class_names)
        return d


def metrics_from_probabilities(probabilities, labels, num_classes: int,
                               class_names: Sequence[str] = ()) -> EvaluationResult:
    """Metrics of video-level probabilities `[N, num_classes]` against integer labels `[N]`."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if probabilities.ndim != 2 or probabilities.shape[1] != num_classes:
        raise ValueError(f"probabilities must be [N, {num_classes}], got {probabilities.shape}")
    if labels.shape != (probabilities.shape[0],):
        raise ValueError(f"labels must be [{probabilities.shape[0]}], got {labels.shape}")
    if labels.size == 0:
        raise ValueError("no video to evaluate")
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
        raise ValueError(f"labels outside [0, {num_classes}): {sorted(set(bad.tolist()))[:10]}")
    if class_names and len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
    k = min(5, num_classes)
    # Stable ranking so ties resolve to the lower class index, as argmax does.
    top_k = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    predicted = top_k[:, 0]
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    per_class_total = confusion.sum(axis=1)
    per_class = [float(confusion[c, c] / per_class_total[c]) if per_class_total[c] else None
                 for c in range(num_classes)]
    present = [a for a in per_class if a is not None]
    return EvaluationResult(
        num_videos=int(labels.size),
        top1=float(np.mean(predicted == labels)),
        top5=float(np.mean(np.any(top_k == labels[:, None], axis=1))),
        mean_class_accuracy=float(np.mean(present)),
        per_class_accuracy=tuple(per_class),
        confusion=tuple(tuple(int(x) for x in row) for row in confusion),
        class_names=tuple(class_names),
    )


def top1_by_group(confusion: Sequence[Sequence[int]], class_groups: Sequence[str]) -> dict[str, float | None]:
    """Top-1 over the videos of each group of classes (e.g. the synthetic data's repetitive and
    order-dependent kinds): which teacher is better where, the question TSTR's weights answer.

    Args:
      confusion: [C][C] counts, rows = true class (`EvaluationResult.confusion`).
      class_groups: C group names, one per class in label order.
    Returns:
      {group: correct / videos of the group's classes}, None for a group with no video; groups in
      first-appearance order.
    """
    confusion = np.asarray(confusion, dtype=np.int64)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"confusion must be a square [C][C] matrix, got shape {confusion.shape}")
    if len(class_groups) != confusion.shape[0]:
        raise ValueError(f"{len(class_groups)} class groups for {confusion.shape[0]} classes")
    groups = np.asarray(class_groups)
    result = {}
    for group in dict.fromkeys(class_groups):
        members = np.flatnonzero(groups == group)
        videos = int(confusion[members].sum())
        result[group] = float(confusion[members, members].sum() / videos) if videos else None
    return result


def view_averaged_probabilities(model: keras.Model, views: tf.Tensor) -> tf.Tensor:
    """The video prediction: the softmax of every view, averaged over the views of each video.

    `views` `[B, V, T, S, S, 3]` (V = K*C, static) -> float32 `[B, C]`; all B*V views go through
    `model` (clips -> logits, training=False) in one call. Shared by `predict_videos` and the
    export's whole-video signature, so both average exactly alike.
    """
    num_views = views.shape[1]
    flat = ops.reshape(views, (-1,) + tuple(views.shape[2:]))          # [B*K*C, T, S, S, 3]
    p = ops.softmax(ops.cast(model(flat, training=False), "float32"))
    return ops.mean(ops.reshape(p, (-1, num_views, p.shape[-1])), axis=1)


def map_videos(video_fn: Callable[[tf.Tensor], tf.Tensor],
               dataset: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """`video_fn` (views `[B, V, T, S, S, 3]` -> one row per video `[B, ...]`, traced as a
    tf.function) over every batch of an `eval_dataset`: (rows [N, ...], labels [N], video ids [N])."""
    per_batch = tf.function(video_fn, reduce_retracing=True)
    rows, labels, video_ids = [], [], []
    for element in dataset:
        rows.append(per_batch(element["views"]).numpy())
        labels.append(element["label"].numpy())
        video_ids.extend(v.decode("utf-8") for v in element["video_id"].numpy())
    if not rows:
        raise ValueError("the evaluation dataset is empty")
    return np.concatenate(rows), np.concatenate(labels), video_ids


def predict_videos(model: keras.Model, dataset: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """View-averaged softmax of every video: (probabilities [N, C], labels [N], video ids [N]).

    `model` maps clips `[M, T, S, S, 3]` to logits `[M, C]` and runs with training=False.
    """
    return map_videos(lambda views: view_averaged_probabilities(model, views), dataset)


def evaluate_classifier(model: keras.Model, dataset: tf.data.Dataset, num_classes: int,
                        class_names: Sequence[str] = ()) -> EvaluationResult:
    """Run `model` on every view of every video of `dataset` (an `eval_dataset`) and score it."""
    probabilities, labels, _ = predict_videos(model, dataset)
    return metrics_from_probabilities(probabilities, labels, num_classes, class_names)


def write_evaluation(path: str, result: EvaluationResult) -> None:
    """Write the result as JSON (atomically)."""
    atomic_write_json(path, result.to_json())
