"""benchmarks/bench_semisup.py as a user runs it, on the tiny recipe of tests/experiments/test_run.py."""
import json
import os
import subprocess
import sys

import pytest

from tests.experiments.test_run import TINY

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_rows_of_two_seeds_share_ssl_train_side_by_side_and_write_the_results_file(tmp_path):
    output, plot = tmp_path / "semisup.json", tmp_path / "semisup.png"
    tiny = [f for f in TINY if not f.startswith(("--flagfile", "--labeled_fraction"))]
    result = subprocess.run(
        [sys.executable, "benchmarks/bench_semisup.py", "--bench_flagfile=experiments/demo.flags",
         "--fractions=34", "--seeds=0,1", "--rows=a,c,g,table3/e", "--row_workers=2", f"--work_dir={tmp_path / 'work'}",
         f"--output={output}", f"--plot={plot}", "--recipe_flag=--deterministic",
         *(f"--recipe_flag={f}" for f in tiny)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2"},
        capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-4000:]

    results = json.loads(output.read_text())
    setup = results["setup"]
    assert setup["complete"] and setup["seeds"] == ["0", "1"] and setup["row_workers"] == 2
    # The rows' stages ran in the workers and their times reached this process's totals.
    assert setup["seconds_per_stage"]["student"] > 0 and setup["seconds_per_stage"]["supervised"] > 0
    rows = results["34"]
    assert sorted(rows) == ["a", "c", "g", "table3"] and sorted(rows["table3"]) == ["e"]
    for entry in (rows["a"], rows["c"], rows["g"], rows["table3"]["e"]):
        assert len(entry["runs"]) == 2 and len(entry["val"]["runs"]) == 2
        assert all(0 <= r <= 100 for r in entry["runs"] + entry["val"]["runs"])
        assert entry["mean"] == pytest.approx(sum(entry["runs"]) / 2)
        assert set(entry["by_kind"]) == {"repetitive", "order"}
    # Differences paired by seed, of the rows that ran.
    assert list(results["paired"]["34"]) == ["g - a"]
    assert results["paired"]["34"]["g - a"]["runs"] == pytest.approx(
        [g - a for g, a in zip(rows["g"]["runs"], rows["a"]["runs"])])
    # --share_ssl (the default): the SSL stages ran once, under seed 0, so TSTR has one run.
    assert len(results["tstr"]["runs"]["repetitive_mean_s"]) == 1
    assert 0 < results["tstr"]["repetitive_mean_s"] <= 1
    ssl = tmp_path / "work" / "ssl"
    for seed in ("0", "1"):
        assert os.path.realpath(tmp_path / "work" / f"seed{seed}" / "pct34" / "g" / "tstr") == str(ssl / "tstr")
    assert plot.read_bytes().startswith(b"\x89PNG")
    # The printed table has a line per row run, and none for the rows not run.
    assert "| (g) TimeBalance (TSTR) |" in result.stdout and "| T3 (e) + both, TSTR |" in result.stdout
    assert "| (b) f_I |" not in result.stdout and "| (g) - (a): TimeBalance against labels only" in result.stdout


@pytest.mark.parametrize("flag, message", [("--rows=a,h", "--rows: unknown ['h']"),
                                           ("--row_workers=0", "--row_workers must be >= 1, got 0")])
def test_bad_flags_are_a_usage_error_naming_the_flag(flag, message, tmp_path):
    result = subprocess.run([sys.executable, "benchmarks/bench_semisup.py", flag, f"--work_dir={tmp_path}"],
                            cwd=REPO, env={**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2"},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and message in result.stderr
