"""Frozen-feature probes of the self-supervised checkpoints of one recipe run (`tbkeras.probe`).

    python benchmarks/probe_features.py --flagfile=experiments/small_scale.flags \
        --model_dir=runs/bench_semisup/seed0/pct10/base --synthetic_dir=runs/bench_semisup/data \
        --seed=0 --labeled_fraction=0.1

Takes run.py's flags (the run's own settings: model, crops, evaluation views, labeled list) and, for
each of `--probe_stages` (a finished SSL stage, or "random" for an untrained backbone), the
backbone's pooled features averaged over the evaluation's views of every video. Reports video
top-1 (%) of:
- nearest centroid from the labeled videos, on the unlabeled training videos, validation and test;
- ridge regression on all training videos with their labels (an oracle: the semi-supervised
  setting does not have those labels), on validation and test.
For the synthetic dataset each figure is split into repetitive / order-dependent classes too.
Writes `--probe_output` (JSON) and prints a Markdown table for BENCHMARKS.md.
"""
import importlib.util
import os
import sys
import time

import numpy as np
from absl import app, flags

from tbkeras.machine import cpu_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("tbkeras_run_flags", os.path.join(REPO, "experiments", "run.py"))
run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run)

FLAGS = flags.FLAGS
flags.DEFINE_list("probe_stages", ["random", "pretrain_invariant", "pretrain_distinctive", "pretrain_ssl"],
                  "SSL stages of --model_dir to probe; 'random' = an untrained backbone.")
flags.DEFINE_string("probe_output", os.path.join(REPO, "benchmarks", "results", "probe_features.json"),
                    "Results JSON.")

PROBES = (("centroid", "unlabeled"), ("centroid", "val"), ("centroid", "test"), ("ridge_oracle", "val"),
          ("ridge_oracle", "test"))


def _class_kinds(class_names: list[str]) -> np.ndarray | None:
    """True for order-dependent classes, if every class is a synthetic one (else None)."""
    from tbkeras.stages.tstr_scoring import ORDER, synthetic_class_kinds

    try:
        return np.array([kind == ORDER for kind in synthetic_class_kinds(class_names)])
    except ValueError:
        return None


def _scores(pred: np.ndarray, labels: np.ndarray, composite: np.ndarray | None) -> dict:
    hit = pred == labels
    out = {"top1": 100 * float(hit.mean()), "videos": int(len(labels))}
    if composite is not None:
        order = composite[labels]
        out["repetitive_top1"] = 100 * float(hit[~order].mean()) if (~order).any() else None
        out["order_top1"] = 100 * float(hit[order].mean()) if order.any() else None
    return out


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    start = time.perf_counter()
    config = run.build_config()
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(FLAGS.intra_op_threads or 2)
    from tbkeras import probe, recipe
    from tbkeras.data import manifest
    from tbkeras.files import atomic_write_json

    r = recipe.Recipe(config)
    class_names = list(manifest.load_manifest(config.data.tfrecord_dir, config.data.train_split)["classes"])
    num_classes, composite = len(class_names), _class_kinds(class_names)
    parts = ("labeled", "unlabeled", recipe.VAL_SPLIT, config.data.test_split)
    datasets = r.eval_datasets(parts)
    results = {}
    for stage in FLAGS.probe_stages:
        backbone = r.pretrained_backbone(None if stage == "random" else stage)
        feats = {part: probe.video_features(backbone, ds) for part, ds in datasets.items()}
        lab_x, lab_y, _ = feats["labeled"]
        all_x = np.concatenate([feats["labeled"][0], feats["unlabeled"][0]])
        all_y = np.concatenate([feats["labeled"][1], feats["unlabeled"][1]])
        results[stage] = {}
        for method, part in PROBES:
            split = config.data.test_split if part == "test" else part
            if split not in feats:
                continue
            x, y, _ = feats[split]
            if method == "centroid":
                pred = probe.nearest_centroid(lab_x, lab_y, x, num_classes)
            else:
                pred = probe.ridge_classifier(all_x, all_y, x, num_classes)
            results[stage][f"{method}/{part}"] = _scores(pred, y, composite)
        print(stage, {k: round(v["top1"], 1) for k, v in results[stage].items()}, flush=True)
    results["setup"] = {"model_dir": config.model_dir, "cpu": cpu_model(), "seconds": round(time.perf_counter() - start, 1),
                        "command": " ".join(["python benchmarks/probe_features.py", *sys.argv[1:]]),
                        "labeled_videos": int(len(feats["labeled"][1]))}
    atomic_write_json(FLAGS.probe_output, results)
    head = "| backbone | " + " | ".join(f"{m} {p}" for m, p in PROBES) + " |"
    lines = [head, "|---|" + "---:|" * len(PROBES)]
    for stage in FLAGS.probe_stages:
        cells = []
        for method, part in PROBES:
            v = results[stage].get(f"{method}/{part}")
            cells.append("-" if v is None else f"{v['top1']:.1f}" + (
                f" ({v['repetitive_top1']:.0f} / {v['order_top1']:.0f})" if composite is not None else ""))
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    print(f"{time.perf_counter() - start:.0f} s on {cpu_model()}; wrote {FLAGS.probe_output}")


if __name__ == "__main__":
    app.run(main)
