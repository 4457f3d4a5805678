"""`strided_conv="auto"`: a real timing of both choices, the faster kept, cached per machine and shape."""
import json

import pytest

from tbkeras.models import strided_conv as sc

TINY = sc.StridedConvProbe(backbone="r3d18", width_multiplier=0.125, batch_size=2, clip_shape=(4, 24, 24))


def test_explicit_choices_need_no_measurement(tmp_path, monkeypatch):
    monkeypatch.setattr(sc, "time_strided_convs", lambda *a, **k: pytest.fail("measured an explicit choice"))
    cache = str(tmp_path / "cache.json")
    assert sc.resolve_strided_conv("native", TINY, cache_path=cache) == "native"
    assert sc.resolve_strided_conv("subsample", TINY, cache_path=cache) == "subsample"
    assert not (tmp_path / "cache.json").exists()
    with pytest.raises(ValueError, match="strided_conv must be one of"):
        sc.resolve_strided_conv("fastest", TINY, cache_path=cache)


def test_auto_times_both_keeps_the_faster_and_caches_it(tmp_path):
    cache = tmp_path / "sub" / "strided_conv.json"
    choice = sc.resolve_strided_conv("auto", TINY, cache_path=str(cache), steps=2)
    stored = json.loads(cache.read_text())
    entry = stored[TINY.cache_key()]
    seconds = entry["seconds"]
    assert set(seconds) == {"native", "subsample"} and all(s > 0 for s in seconds.values())
    assert choice == entry["choice"] == min(seconds, key=seconds.get)
    assert "r3d18 x0.125 | 2x4x24x24" in TINY.cache_key()


def test_the_cache_is_reused_per_key_and_the_faster_wins(tmp_path, monkeypatch):
    cache = str(tmp_path / "cache.json")
    timings = {"native": 2.0, "subsample": 1.0}
    calls = []

    def fake(probe, steps):
        calls.append(probe)
        return dict(timings)

    monkeypatch.setattr(sc, "time_strided_convs", fake)
    assert sc.resolve_strided_conv("auto", TINY, cache_path=cache) == "subsample"
    timings.update(native=0.5)  # a second call must not measure again
    assert sc.resolve_strided_conv("auto", TINY, cache_path=cache) == "subsample" and len(calls) == 1
    other = sc.StridedConvProbe(backbone="r3d18", width_multiplier=0.125, batch_size=4, clip_shape=(4, 24, 24))
    assert sc.resolve_strided_conv("auto", other, cache_path=cache) == "native" and len(calls) == 2
    assert len(json.loads(open(cache).read())) == 2


def test_bad_probe_is_named():
    with pytest.raises(ValueError, match="backbone"):
        sc.StridedConvProbe(backbone="r2plus1d")
    with pytest.raises(ValueError, match="clip_shape"):
        sc.StridedConvProbe(clip_shape=(8, 112))
