"""Which videos belong to a split, with which label: the dataset layouts, list files, labeled subsets.

Layouts (`parse_layout`):
  folders      `{videos_dir}/{Class}/**/video.ext` (or `{videos_dir}/{split}/{Class}/...` when that
               folder exists); classes are the sorted class folder names, so train and test trees must
               hold the same class folders.
  ucf101       `{split_dir}/classInd.txt` ("1 ApplyEyeMakeup"), `trainlist0K.txt`
               ("ApplyEyeMakeup/v_..._c01.avi 1"), `testlist0K.txt` (no label: the folder names the
               class); videos at `{videos_dir}/{Class}/{name}` (or flat `{videos_dir}/{name}`).
  hmdb51       `{split_dir}/{class}_test_split{K}.txt`, lines "name.avi 0|1|2" (1 train, 2 test,
               0 unused); classes are the sorted class names; videos at `{videos_dir}/{class}/{name}`
               (or flat).
  kinetics400  `{split_dir}/{split}.csv` (also `validate.csv` for val, `kinetics400_{split}.csv`),
               columns label,youtube_id,time_start,time_end,split; classes are the sorted labels of
               `train.csv` (else of the split's own CSV). Files `{youtube_id}_{start:06d}_{end:06d}.*`
               are found anywhere under `videos_dir` (`{split}/{label}/`, `{label}/` or flat), by one
               directory walk; a missing one keeps the path `{videos_dir}/{split}/{label}/{id}.mp4`
               and is reported as a missing file by the converter.

This module does not import TensorFlow (the conversion CLI imports it at top level, and its spawned
workers re-import that CLI).
"""
from __future__ import annotations

import csv
import dataclasses
import glob
import io
import math
import os
import re
from typing import Any, Hashable, Sequence, TypeVar

import numpy as np

VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp")
LAYOUTS = ("folders", "ucf101", "hmdb51", "kinetics400")
_KINETICS_COLUMNS = ("label", "youtube_id", "time_start", "time_end")

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class VideoEntry:
    """One video of a split: where it is, its id and its label (index into the class list)."""

    path: str
    video_id: str
    label_index: int
    label_text: str


@dataclasses.dataclass(frozen=True)
class ListLine:
    """One line of a list file, kept verbatim so subsets are written in the list's own format."""

    text: str
    video_id: str
    class_key: str


def video_id_from_path(path: str) -> str:
    """Basename without extension: "Class/v_X_g08_c01.avi" -> "v_X_g08_c01"."""
    return os.path.splitext(os.path.basename(path.strip()))[0]


def kinetics_video_id(youtube_id: str, time_start: str | float, time_end: str | float) -> str:
    """"{youtube_id}_{start:06d}_{end:06d}", the Kinetics file stem."""
    return f"{youtube_id}_{int(float(time_start)):06d}_{int(float(time_end)):06d}"


def _read_text(path: str, what: str) -> str:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    with open(path, encoding="utf-8") as f:
        return f.read()


def _is_kinetics_csv(first_line: str) -> bool:
    header = [h.strip() for h in first_line.split(",")]
    return all(column in header for column in _KINETICS_COLUMNS)


def read_list_lines(list_file: str) -> tuple[list[str], list[ListLine]]:
    """Parse a list file into (header lines, lines), each line with its video id and class.

    Formats: a Kinetics CSV (header kept; class = label column); or whitespace lines whose first
    token is the video path: class = the path's folder ("Class/v.avi [label]", UCF101 lists and our
    subsets of them), else the second token ("v.avi Class").
    """
    text = _read_text(list_file, "list file")
    raw = [line.rstrip("\r\n") for line in text.splitlines()]
    nonempty = [(n, line) for n, line in enumerate(raw, 1) if line.strip()]
    if nonempty and _is_kinetics_csv(nonempty[0][1]):
        header = [nonempty[0][1]]
        rows = csv.DictReader(io.StringIO("\n".join(line for _, line in nonempty)))
        lines = []
        for (n, line), row in zip(nonempty[1:], rows):
            try:
                video_id = kinetics_video_id(row["youtube_id"], row["time_start"], row["time_end"])
            except (TypeError, ValueError) as e:
                raise ValueError(f"{list_file}:{n}: bad Kinetics row {line!r}: {e}") from None
            lines.append(ListLine(text=line, video_id=video_id, class_key=row["label"]))
        return header, lines
    lines = []
    for n, line in nonempty:
        tokens = line.split()
        folder = os.path.dirname(tokens[0].replace("\\", "/"))
        if folder:
            class_key = os.path.basename(folder)
        elif len(tokens) > 1:
            class_key = tokens[1]
        else:
            raise ValueError(
                f"{list_file}:{n}: cannot tell the class of {line!r}: expected 'Class/video.avi [label]' "
                "or 'video.avi Class'"
            )
        lines.append(ListLine(text=line, video_id=video_id_from_path(tokens[0]), class_key=class_key))
    return [], lines


