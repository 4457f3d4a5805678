import dataclasses
import os
import re

import numpy as np
import pytest

from tbkeras.data import synthetic
from tests.data.video_files import cv2_frames

# Tiny videos: big enough for a visible object, small enough that every test takes well under 1 s.
TINY = synthetic.SyntheticConfig(num_classes=4, videos_per_class=4, clips_per_group=2, num_frames=8,
                                 height=32, width=40, period_frames=(3, 4))
CLEAN = synthetic.SyntheticConfig(num_classes=len(synthetic.ACTIONS), num_frames=24, height=48,
                                  width=48, period_frames=(4, 6), noise_std_max=0.0)
COMPOSITE_PAIRS = sorted({tuple(sorted((a.name, f"{a.parts[1]}Then{a.parts[0]}")))
                          for a in synthetic.ACTIONS if a.kind == synthetic.COMPOSITE})


def _decode(path, fps=None):
    """OpenCV's decode of `path` as RGB [T, H, W, 3]; checks the stored frame rate if given."""
    frames, stored_fps = cv2_frames(path)
    if fps is not None:
        assert stored_fps == pytest.approx(fps)
    return frames


def _render_with(name, seed, config, scene_seed=None):
    scene = None if scene_seed is None else synthetic.draw_scene(np.random.default_rng(scene_seed), config)
    return synthetic.render_video(name, np.random.default_rng(seed), config, scene=scene)


def test_render_is_deterministic_for_a_seed_and_changes_with_it():
    for name in ("Rotate", "SlideRightThenHopUp"):
        a = _render_with(name, 7, TINY)
        assert a.shape == (8, 32, 40, 3) and a.dtype == np.uint8
        np.testing.assert_array_equal(a, _render_with(name, 7, TINY))
        assert np.abs(a.astype(int) - _render_with(name, 8, TINY)).mean() > 1.0
    # A label index means the same class as its name.
    index = synthetic.class_names(TINY).index("Rotate")
    np.testing.assert_array_equal(_render_with(index, 3, TINY), _render_with("Rotate", 3, TINY))


def test_class_list_is_a_fixed_prefix_with_whole_composite_pairs():
    names = synthetic.class_names(synthetic.SyntheticConfig())
    assert names == [a.name for a in synthetic.ACTIONS[:8]]
    assert {"Oscillate", "Rotate", "Pulse", "Blink"} <= set(names)
    kinds = [synthetic.action_spec(n).kind for n in names]
    assert kinds.count(synthetic.ATOMIC) == 4 and kinds.count(synthetic.COMPOSITE) == 4
    for a, b in COMPOSITE_PAIRS:  # for even N, a class and its order-swapped twin come together
        position = [a.name for a in synthetic.ACTIONS].index
        assert abs(position(a) - position(b)) == 1
    assert len(set(a.name for a in synthetic.ACTIONS)) == len(synthetic.ACTIONS) == 18


@pytest.mark.parametrize("pair", COMPOSITE_PAIRS, ids="-vs-".join)
def test_swapped_composites_hold_the_same_frames_in_another_order(pair):
    first, second = (_render_with(name, 11, CLEAN, scene_seed=5) for name in pair)
    # Same bag of frames: no single frame and no unordered set of frames tells them apart...
    as_set = lambda video: sorted(frame.tobytes() for frame in video)  # noqa: E731
    assert as_set(first) == as_set(second)
    # ...but the sequences differ.
    assert not np.array_equal(first, second)


def _centroids(video, background):
    """Object centre per frame [T, 2] (x, y) from pixels that differ from the known background."""
    mask = np.abs(video.astype(int) - np.round(background).astype(int)).sum(-1) > 30
    ys, xs = np.mgrid[: video.shape[1], : video.shape[2]]
    return np.stack([(xs * m).sum() / m.sum() for m in mask]), np.stack(
        [(ys * m).sum() / m.sum() for m in mask])


def test_composite_order_shows_in_the_centroid_trajectory():
    scene = synthetic.draw_scene(np.random.default_rng(2), CLEAN)
    peaks = {}
    for name in ("SlideRightThenHopUp", "HopUpThenSlideRight"):
        video = synthetic.render_video(name, np.random.default_rng(4), CLEAN, scene=scene)
        x, y = _centroids(video, scene.background)
        rest_x, rest_y = x[0], y[0]  # every sub-action starts and ends in the rest pose
        assert (x - rest_x).max() > 5 and (x - rest_x).min() > -1  # slides right, never left
        assert (rest_y - y).max() > 5 and (rest_y - y).min() > -1  # hops up (image y decreases)
        peaks[name] = (int(np.argmax(x - rest_x)), int(np.argmax(rest_y - y)))
    slide_peak, hop_peak = peaks["SlideRightThenHopUp"]
    assert slide_peak < hop_peak
    slide_peak, hop_peak = peaks["HopUpThenSlideRight"]
    assert hop_peak < slide_peak


