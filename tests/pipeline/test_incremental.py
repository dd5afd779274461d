"""Incremental runs: unchanged inputs do no work, touched ones are redone, param changes redo all."""

import os

import boto3
import duckdb
import pyarrow as pa
import pytest

from models import default_registry
from pipeline import api, incremental
from pipeline.job import parse_job
from tests.corpus import MAX_BYTES, MAX_PIXELS


def job_for(input_uri, output_uri, mode="incremental", scale=2):
    return parse_job(
        {
            "name": "inc",
            "mode": mode,
            "input": {"uri": input_uri},
            "output": {"uri": output_uri},
            "steps": [{"model": "bicubic", "params": {"scale": scale}}],
            "resources": {"shard_size": 4},
            "limits": {"max_pixels": MAX_PIXELS, "max_bytes": MAX_BYTES},
        },
        default_registry(),
    )


def rows(output_uri):
    return duckdb.sql(f"SELECT run_id, input_uri, status FROM read_parquet('{output_uri}/manifest/**/*.parquet')").fetchall()


def test_incremental_cycle(ray_local, corpus_dir, tmp_path, corpus):
    out = str(tmp_path / "out")
    n = sum(1 for _, s in corpus.values() if s != "skip")
    n_errors = sum(1 for _, s in corpus.values() if s not in ("ok", "skip"))
    first = api.run(job_for(str(corpus_dir), out))
    assert first.categories == {"new": n} and first.inputs == n

    # Unchanged inputs with an ok row are skipped; inputs that failed are tried again
    # (they fail before any model work: the files are broken).
    second = api.run(job_for(str(corpus_dir), out))
    assert second.categories == {"unchanged": n - n_errors, "failed": n_errors}
    assert second.inputs == n_errors and second.counts == {"error": n_errors}
    assert len(rows(out)) == n + n_errors

    touched = ["jpeg/rgb.jpg", "png/rgb.png", "webp/rgb.webp"]
    for name in touched:
        path = corpus_dir / name
        os.utime(path, (path.stat().st_atime, path.stat().st_mtime + 10))
    plan = api.plan(job_for(str(corpus_dir), out))
    assert plan.categories["changed"] == 3 and plan.inputs == 3 + n_errors
    retry = api.run(job_for(str(corpus_dir), out, mode="retry-errors"))
    assert retry.inputs == n_errors and retry.counts == {"error": n_errors}  # the 3 changed ones wait
    third = api.run(job_for(str(corpus_dir), out))
    assert third.inputs == 3 + n_errors
    redone = {uri.split("/in/")[1] for run_id, uri, status in rows(out) if run_id == third.run_id and status == "ok"}
    assert redone == set(touched)

    changed_param = api.run(job_for(str(corpus_dir), out, scale=3))
    assert changed_param.inputs == n and changed_param.categories == {"changed": n}

    overwrite = api.run(job_for(str(corpus_dir), out, mode="overwrite", scale=3))
    assert overwrite.inputs == n
    # Each run has exactly one row per input it ran.
    per_run = duckdb.sql(
        f"SELECT run_id, count(*) = count(DISTINCT input_uri) FROM read_parquet('{out}/manifest/**/*.parquet') GROUP BY run_id"
    ).fetchall()
    assert all(unique for _, unique in per_run) and len(per_run) == 6


def test_s3_etag_decides_changed(ray_local, s3_bucket, corpus):
    s3 = boto3.client("s3")
    for name in ("jpeg/rgb.jpg", "png/rgb.png"):
        s3.put_object(Bucket=s3_bucket, Key=f"in/{name}", Body=corpus[name][0])
    job = job_for(f"s3://{s3_bucket}/in/", f"s3://{s3_bucket}/out/")
    assert api.run(job).inputs == 2
    s3.put_object(Bucket=s3_bucket, Key="in/png/rgb.png", Body=corpus["png/rgb.png"][0])  # same bytes, same ETag
    s3.put_object(Bucket=s3_bucket, Key="in/jpeg/rgb.jpg", Body=corpus["jpeg/progressive.jpeg"][0])
    plan = api.plan(job)
    assert plan.categories == {"unchanged": 1, "changed": 1}


def test_classify_is_columnar_and_handles_unknown_versions():
    history = incremental.History(
        ok_keys=incremental.version_keys(pa.array(["a", "b"]), pa.array(["e1", None]), pa.array([1, 5]), pa.array([1.0, 2.0])),
        ok_uris=pa.array(["a", "b", "list"]),
        error_keys=pa.array(["c\x00e3"]),
        seen_uris=pa.array(["a", "b", "c", "d", "list"]),
    )
    plan = pa.table(
        {
            "input_uri": ["a", "b", "c", "d", "e", "list"],
            "rel_path": ["a", "b", "c", "d", "e", "list"],
            "size": pa.array([1, 5, 1, 1, 1, None], pa.int64()),
            "etag": ["e1", None, "e3", "x", "y", None],
            "mtime": pa.array([1.0, 2.0, 1.0, 1.0, 1.0, None]),
        }
    )
    assert incremental.classify(plan, history).to_pylist() == ["unchanged", "unchanged", "failed", "changed", "new", "unchanged"]


def test_lease_refuses_a_concurrent_run(ray_local, corpus_dir, tmp_path):
    from pipeline.lease import Lease, LeaseHeld

    out = str(tmp_path / "out")
    with Lease(out, "someone-else"):
        with pytest.raises(LeaseHeld, match="in use by run someone-else"):
            api.run(job_for(str(corpus_dir), out))
    assert not (tmp_path / "out" / "manifest").exists()
