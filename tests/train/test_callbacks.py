"""NonFiniteLossGuard (stop / restore) and the TensorBoard profiler wiring, on the tiny model."""
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tbkeras.train.callbacks import NonFiniteLossError, NonFiniteLossGuard, tensorboard_callback
from tests.train.tiny_model import make_dataset, make_model
from tests.strategies import two_cpu_strategy

# Batches of 8 over 64 rows: rows 40-47 are batch 5 of each pass, i.e. global steps 5, 13, ...
NAN_AT_STEP_5 = dict(nan_rows=(42,))


def test_stop_names_the_step():
    model = make_model()
    with pytest.raises(NonFiniteLossError, match=r"at step 5 \(epoch 2, batch 2\)"):
        model.fit(make_dataset(**NAN_AT_STEP_5), epochs=3, steps_per_epoch=4, verbose=0,
                  callbacks=[NonFiniteLossGuard("stop")])


@pytest.mark.parametrize("mirrored", [False, True], ids=["default", "mirrored"])
def test_restore_puts_back_good_weights_and_training_goes_on(mirrored):
    model = make_model(two_cpu_strategy() if mirrored else None)
    guard = NonFiniteLossGuard("restore")
    history = model.fit(make_dataset(**NAN_AT_STEP_5), epochs=3, steps_per_epoch=4, verbose=0,
                        callbacks=[guard])
    assert guard.restores == 1
    assert all(np.isfinite(w).all() for w in model.get_weights())
    losses = history.history["loss"]
    assert len(losses) == 3 and np.isfinite(losses).all()
    assert losses[-1] < losses[0]  # it kept learning after the restore
    # Restored to the end of epoch 1 (4 updates), then 2 more in epoch 2 and 4 in epoch 3.
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 10


def test_restore_gives_up_after_max_restores():
    all_nan = dict(nan_rows=tuple(range(64)))
    with pytest.raises(NonFiniteLossError, match="after 2 restores"):
        make_model().fit(make_dataset(**all_nan), epochs=1, steps_per_epoch=4, verbose=0,
                         callbacks=[NonFiniteLossGuard("restore", max_restores=2)])


def test_unknown_action_lists_valid_ones():
    with pytest.raises(ValueError, match="stop, restore"):
        NonFiniteLossGuard("ignore")


def test_tensorboard_writes_scalars_and_a_profile(tmp_path):
    log_dir = str(tmp_path / "tb")
    make_model().fit(make_dataset(), epochs=1, steps_per_epoch=3, verbose=0,
                     callbacks=[tensorboard_callback(log_dir, profile_batch=2)])
    assert tf.io.gfile.glob(os.path.join(log_dir, "train", "events.out.tfevents.*"))
    assert tf.io.gfile.glob(os.path.join(log_dir, "train", "plugins", "profile", "*", "*.xplane.pb"))
