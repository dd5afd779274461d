"""Driver memory while planning (and running): peak RSS of the driver over list files of growing size.

Each size runs in a fresh process (so peaks do not mix): write a Parquet list file of N
URIs, then plan a job over it (streamed listing, sharding, incremental diff against an
empty output). The planning-only measurement lists ``s3://archive/photos/…`` URIs that are
never opened (planning reads only the list file).

With ``--run`` the job is then run to the end on a local Ray (api.run: planning again,
1,000-input shards through the shard tasks, the identity model in batches of 32, N manifest
rows committed), and every input is a real image that is read, decoded, sent through the
model actor, encoded and written. Writing N distinct real files would cost N × the file's
size in disk and minutes of CPU before the measurement starts, so the inputs are N distinct
paths that are hard links to a pool of ``POOL`` (256) real 16×16 RGB PNGs, each with its own
pixels: every URI exists, is its own input row with its own output path, and decodes; what
the pool saves is disk, not work (the page cache holds the pool, so reads are faster than
from a cold archive). The outputs are N real PNG files (about 4 KiB of disk and one inode
each: ~4 GiB for 1M). What is measured is the driver's own bookkeeping (the shard tasks and
Ray's daemons are other processes, not counted). Until 2026-12 the run listed files that did
not exist, so no image was decoded (every row was a read error).

Prints a table and writes benchmarks/results/plan_memory.json (run_memory.json with ``--run``).

    .venv/bin/python benchmarks/plan_memory.py [N ...]        # default: 10000 100000 1000000
    .venv/bin/python benchmarks/plan_memory.py --run [N ...]  # plan + run; 1M: tens of minutes on 2 cores, ~4 GiB
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

POOL = 256  # real PNG files behind the --run inputs' hard links

# Writes the inputs and the list file, in a process of its own: the driver's peak RSS (a
# high-water mark) must not include building N paths.
PREPARE = r"""
import os, sys
import numpy as np, pyarrow as pa, pyarrow.parquet as pq
from PIL import Image
n, tmp, run, pool = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "run", int(sys.argv[4])
if run:
    # Real 16×16 PNGs, each with its own pixels; input i is a hard link to pool file i % pool.
    rng = np.random.default_rng(0)
    os.makedirs(f"{tmp}/pool")
    sizes = []
    for k in range(min(n, pool)):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(f"{tmp}/pool/{k:03d}.png")
        sizes.append(os.path.getsize(f"{tmp}/pool/{k:03d}.png"))
    paths = []
    for i in range(n):
        if i % 1000 == 0:
            os.makedirs(f"{tmp}/inputs/{i // 1000:05d}")
        path = f"{tmp}/inputs/{i // 1000:05d}/{i:09d}.png"
        os.link(f"{tmp}/pool/{i % len(sizes):03d}.png", path)
        paths.append(path)
    uris, size = pa.array(paths), pa.array([sizes[i % len(sizes)] for i in range(n)], pa.int64())
    del paths
else:
    uris = pa.array([f"s3://archive/photos/{i // 1000:05d}/{i:09d}.jpg" for i in range(n)])
    size = pa.array([100_000] * n, pa.int64())
pq.write_table(pa.table({"uri": uris, "size": size}), f"{tmp}/list.parquet")
"""

CHILD = r"""
import resource, sys, time
from models import default_registry
from pipeline import api
from pipeline.job import parse_job
n, tmp, run = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "run"
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
job = parse_job({"name": "mem", "input": {"uri": f"{tmp}/list.parquet"}, "output": {"uri": f"{tmp}/out"},
                 "steps": [{"model": "identity"}], "resources": {"shard_size": 1000, "batch_size": 32}},
                default_registry())
t0 = time.perf_counter()
summary = api.plan(job)
elapsed = time.perf_counter() - t0
if run:
    t0 = time.perf_counter()
    done = api.run(job)
    assert done.counts == {"ok": n}, (done.counts, done.errors[:3])  # every input decoded and written once
    elapsed = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(f"{n} {summary.inputs} {summary.shards} {elapsed:.2f} {base} {peak}")
"""


def measure(n: int, run: bool) -> dict:
    mode = "run" if run else "plan"
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            [sys.executable, "-c", PREPARE, str(n), tmp, mode, str(POOL)], capture_output=True, text=True
        )
        if not out.returncode:
            out = subprocess.run([sys.executable, "-c", CHILD, str(n), tmp, mode], capture_output=True, text=True)
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
