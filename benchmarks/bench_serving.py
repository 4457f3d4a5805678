"""Serving speed: req/s and p50/p95/p99 latency of batch-1 predict requests, side by side with
calling the same SavedModel in-process on the same inputs.

    python benchmarks/bench_serving.py                       # demo-sized and full-width R3D-18
    python benchmarks/bench_serving.py --export_dir=runs/demo/export/student --models=

Models (random weights: speed does not depend on them), exported with `tbkeras.export`:
- `demo`: the demo's student (experiments/demo.flags): R3D-18 at width 0.25, 32 px, 8 frames.
- `r3d18_112`: full-width R3D-18 at 112 px, 8 frames, 101 classes.
Bodies (`--bodies`): `float` (one decoded, normalised clip [1, 8, S, S, 3] for `serving_default`,
the row-format JSON of 3 x 8 x S x S numbers) and `jpeg` (the clip's 8 frames as JPEGs at 128 x 171,
UCF101's size after the converter, for `serve_jpeg`, which crops and resizes them as evaluation
does: the compact request a client would send; TF Serving's `{"b64": ...}` strings).
Modes per model, body and concurrency: `in_process` (threads calling the signature directly),
`server` (experiments/serve.py in its own process, clients on keep-alive connections sending
TF Serving row-format JSON), `server_batching` (the same with --enable_batching), and `grpc` /
`grpc_batching` (the same server's gRPC Predict, --grpc_port, one channel per client thread,
binary TensorProtos; needs `pip install --no-deps -r requirements-grpc.txt`). Request bodies are
encoded before the clock starts. Writes benchmarks/results/serving.json.
"""
import base64
import concurrent.futures
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

from absl import app, flags

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import orjson  # noqa: E402
import tensorflow as tf  # noqa: E402

from tbkeras import export  # noqa: E402
from tbkeras.data import synthetic  # noqa: E402
from tbkeras.machine import cpu_model  # noqa: E402
from tbkeras.models import r3d18  # noqa: E402
from tbkeras.stages.finetune import ClassifierModel  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = {  # name: (width multiplier, crop size, classes)
    "demo": (0.25, 32, 8),
    "r3d18_112": (1.0, 112, 101),
}

_MODELS = flags.DEFINE_list("models", ["demo", "r3d18_112"], f"Models to build and export: {sorted(MODELS)}.")
_EXPORT_DIR = flags.DEFINE_string("export_dir", None, "Also benchmark this existing export (e.g. the demo's).")
_CONCURRENCY = flags.DEFINE_list("concurrency", ["1", "8", "32"], "Concurrent clients.")
_REQUESTS = flags.DEFINE_string(
    "requests", "demo=48:96:160,r3d18_112=8:16:32,export=48:96:160",
    "Requests per concurrency level, per model (colon-separated, in --concurrency order).")
_BODIES = flags.DEFINE_list("bodies", ["float", "jpeg"], "Request kinds: float clips, JPEG frames.")
MODES = ("in_process", "server", "server_batching", "grpc", "grpc_batching")
_MODES = flags.DEFINE_list("modes", list(MODES), "What to measure.")
_MAX_BATCH_SIZE = flags.DEFINE_integer("max_batch_size", 32, "The batching server's --max_batch_size.")
_BATCH_TIMEOUT_MICROS = flags.DEFINE_integer("batch_timeout_micros", 5000, "The batching server's batch timeout.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed requests before each measurement.")
_OUTPUT = flags.DEFINE_string("output", os.path.join(REPO, "benchmarks", "results", "serving.json"), "Results JSON.")

CLIP_LENGTH = 8
JPEG_FRAME = (128, 171)  # UCF101's 240 x 320 at the converter's short side 128


def _export(name: str, root: str) -> str:
    width, size, classes = MODELS[name]
    model = ClassifierModel(r3d18(width_multiplier=width, dilated_layer4=True, name=f"{name}_backbone"), classes,
                            name=name)
    model(tf.zeros([1, CLIP_LENGTH, size, size, 3]), training=False)
    return export.export_classifier(model, os.path.join(root, name),
                                    export.ExportConfig(clip_length=CLIP_LENGTH, crop_size=size))


