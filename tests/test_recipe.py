"""The recipe's stage order and its errors on bad input (fast: nothing is trained here)."""
import dataclasses
import os

import keras
import numpy as np
import pytest

from tbkeras import recipe
from tbkeras.data import pipelines
from tbkeras.stages.checkpoints import BACKBONE_WEIGHTS
from tbkeras.stages.student import StudentConfig
from tbkeras.train.stage_dir import TrainConfig
from tests.data.shard_fixtures import FakeVideo, write_split


def _config(tmp_path, **overrides) -> recipe.RecipeConfig:
    train = TrainConfig(epochs=1, steps_per_epoch=1, warmup_epochs=0)
    config = recipe.RecipeConfig(
        model_dir=str(tmp_path / "run"),
        data=recipe.DataSettings(tfrecord_dir=str(tmp_path / "tfrecords"), crop_size=16),
        ssl=recipe.SSLSettings(train=train, batch_size=2),
        finetune=recipe.SupervisedSettings(train=train, batch_size=2),
        student=recipe.StudentSettings(train=train),
        model=recipe.ModelSettings(width_multiplier=0.125),
    )
    return dataclasses.replace(config, **overrides)


def _write_grouped_videos(tmp_path) -> None:
    """A train split of 3 classes x 2 scene groups x 2 clips, ids in UCF101's `_gNN_cNN` form."""
    videos = [FakeVideo(f"v_C{c}_g{g:02d}_c{i:02d}", 20, c) for g in (1, 2) for c in range(3) for i in range(2)]
    write_split(str(tmp_path / "tfrecords"), "train", videos)


def test_all_runs_the_paper_order_and_skips_what_the_ablation_does_not_use(tmp_path):
    config = _config(tmp_path)
    assert recipe.stages_for_all(config) == [
        "pretrain_invariant", "pretrain_distinctive", "pretrain_ssl", "tstr", "finetune_teachers",
        "student", "evaluate", "export"]
    ablation = dataclasses.replace(
        config, supervised_baseline=True,
        student=dataclasses.replace(config.student, init="random", distill=StudentConfig(reweighting="average")))
    assert recipe.stages_for_all(ablation) == [
        "pretrain_invariant", "pretrain_distinctive", "finetune_teachers", "supervised", "student",
        "evaluate", "export"]


def test_unknown_stage_lists_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="unknown stage 'pretrain'.*pretrain_invariant.*all"):
        recipe.Recipe(_config(tmp_path)).run("pretrain")


def test_unknown_backbone_is_rejected():
    with pytest.raises(ValueError, match="unknown backbone 'r2d'.*r3d18, r3d50"):
        recipe.ModelSettings(backbone="r2d")


def test_missing_tfrecord_dir_names_the_manifest(tmp_path):
    with pytest.raises(FileNotFoundError, match="tfrecords.*train-manifest.json"):
        recipe.Recipe(_config(tmp_path)).run("supervised")


def test_class_count_must_match_the_manifest(tmp_path):
    write_split(str(tmp_path / "tfrecords"), "train", [FakeVideo(f"v{i}", 20, i % 3) for i in range(6)])
    config = _config(tmp_path)
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, num_classes=5))
    with pytest.raises(ValueError, match="num_classes=5 but the manifest .* lists 3 classes"):
        recipe.Recipe(config).run("supervised")


@pytest.mark.parametrize("stage, missing", [
    ("tstr", "pretrain_invariant"),
    ("finetune_teachers", "pretrain_invariant"),
    ("student", "finetune_teachers/invariant"),
    ("export", "student"),
])
def test_a_stage_names_the_stage_that_makes_its_inputs(tmp_path, stage, missing):
    with pytest.raises(FileNotFoundError, match=f"stage '{missing}' has not finished.*--stage="):
        recipe.Recipe(_config(tmp_path)).run(stage)


def test_labels_only_from_the_ssl_checkpoint_needs_pretrain_ssl(tmp_path):
    config = dataclasses.replace(_config(tmp_path), supervised_init="ssl", supervised_baseline=True)
    assert "pretrain_ssl" in recipe.stages_for_all(dataclasses.replace(
        config, student=dataclasses.replace(config.student, init="random")))
    with pytest.raises(FileNotFoundError, match="stage 'pretrain_ssl' has not finished"):
        recipe.Recipe(config).run("supervised")
    with pytest.raises(ValueError, match="supervised_init"):
        recipe.Recipe(dataclasses.replace(config, supervised_init="imagenet")).run("supervised")


def test_evaluate_needs_some_finished_classifier(tmp_path):
    with pytest.raises(FileNotFoundError, match="no classifier stage has finished.*--stage=student"):
        recipe.Recipe(_config(tmp_path)).run("evaluate")
    picked = dataclasses.replace(_config(tmp_path), evaluation=recipe.EvalSettings(models=("supervised",)))
    with pytest.raises(FileNotFoundError, match="stage 'supervised' has not finished"):
        recipe.Recipe(picked).run("evaluate")
    with pytest.raises(ValueError, match="unknown evaluated model"):
        recipe.EvalSettings(models=("teacher",))


