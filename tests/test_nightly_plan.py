"""benchmarks/nightly_plan.py keeps running: a small history, planned with and without the snapshot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(300)
def test_small_history_plans_from_the_snapshot(tmp_path):
    cmd = [sys.executable, str(REPO / "benchmarks" / "nightly_plan.py"), "--inputs", "300", "--nights", "1,3"]
    proc = subprocess.run([*cmd, "--results-dir", str(tmp_path)], capture_output=True, text=True, cwd=REPO, timeout=280)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads((tmp_path / "nightly_plan.json").read_text())["rows"]
    assert [(r["nightly_runs"], r["snapshot"]) for r in rows] == [(1, True), (3, True), (3, False)]
    assert [r["parts"] for r in rows] == [5 + 1, 5 + 3, 5 + 3]  # 300 inputs in 64-row parts, 3 touched a night
    assert [(r["read_bytes"], r["manifest_parts_read"]) for r in rows] == [(1, 0), (1, 0), (8, 8)]
