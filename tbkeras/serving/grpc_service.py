"""TF Serving's gRPC `PredictionService.Predict` for a tbkeras SavedModel, beside the REST server.

Clients written for TF Serving's gRPC API (`prediction_service_pb2_grpc.PredictionServiceStub`)
work unchanged. Tensors travel as binary `TensorProto`s, so a float32 clip costs its 4 bytes per
value instead of REST's ~12 characters of JSON, and no text is parsed.

The protos are those of the `tensorflow-serving-api` package. Its wheel requires the `tensorflow`
distribution, which would install a second TensorFlow over our `tensorflow-cpu`; its Python code
needs only TensorFlow's own protos, which `tensorflow-cpu` provides, so it is installed without
its dependencies: `pip install --no-deps -r requirements-grpc.txt`.

Requests share the REST server's model, input checks and (with batching) its `Batcher`; the
admission bound is the REST server's number, counted for gRPC calls on their own. Answers:
NOT_FOUND for another model or version, INVALID_ARGUMENT for an unknown signature or output, a
missing or unknown input, a wrong dtype or shape, or input the graph rejects; RESOURCE_EXHAUSTED
past `workers + queue_size` concurrent calls or for a message over `max_body_bytes` (gRPC's own
limit, checked before the handler runs).
"""
from __future__ import annotations

import concurrent.futures
from typing import Any

import numpy as np
import tensorflow as tf

from tbkeras.serving.server import Batcher, RequestError, ServedModel, ServerConfig

INSTALL_HINT = ("gRPC serving needs the protos of tensorflow-serving-api: "
                "pip install --no-deps -r requirements-grpc.txt (its `tensorflow` requirement is met by tensorflow-cpu)")

_GRPC_CODES = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 413: "RESOURCE_EXHAUSTED", 503: "RESOURCE_EXHAUSTED"}


def available() -> bool:
    """Whether grpcio and the tensorflow-serving-api protos import."""
    try:
        _apis()
    except ImportError:
        return False
    return True


def _apis():
    try:
        import grpc
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
    except ImportError as e:
        raise ImportError(f"{INSTALL_HINT} ({e})") from None
    return grpc, predict_pb2, prediction_service_pb2_grpc


def _to_array(name: str, proto: Any, spec: tf.TensorSpec | None) -> np.ndarray:
    """A request TensorProto as numpy, of the signature's dtype exactly (as TF Serving demands;
    `spec` None: an input the signature does not have, which `ServedModel.checked` reports)."""
    try:
        array = tf.make_ndarray(proto)
    except (TypeError, ValueError) as e:
        raise RequestError(400, f"input {name!r} is not a valid TensorProto: {e}") from None
    got = tf.dtypes.as_dtype(proto.dtype) if proto.dtype else None
    if spec is not None and got != spec.dtype:
        raise RequestError(400, f"input {name!r} is {got.name if got else 'DT_INVALID'}; the signature wants "
                                f"{spec.dtype.name}")
    return array


def predict_handler(model: ServedModel, batcher: Batcher | None = None):
    """The `PredictionServiceServicer` answering Predict for `model` (the other methods: UNIMPLEMENTED)."""
    grpc, predict_pb2, service = _apis()

    class PredictionService(service.PredictionServiceServicer):
        def Predict(self, request, context):  # noqa: N802 - the proto's method name
            try:
                spec = request.model_spec
                model.check_servable(spec.name, spec.version.value if spec.HasField("version") else None)
                signature_name = spec.signature_name or "serving_default"
                specs = model.specs(signature_name)
                inputs = {k: _to_array(k, request.inputs[k], specs.get(k)) for k in request.inputs}
                prepared = model.checked(signature_name, inputs, row_format=False)
                wanted = list(request.output_filter)
                outputs_spec = model.signatures[signature_name].structured_outputs
                unknown = sorted(set(wanted) - set(outputs_spec))
                if unknown:
                    raise RequestError(400, f"output_filter names {unknown}, which the signature {signature_name!r} "
                                            f"does not have (it has {sorted(outputs_spec)})")
                outputs = batcher.submit(prepared).result() if batcher is not None else model.run(prepared)
            except RequestError as e:
                context.abort(getattr(grpc.StatusCode, _GRPC_CODES.get(e.status, "INTERNAL")), e.message)
            response = predict_pb2.PredictResponse()
            response.model_spec.name = model.name
            response.model_spec.version.value = model.version
            response.model_spec.signature_name = signature_name
            for k in wanted or outputs:
                response.outputs[k].CopyFrom(tf.make_tensor_proto(outputs[k]))
            return response

    return PredictionService()


def make_grpc_server(model: ServedModel, config: ServerConfig, batcher: Batcher | None = None):
    """A started-not-yet `grpc.Server` on `config.host:config.grpc_port` (0: a free port); returns
    (server, port). Call `start()`; on shutdown `stop(config.graceful_timeout)` lets calls finish."""
    grpc, _, service = _apis()
    # A sync gRPC call holds its thread while it waits: with batching, every admitted call must have
    # one to wait in, or batches could never grow past `workers` requests (the model itself runs on
    # the batcher's threads). Without batching, `workers` threads run the model, the rest queue.
    threads = config.max_admitted if batcher is not None else config.workers
    server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="grpc-worker"),
        maximum_concurrent_rpcs=config.max_admitted,
        options=[("grpc.max_receive_message_length", config.max_body_bytes),
                 ("grpc.max_send_message_length", config.max_body_bytes),
                 ("grpc.so_reuseport", 0)])
    service.add_PredictionServiceServicer_to_server(predict_handler(model, batcher), server)
    host = f"[{config.host}]" if ":" in config.host else config.host
    try:
        port = server.add_insecure_port(f"{host}:{config.grpc_port}")
    except RuntimeError as e:
        raise OSError(f"cannot listen for gRPC on {host}:{config.grpc_port}: {e}") from None
    if port == 0:
        raise OSError(f"cannot listen for gRPC on {host}:{config.grpc_port}")
    return server, port
