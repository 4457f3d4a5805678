"""TF Serving's gRPC Predict beside the REST server, tested as a client would: a real grpc channel
to 127.0.0.1, TF Serving's own stub and protos. Skipped without tensorflow-serving-api
(`pip install --no-deps -r requirements-grpc.txt`; CI installs it)."""
import base64
import concurrent.futures
import json
import signal
import threading
import urllib.request

import numpy as np
import pytest
import tensorflow as tf

from tbkeras.serving import server as serving
from tests import float32_tolerances as f32
from tests.serving.test_server import _clips, _config, _free_port, _jpeg_b64, exported, serve_py  # noqa: F401 - the fixture

grpc = pytest.importorskip("grpc")
pytest.importorskip("tensorflow_serving.apis.predict_pb2")
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # noqa: E402


@pytest.fixture(scope="module")
def grpc_served(exported):  # noqa: F811
    model, path = exported
    srv = serving.serve_in_background(serving.ServedModel.load(path, name="student"), _config(grpc_port=0))
    channel = grpc.insecure_channel(srv.grpc_target)
    yield model, srv, prediction_service_pb2_grpc.PredictionServiceStub(channel)
    channel.close()
    srv.stop()


def _request(inputs, signature_name="", name="student", version=None, output_filter=()):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    if signature_name:
        request.model_spec.signature_name = signature_name
    if version is not None:
        request.model_spec.version.value = version
    for k, v in inputs.items():
        request.inputs[k].CopyFrom(v if isinstance(v, type(request.inputs[k])) else tf.make_tensor_proto(v))
    request.output_filter.extend(output_filter)
    return request


def test_predict_matches_the_model_and_the_rest_answer(grpc_served):
    model, srv, stub = grpc_served
    clips = _clips(0, 2)
    response = stub.Predict(_request({"clips": clips}), timeout=30)
    probabilities = tf.make_ndarray(response.outputs["probabilities"])
    logits = model(clips, training=False).numpy()
    atol = f32.served_probability_atol(logits)
    np.testing.assert_allclose(probabilities, tf.nn.softmax(logits).numpy(), atol=atol)
    assert tf.make_ndarray(response.outputs["classes"]).tolist() == probabilities.argmax(-1).tolist()
    assert (response.model_spec.name, response.model_spec.version.value,
            response.model_spec.signature_name) == ("student", 1, "serving_default")
    # gRPC carries float32 bits and REST carries float32's shortest repr: the same answer, exactly.
    body = json.dumps({"inputs": {"clips": clips.tolist()}}).encode()
    with urllib.request.urlopen(urllib.request.Request(srv.url + "/v1/models/student:predict", data=body)) as r:
        rest = json.loads(r.read())["outputs"]["probabilities"]
    np.testing.assert_array_equal(np.float32(rest), probabilities)


def test_whole_video_of_jpeg_frames_and_output_filter(grpc_served, exported):  # noqa: F811
    _, srv, stub = grpc_served
    frames = np.array([[base64.b64decode(_jpeg_b64(i)) for i in range(5)]], dtype=object)
    response = stub.Predict(_request({"frames": frames}, "serve_video", version=1, output_filter=["probabilities"]),
                            timeout=30)
    assert list(response.outputs) == ["probabilities"]
    direct = tf.saved_model.load(exported[1]).signatures["serve_video"](frames=tf.constant(frames))
    np.testing.assert_array_equal(tf.make_ndarray(response.outputs["probabilities"]), direct["probabilities"].numpy())


@pytest.mark.parametrize("request_kwargs, code, words", [
    (dict(inputs={"clips": _clips(0)}, name="other"), "NOT_FOUND", "Servable not found"),
    (dict(inputs={"clips": _clips(0)}, version=7), "NOT_FOUND", "version 7"),
    (dict(inputs={"clips": _clips(0)}, signature_name="nope"), "INVALID_ARGUMENT", "unknown signature_name 'nope'"),
    (dict(inputs={"clips": _clips(0).astype(np.float64)}), "INVALID_ARGUMENT", "'clips' is float64"),
    (dict(inputs={"clips": _clips(0)[0]}), "INVALID_ARGUMENT", "'clips' has shape [2, 16, 16, 3]"),
    (dict(inputs={"clips": _clips(0)[:, :, :8]}), "INVALID_ARGUMENT", "'clips' has shape [1, 2, 8, 16, 3]"),
    (dict(inputs={}), "INVALID_ARGUMENT", "missing ['clips']"),
    (dict(inputs={"clips": _clips(0), "extra": _clips(1)}), "INVALID_ARGUMENT", "unknown ['extra']"),
    (dict(inputs={"clips": _clips(0)}, output_filter=["scores"]), "INVALID_ARGUMENT", "output_filter names ['scores']"),
    (dict(inputs={"frames": np.array([[b"not a jpeg"] * 2], dtype=object)}, signature_name="serve_jpeg"),
     "INVALID_ARGUMENT", "the model rejected the input"),
])
def test_bad_requests_get_the_status_and_a_message_naming_the_field(grpc_served, request_kwargs, code, words):
    _, _, stub = grpc_served
    with pytest.raises(grpc.RpcError) as error:
        stub.Predict(_request(**request_kwargs), timeout=30)
    assert error.value.code() == getattr(grpc.StatusCode, code), error.value.details()
    assert words in error.value.details(), error.value.details()


