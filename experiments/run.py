"""Run a stage of the TimeBalance recipe, or the whole recipe, from flags.

    python experiments/run.py --flagfile=experiments/demo.flags            # whole recipe, CPU, minutes
    python experiments/run.py --flagfile=experiments/ucf101_student.flags  # the student stage on UCF101
    python experiments/run.py --flagfile=experiments/ucf101_student.flags --stage=all

Every stage writes under `--model_dir/<stage>/` (checkpoints, TensorBoard logs, its resolved
config, a DONE marker). A killed stage resumes from its backup; a finished one is skipped.
This file only turns flags into a `tbkeras.recipe.RecipeConfig`; the recipe lives in the library.
"""
import os
import sys

from absl import app, flags, logging

FLAGS = flags.FLAGS
STAGE_CHOICES = ["prepare_data", "pretrain_invariant", "pretrain_distinctive", "pretrain_ssl", "tstr",
                 "finetune_teachers", "supervised", "student", "evaluate", "export", "all"]

# Runner.
flags.DEFINE_enum("stage", "all", STAGE_CHOICES, "Which stage to run; 'all' runs the recipe in order.")
flags.DEFINE_string("model_dir", None, "Where every stage writes its outputs.")
flags.DEFINE_enum("strategy", "default", ["default", "one_device", "mirrored", "multi_worker_mirrored", "tpu"],
                  "tf.distribute strategy (multi_worker_mirrored reads TF_CONFIG).")
flags.DEFINE_string("tpu", "", "TPU name or address, with --strategy=tpu.")
flags.DEFINE_integer("num_gpus", 0, "GPUs for --strategy=mirrored/one_device (0 = all visible / CPU).")
flags.DEFINE_enum("mixed_precision", "float32", ["float32", "mixed_bfloat16", "mixed_float16"],
                  "Keras dtype policy (mixed_bfloat16 is 2-3x faster on recent CPUs).")
flags.DEFINE_bool("jit_compile", False, "XLA-compile train steps (slower on CPU; try it on GPU/TPU).")
flags.DEFINE_integer("intra_op_threads", 0, "TensorFlow intra-op threads (0 = TensorFlow's default).")
flags.DEFINE_integer("inter_op_threads", 0, "TensorFlow inter-op threads (0 = TensorFlow's default).")
flags.DEFINE_bool("tune_malloc", True, "Keep freed memory in the process (glibc; tbkeras.malloc): large tensors "
                  "stop page-faulting in on every allocation (SSL input: 8-21% less CPU per clip).")

# Data.
flags.DEFINE_string("tfrecord_dir", "", "Shards + manifests from build_tfrecords.py.")
flags.DEFINE_string("train_split", "train", "Split name of the training shards.")
flags.DEFINE_string("test_split", "test", "Split name of the evaluation shards.")
flags.DEFINE_string("labeled_list", "", "List of the labeled training videos (make_splits.py); the rest is unlabeled.")
flags.DEFINE_string("val_list", "", "List of training videos held out for validation (make_splits.py --val_fraction): "
                    "no stage trains on them; evaluate reports them beside the test split. Choose settings on "
                    "them, never on the test split.")
flags.DEFINE_integer("num_classes", 0, "Expected class count (0 = read from the manifest; else checked against it).")
flags.DEFINE_integer("crop_size", 112, "Square crop fed to the network.")
flags.DEFINE_list("normalize_mean", [], "Per-channel mean subtracted from [0,1] RGB pixels (empty = none).")
flags.DEFINE_list("normalize_std", [], "Per-channel std dividing the pixels (with --normalize_mean).")
flags.DEFINE_integer("shuffle_buffer", 0, "Videos in the training shuffle buffers; 0 = auto (all videos read, within ~1 GiB).")
flags.DEFINE_integer("seed", 0, "Seed of the input pipelines, of every stage's weight initialisation and of the "
                     "synthetic labeled subset.")
