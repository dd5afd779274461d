"""Nightly planning over a long history: does an incremental `plan` cost grow with the number of past runs?

A user's archive of N inputs (default 1M) is processed once in full, then every night 1 % of the
inputs change (a new ETag) and a nightly run redoes them. The history is written through the
engine's own commit functions — ``driver.commit_shard`` for every 64-input shard (the
``shard_size: 64`` parts real runs leave: 15,625 per full run of 1M), then ``runs.save`` of the
committed record and ``snapshot.update``, exactly what ``api.run`` calls when a run commits — never
as hand-made big parts. After 1, 10 and 30 nights, a fresh process times ``api.plan`` over the
current listing (a Parquet list file with sizes and ETags: every input is "unchanged"), its CPU
time and peak RSS, and counts its storage calls (``storage.read_bytes`` and ``storage.list_dir``;
the list file itself is one more read). Only planning is measured; writing the history is timed
apart (the snapshot rewrite at each commit is reported as ``commit_snapshot_s``). At the last point
the plan is also timed without the snapshot (every part read, 16 at a time): what it replaces.

``--s3`` puts the output on a moto S3 server and plans through a TCP proxy on 127.0.0.1 that
delays every chunk it forwards by ``--latency-ms`` (default 20) each way, a stand-in for a
real store's round trips; history is written to moto directly. Use a smaller ``--inputs`` there.

    .venv/bin/python benchmarks/nightly_plan.py                          # 1M inputs, local disk
    .venv/bin/python benchmarks/nightly_plan.py --inputs 100000 --nights 1,10,30
    .venv/bin/python benchmarks/nightly_plan.py --s3 --inputs 20000 --nights 1,10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).parent.parent
sys.path.insert(0, str(ROOT))

PLAN = r"""
import json, sys, time
from models import default_registry
from pipeline import api, storage
from pipeline.job import parse_job
out, list_uri, n, without_snapshot = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
calls = {"read_bytes": [], "list_dir": []}
for name in calls:
    real = getattr(storage, name)
    def counted(uri, storage_options=None, _real=real, _name=name):
        calls[_name].append(uri)
        return _real(uri, storage_options)
    setattr(storage, name, counted)
if without_snapshot:
    from pipeline import snapshot
    snapshot.read = lambda output_uri, storage_options=None: None
job = parse_job({"name": "nightly", "input": {"uri": list_uri}, "output": {"uri": out},
                 "steps": [{"model": "identity"}], "resources": {"shard_size": 64}}, default_registry())
def hwm_kib():  # this process's own peak: ru_maxrss would include the parent's, which holds the history builder
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
base = hwm_kib()
t0, c0 = time.perf_counter(), time.process_time()
summary = api.plan(job)
elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
peak = hwm_kib()
assert summary.categories == {"unchanged": n}, summary.categories
print(json.dumps({"plan_s": round(elapsed, 2), "plan_cpu_s": round(cpu, 2), "rss_before_mib": base // 1024,
                  "peak_rss_mib": peak // 1024, "read_bytes": len(calls["read_bytes"]),
                  "manifest_parts_read": sum("/manifest/" in u for u in calls["read_bytes"]),
                  "list_dir": len(calls["list_dir"])}))
