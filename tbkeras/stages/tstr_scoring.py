"""TSTR scoring stage (paper Sec. 3.2 Eq. 5-6, Algorithm 1 line 16): once, after pretraining, score
every training video with both self-supervised teachers (backbone + projection head, inference mode).

Input: `tstr_dataset` elements {"clips": [B, n, L, S, S, 3], "label": int32 [B], "video_id": string
[B]}, each video once. Outputs, in the stage directory:
- `tstr_scores.json` = {"scores": {video_id: s}, "summary": {"count", "mean", "std", "min", "max",
  "histogram": {"bin_edges", "counts"}[, "per_class", "unlabeled_count"][, "per_kind"]}}, which
  `student_dataset` reads;
- `tstr_histogram.png` (s per kind of action, or per class, or all videos) and
  `similarity_matrices.png` (C_I and C_D of two videos, paper Fig. 4);
- TensorBoard: the histogram of s and both figures as images.

Kinds of action: paper Fig. 4's claim is that repetitive (atomic) actions get a high s and
order-dependent (composite) actions a low one. The stage groups by kind when it is told each
class's kind (`class_kinds`, known for the synthetic demo data: `synthetic_class_kinds`).
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from tbkeras import figures
from tbkeras.data import synthetic
from tbkeras.files import atomic_write_json
from tbkeras.tstr import temporal_similarity_matrix, temporal_similarity_score

SCORES_FILE = "tstr_scores.json"
HISTOGRAM_FILE = "tstr_histogram.png"
MATRICES_FILE = "similarity_matrices.png"
REPETITIVE, ORDER = "repetitive", "order"
KIND_TITLES = {REPETITIVE: "repetitive (atomic)", ORDER: "order-dependent (composite)"}
# With labels but no kinds, up to this many classes get a histogram each; more: one of all videos.
MAX_CLASS_HISTOGRAMS = 6


@dataclasses.dataclass(frozen=True)
class TSTRScores:
    """What `score_videos` measured, in dataset order.

    Attributes:
        scores: {video_id: s}, s in [0, 1] (Eq. 6).
        labels: {video_id: label index}, -1 for an unlabeled video (or a dataset without labels).
        c_inv, c_dist: float32 [N, n, n] similarity matrices C_I and C_D (Eq. 5), row i for the
            i-th video of `scores`; None unless `score_videos(..., keep_matrices=True)`.
    """

    scores: dict[str, float]
    labels: dict[str, int]
    c_inv: np.ndarray | None = None
    c_dist: np.ndarray | None = None

    @functools.cached_property
    def _rows(self) -> dict[str, int]:
        return {video_id: i for i, video_id in enumerate(self.scores)}

    def matrices(self, video_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(C_I, C_D) of one video, each [n, n]."""
        if self.c_inv is None or self.c_dist is None:
            raise ValueError("the similarity matrices were not kept: score_videos(..., keep_matrices=True)")
        if video_id not in self._rows:
            raise KeyError(f"video {video_id!r} was not scored")
        row = self._rows[video_id]
        return self.c_inv[row], self.c_dist[row]


def _project(backbone: keras.Model, head: keras.layers.Layer, clips):
    """clips `[B, n, L, S, S, 3]` -> z `[B, n, d]` in inference mode, all B*n clips in one call."""
    n = clips.shape[1]
    flat = ops.reshape(clips, (-1,) + tuple(clips.shape[2:]))
    z = head(backbone(flat, training=False)["pooled"], training=False)
    return ops.reshape(z, (-1, n, z.shape[-1]))


