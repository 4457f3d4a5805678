"""A small HTTP server speaking TF Serving's REST predict API for a tbkeras SavedModel.

TF Serving is the production answer; this server is for a laptop, a test or a container without
it, and clients written for one work with the other. Supported, as in TF Serving:
- `GET  /v1/models/{name}`: version status.
- `GET  /v1/models/{name}/metadata`: signatures with input and output specs.
- `POST /v1/models/{name}[/versions/{v}]:predict` with `{"signature_name"?, "instances": [...]}`
  (row format, answered with `{"predictions": [...]}`) or `{"inputs": ...}` (columnar, answered with
  `{"outputs": ...}`). Binary strings (JPEG frames) are sent as `{"b64": "..."}`.
Errors answer `{"error": "..."}` with status 400 (bad request) or 404 (unknown model or path).
"""
from __future__ import annotations

import base64
import dataclasses
import http.server
import json
import re
import threading
from typing import Any

import numpy as np
import tensorflow as tf

_PREDICT = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?:predict$")
_STATUS = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?(?P<meta>/metadata)?$")
MAX_BODY_BYTES = 256 * 1024 * 1024


class BadRequest(ValueError):
    """A request the client must fix; answered with status 400."""


def _decode_b64(value: Any) -> Any:
    """Replace TF Serving's `{"b64": ...}` objects by bytes, recursively."""
    if isinstance(value, dict) and set(value) == {"b64"}:
        return base64.b64decode(value["b64"])
    if isinstance(value, list):
        return [_decode_b64(v) for v in value]
    return value


def _to_json(value: np.ndarray) -> Any:
    if value.dtype == object:
        return [_to_json(v) if isinstance(v, np.ndarray) else v.decode("utf-8", "replace") for v in value]
    return value.tolist()


@dataclasses.dataclass
class ServedModel:
    """A loaded SavedModel and what the REST API needs to know about it."""

    name: str
    version: int
    saved_model: Any

    @classmethod
    def load(cls, export_dir: str, name: str, version: int = 1) -> "ServedModel":
        return cls(name=name, version=version, saved_model=tf.saved_model.load(export_dir))

    def signature(self, signature_name: str):
        try:
            return self.saved_model.signatures[signature_name]
        except KeyError:
            raise BadRequest(
                f"unknown signature_name {signature_name!r}; this model has "
                f"{sorted(self.saved_model.signatures.keys())}"
            ) from None

    def _tensor(self, spec: tf.TensorSpec, value: Any, field: str) -> tf.Tensor:
        try:
            return tf.constant(value, dtype=spec.dtype)
        except (ValueError, TypeError) as e:
            raise BadRequest(f"input {field!r} does not convert to {spec.dtype.name}: {e}") from None

    def predict(self, body: dict[str, Any]) -> dict[str, Any]:
        fn = self.signature(body.get("signature_name", "serving_default"))
        specs = fn.structured_input_signature[1]
        if ("instances" in body) == ("inputs" in body):
            raise BadRequest('the request body needs exactly one of "instances" (row) or "inputs" (columnar)')
        row_format = "instances" in body
        data = _decode_b64(body["instances"] if row_format else body["inputs"])
        if row_format:
            if not isinstance(data, list) or not data:
                raise BadRequest('"instances" must be a non-empty list')
            if len(specs) == 1 and not isinstance(data[0], dict):
                columns = {next(iter(specs)): data}
            else:
                columns = {k: [row.get(k) for row in data] for k in specs}
        else:
            columns = data if isinstance(data, dict) else {next(iter(specs)): data}
        missing = sorted(set(specs) - set(columns))
        if missing:
            raise BadRequest(f"missing input(s) {missing}; the signature takes {sorted(specs)}")
        tensors = {k: self._tensor(spec, columns[k], k) for k, spec in specs.items()}
        for k, spec in specs.items():
            if not spec.shape.is_compatible_with(tensors[k].shape):
                raise BadRequest(f"input {k!r} has shape {tensors[k].shape}, the signature wants {spec.shape}")
        try:
            outputs = {k: v.numpy() for k, v in fn(**tensors).items()}
        except tf.errors.InvalidArgumentError as e:
            raise BadRequest(f"the model rejected the input: {e.message}") from None
        if not row_format:
            return {"outputs": {k: _to_json(v) for k, v in outputs.items()}}
        batch = len(next(iter(outputs.values())))
        return {"predictions": [{k: _to_json(v[i : i + 1])[0] for k, v in outputs.items()} for i in range(batch)]}

    def metadata(self) -> dict[str, Any]:
        def spec_json(spec: tf.TensorSpec) -> dict[str, Any]:
            return {"dtype": spec.dtype.name, "shape": [d if d is not None else -1 for d in spec.shape.as_list()]}

        signatures = {}
        for sig_name, fn in self.saved_model.signatures.items():
            signatures[sig_name] = {
                "inputs": {k: spec_json(s) for k, s in fn.structured_input_signature[1].items()},
                "outputs": {k: spec_json(s) for k, s in fn.structured_outputs.items()},
            }
        return {"model_spec": {"name": self.name, "version": str(self.version)}, "metadata": {"signature_def": signatures}}

    def status(self) -> dict[str, Any]:
        return {"model_version_status": [
            {"version": str(self.version), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]}


def _handler_for(model: ServedModel) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet by default
            pass

        def _reply(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _check_model(self, name: str, version: str | None) -> bool:
            if name != model.name or (version is not None and int(version) != model.version):
                self._reply(404, {"error": f"Servable not found for request: {name} version {version or 'latest'}"})
                return False
            return True

        def do_GET(self) -> None:
            match = _STATUS.match(self.path)
            if not match:
                self._reply(404, {"error": f"unknown path {self.path}"})
            elif self._check_model(match["name"], match["version"]):
                self._reply(200, model.metadata() if match["meta"] else model.status())

        def do_POST(self) -> None:
            match = _PREDICT.match(self.path)
            if not match:
                self._reply(404, {"error": f"unknown path {self.path}; POST /v1/models/{model.name}:predict"})
                return
            if not self._check_model(match["name"], match["version"]):
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                self._reply(400, {"error": f"request body of {length} bytes exceeds {MAX_BODY_BYTES}"})
                return
            try:
                body = json.loads(self.rfile.read(length) or b"null")
                if not isinstance(body, dict):
                    raise BadRequest("the request body must be a JSON object")
                self._reply(200, model.predict(body))
            except json.JSONDecodeError as e:
                self._reply(400, {"error": f"the request body is not valid JSON: {e}"})
            except BadRequest as e:
                self._reply(400, {"error": str(e)})

    return Handler


def make_server(model: ServedModel, host: str = "127.0.0.1", port: int = 8501) -> http.server.ThreadingHTTPServer:
    """An HTTP server for `model`; call `serve_forever()` (port 0 picks a free port)."""
    return http.server.ThreadingHTTPServer((host, port), _handler_for(model))


def serve_in_background(model: ServedModel, host: str = "127.0.0.1", port: int = 0):
    """Start a server on a daemon thread; returns it (`server.server_address`, `server.shutdown()`)."""
    server = make_server(model, host, port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
