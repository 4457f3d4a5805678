"""Serve an exported tbkeras SavedModel over TF Serving's REST API (uvicorn + starlette).

    python experiments/serve.py --export_dir=runs/demo/export/student --model_name=student --port=8501
    curl -d '{"instances": [...]}' localhost:8501/v1/models/student:predict
    python experiments/serve.py ... --grpc_port=8500   # TF Serving's gRPC Predict too

Flags follow TF Serving's where it has one (--port, --model_name, --enable_batching,
--max_batch_size, --batch_timeout_micros, --num_batch_threads). SIGTERM or SIGINT stops accepting,
finishes the requests in flight (at most --graceful_timeout s) and exits 0. TF Serving itself serves
the same directory unchanged (`--model_base_path` pointing at its parent, with the export in a
numbered version folder); see the README.
"""
import logging as std_logging

from absl import app, flags, logging

from tbkeras.serving import server as serving

_DEFAULTS = serving.ServerConfig()

_EXPORT_DIR = flags.DEFINE_string("export_dir", None, "SavedModel directory written by --stage=export.", required=True)
_MODEL_NAME = flags.DEFINE_string("model_name", "student", "Name in the URL: /v1/models/<name>:predict.")
_MODEL_VERSION = flags.DEFINE_integer("model_version", 1, "Version reported and accepted in /versions/<v>.")
_HOST = flags.DEFINE_string("host", _DEFAULTS.host, "Address to listen on (0.0.0.0 for every interface).")
_PORT = flags.DEFINE_integer("port", _DEFAULTS.port, "Port to listen on (TF Serving's REST default is 8501; 0 = any free).")
_WORKERS = flags.DEFINE_integer("workers", _DEFAULTS.workers, "Threads that parse requests and run the model.", lower_bound=1)
_QUEUE_SIZE = flags.DEFINE_integer(
    "queue_size", _DEFAULTS.queue_size, "Predict requests admitted beyond --workers; past that a 503 at once.", lower_bound=0)
_MAX_CONNECTIONS = flags.DEFINE_integer(
    "max_connections", _DEFAULTS.max_connections, "Open connections; past that a new one gets a 503.", lower_bound=1)
_MAX_BODY_BYTES = flags.DEFINE_integer(
    "max_body_bytes", _DEFAULTS.max_body_bytes,
    "Request body limit, judged from Content-Length before reading (413). The default fits a whole "
    "video of JPEG frames or a few float32 clips at 224 px.", lower_bound=1)
_HEADER_TIMEOUT = flags.DEFINE_float("header_timeout", _DEFAULTS.header_timeout,
                                     "Seconds a client has to send its request headers (408).")
_BODY_TIMEOUT = flags.DEFINE_float("body_timeout", _DEFAULTS.body_timeout,
                                   "Seconds a client has to send its body once its headers arrived (408).")
_KEEP_ALIVE_TIMEOUT = flags.DEFINE_float("keep_alive_timeout", _DEFAULTS.keep_alive_timeout,
                                         "Seconds an idle keep-alive connection stays open.")
_GRACEFUL_TIMEOUT = flags.DEFINE_float("graceful_timeout", _DEFAULTS.graceful_timeout,
                                       "On SIGTERM/SIGINT, seconds to wait for requests in flight.")
_ENABLE_BATCHING = flags.DEFINE_bool("enable_batching", False, "Batch concurrent requests into one model call.")
_MAX_BATCH_SIZE = flags.DEFINE_integer("max_batch_size", _DEFAULTS.max_batch_size,
                                       "Rows (instances) per batched call.", lower_bound=1)
_BATCH_TIMEOUT_MICROS = flags.DEFINE_integer(
    "batch_timeout_micros", _DEFAULTS.batch_timeout_micros,
    "How long a batch waits for more requests after its first, in microseconds.", lower_bound=0)
_NUM_BATCH_THREADS = flags.DEFINE_integer("num_batch_threads", _DEFAULTS.num_batch_threads,
                                          "Batches run concurrently.", lower_bound=1)
_ACCESS_LOG = flags.DEFINE_bool("access_log", False, "Log one line per request: client, method, path, status, latency.")
_GRPC_PORT = flags.DEFINE_integer(
    "grpc_port", None, "Also answer TF Serving's gRPC PredictionService.Predict on this port (TF Serving's default "
    "is 8500; 0 = any free). Needs `pip install --no-deps -r requirements-grpc.txt`. Unset: REST only.",
    lower_bound=0, upper_bound=65535)


def main(argv):
    del argv
    config = serving.ServerConfig(
        host=_HOST.value, port=_PORT.value, workers=_WORKERS.value, queue_size=_QUEUE_SIZE.value,
        max_connections=_MAX_CONNECTIONS.value, max_body_bytes=_MAX_BODY_BYTES.value,
        header_timeout=_HEADER_TIMEOUT.value, body_timeout=_BODY_TIMEOUT.value,
        keep_alive_timeout=_KEEP_ALIVE_TIMEOUT.value, graceful_timeout=_GRACEFUL_TIMEOUT.value,
        enable_batching=_ENABLE_BATCHING.value, max_batch_size=_MAX_BATCH_SIZE.value,
        batch_timeout_micros=_BATCH_TIMEOUT_MICROS.value, num_batch_threads=_NUM_BATCH_THREADS.value,
        access_log=_ACCESS_LOG.value, grpc_port=_GRPC_PORT.value)
    if config.access_log:
        std_logging.getLogger("tbkeras.serving.access").setLevel(std_logging.INFO)
    try:
        model = serving.ServedModel.load(_EXPORT_DIR.value, name=_MODEL_NAME.value, version=_MODEL_VERSION.value)
    except FileNotFoundError as e:
        raise app.UsageError(f"--export_dir: {e}") from None
    if config.grpc_port is not None:
        from tbkeras.serving import grpc_service

        if not grpc_service.available():
            raise app.UsageError(f"--grpc_port: {grpc_service.INSTALL_HINT}")

    def ready(server: serving.Server) -> None:
        logging.info("serving %s at http://%s:%d/v1/models/%s:predict (signatures %s)%s%s", _EXPORT_DIR.value,
                     config.host, server.port, model.name, ", ".join(sorted(model.signatures)),
                     ", batching" if config.enable_batching else "",
                     f", gRPC on {config.host}:{server.grpc_port}" if server.grpc_port is not None else "")

    serving.serve(model, config, on_ready=ready)
    logging.info("stopped: requests in flight finished")


if __name__ == "__main__":
    app.run(main)
