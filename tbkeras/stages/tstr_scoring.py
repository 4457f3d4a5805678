"""TSTR scoring stage (paper Sec. 3.2 Eq. 5-6, Algorithm 1 line 16): once, after pretraining, score
every training video with both self-supervised teachers (backbone + projection head, inference mode).

Input: `tstr_dataset` elements {"clips": [B, n, L, S, S, 3], "video_id": string [B]}, each video
once. Output: `tstr_scores.json` = {"scores": {video_id: s}, "summary": {"count", "mean", "std",
"min", "max", "histogram": {"bin_edges": [...], "counts": [...]}}}, which `student_dataset` reads,
plus a TensorBoard histogram and a rendered histogram image.
"""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from tbkeras.files import atomic_write_json
from tbkeras.tstr import temporal_similarity_score

SCORES_FILE = "tstr_scores.json"


def _project(backbone: keras.Model, head: keras.layers.Layer, clips):
    """clips `[B, n, L, S, S, 3]` -> z `[B, n, d]` in inference mode, all B*n clips in one call."""
    n = clips.shape[1]
    flat = ops.reshape(clips, (-1,) + tuple(clips.shape[2:]))
    z = head(backbone(flat, training=False)["pooled"], training=False)
    return ops.reshape(z, (-1, n, z.shape[-1]))


def score_videos(inv_backbone: keras.Model, inv_head: keras.layers.Layer, dist_backbone: keras.Model,
                 dist_head: keras.layers.Layer, dataset: tf.data.Dataset) -> dict[str, float]:
    """Temporal similarity score s (Eq. 6, in [0, 1]) of every video of `dataset`.

    Args:
        inv_backbone, inv_head: the temporally-invariant teacher f_I (stage 1).
        dist_backbone, dist_head: the temporally-distinctive teacher f_D (stage 2).
        dataset: finite `tstr_dataset` ({"clips": [B, n, L, S, S, 3], "video_id": [B]}).
    Returns:
        {video_id: s}. A video id seen twice is an error (each video must be scored once).
    """
    @tf.function(reduce_retracing=True)
    def score_batch(clips):
        return temporal_similarity_score(_project(inv_backbone, inv_head, clips),
                                         _project(dist_backbone, dist_head, clips))

    scores: dict[str, float] = {}
    for element in dataset:
        batch_scores = score_batch(element["clips"]).numpy()
        for video_id, s in zip(element["video_id"].numpy(), batch_scores):
            video_id = video_id.decode("utf-8")
            if video_id in scores:
                raise ValueError(f"video id {video_id!r} appears twice in the TSTR dataset; each video "
                                 "must be scored once")
            scores[video_id] = float(s)
    if not scores:
        raise ValueError("the TSTR dataset is empty: no video to score")
    return scores


def summarize_scores(scores: dict[str, float], bins: int = 20) -> dict:
    """Count, mean, std, min, max and a histogram over [0, 1] with `bins` equal bins."""
    values = np.asarray(list(scores.values()), dtype=np.float64)
    counts, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    return {
        "count": int(values.size),
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        "max": float(values.max()),
        "histogram": {"bin_edges": [float(e) for e in edges], "counts": [int(c) for c in counts]},
    }


def write_scores(path: str, scores: dict[str, float], bins: int = 20) -> dict:
    """Write {"scores", "summary"} to `path` (normally `<stage_dir>/tstr_scores.json`) atomically.
    Returns the summary."""
    if not scores:
        raise ValueError(f"no TSTR scores to write to {path}")
    summary = summarize_scores(scores, bins=bins)
    atomic_write_json(path, {"scores": dict(sorted(scores.items())), "summary": summary})
    return summary


def render_histogram(counts, height: int = 120, bar_width: int = 8, gap: int = 2) -> np.ndarray:
    """A bar chart of `counts` as a uint8 RGB image `[height, len(counts) * (bar_width + gap), 3]`
    (white background, blue bars scaled to the largest count); numpy only, no plotting library."""
    counts = np.asarray(counts, dtype=np.float64)
    image = np.full((height, len(counts) * (bar_width + gap), 3), 255, dtype=np.uint8)
    top = counts.max() if counts.size and counts.max() > 0 else 1.0
    for i, c in enumerate(counts):
        bar = int(round(c / top * (height - 1)))
        if bar:
            x = i * (bar_width + gap)
            image[height - bar:, x:x + bar_width] = (31, 119, 180)
    return image


def write_tensorboard_summaries(log_dir: str, scores: dict[str, float], bins: int = 20, step: int = 0) -> None:
    """Histogram of s ("tstr/scores") and the rendered bar chart ("tstr/histogram") under `log_dir`."""
    values = np.asarray(list(scores.values()), dtype=np.float32)
    counts = summarize_scores(scores, bins=bins)["histogram"]["counts"]
    writer = tf.summary.create_file_writer(log_dir)
    with writer.as_default():
        tf.summary.histogram("tstr/scores", values, step=step, buckets=bins)
        tf.summary.image("tstr/histogram", render_histogram(counts)[None], step=step)
    writer.close()