def score_videos(inv_backbone: keras.Model, inv_head: keras.layers.Layer, dist_backbone: keras.Model,
                 dist_head: keras.layers.Layer, dataset: tf.data.Dataset, *,
                 keep_matrices: bool = False) -> TSTRScores:
    """Temporal similarity score s (Eq. 6, in [0, 1]) of every video of `dataset`.

    Args:
        inv_backbone, inv_head: the temporally-invariant teacher f_I (stage 1).
        dist_backbone, dist_head: the temporally-distinctive teacher f_D (stage 2).
        dataset: finite `tstr_dataset` ({"clips": [B, n, L, S, S, 3], "video_id": [B], optional
            "label": [B]}).
        keep_matrices: also keep every video's C_I and C_D (Eq. 5) for figures: 2 n^2 floats per
            video (n = 4: 128 bytes, 30 MB for Kinetics-400).
    Returns:
        `TSTRScores`. A video id seen twice is an error (each video must be scored once).
    """
    @tf.function(reduce_retracing=True)
    def score_batch(clips):
        z_inv = _project(inv_backbone, inv_head, clips)
        z_dist = _project(dist_backbone, dist_head, clips)
        return (temporal_similarity_score(z_inv, z_dist), temporal_similarity_matrix(z_inv),
                temporal_similarity_matrix(z_dist))

    scores: dict[str, float] = {}
    labels: dict[str, int] = {}
    c_inv, c_dist = [], []
    for element in dataset:
        batch_scores, batch_inv, batch_dist = (t.numpy() for t in score_batch(element["clips"]))
        video_ids = element["video_id"].numpy()
        batch_labels = element["label"].numpy() if "label" in element else np.full(len(video_ids), -1)
        for video_id, s, label in zip(video_ids, batch_scores, batch_labels):
            video_id = video_id.decode("utf-8")
            if video_id in scores:
                raise ValueError(f"video id {video_id!r} appears twice in the TSTR dataset; each video "
                                 "must be scored once")
            scores[video_id] = float(s)
            labels[video_id] = int(label)
        if keep_matrices:
            c_inv.append(batch_inv)
            c_dist.append(batch_dist)
    if not scores:
        raise ValueError("the TSTR dataset is empty: no video to score")
    if keep_matrices:
        return TSTRScores(scores, labels, np.concatenate(c_inv), np.concatenate(c_dist))
    return TSTRScores(scores, labels)


def synthetic_class_kinds(class_names: Sequence[str]) -> list[str]:
    """REPETITIVE or ORDER for each class of the synthetic demo data (atomic / composite)."""
    kinds = {synthetic.ATOMIC: REPETITIVE, synthetic.COMPOSITE: ORDER}
    return [kinds[synthetic.action_spec(name).kind] for name in class_names]


def _check_groups(labels: Mapping[str, int], class_names: Sequence[str], class_kinds: Sequence[str] | None):
    if class_kinds is not None and len(class_kinds) != len(class_names):
        raise ValueError(f"{len(class_kinds)} class kinds for {len(class_names)} class names")
    bad = sorted({v for v in labels.values() if v >= len(class_names)}) if class_names else []
    if bad:
        raise ValueError(f"labels {bad[:10]} outside the {len(class_names)} classes")


def _stats(values: Sequence[float]) -> dict:
    """{"count", "mean"}; mean None for no value."""
    return {"count": len(values), "mean": float(np.mean(values)) if len(values) else None}


def group_scores(scores: Mapping[str, float], labels: Mapping[str, int], class_names: Sequence[str] = (),
                 class_kinds: Sequence[str] | None = None) -> dict[str, dict[str, list[float]]]:
    """Scores grouped {"per_class": {class name: [s]}, "per_kind": {kind: [s]}} (classes in label
    order, only those with videos; "per_kind" only with `class_kinds`). Unlabeled videos (label
    -1) are in neither. Without `class_names`, a class is named by its label index."""
    _check_groups(labels, class_names, class_kinds)
    per_class: dict[int, list[float]] = {}
    for video_id, s in scores.items():
        label = labels.get(video_id, -1)
        if label >= 0:
            per_class.setdefault(label, []).append(s)
    groups = {"per_class": {(class_names[c] if class_names else str(c)): per_class[c] for c in sorted(per_class)}}
    if class_kinds is not None:
        groups["per_kind"] = {kind: [s for c in sorted(per_class) if class_kinds[c] == kind for s in per_class[c]]
                              for kind in (REPETITIVE, ORDER)}
    return groups


def summarize_scores(scores: Mapping[str, float], bins: int = 20, *, labels: Mapping[str, int] | None = None,
                     class_names: Sequence[str] = (), class_kinds: Sequence[str] | None = None) -> dict:
    """Count, mean, std, min, max and a histogram over [0, 1] with `bins` equal bins; with `labels`,
    also "per_class" {name: {"count", "mean"}} and "unlabeled_count"; with `class_kinds` too,
    "per_kind" {"repetitive"|"order": {"count", "mean"}} (mean None for a kind without videos)."""
    values = np.asarray(list(scores.values()), dtype=np.float64)
    counts, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    summary = {
        "count": int(values.size),
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        "max": float(values.max()),
        "histogram": {"bin_edges": [float(e) for e in edges], "counts": [int(c) for c in counts]},
    }
    if labels is not None:
        groups = group_scores(scores, labels, class_names, class_kinds)
        summary["per_class"] = {name: _stats(v) for name, v in groups["per_class"].items()}
        summary["unlabeled_count"] = sum(1 for v in scores if labels.get(v, -1) < 0)
        if "per_kind" in groups:
            summary["per_kind"] = {kind: _stats(v) for kind, v in groups["per_kind"].items()}
    return summary


