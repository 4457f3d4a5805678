"""Labeled / unlabeled subsets of a train list, stratified per class, for semi-supervised runs.

Example (UCF101 split 1, the paper's fractions):
  python tfrecords_tools/make_splits.py --train_list=ucfTrainTestlist/trainlist01.txt \
      --output_dir=splits/ucf101 --fractions=1,5,10,20,50 --seed=0

Writes, for each percentage P in --fractions (and/or K = --per_class):
  {output_dir}/labeled_{P}pct_seed{S}.txt     (or labeled_{K}perclass_seed{S}.txt)
  {output_dir}/unlabeled_{P}pct_seed{S}.txt   (the rest of the train list)
With --val_fraction=F, first holds out a validation list (whole UCF101/HMDB51 groups when the ids
carry them, else stratified videos) that no subset contains; pass it to run.py as --val_list and
choose settings and checkpoints on it, never on the test split:
  {output_dir}/val_seed{S}.txt
Lines are copied verbatim from the train list (a Kinetics CSV keeps its header), so every file is in
the train list's own format and `tbkeras.data.splits.read_video_ids` reads them. Each class keeps
round(P% of its videos), at least one; for one seed, smaller fractions are subsets of larger ones.
The class of a line is its folder ("Class/v.avi 1"), else its second token ("v.avi Class"), or the
label column of a Kinetics CSV.
"""
import os
import sys

from absl import app, flags

from tbkeras.data import splits
from tbkeras.files import atomic_write_text

FLAGS = flags.FLAGS
flags.DEFINE_string("train_list", None, "The train list file to take subsets of.")
flags.DEFINE_string("output_dir", None, "Where to write the labeled / unlabeled lists.")
flags.DEFINE_list("fractions", ["1", "5", "10", "20", "50"], "Labeled percentages of each class.")
flags.DEFINE_integer("per_class", 0, "Also write a subset with this many labeled videos per class (0: none).")
flags.DEFINE_integer("seed", 0, "Random seed of the selection.")
flags.DEFINE_float("val_fraction", 0.0, "Hold out this fraction of the train list (its groups, if any) "
                   "for validation before drawing the subsets (0 = none).")
flags.mark_flags_as_required(["train_list", "output_dir"])


def _percent_name(percent: float) -> str:
    return f"{percent:g}pct"


def main(argv):
    del argv
    try:
        header, lines = splits.read_list_lines(FLAGS.train_list)
        if not lines:
            raise ValueError(f"{FLAGS.train_list} lists no videos")
        requests = []
        for text in FLAGS.fractions:
            percent = float(text)
            if not 0 < percent <= 100:
                raise ValueError(f"--fractions: {text} is not a percentage in (0, 100]")
            requests.append((_percent_name(percent), {"fraction": percent / 100}))
        if FLAGS.per_class:
            requests.append((f"{FLAGS.per_class}perclass", {"per_class": FLAGS.per_class}))
        if FLAGS.val_fraction:
            try:
                lines, val = splits.validation_split(lines, fraction=FLAGS.val_fraction, seed=FLAGS.seed)
            except ValueError as e:
                raise ValueError(f"--val_fraction={FLAGS.val_fraction}: {e}") from None
            atomic_write_text(os.path.join(FLAGS.output_dir, f"val_seed{FLAGS.seed}.txt"),
                              splits.format_list_file(header, val))
            print(f"validation: {len(val)} videos held out of {len(val) + len(lines)}")
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"make_splits: error: {e}")
    num_classes = len({line.class_key for line in lines})
    for name, amount in requests:
        labeled, unlabeled = splits.stratified_subset(lines, seed=FLAGS.seed, **amount)
        for kind, subset in (("labeled", labeled), ("unlabeled", unlabeled)):
            path = os.path.join(FLAGS.output_dir, f"{kind}_{name}_seed{FLAGS.seed}.txt")
            atomic_write_text(path, splits.format_list_file(header, subset))
        print(f"{name}: {len(labeled)} labeled / {len(unlabeled)} unlabeled of {len(lines)} videos, {num_classes} classes")


if __name__ == "__main__":
    app.run(main)
