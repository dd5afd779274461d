"""Incremental diff at scale: plan a job over N listed inputs against N committed manifest rows,
with darkroom's diff (``hashes``: pipeline/incremental.py's 64-bit hashes, built once) and with
pyarrow's hash join (``join``: Acero, ``Table.join``) side by side, on the same data.

Builds (with Arrow compute, no Python loop per row) a manifest of N ok rows under a fake run
and a Parquet list file of the same N URIs (with size and etag) in one process, then, in fresh
processes, times `pipeline.api.plan` in incremental mode — every input is "unchanged", so nothing
is planned — and reports its wall and CPU time, the planning process's RSS before `plan` (imports)
and its peak RSS. Variants alternate within each round, so both see the same machine load. The
1-minute load average at the start of each measurement is recorded: the machine may be shared,
and then wall time overstates the cost (CPU time does not).

The ``join`` variant keeps the listing streaming in chunks of planning.DIFF_ROWS, as darkroom
does; per chunk it joins the whole history (probe side) against the chunk (build side: Acero
builds the hash table on the right input), one inner join on the URI, and decides each row from
the matched pairs. Building on the history instead would hash all of it per chunk (5× slower
measured at 2M rows).

    .venv/bin/python benchmarks/diff_scale.py [--rounds R] [--variants hashes,join] [N ...]   # default: 100000 1000000
"""

from __future__ import annotations

import argparse
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
from pipeline import api, incremental
from pipeline.job import parse_job
n, tmp, variant = int(sys.argv[1]), sys.argv[2], sys.argv[3]
if variant == "join":
    from benchmarks.diff_scale import join_select, join_table
    load = incremental.load_history
    incremental.load_history = lambda *args: join_table(load(*args))
    incremental.select = join_select
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


def join_table(history):
    """``incremental.History`` as one table for ``join_select``: ``uri`` (large_string), ``key``
    (``uri \\0 version`` for rows of the job's fingerprint with a known version, else null),
    ``ok`` / ``error`` (bool: the row has the job's fingerprint and that status)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    keys = pc.binary_join_element_wise(history.uris, history.versions, pa.scalar("\x00", pa.large_string()))
    return pa.table({"uri": history.uris, "key": keys, "ok": history.ok, "error": history.error})


def join_select(plan, history, mode: str, counts: dict[str, int]):
    """``incremental.select`` with the categories decided by one pyarrow hash join per listing chunk."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from pipeline import incremental, storage

    uris = storage.redact_array(plan["input_uri"].combine_chunks())
    keys = incremental.version_keys(uris, plan["etag"], plan["size"], plan["mtime"]).cast(pa.large_string())
    uris = uris.cast(pa.large_string())
    probe = pa.table({"uri": uris, "pkey": keys, "row": pa.array(np.arange(len(plan)))})
    pairs = history.join(probe, "uri", join_type="inner")  # the right side (this chunk) is hashed
    known = pairs["pkey"].is_valid()
    same = pc.if_else(known, pc.fill_null(pc.equal(pairs["key"], pairs["pkey"]), False), True)
    hits = pa.table({"row": pairs["row"], "ok": pc.and_(same, pairs["ok"]), "error": pc.and_(same, pairs["error"])})
    grouped = hits.group_by("row").aggregate([("ok", "any"), ("error", "any")])
    unchanged, failed, seen = (np.zeros(len(plan), bool) for _ in range(3))
    rows = grouped["row"].to_numpy()
    seen[rows] = True
    unchanged[rows] = grouped["ok_any"].to_numpy(zero_copy_only=False)
    failed[rows] = grouped["error_any"].to_numpy(zero_copy_only=False) & ~unchanged[rows]
    unchanged, failed, seen = pa.array(unchanged), pa.array(failed), pa.array(seen)
    categories = pc.if_else(unchanged, "unchanged", pc.if_else(failed, "failed", pc.if_else(seen, "changed", "new")))
    for item in pc.value_counts(categories).to_pylist():
        counts[item["values"]] = counts.get(item["values"], 0) + item["counts"]
    return plan.filter(pc.is_in(categories, value_set=pa.array(sorted(incremental.RUN_CATEGORIES[mode]))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sizes", nargs="*", type=int, default=[100_000, 1_000_000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", default="hashes,join")
    args = parser.parse_args()
    variants = args.variants.split(",")
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent.parent), os.environ.get("PYTHONPATH", "")])
    )
    rows = []
    for n in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            out = subprocess.run([sys.executable, "-c", BUILD, str(n), tmp], capture_output=True, text=True, env=env)
            if out.returncode:
                raise SystemExit(out.stderr[-2000:])
            for r in range(args.rounds):
                for variant in variants:
                    load = os.getloadavg()[0]
                    out = subprocess.run(
                        [sys.executable, "-c", PLAN, str(n), tmp, variant], capture_output=True, text=True, env=env
                    )
                    if out.returncode:
                        raise SystemExit(out.stderr[-2000:])
                    _, seconds, cpu, base, peak = out.stdout.split()
                    rows.append(
                        {
                            "rows": n,
                            "variant": variant,
                            "round": r + 1,
                            "plan_seconds": float(seconds),
                            "plan_cpu_seconds": float(cpu),
                            "rss_before_mib": int(base) / 1024,
                            "peak_rss_mib": int(peak) / 1024,
                            "load_average": round(load, 2),
                        }
                    )
                    print(json.dumps(rows[-1]), flush=True)
    print(
        f"{'manifest rows = listed':>24} {'variant':>8} {'round':>5} {'plan s':>8} {'CPU s':>7} {'RSS before MiB':>15}"
        f" {'peak RSS MiB':>13} {'load':>5}"
    )
    for r in rows:
        print(
            f"{r['rows']:>24} {r['variant']:>8} {r['round']:>5} {r['plan_seconds']:>8.2f} {r['plan_cpu_seconds']:>7.2f}"
            f" {r['rss_before_mib']:>15.0f} {r['peak_rss_mib']:>13.0f} {r['load_average']:>5.2f}"
        )
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    (results / "diff_scale.json").write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
