"""Classify video files with an exported student: the top-k classes and their probabilities.

    python experiments/predict.py --export_dir=runs/demo/export/student --video=clip.mp4 [--video=DIR ...]
    python experiments/predict.py --export_dir=... --video=clips/ --top_k=3 --json

Each video is decoded by the converter's own decoder with the conversion settings the export
recorded, and scored over the evaluation's K x C views with their softmax averaged (the export's
`serve_video` signature), so the answer is the one `--stage=evaluate` gives the same video.
A folder stands for the video files under it. A video that cannot be read is reported with its
path (on stderr, and in the JSON) and the others are still processed; the exit status is 1 if any
video failed, or if --export_dir is not an export.
"""
import json
import sys

from absl import app, flags

from tbkeras.data.video_io import VideoDecodeError
from tbkeras.serving.predictor import VideoPredictor, expand_video_paths

_EXPORT_DIR = flags.DEFINE_string("export_dir", None, "SavedModel directory written by --stage=export.", required=True)
_VIDEO = flags.DEFINE_multi_string("video", None, "A video file or a folder of them; repeat for more.", required=True)
_TOP_K = flags.DEFINE_integer("top_k", 5, "How many classes to print per video.", lower_bound=1)
_JSON = flags.DEFINE_bool("json", False, "Print one JSON document (all probabilities included) instead of text.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}: give videos with --video")
    try:
        predictor = VideoPredictor(_EXPORT_DIR.value)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: --export_dir: {e}", file=sys.stderr)
        return 1
    results, failed = [], 0
    try:
        paths = expand_video_paths(_VIDEO.value)
    except FileNotFoundError as e:
        print(f"error: --video: {e}", file=sys.stderr)
        return 1
    for path in paths:
        try:
            prediction = predictor.predict(path)
        except (VideoDecodeError, ValueError) as e:
            failed += 1
            print(f"error: {e}", file=sys.stderr)
            results.append({"path": path, "error": str(e)})
            continue
        top = prediction.top_k(predictor.class_names, _TOP_K.value)
        results.append({"path": path, "num_frames": prediction.num_frames,
                        "top_k": [{"class": name, "probability": p} for name, p in top],
                        "probabilities": prediction.probabilities.tolist()})
        if not _JSON.value:
            print(f"{path} ({prediction.num_frames} frames)")
            for name, p in top:
                print(f"  {p:.4f}  {name}")
    if _JSON.value:
        print(json.dumps({"export_dir": _EXPORT_DIR.value, "class_names": predictor.class_names,
                          "videos": results, "failed": failed}, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    app.run(main)