def read_video_ids(list_file: str) -> list[str]:
    """Video ids of a list file: UCF101 train/test lists, HMDB51 lines, Kinetics CSVs, our subsets.

    The id is `video_id_from_path` of the first whitespace token of each non-empty line (Kinetics
    CSV rows give "{youtube_id}_{start:06d}_{end:06d}").
    """
    text = _read_text(list_file, "video id list")
    nonempty = [line for line in text.splitlines() if line.strip()]
    if nonempty and _is_kinetics_csv(nonempty[0]):
        return [line.video_id for line in read_list_lines(list_file)[1]]
    return [video_id_from_path(line.split()[0]) for line in nonempty]


def format_list_file(header: Sequence[str], lines: Sequence[ListLine]) -> str:
    """The text of a list file: header lines then each line verbatim, newline-terminated."""
    return "".join(f"{line}\n" for line in [*header, *(line.text for line in lines)])


def _class_of(item: Any) -> Hashable:
    if isinstance(item, VideoEntry):
        return item.label_text
    if isinstance(item, ListLine):
        return item.class_key
    raise TypeError(f"pass labels= for items of type {type(item).__name__}")


def stratified_subset(
    items: Sequence[T],
    labels: Sequence[Hashable] | None = None,
    *,
    fraction: float | None = None,
    per_class: int | None = None,
    seed: int = 0,
) -> tuple[list[T], list[T]]:
    """Split `items` into (labeled, unlabeled), stratified per class.

    Each class c with n_c items gets k_c = per_class, or round(fraction * n_c), clamped to
    [1, n_c]: at least one labeled video per class. The choice is a seeded permutation per class
    (classes visited in sorted order), taking its first k_c items, so for one seed a smaller
    fraction's labeled set is contained in a larger one's. Both outputs keep the input order.

    Args:
      items: `VideoEntry`s, `ListLine`s, or anything with `labels` given.
      labels: class of each item; default: `label_text` / `class_key`.
      fraction: in (0, 1]; exactly one of `fraction` and `per_class`.
      per_class: videos per class.
      seed: numpy seed.
    """
    if (fraction is None) == (per_class is None):
        raise ValueError("give exactly one of fraction= and per_class=")
    if fraction is not None and not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if per_class is not None and per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    labels = [_class_of(item) for item in items] if labels is None else list(labels)
    if len(labels) != len(items):
        raise ValueError(f"{len(labels)} labels for {len(items)} items")
    by_class: dict[Hashable, list[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(label, []).append(index)
    rng = np.random.default_rng(seed)
    chosen: set[int] = set()
    for label in sorted(by_class, key=str):
        members = by_class[label]
        wanted = per_class if per_class is not None else math.floor(fraction * len(members) + 0.5)
        k = min(len(members), max(1, wanted))
        chosen.update(members[i] for i in rng.permutation(len(members))[:k])
    labeled = [item for i, item in enumerate(items) if i in chosen]
    unlabeled = [item for i, item in enumerate(items) if i not in chosen]
    return labeled, unlabeled


_GROUP = re.compile(r"_g(\d+)_c\d+")


def group_of(video_id: str) -> int | None:
    """UCF101-style group number of a video id ("v_Class_g08_c03" -> 8), else None."""
    match = _GROUP.search(video_id)
    return int(match.group(1)) if match else None


def validation_split(lines: Sequence[ListLine], *, fraction: float, seed: int = 0) -> tuple[list[ListLine], list[ListLine]]:
    """Carve a validation set off a train list: (rest, validation), both in input order.

    Settings and checkpoints are chosen on it, never on the test split (the official code selected
    on the test set). When every video id carries a UCF101 group ("_g08_c03": same actor and scene),
    whole group numbers are held out, round(fraction * groups) of them (at least one, never all),
    as the official test splits do: clips of one group are near-duplicates, and a validation video
    whose group is in training would flatter the model. Otherwise the videos are drawn stratified
    per class (`stratified_subset`).
    """
    if not 0 < fraction < 1:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    groups = [group_of(line.video_id) for line in lines]
    if lines and all(g is not None for g in groups):
        numbers = sorted(set(groups))
        if len(numbers) < 2:
            raise ValueError(f"the list has {len(numbers)} group(s): need >= 2 to hold one out for validation")
        k = min(max(1, math.floor(fraction * len(numbers) + 0.5)), len(numbers) - 1)
        held = {numbers[i] for i in np.random.default_rng(seed).permutation(len(numbers))[:k]}
        return ([line for line, g in zip(lines, groups) if g not in held],
                [line for line, g in zip(lines, groups) if g in held])
    validation, rest = stratified_subset(lines, fraction=fraction, seed=seed)
    return rest, validation


# ----------------------------------------------------------------------------------------- layouts


def _check_unique(entries: list[VideoEntry], source: str) -> None:
    seen: dict[str, str] = {}
    for entry in entries:
        if entry.video_id in seen:
            raise ValueError(
                f"{source}: video id {entry.video_id!r} appears twice ({seen[entry.video_id]} and {entry.path}); "
                "ids must be unique within a split"
            )
        seen[entry.video_id] = entry.path


def _is_video(name: str) -> bool:
    return name.lower().endswith(VIDEO_EXTENSIONS) and not name.startswith(".")


def _locate(videos_dir: str, relative: str) -> str:
    """`{videos_dir}/{relative}`, or `{videos_dir}/{basename}` when only the flat file exists."""
    path = os.path.join(videos_dir, relative)
    if not os.path.exists(path):
        flat = os.path.join(videos_dir, os.path.basename(relative))
        if os.path.exists(flat):
            return flat
    return path


def parse_folders(videos_dir: str, split: str = "") -> tuple[list[VideoEntry], list[str]]:
    """Class-per-folder tree -> (entries sorted by class then path, sorted class names)."""
    root = os.path.join(videos_dir, split) if split and os.path.isdir(os.path.join(videos_dir, split)) else videos_dir
    if not os.path.isdir(root):
        raise FileNotFoundError(f"videos directory not found: {root}")
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
    entries = []
    for index, name in enumerate(classes):
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, name)):
            dirnames.sort()
            for filename in sorted(f for f in filenames if _is_video(f)):
                path = os.path.join(dirpath, filename)
                entries.append(VideoEntry(path, video_id_from_path(path), index, name))
    if not entries:
        raise ValueError(
            f"no videos found under {root}: expected {root}/<Class>/<video> with extensions {', '.join(VIDEO_EXTENSIONS)}"
        )
    _check_unique(entries, root)
    return entries, classes


