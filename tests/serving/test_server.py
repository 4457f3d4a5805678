"""The REST server, tested as a client would: a real uvicorn server on 127.0.0.1, real sockets.

Malformed requests are written byte by byte on a raw socket, so what reaches the server is exactly
what the test says (an HTTP library would refuse to send most of them). Every socket has a
timeout and every loop a bounded count.
"""
import base64
import concurrent.futures
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
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

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PREDICT = "/v1/models/student:predict"
TIMEOUT = 1.0  # the test servers' header and body timeouts, seconds


def _tiny_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input([None, 16, 16, 3])
    x = keras.layers.GlobalAveragePooling3D()(keras.layers.Conv3D(4, 3, padding="same")(inputs))
    return keras.Model(inputs, keras.layers.Dense(3)(x))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = _tiny_model()
    path = export.export_classifier(model, str(tmp_path_factory.mktemp("exp") / "student"),
                                    export.ExportConfig(clip_length=2, crop_size=16, num_clips=2, num_crops=1))
    return model, path


def _config(**kwargs):
    defaults = dict(port=0, workers=2, queue_size=2, max_body_bytes=1 << 20, header_timeout=TIMEOUT,
                    body_timeout=TIMEOUT, access_log=True)
    return serving.ServerConfig(**{**defaults, **kwargs})


@pytest.fixture(scope="module")
def served(exported):
    model, path = exported
    srv = serving.serve_in_background(serving.ServedModel.load(path, name="student"), _config())
    yield model, srv, path
    srv.stop()


