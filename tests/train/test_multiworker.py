"""MultiWorkerMirroredStrategy over two local processes runs `fit_stage` (keras#20585 workaround)."""
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
def test_two_workers_fit_and_end_with_identical_weights(tmp_path):
    stage_dir = str(tmp_path / "stage")
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    procs = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "tests.train.stage_worker", stage_dir,
             "--strategy=multi_worker_mirrored", "--epochs=2", "--steps=3"],
            cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": REPO_ROOT, "TF_CONFIG": tf_config},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        ))
    outputs, deadline = [], time.monotonic() + 120
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=max(1.0, deadline - time.monotonic()))[0])
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    for proc, out in zip(procs, outputs):
        assert proc.returncode == 0, out[-3000:]
    weights = [json.loads(out.split("WEIGHTS ", 1)[1].splitlines()[0]) for out in outputs]
    for a, b in zip(*weights):
        np.testing.assert_array_equal(np.array(a), np.array(b))
    assert np.abs(np.array(weights[0][0])).max() > 0.1  # it trained

    # Worker 0 (the chief) owns the stage folder; worker 1 wrote only to its private folder.
    done = json.load(open(os.path.join(stage_dir, "DONE")))
    assert np.isfinite(done["metrics"]["loss"])
    assert os.path.exists(os.path.join(stage_dir, "workers", "worker-1", "DONE"))
    assert not os.path.exists(os.path.join(stage_dir, "workers", "worker-0"))
