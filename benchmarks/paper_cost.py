"""ESTIMATE of the GPU-hours of every TimeBalance stage at paper scale, on one H200.

    python benchmarks/paper_cost.py          (seconds: builds the two backbones to count FLOPs)

Why: before booking GPUs for UCF101 / HMDB51 / Kinetics-400 one wants to know what each stage costs,
and which stage dominates. Nothing here is timed: the table multiplies

  (i)   the work of each stage, from the dataset flagfiles (experiments/{ucf101,hmdb51,kinetics400}.flags
        + common.flags: epochs, steps per epoch, batch sizes, clips per video, clip lengths), and
        the dataset sizes of the paper (Sec. 4.1) for the stages that have no steps (TSTR, evaluate);
  (ii)  forward FLOPs per clip counted from our models (`tbkeras.models.flops.count_flops`), a
        training step being 3 forwards (`TRAIN_FLOPS_PER_FORWARD`);
  (iii) PyTorch throughputs measured on one H200 (bf16 autocast, channels_last; issue #13), turned
        into achieved FLOP/s, which are assumed to hold for every stage of the same kind.

Writes benchmarks/results/paper_cost.json and prints the Markdown table of BENCHMARKS.md.
"""
from __future__ import annotations

import os
import sys
from typing import Any

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = flags.FLAGS
flags.DEFINE_integer("ssl_rate_frames", 16, "Frames of the clips the measured H200 SSL rates count (see ASSUMPTIONS).")
flags.DEFINE_string("output", os.path.join(REPO, "benchmarks", "results", "paper_cost.json"), "JSON results.")

DATASETS = {  # flagfile, train videos (TSTR scores each once), test videos (evaluate); paper Sec. 4.1
    "UCF101": ("experiments/ucf101.flags", 9_537, 3_783),
    "HMDB51": ("experiments/hmdb51.flags", 3_570, 1_530),
    "Kinetics-400": ("experiments/kinetics400.flags", 240_000, 20_000),
}
BACKBONES = {"R3D-18": ("r3d18", 112), "Slow-R50": ("r3d50", 224)}  # builder, crop side (DESIGN.md sec. 2)
# One H200, PyTorch, bf16 autocast, channels_last (issue #13): clips/s of the student step (student
# forward + backward and two teacher forwards, 8-frame clips) and of the SSL step.
H200_RATES = {"R3D-18": {"clip": (8, 112), "student": 1_128.0, "ssl": 1_003.0},
              "Slow-R50": {"clip": (8, 224), "student": 268.0, "ssl": 227.0}}
STAGES = ("pretrain_invariant", "pretrain_distinctive", "pretrain_ssl", "tstr", "finetune_teachers", "student",
          "evaluate")
SSL_STAGES = STAGES[:3]
EVALUATED_MODELS = 3  # evaluate scores every finished classifier: both finetuned teachers and the student
ASSUMPTIONS = [
    "An ESTIMATE: arithmetic, nothing here was run on a GPU. GPU-hours on one H200; k GPUs take ~1/k of the "
    "time only if the per-GPU rate holds (same per-GPU batch, no input-pipeline or communication stall).",
    "Work per stage from the flagfiles (epochs x steps per epoch x clips per step; the steps per epoch are one "
    "pass over the videos). R3D-18 uses the same epochs and batches as the flagfiles' Slow-R50, at 112 px.",
    "Clips per SSL video: pretrain_invariant n = 4 local clips (one view, no global clip); pretrain_distinctive "
    "and pretrain_ssl 2 views x (4 local + 1 global) = 10 clips, all of --ssl_clip_length = 16 frames.",
    "TSTR: each training video once, 4 clips of 16 frames through both SSL teachers (backbone + projection head), "
    "forward only. Evaluate: 3 classifiers (two finetuned teachers, the student) x 10 clips x 3 crops of 8 frames "
    "per test video, forward only. finetune_teachers: two teachers, each its full schedule.",
    "Dataset sizes (paper Sec. 4.1): UCF101 split 1 9,537 train / 3,783 test; HMDB51 split 1 3,570 / 1,530; "
    "Kinetics-400 240k train / 20k val.",
    "FLOPs = 2 x multiply-accumulates of convolutions and matrix products (tbkeras/models/flops.py: BatchNorm, "
    "activations and pooling not counted); a training step = 3 forwards, the student step = 3 forwards of the "
    "student + 1 of each teacher = 5 forwards per clip.",
    "Rates: achieved FLOP/s = measured clips/s x FLOPs per clip of that step. The SSL stages run at the SSL "
    "rate's FLOP/s; every other stage (finetuning, student, and the forward-only TSTR and evaluation) at the "
    "student rate's FLOP/s, so other clip shapes and stages are scaled by FLOPs. The measured batch sizes "
    "(64 / 32 clips) are assumed not to matter.",
    "The H200 SSL rates are read as clips of the SSL stage's 16 frames (--ssl_rate_frames): then the SSL and "
    "student steps achieve the same FLOP/s within 7% on both backbones; read as 8-frame clips, SSL would "
    "achieve half the student's FLOP/s and the three SSL rows would double.",
]