def test_a_message_over_the_body_limit_is_refused(grpc_served):
    _, _, stub = grpc_served  # the test config's limit is 1 MiB; this clip is 8 MiB of float32
    big = np.zeros([1, 2, 16, 16, 3], np.float32).repeat(1 << 10, axis=1)[:, :2048]
    with pytest.raises(grpc.RpcError) as error:
        stub.Predict(_request({"clips": big}), timeout=30)
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_concurrent_grpc_and_rest_requests_share_one_batcher(exported):  # noqa: F811
    model, path = exported
    cfg = _config(grpc_port=0, workers=2, queue_size=32, enable_batching=True, max_batch_size=8,
                  batch_timeout_micros=50_000)
    srv = serving.serve_in_background(serving.ServedModel.load(path, name="student"), cfg)
    channel = grpc.insecure_channel(srv.grpc_target)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    try:
        inputs = [0.2 * _clips(100 + i) + i / 30 for i in range(16)]

        def one(i):
            if i % 2:
                return tf.make_ndarray(stub.Predict(_request({"clips": inputs[i]}), timeout=60).outputs["probabilities"])
            body = json.dumps({"instances": inputs[i].tolist()}).encode()
            with urllib.request.urlopen(urllib.request.Request(srv.url + "/v1/models/student:predict", data=body)) as r:
                return np.float32(json.loads(r.read())["predictions"][0]["probabilities"])[None]

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = np.concatenate(list(pool.map(one, range(len(inputs)), timeout=120)))
        logits = np.concatenate([model(x, training=False).numpy() for x in inputs])
        atol = f32.served_probability_atol(logits)
        np.testing.assert_allclose(answers, tf.nn.softmax(logits).numpy(), atol=atol)
        gaps = np.abs(answers[:, None] - answers[None]).max(-1) + np.eye(len(answers))
        assert gaps.min() > 10 * atol  # an answer given to the wrong request would be caught
        assert srv.server.app.state.serving["state"].batcher is srv.server.batcher
        assert max(srv.server.batcher.batch_sizes) > 1, srv.server.batcher.batch_sizes
        # gRPC calls alone: a waiting call holds a gRPC thread, so batches must be able to grow past
        # the 2 workers (they could not when the gRPC pool had `workers` threads).
        srv.server.batcher.batch_sizes.clear()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: one(2 * i + 1), range(8), timeout=120))
        assert max(srv.server.batcher.batch_sizes) > 2, srv.server.batcher.batch_sizes
    finally:
        channel.close()
        srv.stop()


def test_stopping_lets_the_grpc_call_in_flight_finish_and_refuses_new_ones(exported):  # noqa: F811
    _, path = exported
    loaded = serving.ServedModel.load(path, name="student")
    started, release = threading.Event(), threading.Event()
    run = loaded.run

    def slow_run(prepared):  # hold the call in flight until the server is stopping
        started.set()
        release.wait(30)
        return run(prepared)

    loaded.run = slow_run
    srv = serving.serve_in_background(loaded, _config(grpc_port=0))
    channel = grpc.insecure_channel(srv.grpc_target)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    try:
        future = stub.Predict.future(_request({"clips": _clips(0)}), timeout=60)
        assert started.wait(30)
        stopper = threading.Thread(target=srv.stop)
        stopper.start()
        deadline = threading.Event()
        deadline.wait(0.5)  # shutdown under way
        with pytest.raises(grpc.RpcError) as refused:
            stub.Predict(_request({"clips": _clips(1)}), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        release.set()
        assert tf.make_ndarray(future.result(timeout=30).outputs["probabilities"]).shape == (1, 3)
        stopper.join(30)
        assert not srv.thread.is_alive()
    finally:
        release.set()
        channel.close()
        srv.stop()


def test_grpc_port_is_checked():
    with pytest.raises(ValueError, match="grpc_port"):
        serving.ServerConfig(grpc_port=70000)


@pytest.mark.slow
def test_serve_py_answers_grpc_and_exits_0_on_sigterm(exported):  # noqa: F811
    _, path = exported
    rest_port, grpc_port = _free_port(), _free_port()
    with serve_py(f"--export_dir={path}", f"--port={rest_port}", f"--grpc_port={grpc_port}") as proc:
        channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
        grpc.channel_ready_future(channel).result(timeout=120)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(_request({"clips": _clips(0)}), timeout=60)
        assert tf.make_ndarray(response.outputs["probabilities"]).shape == (1, 3)
        channel.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        _, err = proc.communicate(timeout=10)
        assert f"gRPC on 127.0.0.1:{grpc_port}" in err and "stopped" in err
