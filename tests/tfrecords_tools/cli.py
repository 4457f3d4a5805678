"""Run a `tfrecords_tools/` script in a subprocess, as a user would (repo importable, TF quiet)."""
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tool_command(tool: str, *args: str) -> list[str]:
    return [sys.executable, os.path.join(REPO, "tfrecords_tools", tool), *args]


def tool_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]), "TF_CPP_MIN_LOG_LEVEL": "2"}


def run_tool(tool: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(tool_command(tool, *args), capture_output=True, text=True, env=tool_env(), timeout=300)
