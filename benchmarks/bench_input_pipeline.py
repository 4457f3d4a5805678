"""Clips per second of the tbkeras input pipelines against an official-style cv2 loader.

One run, same videos, same cores, side by side:
  1. writes N small XVID videos (171x128, 80-120 frames by default, UCF101's codec and the size
     of its short-side-128 copies) and converts them to TFRecord shards with `tbkeras.data.converter`;
  2. student pipeline (labeled + unlabeled clips of 8 frames at stride 2, 112x112, weak
     augmentation) vs a loader written like the official PyTorch `dl_semisup_2clips.py`: open the
     video with cv2.VideoCapture, read frames sequentially, crop/resize/jitter each sampled frame in
     Python, in `--workers` processes (a DataLoader's workers);
  3. SSL pipeline (4 x 16-frame span: 4 local + 1 global clip, 2 views = 10 clips of 16 frames per
     video, strong augmentation) vs the same loader shaped like `dl_ssl.py`;
  4. the JPEG-decode ceiling: frames/s of `tf.io.decode_jpeg` alone over the shards' frames.

The cv2 loader reads each video to its end, as the official loop does (`--cv2_stop_early` stops at
the last frame it needs instead), and does its per-frame work with cv2/numpy where the official
uses PIL and torchvision.functional (slower), so it is, if anything, faster than the original.

Usage: python benchmarks/bench_input_pipeline.py [--seconds=12] [--videos=32] [--frames=80,120] [--workers=2] [--malloc=tuned|default]
Writes benchmarks/results/input_pipeline.json and prints a table.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import shutil
import sys
import tempfile
import time

import cv2
import numpy as np

# Imported by the cv2 loader's worker processes too: keep TensorFlow out of module scope.
from tbkeras.machine import cpu_model
from tbkeras.malloc import tune_malloc

WIDTH, HEIGHT = 171, 128
CROP = 112


# --------------------------------------------------------------------------- test videos

def write_videos(video_dir: str, count: int, frames: tuple[int, int] = (80, 120), seed: int = 0
                 ) -> list[tuple[str, int]]:
    """XVID .avi files with textured panning backgrounds and a moving block, `frames` (min, max)
    frames long; (path, label)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        label = i % 4
        num_frames = int(rng.integers(frames[0], frames[1] + 1))
        noise = rng.integers(0, 256, size=(HEIGHT + 64, 2 * WIDTH, 3), dtype=np.uint8)
        background = cv2.GaussianBlur(noise, (0, 0), 2.0)
        path = os.path.join(video_dir, f"class{label}", f"v_class{label}_g{i:02d}_c01.avi")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"XVID"), 25, (WIDTH, HEIGHT))
        for t in range(num_frames):
            dx = int(t * WIDTH / num_frames)
            frame = background[32:32 + HEIGHT, dx:dx + WIDTH].copy()
            x = int((t * 3) % (WIDTH - 30))
            cv2.rectangle(frame, (x, 40), (x + 30, 80), (40 * label, 200, 255 - 40 * label), -1)
            writer.write(frame)
        writer.release()
        out.append((path, label))
    return out


# --------------------------------------------------------------------------- official-style loader

