"""The history snapshot: planning reads it instead of the parts it covers, with the same categories."""

import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from models import default_registry
from pipeline import api, driver, execute, manifest, runs, snapshot, storage
from pipeline.job import parse_job


def job_for(output_uri: str, list_uri: str):
    return parse_job(
        {
            "name": "snap",
            "input": {"uri": list_uri},
            "output": {"uri": output_uri},
            "steps": [{"model": "identity"}],
            "resources": {"shard_size": 64},
        },
        default_registry(),
    )


def write_list(list_uri: str, etags: list[str]) -> None:
    """A Parquet list file of len(etags) inputs ``s3://archive/<i>.jpg`` with those ETags."""
    uris = [f"s3://archive/{i:05d}.jpg" for i in range(len(etags))]
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"uri": uris, "size": pa.array([10] * len(uris), pa.int64()), "etag": etags}), sink)
    storage.write_atomic(list_uri, sink.getvalue().to_pybytes())


def commit_run(job, inputs: list[int], etags: list[str], status: str = "ok", commit: bool = True) -> str:
    """What a run leaves behind, through the engine's own functions: one part per 64 inputs
    (driver.commit_shard) and, if ``commit``, the committed run record and the snapshot."""
    run_id = runs.new_run_id()
    ctx = execute.context_for(job, default_registry(), run_id)
    for shard, start in enumerate(range(0, len(inputs), 64)):
        rows = [
            {
                "run_id": run_id,
                "shard": shard,
                "input_uri": f"s3://archive/{i:05d}.jpg",
                "input_size": 10,
                "input_etag": etags[i],
                "steps": ctx.steps_json,
                "models": ctx.models,
                "weights_sha256": ctx.weights_sha256,
                "fingerprint": ctx.fingerprint,
                "attempt": 1,
                "status": status,
                "stage": None if status == "ok" else "decode",
            }
            for i in inputs[start : start + 64]
        ]
        driver.commit_shard(ctx, shard, rows, time.perf_counter())
    if commit:
        out = job.output
        record = runs.RunRecord(run_id, job.name, ctx.fingerprint, job.source_uri, out.uri, "committed", runs.now(), {})
        runs.save(record, out.storage_options)
        snapshot.update(out.uri, out.storage_options)
    return run_id


class CountingReads:
    """Counts storage.read_bytes calls by what they read (a spy: the reads still happen)."""

    def __init__(self, monkeypatch):
        self.uris: list[str] = []
        real = storage.read_bytes

        def read_bytes(uri, storage_options=None):
            self.uris.append(uri)
            return real(uri, storage_options)

        monkeypatch.setattr(storage, "read_bytes", read_bytes)

    def parts(self) -> list[str]:
        return [u for u in self.uris if "/manifest/" in u]


def plan_all_parts(job) -> dict[str, int]:
    """The plan's categories with the snapshot moved away (every part read), then put back."""
    uri = snapshot.snapshot_uri(job.output.uri)
    saved = storage.read_bytes(uri, job.output.storage_options)
    fs, path = storage.filesystem(uri, job.output.storage_options)
    fs.rm(path)
    try:
        summary = api.plan(job)
        assert not fs.exists(path)
        return summary.categories
    finally:
        storage.write_atomic(uri, saved, job.output.storage_options)


def history_of(output_uri: str, storage_options: dict | None = None) -> set[tuple]:
    return {
        tuple(r.values())
        for r in pa.concat_tables(list(snapshot.load(output_uri, storage_options).tables())).to_pylist()
    }


@pytest.mark.parametrize("where", ["local", "s3"])
def test_plan_reads_the_snapshot_and_only_uncovered_parts(where, tmp_path, request, monkeypatch):
    if where == "s3":
        base = f"s3://{request.getfixturevalue('s3_bucket')}"
    else:
        base = str(tmp_path)
    out, list_uri = f"{base}/out", f"{base}/list.parquet"
    job = job_for(out, list_uri)
    n = 300  # 5 parts per full run
    etags = [f"v0-{i}" for i in range(n)]
    commit_run(job, list(range(n)), etags)
    for night in (1, 2):  # each night 10 inputs change and are redone; one of them fails
        touched = list(range(night * 10, night * 10 + 10))
        for i in touched:
            etags[i] = f"v{night}-{i}"
        commit_run(job, touched[:-1], etags)
        commit_run(job, touched[-1:], etags, status="error")
    killed = commit_run(job, [0, 1, 2], etags, commit=False)  # a run killed before it committed: its part is read
    etags[5] = "v9-5"
    write_list(list_uri, etags)
    parts = manifest.part_uris(out)
    assert len(parts) == 5 + 2 * 2 + 1

    reads = CountingReads(monkeypatch)
    summary = api.plan(job)
    assert reads.parts() == [manifest.part_uri(out, killed, 0)]
    assert reads.uris.count(snapshot.snapshot_uri(out)) == 1
    assert summary.categories == {"unchanged": n - 3, "failed": 2, "changed": 1}

    monkeypatch.undo()
    with_snapshot = history_of(out)
    reads = CountingReads(monkeypatch)
    assert plan_all_parts(job) == summary.categories  # the same categories from every part
    assert sorted(reads.parts()) == sorted(parts)
    every_row = manifest.read(out, columns=snapshot.COLUMNS)
    assert with_snapshot == {tuple(r.values()) for r in every_row.to_pylist()}
    assert every_row.num_rows == n + 20 + 3

    commit_run(job, [40], etags)  # the next commit covers the killed run's part too (its folder is still listed)
    reads = CountingReads(monkeypatch)
    assert api.plan(job).categories == summary.categories
    assert reads.parts() == [] and snapshot.read(out).complete == set(manifest.run_ids(out)) - {killed}


def test_a_corrupt_or_outdated_snapshot_falls_back_to_the_parts(tmp_path, caplog):
    out, list_uri = str(tmp_path / "out"), str(tmp_path / "list.parquet")
    job = job_for(out, list_uri)
    etags = [f"v0-{i}" for i in range(130)]
    write_list(list_uri, etags)
    first = commit_run(job, list(range(130)), etags)
    commit_run(job, [7], etags, status="error")
    expected = api.plan(job).categories
    assert expected == {"unchanged": 130}

    storage.write_atomic(snapshot.snapshot_uri(out), b"PAR1 torn")
    loaded = snapshot.load(out)
    assert loaded.snapshot is None and len(loaded.parts_read) == 4 and "ignoring the history snapshot" in caplog.text
    assert api.plan(job).categories == expected

    snapshot.update(out)  # a new snapshot, covering everything
    assert snapshot.load(out).parts_read == []
    storage.filesystem(out)[0].rm(str(tmp_path / "out" / "manifest" / first), recursive=True)  # a run's rows removed
    loaded = snapshot.load(out)
    assert loaded.snapshot is None and len(loaded.parts_read) == 1
    assert api.plan(job).categories == {"new": 129, "failed": 1}
