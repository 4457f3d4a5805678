"""The TimeBalance recipe (paper Algorithm 1) as named stages over one `model_dir`.

Each stage reads what earlier stages left in `model_dir/<stage>/` and leaves its own outputs
there, ending with a `DONE` marker that records the settings it ran with (its own and those of
the stages it read). `Recipe.run` skips a stage whose marker matches, so `run("all")` on a finished
`model_dir` reruns nothing, and a changed setting reruns exactly the stages it affects.

    prepare_data          (demo only) synthetic videos -> shards -> labeled split
    pretrain_invariant    f_I, L_I (Eq. 1)                      -> backbone + head weights
    pretrain_distinctive  f_D, L_D1 + L_D2 (Eq. 3, TCLR)        -> backbone + head weights
    pretrain_ssl          full TCLR objective: student init     -> backbone + head weights
                          (skipped when --student_init names another SSL stage)
    tstr                  s per training video (Eq. 5-6)        -> tstr_scores.json
    finetune_teachers     f_I, f_D + classifier, labeled CE     -> invariant/, distinctive/
    supervised            labels-only baseline (optional)       -> classifier weights
    student               CE + omega * D(p_T, p_S) (Eq. 7-8)    -> classifier weights
    evaluate              multi-view top-1 on the test split    -> evaluation.json, table
    export                the student as a SavedModel           -> export/student
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Callable

import keras
import tensorflow as tf

from tbkeras import export as export_lib
from tbkeras import figures
from tbkeras.data import augment, converter, manifest, pipelines, splits, synthetic
from tbkeras.evaluate import evaluate_classifier, top1_by_group, write_evaluation
from tbkeras.files import absolute_path, atomic_write_text
from tbkeras.models import BACKBONES, ProjectionHead, build_backbone
from tbkeras.models.strided_conv import StridedConvProbe, resolve_strided_conv
from tbkeras.stages import checkpoints
from tbkeras.stages.finetune import ClassifierModel, load_pretrained_backbone
from tbkeras.stages.pretrain import (ContrastiveConfig, DistinctivePretrainer, InvariantPretrainer, LossWeights,
                                     SSLPretrainer)
from tbkeras.stages.student import StudentConfig, StudentDistiller
from tbkeras.stages.tstr_scoring import (HISTOGRAM_FILE, MATRICES_FILE, score_videos, synthetic_class_kinds,
                                         write_figures, write_scores, write_tensorboard_summaries)
from tbkeras.train.stage_dir import StageDir, TrainConfig, fit_stage, is_done, stage_identity
from tbkeras.train.strategy import get_strategy

STAGES = ("prepare_data", "pretrain_invariant", "pretrain_distinctive", "pretrain_ssl", "tstr",
          "finetune_teachers", "supervised", "student", "evaluate", "export")
TEACHER_KINDS = ("invariant", "distinctive")
SCORES_FILE = "tstr_scores.json"
# Classifier stages the evaluate stage can score: short name -> row name of the results table.
EVALUATED = {"invariant": "invariant teacher", "distinctive": "distinctive teacher", "supervised": "supervised only",
             "student": "student"}
VAL_SPLIT = "val"  # how evaluation names the validation videos (held out of the training split)


@dataclasses.dataclass(frozen=True)
class PrepareSettings:
    """The demo's data: a synthetic dataset, converted, with a stratified labeled subset."""

    root: str
    synthetic: synthetic.SyntheticConfig = synthetic.SyntheticConfig()
    labeled_fraction: float = 0.2
    val_fraction: float = 0.0  # > 0: hold out train groups as a validation list (settings are chosen on it)
    val_seed: int = 0  # which groups: fixed apart from `seed`, so runs of several seeds validate alike
    short_side: int = 64
    num_shards: int = 4
    workers: int = 2
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "root", absolute_path(self.root))

    @property
    def tfrecord_dir(self) -> str:
        return os.path.join(self.root, "tfrecords")

    @property
    def labeled_list(self) -> str:
        return os.path.join(self.root, "splits", f"labeled_{round(self.labeled_fraction * 100)}pct_seed{self.seed}.txt")

    @property
    def val_list(self) -> str:
        return os.path.join(self.root, "splits", f"val_seed{self.val_seed}.txt") if self.val_fraction else ""


@dataclasses.dataclass(frozen=True)
class DataSettings:
    """Where the shards are and how pixels look (shared by every stage)."""

    tfrecord_dir: str
    train_split: str = "train"
    test_split: str = "test"
    labeled_list: str = ""  # video-id list of the labeled subset; "" = every training video is labeled
    val_list: str = ""  # video-id list held out of the train split for validation; "" = none
    num_classes: int = 0  # 0 = from the manifest; otherwise checked against it
    crop_size: int = 112
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    shuffle_buffer: int = 0  # videos in the training shuffle buffers; 0 = auto (all, within ReadOptions' byte budget)
    seed: int = 0
    deterministic: bool = False
    # Random resized crop: side as a fraction of the frame's (official code: 0.5-1 for SSL, 0.4-1
    # for finetuning and the student). Small objects need larger crops to stay in view.
    ssl_crop_side: tuple[float, float] = augment.STRONG.crop_side
    crop_side: tuple[float, float] = augment.WEAK.crop_side

    def __post_init__(self):
        for name in ("tfrecord_dir", "labeled_list", "val_list"):  # identities record them: one spelling each
            object.__setattr__(self, name, absolute_path(getattr(self, name)))

    @property
    def ssl_augment(self) -> augment.AugmentConfig:
        return dataclasses.replace(augment.STRONG, crop_side=tuple(self.ssl_crop_side))

    @property
    def augment(self) -> augment.AugmentConfig:
        return dataclasses.replace(augment.WEAK, crop_side=tuple(self.crop_side))


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    backbone: str = "r3d18"
    width_multiplier: float = 1.0
    projection_hidden_dim: int = 512
    projection_dim: int = 128
    dropout: float = 0.5
    strided_conv: str = "auto"  # "auto" | "native" | "subsample" (tbkeras.models.r3d_layers)

    def __post_init__(self):
        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {self.backbone!r}; valid: {', '.join(BACKBONES)}")


