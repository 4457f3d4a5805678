"""Convert a video dataset split into sharded TFRecords + `{split}-manifest.json`.

Example (UCF101 split 1, 128-pixel short side, 2 decoding processes):
  python tfrecords_tools/build_tfrecords.py --videos_dir=UCF-101 --split_dir=ucfTrainTestlist \
      --layout=ucf101 --split=train --split_index=1 --output_dir=tfrecords/ucf101 \
      --num_shards=64 --workers=2

Layouts (see tbkeras/data/splits.py): folders | ucf101 | hmdb51 | kinetics400. The videos are
dealt to the shards in a pseudo-random order seeded by --shuffle_seed (recorded in the manifest),
so every shard holds a mix of classes. Rerunning the same command resumes: finished shards are
kept, the rest are redone. Broken videos are listed in the
manifest with their reason; a missing split file, an unknown class or an empty tree exits with
status 1 and a message naming the path.
"""
import sys

from absl import app, flags, logging

# TensorFlow is imported inside main(), through the converter: the spawned decoding workers
# re-import this script, and this way they start without paying TensorFlow's import.
from tbkeras.data import splits

FLAGS = flags.FLAGS
flags.DEFINE_string("videos_dir", None, "Root directory of the video files.")
flags.DEFINE_string("output_dir", None, "Directory for the shards and the manifest.")
flags.DEFINE_enum("layout", "folders", list(splits.LAYOUTS), "How videos and splits are laid out.")
flags.DEFINE_string("split_dir", "", "Directory of the split files (classInd.txt, *_test_split1.txt, *.csv).")
flags.DEFINE_string("split", "train", "Split to convert (train / test / val); also the shard name prefix.")
flags.DEFINE_integer("split_index", 1, "Which official split (UCF101 / HMDB51: 1, 2 or 3).")
flags.DEFINE_integer("short_side", 128, "Resize so the short side has this many pixels (0 keeps the size).")
flags.DEFINE_float("fps", 0.0, "Resample to this frame rate (0 keeps the source rate).")
flags.DEFINE_integer("jpeg_quality", 90, "JPEG quality of the stored frames, 1..100.")
flags.DEFINE_integer("num_shards", 8, "Number of shards.")
flags.DEFINE_integer("workers", 2, "Decoding processes (1 decodes in the main process).")
flags.DEFINE_integer("max_frames", 0, "Keep at most this many frames per video (0 keeps all).")
flags.DEFINE_float("min_decoded_fraction", 0.5, "Fail a video that decodes fewer than this fraction of its frames.")
flags.DEFINE_integer("shuffle_seed", 0, "Seed of the pseudo-random order the videos are dealt to the shards in "
                     "(split lists are sorted by class); a resumed run must use the same seed to keep its shards.")
flags.DEFINE_bool("progress", True, "Show a progress bar.")
flags.mark_flags_as_required(["videos_dir", "output_dir"])

_FLAG_NAMES = (
    "videos_dir", "output_dir", "layout", "split_dir", "split", "split_index", "short_side", "fps",
    "jpeg_quality", "num_shards", "workers", "max_frames", "min_decoded_fraction", "shuffle_seed",
)


def main(argv):
    del argv
    try:
        entries, classes = splits.parse_layout(
            FLAGS.layout, FLAGS.videos_dir, FLAGS.split_dir, FLAGS.split, FLAGS.split_index
        )
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"build_tfrecords: error: {e}")
    logging.info("%s/%s: %d videos, %d classes", FLAGS.layout, FLAGS.split, len(entries), len(classes))
    if FLAGS.num_shards > len(entries):
        logging.warning("only %d videos: writing %d shards instead of %d", len(entries), len(entries), FLAGS.num_shards)

    from tbkeras.data import converter  # imports TensorFlow (see the note at the imports)

    config = converter.ConversionConfig(
        output_dir=FLAGS.output_dir, split=FLAGS.split, num_shards=min(FLAGS.num_shards, len(entries)),
        workers=FLAGS.workers, short_side=FLAGS.short_side, fps=FLAGS.fps, jpeg_quality=FLAGS.jpeg_quality,
        max_frames=FLAGS.max_frames, min_decoded_fraction=FLAGS.min_decoded_fraction,
        shuffle_seed=FLAGS.shuffle_seed, show_progress=FLAGS.progress,
    )
    try:
        summary = converter.convert(entries, classes, config, flags={name: FLAGS[name].value for name in _FLAG_NAMES})
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"build_tfrecords: error: {e}")
    print(summary)
    if summary.num_failed:
        print(f"{summary.num_failed} video(s) failed; reasons in {summary.manifest_path} ('failures')")


if __name__ == "__main__":
    app.run(main)