def _summary(latencies: list[float], wall: float) -> dict:
    ms = 1000 * np.asarray(latencies)
    return {"requests": len(latencies), "req_per_s": len(latencies) / wall,
            "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean())}


def _run_concurrently(call, inputs: list, concurrency: int) -> dict:
    """`call(x)` for every input from `concurrency` threads; latency of each call, wall time."""
    def timed(x):
        start = time.perf_counter()
        call(x)
        return time.perf_counter() - start

    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        for _ in pool.map(lambda x: call(x), inputs[:_WARMUP.value]):
            pass
        start = time.perf_counter()
        latencies = list(pool.map(timed, inputs, timeout=3600))
        wall = time.perf_counter() - start
    return _summary(latencies, wall)


SIGNATURES = {"float": ("serving_default", "clips"), "jpeg": ("serve_jpeg", "frames")}


def _in_process(export_dir: str, inputs: list[np.ndarray], concurrency: int, body: str) -> dict:
    signature, argument = SIGNATURES[body]
    fn = tf.saved_model.load(export_dir).signatures[signature]
    return _run_concurrently(lambda x: fn(**{argument: tf.constant(x)})["probabilities"].numpy(), inputs, concurrency)


def _batching_bound(export_dir: str, inputs: list[np.ndarray], body: str, batch: int, repeats: int = 2) -> dict:
    """Clips/s of the signature called in-process on batch-1 inputs one after another, and on the
    same inputs concatenated into calls of `batch` rows: the most any server-side batching can
    gain on this machine (it runs exactly those bigger calls)."""
    signature, argument = SIGNATURES[body]
    fn = tf.saved_model.load(export_dir).signatures[signature]
    rows = (inputs * batch)[:batch]
    merged = tf.constant(np.concatenate(rows))
    singles = [tf.constant(x) for x in rows]
    fn(**{argument: merged})
    fn(**{argument: singles[0]})
    start = time.perf_counter()
    for _ in range(repeats):
        fn(**{argument: merged})["probabilities"].numpy()
    batched = repeats * batch / (time.perf_counter() - start)
    start = time.perf_counter()
    for x in singles:
        fn(**{argument: x})["probabilities"].numpy()
    single = batch / (time.perf_counter() - start)
    return {"batch": batch, "batch1_clips_per_s": single, "batched_clips_per_s": batched, "gain": batched / single}


def _jpeg_clip(rng: np.random.Generator) -> np.ndarray:
    """8 frames of a synthetic action video at 128 x 171, as JPEG bytes: object string [1, 8]."""
    height, width = JPEG_FRAME
    config = synthetic.SyntheticConfig(num_frames=CLIP_LENGTH, height=height, width=width)
    frames = synthetic.render_video(int(rng.integers(config.num_classes)), rng, config)
    return np.array([[tf.io.encode_jpeg(f, quality=90).numpy() for f in frames]], dtype=object)


def _request_body(body: str, x: np.ndarray) -> bytes:
    if body == "float":
        return orjson.dumps({"instances": x.tolist()})
    return orjson.dumps({"signature_name": "serve_jpeg",
                         "instances": [[{"b64": base64.b64encode(j).decode()} for j in row] for row in x]})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _ServerProcess:
    def __init__(self, export_dir: str, batching: bool, concurrency: int, grpc: bool = False):
        self.port = _free_port()
        self.grpc_port = _free_port() if grpc else None
        args = [sys.executable, os.path.join(REPO, "experiments", "serve.py"), f"--export_dir={export_dir}",
                f"--port={self.port}", f"--queue_size={max(64, concurrency)}", "--body_timeout=600"]
        if grpc:
            args.append(f"--grpc_port={self.grpc_port}")
        if batching:
            args += ["--enable_batching", f"--max_batch_size={_MAX_BATCH_SIZE.value}",
                     f"--batch_timeout_micros={_BATCH_TIMEOUT_MICROS.value}"]
        env = {**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2"}
        self.proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 300
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", "/v1/models/student")
                if conn.getresponse().status == 200:
                    conn.close()
                    return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start: {self.proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.5)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=120)


def _server(export_dir: str, bodies: list[bytes], concurrency: int, batching: bool) -> dict:
    server = _ServerProcess(export_dir, batching, concurrency)
    connections: dict[int, http.client.HTTPConnection] = {}

    def post(body: bytes) -> None:
        ident = threading.get_ident()
        conn = connections.get(ident)
        if conn is None:
            conn = connections[ident] = http.client.HTTPConnection("127.0.0.1", server.port, timeout=3600)
            conn.connect()
            # As curl and urllib3 do: without it, the body's send waits for the ACK of the headers'
            # (Nagle's algorithm vs the server's delayed ACK), ~40 ms per request.
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.request("POST", "/v1/models/student:predict", body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"status {response.status}: {data[:300]!r}")

    try:
        return _run_concurrently(post, bodies, concurrency)
    finally:
        for conn in connections.values():
            conn.close()
        server.stop()


def _grpc_request(body: str, x: np.ndarray):
    from tensorflow_serving.apis import predict_pb2

    signature, argument = SIGNATURES[body]
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "student"
    request.model_spec.signature_name = signature
    request.inputs[argument].CopyFrom(tf.make_tensor_proto(x))
    return request


def _grpc_server(export_dir: str, requests: list, concurrency: int, batching: bool) -> dict:
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    server = _ServerProcess(export_dir, batching, concurrency, grpc=True)
    channels: dict[int, tuple] = {}

    def predict(request) -> None:
        ident = threading.get_ident()
        if ident not in channels:
            channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}",
                                            options=[("grpc.max_send_message_length", -1)])
            channels[ident] = (channel, prediction_service_pb2_grpc.PredictionServiceStub(channel))
        channels[ident][1].Predict(request, timeout=3600)

    try:
        return _run_concurrently(predict, requests, concurrency)
    finally:
        for channel, _ in channels.values():
            channel.close()
        server.stop()