def parse_ucf101(videos_dir: str, split_dir: str, split: str = "train", split_index: int = 1) -> tuple[list[VideoEntry], list[str]]:
    """UCF101 lists -> (entries in list order, classes in classInd order)."""
    if split not in ("train", "test"):
        raise ValueError(f"UCF101 split must be 'train' or 'test', got {split!r}")
    class_file = os.path.join(split_dir, "classInd.txt")
    classes_by_number: dict[int, str] = {}
    for n, line in enumerate(_read_text(class_file, "UCF101 class index").splitlines(), 1):
        if line.strip():
            try:
                number, name = line.split()
                classes_by_number[int(number)] = name
            except ValueError:
                raise ValueError(f"{class_file}:{n}: expected '<index> <ClassName>', got {line!r}") from None
    classes = [classes_by_number[k] for k in sorted(classes_by_number)]
    if sorted(classes_by_number) != list(range(1, len(classes) + 1)):
        raise ValueError(f"{class_file}: class indices must be 1..{len(classes)}")
    index_of = {name: i for i, name in enumerate(classes)}
    list_file = os.path.join(split_dir, f"{split}list{split_index:02d}.txt")
    entries = []
    for n, line in enumerate(_read_text(list_file, f"UCF101 {split} list").splitlines(), 1):
        tokens = line.split()
        if not tokens:
            continue
        relative = tokens[0].replace("\\", "/")
        if len(tokens) > 1:
            number = int(tokens[1])
            if number not in classes_by_number:
                raise ValueError(f"{list_file}:{n}: unknown class index {number} (not in {class_file})")
            label = classes_by_number[number]
        else:
            label = os.path.basename(os.path.dirname(relative))
            if label not in index_of:
                raise ValueError(f"{list_file}:{n}: unknown class {label!r} (not in {class_file})")
        entries.append(VideoEntry(_locate(videos_dir, relative), video_id_from_path(relative), index_of[label], label))
    if not entries:
        raise ValueError(f"{list_file} lists no videos")
    _check_unique(entries, list_file)
    return entries, classes


_HMDB_CODES = {"train": "1", "test": "2"}


