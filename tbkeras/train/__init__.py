"""Training infrastructure shared by every stage: strategy, lr schedule, callbacks, stage folders."""
from tbkeras.train.callbacks import NonFiniteLossError, NonFiniteLossGuard, standard_callbacks
from tbkeras.train.optimizers import FusedAdam
from tbkeras.train.schedules import WarmupPlateauSchedule
from tbkeras.train.stage_dir import (StageDir, StageResult, TrainConfig, fit_stage, is_done,
                                     stage_identity)
from tbkeras.train.strategy import STRATEGY_NAMES, enable_multi_worker_fit, get_strategy, is_chief

__all__ = [
    "NonFiniteLossError", "NonFiniteLossGuard", "standard_callbacks", "FusedAdam", "WarmupPlateauSchedule",
    "StageDir", "StageResult", "TrainConfig", "fit_stage", "is_done", "stage_identity", "STRATEGY_NAMES",
    "enable_multi_worker_fit", "get_strategy", "is_chief",
]
