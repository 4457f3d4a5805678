"""A production server speaking TF Serving's REST API for a tbkeras SavedModel (uvicorn + starlette).

Clients written for TF Serving work unchanged. Supported, as in TF Serving:
- `GET  /v1/models/{name}[/versions/{v}]`: version status.
- `GET  /v1/models/{name}[/versions/{v}]/metadata`: signatures with input and output specs.
- `POST /v1/models/{name}[/versions/{v}]:predict` with `{"signature_name"?, "instances": [...]}`
  (row format, answered with `{"predictions": [...]}`) or `{"inputs": ...}` (columnar, answered with
  `{"outputs": ...}`). Binary strings (JPEG frames) are sent as `{"b64": "..."}`.

Every answer that is not a 200 is JSON `{"error": "..."}`, including requests the HTTP layer
rejects before the app sees them (bad request line or headers, a non-numeric or negative
Content-Length, a body cut short by the client: 400; headers too slow: 408), which uvicorn would
answer in plain text. Statuses: 400 bad request (invalid JSON or UTF-8, nesting past orjson's 1024
levels, wrong dtype, shape or rank, null elements, input the model rejects), 404 unknown model,
version or path, 405 wrong method, 408 a client too slow to send its headers or body, 413 a body
over `max_body_bytes` (judged from Content-Length before reading; a chunked body is cut off when it
passes the limit), 503 past the admission limit or the connection limit, 500 a server bug.

Concurrency is bounded: `workers` threads parse JSON (orjson, straight into numpy) and run the
model; at most `workers + queue_size` predict requests are admitted at once and the next gets a 503
at once, before its body is read. With `enable_batching`, concurrent requests for the same signature
and input shapes are concatenated along the batch axis and run as one call (`Batcher`), as TF
Serving's `--enable_batching` (`max_batch_size`, `batch_timeout_micros`, `num_batch_threads`).
SIGTERM or SIGINT: stop accepting, finish the requests in flight (at most `graceful_timeout`
seconds), return (so the process exits 0). One access-log line per request behind `access_log`.
With `grpc_port`, TF Serving's gRPC Predict is answered too, by the same model and batcher
(`grpc_service`).
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import concurrent.futures
import contextlib
import dataclasses
import http
import logging
import queue
import re
import signal
import socket
import sys
import threading
import time
from typing import Any, Callable

import h11
import numpy as np
import orjson
import tensorflow as tf
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("tbkeras.serving.access")

_PREDICT = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?:predict$")
_STATUS = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?(?P<meta>/metadata)?$")

# The largest sensible request: a whole video for `serve_video` (300 frames of 320 x 240 JPEG at
# ~20 kB, base64: ~8 MB), or a batch of 4 float32 clips of 8 x 224 x 224 x 3 in JSON (~12 bytes per
# value: ~58 MB). A longer video is better sent as a few clips; raise the flag for bigger batches.
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """How the server listens, bounds its work and times out clients.

    workers: threads that parse requests and run the model (unbatched) or parse them (batched).
    queue_size: predict requests admitted beyond `workers`; past `workers + queue_size` -> 503.
    max_connections: open connections; past it a new one gets a 503 and is closed.
    max_body_bytes: request body limit (413), checked from Content-Length before reading.
    header_timeout / body_timeout: seconds a client has to send its headers (from its first byte,
      or from connecting) / its body (from its headers); past them -> 408 and the connection closes.
    keep_alive_timeout: seconds an idle keep-alive connection is kept.
    graceful_timeout: on SIGTERM / SIGINT, seconds to wait for requests in flight.
    enable_batching, max_batch_size, batch_timeout_micros, num_batch_threads: server-side batching
      of concurrent requests, as TF Serving's flags of the same names.
    access_log: one line per request (client, method, path, status, latency) on the
      `tbkeras.serving.access` logger.
    grpc_port: also answer TF Serving's gRPC `PredictionService.Predict` on this port (0: any free
      one; None: no gRPC), with the same model, limits and batcher (`grpc_service`).
    """

    host: str = "127.0.0.1"
    port: int = 8501
    workers: int = 4
    queue_size: int = 64
    max_connections: int = 512
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keep_alive_timeout: float = 5.0
    graceful_timeout: float = 30.0
    enable_batching: bool = False
    max_batch_size: int = 32
    batch_timeout_micros: int = 2000
    num_batch_threads: int = 1
    access_log: bool = False
    grpc_port: int | None = None

    def __post_init__(self):
        if self.grpc_port is not None and not 0 <= self.grpc_port <= 65535:
            raise ValueError(f"ServerConfig.grpc_port must be a port number 0-65535 (or None: no gRPC), got {self.grpc_port}")
        for name in ("workers", "max_connections", "max_body_bytes", "max_batch_size", "num_batch_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"ServerConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("queue_size", "batch_timeout_micros"):
            if getattr(self, name) < 0:
                raise ValueError(f"ServerConfig.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("header_timeout", "body_timeout", "keep_alive_timeout", "graceful_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"ServerConfig.{name} must be > 0 seconds, got {getattr(self, name)}")

    @property
    def max_admitted(self) -> int:
        return self.workers + self.queue_size


class RequestError(Exception):
    """A request answered with `status` and `{"error": message}`; `close` ends the connection
    (the body may be unread)."""

    def __init__(self, status: int, message: str, close: bool = False):
        super().__init__(message)
        self.status = status
        self.message = message
        self.close = close


class BadRequest(RequestError):
    """A request the client must fix; answered with status 400."""

    def __init__(self, message: str):
        super().__init__(400, message)


# ------------------------------------------------------------------------------------- requests

@dataclasses.dataclass
class Prepared:
    """A parsed predict request: numpy inputs of one signature, `rows` along the batch axis."""

    signature_name: str
    inputs: dict[str, np.ndarray]
    row_format: bool

    @property
    def rows(self) -> int:
        return len(next(iter(self.inputs.values())))

    @property
    def key(self) -> tuple:
        """Requests with equal keys can be concatenated into one batch."""
        return (self.signature_name,
                tuple((k, v.shape[1:], v.dtype.str) for k, v in sorted(self.inputs.items())))


def _decode_strings(value: Any, field: str) -> Any:
    """Nested lists of strings with TF Serving's `{"b64": ...}` objects replaced by bytes, str
    leaves encoded as UTF-8; iterative, so any depth orjson accepts is fine."""
    def leaf(v: Any) -> bytes:
        if isinstance(v, dict):
            if set(v) != {"b64"} or not isinstance(v["b64"], str):
                raise BadRequest(f'input {field!r}: an object element must be {{"b64": "<base64 string>"}}, got keys {sorted(v)}')
            try:
                return base64.b64decode(v["b64"], validate=True)
            except (binascii.Error, ValueError) as e:
                raise BadRequest(f"input {field!r}: invalid base64: {e}") from None
        if isinstance(v, str):
            return v.encode("utf-8")
        if v is None:
            raise BadRequest(f"input {field!r} has a null element")
        raise BadRequest(f"input {field!r} wants strings, got a {type(v).__name__} element")

    if not isinstance(value, list):
        return leaf(value)
    out: list = []
    stack = [(value, out)]
    while stack:
        src, dst = stack.pop()
        for v in src:
            if isinstance(v, list):
                child: list = []
                dst.append(child)
                stack.append((v, child))
            else:
                dst.append(leaf(v))
    return out


def _string_array(value: Any, field: str) -> np.ndarray:
    nested = _decode_strings(value, field)
    shape = []
    probe = nested
    while isinstance(probe, list):
        shape.append(len(probe))
        if not probe:
            break
        probe = probe[0]
    if len(shape) > 32:
        raise BadRequest(f"input {field!r} is nested {len(shape)} levels deep")
    array = np.empty(shape, dtype=object)
    try:
        array[...] = nested
    except ValueError:
        raise BadRequest(f"input {field!r} is ragged: every list at one depth must have the same length") from None
    if any(not isinstance(v, bytes) for v in array.flat):
        raise BadRequest(f"input {field!r} is ragged: every list at one depth must have the same length")
    return array


def _numeric_array(value: Any, dtype: tf.DType, field: str) -> np.ndarray:
    """orjson's nested lists -> numpy of `dtype`, with a clear error for every way it can fail."""
    try:
        array = np.asarray(value)
    except ValueError as e:  # ragged, or more than numpy's 64 dimensions
        if "inhomogeneous" in str(e):
            raise BadRequest(f"input {field!r} is ragged: every list at one depth must have the same length") from None
        raise BadRequest(f"input {field!r} does not convert to {dtype.name}: {e}") from None
    kind = array.dtype.kind
    if kind == "O":
        flat = list(_leaves(value))
        if any(v is None for v in flat):
            raise BadRequest(f"input {field!r} has a null element; {dtype.name} needs numbers")
        raise BadRequest(f"input {field!r} mixes numbers with non-numbers; {dtype.name} needs numbers")
    wanted = np.dtype(dtype.as_numpy_dtype)
    ok = kind in "iu" or (kind == "f" and wanted.kind == "f") or (kind == "b" and wanted.kind == "b")
    if not ok:
        got = {"U": "strings", "S": "strings", "b": "booleans", "f": "floats"}.get(kind, array.dtype.name)
        raise BadRequest(f"input {field!r} has {got}; the signature wants {dtype.name}")
    return array.astype(wanted, copy=False)


