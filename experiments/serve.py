"""Serve an exported tbkeras SavedModel over TF Serving's REST predict API.

    python experiments/serve.py --export_dir=runs/demo/export/student --model_name=student --port=8501
    curl -d '{"instances": [...]}' localhost:8501/v1/models/student:predict

TF Serving itself serves the same directory unchanged (`--model_base_path` pointing at its parent,
with the export in a numbered version folder).
"""
from absl import app, flags, logging

from tbkeras.serving import server as serving

_EXPORT_DIR = flags.DEFINE_string("export_dir", None, "SavedModel directory written by --stage=export.", required=True)
_MODEL_NAME = flags.DEFINE_string("model_name", "student", "Name in the URL: /v1/models/<name>:predict.")
_HOST = flags.DEFINE_string("host", "127.0.0.1", "Address to listen on (0.0.0.0 for every interface).")
_PORT = flags.DEFINE_integer("port", 8501, "Port to listen on (TF Serving's REST default is 8501).")


def main(argv):
    del argv
    model = serving.ServedModel.load(_EXPORT_DIR.value, name=_MODEL_NAME.value)
    server = serving.make_server(model, _HOST.value, _PORT.value)
    host, port = server.server_address[:2]
    logging.info("serving %s at http://%s:%d/v1/models/%s:predict", _EXPORT_DIR.value, host, port, _MODEL_NAME.value)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    app.run(main)