def _jitter(img: np.ndarray, p: dict) -> np.ndarray:
    """Per-frame colour ops of the official loaders (numpy versions of torchvision's)."""
    if p["contrast"] != 1.0:
        mean = (img @ np.array([0.299, 0.587, 0.114], np.float32)).mean()
        img = np.clip(mean + p["contrast"] * (img - mean), 0, 1)
    if p["hue"] != 0.0:
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
        hsv[..., 0] = (hsv[..., 0] + 360.0 * p["hue"]) % 360.0
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if p["saturation"] != 1.0:
        gray = (img @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
        img = np.clip(gray + p["saturation"] * (img - gray), 0, 1)
    if p["brightness"] != 1.0:
        img = np.clip(img * p["brightness"], 0, 1)
    if p["gray"]:
        img = np.repeat((img @ np.array([0.299, 0.587, 0.114], np.float32))[..., None], 3, axis=-1)
    if p["flip"]:
        img = img[:, ::-1]
    if p["erase"] is not None:
        y, x, h, w = p["erase"]
        img = img.copy()
        img[y:y + h, x:x + w] = 0
    return img


def _draw_params(rng, w: int, h: int, strong: bool) -> dict:
    f = rng.uniform(0.5 if strong else 0.4, 1.0)
    s = 1.0 if strong else 0.5  # the student loader halves the jitter probabilities
    r = rng.random(8)
    wide = 0.25 if strong else 0.1
    return {
        "crop": (int(rng.integers(0, h - int(h * f) + 1)), int(rng.integers(0, w - int(w * f) + 1)),
                 int(h * f), int(w * f)),
        "contrast": rng.uniform(1 - wide, 1 + wide) if r[0] < 0.25 * s else 1.0,
        "hue": rng.uniform(-0.1, 0.1) * (1 if strong else 0.5) if r[1] < 0.3 * s else 0.0,
        "saturation": rng.uniform(1 - wide, 1 + wide) if r[2] < 0.3 * s else 1.0,
        "brightness": rng.uniform(1 - wide, 1 + wide) if r[3] < 0.3 * s else 1.0,
        "gray": r[4] > (0.825 if strong else 0.9),
        "flip": r[5] > 0.5,
        "erase": (int(rng.integers(0, CROP)), int(rng.integers(0, CROP)), int(rng.integers(20, 40)),
                  int(rng.integers(26, 53))) if strong and r[6] < 0.7 else None,
    }


def _augment_frame(frame_bgr: np.ndarray, p: dict) -> np.ndarray:
    rgb = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB)
    y, x, h, w = p["crop"]
    img = cv2.resize(rgb[y:y + h, x:x + w], (CROP, CROP), interpolation=cv2.INTER_LINEAR)
    return _jitter(img.astype(np.float32) / 255.0, p)


def cv2_load(task: tuple[str, int, str, bool]) -> int:
    """Build one video's clips the official way; returns the number of clips built."""
    path, seed, kind, stop_early = task
    rng = np.random.default_rng(seed)
    cap = cv2.VideoCapture(path)
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    if kind == "student":  # 8 frames at stride 2, one augmentation
        start = int(rng.integers(0, max(count - 16, 1)))
        clips = [list(start + 2 * np.arange(8))]
        params = [_draw_params(rng, w, h, strong=False)]
    else:  # SSL: 1 sparse + 4 dense clips of 16 frames over a 64-frame span, two views each
        start = int(rng.integers(0, max(count - 64, 1)))
        sparse = list(start + 4 * np.arange(16))
        dense = [list(start + 16 * j + np.arange(16)) for j in range(4)]
        clips = [sparse] + dense + [sparse] + dense
        params = [_draw_params(rng, w, h, strong=True) for _ in clips]
    wanted = {i % count for clip in clips for i in clip}
    last = max(wanted)
    built: list[list[np.ndarray]] = [[] for _ in clips]
    index = -1
    while cap.isOpened():
        index += 1
        ok, frame = cap.read()
        if not ok or (stop_early and index > last):
            break
        if index not in wanted:
            continue
        for c, clip in enumerate(clips):
            if index in clip:
                built[c].append(_augment_frame(frame, params[c]))
    cap.release()
    return len([np.stack(b) for b in built if b])


def _timed_cv2_load(task) -> tuple[int, float]:
    """`cv2_load` and the CPU seconds the worker spent on it."""
    start = time.process_time()
    clips = cv2_load(task)
    return clips, time.process_time() - start


