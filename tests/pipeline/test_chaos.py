"""Faults on purpose: storage errors, model actors and a driver killed mid-run, poison inputs.

The committed manifest must still hold exactly one row per input, nothing lost, and every
ok output must decode.
"""

from __future__ import annotations

import io
import os
import time

import boto3
import duckdb
import numpy as np
import pytest
import yaml
from PIL import Image

from models import ImageModel, default_registry
from models.registry import ModelEntry, NoParams
from pipeline import api, manifest, runs, storage
from pipeline.job import parse_job
from tests.faults import FaultProxy, OutageProxy, kill, pids_of, start_driver


def tiny_png(i: int) -> bytes:
    rng = np.random.default_rng(i)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def poison_registry():
    """The default registry plus ``poison``: identity, except that it kills its own process
    on images whose first pixel is pure magenta (as a segfaulting model would)."""
    import torch

    class Poison(torch.nn.Module):  # defined here so Ray ships it by value to the actors
        def forward(self, x):
            first = x[:, :, 0, 0]
            if ((first[:, 0] > 0.99) & (first[:, 1] < 0.01) & (first[:, 2] > 0.99)).any():
                import os

                os._exit(1)
            return x

    reg = default_registry()
    reg.register(
        ModelEntry("poison", "test", "dies on magenta", NoParams, lambda _: ImageModel("poison", Poison(), 1, 3, False))
    )
    return reg


def test_poison_input_is_isolated_as_an_error_row(ray_local, tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    for i in range(6):
        arr = np.full((6, 6, 3), 40 * i, np.uint8)
        if i == 3:
            arr[0, 0] = (255, 0, 255)
        Image.fromarray(arr).save(root / f"{i}.png")
    reg = poison_registry()
    job = parse_job(
        {
            "name": "poison",
            "input": {"uri": str(root)},
            "output": {"uri": str(tmp_path / "out")},
            "steps": [{"model": "poison"}],
            "resources": {"batch_size": 3, "shard_size": 6},
        },
        reg,
    )
    summary = api.run(job, registry=reg)
    assert summary.counts == {"ok": 5, "error": 1}
    table = manifest.read(str(tmp_path / "out"))
    [bad] = [r for r in table.to_pylist() if r["status"] == "error"]
    assert bad["input_uri"].endswith("/3.png") and bad["error_type"] == "worker_crashed"


def _parts(output_uri: str, run_id_holder: list) -> int:
    records = runs.load_all(output_uri)
    if not records:
        return 0
    run_id_holder[:] = [records[-1].run_id]
    return len(manifest.committed_shards(output_uri, records[-1].run_id))


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("n_inputs", [500, pytest.param(2000, marks=pytest.mark.slow)])
def test_chaos_exactly_once(ray_local, s3_bucket, s3_endpoint, tmp_path, n_inputs):
    s3 = boto3.client("s3")
    for i in range(n_inputs):
        s3.put_object(Bucket=s3_bucket, Key=f"in/{i // 100:02d}/{i:04d}.png", Body=tiny_png(i))
    with FaultProxy(s3_endpoint, fault_rate=0.05, seed=1) as proxy:
        opts = {"client_kwargs": {"endpoint_url": proxy.endpoint}}
        out = f"s3://{s3_bucket}/out"
        job = {
            "name": "chaos",
            "input": {"uri": f"s3://{s3_bucket}/in/", "storage_options": opts},
            "output": {"uri": out, "storage_options": opts},
            "steps": [{"model": "bicubic", "params": {"scale": 2}}],
            "resources": {"actors": 1, "batch_size": 8, "shard_size": 20},
        }
        job_path = tmp_path / "chaos.yaml"
        job_path.write_text(yaml.safe_dump(job))
        address = ray_local.get_runtime_context().gcs_address
        run_id: list = []

        # Run 1: kill the model actor twice, then SIGKILL the driver once some shards committed.
        driver = start_driver(job_path, {**os.environ, "RAY_ADDRESS": address})
        actor_kills = 0
        deadline = time.time() + 300 + n_inputs / 5
        while time.time() < deadline and driver.poll() is None:
            parts = _parts(out, run_id)
            if actor_kills < 2 and parts >= 2 + 3 * actor_kills:
                actor_kills += kill(pids_of("ray::ModelActor"))
            if actor_kills >= 2 and parts >= 10:
                driver.kill()
                break
            time.sleep(0.3)
        driver.wait(timeout=60)
        assert driver.returncode == -9, driver.stdout.read().decode()[-3000:]
        assert actor_kills >= 2
        committed_before = _parts(out, run_id)
        assert 0 < committed_before < n_inputs // 20

        # Run 2: the same command resumes the unfinished run and completes it.
        driver = start_driver(job_path, {**os.environ, "RAY_ADDRESS": address})
        output = driver.communicate(timeout=300 + n_inputs / 5)[0].decode()
        errors = [
            (r["input_uri"], r["error_type"], r["error_message"])
            for r in manifest.read(out).to_pylist()
            if r["status"] != "ok"
        ]
        assert driver.returncode == 0, (output[-3000:], errors)
        assert f"resumed {run_id[0]}" in output
        faults = dict(proxy.faults)

    fs, _ = storage.filesystem(out)
    con = duckdb.connect()
    con.register_filesystem(fs)
    total, distinct, ok = con.execute(
        "SELECT count(*), count(DISTINCT input_uri), count(*) FILTER (status = 'ok') FROM "
        f"read_parquet('{out}/manifest/**/*.parquet')"
    ).fetchone()
    listed = {
        f"s3://{s3_bucket}/{o['Key']}"
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket, Prefix="in/")
        for o in page["Contents"]
    }
    seen = {u for (u,) in con.execute(f"SELECT input_uri FROM read_parquet('{out}/manifest/**/*.parquet')").fetchall()}
    outputs = [
        u for (u,) in con.execute(f"SELECT output_uri FROM read_parquet('{out}/manifest/**/*.parquet')").fetchall()
    ]
    for uri in outputs:
        assert Image.open(io.BytesIO(storage.read_bytes(uri))).size == (16, 16)
    print(
        f"\nchaos: inputs={n_inputs} requests={proxy.requests} faults={faults} actor_kills={actor_kills} "
        f"driver_kills=1 shards_before_kill={committed_before} rows={total} duplicates={total - distinct} "
        f"lost={len(listed - seen)}"
    )
    assert (total, distinct, ok) == (n_inputs, n_inputs, n_inputs)
    assert seen == listed
    assert sum(faults.values()) > 0


