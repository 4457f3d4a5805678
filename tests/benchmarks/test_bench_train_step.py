"""benchmarks/bench_train_step.py as a user runs it, on its --quick shape (a few seconds a process)."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_distinctive_row_with_a_global_clip_longer_than_the_local_clips(tmp_path):
    # The demo's SSL shape: 8-frame local clips, a 16-frame global clip (R3D-18 keeps T/4 slices, and
    # L_D2 needs one per local clip, so 8 frames fail). Both implementations must run it.
    output = tmp_path / "rows.json"
    impls = "tbkeras,torch" if importlib.util.find_spec("torch") else "tbkeras"
    result = subprocess.run(
        [sys.executable, "benchmarks/bench_train_step.py", "--quick", "--models=r3d18", "--stages=distinctive",
         "--precisions=fp32", "--strided_convs=native", f"--impls={impls}", "--ssl_frames=8",
         "--ssl_global_frames=16", f"--output={output}"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2"},
        capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    (row,) = json.loads(output.read_text())["rows"]
    assert set(row["runs"]) == {"tbkeras native", *(["torch"] if "torch" in impls else [])}
    for run in row["runs"].values():
        assert "error" not in run and run["median_seconds"] > 0, run
    assert row["shape"] == "2 videos x 2 views x (4 x 8x32x32 + 1 x 16x32x32)"
    assert row["clips_per_step"] == 2 * 2 * (4 + 1)

    # FLOPs: 16 local clips of 8 frames and 4 global clips of 16, 3 forwards each (forward + backward),
    # counted here from the backbone and head alone.
    from tbkeras.models import ProjectionHead, build_backbone
    from tbkeras.models.flops import count_flops

    import keras

    backbone = build_backbone("r3d18", width_multiplier=0.125, strided_conv="native")
    features = keras.Input((backbone.feature_dim,))
    head = count_flops(keras.Model(features, ProjectionHead()(features)), (backbone.feature_dim,))["flops"]
    clip8, clip16 = (count_flops(backbone, (t, 32, 32, 3))["flops"] for t in (8, 16))
    assert clip16 > 1.9 * clip8  # the global clip costs what its length says
    assert row["flops_per_step"] == 3 * (16 * (clip8 + head) + 4 * (clip16 + head))


def test_a_negative_global_clip_length_is_a_usage_error():
    result = subprocess.run([sys.executable, "benchmarks/bench_train_step.py", "--impls=tbkeras",
                             "--ssl_global_frames=-1"],
                            cwd=REPO, env={**os.environ, "PYTHONPATH": REPO}, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode != 0 and "--ssl_global_frames=-1" in result.stderr
