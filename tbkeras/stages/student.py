"""Semi-supervised student training with TSTR teacher reweighting (paper Sec. 3.2, Eq. 4-8,
Algorithm 1 lines 22-26).

    L = CE(y, p_S)[labeled] + omega_l * D(p_T, p_S)[labeled] + omega_u * D(p_T, p_S)[unlabeled]
    p_T = s * p_I + (1 - s) * p_D                                               (Eq. 7)

The teachers are finetuned `ClassifierModel`s, frozen (`trainable=False`) and run with
`training=False` on the very clips the student sees; only the student is updated. Labeled and
unlabeled clips go through each network in one call.

Input element (`student_dataset`): {"labeled": {"clip", "label", "score"?}, "unlabeled": {"clip",
"score"?}}; "score" ([B] float32, the TSTR s of each video) is needed only for reweighting="tstr".

Logged metrics: "loss" (total), "ce", "distill_labeled", "distill_unlabeled" (unweighted D values),
"mean_s" (mean teacher weight s over all clips: 1 for teachers="invariant", 0 for "distinctive",
0.5 for reweighting="average", 0 when teachers="none"), "teacher_student_agreement" (argmax match
rate between p_T and p_S; 0 when teachers="none"), "accuracy" (student top-1 on the labeled clips).
"""
from __future__ import annotations

import dataclasses

import keras
from keras import ops

from tbkeras.losses import distillation_loss
from tbkeras.losses.distillation import KINDS as DISTILL_LOSSES
from tbkeras.stages.base import StageModel
from tbkeras.stages.finetune import cross_entropy_and_accuracy
from tbkeras.tstr import combine_teacher_predictions

TEACHERS = ("both", "invariant", "distinctive", "none")
REWEIGHTINGS = ("tstr", "average")
METRICS = ("loss", "ce", "distill_labeled", "distill_unlabeled", "mean_s", "teacher_student_agreement",
           "accuracy")