def parse_hmdb51(videos_dir: str, split_dir: str, split: str = "train", split_index: int = 1) -> tuple[list[VideoEntry], list[str]]:
    """HMDB51 split files -> (entries by class then file order, sorted class names)."""
    if split not in _HMDB_CODES:
        raise ValueError(f"HMDB51 split must be 'train' or 'test', got {split!r}")
    suffix = f"_test_split{split_index}.txt"
    files = sorted(glob.glob(os.path.join(glob.escape(split_dir), f"*{suffix}")))
    if not files:
        raise FileNotFoundError(f"HMDB51 split files not found: {os.path.join(split_dir, '<class>' + suffix)}")
    classes = [os.path.basename(f)[: -len(suffix)] for f in files]
    entries = []
    for index, (name, split_file) in enumerate(zip(classes, files)):
        for n, line in enumerate(_read_text(split_file, "HMDB51 split file").splitlines(), 1):
            tokens = line.split()
            if not tokens:
                continue
            if len(tokens) != 2 or tokens[1] not in ("0", "1", "2"):
                raise ValueError(f"{split_file}:{n}: expected '<video>.avi 0|1|2', got {line!r}")
            if tokens[1] == _HMDB_CODES[split]:
                path = _locate(videos_dir, os.path.join(name, tokens[0]))
                entries.append(VideoEntry(path, video_id_from_path(tokens[0]), index, name))
    if not entries:
        raise ValueError(f"no {split} videos in the HMDB51 split files {os.path.join(split_dir, '*' + suffix)}")
    _check_unique(entries, split_dir)
    return entries, classes


def _kinetics_csv(split_dir: str, split: str) -> str:
    names = [f"{split}.csv", f"kinetics400_{split}.csv", f"kinetics-400_{split}.csv"]
    if split == "val":
        names += ["validate.csv", "kinetics400_validate.csv", "kinetics-400_validate.csv"]
    for name in names:
        if os.path.isfile(os.path.join(split_dir, name)):
            return os.path.join(split_dir, name)
    raise FileNotFoundError(f"Kinetics-400 {split} CSV not found in {split_dir} (tried {', '.join(names)})")


def _kinetics_rows(csv_file: str) -> list[tuple[int, dict[str, str]]]:
    with open(csv_file, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in _KINETICS_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{csv_file}: missing column(s) {', '.join(missing)}; expected {','.join(_KINETICS_COLUMNS)},split")
        return [(n, row) for n, row in enumerate(reader, 2)]


def parse_kinetics400(videos_dir: str, split_dir: str, split: str = "train") -> tuple[list[VideoEntry], list[str]]:
    """Kinetics CSV -> (entries in CSV order, sorted class names)."""
    csv_file = _kinetics_csv(split_dir, split)
    rows = _kinetics_rows(csv_file)
    class_source = os.path.join(split_dir, "train.csv")
    class_rows = _kinetics_rows(class_source) if os.path.isfile(class_source) and class_source != csv_file else rows
    classes = sorted({row["label"] for _, row in class_rows})
    index_of = {name: i for i, name in enumerate(classes)}
    found: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(videos_dir):
        dirnames.sort()
        for filename in sorted(filenames):
            if _is_video(filename):
                found.setdefault(video_id_from_path(filename), os.path.join(dirpath, filename))
    entries = []
    for n, row in rows:
        label = row["label"]
        if label not in index_of:
            raise ValueError(f"{csv_file}:{n}: unknown class {label!r} (not among the labels of {class_source})")
        try:
            video_id = kinetics_video_id(row["youtube_id"], row["time_start"], row["time_end"])
        except (TypeError, ValueError) as e:
            raise ValueError(f"{csv_file}:{n}: bad time_start/time_end: {e}") from None
        path = found.get(video_id, os.path.join(videos_dir, split, label, f"{video_id}.mp4"))
        entries.append(VideoEntry(path, video_id, index_of[label], label))
    if not entries:
        raise ValueError(f"{csv_file} lists no videos")
    _check_unique(entries, csv_file)
    return entries, classes


def parse_layout(
    layout: str, videos_dir: str, split_dir: str = "", split: str = "train", split_index: int = 1
) -> tuple[list[VideoEntry], list[str]]:
    """Dispatch to the parser of `layout` (one of `LAYOUTS`) -> (entries, class names by label index)."""
    if layout == "folders":
        return parse_folders(videos_dir, split)
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; valid: {', '.join(LAYOUTS)}")
    if not split_dir:
        raise ValueError(f"layout {layout!r} needs the directory of its split files (split_dir)")
    if not os.path.isdir(split_dir):
        raise FileNotFoundError(f"split directory not found: {split_dir}")
    if layout == "ucf101":
        return parse_ucf101(videos_dir, split_dir, split, split_index)
    if layout == "hmdb51":
        return parse_hmdb51(videos_dir, split_dir, split, split_index)
    return parse_kinetics400(videos_dir, split_dir, split)
