"""Losses of the TimeBalance recipe: the teachers' contrastive losses and the student's distillation."""
from tbkeras.losses.contrastive import (
    global_local_loss,
    temporal_distinctiveness_loss,
    temporal_invariance_loss,
)
from tbkeras.losses.distillation import distillation_loss

__all__ = [
    "distillation_loss",
    "global_local_loss",
    "temporal_distinctiveness_loss",
    "temporal_invariance_loss",
]
