"""Strided Conv3D on CPU: TensorFlow's native kernels against stride 1 + subsampling, side by side.

  python benchmarks/bench_strided_conv.py        (~2 minutes on 2 cores)

Why it matters: TF's CPU gradient kernels for strided 3D convolutions are far slower than for
stride 1, so R3D backbones default to `strided_conv="auto"` (subsample without a GPU/TPU). This
measures forward and forward+backward of the strided layers of R3D-18 alone, then one whole
pretraining step (InvariantPretrainer, 4 videos x 4 clips of 16 frames at 32 px, width 0.25),
with each implementation, interleaved, best of --repeats. Prints a table; writes
benchmarks/results/strided_conv.json.
"""
import json
import os
import platform
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_integer("repeats", 3, "Timed repetitions per measurement; the best is kept.")
flags.DEFINE_bool("write_results", True, "Write benchmarks/results/strided_conv.json.")

LAYERS = {  # name: (input shape, kernel shape, strides), R3D-18 at width 0.25 on 16 clips of 16x32x32
    "stem 3x7x7 stride (1,2,2)": ([16, 18, 38, 38, 3], [3, 7, 7, 3, 16], (1, 2, 2)),
    "layer2 3x3x3 stride 2": ([16, 18, 18, 18, 16], [3, 3, 3, 16, 32], (2, 2, 2)),
    "downsample 1x1x1 stride 2": ([16, 16, 16, 16, 16], [1, 1, 1, 16, 32], (2, 2, 2)),
}


def _best(fn, repeats):
    fn()  # trace / warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _layer_fns(tf, input_shape, kernel_shape, strides):
    x = tf.random.uniform(input_shape)
    kernel = tf.Variable(tf.random.normal(kernel_shape))

    def conv(subsample):
        if subsample:
            y = tf.nn.conv3d(x, kernel, strides=[1] * 5, padding="VALID")
            return y[:, :: strides[0], :: strides[1], :: strides[2], :]
        return tf.nn.conv3d(x, kernel, strides=(1, *strides, 1), padding="VALID")

    def make(subsample, backward):
        @tf.function
        def step():
            with tf.GradientTape() as tape:
                y = conv(subsample)
                loss = tf.reduce_sum(y * y)
            return tape.gradient(loss, kernel) if backward else loss

        return step

    return make


def _train_step_fn(tf, keras, mode):
    from tbkeras.models import ProjectionHead, r3d18
    from tbkeras.stages.pretrain import InvariantPretrainer

    model = InvariantPretrainer(r3d18(width_multiplier=0.25, strided_conv=mode), ProjectionHead())
    model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=False)
    batch = {"local": tf.random.uniform([4, 1, 4, 16, 32, 32, 3]), "global": tf.random.uniform([4, 1, 16, 32, 32, 3]),
             "video_id": tf.constant(["v"] * 4)}
    data = tf.data.Dataset.from_tensors(batch).repeat()
    return lambda: model.fit(data, steps_per_epoch=1, epochs=1, verbose=0)


def main(argv):
    del argv
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(2)
    tf.config.threading.set_inter_op_parallelism_threads(2)
    rows = []
    for name, (input_shape, kernel_shape, strides) in LAYERS.items():
        make = _layer_fns(tf, input_shape, kernel_shape, strides)
        for what, backward in (("forward", False), ("forward+backward", True)):
            native = _best(make(False, backward), FLAGS.repeats)
            subsampled = _best(make(True, backward), FLAGS.repeats)
            rows.append({"measurement": f"{name}, {what}", "native_s": native, "subsample_s": subsampled})
    native = _best(_train_step_fn(tf, keras, "native"), FLAGS.repeats)
    subsampled = _best(_train_step_fn(tf, keras, "subsample"), FLAGS.repeats)
    rows.append({"measurement": "R3D-18 x0.25 pretraining step (16 clips 16x32x32)",
                 "native_s": native, "subsample_s": subsampled})

    print(f"{'measurement':58s} {'native s':>9s} {'subsample s':>12s} {'speed-up':>9s}")
    for row in rows:
        row["speedup"] = row["native_s"] / row["subsample_s"]
        print(f"{row['measurement']:58s} {row['native_s']:9.3f} {row['subsample_s']:12.3f} {row['speedup']:8.1f}x")
    if FLAGS.write_results:
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "strided_conv.json")
        with open(path, "w") as f:
            json.dump({"machine": {"nproc": os.cpu_count(), "processor": platform.processor(),
                                   "tensorflow": tf.__version__}, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    app.run(main)
