"""Generate the synthetic action-video dataset (UCF101 layout) for the demo and the tests.

Example (the demo's 1,000-video set):
  python tfrecords_tools/make_synthetic.py --output_dir=/tmp/synthetic \
      --num_classes=10 --videos_per_class=100 --num_frames=64 --height=128 --width=128 --workers=2
then convert it with
  python tfrecords_tools/build_tfrecords.py --layout=ucf101 --videos_dir=/tmp/synthetic/videos \
      --split_dir=/tmp/synthetic/splits ...
A rerun with the same flags resumes: videos already written are skipped.
"""
import json

from absl import app, flags

from tbkeras.data import synthetic

_DEFAULTS = synthetic.SyntheticConfig()

_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where videos/ and splits/ are written.",
                                  required=True)
_NUM_CLASSES = flags.DEFINE_integer(
    "num_classes", _DEFAULTS.num_classes,
    f"First N classes of the fixed mixed ordering (at most {len(synthetic.ACTIONS)}).")
_VIDEOS_PER_CLASS = flags.DEFINE_integer("videos_per_class", _DEFAULTS.videos_per_class,
                                         "Videos per class (numbered g01_c01, g01_c02, ...).")
_CLIPS_PER_GROUP = flags.DEFINE_integer("clips_per_group", _DEFAULTS.clips_per_group,
                                        "Clips per group; a group shares shape, colour, background.")
_TEST_FRACTION = flags.DEFINE_float("test_fraction", _DEFAULTS.test_fraction,
                                    "Fraction of groups (the first ones) held out as the test split.")
_NUM_FRAMES = flags.DEFINE_integer("num_frames", _DEFAULTS.num_frames, "Frames per video.")
_HEIGHT = flags.DEFINE_integer("height", _DEFAULTS.height, "Frame height in pixels.")
_WIDTH = flags.DEFINE_integer("width", _DEFAULTS.width, "Frame width in pixels.")
_FPS = flags.DEFINE_float("fps", _DEFAULTS.fps, "Frame rate written to the files.")
_SEED = flags.DEFINE_integer("seed", _DEFAULTS.seed, "Dataset seed: same seed, same videos.")
_NOISE = flags.DEFINE_float("noise_std_max", _DEFAULTS.noise_std_max,
                            "Max per-clip std of the per-pixel noise (0..255 units); 0 disables it.")
_CLASS_SHAPE = flags.DEFINE_float("class_shape_probability", _DEFAULTS.class_shape_probability,
                                  "Chance that a video's object takes its class family's typical shape.")
_CODEC = flags.DEFINE_string("codec", _DEFAULTS.codec,
                             "FourCC: MJPG or XVID for .avi, mp4v for .mp4 (no H.264 in pip OpenCV).")
_EXTENSION = flags.DEFINE_string("extension", _DEFAULTS.extension, "Container: .avi or .mp4.")
_WORKERS = flags.DEFINE_integer("workers", 2, "Processes rendering and encoding videos.")


def main(argv):
    del argv
    try:
        config = synthetic.SyntheticConfig(
            num_classes=_NUM_CLASSES.value, videos_per_class=_VIDEOS_PER_CLASS.value,
            clips_per_group=_CLIPS_PER_GROUP.value, test_fraction=_TEST_FRACTION.value,
            num_frames=_NUM_FRAMES.value, height=_HEIGHT.value, width=_WIDTH.value, fps=_FPS.value,
            seed=_SEED.value, noise_std_max=_NOISE.value, class_shape_probability=_CLASS_SHAPE.value,
            codec=_CODEC.value,
            extension=_EXTENSION.value if _EXTENSION.value.startswith(".") else f".{_EXTENSION.value}",
        )
    except ValueError as e:  # name the flag, not the dataclass field
        raise app.UsageError(str(e).replace("SyntheticConfig.", "--")) from e
    summary = synthetic.generate_dataset(config, _OUTPUT_DIR.value, workers=_WORKERS.value,
                                         progress=True)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    app.run(main)