flags.DEFINE_list("ssl_crop_side", ["0.5", "1.0"], "SSL random resized crop: side range, fraction of the frame's.")
flags.DEFINE_list("crop_side", ["0.4", "1.0"], "Finetuning/student random resized crop: side range, fraction of the frame's.")
flags.DEFINE_bool("deterministic", False, "Identical batches run to run (slower input).")

# Demo data (prepare_data stage).
flags.DEFINE_string("synthetic_dir", "", "If set, prepare_data generates a synthetic dataset here and the "
                    "recipe trains on it (--tfrecord_dir and --labeled_list then default to it).")
flags.DEFINE_integer("synthetic_classes", 8, "Classes of the synthetic dataset.")
flags.DEFINE_integer("synthetic_videos_per_class", 40, "Videos per class of the synthetic dataset.")
flags.DEFINE_integer("synthetic_frames", 64, "Frames per synthetic video.")
flags.DEFINE_integer("synthetic_size", 96, "Height and width of the synthetic videos.")
flags.DEFINE_float("labeled_fraction", 0.2, "Labeled fraction of the synthetic training set (stratified).")
flags.DEFINE_float("val_fraction", 0.0, "Fraction of the synthetic training groups held out for validation (0 = none).")
flags.DEFINE_integer("val_seed", 0, "Which synthetic groups are held out for validation (apart from --seed).")
flags.DEFINE_float("synthetic_test_fraction", 0.28, "Fraction of the synthetic groups in the test split.")
flags.DEFINE_float("synthetic_class_shape_probability", 0.0,
                   "Chance that a synthetic video's object takes its class family's typical shape "
                   "(appearance hints at the class, never at a composite's order).")
flags.DEFINE_integer("synthetic_seed", 0, "Seed of the synthetic videos themselves (--seed varies the rest).")
flags.DEFINE_integer("prepare_workers", 2, "Processes generating and converting the synthetic videos.")

# Model.
flags.DEFINE_enum("backbone", "r3d18", ["r3d18", "r3d50"], "Backbone of teachers and student.")
flags.DEFINE_float("width_multiplier", 1.0, "Channel width multiplier (e.g. 0.25 for CPU demos).")
flags.DEFINE_integer("projection_dim", 128, "Projection head output size.")
flags.DEFINE_integer("projection_hidden_dim", 512, "Projection head hidden size.")
flags.DEFINE_float("dropout", 0.5, "Dropout before the classifier.")
flags.DEFINE_enum("strided_conv", "auto", ["auto", "native", "subsample"],
                  "Strided Conv3D in training: native, or stride 1 + subsampling (faster gradient on some CPUs); "
                  "same outputs. auto = whichever trains faster on this CPU, timed once at the finetuning "
                  "shape and cached per CPU model in $TBKERAS_CACHE_DIR (default ~/.cache/tbkeras); native "
                  "with a GPU/TPU.")

# Optimisation, shared by the stages.
flags.DEFINE_integer("warmup_epochs", 10, "Linear learning-rate warmup, in epochs.")
flags.DEFINE_integer("plateau_patience", 5, "Halve the lr after this many epochs without a lower training loss.")
flags.DEFINE_enum("lr_schedule", "plateau", ["plateau", "cosine"], "After warmup: halve the lr on a training-loss "
                  "plateau (paper), or a cosine decay to the minimum lr at the last step.")
flags.DEFINE_string("profile_batch", "0", "TensorBoard profiler batch: N or 'start,stop' (0 = off).")
flags.DEFINE_enum("nan_action", "stop", ["stop", "restore"],
                  "On a non-finite loss: stop naming the step, or restore the last good weights and go on.")
flags.DEFINE_string("log_every", "epoch", "TensorBoard update frequency: 'epoch' or a number of steps.")

