"""The figures a researcher checks a run with, as PNG files, plus one helper that logs a PNG to
TensorBoard as an image.

- `plot_score_histogram`: TSTR scores s per group (paper Fig. 4's message: repetitive / atomic
  actions score high and lean on f_I, order-dependent / composite ones score low and lean on f_D).
- `plot_similarity_matrices`: the n x n matrices C_I and C_D (Eq. 5) of a few videos, s in the title.
- `plot_confusion_matrix`: rows = true class, columns = predicted.
- `plot_accuracy_vs_labeled_fraction`: a benchmark's accuracy (mean +- std over seeds) per method.

Each function draws with matplotlib's object-oriented `Figure` (no pyplot: no global figure state,
no GUI backend, safe in a training process), writes the PNG to a temporary name and renames it
(`tbkeras.files.atomic_path`, works on GCS too) and returns the path. The stage that owns the
data calls them; figures are never the only copy of a number (the JSON outputs hold those).
"""
from __future__ import annotations

import dataclasses
import io
import math
import textwrap
from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from tbkeras.files import atomic_path

DPI = 100
# Above these many classes the confusion matrix has no tick labels / no per-cell counts (unreadable).
MAX_LABELED_CLASSES = 40
MAX_ANNOTATED_CLASSES = 20
MAX_ANNOTATED_CLIPS = 8


def save_png(fig: Figure, path: str) -> str:
    """Render `fig` as PNG bytes and write them to `path` atomically; returns `path`."""
    import tensorflow as tf

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    with atomic_path(path) as tmp:
        with tf.io.gfile.GFile(tmp, "wb") as f:
            f.write(buffer.getvalue())
    return path


def plot_score_histogram(path: str, groups: Mapping[str, Sequence[float]], *, bins: int = 20,
                         title: str = "TSTR scores") -> str:
    """Overlaid histograms of TSTR scores s over [0, 1], one per group, each with its mean.

    Args:
        path: the PNG to write.
        groups: {legend name: scores [N_g]} (e.g. "repetitive" / "order-dependent", or per class);
            every group gets the same `bins` equal bins so their shapes compare.
        bins: number of bins over [0, 1].
        title: figure title.
    Returns:
        `path`.
    """
    if not groups or not any(len(v) for v in groups.values()):
        raise ValueError(f"no scores to plot in {path}")
    edges = np.linspace(0.0, 1.0, bins + 1)
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.add_subplot()
    colors = _colors(len(groups))
    for (name, values), color in zip(groups.items(), colors):
        values = np.asarray(values, dtype=np.float64)
        if not values.size:
            continue
        mean = float(values.mean())
        ax.hist(values, bins=edges, color=color, alpha=0.45, edgecolor=color, linewidth=1.0,
                label=f"{name} (n={values.size}, mean s={mean:.3f})")
        ax.axvline(mean, color=color, linestyle="--", linewidth=1.5)
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("temporal similarity score s (Eq. 6): high leans on f_I, low on f_D")
    ax.set_ylabel("videos")
    ax.set_title(title)
    ax.legend(fontsize="small")
    return save_png(fig, path)


@dataclasses.dataclass(frozen=True)
class SimilarityPanel:
    """One video of `plot_similarity_matrices`.

    Attributes:
        label: row title (video id, class, ...); the score is added to it.
        c_inv: [n, n] cosine similarities of the clips under the invariant teacher (C_I, Eq. 5).
        c_dist: [n, n] the same under the distinctive teacher (C_D).
        score: the video's s (Eq. 6).
    """

    label: str
    c_inv: np.ndarray
    c_dist: np.ndarray
    score: float


def plot_similarity_matrices(path: str, panels: Sequence[SimilarityPanel], *,
                             title: str = "Temporal similarity matrices (Eq. 5)") -> str:
    """C_I and C_D side by side for each video (paper Fig. 4), one row per video, s in its title.

    The colour scale is fixed to cosine's [-1, 1] for every panel, so the two teachers and the
    videos compare by colour; with n <= 8 clips each cell also shows its value.

    Args:
        path: the PNG to write.
        panels: the videos, each with [n, n] matrices (n may differ between videos).
        title: figure title.
    Returns:
        `path`.
    """
    if not panels:
        raise ValueError(f"no similarity matrices to plot in {path}")
    fig = Figure(figsize=(7.2, 3.7 * len(panels) + 0.5), layout="constrained")
    fig.suptitle(title)
    for sub, panel in zip(np.atleast_1d(fig.subfigures(len(panels), 1)), panels):
        sub.suptitle(textwrap.fill(f"s = {panel.score:.3f}: {panel.label}", 64), fontweight="bold")
        axes = sub.subplots(1, 2)
        for ax, (name, matrix) in zip(axes, (("C_I (invariant teacher)", panel.c_inv),
                                             ("C_D (distinctive teacher)", panel.c_dist))):
            matrix = np.asarray(matrix, dtype=np.float64)
            if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
                raise ValueError(f"{panel.label}: {name} must be a square [n, n] matrix, got {matrix.shape}")
            n = matrix.shape[0]
            image = ax.imshow(matrix, vmin=-1.0, vmax=1.0, cmap="coolwarm")
            ticks = np.arange(n)
            ax.set_xticks(ticks, [str(t + 1) for t in ticks])
            ax.set_yticks(ticks, [str(t + 1) for t in ticks])
            ax.set_xlabel("clip")
            ax.set_ylabel("clip")
            ax.set_title(name, fontsize="medium")
            if n <= MAX_ANNOTATED_CLIPS:
                for i in range(n):
                    for j in range(n):
                        ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize="small",
                                color="white" if abs(matrix[i, j]) > 0.6 else "black")
        sub.colorbar(image, ax=axes, shrink=0.8, label="cosine similarity")
    return save_png(fig, path)


