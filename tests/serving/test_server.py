import base64
import json
import urllib.error
import urllib.request

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf

from tbkeras import export
from tbkeras.serving import server as serving
from tests import float32_tolerances as f32


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    inputs = keras.Input([None, 16, 16, 3])
    x = keras.layers.GlobalAveragePooling3D()(keras.layers.Conv3D(4, 3, padding="same")(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3)(x))
    path = export.export_classifier(model, str(tmp_path_factory.mktemp("exp") / "student"),
                                    export.ExportConfig(clip_length=2, crop_size=16))
    srv = serving.serve_in_background(serving.ServedModel.load(path, name="student"))
    yield model, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def _call(url, body=None):
    data = None if body is None else json.dumps(body).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_row_and_columnar_predict_match_the_model(served):
    model, base = served
    clips = np.random.default_rng(0).uniform(size=(2, 2, 16, 16, 3)).astype(np.float32)
    logits = model(clips, training=False).numpy()
    expected = tf.nn.softmax(logits).numpy()
    # JSON carries float32 values exactly (repr round-trips). The served graph vs eager Keras:
    # logits within estimate 7 of tests/float32_tolerances.py at their scale, which moves a
    # probability p by <= 2 p that (p <= 1), plus its softmax's rounding (bound 5). Rows or
    # classes out of order are O(0.1) off.
    atol = float(2 * f32.NETWORK_RTOL * np.abs(logits).max()) + f32.softmax_rtol(3, np.ptp(logits, axis=-1).max())
    status, rows = _call(f"{base}/v1/models/student:predict", {"instances": clips.tolist()})
    assert status == 200
    np.testing.assert_allclose([r["probabilities"] for r in rows["predictions"]], expected, atol=atol)
    assert [r["classes"] for r in rows["predictions"]] == expected.argmax(-1).tolist()
    status, cols = _call(f"{base}/v1/models/student/versions/1:predict", {"inputs": {"clips": clips.tolist()}})
    assert status == 200
    np.testing.assert_allclose(cols["outputs"]["probabilities"], expected, atol=atol)


def test_jpeg_frames_as_b64(served):
    _, base = served
    frame = np.random.default_rng(2).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    jpeg = base64.b64encode(cv2.imencode(".jpg", frame)[1].tobytes()).decode()
    status, out = _call(f"{base}/v1/models/student:predict",
                        {"signature_name": "serve_jpeg", "instances": [[{"b64": jpeg}, {"b64": jpeg}]]})
    assert status == 200
    # 3 float32 probabilities (bound 5), summed in float64.
    prediction = out["predictions"][0]
    rtol = f32.softmax_rtol(3, np.ptp(prediction["logits"]))
    assert np.isclose(sum(prediction["probabilities"]), 1.0, rtol=0, atol=rtol)


def test_status_metadata_and_errors(served):
    _, base = served
    assert _call(f"{base}/v1/models/student")[1]["model_version_status"][0]["state"] == "AVAILABLE"
    meta = _call(f"{base}/v1/models/student/metadata")[1]
    assert meta["metadata"]["signature_def"]["serving_default"]["inputs"]["clips"]["shape"] == [-1, -1, 16, 16, 3]
    status, err = _call(f"{base}/v1/models/other:predict", {"instances": [1]})
    assert status == 404 and "other" in err["error"]
    status, err = _call(f"{base}/v1/models/student:predict", {"instances": [[[1.0]]]})
    assert status == 400 and "shape" in err["error"]
    status, err = _call(f"{base}/v1/models/student:predict", {"signature_name": "nope", "instances": [1]})
    assert status == 400 and "serve_jpeg" in err["error"]
    status, err = _call(f"{base}/v1/models/student:predict", {"rows": []})
    assert status == 400 and "instances" in err["error"]