# Self-supervised pretraining.
flags.DEFINE_integer("ssl_batch_size", 8, "Videos per SSL batch (global).")
flags.DEFINE_integer("ssl_num_clips", 4, "Clips (timestamps) n per video.")
flags.DEFINE_integer("ssl_clip_length", 16, "Frames per SSL clip.")
flags.DEFINE_integer("ssl_global_clip_length", 0, "Frames of the global clip of L_D2, spread over the n local clips "
                     "(0 = --ssl_clip_length, the paper's); it must keep n temporal slices through the backbone.")
flags.DEFINE_integer("ssl_epochs", 100, "SSL pretraining epochs.")
flags.DEFINE_integer("ssl_steps_per_epoch", 100, "SSL steps per epoch.")
flags.DEFINE_integer("invariant_epochs", 0, "Epochs of pretrain_invariant alone (0 = --ssl_epochs).")
flags.DEFINE_integer("distinctive_epochs", 0, "Epochs of pretrain_distinctive alone (0 = --ssl_epochs).")
flags.DEFINE_string("invariant_group_pattern", "", "Batch pretrain_invariant's videos by group: a regex whose first "
                    "capture group, searched in the video id, names the group (UCF101 and the synthetic data: "
                    "'_g(\\d+)_c\\d+$'), so L_I's negatives share the scene. '' (the paper) = shuffled batches. "
                    "With --gather_negatives the replicas' groups differ.")
flags.DEFINE_float("ssl_lr", 1e-3, "Adam learning rate of SSL pretraining.")
flags.DEFINE_float("temperature", 0.1, "Contrastive temperature tau.")
flags.DEFINE_enum("denominator", "standard", ["standard", "paper"],
                  "NT-Xent denominator: 'standard' (positive included, official code) or 'paper' (Eq. 1/3).")
flags.DEFINE_bool("gather_negatives", False, "Gather L_I negatives across replicas.")
flags.DEFINE_bool("global_clip_as_timestamp", False, "Add the global clip as one more timestamp in L_I.")
flags.DEFINE_float("tclr_weight_invariance", 1.0, "pretrain_ssl: weight of L_I.")
flags.DEFINE_float("tclr_weight_pooled", 1.0, "pretrain_ssl: weight of L_D1.")
flags.DEFINE_float("tclr_weight_global_local", 1.0, "pretrain_ssl: weight of L_D2.")
flags.DEFINE_string("tclr_group_pattern", "", "pretrain_ssl: batches by group, as --invariant_group_pattern for "
                    "pretrain_invariant (its L_I term then contrasts videos of one scene). '' (the paper) = shuffled.")

# TSTR scoring (stage 3).
flags.DEFINE_integer("tstr_num_clips", 4, "Evenly spaced clips n per video scored by TSTR (n x n matrices, Eq. 5).")
flags.DEFINE_integer("tstr_clip_length", 16, "Frames per TSTR clip.")
flags.DEFINE_integer("tstr_stride", 1, "Frame stride of the TSTR clips.")
flags.DEFINE_integer("tstr_batch_size", 8, "Videos per TSTR scoring batch.")

# Teacher finetuning and the supervised baseline.
flags.DEFINE_integer("finetune_batch_size", 8, "Clips per finetuning batch (global).")
flags.DEFINE_integer("finetune_epochs", 100, "Finetuning epochs.")
flags.DEFINE_integer("finetune_steps_per_epoch", 100, "Finetuning steps per epoch.")
flags.DEFINE_float("finetune_lr", 1e-3, "Adam learning rate of finetuning.")
flags.DEFINE_integer("clip_length", 8, "Frames per clip for finetuning, student and evaluation.")
flags.DEFINE_integer("clip_stride", 2, "Frame stride of those clips.")
flags.DEFINE_bool("supervised_baseline", False, "Also train a labels-only classifier (stage 'supervised').")
flags.DEFINE_enum("supervised_init", "random", ["random", "ssl"], "The labels-only classifier starts from random "
                  "weights (paper Table 3 a) or from pretrain_ssl (the student alone, Table 2 a).")
