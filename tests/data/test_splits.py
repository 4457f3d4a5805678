import collections
import os

import pytest

from tbkeras.data import splits


def _touch(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "wb").close()
    return path


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return path


def test_video_ids():
    assert splits.video_id_from_path("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi") == "v_ApplyEyeMakeup_g08_c01"
    assert splits.kinetics_video_id("abc-DEF_123", "14", "24.0") == "abc-DEF_123_000014_000024"


def test_read_video_ids_on_every_list_format(tmp_path):
    ucf = _write(str(tmp_path / "trainlist01.txt"), "A/v_A_g01_c01.avi 1\r\n\nB/v_B_g02_c03.avi 2\n")
    ucf_test = _write(str(tmp_path / "testlist01.txt"), "A/v_A_g03_c01.avi\n")
    hmdb = _write(str(tmp_path / "brush_hair_test_split1.txt"), "April_09_brush_hair_u_nm_np1_ba_goo_0.avi 1 \n")
    kinetics = _write(
        str(tmp_path / "train.csv"),
        "label,youtube_id,time_start,time_end,split\n\"air drumming\",--6bJUbfpnQ,17,27,train\nabseiling,0wR5jVB-WPk,417,427,train\n",
    )
    assert splits.read_video_ids(ucf) == ["v_A_g01_c01", "v_B_g02_c03"]
    assert splits.read_video_ids(ucf_test) == ["v_A_g03_c01"]
    assert splits.read_video_ids(hmdb) == ["April_09_brush_hair_u_nm_np1_ba_goo_0"]
    assert splits.read_video_ids(kinetics) == ["--6bJUbfpnQ_000017_000027", "0wR5jVB-WPk_000417_000427"]
    header, lines = splits.read_list_lines(kinetics)
    assert header == ["label,youtube_id,time_start,time_end,split"]
    assert [line.class_key for line in lines] == ["air drumming", "abseiling"]
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        splits.read_video_ids(str(tmp_path / "nope.txt"))


def _ucf(tmp_path, train_lines="A/v_A_g01_c01.avi 1\nB/v_B_g01_c01.avi 2\nA/v_A_g02_c01.avi 1\n", test_lines="B/v_B_g03_c01.avi\n"):
    videos, lists = str(tmp_path / "videos"), str(tmp_path / "lists")
    _write(os.path.join(lists, "classInd.txt"), "1 A\n2 B\n")
    _write(os.path.join(lists, "trainlist01.txt"), train_lines)
    _write(os.path.join(lists, "testlist01.txt"), test_lines)
    return videos, lists


def test_ucf101_labels_from_index_and_from_folder(tmp_path):
    videos, lists = _ucf(tmp_path)
    _touch(os.path.join(videos, "v_B_g03_c01.avi"))  # flat file: found at the top level
    entries, classes = splits.parse_layout("ucf101", videos, lists, "train", 1)
    assert classes == ["A", "B"]
    assert [(e.video_id, e.label_index, e.label_text) for e in entries] == [
        ("v_A_g01_c01", 0, "A"), ("v_B_g01_c01", 1, "B"), ("v_A_g02_c01", 0, "A")]
    assert entries[0].path == os.path.join(videos, "A/v_A_g01_c01.avi")
    test_entries, _ = splits.parse_layout("ucf101", videos, lists, "test", 1)
    assert [(e.video_id, e.label_index, e.path) for e in test_entries] == [
        ("v_B_g03_c01", 1, os.path.join(videos, "v_B_g03_c01.avi"))]


def test_ucf101_errors_name_the_file(tmp_path):
    videos, lists = _ucf(tmp_path, test_lines="C/v_C_g01_c01.avi\n")
    with pytest.raises(ValueError, match=r"testlist01.txt:1: unknown class 'C'"):
        splits.parse_layout("ucf101", videos, lists, "test", 1)
    with pytest.raises(FileNotFoundError, match="trainlist02.txt"):
        splits.parse_layout("ucf101", videos, lists, "train", 2)
    videos, lists = _ucf(tmp_path, train_lines="A/v_A_g01_c01.avi 7\n")
    with pytest.raises(ValueError, match="trainlist01.txt:1: unknown class index 7"):
        splits.parse_layout("ucf101", videos, lists, "train", 1)
    with pytest.raises(ValueError, match="split_dir"):
        splits.parse_layout("ucf101", videos, "", "train", 1)


