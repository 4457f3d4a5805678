import os

import numpy as np
import pytest

from tbkeras.data import video_io
from tests.data.video_files import cv2_frames, psnr, write_video


@pytest.fixture
def video(tmp_path):
    return write_video(str(tmp_path / "v_Clip_g01_c01.avi"), num_frames=20, width=64, height=48, fps=20.0)


def test_read_video_is_opencv_decode_in_rgb(video):
    reference, fps = cv2_frames(video)
    decoded = video_io.read_video(video)
    assert decoded.frames.dtype == np.uint8 and decoded.frames.shape == (20, 48, 64, 3)
    np.testing.assert_array_equal(decoded.frames, reference)
    assert decoded.fps == pytest.approx(fps) == pytest.approx(20.0)
    assert decoded.stats.decoded_frames == decoded.stats.claimed_frames == 20
    assert decoded.stats.warning == ""
    # every frame differs from the previous one
    assert all(np.abs(decoded.frames[i].astype(int) - decoded.frames[i + 1]).sum() > 0 for i in range(19))


@pytest.mark.parametrize(
    "shape, short_side, expected",
    [((48, 64), 32, (32, 43)), ((64, 48), 32, (43, 32)), ((48, 64), 96, (96, 128)), ((48, 64), 0, (48, 64))],
)
def test_resized_shape_keeps_aspect(shape, short_side, expected):
    assert video_io.resized_shape(*shape, short_side) == expected
    image = np.zeros((*shape, 3), np.uint8)
    assert video_io.resize_short_side(image, short_side).shape[:2] == expected


def test_short_side_resize_matches_opencv_area(video):
    import cv2

    reference, _ = cv2_frames(video)
    decoded = video_io.read_video(video, video_io.DecodeOptions(short_side=24))
    assert decoded.frames.shape == (20, 24, 32, 3)
    expected = np.stack([cv2.resize(f, (32, 24), interpolation=cv2.INTER_AREA) for f in reference])
    assert np.abs(decoded.frames.astype(int) - expected).max() <= 1  # BGR vs RGB order of rounding


@pytest.mark.parametrize("target_fps", [10.0, 7.0, 33.0])
def test_fps_resampling_selects_reference_indices(video, target_fps):
    reference, _ = cv2_frames(video)
    decoded = video_io.read_video(video, video_io.DecodeOptions(fps=target_fps))
    indices = video_io.resample_indices(20, 20.0, target_fps)
    assert len(indices) == round(20 * target_fps / 20.0)
    np.testing.assert_array_equal(decoded.frames, reference[indices])
    assert decoded.fps == target_fps


def test_max_frames_stops_early_without_truncation_warning(video):
    decoded = video_io.read_video(video, video_io.DecodeOptions(max_frames=5, fps=40.0))
    assert decoded.frames.shape[0] == 5
    assert decoded.stats.warning == ""


def test_jpeg_frames_round_trip_above_35db(video):
    import cv2

    reference, _ = cv2_frames(video)
    result = video_io.read_video_jpeg(video, video_io.DecodeOptions(), quality=90)
    assert len(result.frames_jpeg) == 20
    decoded = np.stack([cv2.cvtColor(cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) for j in result.frames_jpeg])
    assert psnr(decoded, reference) > 35
    one = video_io.encode_jpeg(reference[3], quality=95)
    back = cv2.cvtColor(cv2.imdecode(np.frombuffer(one, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert psnr(back, reference[3]) > 35


def _truncated_copy(video, tmp_path, fraction):
    data = open(video, "rb").read()
    path = str(tmp_path / f"cut_{fraction}.avi")
    with open(path, "wb") as f:
        f.write(data[: int(len(data) * fraction)])
    return path


def test_slightly_truncated_video_is_kept_with_warning(video, tmp_path):
    decoded = video_io.read_video(_truncated_copy(video, tmp_path, 0.9))
    assert 10 <= decoded.frames.shape[0] < 20
    assert decoded.stats.claimed_frames == 20
    assert "truncated" in decoded.stats.warning and "kept" in decoded.stats.warning


def test_badly_truncated_video_fails(video, tmp_path):
    path = _truncated_copy(video, tmp_path, 0.45)
    with pytest.raises(video_io.VideoDecodeError, match="truncated: decoded [0-9]+ of 20") as info:
        video_io.read_video(path)
    assert info.value.path == path


def test_error_reasons(tmp_path):
    missing = str(tmp_path / "missing.avi")
    empty = tmp_path / "empty.avi"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    cases = {missing: "missing file", str(empty): "empty file", str(garbage): "unreadable", str(tmp_path): "directory"}
    for path, reason in cases.items():
        with pytest.raises(video_io.VideoDecodeError, match=reason):
            video_io.read_video(path)
        assert reason in video_io.read_video_jpeg_or_reason((path, video_io.DecodeOptions(), 90))
    assert isinstance(video_io.read_video_jpeg_or_reason((os.devnull, video_io.DecodeOptions(), 90)), str)