flags.DEFINE_enum("teacher_backbone", "finetune", ["finetune", "frozen"], "finetune_teachers trains backbone and "
                  "classifier (the paper) or the classifier alone on the frozen self-supervised features.")
flags.DEFINE_enum("supervised_backbone", "finetune", ["finetune", "frozen"], "The same for the labels-only "
                  "classifier ('frozen' needs --supervised_init=ssl).")

# Student.
flags.DEFINE_integer("labeled_batch_size", 4, "Labeled clips per student batch (global).")
flags.DEFINE_integer("unlabeled_batch_size", 4, "Unlabeled clips per student batch (global).")
flags.DEFINE_integer("student_epochs", 100, "Student epochs.")
flags.DEFINE_integer("student_steps_per_epoch", 100, "Student steps per epoch.")
flags.DEFINE_float("student_lr", 1e-3, "Adam learning rate of the student.")
flags.DEFINE_enum("student_init", "ssl", ["ssl", "invariant", "distinctive", "random"],
                  "Student initialisation: the backbone of pretrain_ssl (TCLR, the paper's), of "
                  "pretrain_invariant or pretrain_distinctive (Algorithm 1 allows any SSL start; "
                  "pretrain_ssl is then skipped), or random (paper Table 7).")
flags.DEFINE_enum("teachers", "both", ["both", "invariant", "distinctive", "none"], "Teachers distilled.")
flags.DEFINE_enum("reweighting", "tstr", ["tstr", "average"], "Teacher weight s: TSTR score or 0.5.")
flags.DEFINE_enum("distill_loss", "l2", ["l2", "kl", "js"], "Distillation loss D (paper Table 6).")
flags.DEFINE_float("omega_labeled", 50.0, "Weight of D on labeled clips.")
flags.DEFINE_float("omega_unlabeled", 100.0, "Weight of D on unlabeled clips.")

# Evaluation.
flags.DEFINE_integer("eval_clips", 10, "Uniformly spaced clips per test video.")
flags.DEFINE_integer("eval_crops", 3, "Spatial crops per clip: 3 (paper) or 1 (centre, official code).")
flags.DEFINE_integer("eval_batch_size", 2, "Videos per evaluation batch.")
flags.DEFINE_list("evaluate_models", [], "Classifiers the evaluate stage scores: invariant, distinctive, supervised, "
                  "student (empty = every one that has finished).")


def _profile_batch(text: str):
    parts = [p for p in text.split(",") if p.strip()]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise app.UsageError(f"--profile_batch={text!r}: expected N or 'start,stop'") from None
    if len(values) not in (1, 2):
        raise app.UsageError(f"--profile_batch={text!r}: expected N or 'start,stop'")
    return values[0] if len(values) == 1 else tuple(values)


def _numbers(name: str, count: int, meaning: str) -> tuple[float, ...]:
    """The `count` comma-separated numbers of list flag --name, or a UsageError naming the flag."""
    values = getattr(FLAGS, name)
    try:
        floats = tuple(float(v) for v in values)
    except ValueError:
        raise app.UsageError(f"--{name}={','.join(values)}: expected {count} numbers ({meaning})") from None
    if len(floats) != count:
        raise app.UsageError(f"--{name} needs {count} comma-separated numbers ({meaning}), got {len(floats)}")
    return floats


def _triple(name: str):
    return _numbers(name, 3, "R,G,B") if getattr(FLAGS, name) else None


def _range(name: str):
    return _numbers(name, 2, "low,high")