def test_hmdb51_codes(tmp_path):
    lists = str(tmp_path / "splits")
    _write(os.path.join(lists, "wave_test_split1.txt"), "w1.avi 1 \nw2.avi 2 \nw3.avi 0 \n")
    _write(os.path.join(lists, "brush_hair_test_split1.txt"), "b1.avi 2\nb2.avi 1\n")
    train, classes = splits.parse_layout("hmdb51", "/v", lists, "train", 1)
    assert classes == ["brush_hair", "wave"]
    assert [(e.video_id, e.label_index, e.path) for e in train] == [("b2", 0, "/v/brush_hair/b2.avi"), ("w1", 1, "/v/wave/w1.avi")]
    test, _ = splits.parse_layout("hmdb51", "/v", lists, "test", 1)
    assert [e.video_id for e in test] == ["b1", "w2"]
    with pytest.raises(FileNotFoundError, match="_test_split2.txt"):
        splits.parse_layout("hmdb51", "/v", lists, "train", 2)


def test_kinetics400_finds_files_in_any_layout(tmp_path):
    videos, lists = str(tmp_path / "k400"), str(tmp_path / "csv")
    header = "label,youtube_id,time_start,time_end,split\n"
    _write(os.path.join(lists, "train.csv"), header + "abseiling,aaa,1,11,train\n\"air drumming\",bbb,20,30,train\nzumba,ccc,0,10,train\n")
    _write(os.path.join(lists, "validate.csv"), header + "zumba,ddd,5,15,val\nabseiling,eee,5,15,val\n")
    _touch(os.path.join(videos, "train", "abseiling", "aaa_000001_000011.mp4"))
    _touch(os.path.join(videos, "bbb_000020_000030.mkv"))
    train, classes = splits.parse_layout("kinetics400", videos, lists, "train")
    assert classes == ["abseiling", "air drumming", "zumba"]
    assert [(e.video_id, e.label_index) for e in train] == [
        ("aaa_000001_000011", 0), ("bbb_000020_000030", 1), ("ccc_000000_000010", 2)]
    assert train[1].path == os.path.join(videos, "bbb_000020_000030.mkv")
    assert train[2].path == os.path.join(videos, "train", "zumba", "ccc_000000_000010.mp4")  # missing: reported later
    val, val_classes = splits.parse_layout("kinetics400", videos, lists, "val")
    assert val_classes == classes and [e.label_index for e in val] == [2, 0]
    _write(os.path.join(lists, "test.csv"), header + "yoga,fff,0,10,test\n")
    with pytest.raises(ValueError, match=r"test.csv:2: unknown class 'yoga'"):
        splits.parse_layout("kinetics400", videos, lists, "test")


def test_folders_layout_and_empty_tree(tmp_path):
    root = str(tmp_path / "tree")
    _touch(os.path.join(root, "b_class", "x", "v2.mp4"))
    _touch(os.path.join(root, "a_class", "v1.avi"))
    _touch(os.path.join(root, "a_class", "notes.txt"))
    entries, classes = splits.parse_layout("folders", root)
    assert classes == ["a_class", "b_class"]
    assert [(e.video_id, e.label_index) for e in entries] == [("v1", 0), ("v2", 1)]
    empty = str(tmp_path / "empty")
    os.makedirs(os.path.join(empty, "a_class"))
    with pytest.raises(ValueError, match=f"no videos found under {empty}"):
        splits.parse_layout("folders", empty)


def _train_lines(tmp_path, per_class=(10, 3, 1, 25)):
    text = "".join(f"C{c}/v_C{c}_g{i:02d}_c01.avi {c + 1}\n" for c, n in enumerate(per_class) for i in range(n))
    return splits.read_list_lines(_write(str(tmp_path / "trainlist01.txt"), text))[1]