def _best_lag_difference(video, lags):
    v = video.astype(np.int16)
    return min(float(np.abs(v[p:] - v[:-p]).mean()) for p in lags)


def test_atomic_classes_repeat_with_their_period_and_composites_do_not():
    lags = range(CLEAN.period_frames[0], CLEAN.period_frames[1] + 1)
    for action in synthetic.ACTIONS:
        for seed in (0, 1):
            video = _render_with(action.name, seed, CLEAN)
            diff = _best_lag_difference(video, lags)
            if action.kind == synthetic.ATOMIC:
                assert diff < 0.05, (action.name, diff)  # frame t == frame t + period
            else:
                assert diff > 0.3, (action.name, diff)


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("synthetic"))
    summary = synthetic.generate_dataset(TINY, out, workers=1)
    return out, summary


def _read_lines(path):
    with open(path) as f:
        return f.read().splitlines()


def test_lists_are_in_ucf101_format_with_disjoint_groups(tiny_dataset):
    out, summary = tiny_dataset
    names = synthetic.class_names(TINY)
    splits = os.path.join(out, "splits")
    assert _read_lines(os.path.join(splits, "classInd.txt")) == [
        f"{i + 1} {n}" for i, n in enumerate(names)]
    train_re = re.compile(r"^(\w+)/v_(\w+)_g(\d\d)_c(\d\d)\.avi (\d+)$")
    test_re = re.compile(r"^(\w+)/v_(\w+)_g(\d\d)_c(\d\d)\.avi$")
    groups = {"train": set(), "test": set()}
    classes = {"train": set(), "test": set()}
    for split, pattern in (("train", train_re), ("test", test_re)):
        lines = _read_lines(os.path.join(splits, f"{split}list01.txt"))
        for line in lines:
            match = pattern.match(line)
            assert match, line
            folder, name, group = match.group(1), match.group(2), int(match.group(3))
            assert folder == name
            if split == "train":
                assert int(match.group(5)) == names.index(name) + 1  # 1-based label
            groups[split].add(group)
            classes[split].add(name)
            assert os.path.isfile(os.path.join(out, "videos", line.split()[0]))
    assert groups["train"].isdisjoint(groups["test"]) and groups["test"] == {1}
    assert classes["train"] == classes["test"] == set(names)
    assert summary["train_videos"] + summary["test_videos"] == summary["num_videos"] == 16
    assert summary["videos_written"] == 16


def test_written_videos_decode_to_the_rendered_frames(tiny_dataset):
    out, _ = tiny_dataset
    for name in synthetic.class_names(TINY):
        path = os.path.join(out, "videos", synthetic.video_relpath(name, 2, 1))
        decoded = _decode(path, fps=TINY.fps)
        assert decoded.shape == (TINY.num_frames, TINY.height, TINY.width, 3)
        expected = synthetic.render_dataset_video(TINY, name, 2, 1)
        mse = np.mean((decoded.astype(float) - expected) ** 2)
        assert 10 * np.log10(255**2 / mse) > 28  # MJPG is lossy, but these are the same frames


def test_rerun_skips_existing_videos_and_cleans_stale_temps(tiny_dataset):
    out, _ = tiny_dataset
    videos = sorted(os.path.join(d, f) for d, _, files in os.walk(os.path.join(out, "videos"))
                    for f in files)
    mtimes = {p: os.stat(p).st_mtime_ns for p in videos}
    stale = videos[0] + ".tmp-deadbeef.avi"  # what a killed run leaves behind
    with open(stale, "wb") as f:
        f.write(b"half a video")
    summary = synthetic.generate_dataset(TINY, out, workers=1)
    assert summary["videos_written"] == 0 and summary["videos_skipped"] == 16
    assert {p: os.stat(p).st_mtime_ns for p in videos} == mtimes
    assert not os.path.exists(stale)


def test_worker_count_does_not_change_the_files(tiny_dataset, tmp_path):
    out, _ = tiny_dataset
    summary = synthetic.generate_dataset(TINY, str(tmp_path), workers=2)
    assert summary["videos_written"] == 16
    for name in synthetic.class_names(TINY):
        for group, clip in ((1, 1), (2, 2)):
            rel = synthetic.video_relpath(name, group, clip)
            with open(os.path.join(out, "videos", rel), "rb") as a, \
                    open(os.path.join(tmp_path, "videos", rel), "rb") as b:
                assert a.read() == b.read(), rel


