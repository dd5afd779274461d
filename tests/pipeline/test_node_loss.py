"""Losing a node mid-run: a head and two worker nodes on 127.0.0.1 (tests.cluster); once some shards
are committed, the worker node holding a model actor is SIGKILLed (its raylet and every worker on it).
Ray restarts the actor on the nodes left and the driver retries what ran there: the run completes
with exactly one row per input, and every ok output decodes."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
import yaml
from PIL import Image

from pipeline import manifest, runs
from tests.cluster import Nodes
from tests.faults import pids_of, start_driver

N_INPUTS = 60


@pytest.mark.slow  # three Ray nodes, a node-death timeout and actor restarts: minutes on a small machine
@pytest.mark.timeout(900)
def test_a_lost_worker_node_loses_no_input(tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(N_INPUTS):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / f"{i:03d}.png")
    out = str(tmp_path / "out")
    job = {
        "name": "node-loss",
        "input": {"uri": str(root)},
        "output": {"uri": out},
        "steps": [{"model": "bicubic", "params": {"scale": 2}}],
        "resources": {"actors": 2, "cpus_per_actor": 1, "cpus_per_task": 0.5, "batch_size": 2, "shard_size": 4},
    }
    job_path = tmp_path / "job.yaml"
    job_path.write_text(yaml.safe_dump(job))
    # A lost node is declared dead after a few missed health checks (Ray's default waits ~30 s).
    nodes = Nodes({"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"})
    try:
        nodes.start_head(cpus=1)
        nodes.start_worker("worker-1", cpus=2)
        nodes.wait_for_cpus(3)  # one node joining at a time: two at once timed out starting on 2 cores
        nodes.start_worker("worker-2", cpus=2)
        nodes.wait_for_cpus(5)
        driver = start_driver(job_path, nodes.env)
        killed = None
        deadline = time.monotonic() + 600
        while killed is None and driver.poll() is None and time.monotonic() < deadline:
            records = runs.load_all(out)
            committed = len(manifest.committed_shards(out, records[-1].run_id)) if records else 0
            on_workers = [n for n in map(nodes.group_of, pids_of("ray::ModelActor")) if n and n != "head"]
            if committed >= 2 and on_workers:
                killed = on_workers[0]
                nodes.kill(killed)
            time.sleep(0.3)
        output = driver.communicate(timeout=600)[0].decode()
    finally:
        nodes.close()
    assert killed is not None, f"the run ended before a worker node could be killed:\n{output[-3000:]}"
    assert committed < N_INPUTS // 4, "killed after the last shard: nothing left to lose"
    assert driver.returncode in (0, 3), output[-3000:]
    rows = manifest.read(out).to_pylist()
    assert sorted(r["input_uri"].rsplit("/", 1)[1] for r in rows) == [f"{i:03d}.png" for i in range(N_INPUTS)]
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) >= N_INPUTS - 2, [r for r in rows if r["status"] != "ok"]  # at most a blamed image or two
    for r in ok:
        with open(r["output_uri"], "rb") as f:
            assert Image.open(io.BytesIO(f.read())).size == (16, 16)
