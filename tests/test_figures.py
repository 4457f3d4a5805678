import numpy as np
import pytest
import tensorflow as tf

from tbkeras import figures


def _pixels(path) -> np.ndarray:
    """The PNG at `path` decoded to uint8 [H, W, 3] (fails if it is not a PNG)."""
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return tf.io.decode_png(data, channels=3).numpy()


def _images(log_dir) -> dict[str, np.ndarray]:
    """{tag: decoded image} of every `tf.summary.image` in the event files under `log_dir`."""
    images = {}
    for event_file in tf.io.gfile.glob(f"{log_dir}/events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(event_file):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "images":
                    width, height, png = value.tensor.string_val[:3]  # tf.summary.image's layout
                    images[value.tag] = tf.io.decode_png(png, channels=3).numpy()
                    assert images[value.tag].shape[:2] == (int(height), int(width))
    return images


def _matrix(n, base, seed):
    m = base + 0.1 * np.random.default_rng(seed).normal(size=(n, n))
    m = np.clip((m + m.T) / 2, -1, 1)
    np.fill_diagonal(m, 1.0)
    return m


def test_score_histogram_is_a_png_that_depends_on_the_scores(tmp_path):
    rng = np.random.default_rng(0)
    high = {"repetitive": rng.uniform(0.6, 1.0, 30), "order": rng.uniform(0.1, 0.5, 20)}
    a = _pixels(figures.plot_score_histogram(str(tmp_path / "a.png"), high, bins=10))
    low = {"repetitive": rng.uniform(0.0, 0.3, 30), "order": rng.uniform(0.1, 0.5, 20)}
    b = _pixels(figures.plot_score_histogram(str(tmp_path / "b.png"), low, bins=10))
    assert a.shape == b.shape and a.shape[0] > 100 and a.shape[1] > 100
    assert np.any(a != b)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png"]  # no temporary left behind
    with pytest.raises(ValueError, match="no scores"):
        figures.plot_score_histogram(str(tmp_path / "c.png"), {"all": []})


def test_similarity_matrices_png(tmp_path):
    panels = [figures.SimilarityPanel("v1 (repetitive)", _matrix(4, 0.8, 0), _matrix(4, 0.6, 1), 0.7),
              figures.SimilarityPanel("v2 (order)", _matrix(4, 0.3, 2), _matrix(4, 0.0, 3), 0.15)]
    two = _pixels(figures.plot_similarity_matrices(str(tmp_path / "m.png"), panels))
    other = [panels[0], figures.SimilarityPanel("v2 (order)", _matrix(4, 0.9, 4), _matrix(4, 0.9, 5), 0.9)]
    assert np.any(_pixels(figures.plot_similarity_matrices(str(tmp_path / "o.png"), other)) != two)
    one = _pixels(figures.plot_similarity_matrices(str(tmp_path / "one.png"), panels[:1]))
    assert one.shape[0] < two.shape[0]  # one row of matrices per video
    with pytest.raises(ValueError, match="square"):
        figures.plot_similarity_matrices(str(tmp_path / "bad.png"),
                                         [figures.SimilarityPanel("v", np.ones((2, 3)), np.ones((2, 3)), 0.5)])


def test_confusion_matrix_png_depends_on_the_counts(tmp_path):
    names = ["Oscillate", "Rotate", "HopUpThenSlideRight"]
    diagonal = np.diag([5, 4, 6])
    a = _pixels(figures.plot_confusion_matrix(str(tmp_path / "a.png"), diagonal, names, title="student"))
    swapped = np.array([[0, 5, 0], [4, 0, 0], [0, 0, 6]])
    b = _pixels(figures.plot_confusion_matrix(str(tmp_path / "b.png"), swapped, names, title="student"))
    assert a.shape == b.shape and np.any(a != b)
    # Many classes: no labels or counts, still a PNG.
    many = np.random.default_rng(0).integers(0, 3, (101, 101))
    assert _pixels(figures.plot_confusion_matrix(str(tmp_path / "many.png"), many)).size > 0
    with pytest.raises(ValueError, match="2 class names for a 3 x 3"):
        figures.plot_confusion_matrix(str(tmp_path / "c.png"), diagonal, names[:2])


def test_accuracy_vs_labeled_fraction_png(tmp_path):
    results = {0.01: {"student": (20.0, 1.0), "supervised only": (12.0, 2.0)},
               0.1: {"student": (45.0, 0.5), "supervised only": (30.0, 1.5)},
               0.5: {"student": (70.0, 0.4)}}  # a row may miss a fraction
    a = _pixels(figures.plot_accuracy_vs_labeled_fraction(str(tmp_path / "a.png"), results, ylabel="top-1 (%)"))
    better = {f: {k: (m + 10, s) for k, (m, s) in rows.items()} for f, rows in results.items()}
    b = _pixels(figures.plot_accuracy_vs_labeled_fraction(str(tmp_path / "b.png"), better, ylabel="top-1 (%)"))
    assert a.shape == b.shape and np.any(a != b)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        figures.plot_accuracy_vs_labeled_fraction(str(tmp_path / "c.png"), {5: {"student": (50.0, 1.0)}})


def test_log_png_round_trips_through_a_tensorboard_event_file(tmp_path):
    png = figures.plot_confusion_matrix(str(tmp_path / "c.png"), np.diag([3, 2]), ["a", "b"])
    figures.log_png(str(tmp_path / "tb"), "evaluate/confusion_student", png, step=3)
    images = _images(tmp_path / "tb")
    assert list(images) == ["evaluate/confusion_student"]
    np.testing.assert_array_equal(images["evaluate/confusion_student"], _pixels(png))
