"""The lr policy against hand computations, through a real `fit`, and across a resume."""
import os

import keras
import numpy as np
import pytest

from tbkeras.train.schedules import WarmupPlateauSchedule, warmup_lr
from tests import float32_tolerances as f32
from tests.train.tiny_model import make_dataset, make_model


class RecordLR(keras.callbacks.Callback):
    """Records the lr each step ran with (read after the schedule set it)."""

    def __init__(self):
        super().__init__()
        self.lrs = []

    def on_train_batch_end(self, batch, logs=None):
        self.lrs.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))


def test_warmup_per_step_then_base_lr_through_fit():
    base, steps, warmup_epochs = 0.1, 4, 2
    schedule = WarmupPlateauSchedule(base, warmup_epochs=warmup_epochs, patience=100)
    record = RecordLR()
    model = make_model()
    model.fit(make_dataset(), epochs=4, steps_per_epoch=steps, callbacks=[schedule, record], verbose=0)

    # Hand computation: linear from 1% of base at step 0 to base at step 8 (= 2 epochs x 4 steps).
    # The optimizer holds each lr in a float32 variable: one rounding (pytest.approx's default
    # rel=1e-6 below is ~16 U too). A step off by one moves the warmup lrs by >= 10%.
    expected = [base * (0.01 + 0.99 * s / 8) for s in range(8)] + [base] * 8
    np.testing.assert_allclose(record.lrs, expected, rtol=f32.FEW_ROUNDINGS)
    assert record.lrs[0] == pytest.approx(0.001)
    assert record.lrs[8] == pytest.approx(base)  # not stuck at 1% after warmup (official-code bug)
    assert model.history.history["lr"] == pytest.approx([expected[3], expected[7], base, base])


def test_warmup_lr_edges():
    assert warmup_lr(0, base_lr=1.0, warmup_steps=0, start_fraction=0.01) == 1.0
    assert warmup_lr(5, base_lr=2.0, warmup_steps=10, start_fraction=0.0) == pytest.approx(1.0)
    assert warmup_lr(10, base_lr=2.0, warmup_steps=10, start_fraction=0.0) == 2.0


def _run_plateau(losses, **kwargs):
    schedule = WarmupPlateauSchedule(1.0, **kwargs)
    lrs = []
    for epoch, loss in enumerate(losses):
        schedule.update_plateau(epoch, loss)
        lrs.append(schedule.plateau_lr)
    return lrs


def test_plateau_halves_after_patience_epochs_without_improvement():
    losses = [5, 4, 4.5, 4.2, 3, 3.1, 3.2, 3.3, 3.4]
    # By hand (patience 2): no improvement at epochs 2,3 -> halve; 5,6 -> halve; 7,8 -> halve.
    expected = [1, 1, 1, 0.5, 0.5, 0.5, 0.25, 0.25, 0.125]
    assert _run_plateau(losses, warmup_epochs=0, patience=2) == expected
    # The floor: min_lr 0.2 stops the last halving at 0.2.
    assert _run_plateau(losses, warmup_epochs=0, patience=2, min_lr=0.2)[-1] == 0.2


def test_no_halving_while_improving_nor_during_warmup():
    assert _run_plateau([5, 4, 3, 2, 1.5, 1.0], warmup_epochs=0, patience=1) == [1.0] * 6
    # Epochs 0-2 are warmup: their bad losses do not count towards patience.
    lrs = _run_plateau([5, 6, 7, 8, 9], warmup_epochs=3, patience=2)
    assert lrs == [1, 1, 1, 1, 0.5]


class StopAtEpoch(keras.callbacks.Callback):
    """Simulates a kill: raises when epoch `epoch` begins (after the previous epoch's backup)."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt(f"simulated kill at epoch {epoch}")


def test_plateau_lr_survives_backup_and_restore(tmp_path):
    backup_dir, state = str(tmp_path / "backup"), str(tmp_path / "lr_state.json")
    # min_delta huge: after epoch 0 nothing "improves", so with patience 1 the lr halves after
    # every post-warmup epoch: epoch 1 runs at base, 2 at base/2, 3 at base/4.
    kwargs = dict(warmup_epochs=1, patience=1, min_delta=1e9, state_path=state)

    def callbacks(*extra):
        return [WarmupPlateauSchedule(0.1, **kwargs), keras.callbacks.BackupAndRestore(backup_dir), *extra]

    with pytest.raises(KeyboardInterrupt):
        make_model().fit(make_dataset(), epochs=5, steps_per_epoch=2, verbose=0,
                         callbacks=callbacks(StopAtEpoch(3)))
    assert os.path.exists(os.path.join(backup_dir, "latest.weights.h5"))

    record = RecordLR()
    model = make_model()
    model.fit(make_dataset(), epochs=5, steps_per_epoch=2, verbose=0, callbacks=callbacks(record))
    assert len(record.lrs) == 4  # resumed at epoch 3: epochs 3 and 4 only
    np.testing.assert_allclose(record.lrs, [0.025, 0.025, 0.0125, 0.0125], rtol=f32.FEW_ROUNDINGS)  # float32 lr


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="factor"):
        WarmupPlateauSchedule(1e-3, factor=2.0)


def test_cosine_decays_from_base_to_min_lr_after_warmup_through_fit():
    base, low, steps, epochs, warmup_epochs = 0.1, 0.001, 4, 4, 1
    schedule = WarmupPlateauSchedule(base, warmup_epochs=warmup_epochs, patience=1, min_lr=low, schedule="cosine")
    record = RecordLR()
    model = make_model()
    model.fit(make_dataset(), epochs=epochs, steps_per_epoch=steps, callbacks=[schedule, record], verbose=0)
    # Hand computation: warmup over steps 0-3, then lr = low + (base - low) (1 + cos(pi k / 12)) / 2 for
    # the k-th of the 12 remaining steps; patience=1 would halve on any plateau, and cosine ignores it.
    warm = [base * (0.01 + 0.99 * s / 4) for s in range(4)]
    cosine = [low + (base - low) * 0.5 * (1 + np.cos(np.pi * k / 12)) for k in range(12)]
    np.testing.assert_allclose(record.lrs, warm + cosine, rtol=f32.FEW_ROUNDINGS)
    assert record.lrs[-1] < 0.03 * base


def test_unknown_schedule_is_named():
    with pytest.raises(ValueError, match="schedule must be one of"):
        WarmupPlateauSchedule(1e-3, schedule="step")