def _check_choice(field: str, value: str, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{field} must be one of {choices}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class StudentConfig:
    """Student-stage settings and ablations (paper Tables 5-6).

    Attributes:
        teachers: "both" (TimeBalance), "invariant" (s = 1), "distinctive" (s = 0) or "none"
            (supervised CE only, no distillation term).
        reweighting: "tstr" (s from the TSTR scores, Eq. 6) or "average" (s = 0.5).
        distill_loss: D of Eq. 8: "l2" (paper), "kl" or "js".
        omega_labeled: weight of D on labeled clips (official code: 50).
        omega_unlabeled: weight of D on unlabeled clips (official code: 100).
    """

    teachers: str = "both"
    reweighting: str = "tstr"
    distill_loss: str = "l2"
    omega_labeled: float = 50.0
    omega_unlabeled: float = 100.0

    def __post_init__(self):
        _check_choice("teachers", self.teachers, TEACHERS)
        _check_choice("reweighting", self.reweighting, REWEIGHTINGS)
        _check_choice("distill_loss", self.distill_loss, DISTILL_LOSSES)
        if self.omega_labeled < 0 or self.omega_unlabeled < 0:
            raise ValueError(f"omega_labeled/omega_unlabeled must be >= 0, got "
                             f"{self.omega_labeled}/{self.omega_unlabeled}")

    @property
    def needs_scores(self) -> bool:
        return self.teachers == "both" and self.reweighting == "tstr"


class StudentDistiller(StageModel):
    """Trains `student` against the TSTR-combined predictions of two frozen finetuned teachers.

    Args:
        student: clip `[B, T, S, S, 3]` -> float32 logits (a `ClassifierModel`); the only network updated.
        invariant_teacher: finetuned f_I (same call signature); needed unless teachers is
            "distinctive" or "none".
        distinctive_teacher: finetuned f_D; needed unless teachers is "invariant" or "none".
        config: `StudentConfig`.

    Example:
        distiller = StudentDistiller(student, teacher_i, teacher_d, StudentConfig())
        distiller.compile(optimizer=keras.optimizers.Adam(1e-3))
        distiller.fit(student_dataset(cfg), epochs=...)
    """

    def __init__(self, student: keras.Model, invariant_teacher: keras.Model | None = None,
                 distinctive_teacher: keras.Model | None = None, config: StudentConfig = StudentConfig(),
                 name: str = "student_distiller", **kwargs):
        super().__init__(METRICS, name=name, **kwargs)
        needed = {"both": ("invariant", "distinctive"), "invariant": ("invariant",),
                  "distinctive": ("distinctive",), "none": ()}[config.teachers]
        given = {"invariant": invariant_teacher, "distinctive": distinctive_teacher}
        missing = [k for k in needed if given[k] is None]
        if missing:
            raise ValueError(f"teachers={config.teachers!r} needs the {' and '.join(missing)} teacher model(s)")
        self.student = student
        self.config = config
        self.invariant_teacher = invariant_teacher if "invariant" in needed else None
        self.distinctive_teacher = distinctive_teacher if "distinctive" in needed else None
        for teacher in (self.invariant_teacher, self.distinctive_teacher):
            if teacher is not None:
                teacher.trainable = False
        self.built = True

    def call(self, clip, training=False):
        """Student logits; the distiller serves as the student at inference."""
        return self.student(clip, training=training)

    def trainable_weights_to_update(self) -> list:
        return self.student.trainable_variables

    def _teacher_weight(self, labeled: dict, unlabeled: dict, num_clips):
        """s per clip `[Nl + Nu]`: the TSTR score, or a constant fixed by the ablation."""
        cfg = self.config
        if cfg.needs_scores:
            if "score" not in labeled or "score" not in unlabeled:
                raise ValueError(
                    "reweighting='tstr' needs each video's TSTR score: build student_dataset with the "
                    "tstr stage's scores file (tstr_scores.json), or use reweighting='average'")
            return ops.cast(ops.concatenate([labeled["score"], unlabeled["score"]], axis=0), "float32")
        constant = {"invariant": 1.0, "distinctive": 0.0, "none": 0.0}.get(cfg.teachers, 0.5)
        return ops.full((num_clips,), constant, dtype="float32")

    def _teacher_probabilities(self, clips, s):
        """p_T `[N, C]` (Eq. 7), with only the teachers the ablation uses run (training=False)."""
        p_inv = p_dist = None
        if self.invariant_teacher is not None:
            p_inv = ops.softmax(self.invariant_teacher(clips, training=False))
        if self.distinctive_teacher is not None:
            p_dist = ops.softmax(self.distinctive_teacher(clips, training=False))
        if p_dist is None:
            return p_inv
        if p_inv is None:
            return p_dist
        return combine_teacher_predictions(p_inv, p_dist, s)

    def compute_terms(self, data, training: bool) -> dict:
        labeled, unlabeled = data["labeled"], data["unlabeled"]
        cfg = self.config
        num_labeled = ops.shape(labeled["clip"])[0]
        clips = ops.concatenate([labeled["clip"], unlabeled["clip"]], axis=0)
        num_clips = ops.shape(clips)[0]
        logits = self.student(clips, training=training)
        ce, accuracy = cross_entropy_and_accuracy(labeled["label"], logits[:num_labeled])
        terms = {"ce": ce, "accuracy": (accuracy, num_labeled)}
        zero = ops.zeros((), dtype="float32")
        if cfg.teachers == "none":
            terms.update(distill_labeled=zero, distill_unlabeled=zero, mean_s=zero,
                         teacher_student_agreement=zero, loss=ce)
            return terms
        s = self._teacher_weight(labeled, unlabeled, num_clips)
        p_teacher = ops.stop_gradient(self._teacher_probabilities(clips, s))
        p_student = ops.softmax(logits)
        d_labeled = distillation_loss(p_teacher[:num_labeled], p_student[:num_labeled], kind=cfg.distill_loss)
        d_unlabeled = distillation_loss(p_teacher[num_labeled:], p_student[num_labeled:], kind=cfg.distill_loss)
        agree = ops.equal(ops.argmax(p_teacher, axis=-1), ops.argmax(p_student, axis=-1))
        terms.update(
            distill_labeled=d_labeled,
            distill_unlabeled=d_unlabeled,
            mean_s=(ops.mean(s), num_clips),
            teacher_student_agreement=(ops.mean(ops.cast(agree, "float32")), num_clips),
            loss=ce + cfg.omega_labeled * d_labeled + cfg.omega_unlabeled * d_unlabeled,
        )
        return terms
