"""A tiny stage run in its own process, for the kill-and-resume and multi-worker tests.

    python -m tests.train.stage_worker STAGE_DIR [--strategy=default] [--epochs=N] [--sleep=S]

Trains `TinyRegressor` with `fit_stage` and prints `WEIGHTS <json>` (the final kernel and bias).
`--sleep` slows every step so a test can kill the process mid-training. The strategy is built from
TF_CONFIG for "multi_worker_mirrored".
"""
import argparse
import json
import os
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from tbkeras.train.stage_dir import TrainConfig, fit_stage  # noqa: E402
from tbkeras.train.strategy import get_strategy  # noqa: E402
from tests.train.tiny_model import make_dataset, make_model  # noqa: E402


STAGE_CONFIG = {"name": "tiny"}


def tiny_config(epochs: int, steps: int) -> TrainConfig:
    return TrainConfig(epochs=epochs, steps_per_epoch=steps, lr=0.05, warmup_epochs=1, verbose=0)


def run(stage_dir: str, config: TrainConfig, strategy=None, callbacks=()):
    """fit_stage on a fresh TinyRegressor with SGD; returns (model, StageResult)."""
    model = make_model(strategy, compile=False)
    result = fit_stage(model, make_dataset(), stage_dir=stage_dir, config=config,
                       stage_config=STAGE_CONFIG, optimizer=keras.optimizers.SGD(config.lr),
                       extra_callbacks=list(callbacks))
    return model, result


class SlowSteps(keras.callbacks.Callback):
    def __init__(self, seconds):
        super().__init__()
        self.seconds = seconds

    def on_train_batch_end(self, batch, logs=None):
        time.sleep(self.seconds)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("stage_dir")
    parser.add_argument("--strategy", default="default")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--sleep", type=float, default=0.0)
    args = parser.parse_args()
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)

    model, _ = run(args.stage_dir, tiny_config(args.epochs, args.steps), get_strategy(args.strategy),
                   [SlowSteps(args.sleep)] if args.sleep else [])
    weights = [w.tolist() for w in model.get_weights()]
    print("WEIGHTS " + json.dumps(weights), flush=True)


if __name__ == "__main__":
    main()