"""


class History:
    """Writes runs the way ``api.run`` commits them."""

    def __init__(self, out: str, list_uri: str, n: int):
        from models import default_registry
        from pipeline.job import parse_job

        self.registry = default_registry()
        self.job = parse_job(
            {
                "name": "nightly",
                "input": {"uri": list_uri},
                "output": {"uri": out},
                "steps": [{"model": "identity"}],
                "resources": {"shard_size": 64},
            },
            self.registry,
        )
        self.n, self.list_uri = n, list_uri
        self.uris = [f"s3://archive/photos/{i // 1000:05d}/{i:09d}.jpg" for i in range(n)]
        self.etags = [f"e0-{i}" for i in range(n)]

    def run(self, inputs: list[int]) -> float:
        """Commit one run over ``inputs``; returns the seconds its snapshot update took."""
        from pipeline import driver, execute, runs, snapshot

        run_id = runs.new_run_id()
        ctx = execute.context_for(self.job, self.registry, run_id)
        out = self.job.output
        for shard, start in enumerate(range(0, len(inputs), 64)):
            rows = [
                {
                    "run_id": run_id,
                    "shard": shard,
                    "input_uri": self.uris[i],
                    "input_size": 100_000,
                    "input_etag": self.etags[i],
                    "output_uri": f"{out.uri}/images/{i:09d}.png",
                    "format_out": "png",
                    "steps": ctx.steps_json,
                    "models": ctx.models,
                    "weights_sha256": ctx.weights_sha256,
                    "fingerprint": ctx.fingerprint,
                    "status": "ok",
                    "attempt": 1,
                }
                for i in inputs[start : start + 64]
            ]
            driver.commit_shard(ctx, shard, rows, time.perf_counter())
        record = runs.RunRecord(
            run_id, self.job.name, ctx.fingerprint, self.list_uri, out.uri, "committed", runs.now(), {}
        )
        record.finished_at, record.inputs, record.shards = runs.now(), len(inputs), -(-len(inputs) // 64)
        runs.save(record, out.storage_options)
        t0 = time.perf_counter()
        snapshot.update(out.uri, out.storage_options)
        return time.perf_counter() - t0

    def write_list(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        from pipeline import storage

        table = pa.table({"uri": self.uris, "size": pa.array([100_000] * self.n, pa.int64()), "etag": self.etags})
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        storage.write_atomic(self.list_uri, sink.getvalue().to_pybytes())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto() -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(endpoint + "/moto-api/", timeout=1)
            return proc, endpoint
        except Exception:
            if time.time() > deadline:
                proc.kill()
                raise SystemExit("moto server did not start") from None
            time.sleep(0.2)


def start_latency_proxy(target_port: int, latency_s: float) -> int:
    """A TCP proxy on 127.0.0.1 (in a daemon thread) that holds every chunk ``latency_s`` before
    forwarding it, in both directions; returns its port."""
    port = _free_port()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await asyncio.sleep(latency_s)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def handle(client_reader, client_writer) -> None:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target_port)
        await asyncio.gather(pipe(client_reader, server_writer), pipe(server_reader, client_writer))

    async def serve() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    threading.Thread(target=lambda: asyncio.run(serve()), daemon=True).start()
    time.sleep(0.5)
    return port


def plan(out: str, list_uri: str, n: int, env: dict, without_snapshot: bool, timeout: float) -> dict:
    load = os.getloadavg()[0]
    proc = subprocess.run(
        [sys.executable, "-c", PLAN, out, list_uri, str(n), "1" if without_snapshot else "0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1]) | {"load_average": round(load, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=1_000_000)
    parser.add_argument("--nights", default="1,10,30", help="plan after these numbers of nightly runs")
    parser.add_argument("--touched", type=float, default=0.01, help="fraction of the inputs each night changes")
    parser.add_argument("--s3", action="store_true", help="output on moto S3, planned through a latency proxy")
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds a plan may take before it is stopped")
    parser.add_argument("--no-baseline", action="store_true", help="skip the plan without the snapshot")
    parser.add_argument("--results-dir", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    checkpoints = sorted(int(x) for x in args.nights.split(","))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    moto = None
    with tempfile.TemporaryDirectory() as tmp:
        if args.s3:
            import boto3

            moto, endpoint = start_moto()
            creds = {
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1",
            }
            os.environ.update(creds, AWS_ENDPOINT_URL=endpoint)
            boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="nightly")
            proxy = start_latency_proxy(int(endpoint.rsplit(":", 1)[1]), args.latency_ms / 1000)
            env.update(creds, AWS_ENDPOINT_URL=f"http://127.0.0.1:{proxy}")
            base = "s3://nightly"
        else:
            base = tmp
        out, list_uri = f"{base}/out", f"{base}/list.parquet"
        history = History(out, list_uri, args.inputs)
        rng = random.Random(0)
        touched = max(1, int(args.inputs * args.touched))
        t0 = time.perf_counter()
        history.run(list(range(args.inputs)))
        print(f"full run of {args.inputs} inputs committed in {time.perf_counter() - t0:.0f} s", flush=True)
        rows, night, commit_seconds = [], 0, []
        for checkpoint in checkpoints:
            t0 = time.perf_counter()
            while night < checkpoint:
                night += 1
                changed = sorted(rng.sample(range(args.inputs), touched))
                for i in changed:
                    history.etags[i] = f"e{night}-{i}"
                commit_seconds.append(history.run(changed))
            history.write_list()
            print(f"nights up to {night} committed in {time.perf_counter() - t0:.0f} s", flush=True)
            variants = [False] + ([True] if checkpoint == checkpoints[-1] and not args.no_baseline else [])
            for without in variants:
                result = plan(out, list_uri, args.inputs, env, without, args.timeout)
                row = {
                    "inputs": args.inputs,
                    "nightly_runs": night,
                    "parts": args.inputs // 64 + (args.inputs % 64 > 0) + night * -(-touched // 64),
                    "snapshot": not without,
                    "commit_snapshot_s": round(commit_seconds[-1], 2) if commit_seconds else None,
                    **result,
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    if moto is not None:
        moto.terminate()
    where = f"s3 + {args.latency_ms:g} ms proxy" if args.s3 else "local disk"
    print(f"\n{where}: {args.inputs} inputs, {touched} touched a night")
    print(
        f"{'nights':>6} {'parts':>7} {'snapshot':>8} {'plan s':>7} {'CPU s':>6} {'peak MiB':>8}"
        f" {'reads':>6} {'lists':>6}"
    )
    for r in rows:
        print(
            f"{r['nightly_runs']:>6} {r['parts']:>7} {'yes' if r['snapshot'] else 'no':>8} {r['plan_s']:>7.2f}"
            f" {r['plan_cpu_s']:>6.2f} {r['peak_rss_mib']:>8} {r['read_bytes']:>6} {r['list_dir']:>6}"
        )
    results = args.results_dir
    results.mkdir(parents=True, exist_ok=True)
    name = f"nightly_plan{'_s3' if args.s3 else ''}.json"
    (results / name).write_text(
        json.dumps(
            {"date": time.strftime("%Y-%m-%d"), "where": where, "touched_per_night": touched, "rows": rows}, indent=2
        )
    )


if __name__ == "__main__":
    main()