def build_config():
    """The `RecipeConfig` the flags describe (imports the library only now, after flag parsing)."""
    from tbkeras import recipe
    from tbkeras.data.synthetic import SyntheticConfig
    from tbkeras.stages.pretrain import ContrastiveConfig, LossWeights
    from tbkeras.stages.student import StudentConfig
    from tbkeras.train.stage_dir import TrainConfig

    if not FLAGS.model_dir:
        raise app.UsageError("--model_dir is required")
    log_every = FLAGS.log_every if FLAGS.log_every == "epoch" else int(FLAGS.log_every)

    def train(prefix: str) -> TrainConfig:
        return TrainConfig(
            epochs=getattr(FLAGS, f"{prefix}_epochs"), steps_per_epoch=getattr(FLAGS, f"{prefix}_steps_per_epoch"),
            lr=getattr(FLAGS, f"{prefix}_lr"), warmup_epochs=FLAGS.warmup_epochs,
            plateau_patience=FLAGS.plateau_patience, lr_schedule=FLAGS.lr_schedule, mixed_precision=FLAGS.mixed_precision,
            jit_compile=FLAGS.jit_compile, profile_batch=_profile_batch(FLAGS.profile_batch),
            nan_action=FLAGS.nan_action, log_every=log_every)

    prepare = None
    tfrecord_dir, labeled_list = FLAGS.tfrecord_dir, FLAGS.labeled_list
    if FLAGS.synthetic_dir:
        prepare = recipe.PrepareSettings(
            root=FLAGS.synthetic_dir,
            synthetic=SyntheticConfig(num_classes=FLAGS.synthetic_classes,
                                      videos_per_class=FLAGS.synthetic_videos_per_class,
                                      num_frames=FLAGS.synthetic_frames, height=FLAGS.synthetic_size,
                                      width=FLAGS.synthetic_size, test_fraction=FLAGS.synthetic_test_fraction,
                                      seed=FLAGS.synthetic_seed,
                                      class_shape_probability=FLAGS.synthetic_class_shape_probability),
            labeled_fraction=FLAGS.labeled_fraction, val_fraction=FLAGS.val_fraction, val_seed=FLAGS.val_seed,
            short_side=FLAGS.synthetic_size,
            workers=FLAGS.prepare_workers, seed=FLAGS.seed)
        tfrecord_dir = tfrecord_dir or prepare.tfrecord_dir
        labeled_list = labeled_list or prepare.labeled_list
        val_list = FLAGS.val_list or prepare.val_list
    else:
        val_list = FLAGS.val_list
    if not tfrecord_dir:
        raise app.UsageError("--tfrecord_dir is required (or --synthetic_dir for the demo dataset)")
    mean, std = _triple("normalize_mean"), _triple("normalize_std")
    if (mean is None) != (std is None):
        raise app.UsageError("--normalize_mean and --normalize_std go together")

    return recipe.RecipeConfig(
        model_dir=FLAGS.model_dir,
        data=recipe.DataSettings(
            tfrecord_dir=tfrecord_dir, train_split=FLAGS.train_split, test_split=FLAGS.test_split,
            labeled_list=labeled_list, val_list=val_list, num_classes=FLAGS.num_classes, crop_size=FLAGS.crop_size,
            mean=mean, std=std, shuffle_buffer=FLAGS.shuffle_buffer, seed=FLAGS.seed,
            deterministic=FLAGS.deterministic, ssl_crop_side=_range("ssl_crop_side"), crop_side=_range("crop_side")),
        model=recipe.ModelSettings(
            backbone=FLAGS.backbone, width_multiplier=FLAGS.width_multiplier,
            projection_hidden_dim=FLAGS.projection_hidden_dim, projection_dim=FLAGS.projection_dim,
            dropout=FLAGS.dropout, strided_conv=FLAGS.strided_conv),
        ssl=recipe.SSLSettings(
            train=train("ssl"), batch_size=FLAGS.ssl_batch_size, num_clips=FLAGS.ssl_num_clips,
            clip_length=FLAGS.ssl_clip_length, global_clip_length=FLAGS.ssl_global_clip_length,
            invariant_epochs=FLAGS.invariant_epochs, invariant_group_pattern=FLAGS.invariant_group_pattern,
            distinctive_epochs=FLAGS.distinctive_epochs,
            tclr_group_pattern=FLAGS.tclr_group_pattern,
            contrastive=ContrastiveConfig(temperature=FLAGS.temperature, denominator=FLAGS.denominator,
                                          gather_negatives=FLAGS.gather_negatives,
                                          global_clip_as_timestamp=FLAGS.global_clip_as_timestamp),
            tclr_weights=LossWeights(FLAGS.tclr_weight_invariance, FLAGS.tclr_weight_pooled,
                                     FLAGS.tclr_weight_global_local)),
        finetune=recipe.SupervisedSettings(
            train=train("finetune"), batch_size=FLAGS.finetune_batch_size, clip_length=FLAGS.clip_length,
            stride=FLAGS.clip_stride),
        student=recipe.StudentSettings(
            train=train("student"), labeled_batch_size=FLAGS.labeled_batch_size,
            unlabeled_batch_size=FLAGS.unlabeled_batch_size, clip_length=FLAGS.clip_length,
            stride=FLAGS.clip_stride, init=FLAGS.student_init,
            distill=StudentConfig(teachers=FLAGS.teachers, reweighting=FLAGS.reweighting,
                                  distill_loss=FLAGS.distill_loss, omega_labeled=FLAGS.omega_labeled,
                                  omega_unlabeled=FLAGS.omega_unlabeled)),
        tstr=recipe.TSTRSettings(num_clips=FLAGS.tstr_num_clips, clip_length=FLAGS.tstr_clip_length,
                                 stride=FLAGS.tstr_stride, batch_size=FLAGS.tstr_batch_size),
        evaluation=recipe.EvalSettings(num_clips=FLAGS.eval_clips, num_crops=FLAGS.eval_crops,
                                       batch_size=FLAGS.eval_batch_size, models=tuple(FLAGS.evaluate_models)),
        prepare=prepare,
        supervised_baseline=FLAGS.supervised_baseline, supervised_init=FLAGS.supervised_init,
        teacher_backbone=FLAGS.teacher_backbone, supervised_backbone=FLAGS.supervised_backbone,
        strategy=FLAGS.strategy, tpu=FLAGS.tpu, num_gpus=FLAGS.num_gpus,
        mixed_precision=FLAGS.mixed_precision,
    )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    if FLAGS.tune_malloc:  # before TensorFlow starts its threads
        from tbkeras.malloc import tune_malloc

        tune_malloc()
    import tensorflow as tf

    if FLAGS.intra_op_threads:
        tf.config.threading.set_intra_op_parallelism_threads(FLAGS.intra_op_threads)
    if FLAGS.inter_op_threads:
        tf.config.threading.set_inter_op_parallelism_threads(FLAGS.inter_op_threads)
    try:
        config = build_config()
    except ValueError as e:  # a config dataclass rejected a flag value
        raise app.UsageError(str(e)) from None
    from tbkeras import recipe
    from tbkeras.files import atomic_write_text

    atomic_write_text(os.path.join(config.model_dir, "flags.txt"), FLAGS.flags_into_string())
    try:
        results = recipe.Recipe(config).run(FLAGS.stage)
    except (FileNotFoundError, ValueError) as e:  # bad input: say what and where, no traceback
        sys.exit(f"error: {e}")
    if "evaluate" in results:
        print(f"\nTop-1 ({config.model_dir}/evaluate/results.md):\n")
        print(recipe.results_table(results["evaluate"], config.data.test_split))
    if "tstr" in results and results["tstr"].get("repetitive_mean_s") is not None:
        t = results["tstr"]
        print(f"TSTR mean s: repetitive classes {t['repetitive_mean_s']:.3f} ({t['repetitive_count']} videos), "
              f"order-dependent classes {t['order_mean_s']:.3f} ({t['order_count']} videos); "
              f"figures in {config.model_dir}/tstr/\n")
    for stage, metrics in results.items():
        logging.info("%s: %s", stage, metrics)


if __name__ == "__main__":
    app.run(main)