def test_no_training_source_yields_a_validation_video(tmp_path):
    write_split(str(tmp_path / "tfrecords"), "train", [FakeVideo(f"v{i}", 20, i % 3) for i in range(9)])
    (tmp_path / "labeled.txt").write_text("v0\nv1\nv2\n")
    (tmp_path / "val.txt").write_text("v3\nv4\n")
    config = _config(tmp_path)
    config = dataclasses.replace(config, data=dataclasses.replace(
        config.data, labeled_list=str(tmp_path / "labeled.txt"), val_list=str(tmp_path / "val.txt")))
    runner = recipe.Recipe(config)
    ids = {name: set(pipelines._select(source, check_shards=False).video_ids) for name, source in (
        ("all", runner._source("train")), ("labeled", runner._source("train", labeled=True)),
        ("unlabeled", runner._source("train", labeled=False)), ("val", runner._val_source()))}
    assert ids["val"] == {"v3", "v4"}
    assert ids["labeled"] == {"v0", "v1", "v2"} and ids["unlabeled"] == {"v5", "v6", "v7", "v8"}
    assert ids["all"] == ids["labeled"] | ids["unlabeled"]
    assert runner._source("test").exclude_files == ()  # the held-out list only narrows the training split


def test_student_without_a_labeled_list_has_no_unlabeled_videos(tmp_path):
    source = recipe.Recipe(_config(tmp_path))._source
    assert source("train", labeled=True).include_ids_file is None  # every video is labeled
    with pytest.raises(ValueError, match="--labeled_list"):
        source("train", labeled=False)


def test_mixed_bfloat16_trains_on_bfloat16_clips(tmp_path):
    # The pipelines emit bfloat16 under mixed_bfloat16 (the model's first layer casts to it anyway).
    write_split(str(tmp_path / "tfrecords"), "train", [FakeVideo(f"v{i}", 20, i % 3) for i in range(6)])
    config = _config(tmp_path, mixed_precision="mixed_bfloat16")
    runner = recipe.Recipe(config)
    assert runner._pixels().dtype == "bfloat16"
    assert recipe.Recipe(_config(tmp_path))._pixels().dtype == "float32"
    try:
        metrics = runner.run("supervised")["supervised"]
    finally:
        keras.config.set_dtype_policy("float32")
    assert np.isfinite(metrics["loss"])


def test_per_stage_ssl_settings_reach_their_stage_alone(tmp_path, monkeypatch):
    _write_grouped_videos(tmp_path)
    seen = {}
    real = pipelines.ssl_dataset

    def spy(cfg, *args):
        seen.setdefault("patterns", []).append(cfg.group_pattern)
        return real(cfg, *args)

    monkeypatch.setattr(pipelines, "ssl_dataset", spy)
    config = _config(tmp_path)
    grouped = dataclasses.replace(config, ssl=dataclasses.replace(
        config.ssl, invariant_epochs=2, invariant_group_pattern=r"_g(\d+)_c\d+$", tclr_group_pattern=r"_g(\d+)_",
        distinctive_epochs=3))
    runner = recipe.Recipe(grouped)
    runner.run("pretrain_invariant")
    runner.run("pretrain_distinctive")
    runner.run("pretrain_ssl")
    assert seen["patterns"] == [r"_g(\d+)_c\d+$", "", r"_g(\d+)_"]
    done = {s: recipe.StageDir(recipe.stage_dir(grouped, s)).read_done()["config"]["train"]["epochs"]
            for s in ("pretrain_invariant", "pretrain_distinctive", "pretrain_ssl")}
    assert done == {"pretrain_invariant": 2, "pretrain_distinctive": 3, "pretrain_ssl": 1}
    # The probes' accessors: the pretrained backbone is the checkpoint's, not a fresh one.
    pretrained, fresh = runner.pretrained_backbone("pretrain_invariant"), runner.pretrained_backbone(None)
    assert any(not np.array_equal(a, b) for a, b in zip(pretrained.get_weights(), fresh.get_weights()))
    with pytest.raises(ValueError, match="unknown part"):
        runner.eval_datasets(("bogus",))
    # Changing the invariant settings reruns pretrain_invariant only.
    longer = dataclasses.replace(grouped, ssl=dataclasses.replace(grouped.ssl, invariant_epochs=3))
    recipe.Recipe(longer).run("pretrain_distinctive")
    assert len(seen["patterns"]) == 3  # found DONE: no pipeline built
    recipe.Recipe(longer).run("pretrain_invariant")
    assert len(seen["patterns"]) == 4
    # distinctive_epochs reruns pretrain_distinctive only.
    shorter = dataclasses.replace(longer, ssl=dataclasses.replace(longer.ssl, distinctive_epochs=0))
    for stage in ("pretrain_invariant", "pretrain_ssl"):
        recipe.Recipe(shorter).run(stage)
    assert len(seen["patterns"]) == 4
    recipe.Recipe(shorter).run("pretrain_distinctive")
    assert seen["patterns"][4:] == [""]
    # And tclr_group_pattern reruns pretrain_ssl only.
    regrouped = dataclasses.replace(shorter, ssl=dataclasses.replace(shorter.ssl, tclr_group_pattern=""))
    for stage in ("pretrain_invariant", "pretrain_distinctive", "pretrain_ssl"):
        recipe.Recipe(regrouped).run(stage)
    assert seen["patterns"][5:] == [""]
    with pytest.raises(ValueError, match="needs a capture group"):
        recipe.SSLSettings(train=config.ssl.train, invariant_group_pattern="_g")
    with pytest.raises(ValueError, match="needs a capture group"):
        recipe.SSLSettings(train=config.ssl.train, tclr_group_pattern="_g")
    with pytest.raises(ValueError, match="invariant_epochs must be >= 0"):
        recipe.SSLSettings(train=config.ssl.train, invariant_epochs=-1)
    with pytest.raises(ValueError, match="distinctive_epochs must be >= 0"):
        recipe.SSLSettings(train=config.ssl.train, distinctive_epochs=-1)