# ---- a storage outage, a stalled object, a hung model: retried, or cut into rows, never a hang ----


def outage_job(bucket: str, input_endpoint: str, output_endpoint: str, **limits) -> dict:
    """4 inputs in one shard. Reads go without botocore's own retries, so that the job's retry budget
    is what counts; output writes and the driver's bookkeeping (a lease, conditional writes) keep them."""
    s3 = boto3.client("s3")
    for i in range(4):
        s3.put_object(Bucket=bucket, Key=f"in/{i}.png", Body=tiny_png(i))

    no_retries = {"retries": {"max_attempts": 1}}
    return {
        "name": "outage",
        "input": {
            "uri": f"s3://{bucket}/in/",
            "storage_options": {"client_kwargs": {"endpoint_url": input_endpoint}, "config_kwargs": no_retries},
        },
        "output": {
            "uri": f"s3://{bucket}/out",
            "storage_options": {"client_kwargs": {"endpoint_url": output_endpoint}},
        },
        "steps": [{"model": "bicubic", "params": {"scale": 2}}],
        "resources": {"actors": 1, "batch_size": 2, "shard_size": 4},
        "limits": limits,
    }


@pytest.mark.timeout(300)
@pytest.mark.timeout(300)
@pytest.mark.parametrize("during", ["read", "write"])
def test_an_outage_shorter_than_the_retry_budget_leaves_no_error_row(ray_local, s3_bucket, s3_endpoint, during):
    # Every connection (reads, writes, the driver's bookkeeping) goes through the proxy, which
    # resets all of them from the first input read (or output write) on: for 4 s, or for writes
    # (which botocore retries itself for about 7 s) 12 s.
    trigger = f"GET /{s3_bucket}/in/" if during == "read" else f"PUT /{s3_bucket}/out/images/"
    seconds = 4 if during == "read" else 12
    with OutageProxy(s3_endpoint, outage_after=trigger.encode(), outage_seconds=seconds) as proxy:
        job = outage_job(s3_bucket, proxy.endpoint, proxy.endpoint, transient_retry_seconds=30)
        summary = api.run(parse_job(job, default_registry()))
    assert proxy.dropped > 0
    rows = manifest.read(f"s3://{s3_bucket}/out").to_pylist()
    assert summary.counts == {"ok": 4}, [(r["input_uri"], r["error_type"], r["error_message"]) for r in rows]


