"""Incremental diff at scale: plan a job over N listed inputs against N committed manifest rows.

Builds (with Arrow compute, no Python loop per row) a manifest of N ok rows under a fake run
and a Parquet list file of the same N URIs (with size and etag) in one process, then, in a fresh
process, times `pipeline.api.plan` in incremental mode — every input is "unchanged", so nothing
is planned — and reports its wall and CPU time, the planning process's RSS before `plan` (imports)
and its peak RSS. Building the inputs needs more memory than planning at 10M, so it no longer
shares the measured process. The 1-minute load average at the start is recorded: the machine may
be shared, and then wall time overstates the cost (CPU time does not).

    .venv/bin/python benchmarks/diff_scale.py [N ...]        # default: 100000 1000000
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUILD = r"""
import os, sys
import pyarrow as pa, pyarrow.compute as pc, pyarrow.parquet as pq
from models import default_registry
from pipeline import layout, manifest
from pipeline.job import parse_job
n, tmp = int(sys.argv[1]), sys.argv[2]
job = parse_job({"name": "diff", "input": {"uri": f"{tmp}/list.parquet"}, "output": {"uri": f"{tmp}/out"},
                 "steps": [{"model": "identity"}], "resources": {"shard_size": 1000}}, default_registry())
ids = pc.cast(pa.array(range(n), pa.int64()), pa.string())
uris = pc.binary_join_element_wise("s3://archive/photos/", ids, ".jpg", "")
etags = pc.binary_join_element_wise("etag-", ids, "")
sizes = pa.array([100_000] * n, pa.int64())
pq.write_table(pa.table({"uri": uris, "size": sizes, "etag": etags}), f"{tmp}/list.parquet")
os.makedirs(layout.manifest_dir(f"{tmp}/out", "r1"))
part = 1_000_000
for k, start in enumerate(range(0, n, part)):
    m = min(part, n - start)
    cols = {f.name: pa.nulls(m, f.type) for f in manifest.MANIFEST_SCHEMA}
    cols.update(run_id=pa.array(["r1"] * m), shard=pa.array([k] * m, pa.int32()), input_uri=uris.slice(start, m),
                input_size=sizes.slice(start, m), input_etag=etags.slice(start, m), steps=pa.array(["[]"] * m),
                models=pa.array([["identity"]] * m, pa.list_(pa.string())),
                weights_sha256=pa.array([[""]] * m, pa.list_(pa.string())),
                fingerprint=pa.array([job.fingerprint(default_registry())] * m),
                status=pa.array([manifest.Status.OK] * m, pa.string()),
                attempt=pa.array([1] * m, pa.int32()), committed_at=pa.array([0] * m, pa.timestamp("ms", tz="UTC")))
    pq.write_table(pa.table(cols, schema=manifest.MANIFEST_SCHEMA), layout.manifest_part_uri(f"{tmp}/out", "r1", k))
"""

PLAN = r"""
import resource, sys, time
from models import default_registry
from pipeline import api
from pipeline.job import parse_job
n, tmp = int(sys.argv[1]), sys.argv[2]
job = parse_job({"name": "diff", "input": {"uri": f"{tmp}/list.parquet"}, "output": {"uri": f"{tmp}/out"},
                 "steps": [{"model": "identity"}], "resources": {"shard_size": 1000}}, default_registry())
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0, c0 = time.perf_counter(), time.process_time()
summary = api.plan(job)
elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
assert summary.categories == {"unchanged": n}, summary.categories
print(f"{n} {elapsed:.2f} {cpu:.2f} {base} {peak}")
"""


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [100_000, 1_000_000]
    rows = []
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            for script in (BUILD, PLAN):
                load = os.getloadavg()[0]
                out = subprocess.run([sys.executable, "-c", script, str(n), tmp], capture_output=True, text=True)
                if out.returncode:
                    raise SystemExit(out.stderr[-2000:])
        _, seconds, cpu, base, peak = out.stdout.split()
        rows.append(
            {
                "rows": n,
                "plan_seconds": float(seconds),
                "plan_cpu_seconds": float(cpu),
                "rss_before_mib": int(base) / 1024,
                "peak_rss_mib": int(peak) / 1024,
                "load_average": round(load, 2),
            }
        )
    print(
        f"{'manifest rows = listed':>24} {'plan s':>8} {'CPU s':>7} {'RSS before MiB':>15} {'peak RSS MiB':>13} "
        f"{'load':>5}"
    )
    for r in rows:
        print(
            f"{r['rows']:>24} {r['plan_seconds']:>8.2f} {r['plan_cpu_seconds']:>7.2f} {r['rss_before_mib']:>15.0f}"
            f" {r['peak_rss_mib']:>13.0f} {r['load_average']:>5.2f}"
        )
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    (results / "diff_scale.json").write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
