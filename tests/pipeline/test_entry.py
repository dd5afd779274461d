"""The submitted job's entrypoint: a Python without darkroom's dependencies ends in one line with the fix."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _entry(python: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [python, "-m", "pipeline.entry", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_a_python_without_the_dependencies_is_named_with_the_fix(tmp_path):
    # A bare virtualenv: the same Python version, none of darkroom's packages (like the head's system
    # Python when Ray was started from an unactivated virtualenv).
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "bare")], check=True)
    bare = str(tmp_path / "bare" / "bin" / "python")
    result = _entry(bare, "run", "jobs/demo.yaml")
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: {bare} lacks darkroom's dependencies (no module click, ray, torch,"), line
    assert "darkroom submit --python /path/to/venv/bin/python" in line and "docs/cluster.md" in line
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_the_right_python_runs_the_darkroom_command():
    result = _entry(sys.executable, "validate", "jobs/demo.yaml")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "jobs/demo.yaml: ok\n"
    bad = _entry(sys.executable, "validate", "no-such.yaml")  # the CLI's own exit codes come through
    assert bad.returncode == 2