def test_mp4_option_decodes(tmp_path):
    config = synthetic.SyntheticConfig(num_classes=1, videos_per_class=2, clips_per_group=1,
                                       num_frames=6, height=32, width=32, codec="mp4v",
                                       extension=".mp4")
    synthetic.generate_dataset(config, str(tmp_path), workers=1)
    path = os.path.join(tmp_path, "videos", synthetic.video_relpath("Oscillate", 2, 1, ".mp4"))
    assert _decode(path).shape == (6, 32, 32, 3)
    assert _read_lines(os.path.join(tmp_path, "splits", "testlist01.txt")) == [
        "Oscillate/v_Oscillate_g01_c01.mp4"]


@pytest.mark.parametrize("fields, message", [
    ({"num_classes": 19}, "num_classes=19: must be in 1..18"),
    ({"num_classes": 0}, "num_classes=0"),
    ({"num_frames": 0}, "num_frames=0: need at least 4 frames"),
    ({"height": 8}, "height=8"),
    ({"videos_per_class": 3}, "videos_per_class=3: .* need >= 2 to split"),
    ({"test_fraction": 1.0}, "test_fraction=1.0"),
    ({"codec": "H264x"}, "codec='H264x'"),
    ({"period_frames": (5, 3)}, "period_frames"),
    ({"class_shape_probability": 1.5}, "class_shape_probability=1.5: must be a probability"),
])
def test_bad_config_is_a_clear_value_error(fields, message):
    with pytest.raises(ValueError, match=message):
        synthetic.SyntheticConfig(**fields)


def test_bad_class_codec_and_changed_config_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="unknown synthetic class 'Jump'"):
        synthetic.render_video("Jump", np.random.default_rng(0), TINY)
    h264 = synthetic.SyntheticConfig(**{**TINY.__dict__, "codec": "avc1", "extension": ".mp4"})
    with pytest.raises(RuntimeError, match="cannot write codec 'avc1'"):
        synthetic.generate_dataset(h264, str(tmp_path / "h264"), workers=1)
    assert not any(files for _, _, files in os.walk(tmp_path / "h264" / "videos"))
    synthetic.generate_dataset(synthetic.SyntheticConfig(**{**TINY.__dict__, "num_classes": 1}),
                               str(tmp_path / "a"), workers=1)
    with pytest.raises(ValueError, match=r"different config \(fields \['seed'\]"):
        synthetic.generate_dataset(synthetic.SyntheticConfig(
            **{**TINY.__dict__, "num_classes": 1, "seed": 1}), str(tmp_path / "a"), workers=1)


def test_class_shape_probability_ties_the_shape_to_the_family_only_as_often_as_asked():
    """Off: every class of a group shares its scene. At p: about p of the videos carry the family's
    shape (a composite pair shares one), the rest keep the group's, and the other draws of a video
    do not change."""
    off = dataclasses.replace(CLEAN, num_classes=8)
    on = dataclasses.replace(off, class_shape_probability=0.5)
    names = synthetic.class_names(off)
    families = {n: synthetic.family_shape(n) for n in names}
    assert families["SlideRightThenHopUp"] == families["HopUpThenSlideRight"]
    atomic = [families[n] for n in names if synthetic.action_spec(n).kind == synthetic.ATOMIC]
    assert len(set(families.values())) == 6 and len(set(atomic)) == len(atomic)
    took, total = 0, 0
    for group in range(1, 11):
        group_shape = synthetic.video_scene(off, names[0], group, 1).shape
        for name in names:
            for clip in (1, 2, 3, 4):
                assert synthetic.video_scene(off, name, group, clip).shape == group_shape
                shape = synthetic.video_scene(on, name, group, clip).shape
                assert shape in (group_shape, families[name])
                if families[name] != group_shape:
                    took += shape == families[name]
                    total += 1
    # A binomial(total, 0.5) count: 5 standard deviations either side.
    assert abs(took - total / 2) < 5 * (total / 4) ** 0.5, (took, total)
    always = dataclasses.replace(off, class_shape_probability=1.0)
    scene_off = synthetic.video_scene(off, "Rotate", 3, 2)
    scene_on = synthetic.video_scene(always, "Rotate", 3, 2)
    assert scene_on.shape == families["Rotate"]
    np.testing.assert_array_equal(scene_on.background, scene_off.background)
    np.testing.assert_array_equal(scene_on.color, scene_off.color)
    frames = synthetic.render_dataset_video(always, "Rotate", 3, 2)
    assert frames.shape == (off.num_frames, off.height, off.width, 3)
