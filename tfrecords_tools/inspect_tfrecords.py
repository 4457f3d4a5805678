"""Check built shards against their manifest and say what they hold.

Example (after build_tfrecords.py):
  python tfrecords_tools/inspect_tfrecords.py --tfrecord_dir=tfrecords/ucf101 --splits=train,test \
      --sheets_dir=/tmp/sheets --num_sheets=4

Reads every record of each split, checks ids, labels and frame counts against the manifest and the
record's own context, decodes each video's first and last frame (`--nodecode` skips that), and
prints a summary per split (`--json` prints it as JSON). With `--sheets_dir`, writes one JPEG
contact sheet (8 evenly spaced frames side by side) for each of the first `--num_sheets` videos.
Exits with status 1 if any problem was found, each one naming its shard, record and video.
"""
import json
import os
import sys

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("tfrecord_dir", None, "Directory of the shards and their manifests.")
flags.DEFINE_list("splits", ["train"], "Splits to inspect (their {split}-manifest.json must exist).")
flags.DEFINE_bool("decode", True, "JPEG-decode each video's first and last frame.")
flags.DEFINE_bool("json", False, "Print the reports as JSON instead of text.")
flags.DEFINE_string("sheets_dir", "", "Write contact sheets of the first videos of each split here.")
flags.DEFINE_integer("num_sheets", 4, "Contact sheets per split (with --sheets_dir).")
flags.mark_flags_as_required(["tfrecord_dir"])


def _describe(report) -> str:
    frames_min, frames_mean, frames_max = report.frames_per_video
    counts = sorted(report.videos_per_class.items(), key=lambda kv: kv[1])
    lines = [
        f"split {report.split} of {report.tfrecord_dir}: {report.num_videos} videos in {report.num_shards} "
        f"shards ({report.total_bytes / 2**20:.1f} MiB), {len(report.classes)} classes; "
        f"{report.recorded_failures} videos failed conversion (listed in the manifest)",
        f"  frames per video: min {frames_min}, mean {frames_mean}, max {frames_max}; "
        f"mean JPEG {report.mean_jpeg_bytes / 1024:.1f} KiB per frame",
        "  frame sizes (HxW: videos): " + ", ".join(f"{k}: {v}" for k, v in report.frame_sizes.items()),
    ]
    if counts:
        lines.append(f"  videos per class: min {counts[0][1]} ({counts[0][0]}), max {counts[-1][1]} ({counts[-1][0]}), "
                     f"{len(counts)} classes present")
    missing = [c for c in report.classes if c not in report.videos_per_class]
    if missing:
        lines.append(f"  classes with no video: {', '.join(missing[:10])}" + (" ..." if len(missing) > 10 else ""))
    lines.append(f"  problems: {len(report.problems)}" if report.problems else "  problems: none")
    lines.extend(f"    {p}" for p in report.problems)
    return "\n".join(lines)


def _write_sheets(split: str) -> list[str]:
    import tensorflow as tf

    from tbkeras.data import inspect, manifest, tfrecord
    from tbkeras.files import atomic_path

    written = []
    for path in manifest.shard_paths(FLAGS.tfrecord_dir, split):
        for serialized in tf.data.TFRecordDataset(path):
            if len(written) == FLAGS.num_sheets:
                return written
            video = tfrecord.parse_video(serialized)
            video_id = video[tfrecord.VIDEO_ID_KEY].numpy().decode("utf-8", "replace")
            sheet = inspect.contact_sheet(list(video[tfrecord.IMAGE_KEY].numpy()))
            out = os.path.join(FLAGS.sheets_dir, f"{split}-{video_id.replace(os.sep, '_')}.jpg")
            with atomic_path(out) as tmp:
                tf.io.write_file(tmp, tf.io.encode_jpeg(sheet, quality=90))
            written.append(out)
    return written


def main(argv):
    del argv
    from tbkeras.data import inspect

    reports = []
    for split in FLAGS.splits:
        try:
            reports.append(inspect.inspect_split(FLAGS.tfrecord_dir, split, decode=FLAGS.decode))
        except (FileNotFoundError, ValueError) as e:
            sys.exit(f"inspect_tfrecords: error: --splits={split}: {e}")
    if FLAGS.json:
        print(json.dumps([r.to_json() for r in reports], indent=1))
    else:
        print("\n".join(_describe(r) for r in reports))
    if FLAGS.sheets_dir:
        for report in reports:
            for path in _write_sheets(report.split):
                print(f"wrote {path}", file=sys.stderr)
    if any(r.problems for r in reports):
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
