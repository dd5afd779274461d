"""Driver memory while planning (and running): peak RSS of the driver over list files of growing size.

Each size runs in a fresh process (so peaks do not mix): write a Parquet list file of N
URIs, then plan a job over it (streamed listing, sharding, incremental diff against an
empty output). With ``--run`` the job is then run to the end on a local Ray (api.run: planning
again, 1,000-input shards through the shard tasks, N manifest rows committed): the list names
local files that do not exist, so every input is the cheapest possible work — one read error
row — and what is measured is the driver's own bookkeeping (the shard tasks and Ray's daemons
are other processes, not counted). Prints a table and writes benchmarks/results/plan_memory.json
(run_memory.json with ``--run``).

    .venv/bin/python benchmarks/plan_memory.py [N ...]        # default: 10000 100000 1000000
    .venv/bin/python benchmarks/plan_memory.py --run [N ...]  # plan + run; 1M takes minutes on 2 cores
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
n, tmp, run = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "run"
root = f"{tmp}/missing" if run else "s3://archive/photos"
uris = pa.array([f"{root}/{i // 1000:05d}/{i:09d}.jpg" for i in range(n)])
pq.write_table(pa.table({"uri": uris, "size": pa.array([100_000] * n, pa.int64())}), f"{tmp}/list.parquet")
del uris
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
job = parse_job({"name": "mem", "input": {"uri": f"{tmp}/list.parquet"}, "output": {"uri": f"{tmp}/out"},
                 "steps": [{"model": "identity"}], "resources": {"shard_size": 1000}}, default_registry())
t0 = time.perf_counter()
summary = api.plan(job)
elapsed = time.perf_counter() - t0
if run:
    t0 = time.perf_counter()
    done = api.run(job)
    assert done.counts == {"error": n}, done.counts  # every input once, as a read error row
    elapsed = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(f"{n} {summary.inputs} {summary.shards} {elapsed:.2f} {base} {peak}")
"""


def measure(n: int, run: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(n), tmp, "run" if run else "plan"], capture_output=True, text=True
        )
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    _, inputs, shards, seconds, base_kib, peak_kib = out.stdout.split()[-6:]
    return {
        "inputs": int(inputs),
        "shards": int(shards),
        ("run_seconds" if run else "plan_seconds"): float(seconds),
        "rss_before_plan_mib": int(base_kib) / 1024,
        "peak_rss_mib": int(peak_kib) / 1024,
    }


def main() -> None:
    args = sys.argv[1:]
    run = "--run" in args
    sizes = [int(a) for a in args if a != "--run"] or [10_000, 100_000, 1_000_000]
    rows = [measure(n, run) for n in sizes]
    what = "run s" if run else "plan s"
    print(f"{'inputs':>10} {'shards':>7} {what:>8} {'RSS before MiB':>15} {'peak RSS MiB':>13}")
    for r in rows:
        seconds = r["run_seconds" if run else "plan_seconds"]
        print(
            f"{r['inputs']:>10} {r['shards']:>7} {seconds:>8.2f} {r['rss_before_plan_mib']:>15.0f} "
            f"{r['peak_rss_mib']:>13.0f}"
        )
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    name = "run_memory.json" if run else "plan_memory.json"
    (results / name).write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