def plot_confusion_matrix(path: str, confusion, class_names: Sequence[str] = (), *,
                          title: str = "Confusion matrix") -> str:
    """Confusion matrix, colour = fraction of the true class's videos (row-normalised, so small
    classes show as clearly as large ones), cells annotated with counts for <= 20 classes.

    Args:
        path: the PNG to write.
        confusion: [C, C] counts, rows = true class, columns = predicted (`EvaluationResult.confusion`).
        class_names: C names in label order (tick labels for <= 40 classes), or empty.
        title: figure title (e.g. the model and its top-1).
    Returns:
        `path`.
    """
    counts = np.asarray(confusion, dtype=np.int64)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or counts.shape[0] == 0:
        raise ValueError(f"confusion must be a square [C, C] matrix, got shape {counts.shape}")
    c = counts.shape[0]
    if class_names and len(class_names) != c:
        raise ValueError(f"{len(class_names)} class names for a {c} x {c} confusion matrix")
    rows = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    side = min(max(4.5, 0.4 * c + 2.5), 20.0)
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(rows, vmin=0.0, vmax=1.0, cmap="Blues")
    if c <= MAX_LABELED_CLASSES:
        names = list(class_names) or [str(i) for i in range(c)]
        ax.set_xticks(np.arange(c), names, rotation=60, ha="right", fontsize="small")
        ax.set_yticks(np.arange(c), names, fontsize="small")
    if c <= MAX_ANNOTATED_CLASSES:
        for i in range(c):
            for j in range(c):
                if counts[i, j]:
                    ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize="small",
                            color="white" if rows[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, shrink=0.8, label="fraction of the true class")
    return save_png(fig, path)


def plot_accuracy_vs_labeled_fraction(path: str, results: Mapping[float, Mapping[str, tuple[float, float]]], *,
                                      title: str = "Accuracy vs labeled fraction",
                                      ylabel: str = "top-1 accuracy") -> str:
    """One line per row (method) of accuracy against the labeled fraction, std as error bars.

    Args:
        path: the PNG to write.
        results: {labeled fraction in (0, 1]: {row name: (mean, std)}}; a row may miss some
            fractions (it is drawn where it has them). Means and stds in the unit of `ylabel`.
        title, ylabel: figure title and y-axis label.
    Returns:
        `path`. The x axis is logarithmic when the fractions span 10x or more (UCF101: 1-50 %).
    """
    if not results:
        raise ValueError(f"no results to plot in {path}")
    fractions = sorted(float(f) for f in results)
    bad = [f for f in fractions if not 0.0 < f <= 1.0]
    if bad:
        raise ValueError(f"labeled fractions must be in (0, 1] (0.05 = 5 %), got {bad}")
    names: list[str] = []
    for rows in results.values():
        names.extend(name for name in rows if name not in names)
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.add_subplot()
    for name, color in zip(names, _colors(len(names))):
        points = [(float(f), rows[name]) for f, rows in sorted(results.items()) if name in rows]
        x = [f for f, _ in points]
        mean = [float(m) for _, (m, _s) in points]
        std = [float(s) if s is not None else 0.0 for _, (_m, s) in points]
        if not all(math.isfinite(v) for v in mean + std):
            raise ValueError(f"row {name!r} has a non-finite mean or std: {list(zip(x, mean, std))}")
        ax.errorbar(x, mean, yerr=std, color=color, marker="o", capsize=3, label=name)
    if fractions[-1] / fractions[0] >= 10:
        ax.set_xscale("log")
        ax.minorticks_off()
    ax.set_xticks(fractions, [f"{100 * f:g}%" for f in fractions])
    ax.set_xlabel("labeled fraction of the training set")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return save_png(fig, path)


def log_png(log_dir: str, tag: str, png_path: str, step: int = 0) -> None:
    """Log the PNG file `png_path` as the image `tag` in a TensorBoard event file under `log_dir`
    (decoded to [1, H, W, 3] uint8 for `tf.summary.image`)."""
    import tensorflow as tf

    image = tf.io.decode_png(tf.io.read_file(png_path), channels=3)
    writer = tf.summary.create_file_writer(log_dir)
    with writer.as_default():
        tf.summary.image(tag, image[None], step=step)
    writer.close()


def _colors(k: int) -> list:
    """k distinct colours: matplotlib's tab10 cycle, tab20 beyond 10."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if k <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(k)]
