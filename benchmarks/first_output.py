"""Time to first output of a 1M-input S3 job whose inputs are a list file on S3 (issue 19's benchmark: ≤ 30 s).

Setup (not timed): moto's S3 server in its own process, a bucket holding ``--real`` small PNGs
(64×64) and a Parquet list file of ``--inputs`` rows (default 1,000,000) of distinct keys, and a
local Ray cluster held by a helper process (a nightly job joins a running cluster). Uploading a
million objects to moto would take far longer than the run being measured, so only the first
``--real`` rows name objects that exist; the others name missing keys, which become ``not_found``
error rows when their shards run. That changes nothing before the first output: the listing still
streams all rows through planning, the incremental diff and the plan writes, and the first shard
holds the real images.

Timed: ``darkroom run job.yaml --log-format json`` is launched as a subprocess (its Python and
imports, joining Ray, starting the model actor, listing and planning are all inside the figure),
and from that moment the bucket is polled (every 0.1 s) for the first object under ``images/``
(first output) and under ``manifest/`` (first committed shard); the driver's JSON events give
the times of ``planning``, the first ``shard`` and ``planned`` (the listing done: every plan
shard written). The S3 requests moto served until the first output are counted from its log.
The run is then killed: finishing a million error rows is not what is measured here.

    .venv/bin/python benchmarks/first_output.py                # 1M rows, shard_size 1000
    .venv/bin/python benchmarks/first_output.py --inputs 100000 --no-save

Prints the figures and the machine's load, and writes benchmarks/results/first_output.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
# Holds a local Ray until its stdin closes; prints the address and the auth mode Ray chose
# (from Ray 2.59 a new local cluster uses token authentication, which its clients must be told).
RAY_HOLDER = (
    "import json, os, sys, ray; ray.init(num_cpus=int(sys.argv[1]), include_dashboard=False, logging_level='WARNING'); "
    "print(json.dumps([ray.get_runtime_context().gcs_address, os.environ.get('RAY_AUTH_MODE')]), flush=True); "
    "sys.stdin.read(); ray.shutdown()"
)
DRIVER = "import sys; from pipeline.cli import main; sys.exit(main())"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_moto(log_path: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(endpoint + "/moto-api/", timeout=1)
            return proc, endpoint
        except Exception:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                raise SystemExit("moto server did not start") from None
            time.sleep(0.2)


def _requests_served(log_path: Path) -> int:
    """Requests in moto's log (its HTTP server writes one line per request)."""
    return sum(1 for line in log_path.read_bytes().splitlines() if b'HTTP/1.1" ' in line)


def _png(i: int) -> bytes:
    rng = np.random.default_rng(i)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _first_key(s3, bucket: str, prefix: str) -> bool:
    return bool(s3.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1).get("KeyCount"))


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.1f} / {five:.1f} / {fifteen:.1f} on {os.cpu_count()} cores"


def measure(inputs: int, real: int, shard_size: int, wait_planned: float, tmp: Path) -> dict:
    import boto3

    moto_log = tmp / "moto.log"
    moto, endpoint = _start_moto(moto_log)
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    os.environ.update({k: env[k] for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")})
    holder = driver = None
    try:
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        bucket = "nightly"
        s3.create_bucket(Bucket=bucket)
        for i in range(real):
            s3.put_object(Bucket=bucket, Key=f"in/{i:07d}.png", Body=_png(i))
        uris = pa.array([f"s3://{bucket}/in/{i:07d}.png" for i in range(inputs)])
        buf = io.BytesIO()
        pq.write_table(pa.table({"uri": uris}), buf)
        s3.put_object(Bucket=bucket, Key="list.parquet", Body=buf.getvalue())
        job = {
            "name": "first-output",
            "input": {"uri": f"s3://{bucket}/list.parquet"},
            "output": {"uri": f"s3://{bucket}/out"},
            "steps": [{"model": "bicubic", "params": {"scale": 2}}],
            "resources": {"actors": 1, "shard_size": shard_size},
        }
        job_path = tmp / "job.yaml"
        job_path.write_text(yaml.safe_dump(job))

        holder = subprocess.Popen(
            [sys.executable, "-c", RAY_HOLDER, str(os.cpu_count())],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        address, auth_mode = json.loads(holder.stdout.readline())
        ray_env = {"RAY_ADDRESS": address} | ({"RAY_AUTH_MODE": auth_mode} if auth_mode else {})
        before = _requests_served(moto_log)

        launched = time.perf_counter()
        driver = subprocess.Popen(
            [sys.executable, "-c", DRIVER, "run", str(job_path), "--log-format", "json"],
            env=env | ray_env,
            stdout=subprocess.PIPE,
            stderr=open(tmp / "driver.log", "wb"),
            text=True,
            cwd=ROOT,
        )
        at: dict[str, float] = {}

        def read_events() -> None:
            for line in driver.stdout:
                try:
                    kind = json.loads(line)["event"]
                except (ValueError, KeyError):
                    continue
                at.setdefault(kind, time.perf_counter() - launched)

        threading.Thread(target=read_events, daemon=True).start()
        first: dict[str, float] = {}
        requests_at_first_output = None
        deadline = launched + 600
        while len(first) < 2 and time.perf_counter() < deadline and driver.poll() is None:
            for name, prefix in (("output", "out/images/"), ("part", "out/manifest/")):
                if name not in first and _first_key(s3, bucket, prefix):
                    first[name] = time.perf_counter() - launched
                    if name == "output":
                        requests_at_first_output = _requests_served(moto_log) - before
            time.sleep(0.1)
        wait_until = time.perf_counter() + wait_planned
        while "planned" not in at and time.perf_counter() < wait_until and driver.poll() is None:
            time.sleep(0.2)
        return {
            "inputs": inputs,
            "real_objects": real,
            "shard_size": shard_size,
            "first_output_s": first.get("output"),
            "first_part_s": first.get("part"),
            "planning_event_s": at.get("planning"),
            "first_shard_event_s": at.get("shard"),
            "planned_event_s": at.get("planned"),  # the listing done and every plan shard written
            "s3_requests_until_first_output": requests_at_first_output,
            "driver_exit": driver.poll(),  # None: still running when killed (expected)
            "driver_log_tail": (tmp / "driver.log").read_text(errors="replace")[-2000:] if driver.poll() else "",
            "load": _load(),
        }
    finally:
        if driver is not None and driver.poll() is None:
            driver.kill()
            driver.wait()
        if holder is not None:
            holder.stdin.close()
            try:
                holder.wait(timeout=60)
            except subprocess.TimeoutExpired:
                holder.kill()
        moto.terminate()
        moto.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=1_000_000, help="list-file rows")
    parser.add_argument("--real", type=int, default=200, help="rows naming objects that exist (the first ones)")
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--wait-planned", type=float, default=180.0, help="seconds to wait for the listing to end")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    load_before = _load()
    with tempfile.TemporaryDirectory() as tmp:
        result = measure(args.inputs, args.real, args.shard_size, args.wait_planned, Path(tmp))
    result["load_before"] = load_before
    for key, value in result.items():
        print(f"{key:32} {value}")
    if not args.no_save:
        out = ROOT / "benchmarks" / "results" / "first_output.json"
        out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), **result}, indent=2) + "\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
