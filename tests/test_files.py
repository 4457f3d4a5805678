import os

import pytest

from tbkeras import files


def test_atomic_write_json_round_trip(tmp_path):
    path = str(tmp_path / "sub" / "a.json")
    files.atomic_write_json(path, {"x": [1, 2]})
    assert files.read_json(path) == {"x": [1, 2]}
    assert os.listdir(tmp_path / "sub") == ["a.json"]


def test_failed_write_leaves_old_file_and_no_temp(tmp_path):
    path = str(tmp_path / "a.txt")
    files.atomic_write_text(path, "old")
    with pytest.raises(RuntimeError):
        with files.atomic_path(path) as tmp:
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError("killed")
    assert open(path).read() == "old"
    assert os.listdir(tmp_path) == ["a.txt"]


def test_read_json_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest not found: .*nope.json"):
        files.read_json(str(tmp_path / "nope.json"), what="manifest")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ValueError, match="bad.json"):
        files.read_json(str(bad))


def test_atomic_save_weights_round_trip(tmp_path):
    import keras
    import numpy as np

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    path = str(tmp_path / "m.weights.h5")
    files.atomic_save_weights(model, path)
    other = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    other.load_weights(path)
    np.testing.assert_array_equal(model.get_weights()[0], other.get_weights()[0])
    assert os.listdir(tmp_path) == ["m.weights.h5"]


def test_absolute_path_spells_a_local_path_once_and_leaves_urls(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert files.absolute_path("data/./x/") == str(tmp_path / "data" / "x")
    assert files.absolute_path(str(tmp_path / "a" / ".." / "b")) == str(tmp_path / "b")
    assert files.absolute_path("gs://bucket/shards") == "gs://bucket/shards"
    assert files.absolute_path("") == ""