def _leaves(value: Any):
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, list):
            stack.extend(v)
        else:
            yield v


def _output_json(value: np.ndarray) -> Any:
    if value.dtype == object:
        return [_output_json(v) if isinstance(v, np.ndarray) else v.decode("utf-8", "replace") for v in value]
    return value


class ServedModel:
    """A loaded SavedModel and what the REST API needs to know about it."""

    def __init__(self, name: str, version: int, saved_model: Any):
        self.name = name
        self.version = version
        self.saved_model = saved_model
        self.signatures = dict(saved_model.signatures)
        self._specs = {k: fn.structured_input_signature[1] for k, fn in self.signatures.items()}

    @classmethod
    def load(cls, export_dir: str, name: str, version: int = 1) -> "ServedModel":
        if not tf.saved_model.contains_saved_model(export_dir):
            raise FileNotFoundError(f"{export_dir}: no SavedModel there (saved_model.pb missing)")
        return cls(name=name, version=version, saved_model=tf.saved_model.load(export_dir))

    def prepare(self, raw: bytes) -> Prepared:
        """Parse and check a predict body (any thread). Raises BadRequest."""
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise BadRequest(f"the request body is not valid JSON (UTF-8, at most 1024 levels deep): {e}") from None
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        signature_name = body.get("signature_name", "serving_default")
        specs = self.specs(signature_name)
        if ("instances" in body) == ("inputs" in body):
            raise BadRequest('the request body needs exactly one of "instances" (row) or "inputs" (columnar)')
        row_format = "instances" in body
        data = body["instances"] if row_format else body["inputs"]
        if row_format:
            if not isinstance(data, list) or not data:
                raise BadRequest('"instances" must be a non-empty list')
            if len(specs) == 1 and not isinstance(data[0], dict):
                columns = {next(iter(specs)): data}
            else:
                if not all(isinstance(row, dict) for row in data):
                    raise BadRequest(f'every instance must be an object with the inputs {sorted(specs)}')
                columns = {k: [row.get(k) for row in data] for k in specs}
        else:
            columns = data if isinstance(data, dict) and not (len(specs) == 1 and set(data) == {"b64"}) \
                else {next(iter(specs)): data}
        missing = sorted(set(specs) - {k for k, v in columns.items() if v is not None})
        if missing:
            raise BadRequest(f"missing input(s) {missing}; the signature {signature_name!r} takes {sorted(specs)}")
        inputs = {k: _string_array(columns[k], k) if spec.dtype == tf.string else _numeric_array(columns[k], spec.dtype, k)
                  for k, spec in specs.items()}
        return self.checked(signature_name, inputs, row_format)

    def check_servable(self, name: str, version: int | None) -> None:
        """A request for `name` (at `version`, None: the latest) must be for this model (REST and
        gRPC alike). Raises RequestError 404."""
        if name != self.name or (version is not None and version != self.version):
            raise RequestError(404, f"Servable not found for request: {name} version "
                                    f"{'latest' if version is None else version}"
                                    f" (this server has {self.name} version {self.version})")

    def specs(self, signature_name: str) -> dict[str, tf.TensorSpec]:
        """The input specs of a signature. Raises BadRequest for an unknown one."""
        if not isinstance(signature_name, str) or signature_name not in self.signatures:
            raise BadRequest(f"unknown signature_name {signature_name!r}; this model has {sorted(self.signatures)}")
        return self._specs[signature_name]

    def checked(self, signature_name: str, inputs: dict[str, np.ndarray], row_format: bool) -> Prepared:
        """Every input of the signature, each of a compatible shape, all of one non-empty batch size
        (REST and gRPC requests alike). Raises BadRequest."""
        specs = self.specs(signature_name)
        missing, unknown = sorted(set(specs) - set(inputs)), sorted(set(inputs) - set(specs))
        if missing or unknown:
            raise BadRequest(f"the signature {signature_name!r} takes the inputs {sorted(specs)}; "
                             f"missing {missing}, unknown {unknown}")
        for k, spec in specs.items():
            if not spec.shape.is_compatible_with(inputs[k].shape):
                raise BadRequest(f"input {k!r} has shape {list(inputs[k].shape)}; the signature {signature_name!r} "
                                 f"wants {[d if d is not None else -1 for d in spec.shape.as_list()]} (-1: any)")
        if len({len(v) for v in inputs.values()}) > 1:
            raise BadRequest(f"the inputs differ in their first (batch) dimension: "
                             f"{ {k: len(v) for k, v in inputs.items()} }")
        if any(len(v) == 0 for v in inputs.values()):
            raise BadRequest("an input has an empty batch dimension")
        return Prepared(signature_name, inputs, row_format)

    def run(self, prepared: Prepared) -> dict[str, np.ndarray]:
        """The signature's outputs, numpy `[rows, ...]` each. Raises BadRequest if the graph rejects
        the input (e.g. a corrupt JPEG)."""
        fn = self.signatures[prepared.signature_name]
        try:
            return {k: v.numpy() for k, v in fn(**{k: tf.constant(v) for k, v in prepared.inputs.items()}).items()}
        except tf.errors.InvalidArgumentError as e:
            raise BadRequest(f"the model rejected the input: {e.message.splitlines()[0]}") from None

    @staticmethod
    def format(prepared: Prepared, outputs: dict[str, np.ndarray]) -> bytes:
        """The response body: row format `{"predictions": [...]}` or columnar `{"outputs": ...}`."""
        option = orjson.OPT_SERIALIZE_NUMPY
        if not prepared.row_format:
            return orjson.dumps({"outputs": {k: _output_json(v) for k, v in outputs.items()}}, option=option)
        rows = prepared.rows
        for k, v in outputs.items():
            if len(v) != rows:
                raise RequestError(500, f"output {k!r} has {len(v)} rows for {rows} instances: use the columnar format")
        return orjson.dumps({"predictions": [{k: _output_json(v[i:i + 1])[0] for k, v in outputs.items()}
                                             for i in range(rows)]}, option=option)

    def handle(self, raw: bytes) -> bytes:
        """prepare, run, format: one unbatched request, in a worker thread."""
        prepared = self.prepare(raw)
        return self.format(prepared, self.run(prepared))

    def metadata(self) -> dict[str, Any]:
        def spec_json(spec: tf.TensorSpec) -> dict[str, Any]:
            return {"dtype": spec.dtype.name, "shape": [d if d is not None else -1 for d in spec.shape.as_list()]}

        signatures = {}
        for sig_name, fn in self.signatures.items():
            signatures[sig_name] = {
                "inputs": {k: spec_json(s) for k, s in fn.structured_input_signature[1].items()},
                "outputs": {k: spec_json(s) for k, s in fn.structured_outputs.items()},
            }
        return {"model_spec": {"name": self.name, "version": str(self.version)}, "metadata": {"signature_def": signatures}}

    def status(self) -> dict[str, Any]:
        return {"model_version_status": [
            {"version": str(self.version), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]}


# ------------------------------------------------------------------------------------- batching

class Batcher:
    """Server-side batching: requests with the same `Prepared.key` that arrive within
    `timeout_s` of the first of a batch are concatenated (up to `max_batch_size` rows) and run as
    one call on one of `num_threads` threads; each request's future gets its own rows back."""

    def __init__(self, model: ServedModel, max_batch_size: int, timeout_s: float, num_threads: int = 1):
        self._model = model
        self._max_rows = max_batch_size
        self._timeout = timeout_s
        self._queue: queue.Queue = queue.Queue()
        self.batch_sizes: collections.Counter = collections.Counter()  # requests per model call -> calls
        self._threads = [threading.Thread(target=self._loop, name=f"batcher-{i}", daemon=True) for i in range(num_threads)]
        for t in self._threads:
            t.start()

    def submit(self, prepared: Prepared) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put((prepared, future))
        return future

    def close(self) -> None:
        """Finish what is queued, then stop the threads."""
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join()

    def _loop(self) -> None:
        held: collections.deque = collections.deque()  # items of another key, for the next batch
        stopping = False
        while True:
            if held:
                first = held.popleft()
            elif stopping:
                return
            else:
                first = self._queue.get()
                if first is None:
                    return
            batch, rows = [first], first[0].rows
            deadline = time.monotonic() + self._timeout
            while rows < self._max_rows and not stopping:
                remaining = deadline - time.monotonic()
                try:
                    item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                if item[0].key == first[0].key and rows + item[0].rows <= self._max_rows:
                    batch.append(item)
                    rows += item[0].rows
                else:
                    held.append(item)
            self._run(batch)

    def _run(self, batch: list) -> None:
        live = [(p, f) for p, f in batch if f.set_running_or_notify_cancel()]
        if not live:
            return
        self.batch_sizes[len(live)] += 1
        try:
            if len(live) == 1:
                outputs = [self._model.run(live[0][0])]
            else:
                first = live[0][0]
                merged = Prepared(first.signature_name,
                                  {k: np.concatenate([p.inputs[k] for p, _ in live]) for k in first.inputs},
                                  first.row_format)
                together = self._model.run(merged)
                outputs, start = [], 0
                for p, _ in live:
                    outputs.append({k: v[start:start + p.rows] for k, v in together.items()})
                    start += p.rows
        except BaseException as e:  # noqa: BLE001 - every waiting request must get an answer
            if len(live) > 1 and isinstance(e, BadRequest):
                for p, f in live:  # one bad request must not fail the others: run them one by one
                    try:
                        f.set_result(self._model.run(p))
                    except BaseException as single:  # noqa: BLE001
                        f.set_exception(single)
                return
            for _, f in live:
                f.set_exception(e)
            return
        for (_, f), out in zip(live, outputs):
            f.set_result(out)


# ------------------------------------------------------------------------------------- the app

def _json_error(status: int, message: str, close: bool = False) -> Response:
    headers = {"connection": "close"} if close else None
    return Response(orjson.dumps({"error": message}), status_code=status, media_type="application/json",
                    headers=headers)


class _State:
    """What the app's requests share: the worker pool, the batcher and the admission count."""

    def __init__(self, model: ServedModel, config: ServerConfig, batcher: Batcher | None = None):
        self.model = model
        self.config = config
        self.pool = concurrent.futures.ThreadPoolExecutor(config.workers, thread_name_prefix="worker")
        self._owns_batcher = batcher is None
        self.batcher = batcher if batcher is not None else make_batcher(model, config)
        self.admitted = 0

    def close(self) -> None:
        if self.batcher is not None and self._owns_batcher:
            self.batcher.close()
        self.pool.shutdown(wait=True)


def make_batcher(model: ServedModel, config: ServerConfig) -> Batcher | None:
    """The config's batcher (None without `enable_batching`)."""
    if not config.enable_batching:
        return None
    return Batcher(model, config.max_batch_size, config.batch_timeout_micros / 1e6, config.num_batch_threads)


def make_app(model: ServedModel, config: ServerConfig = ServerConfig(), batcher: Batcher | None = None) -> Starlette:
    """The ASGI app (starlette) for `model`, with the access log as middleware when configured.
    `batcher`: one shared with the gRPC service (else the app makes its own if batching)."""
    state_box: dict[str, _State] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        state_box["state"] = _State(model, config, batcher)
        try:
            yield
        finally:
            state_box.pop("state").close()

    async def read_body(request: Request) -> bytes:
        chunks, size = [], 0
        try:
            async with asyncio.timeout(config.body_timeout):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > config.max_body_bytes:
                        raise RequestError(413, f"request body over the {config.max_body_bytes}-byte limit", close=True)
                    chunks.append(chunk)
        except TimeoutError:
            raise RequestError(408, f"request body not received within {config.body_timeout:g} s "
                                    f"({size} bytes arrived)", close=True) from None
        return b"".join(chunks)

    async def predict(request: Request, name: str, version: str | None) -> Response:
        model.check_servable(name, None if version is None else int(version))
        length = request.headers.get("content-length")
        if length is not None and int(length) > config.max_body_bytes:  # h11 has checked it is digits
            raise RequestError(413, f"request body of {length} bytes is over the {config.max_body_bytes}-byte "
                                    "limit (--max_body_bytes)", close=True)
        state = state_box["state"]
        if state.admitted >= config.max_admitted:
            raise RequestError(503, f"server busy: {state.admitted} requests in progress "
                                    f"(--workers={config.workers} + --queue_size={config.queue_size}); retry later",
                               close=True)
        state.admitted += 1
        try:
            raw = await read_body(request)
            loop = asyncio.get_running_loop()
            if state.batcher is None:
                body = await loop.run_in_executor(state.pool, model.handle, raw)
            else:
                prepared = await loop.run_in_executor(state.pool, model.prepare, raw)
                outputs = await asyncio.wrap_future(state.batcher.submit(prepared))
                body = model.format(prepared, outputs)
        finally:
            state.admitted -= 1
        return Response(body, media_type="application/json")

    async def endpoint(request: Request) -> Response:
        path = request.url.path
        try:
            if request.method == "POST":
                match = _PREDICT.match(path)
                if not match:
                    raise RequestError(404, f"unknown path {path}; POST /v1/models/{model.name}:predict")
                return await predict(request, match["name"], match["version"])
            match = _STATUS.match(path)
            if not match:
                raise RequestError(404, f"unknown path {path}; GET /v1/models/{model.name}[/metadata]")
            model.check_servable(match["name"], None if match["version"] is None else int(match["version"]))
            return Response(orjson.dumps(model.metadata() if match["meta"] else model.status()),
                            media_type="application/json")
        except RequestError as e:
            return _json_error(e.status, e.message, e.close)
        except ClientDisconnect:
            return _json_error(400, "the client disconnected before sending its whole body", close=True)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        return _json_error(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}")

    async def server_error(request: Request, exc: Exception) -> Response:
        logger.exception("error serving %s %s", request.method, request.url.path)
        return _json_error(500, f"internal server error: {type(exc).__name__}: {exc}")

    app = Starlette(routes=[Route("/{path:path}", endpoint, methods=["GET", "POST"])],
                    exception_handlers={HTTPException: http_error, Exception: server_error}, lifespan=lifespan,
                    middleware=[Middleware(_AccessLog)] if config.access_log else None)
    app.state.serving = state_box  # {"state": _State} while the server runs (tests look at the batcher)
    return app


class _AccessLog:
    """ASGI middleware: one line per HTTP request, `client "METHOD path" status latency`."""

    def __init__(self, app: Callable):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = [0]

        async def logged_send(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                log_access(scope.get("client"), scope["method"], scope["path"], status[0], time.perf_counter() - start)

        await self.app(scope, receive, logged_send)


def log_access(client: tuple | None, method: str, path: str, status: int, seconds: float) -> None:
    who = f"{client[0]}:{client[1]}" if client else "-"
    access_logger.info('%s "%s %s" %d %.1fms', who, method, path, status, 1000 * seconds)


# ------------------------------------------------------------------------------------- HTTP layer

def _protocol_class(config: ServerConfig) -> type[H11Protocol]:
    """uvicorn's h11 protocol, with what it lacks for a public endpoint: JSON for the errors it
    answers itself, a header timeout (uvicorn has none: a client could hold a connection forever
    by sending nothing), a connection limit answered with a JSON 503, and a 400 (not a silently
    dropped connection) for a body cut short by a client that half-closes."""

    class Protocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            if len(self.connections) > config.max_connections:
                self._reply(503, f"too many connections (--max_connections={config.max_connections}); retry later")
                return
            self._arm_header_timer()

        def connection_lost(self, exc) -> None:
            self._cancel_header_timer()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.transport.is_closing():
                self._cancel_header_timer()
            elif self.conn.their_state is h11.IDLE:
                self._arm_header_timer()  # (part of) the next request's headers
            else:
                self._cancel_header_timer()  # headers complete: the body has its own deadline

        def eof_received(self) -> bool | None:
            if self.cycle is not None and not self.cycle.response_complete and self.cycle.more_body:
                self.conn.receive_data(b"")  # h11 now reports the body as incomplete -> a 400
                self.handle_events()
            return None

        def send_400_response(self, msg: str) -> None:
            error = sys.exc_info()[1]  # called in uvicorn's `except h11.RemoteProtocolError`
            self._reply(400, f"invalid HTTP request: {error or msg}")

        def _arm_header_timer(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(config.header_timeout, self._header_timeout)

        def _cancel_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_timeout(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._reply(408, f"request headers not received within {config.header_timeout:g} s")

        def _reply(self, status: int, message: str) -> None:
            """Answer on the raw transport (there is no request cycle to answer through) and close."""
            self._cancel_header_timer()
            if self.cycle is not None and not self.cycle.response_complete:
                if self.cycle.response_started:  # too late for a status: just end the connection
                    self.transport.close()
                    return
                self.cycle.disconnected = True  # the app's own answer, if any, is dropped
                self.cycle.message_event.set()
            body = orjson.dumps({"error": message})
            head = (f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
                    f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode("ascii")
            self.transport.write(head + body)
            self.transport.close()
            if config.access_log:
                method = path = "-"
                if self.scope is not None and self.cycle is not None:
                    method, path = self.scope["method"], self.scope["path"]
                log_access(self.client, method, path, status, 0.0)

    return Protocol


def _listen(host: str, port: int) -> socket.socket:
    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say so, and without it the
    # response's header and body writes meet the client's delayed ACK (~40 ms per request).
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.listen(2048)  # connectable from here on: clients wait in the backlog until the loop runs
    return sock


class _UvicornServer(uvicorn.Server):
    """uvicorn's server, telling `on_shutdown` the moment it stops accepting (the gRPC server then
    stops accepting too, and both drain their calls in flight together)."""

    on_shutdown: Callable[[], None] | None = None

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.on_shutdown is not None:
            self.on_shutdown()
        await super().shutdown(sockets=sockets)


@dataclasses.dataclass
class Server:
    """A uvicorn server bound to its socket (`port` is the real one when 0 was asked), and the
    gRPC server beside it when `grpc_port` was configured."""

    uvicorn_server: _UvicornServer
    sock: socket.socket
    app: Starlette
    grpc_server: Any = None
    grpc_port: int | None = None
    batcher: Batcher | None = None  # shared by REST and gRPC (only when both run)
    graceful_timeout: float = 30.0

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def run(self) -> None:
        """Serve until SIGTERM / SIGINT (main thread) or `should_exit`; drain in-flight requests
        (REST and gRPC alike)."""
        grpc_stopped: list[threading.Event] = []
        if self.grpc_server is not None:
            self.grpc_server.start()
            self.uvicorn_server.on_shutdown = lambda: grpc_stopped.append(self.grpc_server.stop(self.graceful_timeout))
        try:
            self.uvicorn_server.run(sockets=[self.sock])
        finally:
            if self.grpc_server is not None:
                (grpc_stopped[0] if grpc_stopped else self.grpc_server.stop(self.graceful_timeout)).wait()
            if self.batcher is not None:
                self.batcher.close()


def make_server(model: ServedModel, config: ServerConfig = ServerConfig()) -> Server:
    """A server for `model` on `config.host:config.port` (port 0 picks a free one), and gRPC on
    `config.grpc_port` if set; call `run()`."""
    grpc_server = grpc_port = batcher = None
    if config.grpc_port is not None:
        from tbkeras.serving import grpc_service  # optional: needs tensorflow-serving-api's protos

        batcher = make_batcher(model, config)
        grpc_server, grpc_port = grpc_service.make_grpc_server(model, config, batcher)
    app = make_app(model, config, batcher)
    uv_config = uvicorn.Config(
        app, http=_protocol_class(config), ws="none", lifespan="on", loop="asyncio",
        access_log=False, log_level="warning", timeout_keep_alive=config.keep_alive_timeout,
        timeout_graceful_shutdown=config.graceful_timeout, limit_concurrency=None, backlog=config.max_connections,
    )
    return Server(_UvicornServer(uv_config), _listen(config.host, config.port), app, grpc_server, grpc_port, batcher,
                  config.graceful_timeout)


def serve(model: ServedModel, config: ServerConfig = ServerConfig(), on_ready: Callable[[Server], None] | None = None
          ) -> None:
    """Serve in this (main) thread until SIGTERM or SIGINT, then finish the requests in flight and
    return normally, so the process exits 0."""
    server = make_server(model, config)
    # uvicorn re-raises the signal that stopped it once it has drained; with the default handlers
    # that would kill the process (status 143) or raise KeyboardInterrupt. No-op handlers make it a
    # clean return.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    if on_ready is not None:
        on_ready(server)
    server.run()


@dataclasses.dataclass
class BackgroundServer:
    """A server on a daemon thread (tests, notebooks): `port`, `url`, `stop()`."""

    server: Server
    thread: threading.Thread

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def grpc_target(self) -> str:
        """`127.0.0.1:<port>` of the gRPC service (with `grpc_port` configured)."""
        if self.server.grpc_port is None:
            raise ValueError("this server was started without gRPC (ServerConfig.grpc_port is None)")
        return f"127.0.0.1:{self.server.grpc_port}"

    def stop(self, timeout: float = 30.0) -> None:
        self.server.uvicorn_server.should_exit = True
        self.thread.join(timeout)


def serve_in_background(model: ServedModel, config: ServerConfig = ServerConfig(port=0),
                        startup_timeout: float = 30.0) -> BackgroundServer:
    """Start a server on a daemon thread and wait until it accepts connections."""
    server = make_server(model, config)
    thread = threading.Thread(target=server.run, name="tbkeras-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.uvicorn_server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the server on port {server.port} did not start")
        time.sleep(0.01)
    return BackgroundServer(server, thread)
