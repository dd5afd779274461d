"""Streaming start: shards run while the listing goes on, and a run killed while listing resumes exactly."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
import yaml
from PIL import Image

from models import default_registry
from pipeline import api, manifest, runs, storage
from pipeline.job import parse_job
from pipeline.plan_writer import PlanWriter
from pipeline.planning import PlanSummary
from tests.faults import FaultProxy, start_driver


def _images(root, n: int) -> None:
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(root / f"{i:04d}.png")


def _job(input_uri: str, output_uri: str, shard_size: int, opts: dict | None = None) -> dict:
    return {
        "name": "stream",
        "input": {"uri": input_uri},
        "output": {"uri": output_uri, "storage_options": opts or {}},
        "steps": [{"model": "bicubic", "params": {"scale": 2}}],
        "resources": {"actors": 1, "batch_size": 4, "shard_size": shard_size},
    }


def _record(job, run_id: str) -> runs.RunRecord:
    record = runs.RunRecord(
        run_id=run_id,
        job_name=job.name,
        fingerprint="f",
        input_uri=job.source_uri,
        output_uri=job.output.uri,
        status=runs.RunStatus.PLANNING,
        started_at=runs.now(),
        job=job.model_dump(mode="json"),
    )
    runs.save(record)
    return record


def _plan(out: str, run_id: str, shards: int) -> list[list[str]]:
    return [runs.load_plan_shard(out, run_id, s)["input_uri"].to_pylist() for s in range(shards)]


def test_an_interrupted_listing_is_continued_into_the_same_plan(tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    for i in range(20):
        (root / f"{i:02d}.png").write_bytes(b"")  # planning reads names only
    out = str(tmp_path / "out")
    job = parse_job(_job(str(root), out, 3), default_registry())
    whole = _record(job, "a")
    assert sorted(PlanWriter(job, whole, PlanSummary()).start()) == list(range(7))
    assert (whole.status, whole.shards, whole.inputs) == ("running", 7, 20)
    expected = _plan(out, "a", 7)

    # A run killed while listing: plan shards 0, 1 and 3 written (2 was still being written), none after.
    cut = _record(job, "b")
    for shard in (0, 1, 3):
        runs.save_plan_shard(out, "b", shard, runs.load_plan_shard(out, "a", shard))
    continued = PlanWriter(job, cut, PlanSummary()).start()
    ids = list(continued)
    assert sorted(ids[:3]) == [0, 1, 3] and sorted(ids[3:]) == [2, 4, 5, 6]  # the written ones first
    assert (cut.status, cut.shards, cut.inputs, cut.listed) == ("running", 7, 20, 20)
    assert _plan(out, "b", 7) == expected
    assert continued.sizes == {s: 3 for s in range(6)} | {6: 2}


def _plan_shard_at_least(path: str, first: int) -> bool:
    """Whether a PUT's path is the plan shard ``first`` or a later one."""
    name = path.rsplit("/", 1)[-1]
    return "/plan/" in path and name.startswith("shard-") and int(name[6:11]) >= first


@pytest.mark.timeout(600)
def test_first_shards_commit_while_the_listing_goes_on(ray_local, s3_bucket, s3_endpoint, tmp_path):
    _images(tmp_path / "in", 60)
    first_shard = threading.Event()
    # Plan shards 4 and on are held until a shard has committed: a run that waited for its whole plan never would.
    hold = lambda path: not _plan_shard_at_least(path, 4) or first_shard.wait(300)  # noqa: E731
    with FaultProxy(s3_endpoint, fault_rate=0.0, before_put=hold) as proxy:
        opts = {"client_kwargs": {"endpoint_url": proxy.endpoint}}
        out = f"s3://{s3_bucket}/out"
        job = parse_job(_job(str(tmp_path / "in"), out, 2, opts), default_registry())
        events, status_at_first_shard = [], []

        def on_event(event):
            events.append(event["event"])
            if event["event"] == "shard" and not first_shard.is_set():
                status_at_first_shard.append(runs.load_all(out)[-1].status)
                first_shard.set()

        summary = api.run(job, on_event=on_event)
    assert status_at_first_shard == ["planning"]  # a shard committed before the listing was done
    assert events[0] == "planning" and events[1] == "shard" and events[-1] == "finished"
    assert events.count("planned") == 1 and events.count("shard") == 30
    assert summary.counts == {"ok": 60} and (summary.shards, summary.shards_run) == (30, 30)
    assert runs.load_all(out)[-1].status == "committed"


@pytest.mark.timeout(900)
def test_a_driver_killed_while_listing_resumes_exactly_once(ray_local, s3_bucket, s3_endpoint, tmp_path):
    n = 240
    _images(tmp_path / "in", n)
    out = f"s3://{s3_bucket}/out"
    job_path = tmp_path / "job.yaml"
    address = ray_local.get_runtime_context().gcs_address
    # Run 1: plan shards 20 and on are held (and at last dropped, unanswered): the listing cannot finish
    # before the driver is killed, once some shards committed.
    gone = threading.Event()
    hold = lambda path: not _plan_shard_at_least(path, 20) or (gone.wait(600) and False)  # noqa: E731
    with FaultProxy(s3_endpoint, fault_rate=0.0, before_put=hold) as proxy:
        opts = {"client_kwargs": {"endpoint_url": proxy.endpoint}}
        job_path.write_text(yaml.safe_dump(_job(str(tmp_path / "in"), out, 2, opts)))
        driver = start_driver(job_path, {**os.environ, "RAY_ADDRESS": address})
        deadline = time.time() + 300
        while time.time() < deadline and driver.poll() is None:
            records = runs.load_all(out)
            if records and len(storage.list_names(f"{out}/manifest/{records[-1].run_id}")) >= 3:
                driver.kill()
                break
            time.sleep(0.2)
        driver.wait(timeout=60)
        gone.set()
    assert driver.returncode == -9, driver.stdout.read().decode()[-3000:]
    [record] = runs.load_all(out)
    assert record.status == "planning"
    assert runs.planned_shards(out, record.run_id) <= set(range(20))

    # Run 2: the same command (its store answering) resumes the run, continuing its plan.
    with FaultProxy(s3_endpoint, fault_rate=0.0) as proxy:
        opts = {"client_kwargs": {"endpoint_url": proxy.endpoint}}
        job_path.write_text(yaml.safe_dump(_job(str(tmp_path / "in"), out, 2, opts)))
        driver = start_driver(job_path, {**os.environ, "RAY_ADDRESS": address})
        output = driver.communicate(timeout=600)[0].decode()
    assert driver.returncode == 0, output[-3000:]
    assert f"resumed {record.run_id}" in output

    [record] = runs.load_all(out)
    assert (record.status, record.shards, record.inputs) == ("committed", n // 2, n)
    assert record.counts == {"ok": n}
    uris = manifest.read(out, run_id=record.run_id, columns=["input_uri"])["input_uri"].to_pylist()
    assert sorted(uris) == sorted(str(p) for p in (tmp_path / "in").iterdir())  # none twice, none lost
