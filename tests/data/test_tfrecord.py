import cv2
import numpy as np
import pytest
import tensorflow as tf

from tbkeras.data import tfrecord


def _jpeg(frame_rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 100])
    assert ok
    return buf.tobytes()


def _frames(n=6, h=24, w=32):
    # Each frame a flat colour that encodes its index, so decoded frames are identifiable.
    return [np.full((h, w, 3), (10 * i, 255 - 10 * i, 100), np.uint8) for i in range(n)]


def test_round_trip_context_and_selected_frames():
    frames = _frames()
    record = tfrecord.VideoRecord(
        video_id="v_Jump_g01_c01", frames_jpeg=[_jpeg(f) for f in frames], height=24, width=32,
        fps=25.0, label_index=3, label_text="Jump", filename="Jump/v_Jump_g01_c01.avi",
    )
    parsed = tfrecord.parse_video(tf.constant(tfrecord.encode_video(record)))
    assert parsed[tfrecord.VIDEO_ID_KEY].numpy() == b"v_Jump_g01_c01"
    assert parsed[tfrecord.LABEL_INDEX_KEY].numpy() == 3
    assert parsed[tfrecord.LABEL_TEXT_KEY].numpy() == b"Jump"
    assert parsed[tfrecord.NUM_FRAMES_KEY].numpy() == 6
    assert parsed[tfrecord.FPS_KEY].numpy() == pytest.approx(25.0)
    assert (parsed[tfrecord.HEIGHT_KEY].numpy(), parsed[tfrecord.WIDTH_KEY].numpy()) == (24, 32)
    indices = [4, 1, 1]
    decoded = tfrecord.decode_frames(parsed[tfrecord.IMAGE_KEY], tf.constant(indices)).numpy()
    assert decoded.shape == (3, 24, 32, 3)
    expected = np.stack([frames[i] for i in indices]).astype(np.int16)
    assert np.abs(decoded.astype(np.int16) - expected).max() <= 2


def test_unlabeled_default_and_empty_video_rejected():
    record = tfrecord.VideoRecord(video_id="u1", frames_jpeg=[_jpeg(_frames(1)[0])], height=24, width=32, fps=30.0)
    parsed = tfrecord.parse_video(tf.constant(tfrecord.encode_video(record)))
    assert parsed[tfrecord.LABEL_INDEX_KEY].numpy() == tfrecord.UNLABELED
    with pytest.raises(ValueError, match="u2"):
        tfrecord.encode_video(tfrecord.VideoRecord(video_id="u2", frames_jpeg=[], height=1, width=1, fps=1.0))


def test_shard_filename():
    assert tfrecord.shard_filename("train", 3, 16) == "train-00003-of-00016.tfrecord"