def read_flagfile(path: str) -> dict[str, str]:
    """`--name=value` lines of an absl flagfile, following `--flagfile=` includes (later lines win)."""
    values: dict[str, str] = {}
    with open(os.path.join(REPO, path)) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if not line.startswith("--") or "=" not in line:
                raise ValueError(f"{path}: cannot read the line {line!r} (expected --name=value)")
            name, value = line[2:].split("=", 1)
            if name == "flagfile":
                values.update(read_flagfile(value))
            else:
                values[name] = value
    return values


def _ints(values: dict[str, str], path: str, *names: str) -> dict[str, int]:
    missing = [n for n in names if n not in values]
    if missing:
        raise ValueError(f"{path} (with its includes) does not set {', '.join('--' + n for n in missing)}")
    return {n: int(values[n]) for n in names}


def forward_flops() -> dict[str, dict[str, int]]:
    """Forward FLOPs per clip of each backbone at 8 and 16 frames, and of its heads per feature row."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    from tbkeras.models import Classifier, ProjectionHead, build_backbone
    from tbkeras.models.flops import count_flops

    counts = {}
    for name, (builder, side) in BACKBONES.items():
        backbone = build_backbone(builder)
        features = keras.Input((backbone.feature_dim,))
        counts[name] = {f"{t}x{side}": count_flops(backbone, (t, side, side, 3))["flops"] for t in (8, 16)}
        counts[name]["projection_head"] = count_flops(keras.Model(features, ProjectionHead()(features)),
                                                      (backbone.feature_dim,))["flops"]
        for classes in (51, 101, 400):
            counts[name][f"classifier_{classes}"] = count_flops(
                keras.Model(features, Classifier(classes)(features)), (backbone.feature_dim,))["flops"]
        keras.backend.clear_session()
    return counts


def stage_work(flags_: dict[str, int], train_videos: int, test_videos: int, fwd: dict[str, int], side: int,
               num_classes: int) -> dict[str, dict[str, float]]:
    """{stage: {"flops": total FLOPs, "kind": "ssl" | "supervised", "clips": clips through a backbone}}."""
    from tbkeras.models.flops import TRAIN_FLOPS_PER_FORWARD as TRAIN

    def clip(frames: int, head: str) -> int:
        return fwd[f"{frames}x{side}"] + fwd[head]

    f = flags_
    n, ssl_len = f["ssl_num_clips"], f["ssl_clip_length"]
    global_len = f["ssl_global_clip_length"] or ssl_len
    if ssl_len not in (8, 16) or global_len not in (8, 16) or f["tstr_clip_length"] not in (8, 16) \
            or f["clip_length"] not in (8, 16):
        raise ValueError("paper_cost.py counts 8- and 16-frame clips only; add the length to forward_flops()")
    ssl_steps = f["ssl_epochs"] * f["ssl_steps_per_epoch"] * f["ssl_batch_size"]  # videos seen
    cls = f"classifier_{num_classes}"
    per_clip = clip(f["clip_length"], cls)
    work = {
        "pretrain_invariant": ("ssl", ssl_steps * n, ssl_steps * n * TRAIN * clip(ssl_len, "projection_head")),
        "tstr": ("supervised", train_videos * 2 * f["tstr_num_clips"],
                 train_videos * 2 * f["tstr_num_clips"] * clip(f["tstr_clip_length"], "projection_head")),
    }
    two_views = ssl_steps * 2 * (n * clip(ssl_len, "projection_head") + clip(global_len, "projection_head"))
    for stage in ("pretrain_distinctive", "pretrain_ssl"):
        work[stage] = ("ssl", ssl_steps * 2 * (n + 1), TRAIN * two_views)
    finetune_clips = 2 * f["finetune_epochs"] * f["finetune_steps_per_epoch"] * f["finetune_batch_size"]
    work["finetune_teachers"] = ("supervised", finetune_clips, finetune_clips * TRAIN * per_clip)
    student_clips = f["student_epochs"] * f["student_steps_per_epoch"] * (
        f["labeled_batch_size"] + f["unlabeled_batch_size"])
    work["student"] = ("supervised", student_clips, student_clips * (TRAIN + 2) * per_clip)
    eval_clips = EVALUATED_MODELS * test_videos * f["eval_clips"] * f["eval_crops"]
    work["evaluate"] = ("supervised", eval_clips, eval_clips * per_clip)
    return {s: {"kind": work[s][0], "clips": work[s][1], "flops": work[s][2]} for s in STAGES}


def achieved_flops_per_second(fwd: dict[str, dict[str, int]], ssl_rate_frames: int) -> dict[str, dict[str, float]]:
    """FLOP/s the H200 rates imply: student step = 5 forwards per clip, SSL step = 3 (clip + head)."""
    from tbkeras.models.flops import TRAIN_FLOPS_PER_FORWARD as TRAIN

    out = {}
    for name, rate in H200_RATES.items():
        frames, side = rate["clip"]
        student = fwd[name][f"{frames}x{side}"] + fwd[name]["classifier_101"]
        ssl = fwd[name][f"{ssl_rate_frames}x{side}"] + fwd[name]["projection_head"]
        out[name] = {"supervised": rate["student"] * (TRAIN + 2) * student, "ssl": rate["ssl"] * TRAIN * ssl}
    return out


def estimate(ssl_rate_frames: int) -> dict[str, Any]:
    fwd = forward_flops()
    speed = achieved_flops_per_second(fwd, ssl_rate_frames)
    table: dict[str, Any] = {}
    for dataset, (path, train_videos, test_videos) in DATASETS.items():
        values = read_flagfile(path)
        values.setdefault("ssl_global_clip_length", "0")  # run.py's default: the SSL clip length
        f = _ints(values, path, "ssl_batch_size", "ssl_epochs", "ssl_steps_per_epoch", "ssl_num_clips",
                  "ssl_clip_length", "ssl_global_clip_length", "tstr_num_clips", "tstr_clip_length",
                  "finetune_batch_size", "finetune_epochs", "finetune_steps_per_epoch", "labeled_batch_size",
                  "unlabeled_batch_size", "student_epochs", "student_steps_per_epoch", "clip_length",
                  "eval_clips", "eval_crops", "num_classes")
        table[dataset] = {"flagfile": path, "settings": f, "train_videos": train_videos, "test_videos": test_videos}
        for name, (_, side) in BACKBONES.items():
            work = stage_work(f, train_videos, test_videos, fwd[name], side, f["num_classes"])
            for entry in work.values():
                entry["gpu_hours"] = entry["flops"] / speed[name][entry["kind"]] / 3600
            work["total"] = {"gpu_hours": sum(w["gpu_hours"] for w in work.values()),
                             "flops": sum(w["flops"] for w in work.values())}
            table[dataset][name] = work
    return {"estimate": True, "gpu": "1x H200, PyTorch, bf16 autocast, channels_last (rates from issue #13)",
            "ssl_rate_frames": ssl_rate_frames, "h200_rates_clips_per_s": H200_RATES,
            "forward_flops_per_clip": fwd, "achieved_tflops_per_s": {
                k: {kind: v / 1e12 for kind, v in d.items()} for k, d in speed.items()},
            "assumptions": ASSUMPTIONS, "table": table}


def markdown(result: dict[str, Any]) -> str:
    columns = [(d, b) for d in DATASETS for b in BACKBONES]
    lines = ["| stage (GPU-hours, ESTIMATE) | " + " | ".join(f"{d} {b}" for d, b in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for stage in (*STAGES, "total"):
        cells = []
        for d, b in columns:
            hours = result["table"][d][b][stage]["gpu_hours"]
            cells.append(f"{hours:,.0f}" if hours >= 100 else f"{hours:.1f}" if hours >= 1
                         else f"{hours:.2f}" if hours >= 0.005 else "< 0.01")
        label = f"**{stage}**" if stage == "total" else stage
        lines.append(f"| {label} | " + " | ".join(f"**{c}**" if stage == "total" else c for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from tbkeras.files import atomic_write_json

    result = estimate(FLAGS.ssl_rate_frames)
    result["command"] = " ".join(["python benchmarks/paper_cost.py", *sys.argv[1:]])
    atomic_write_json(FLAGS.output, result)
    print(markdown(result))
    for name, counts in result["forward_flops_per_clip"].items():
        shapes = ", ".join(f"{k}: {v / 1e9:.2f}" for k, v in counts.items() if "x" in k)
        print(f"{name} forward GFLOPs per clip: {shapes}")
    for name, kinds in result["achieved_tflops_per_s"].items():
        print(f"{name} H200 achieved TFLOP/s: student step {kinds['supervised']:.0f}, SSL step {kinds['ssl']:.0f}")
    print(f"wrote {FLAGS.output}")


if __name__ == "__main__":
    app.run(main)
