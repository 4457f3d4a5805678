import os

from tbkeras.data import splits
from tests.tfrecords_tools.cli import run_tool


def _run(*args):
    return run_tool("make_splits.py", *args)


def test_writes_labeled_and_unlabeled_lists_in_the_train_list_format(tmp_path):
    train_list = tmp_path / "trainlist01.txt"
    train_list.write_text("".join(f"C{c}/v_C{c}_g{i:02d}_c01.avi {c + 1}\n" for c in range(3) for i in range(4 + 6 * c)))
    out = tmp_path / "splits"
    result = _run(f"--train_list={train_list}", f"--output_dir={out}", "--fractions=10,50", "--per_class=2", "--seed=3")
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(out)) == sorted(
        f"{kind}_{name}_seed3.txt" for kind in ("labeled", "unlabeled") for name in ("10pct", "50pct", "2perclass"))
    train_lines = train_list.read_text().splitlines()
    _, parsed = splits.read_list_lines(str(train_list))
    for name, amount in (("10pct", {"fraction": 0.1}), ("50pct", {"fraction": 0.5}), ("2perclass", {"per_class": 2})):
        labeled = (out / f"labeled_{name}_seed3.txt").read_text().splitlines()
        unlabeled = (out / f"unlabeled_{name}_seed3.txt").read_text().splitlines()
        assert sorted(labeled + unlabeled) == sorted(train_lines) and not set(labeled) & set(unlabeled)
        assert {line.split("/")[0] for line in labeled} == {"C0", "C1", "C2"}
        expected, _ = splits.stratified_subset(parsed, seed=3, **amount)
        assert labeled == [line.text for line in expected]
        assert splits.read_video_ids(str(out / f"labeled_{name}_seed3.txt")) == [line.video_id for line in expected]


def test_missing_train_list_is_an_error_naming_it(tmp_path):
    result = _run(f"--train_list={tmp_path / 'nope.txt'}", f"--output_dir={tmp_path}")
    assert result.returncode != 0 and str(tmp_path / "nope.txt") in result.stderr


def test_validation_list_is_held_out_of_every_subset(tmp_path):
    train_list = tmp_path / "trainlist01.txt"
    train_list.write_text("".join(f"C{c}/v_C{c}_g{g:02d}_c01.avi {c + 1}\n" for c in range(3) for g in range(1, 11)))
    out = tmp_path / "splits"
    result = _run(f"--train_list={train_list}", f"--output_dir={out}", "--fractions=20", "--val_fraction=0.3", "--seed=1")
    assert result.returncode == 0, result.stderr
    val = set(splits.read_video_ids(str(out / "val_seed1.txt")))
    assert len(val) == 3 * 3 and len({splits.group_of(v) for v in val}) == 3
    labeled = set(splits.read_video_ids(str(out / "labeled_20pct_seed1.txt")))
    unlabeled = set(splits.read_video_ids(str(out / "unlabeled_20pct_seed1.txt")))
    assert not val & (labeled | unlabeled) and len(val | labeled | unlabeled) == 30
    bad = _run(f"--train_list={train_list}", f"--output_dir={out}", "--val_fraction=1.5")
    assert bad.returncode != 0 and "--val_fraction" in bad.stderr