def _call(url, body=None, timeout=30):
    data = None if body is None else json.dumps(body).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _raw(port, data=b"", half_close=False, pause=None, rest=b"", timeout=10.0):
    """Send `data` (then, after `pause` s, `rest`), read one HTTP response: (status, JSON body,
    headers, seconds from the last byte sent to the answer)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        if pause is not None:
            time.sleep(pause)
            s.sendall(rest)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        sent = time.monotonic()
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65536)
            assert chunk, f"connection closed without a response (got {buf!r})"
            buf += chunk
        head, body = buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines[1:])
        length = int(headers["content-length"])
        while len(body) < length:
            chunk = s.recv(65536)
            assert chunk, "connection closed in the middle of the response body"
            body += chunk
        return int(lines[0].split()[1]), json.loads(body), headers, time.monotonic() - sent


def _post(body: bytes, extra: bytes = b"") -> bytes:
    return (b"POST " + PREDICT.encode() + b" HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n" + extra +
            b"Content-Length: %d\r\n\r\n" % len(body) + body)


def _clips(seed, n=1):
    return np.random.default_rng(seed).uniform(size=(n, 2, 16, 16, 3)).astype(np.float32)


def _jpeg_b64(seed):
    frame = np.random.default_rng(seed).integers(0, 255, (16, 20, 3), dtype=np.uint8)
    return base64.b64encode(cv2.imencode(".jpg", frame)[1].tobytes()).decode()


# ------------------------------------------------------------------------------------- answers

def test_row_and_columnar_predict_match_the_model(served):
    model, srv, _ = served
    clips = _clips(0, 2)
    logits = model(clips, training=False).numpy()
    expected = tf.nn.softmax(logits).numpy()
    # JSON carries float32 values exactly (orjson writes float32's shortest repr). The served graph
    # vs eager Keras: logits within estimate 7 of tests/float32_tolerances.py at their scale, which
    # moves a probability p by <= 2 p that (p <= 1), plus its softmax's rounding (bound 5). Rows or
    # classes out of order are O(0.1) off.
    atol = f32.served_probability_atol(logits)
    status, rows = _call(srv.url + PREDICT, {"instances": clips.tolist()})
    assert status == 200
    np.testing.assert_allclose([r["probabilities"] for r in rows["predictions"]], expected, atol=atol)
    assert [r["classes"] for r in rows["predictions"]] == expected.argmax(-1).tolist()
    status, cols = _call(srv.url + "/v1/models/student/versions/1:predict", {"inputs": {"clips": clips.tolist()}})
    assert status == 200
    np.testing.assert_allclose(cols["outputs"]["probabilities"], expected, atol=atol)


def test_jpeg_clip_and_whole_video_as_b64(served):
    _, srv, path = served
    frames = [{"b64": _jpeg_b64(i)} for i in range(5)]
    status, out = _call(srv.url + PREDICT, {"signature_name": "serve_jpeg", "instances": [frames[:2]]})
    assert status == 200 and len(out["predictions"]) == 1
    status, video = _call(srv.url + PREDICT, {"signature_name": "serve_video", "instances": [frames]})
    assert status == 200
    # The same frames straight into the SavedModel: the server adds nothing to the answer.
    direct = tf.saved_model.load(path).signatures["serve_video"](
        frames=tf.constant([[base64.b64decode(f["b64"]) for f in frames]]))
    np.testing.assert_array_equal(np.float32(video["predictions"][0]["probabilities"]),
                                  direct["probabilities"].numpy()[0])


def test_status_and_metadata(served):
    _, srv, path = served
    assert _call(srv.url + "/v1/models/student")[1]["model_version_status"][0]["state"] == "AVAILABLE"
    meta = _call(srv.url + "/v1/models/student/metadata")[1]["metadata"]["signature_def"]
    assert meta["serving_default"]["inputs"]["clips"]["shape"] == [-1, -1, 16, 16, 3]
    assert meta["serve_video"]["inputs"]["frames"] == {"dtype": "string", "shape": [-1, -1]}
    assert sorted(meta["serve_video"]["outputs"]) == ["classes", "probabilities"]


# ------------------------------------------------------------------------------------- malformed

_GOOD_CLIP = _clips(1).tolist()
_NULL_CLIP = json.loads(json.dumps(_GOOD_CLIP))
_NULL_CLIP[0][1][3][4][2] = None
_RAGGED = json.loads(json.dumps(_GOOD_CLIP))
_RAGGED[0][1][3].pop()

MALFORMED = {
    # HTTP layer (h11), answered by our protocol in JSON instead of uvicorn's plain text
    "non-numeric content-length": (b"POST " + PREDICT.encode() + b" HTTP/1.1\r\nHost: t\r\nContent-Length: ten\r\n\r\n",
                                   400, "Content-Length"),
    "negative content-length": (b"POST " + PREDICT.encode() + b" HTTP/1.1\r\nHost: t\r\nContent-Length: -5\r\n\r\n",
                                400, "Content-Length"),
    "garbage request line": (b"\x16\x03\x01 hello\r\n\r\n", 400, "invalid HTTP request"),
    # body
    "invalid utf-8": (_post(b'{"instances": ["\xff\xfe"]}'), 400, "UTF-8"),
    "nested 100,000 deep": (_post(b"[" * 100_000), 400, "not valid JSON"),
    "truncated JSON": (_post(json.dumps({"instances": _GOOD_CLIP}).encode()[:-40]), 400, "not valid JSON"),
    "not an object": (_post(b"[1, 2]"), 400, "JSON object"),
    "strings for float32": (_post(json.dumps({"instances": [[["a"]]]}).encode()), 400, "strings"),
    "wrong shape": (_post(json.dumps({"instances": _clips(2)[:, :, :8].tolist()}).encode()), 400, "shape"),
    "wrong rank": (_post(json.dumps({"instances": [[1.0, 2.0]]}).encode()), 400, "shape"),
    "null element": (_post(json.dumps({"instances": _NULL_CLIP}).encode()), 400, "null"),
    "ragged": (_post(json.dumps({"instances": _RAGGED}).encode()), 400, "ragged"),
    "neither instances nor inputs": (_post(b'{"rows": []}'), 400, "instances"),
    "unknown signature": (_post(b'{"signature_name": "nope", "instances": [1]}'), 400, "serve_video"),
    "bad base64": (_post(b'{"signature_name": "serve_jpeg", "instances": [[{"b64": "%%%"}]]}'), 400, "base64"),
    "corrupt JPEG": (_post(json.dumps({"signature_name": "serve_jpeg", "instances": [[{"b64": base64.b64encode(
        b"\xff\xd8not a jpeg").decode()}]]}).encode()), 400, "rejected"),
    "null frame": (_post(b'{"signature_name": "serve_video", "instances": [[null]]}'), 400, "null"),
    # routing
    "unknown model": (_post(b'{"instances": [1]}').replace(b"/student:", b"/other:"), 404, "other"),
    "unknown version": (_post(b'{"instances": [1]}').replace(b"/student:", b"/student/versions/7:"), 404, "version 7"),
    "unknown path": (b"GET /v2/anything HTTP/1.1\r\nHost: t\r\n\r\n", 404, "unknown path"),
    "wrong method": (b"DELETE /v1/models/student HTTP/1.1\r\nHost: t\r\n\r\n", 405, "Method Not Allowed"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_request_gets_a_json_error(served, case):
    data, status, words = MALFORMED[case]
    got, body, headers, _ = _raw(served[1].port, data)
    assert got == status, body
    assert headers["content-type"] == "application/json"
    assert words in body["error"]


def test_body_cut_short_by_the_client_is_a_400(served):
    body = json.dumps({"instances": _GOOD_CLIP}).encode()
    data = _post(body)[: -len(body) // 2]  # headers declare the whole body, half of it is sent
    status, out, _, _ = _raw(served[1].port, data, half_close=True)
    assert status == 400 and "expected" in out["error"]


def test_oversized_body_is_refused_from_content_length_before_it_is_read(served):
    # 200 MB declared, nothing sent: the 413 can only come from the header.
    status, out, headers, seconds = _raw(served[1].port, _post(b"")[:-len(b"Content-Length: 0\r\n\r\n")] +
                                         b"Content-Length: 200000000\r\n\r\n")
    assert status == 413 and "1048576" in out["error"] and headers["connection"] == "close"
    assert seconds < TIMEOUT  # not a body timeout
    # Chunked (no Content-Length): cut off once past the limit.
    chunk = b"x" * (600 * 1024)
    chunked = (b"POST " + PREDICT.encode() + b" HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" +
               (b"%x\r\n" % len(chunk) + chunk + b"\r\n") * 2)
    status, out, _, _ = _raw(served[1].port, chunked)
    assert status == 413


@pytest.mark.parametrize("case", ["silent connection", "slow headers", "slow body"])
def test_slow_clients_time_out_with_408(served, case):
    data = {"silent connection": b"", "slow headers": b"POST " + PREDICT.encode() + b" HTTP/1.1\r\nHost",
            "slow body": _post(b'{"instances": [' + b" " * 50)[:-15]}[case]
    status, out, headers, seconds = _raw(served[1].port, data)
    assert status == 408 and headers["connection"] == "close", out
    assert TIMEOUT * 0.9 <= seconds < TIMEOUT + 5


def test_past_the_pool_and_queue_a_503_comes_at_once(exported):
    # workers 1 + queue 1 = 2 admitted. Two clients that send their headers and stall in the body
    # hold both places; a third gets a 503 at once; then both stalled ones time out with 408.
    _, path = exported
    srv = serving.serve_in_background(serving.ServedModel.load(path, name="student"),
                                      _config(workers=1, queue_size=1, body_timeout=3.0))
    try:
        stalled = [socket.create_connection(("127.0.0.1", srv.port), timeout=10) for _ in range(2)]
        for s in stalled:
            s.sendall(_post(b"{" + b" " * 99)[:-50])
        time.sleep(0.5)  # both admitted (the loop has read their headers)
        status, out, headers, seconds = _raw(srv.port, _post(json.dumps({"instances": _GOOD_CLIP}).encode()))
        assert status == 503 and "busy" in out["error"] and seconds < 1.0
        for s in stalled:
            s.settimeout(10)
            assert s.recv(4096).startswith(b"HTTP/1.1 408")
            s.close()
        status, _, _, _ = _raw(srv.port, _post(json.dumps({"instances": _GOOD_CLIP}).encode()))
        assert status == 200  # the places are free again
    finally:
        srv.stop()


def test_past_the_connection_limit_a_503(exported):
    _, path = exported
    srv = serving.serve_in_background(serving.ServedModel.load(path, name="student"), _config(max_connections=2))
    try:
        held = [socket.create_connection(("127.0.0.1", srv.port), timeout=10) for _ in range(2)]
        time.sleep(0.3)
        status, out, _, _ = _raw(srv.port, b"GET /v1/models/student HTTP/1.1\r\nHost: t\r\n\r\n")
        assert status == 503 and "max_connections" in out["error"]
        for s in held:
            s.close()
    finally:
        srv.stop()


# ------------------------------------------------------------------------------------- concurrency

def _burst(url, inputs, threads=8):
    def one(x):
        return _call(url + PREDICT, {"instances": x.tolist()}, timeout=60)

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, inputs, timeout=120))


@pytest.mark.parametrize("batching", [False, True])
def test_concurrent_burst_answers_each_its_own_input(exported, batching):
    model, path = exported
    cfg = _config(workers=2, queue_size=32, enable_batching=batching, max_batch_size=8, batch_timeout_micros=50_000)
    srv = serving.serve_in_background(serving.ServedModel.load(path, name="student"), cfg)
    try:
        # Distinct brightness per request, so that every two answers differ.
        inputs = [0.2 * _clips(100 + i) + i / 30 for i in range(24)]
        sequential = [_call(srv.url + PREDICT, {"instances": x.tolist()}) for x in inputs]
        concurrent_answers = _burst(srv.url, inputs)
        logits = np.concatenate([model(x, training=False).numpy() for x in inputs])
        # Unbatched, each request is the same computation as its sequential twin: equal bits. A batch
        # of 8 runs the convolution on a bigger tensor: the network two ways (estimate 7). Answers
        # swapped between requests differ by O(0.01) here (distinct random clips).
        atol = 0.0
        if batching:
            atol = f32.served_probability_atol(logits)
        for (s_status, s_body), (c_status, c_body) in zip(sequential, concurrent_answers):
            assert s_status == c_status == 200
            np.testing.assert_allclose(c_body["predictions"][0]["probabilities"],
                                       s_body["predictions"][0]["probabilities"], rtol=0, atol=atol)
        answers = np.array([b["predictions"][0]["probabilities"] for _, b in sequential])
        gaps = np.abs(answers[:, None] - answers[None]).max(-1) + np.eye(len(answers))
        assert gaps.min() > 10 * atol  # an answer given to the wrong request would be caught
        if batching:
            sizes = srv.server.app.state.serving["state"].batcher.batch_sizes
            assert max(sizes) > 1, sizes  # some requests did share a model call
    finally:
        srv.stop()


def test_access_log_has_one_line_per_request(served, caplog):
    _, srv, path = served
    with caplog.at_level(logging.INFO, logger="tbkeras.serving.access"):
        _call(srv.url + "/v1/models/student")
        _call(srv.url + PREDICT, {"instances": [[1.0]]})
        _raw(srv.port, b"POST " + PREDICT.encode() + b" HTTP/1.1\r\nHost: t\r\nContent-Length: x\r\n\r\n")
        deadline = time.monotonic() + 5
        while len(caplog.records) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    lines = [r.getMessage() for r in caplog.records if r.name == "tbkeras.serving.access"]
    assert len(lines) == 3, lines
    assert '"GET /v1/models/student" 200' in lines[0] and lines[0].endswith("ms")
    assert f'"POST {PREDICT}" 400' in lines[1]
    assert " 400 " in lines[2]


# ------------------------------------------------------------------------------------- shutdown

@contextlib.contextmanager
def serve_py(*args: str):
    """experiments/serve.py with `args` in its own process (stdout/stderr piped, text); killed on exit
    if the test left it running."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": REPO}
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, "experiments", "serve.py"), *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_lets_the_request_in_flight_finish_then_exits_0(exported, sig):
    _, path = exported
    port = _free_port()
    with serve_py(f"--export_dir={path}", f"--port={port}", "--body_timeout=20", "--access_log") as proc:
        deadline = time.monotonic() + 120
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
                time.sleep(0.2)
        body = json.dumps({"instances": _GOOD_CLIP}).encode()
        request = _post(body)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(request[:-1000])  # in flight: admitted, its body still arriving
            time.sleep(1.0)
            proc.send_signal(sig)
            time.sleep(1.0)
            with pytest.raises(OSError):  # no longer accepting
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
            assert proc.poll() is None  # still finishing the request
            s.sendall(request[-1000:])
            buf = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        assert buf.startswith(b"HTTP/1.1 200"), buf[:200]
        assert "predictions" in json.loads(buf.split(b"\r\n\r\n", 1)[1])
        assert proc.wait(timeout=60) == 0
        _, err = proc.communicate(timeout=10)
        assert f'"POST {PREDICT}" 200' in err and "stopped" in err


def test_listening_socket_is_tcp_with_nodelay():
    # asyncio sets TCP_NODELAY on accepted sockets only when the socket says IPPROTO_TCP; without it
    # every response (header and body written apart) waited ~40 ms for the client's delayed ACK.
    sock = serving._listen("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        sock.close()
