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
    expected = tf.nn.softmax(model(clips, training=False)).numpy()
    status, rows = _call(f"{base}/v1/models/student:predict", {"instances": clips.tolist()})
    assert status == 200
    np.testing.assert_allclose([r["probabilities"] for r in rows["predictions"]], expected, atol=1e-5)
    assert [r["classes"] for r in rows["predictions"]] == expected.argmax(-1).tolist()
    status, cols = _call(f"{base}/v1/models/student/versions/1:predict", {"inputs": {"clips": clips.tolist()}})
    assert status == 200
    np.testing.assert_allclose(cols["outputs"]["probabilities"], expected, atol=1e-5)


def test_jpeg_frames_as_b64(served):
    _, base = served
    frame = np.random.default_rng(2).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    jpeg = base64.b64encode(cv2.imencode(".jpg", frame)[1].tobytes()).decode()
    status, out = _call(f"{base}/v1/models/student:predict",
                        {"signature_name": "serve_jpeg", "instances": [[{"b64": jpeg}, {"b64": jpeg}]]})
    assert status == 200
    assert np.isclose(sum(out["predictions"][0]["probabilities"]), 1.0, atol=1e-5)


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