def test_stratified_subset_properties(tmp_path):
    lines = _train_lines(tmp_path)
    labeled, unlabeled = splits.stratified_subset(lines, fraction=0.2, seed=0)
    counts = collections.Counter(line.class_key for line in labeled)
    assert counts == {"C0": 2, "C1": 1, "C2": 1, "C3": 5}  # round(0.2 n), at least one per class
    assert sorted(labeled + unlabeled, key=lines.index) == lines
    assert not set(l.text for l in labeled) & set(l.text for l in unlabeled)
    assert labeled == sorted(labeled, key=lines.index) and unlabeled == sorted(unlabeled, key=lines.index)
    again, _ = splits.stratified_subset(lines, fraction=0.2, seed=0)
    other, _ = splits.stratified_subset(lines, fraction=0.2, seed=1)
    assert again == labeled and other != labeled
    bigger, _ = splits.stratified_subset(lines, fraction=0.5, seed=0)
    assert set(l.text for l in labeled) <= set(l.text for l in bigger)  # nested across fractions
    per_class, _ = splits.stratified_subset(lines, per_class=2, seed=3)
    assert collections.Counter(line.class_key for line in per_class) == {"C0": 2, "C1": 2, "C2": 1, "C3": 2}


def test_stratified_subset_bad_arguments(tmp_path):
    lines = _train_lines(tmp_path)
    with pytest.raises(ValueError, match="exactly one"):
        splits.stratified_subset(lines, fraction=0.1, per_class=1)
    with pytest.raises(ValueError, match="fraction"):
        splits.stratified_subset(lines, fraction=1.5)
    assert splits.stratified_subset([1, 2, 3], labels=["a", "a", "b"], per_class=1, seed=0)[0][-1] == 3


def test_format_list_file_keeps_line_format(tmp_path):
    lines = _train_lines(tmp_path, per_class=(2,))
    assert splits.format_list_file([], lines) == "C0/v_C0_g00_c01.avi 1\nC0/v_C0_g01_c01.avi 1\n"


def _grouped_lines(tmp_path, classes=3, groups=10, clips=2):
    text = "".join(f"C{c}/v_C{c}_g{g:02d}_c{k:02d}.avi {c + 1}\n"
                   for c in range(classes) for g in range(1, groups + 1) for k in range(1, clips + 1))
    return splits.read_list_lines(_write(str(tmp_path / "trainlist01.txt"), text))[1]


def test_validation_split_holds_out_whole_groups_of_every_class(tmp_path):
    lines = _grouped_lines(tmp_path)
    rest, val = splits.validation_split(lines, fraction=0.2, seed=0)
    held = {splits.group_of(line.video_id) for line in val}
    assert len(held) == 2  # round(0.2 * 10 groups)
    assert not held & {splits.group_of(line.video_id) for line in rest}  # no group on both sides
    assert len(val) == 2 * 3 * 2 and {line.class_key for line in val} == {"C0", "C1", "C2"}
    assert sorted(rest + val, key=lines.index) == lines and rest == sorted(rest, key=lines.index)
    assert splits.validation_split(lines, fraction=0.2, seed=0) == (rest, val)
    assert {splits.group_of(v.video_id) for v in splits.validation_split(lines, fraction=0.2, seed=5)[1]} != held
    assert len({splits.group_of(v.video_id) for v in splits.validation_split(lines, fraction=0.99)[0]}) == 1  # never all


def test_validation_split_without_groups_is_stratified_and_checks_its_fraction(tmp_path):
    text = "".join(f"C{c}/clip{i}.mp4 {c + 1}\n" for c in range(3) for i in range(10))
    lines = splits.read_list_lines(_write(str(tmp_path / "plain.txt"), text))[1]
    rest, val = splits.validation_split(lines, fraction=0.2, seed=0)
    assert [line.text for line in val] == [line.text for line in splits.stratified_subset(lines, fraction=0.2)[0]]
    assert sorted(rest + val, key=lines.index) == lines
    for bad in (0.0, 1.0):
        with pytest.raises(ValueError, match="validation fraction"):
            splits.validation_split(lines, fraction=bad)
    with pytest.raises(ValueError, match="group"):
        splits.validation_split(_grouped_lines(tmp_path, groups=1), fraction=0.5)
