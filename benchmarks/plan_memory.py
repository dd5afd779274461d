"""Driver memory while planning: peak RSS of `darkroom plan` over list files of growing size.

Each size runs in a fresh process (so peaks do not mix): write a Parquet list file of N
URIs, then plan a job over it (streamed listing, sharding, incremental diff against an
empty output). Prints a table and writes benchmarks/results/plan_memory.json.

    .venv/bin/python benchmarks/plan_memory.py [N ...]      # default: 10000 100000 1000000
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import resource, sys, time
import pyarrow as pa, pyarrow.parquet as pq
from models import default_registry
from pipeline import api
from pipeline.job import parse_job
n, tmp = int(sys.argv[1]), sys.argv[2]
uris = pa.array([f"s3://archive/photos/{i // 1000:05d}/{i:09d}.jpg" for i in range(n)])
pq.write_table(pa.table({"uri": uris, "size": pa.array([100_000] * n, pa.int64())}), f"{tmp}/list.parquet")
del uris
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
job = parse_job({"name": "mem", "input": {"uri": f"{tmp}/list.parquet"}, "output": {"uri": f"{tmp}/out"},
                 "steps": [{"model": "identity"}], "resources": {"shard_size": 1000}}, default_registry())
t0 = time.perf_counter()
summary = api.plan(job)
elapsed = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(f"{n} {summary.inputs} {summary.shards} {elapsed:.2f} {base} {peak}")
"""


def measure(n: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run([sys.executable, "-c", CHILD, str(n), tmp], capture_output=True, text=True, check=True)
    _, inputs, shards, seconds, base_kib, peak_kib = out.stdout.split()
    return {
        "inputs": int(inputs),
        "shards": int(shards),
        "plan_seconds": float(seconds),
        "rss_before_plan_mib": int(base_kib) / 1024,
        "peak_rss_mib": int(peak_kib) / 1024,
    }


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [10_000, 100_000, 1_000_000]
    rows = [measure(n) for n in sizes]
    print(f"{'inputs':>10} {'shards':>7} {'plan s':>8} {'RSS before MiB':>15} {'peak RSS MiB':>13}")
    for r in rows:
        print(f"{r['inputs']:>10} {r['shards']:>7} {r['plan_seconds']:>8.2f} {r['rss_before_plan_mib']:>15.0f} {r['peak_rss_mib']:>13.0f}")
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    (results / "plan_memory.json").write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