@dataclasses.dataclass(frozen=True)
class SSLSettings:
    """Self-supervised pretraining (stages 1, 2 and the student's initialisation)."""

    train: TrainConfig
    batch_size: int = 8
    num_clips: int = 4
    clip_length: int = 16
    global_clip_length: int = 0  # 0 = clip_length (the paper's); L_D2 needs n temporal slices of it
    contrastive: ContrastiveConfig = ContrastiveConfig()
    tclr_weights: LossWeights = LossWeights()  # pretrain_ssl only
    # pretrain_invariant only (the other SSL stages ignore them): its epochs (0 = train.epochs) and
    # batches of one group each ("" = the paper's shuffled batches; see pipelines.SSLConfig).
    invariant_epochs: int = 0
    invariant_group_pattern: str = ""
    # pretrain_distinctive only: its epochs (0 = train.epochs).
    distinctive_epochs: int = 0
    # pretrain_ssl only: the same grouping for its batches (its L_I term is the one across videos;
    # L_D1 and L_D2 contrast clips of one video, which grouping leaves alone).
    tclr_group_pattern: str = ""

    # Each SSL stage's own fields: (its epochs, its batches' group pattern); None = none of its own.
    # A field of one stage is left out of the others' identities, so changing it reruns that stage alone.
    STAGE_FIELDS = {"pretrain_invariant": ("invariant_epochs", "invariant_group_pattern"),
                    "pretrain_distinctive": ("distinctive_epochs", None),
                    "pretrain_ssl": (None, "tclr_group_pattern")}

    def __post_init__(self):
        for epochs_field, pattern_field in self.STAGE_FIELDS.values():
            if epochs_field and getattr(self, epochs_field) < 0:
                raise ValueError(f"{epochs_field} must be >= 0 (0 = the SSL epochs), got {getattr(self, epochs_field)}")
            if pattern_field and getattr(self, pattern_field):
                pipelines.group_pattern_regex(getattr(self, pattern_field))

    def stage_settings(self, stage: str) -> tuple[dict[str, Any], str]:
        """The settings that define SSL stage `stage` (minus `train`) and its batches' group pattern
        ("" = shuffled batches): a setting of one stage alone does not make the others rerun."""
        others = {f for s, fields in self.STAGE_FIELDS.items() if s != stage for f in fields if f}
        settings = {k: v for k, v in _without_train(self).items() if k not in others}
        pattern_field = self.STAGE_FIELDS.get(stage, (None, None))[1]
        return settings, getattr(self, pattern_field) if pattern_field else ""

    def stage_epochs(self, stage: str) -> int:
        """SSL stage `stage`'s epochs: its own setting, else the shared `train.epochs`."""
        epochs_field = self.STAGE_FIELDS.get(stage, (None, None))[0]
        return (getattr(self, epochs_field) if epochs_field else 0) or self.train.epochs


@dataclasses.dataclass(frozen=True)
class TSTRSettings:
    """TSTR scoring (stage 3, Eq. 5-6): n evenly spaced clips over the whole video, L frames at
    `stride`, centre crop. Its own settings, not the SSL ones: the paper scores 4 clips of 16
    consecutive frames (Fig. 4, 4 x 4 matrices) even when a small run pretrains on fewer."""

    num_clips: int = 4
    clip_length: int = 16
    stride: int = 1
    batch_size: int = 8

    def __post_init__(self):
        if self.num_clips < 2:
            raise ValueError(f"tstr num_clips must be >= 2 (s averages pairs of clips), got {self.num_clips}")
        for name in ("clip_length", "stride", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"tstr {name} must be >= 1, got {getattr(self, name)}")


@dataclasses.dataclass(frozen=True)
class SupervisedSettings:
    """Teacher finetuning and the labels-only baseline."""

    train: TrainConfig
    batch_size: int = 8
    clip_length: int = 8
    stride: int = 2


# --student_init -> the SSL stage whose backbone the student starts from.
STUDENT_INITS = {"ssl": "pretrain_ssl", "invariant": "pretrain_invariant", "distinctive": "pretrain_distinctive"}