def time_cv2_loader(tasks, workers: int, seconds: float, tuned_malloc: bool) -> tuple[float, float]:
    """Clips/s of `cv2_load` over `tasks` in a pool of worker processes (after one warm-up pass),
    with the same malloc settings as the tbkeras side, and the CPU ms its workers spent per clip."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers, initializer=tune_malloc if tuned_malloc else None) as pool:
        pool.map(cv2_load, tasks[:workers * 2])  # warm up the workers
        clips, cpu, start, i = 0, 0.0, time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            batch = [tasks[(i + k) % len(tasks)] for k in range(workers * 4)]
            for built, seconds_spent in pool.map(_timed_cv2_load, batch):
                clips += built
                cpu += seconds_spent
            i += len(batch)
        return clips / (time.perf_counter() - start), 1000 * cpu / clips


# --------------------------------------------------------------------------- tbkeras

def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def time_dataset(dataset, clips_per_element: int, seconds: float, warmup: int = 3) -> tuple[float, float]:
    """Clips/s of iterating `dataset`, and the CPU ms this process spent per clip (all threads)."""
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    elements, start, cpu_start = 0, time.perf_counter(), _cpu_seconds()
    while time.perf_counter() - start < seconds:
        next(iterator)
        elements += 1
    clips = elements * clips_per_element
    return clips / (time.perf_counter() - start), 1000 * (_cpu_seconds() - cpu_start) / clips


def decode_ceiling(shard_paths, seconds: float) -> float:
    """Frames/s of `tf.io.decode_jpeg` alone, parallel over the cores, over the shards' frames."""
    import tensorflow as tf
    from tbkeras.data import tfrecord

    jpegs = [f for path in shard_paths for record in tf.data.TFRecordDataset(path)
             for f in tfrecord.parse_video(record)[tfrecord.IMAGE_KEY].numpy()]
    ds = (tf.data.Dataset.from_tensor_slices(jpegs).repeat()
          .map(lambda j: tf.shape(tf.io.decode_jpeg(j, channels=3))[0], num_parallel_calls=tf.data.AUTOTUNE,
               deterministic=False)
          .batch(64).prefetch(tf.data.AUTOTUNE))
    return time_dataset(ds, 64, seconds)[0]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=12.0, help="timed seconds per measurement")
    parser.add_argument("--videos", type=int, default=32)
    parser.add_argument("--frames", default="80,120",
                        help="min,max frames per video (UCF101 averages 186: try 150,220)")
    parser.add_argument("--workers", type=int, default=2, help="cv2 loader processes")
    parser.add_argument("--malloc", choices=["tuned", "default"], default="tuned",
                        help="glibc malloc settings of both loaders: tbkeras.malloc.tune_malloc (what "
                             "experiments/run.py applies) or glibc's defaults")
    parser.add_argument("--cv2_stop_early", action="store_true",
                        help="cv2 loader stops at the last needed frame (the official reads to the end)")
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results", "input_pipeline.json"))
    args = parser.parse_args(argv)
    try:
        frame_range = tuple(int(v) for v in args.frames.split(","))
        assert len(frame_range) == 2 and 64 <= frame_range[0] <= frame_range[1]
    except (ValueError, AssertionError):
        parser.error(f"--frames must be 'min,max' with 64 <= min <= max, got {args.frames!r}")

    if args.malloc == "tuned":  # before TensorFlow starts its threads
        tune_malloc()
    import tensorflow as tf
    from tbkeras.data import converter, pipelines, splits
    from tbkeras.data.pipelines import PixelFormat, ReadOptions, SSLConfig, StudentConfig, VideoSource
    from tbkeras.files import atomic_write_json, atomic_write_text

    work = tempfile.mkdtemp(prefix="bench_input_")
    try:
        t0 = time.perf_counter()
        videos = write_videos(os.path.join(work, "videos"), args.videos, frame_range)
        entries = [splits.VideoEntry(p, splits.video_id_from_path(p), label, f"class{label}") for p, label in videos]
        tf_dir = os.path.join(work, "tfrecords")
        converter.convert(entries, [f"class{i}" for i in range(4)], converter.ConversionConfig(
            tf_dir, num_shards=4, workers=args.workers, short_side=HEIGHT, jpeg_quality=90, show_progress=False))
        shard_paths = [os.path.join(tf_dir, f) for f in sorted(os.listdir(tf_dir)) if f.endswith(".tfrecord")]
        labeled_file = os.path.join(work, "labeled.txt")
        atomic_write_text(labeled_file, "".join(f"{os.path.relpath(p, work)} {l + 1}\n" for p, l in videos[::4]))
        print(f"prepared {len(videos)} videos + {len(shard_paths)} shards in {time.perf_counter() - t0:.1f}s",
              flush=True)

        read = ReadOptions(shuffle_buffer=32)

        def student_cfg(dtype):
            return StudentConfig(
                labeled=VideoSource(tf_dir, include_ids_file=labeled_file),
                unlabeled=VideoSource(tf_dir, exclude_ids_file=labeled_file),
                labeled_batch_size=8, unlabeled_batch_size=8, pixels=PixelFormat(CROP, dtype=dtype), read=read)

        def ssl_cfg(dtype):
            return SSLConfig(VideoSource(tf_dir), batch_size=4, num_clips=4, clip_length=16, views=2,
                             pixels=PixelFormat(CROP, dtype=dtype), read=read)

        ssl_clips_per_video = 2 * (4 + 1)
        results: dict = {}
        ceiling = decode_ceiling(shard_paths, args.seconds)
        for name, build, clips_per_element, frames_per_clip, kind in [
            ("student", lambda d: pipelines.student_dataset(student_cfg(d)), 16, 8.0, "student"),
            # SSL decodes the 64-frame span once for its 10 clips of 16 frames.
            ("ssl", lambda d: pipelines.ssl_dataset(ssl_cfg(d)), 4 * ssl_clips_per_video, 64 / ssl_clips_per_video, "ssl"),
        ]:
            ours, ours_cpu = time_dataset(build("float32"), clips_per_element, args.seconds)
            # bfloat16 pixels, as the recipe emits under mixed_bfloat16.
            ours_bf16, _ = time_dataset(build("bfloat16"), clips_per_element, args.seconds)
            tasks = [(p, i, kind, args.cv2_stop_early) for i, (p, _) in enumerate(videos)]
            theirs, theirs_cpu = time_cv2_loader(tasks, args.workers, args.seconds, args.malloc == "tuned")
            results[name] = {
                "tbkeras_clips_per_s": round(ours, 1),
                "tbkeras_bfloat16_clips_per_s": round(ours_bf16, 1),
                "cv2_loader_clips_per_s": round(theirs, 1),
                # CPU time per clip: what each loader costs, whatever else shares the machine.
                "tbkeras_cpu_ms_per_clip": round(ours_cpu, 2),
                "cv2_loader_cpu_ms_per_clip": round(theirs_cpu, 2),
                "cpu_time_ratio": round(theirs_cpu / ours_cpu, 2),
                "decode_ceiling_frames_per_s": round(ceiling, 1),
                "speedup_vs_cv2": round(ours / theirs, 2),
                "decoded_frames_per_clip": frames_per_clip,
                "fraction_of_decode_ceiling": round(ours * frames_per_clip / ceiling, 3),
                "tbkeras_clips_per_s_per_core": round(ours / (os.cpu_count() or 1), 1),
            }
            print(name, results[name], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    results["setup"] = {
        "videos": args.videos, "video_size": f"{WIDTH}x{HEIGHT}", "frames_per_video": "{}-{}".format(*frame_range), "codec": "XVID",
        "crop": CROP, "cv2_workers": args.workers, "cv2_reads_to_end": not args.cv2_stop_early, "malloc": args.malloc, "seconds_per_measurement": args.seconds,
        "student": "8+8 clips of 8 frames at stride 2 per element, weak augmentation",
        "ssl": "4 videos per batch, 2 views x (4 local + 1 global) clips of 16 frames, strong augmentation",
        "tbkeras_process_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "nproc": os.cpu_count(), "cpu": cpu_model(), "tensorflow": tf.__version__, "python": sys.version.split()[0],
    }
    atomic_write_json(args.output, results)
    print_table(results)
    return results


def print_table(results: dict) -> None:
    print(f"\n{'pipeline':<9} {'tbkeras clips/s':>16} {'(bfloat16)':>11} {'cv2 loader clips/s':>19} {'speedup':>8} "
          f"{'CPU ms/clip ours, cv2':>22} {'ratio':>6} {'% decode ceiling':>17} {'clips/s/core':>13}")
    for name in ("student", "ssl"):
        r = results[name]
        cpu = f"{r['tbkeras_cpu_ms_per_clip']:.2f}, {r['cv2_loader_cpu_ms_per_clip']:.2f}"
        print(f"{name:<9} {r['tbkeras_clips_per_s']:>16.1f} {r['tbkeras_bfloat16_clips_per_s']:>11.1f} "
              f"{r['cv2_loader_clips_per_s']:>19.1f} {r['speedup_vs_cv2']:>7.1f}x {cpu:>22} {r['cpu_time_ratio']:>5.1f}x "
              f"{100 * r['fraction_of_decode_ceiling']:>16.0f}% {r['tbkeras_clips_per_s_per_core']:>13.1f}")
    print(f"JPEG decode ceiling: {results['student']['decode_ceiling_frames_per_s']:.0f} frames/s")


if __name__ == "__main__":
    main()