@pytest.mark.timeout(300)
def test_an_outage_longer_than_the_retry_budget_leaves_transient_rows_for_retry_errors(
    ray_local, s3_bucket, s3_endpoint
):
    out = f"s3://{s3_bucket}/out"
    with OutageProxy(s3_endpoint, outage_after=f"GET /{s3_bucket}/in/".encode(), outage_seconds=15) as proxy:
        job = outage_job(s3_bucket, proxy.endpoint, s3_endpoint, transient_retry_seconds=1)
        summary = api.run(parse_job(job, default_registry()))
        assert proxy.down()  # the run ended inside the outage: its budget, not the outage, bounded it
        rows = manifest.read(out).to_pylist()
        assert summary.counts == {"error": 4}
        assert {(r["stage"], r["error_type"]) for r in rows} == {("read", "transient")}
        assert all("limits.transient_retry_seconds=1" in r["error_message"] for r in rows)
        while proxy.down():
            time.sleep(0.2)
        again = api.run(parse_job(job | {"mode": "retry-errors"}, default_registry()), resume=False)
    assert again.counts == {"ok": 4}


@pytest.mark.timeout(300)
def test_a_stalled_object_becomes_a_timeout_row(ray_local, s3_bucket, s3_endpoint):
    # The proxy never answers a read of in/2.png (for up to 60 s, far beyond the test's 2 s limit).
    with OutageProxy(s3_endpoint, stall=f"GET /{s3_bucket}/in/2.png".encode(), stall_seconds=60) as proxy:
        job = outage_job(s3_bucket, proxy.endpoint, s3_endpoint, read_timeout_seconds=2)
        started = time.monotonic()
        summary = api.run(parse_job(job, default_registry()))
        assert time.monotonic() - started < 55
    assert proxy.stalled == 1
    assert summary.counts == {"ok": 3, "error": 1}
    [bad] = [r for r in manifest.read(f"s3://{s3_bucket}/out").to_pylist() if r["status"] == "error"]
    assert bad["input_uri"].endswith("/in/2.png")
    assert (bad["stage"], bad["error_type"]) == ("read", "timeout")


def sleepy_registry():
    """The default registry plus ``sleepy``: identity, except that it never returns (sleeps an
    hour) on images whose first pixel is pure magenta, as a model stuck on one input would."""
    import torch

    class Sleepy(torch.nn.Module):  # defined here so Ray ships it by value to the actors
        def forward(self, x):
            first = x[:, :, 0, 0]
            if ((first[:, 0] > 0.99) & (first[:, 1] < 0.01) & (first[:, 2] > 0.99)).any():
                time.sleep(3600)
            return x

    reg = default_registry()
    reg.register(
        ModelEntry(
            "sleepy", "test", "hangs on magenta", NoParams, lambda _: ImageModel("sleepy", Sleepy(), 1, 3, False)
        )
    )
    return reg


@pytest.mark.timeout(300)
def test_a_hung_model_batch_becomes_timeout_rows_and_the_run_goes_on(ray_local, tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    for i in range(4):
        arr = np.full((6, 6, 3), 40 * i, np.uint8)
        if i == 1:
            arr[0, 0] = (255, 0, 255)
        Image.fromarray(arr).save(root / f"{i}.png")
    reg = sleepy_registry()
    job = parse_job(
        {
            "name": "hung",
            "input": {"uri": str(root)},
            "output": {"uri": str(tmp_path / "out")},
            "steps": [{"model": "sleepy"}],
            "resources": {"batch_size": 1, "shard_size": 4},
            "limits": {"model_timeout_seconds": 5},
        },
        reg,
    )
    started = time.monotonic()
    summary = api.run(job, registry=reg)
    assert time.monotonic() - started < 120
    assert summary.counts == {"ok": 3, "error": 1}
    [bad] = [r for r in manifest.read(str(tmp_path / "out")).to_pylist() if r["status"] == "error"]
    assert bad["input_uri"].endswith("/1.png")
    assert (bad["stage"], bad["error_type"]) == ("model", "timeout")