@dataclasses.dataclass(frozen=True)
class StudentSettings:
    train: TrainConfig
    labeled_batch_size: int = 4
    unlabeled_batch_size: int = 4
    clip_length: int = 8
    stride: int = 2
    # The SSL checkpoint the student starts from (STUDENT_INITS), or "random" (paper Table 7).
    # Algorithm 1 takes "any SSL method"; the paper's is TCLR, our pretrain_ssl.
    init: str = "ssl"
    distill: StudentConfig = StudentConfig()

    def __post_init__(self):
        if self.init not in (*STUDENT_INITS, "random"):
            raise ValueError(f"student init must be one of {', '.join(STUDENT_INITS)} or 'random', "
                             f"got {self.init!r}")

    @property
    def init_stage(self) -> str | None:
        """The SSL stage whose backbone the student starts from; None for a random start."""
        return STUDENT_INITS.get(self.init)


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """Multi-view evaluation; `models` picks the evaluated classifiers by short name (`EVALUATED`),
    () = every classifier stage that has finished."""

    num_clips: int = 10
    num_crops: int = 3
    batch_size: int = 2
    models: tuple[str, ...] = ()

    def __post_init__(self):
        unknown = [m for m in self.models if m not in EVALUATED]
        if unknown:
            raise ValueError(f"unknown evaluated model(s) {unknown}; valid: {', '.join(EVALUATED)}")


@dataclasses.dataclass(frozen=True)
class RecipeConfig:
    """Everything the recipe needs; `experiments/run.py` builds it from flags."""

    model_dir: str
    data: DataSettings
    ssl: SSLSettings
    finetune: SupervisedSettings
    student: StudentSettings
    model: ModelSettings = ModelSettings()
    evaluation: EvalSettings = EvalSettings()
    tstr: TSTRSettings = TSTRSettings()
    prepare: PrepareSettings | None = None
    supervised_baseline: bool = False
    supervised_init: str = "random"  # "random": labels only (Table 3 a); "ssl": pretrain_ssl finetuned (Table 2 a)
    # "finetune" (the paper) trains backbone and classifier; "frozen" the classifier alone on the
    # pretrained features (`ClassifierModel(train_backbone=False)`), for teachers and baseline apart.
    teacher_backbone: str = "finetune"
    supervised_backbone: str = "finetune"
    strategy: str = "default"
    tpu: str = ""
    num_gpus: int = 0
    mixed_precision: str = "float32"

    def __post_init__(self):
        if self.supervised_init not in ("random", "ssl"):
            raise ValueError(f"supervised_init must be 'random' or 'ssl', got {self.supervised_init!r}")
        for name in ("teacher_backbone", "supervised_backbone"):
            if getattr(self, name) not in BACKBONE_TRAINING:
                raise ValueError(f"{name} must be one of {BACKBONE_TRAINING}, got {getattr(self, name)!r}")
        if self.supervised_backbone == "frozen" and self.supervised_init != "ssl":
            raise ValueError("supervised_backbone='frozen' needs supervised_init='ssl': "
                             "a classifier on frozen random features learns nothing worth comparing")


BACKBONE_TRAINING = ("finetune", "frozen")


def stage_dir(config: RecipeConfig, stage: str) -> str:
    return os.path.join(config.model_dir, stage)


def stages_for_all(config: RecipeConfig) -> list[str]:
    """The stages `--stage=all` runs, in order."""
    wanted = []
    for stage in STAGES:
        if stage == "prepare_data" and config.prepare is None:
            continue
        if stage == "pretrain_ssl" and config.student.init_stage != "pretrain_ssl" and not (
                config.supervised_baseline and config.supervised_init == "ssl"):
            continue
        if stage == "tstr" and not config.student.distill.needs_scores:
            continue
        if stage == "supervised" and not config.supervised_baseline:
            continue
        wanted.append(stage)
    return wanted