def write_scores(path: str, scores: Mapping[str, float], bins: int = 20, *, labels: Mapping[str, int] | None = None,
                 class_names: Sequence[str] = (), class_kinds: Sequence[str] | None = None) -> dict:
    """Write {"scores", "summary"} to `path` (normally `<stage_dir>/tstr_scores.json`) atomically.
    Returns the summary (`summarize_scores` of the same arguments)."""
    if not scores:
        raise ValueError(f"no TSTR scores to write to {path}")
    summary = summarize_scores(scores, bins=bins, labels=labels, class_names=class_names, class_kinds=class_kinds)
    atomic_write_json(path, {"scores": dict(sorted(scores.items())), "summary": summary})
    return summary


def write_tensorboard_summaries(log_dir: str, scores: Mapping[str, float], bins: int = 20, step: int = 0) -> None:
    """Histogram of s ("tstr/scores") under `log_dir` (the figures are logged by `write_figures`)."""
    values = np.asarray(list(scores.values()), dtype=np.float32)
    writer = tf.summary.create_file_writer(log_dir)
    with writer.as_default():
        tf.summary.histogram("tstr/scores", values, step=step, buckets=bins)
    writer.close()


def _median_video(scores: Mapping[str, float], video_ids: Sequence[str]) -> str:
    """The video whose s is the median of `video_ids`' (the lower middle one for an even count)."""
    ranked = sorted(video_ids, key=lambda v: (scores[v], v))
    return ranked[(len(ranked) - 1) // 2]


def plotted_videos(result: TSTRScores, class_kinds: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """The videos of the similarity-matrices figure: [(video_id, why)].

    With class kinds: the median-scoring video of each kind (a typical video, not the best case);
    without: the highest- and the lowest-scoring video.
    """
    scores = result.scores
    if class_kinds is not None:
        chosen = []
        for kind in (REPETITIVE, ORDER):
            ids = [v for v, label in result.labels.items() if label >= 0 and class_kinds[label] == kind]
            if ids:
                chosen.append((_median_video(scores, ids), f"{kind}, median s of its kind"))
        if chosen:
            return chosen
    ranked = sorted(scores, key=lambda v: (scores[v], v))
    if len(ranked) == 1:
        return [(ranked[0], "the only video")]
    return [(ranked[-1], "highest s"), (ranked[0], "lowest s")]


def write_figures(stage_path: str, result: TSTRScores, *, class_names: Sequence[str] = (),
                  class_kinds: Sequence[str] | None = None, log_dir: str | None = None, bins: int = 20,
                  step: int = 0) -> dict[str, str]:
    """`tstr_histogram.png` and `similarity_matrices.png` in `stage_path`, also logged to `log_dir`
    as the images "tstr/histogram" and "tstr/similarity_matrices". Returns {tag: png path}.

    Histogram groups: by kind with `class_kinds`; else by class for 2 to 6 labeled classes; else
    all videos. The matrices need `result` from `score_videos(..., keep_matrices=True)`.
    """
    groups = group_scores(result.scores, result.labels, class_names, class_kinds)
    histogram, title = {"all videos": list(result.scores.values())}, "TSTR scores"
    if class_kinds is not None and any(groups["per_kind"].values()):
        histogram = {KIND_TITLES[k]: v for k, v in groups["per_kind"].items() if v}
        title = "TSTR scores per kind of action (paper Fig. 4)"
    elif 2 <= len(groups["per_class"]) <= MAX_CLASS_HISTOGRAMS:
        histogram, title = dict(groups["per_class"]), "TSTR scores per class"
    unlabeled = [s for v, s in result.scores.items() if result.labels.get(v, -1) < 0]
    if unlabeled and "all videos" not in histogram:
        histogram["unlabeled"] = unlabeled
    panels = []
    for video_id, why in plotted_videos(result, class_kinds):
        label = result.labels.get(video_id, -1)
        name = (class_names[label] if class_names else f"class {label}") if label >= 0 else "unlabeled"
        c_inv, c_dist = result.matrices(video_id)
        panels.append(figures.SimilarityPanel(f"{video_id} ({name}; {why})", c_inv, c_dist, result.scores[video_id]))
    written = {
        "tstr/histogram": figures.plot_score_histogram(os.path.join(stage_path, HISTOGRAM_FILE), histogram,
                                                       bins=bins, title=title),
        "tstr/similarity_matrices": figures.plot_similarity_matrices(os.path.join(stage_path, MATRICES_FILE), panels),
    }
    if log_dir is not None:
        for tag, png in written.items():
            figures.log_png(log_dir, tag, png, step=step)
    return written