def _bench(name: str, export_dir: str, counts: list[int], levels: list[int], body: str) -> dict:
    size = export.load_export_config(export_dir).crop_size
    results = {}
    for concurrency, count in zip(levels, counts):
        rng = np.random.default_rng(concurrency)
        if body == "float":
            inputs = [rng.uniform(size=(1, CLIP_LENGTH, size, size, 3)).astype(np.float32) for _ in range(count)]
        else:
            inputs = [_jpeg_clip(rng) for _ in range(count)]
        bodies = [_request_body(body, x) for x in inputs]
        row = {"body_bytes": len(bodies[0])}
        if any(mode.startswith("grpc") for mode in _MODES.value):
            requests = [_grpc_request(body, x) for x in inputs]
            row["grpc_message_bytes"] = requests[0].ByteSize()
        for mode in _MODES.value:
            if mode == "in_process":
                row[mode] = _in_process(export_dir, inputs, concurrency, body)
            elif mode.startswith("grpc"):
                row[mode] = _grpc_server(export_dir, requests, concurrency, batching=mode == "grpc_batching")
            else:
                row[mode] = _server(export_dir, bodies, concurrency, batching=mode == "server_batching")
            print(f"{name} {body} c={concurrency} {mode}: {row[mode]['req_per_s']:.1f} req/s, "
                  f"p50 {row[mode]['p50_ms']:.1f} ms, p95 {row[mode]['p95_ms']:.1f} ms, p99 {row[mode]['p99_ms']:.1f} ms",
                  flush=True)
        results[str(concurrency)] = row
    bound = _batching_bound(export_dir, inputs, body, _MAX_BATCH_SIZE.value)
    print(f"{name} {body} in-process batch-1 {bound['batch1_clips_per_s']:.1f} clips/s, batch {bound['batch']} "
          f"{bound['batched_clips_per_s']:.1f} clips/s: batching can gain at most {bound['gain']:.2f}x", flush=True)
    results["batching_bound"] = bound
    return results


def main(argv):
    del argv
    start = time.perf_counter()
    levels = [int(c) for c in _CONCURRENCY.value]
    if set(_MODES.value) - set(MODES):
        raise app.UsageError(f"--modes: unknown {sorted(set(_MODES.value) - set(MODES))}; choose from {list(MODES)}")
    counts = {}
    for item in _REQUESTS.value.split(","):
        key, values = item.split("=")
        counts[key] = [int(v) for v in values.split(":")]
    out = {"command": " ".join(sys.argv), "cpu": cpu_model(), "nproc": os.cpu_count(), "models": {}}
    with tempfile.TemporaryDirectory() as root:
        targets = [(name, _export(name, root)) for name in _MODELS.value if name]
        if _EXPORT_DIR.value:
            targets.append(("export", _EXPORT_DIR.value))
        for name, export_dir in targets:
            for body in _BODIES.value:
                out["models"].setdefault(name, {})[body] = _bench(
                    name, export_dir, counts[name if name in counts else "export"], levels, body)
    out["run_time_s"] = time.perf_counter() - start
    os.makedirs(os.path.dirname(_OUTPUT.value), exist_ok=True)
    with open(_OUTPUT.value, "w") as f:
        json.dump(out, f, indent=2)
    print(f"wrote {_OUTPUT.value} in {out['run_time_s']:.0f} s")


if __name__ == "__main__":
    app.run(main)