class Recipe:
    """Runs stages of one `RecipeConfig`; builds the strategy once, models per stage."""

    def __init__(self, config: RecipeConfig):
        self.config = config
        self._strategy = None
        self._strided_conv: str | None = None

    # ------------------------------------------------------------------------------ plumbing
    @property
    def strategy(self) -> tf.distribute.Strategy:
        if self._strategy is None:
            self._strategy = get_strategy(self.config.strategy, tpu=self.config.tpu, num_gpus=self.config.num_gpus)
        return self._strategy

    def run(self, stage: str) -> dict[str, Any]:
        """Run one stage, or every stage for "all"; returns {stage: metrics}."""
        if stage == "all":
            results = {}
            for name in stages_for_all(self.config):
                results.update(self.run(name))
            return results
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; valid: {', '.join(STAGES + ('all',))}")
        keras.config.set_dtype_policy(self.config.mixed_precision)
        if stage != "prepare_data":
            self._resolved_strided_conv()  # a first measurement draws weights: before the seed below
        # Every stage draws its initial weights (and dropout masks) from the run's seed.
        keras.utils.set_random_seed(self.config.data.seed)
        return {stage: getattr(self, f"_{stage}")()}

    def _train(self, train: TrainConfig) -> TrainConfig:
        return dataclasses.replace(train, mixed_precision=self.config.mixed_precision)

    def _done_config(self, stage: str) -> dict[str, Any]:
        """The settings a finished stage ran with; an error naming the stage if it has not run."""
        stage_path = stage_dir(self.config, stage)
        marker = StageDir(stage_path)
        if not tf.io.gfile.exists(marker.done_path):
            raise FileNotFoundError(
                f"stage {stage!r} has not finished in {stage_path}: run --stage={stage} first (or --stage=all)")
        return marker.read_done()["config"]

    def _identity(self, *, uses_labels: bool = True, **parts: Any) -> dict[str, Any]:
        """What defines a training stage besides its TrainConfig: the data, the model and `parts`.
        A stage that reads no label (SSL) does not depend on the labeled list, so one pretraining
        serves every labeled fraction."""
        data = dataclasses.asdict(self.config.data)
        if not uses_labels:
            del data["labeled_list"]
        return {"data": data, "model": dataclasses.asdict(self.config.model), **parts}

    def _class_names(self) -> list[str]:
        """Class names from the train manifest, checked against the configured class count."""
        data = self.config.data
        classes = list(manifest.load_manifest(data.tfrecord_dir, data.train_split)["classes"])
        if data.num_classes and data.num_classes != len(classes):
            raise ValueError(
                f"num_classes={data.num_classes} but the manifest of {data.tfrecord_dir} "
                f"({data.train_split}) lists {len(classes)} classes")
        return classes

    def _source(self, split: str, *, labeled: bool | None = None) -> pipelines.VideoSource:
        """A split, or its labeled / unlabeled part (by the labeled list); the training split
        never yields a video of the validation list."""
        data = self.config.data
        listed = data.labeled_list or None
        held_out = (data.val_list,) if data.val_list and split == data.train_split else ()
        if labeled is None or listed is None:
            if labeled is False:
                raise ValueError("the student stage needs unlabeled videos: set the labeled list (--labeled_list)")
            return pipelines.VideoSource(data.tfrecord_dir, split, exclude_ids_file=held_out or None)
        if labeled:
            return pipelines.VideoSource(data.tfrecord_dir, split, include_ids_file=listed,
                                         exclude_ids_file=held_out or None)
        return pipelines.VideoSource(data.tfrecord_dir, split, exclude_ids_file=(listed, *held_out))

    def _val_source(self) -> pipelines.VideoSource | None:
        """The validation videos (from the training shards), or None without a validation list."""
        data = self.config.data
        if not data.val_list:
            return None
        return pipelines.VideoSource(data.tfrecord_dir, data.train_split, include_ids_file=data.val_list)

    def _pixels(self) -> pipelines.PixelFormat:
        # Under mixed_bfloat16 the first layer casts clips to bfloat16 anyway: the pipelines emit
        # them so, which halves the bytes they batch and copy to the accelerator (same outputs).
        data = self.config.data
        dtype = "bfloat16" if self.config.mixed_precision == "mixed_bfloat16" else "float32"
        return pipelines.PixelFormat(crop_size=data.crop_size, mean=data.mean, std=data.std, dtype=dtype)

    def _read(self, training: bool = True) -> pipelines.ReadOptions:
        data = self.config.data
        return pipelines.ReadOptions(shuffle_buffer=data.shuffle_buffer if training else 1,
                                     seed=data.seed, deterministic=data.deterministic)

    def _distributed(self, pipeline: Callable, config: Any):
        if self.strategy.num_replicas_in_sync == 1:
            return pipeline(config)
        return pipelines.distribute(self.strategy, pipeline, config)

    def _resolved_strided_conv(self) -> str:
        """`model.strided_conv`, with "auto" measured once at the finetuning shape (clips per step,
        clip length, crop) on this CPU and cached per CPU model (`tbkeras.models.strided_conv`)."""
        if self._strided_conv is None:
            m, ft = self.config.model, self.config.finetune
            probe = StridedConvProbe(backbone=m.backbone, width_multiplier=m.width_multiplier,
                                     batch_size=max(ft.batch_size // self.strategy.num_replicas_in_sync, 1),
                                     clip_shape=(ft.clip_length, self.config.data.crop_size, self.config.data.crop_size))
            self._strided_conv = resolve_strided_conv(m.strided_conv, probe)
            logging.info("strided_conv=%s -> %s", m.strided_conv, self._strided_conv)
        return self._strided_conv

    def _backbone(self, name: str) -> keras.Model:
        m = self.config.model
        return build_backbone(m.backbone, width_multiplier=m.width_multiplier,
                              strided_conv=self._resolved_strided_conv(), name=name)

    def _head(self) -> ProjectionHead:
        m = self.config.model
        return ProjectionHead(hidden_dim=m.projection_hidden_dim, output_dim=m.projection_dim,
                              name="projection_head")

    def _classifier(self, num_classes: int, name: str, backbone_training: str = "finetune") -> ClassifierModel:
        return ClassifierModel(self._backbone(f"{name}_backbone"), num_classes, dropout=self.config.model.dropout,
                               train_backbone=backbone_training == "finetune", name=name)

    # --------------------------------------------------------------------------------- stages
    def _prepare_data(self) -> dict[str, Any]:
        prep = self.config.prepare
        if prep is None:
            raise ValueError("prepare_data makes the demo's synthetic dataset: it needs the synthetic settings "
                             "(--synthetic_dir), which this configuration does not have")
        marker = StageDir(stage_dir(self.config, "prepare_data"))
        identity = {"prepare": dataclasses.asdict(prep)}
        done = _finished(marker.path, identity)
        if done is not None:
            return done
        video_root = os.path.join(prep.root, "synthetic")
        synthetic.generate_dataset(prep.synthetic, video_root, workers=prep.workers)
        counts = {}
        for split in ("train", "test"):
            entries, classes = splits.parse_layout("ucf101", os.path.join(video_root, "videos"),
                                                   os.path.join(video_root, "splits"), split, 1)
            summary = converter.convert(entries, classes, converter.ConversionConfig(
                output_dir=prep.tfrecord_dir, split=split, num_shards=min(prep.num_shards, len(entries)),
                workers=prep.workers, short_side=prep.short_side, show_progress=False))
            counts[f"{split}_videos"] = summary.num_written
            counts[f"{split}_failed"] = summary.num_failed
        header, lines = splits.read_list_lines(os.path.join(video_root, "splits", "trainlist01.txt"))
        if prep.val_fraction:
            lines, val = splits.validation_split(lines, fraction=prep.val_fraction, seed=prep.val_seed)
            atomic_write_text(prep.val_list, splits.format_list_file(header, val))
            counts["val_videos"] = len(val)
        labeled, _ = splits.stratified_subset(lines, fraction=prep.labeled_fraction, seed=prep.seed)
        atomic_write_text(prep.labeled_list, splits.format_list_file(header, labeled))
        counts["labeled_videos"] = len(labeled)
        marker.mark_done(identity, counts)
        return counts

    def _pretrain(self, stage: str, model_cls: Callable, extra: dict, views: int = 2) -> dict[str, Any]:
        ssl = self.config.ssl
        train = self._train(ssl.train)
        settings, group_pattern = ssl.stage_settings(stage)
        train = dataclasses.replace(train, epochs=ssl.stage_epochs(stage))
        identity = self._identity(uses_labels=False, ssl=settings, **extra)
        path = stage_dir(self.config, stage)
        done = _finished(path, stage_identity(train, identity), checkpoints.BACKBONE_WEIGHTS, checkpoints.HEAD_WEIGHTS)
        if done is not None:
            return done
        with self.strategy.scope():
            model = model_cls(self._backbone(f"{stage}_backbone"), self._head(), **_pretrainer_kwargs(model_cls, ssl))
        dataset = self._distributed(pipelines.ssl_dataset, pipelines.SSLConfig(
            source=self._source(self.config.data.train_split), batch_size=ssl.batch_size,
            num_clips=ssl.num_clips, clip_length=ssl.clip_length, global_clip_length=ssl.global_clip_length or None,
            views=views, augment=self.config.data.ssl_augment,
            pixels=self._pixels(), read=self._read(),
            group_pattern=group_pattern))
        result = fit_stage(model, dataset, stage_dir=path, config=train, stage_config=identity)
        checkpoints.save_encoder(path, model.backbone, model.head)
        return result.metrics

    def _pretrain_invariant(self) -> dict[str, Any]:
        # L_I compares clips of one view: a second augmented view would only cost time.
        return self._pretrain("pretrain_invariant", InvariantPretrainer, {"objective": "invariant"}, views=1)

    def _pretrain_distinctive(self) -> dict[str, Any]:
        return self._pretrain("pretrain_distinctive", DistinctivePretrainer, {"objective": "distinctive"})

    def _pretrain_ssl(self) -> dict[str, Any]:
        return self._pretrain("pretrain_ssl", SSLPretrainer,
                              {"objective": "tclr", "weights": dataclasses.asdict(self.config.ssl.tclr_weights)})

    def _tstr(self) -> dict[str, Any]:
        path = stage_dir(self.config, "tstr")
        marker = StageDir(path)
        identity = {"tstr": dataclasses.asdict(self.config.tstr),
                    "pretrain_invariant": self._done_config("pretrain_invariant"),
                    "pretrain_distinctive": self._done_config("pretrain_distinctive")}
        done = _finished(path, identity, SCORES_FILE, HISTOGRAM_FILE, MATRICES_FILE)
        if done is not None:
            return done
        encoders = {}
        for kind in TEACHER_KINDS:
            backbone, head = self._backbone(f"{kind}_backbone"), self._head()
            checkpoints.load_encoder(stage_dir(self.config, f"pretrain_{kind}"), backbone, head)
            encoders[kind] = (backbone, head)
        ts = self.config.tstr
        dataset = pipelines.tstr_dataset(pipelines.TSTRConfig(
            source=self._source(self.config.data.train_split), batch_size=ts.batch_size, num_clips=ts.num_clips,
            clip_length=ts.clip_length, stride=ts.stride, pixels=self._pixels(), read=self._read(training=False)))
        result = score_videos(*encoders["invariant"], *encoders["distinctive"], dataset, keep_matrices=True)
        class_names = self._class_names()
        kinds = self._class_kinds(class_names)
        summary = write_scores(os.path.join(path, SCORES_FILE), result.scores, labels=result.labels,
                               class_names=class_names, class_kinds=kinds)
        log_dir = os.path.join(path, "tensorboard")
        write_tensorboard_summaries(log_dir, result.scores)
        write_figures(path, result, class_names=class_names, class_kinds=kinds, log_dir=log_dir)
        metrics = {k: summary[k] for k in ("count", "mean", "std", "min", "max")}
        for kind, stats in summary.get("per_kind", {}).items():
            metrics[f"{kind}_mean_s"], metrics[f"{kind}_count"] = stats["mean"], stats["count"]
        marker.mark_done(identity, metrics)
        return metrics

    def _class_kinds(self, class_names: list[str]) -> list[str] | None:
        """Each class's kind, repetitive or order-dependent (Fig. 4), or None: only the synthetic
        data generated by prepare_data knows them."""
        return synthetic_class_kinds(class_names) if self.config.prepare is not None else None

    def _fit_classifier(self, path: str, identity: dict, settings: SupervisedSettings,
                        pretrain_dir: str | None, backbone_training: str) -> dict[str, Any]:
        """Labeled cross-entropy training of backbone + classifier (teachers, baseline);
        `backbone_training` "frozen" trains the classifier alone."""
        train = self._train(settings.train)
        done = _finished(path, stage_identity(train, identity))
        if done is not None:
            return done
        num_classes = len(self._class_names())
        with self.strategy.scope():
            model = self._classifier(num_classes, name="classifier_model", backbone_training=backbone_training)
            if pretrain_dir is not None:
                load_pretrained_backbone(model, pretrain_dir)
        dataset = self._distributed(pipelines.supervised_dataset, pipelines.SupervisedConfig(
            source=self._source(self.config.data.train_split, labeled=True), batch_size=settings.batch_size,
            clip_length=settings.clip_length, stride=settings.stride, augment=self.config.data.augment,
            pixels=self._pixels(), read=self._read()))
        return fit_stage(model, dataset, stage_dir=path, config=train, stage_config=identity).metrics

    def _finetune_teachers(self) -> dict[str, Any]:
        metrics = {}
        for kind in TEACHER_KINDS:
            pretrain = f"pretrain_{kind}"
            identity = self._identity(finetune=dataclasses.asdict(self.config.finetune),
                                      backbone=self.config.teacher_backbone, **{pretrain: self._done_config(pretrain)})
            metrics[kind] = self._fit_classifier(os.path.join(stage_dir(self.config, "finetune_teachers"), kind),
                                                 identity, self.config.finetune, stage_dir(self.config, pretrain),
                                                 self.config.teacher_backbone)
        return metrics

    def _supervised(self) -> dict[str, Any]:
        init = self.config.supervised_init
        upstream = {"pretrain_ssl": self._done_config("pretrain_ssl")} if init == "ssl" else {}
        identity = self._identity(finetune=dataclasses.asdict(self.config.finetune), init=init,
                                  backbone=self.config.supervised_backbone, **upstream)
        return self._fit_classifier(stage_dir(self.config, "supervised"), identity, self.config.finetune,
                                    stage_dir(self.config, "pretrain_ssl") if init == "ssl" else None,
                                    self.config.supervised_backbone)

    def _teacher(self, kind: str, num_classes: int) -> ClassifierModel:
        path = os.path.join(stage_dir(self.config, "finetune_teachers"), kind)
        teacher = self._classifier(num_classes, name=f"{kind}_teacher",
                                   backbone_training=_backbone_training(StageDir(path).read_done()["config"]))
        checkpoints.load_weights_verified(teacher, StageDir(path).final_weights_path, what=f"finetuned {kind} teacher")
        return teacher

    def _initial_student(self, num_classes: int) -> ClassifierModel:
        """The student before distillation: random, or the backbone of its SSL init stage."""
        student = self._classifier(num_classes, name="student")
        if self.config.student.init_stage is not None:
            load_pretrained_backbone(student, stage_dir(self.config, self.config.student.init_stage))
        return student

    def _student(self) -> dict[str, Any]:
        st = self.config.student
        train = self._train(st.train)
        path = stage_dir(self.config, "student")
        upstream = {"finetune_teachers/" + k: self._done_config(f"finetune_teachers/{k}") for k in TEACHER_KINDS
                    if st.distill.teachers in ("both", k)}
        if st.distill.needs_scores:
            upstream["tstr"] = self._done_config("tstr")
        if st.init_stage is not None:
            upstream[st.init_stage] = self._done_config(st.init_stage)
        identity = self._identity(student=_without_train(st), **upstream)
        done = _finished(path, stage_identity(train, identity), checkpoints.CLASSIFIER_WEIGHTS)
        if done is not None:
            return done
        num_classes = len(self._class_names())
        with self.strategy.scope():
            student = self._initial_student(num_classes)
            teachers = {k: self._teacher(k, num_classes) if st.distill.teachers in ("both", k) else None
                        for k in TEACHER_KINDS}
            model = StudentDistiller(student, teachers["invariant"], teachers["distinctive"], st.distill)
        scores = os.path.join(stage_dir(self.config, "tstr"), SCORES_FILE) if st.distill.needs_scores else None
        train_split = self.config.data.train_split
        dataset = self._distributed(pipelines.student_dataset, pipelines.StudentConfig(
            labeled=self._source(train_split, labeled=True), unlabeled=self._source(train_split, labeled=False),
            labeled_batch_size=st.labeled_batch_size, unlabeled_batch_size=st.unlabeled_batch_size,
            clip_length=st.clip_length, stride=st.stride, scores_file=scores, augment=self.config.data.augment,
            pixels=self._pixels(), read=self._read()))
        result = fit_stage(model, dataset, stage_dir=path, config=train, stage_config=identity)
        checkpoints.save_weights(student, os.path.join(path, checkpoints.CLASSIFIER_WEIGHTS))
        return result.metrics

    def _evaluated_models(self) -> dict[str, str]:
        """{row name: classifier weights file} of the finished classifier stages to evaluate."""
        finetuned = stage_dir(self.config, "finetune_teachers")
        stages = {"invariant": StageDir(os.path.join(finetuned, "invariant")),
                  "distinctive": StageDir(os.path.join(finetuned, "distinctive")),
                  "supervised": StageDir(stage_dir(self.config, "supervised")),
                  "student": StageDir(stage_dir(self.config, "student"))}
        wanted = self.config.evaluation.models
        for name in wanted:
            if not tf.io.gfile.exists(stages[name].done_path):
                stage = "finetune_teachers" if name in TEACHER_KINDS else name
                raise FileNotFoundError(f"stage {stage!r} has not finished in {stages[name].path}: run "
                                        f"--stage={stage} first (or --stage=all)")
        found = {EVALUATED[name]: (os.path.join(stage.path, checkpoints.CLASSIFIER_WEIGHTS) if name == "student"
                                   else stage.final_weights_path)
                 for name, stage in stages.items()
                 if (name in wanted if wanted else tf.io.gfile.exists(stage.done_path))}
        if not found:
            raise FileNotFoundError(f"no classifier stage has finished under {self.config.model_dir}: run "
                                    "--stage=student (or finetune_teachers, supervised) first, or --stage=all")
        return found

    def eval_datasets(self, parts: tuple[str, ...]) -> dict[str, tf.data.Dataset]:
        """The evaluation's multi-view datasets (`pipelines.eval_dataset`) of `parts`: "val" (skipped
        without a validation list), the test split's name, or "labeled" / "unlabeled" (the
        training split by the labeled list, validation videos excluded)."""
        data, ev, sup = self.config.data, self.config.evaluation, self.config.finetune
        sources = {VAL_SPLIT: self._val_source, data.test_split: lambda: self._source(data.test_split),
                   "labeled": lambda: self._source(data.train_split, labeled=True),
                   "unlabeled": lambda: self._source(data.train_split, labeled=False)}
        unknown = [p for p in parts if p not in sources]
        if unknown:
            raise ValueError(f"eval_datasets: unknown part(s) {unknown}; choose from {list(sources)}")
        datasets = {}
        for part in parts:
            source = sources[part]()
            if source is not None:
                datasets[part] = pipelines.eval_dataset(pipelines.EvalConfig(
                    source=source, batch_size=ev.batch_size, num_clips=ev.num_clips, num_crops=ev.num_crops,
                    clip_length=sup.clip_length, stride=sup.stride, pixels=self._pixels(),
                    read=self._read(training=False)))
        return datasets

    def pretrained_backbone(self, stage: str | None) -> keras.Model:
        """The backbone of a finished SSL stage ("pretrain_invariant", "pretrain_distinctive",
        "pretrain_ssl"), or a freshly initialised one for None."""
        model = self._classifier(len(self._class_names()), name=f"{stage or 'random'}_probe")
        if stage is not None:
            load_pretrained_backbone(model, stage_dir(self.config, stage))
        return model.backbone

    def _evaluate(self) -> dict[str, Any]:
        path = stage_dir(self.config, "evaluate")
        marker = StageDir(path)
        weights = self._evaluated_models()
        data = self.config.data
        identity = {"evaluation": dataclasses.asdict(self.config.evaluation), "val_list": data.val_list,
                    "models": {name: StageDir(os.path.dirname(w)).read_done()["config"] for name, w in weights.items()}}
        if is_done(path, identity):
            metrics = marker.read_done()["metrics"]
        else:
            class_names = self._class_names()
            kinds = self._class_kinds(class_names)
            # The validation videos first: settings are chosen on them, the test split only reports.
            datasets = self.eval_datasets((VAL_SPLIT, data.test_split))
            metrics = {}
            for name, weights_file in weights.items():
                slug = name.replace(" ", "_")
                model = self._classifier(len(class_names), name=slug,
                                         backbone_training=_backbone_training(identity["models"][name]))
                checkpoints.load_weights_verified(model, weights_file, what=f"{name} weights")
                metrics[name] = {}
                for split, dataset in datasets.items():
                    result = evaluate_classifier(model, dataset, len(class_names), class_names)
                    prefix = "" if split == data.test_split else f"{split}_"
                    write_evaluation(os.path.join(path, f"{prefix}{slug}.json"), result)
                    figures.log_png(os.path.join(path, "tensorboard"), f"evaluate/{prefix}confusion_{slug}",
                                    figures.plot_confusion_matrix(
                                        os.path.join(path, f"{prefix}confusion_{slug}.png"), result.confusion,
                                        class_names, title=f"{name} on '{split}': top-1 {100 * result.top1:.1f}%"))
                    scores = {"top1": result.top1, "top5": result.top5,
                              "mean_class_accuracy": result.mean_class_accuracy, "videos": result.num_videos}
                    if kinds is not None:
                        scores["top1_by_kind"] = top1_by_group(result.confusion, kinds)
                    if split == data.test_split:
                        metrics[name].update(scores)
                    else:
                        metrics[name][split] = scores
            atomic_write_text(os.path.join(path, "results.md"), results_table(metrics, data.test_split))
            marker.mark_done(identity, metrics)
        logging.info("evaluation:\n%s", results_table(metrics, data.test_split))
        return metrics

    def _export(self) -> dict[str, Any]:
        path = stage_dir(self.config, "export")
        marker = StageDir(path)
        export_dir = os.path.join(path, "student")
        student_done = self._done_config("student")
        class_names = self._class_names()
        data, ev, sup = self.config.data, self.config.evaluation, self.config.finetune
        # serve_video takes the evaluation's views; predict.py decodes files as the converter did.
        conversion = manifest.load_manifest(data.tfrecord_dir, data.train_split)["flags"]
        export_config = export_lib.ExportConfig(
            clip_length=sup.clip_length, crop_size=data.crop_size, mean=data.mean, std=data.std,
            class_names=tuple(class_names), num_clips=ev.num_clips, num_crops=ev.num_crops, stride=sup.stride,
            short_side=int(conversion.get("short_side", 0)), fps=float(conversion.get("fps", 0.0)),
            jpeg_quality=int(conversion.get("jpeg_quality", 90)))
        identity = {"student": student_done, "data": dataclasses.asdict(data),
                    "export": dataclasses.asdict(export_config)}
        done = _finished(path, identity, "student")
        if done is not None:
            return done
        student = self._classifier(len(class_names), name="student")
        checkpoints.load_weights_verified(
            student, os.path.join(stage_dir(self.config, "student"), checkpoints.CLASSIFIER_WEIGHTS), what="student weights")
        export_lib.export_classifier(student, export_dir, export_config)
        metrics = {"export_dir": export_dir, "num_classes": len(class_names)}
        marker.mark_done(identity, metrics)
        return metrics


def _finished(path: str, identity: dict, *outputs: str) -> dict[str, Any] | None:
    """The metrics of a stage that is DONE with `identity` and has all its `outputs`, else None.

    A stage is killed between writing DONE and a file saved after it only rarely, but then the
    stage runs again: `fit_stage` sees its DONE, loads the final weights instead of training, and
    the missing file is written from them.
    """
    if not is_done(path, identity):
        return None
    if not all(tf.io.gfile.exists(os.path.join(path, name)) for name in outputs):
        return None
    return StageDir(path).read_done()["metrics"]


def _backbone_training(done_config: dict[str, Any]) -> str:
    """How a finished classifier stage trained its backbone ("finetune" / "frozen"), from the config
    its DONE records: the two kinds have different weights, and a checkpoint loads into its own."""
    return done_config["stage"].get("backbone", "finetune")


def _without_train(settings: Any) -> dict[str, Any]:
    """A stage's settings minus its TrainConfig, which `stage_identity` records on its own."""
    return {k: v for k, v in dataclasses.asdict(settings).items() if k != "train"}


def _pretrainer_kwargs(model_cls: Callable, ssl: SSLSettings) -> dict[str, Any]:
    """Constructor settings of a pretrainer class: the TCLR weights only for the full objective."""
    if model_cls is SSLPretrainer:
        return {"config": ssl.contrastive, "weights": ssl.tclr_weights}
    return {"config": ssl.contrastive}


def _percent(fraction: float | None) -> str:
    return "-" if fraction is None else f"{100 * fraction:.1f}"


def results_table(metrics: dict[str, dict[str, Any]], test_split: str = "test") -> str:
    """A Markdown table of the evaluated models: validation top-1 (when there is a validation list),
    then test top-1 / top-5 / mean class accuracy and, where the data knows its classes' kinds, the
    test top-1 of each kind, with the standard error of a top-1 in the caption."""
    with_val = any(VAL_SPLIT in m for m in metrics.values())
    kinds = list(dict.fromkeys(k for m in metrics.values() for k in m.get("top1_by_kind", {})))
    head = ("| model |" + (" val top-1 |" if with_val else "") + f" {test_split} top-1 | top-5 | mean class acc. |"
            + "".join(f" {test_split} top-1, {kind} classes |" for kind in kinds))
    rows = [head, "|---|" + ("---:|" if with_val else "") + "---:|---:|---:|" + "---:|" * len(kinds)]
    for name, m in metrics.items():
        val = f" {100 * m[VAL_SPLIT]['top1']:.1f} |" if with_val else ""
        by_kind = m.get("top1_by_kind", {})
        rows.append(f"| {name} |{val} {100 * m['top1']:.1f} | {100 * m['top5']:.1f} | "
                    f"{100 * m['mean_class_accuracy']:.1f} |"
                    + "".join(f" {_percent(by_kind.get(kind))} |" for kind in kinds))
    counts = []
    for split, videos in ((VAL_SPLIT, next((m[VAL_SPLIT]["videos"] for m in metrics.values() if VAL_SPLIT in m), 0)),
                          (test_split, next(iter(metrics.values()))["videos"] if metrics else 0)):
        if videos:
            # Binomial standard error of a top-1 near 50%, its largest: sqrt(0.25 / N).
            counts.append(f"{videos} {split} videos (standard error of a top-1 <= {100 * (0.25 / videos) ** 0.5:.1f} points)")
    return "\n".join(rows) + "\n\n" + "; ".join(counts) + ".\n"