def test_frozen_teacher_backbones_keep_the_pretrained_weights(tmp_path):
    # --teacher_backbone=frozen: each finetuned teacher's backbone is its SSL checkpoint, bit for bit
    # (only the classifier trained), and the choice is part of finetune_teachers' DONE identity.
    _write_grouped_videos(tmp_path)
    config = _config(tmp_path, teacher_backbone="frozen")
    runner = recipe.Recipe(config)
    for stage in ("pretrain_invariant", "pretrain_distinctive", "finetune_teachers"):
        runner.run(stage)
    for kind in recipe.TEACHER_KINDS:
        pretrained = runner.pretrained_backbone(f"pretrain_{kind}")
        teacher = runner._teacher(kind, num_classes=3)
        for a, b in zip(pretrained.weights, teacher.backbone.weights):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=f"{kind}: {b.path}")
        done = recipe.StageDir(f"{recipe.stage_dir(config, 'finetune_teachers')}/{kind}").read_done()
        assert done["config"]["stage"]["backbone"] == "frozen"
    with pytest.raises(ValueError, match="teacher_backbone must be one of"):
        _config(tmp_path, teacher_backbone="linear")
    with pytest.raises(ValueError, match="supervised_backbone='frozen' needs supervised_init='ssl'"):
        _config(tmp_path, supervised_backbone="frozen")


def test_a_path_spelled_another_way_finds_the_finished_stage(tmp_path, monkeypatch):
    # Stage identities record the data paths: `tfrecords` run from tmp_path and the absolute
    # spelling from elsewhere name the same shards, so the second run must not retrain.
    write_split(str(tmp_path / "tfrecords"), "train", [FakeVideo(f"v{i}", 20, i % 3) for i in range(6)])
    monkeypatch.chdir(tmp_path)
    relative = dataclasses.replace(_config(tmp_path), model_dir="run",
                                   data=recipe.DataSettings(tfrecord_dir="tfrecords", crop_size=16))
    recipe.Recipe(relative).run("supervised")
    done = tmp_path / "run" / "supervised" / "DONE"
    written = done.stat().st_mtime_ns
    monkeypatch.chdir(tmp_path / "run")
    spelled = dataclasses.replace(relative, model_dir=str(tmp_path / "run"),
                                  data=recipe.DataSettings(tfrecord_dir="../tfrecords/./", crop_size=16))
    recipe.Recipe(spelled).run("supervised")
    assert done.stat().st_mtime_ns == written
    assert spelled.data.tfrecord_dir == str(tmp_path / "tfrecords")


@pytest.mark.parametrize("init", ["distinctive", "invariant"])
def test_student_starting_from_a_teachers_pretraining_loads_it_and_skips_pretrain_ssl(tmp_path, init):
    # Algorithm 1 starts the student from "any SSL method": a teacher's pretraining saves pretrain_ssl.
    write_split(str(tmp_path / "tfrecords"), "train", [FakeVideo(f"v{i}", 20, i % 3) for i in range(6)])
    config = _config(tmp_path)
    config = dataclasses.replace(config, student=dataclasses.replace(config.student, init=init))
    assert "pretrain_ssl" not in recipe.stages_for_all(config)
    runner = recipe.Recipe(config)
    saved = runner.pretrained_backbone(None)
    rng = np.random.default_rng(0)
    saved.set_weights([w + rng.normal(size=w.shape).astype(w.dtype) for w in saved.get_weights()])
    os.makedirs(os.path.join(config.model_dir, f"pretrain_{init}"))
    saved.save_weights(os.path.join(config.model_dir, f"pretrain_{init}", BACKBONE_WEIGHTS))
    student = runner._initial_student(3)
    for got, want in zip(student.backbone.get_weights(), saved.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="student init must be one of ssl, invariant, distinctive or 'random'"):
        recipe.StudentSettings(train=config.student.train, init="imagenet")
