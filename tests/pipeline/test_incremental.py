"""Incremental runs: unchanged inputs do no work, touched ones are redone, param changes redo all."""

import os
import random

import boto3
import duckdb
import numpy as np
import pyarrow as pa
import pytest

from models import default_registry
from pipeline import api, incremental, storage
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
    return duckdb.sql(
        f"SELECT run_id, input_uri, status FROM read_parquet('{output_uri}/manifest/**/*.parquet')"
    ).fetchall()


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
        f"SELECT run_id, count(*) = count(DISTINCT input_uri) FROM read_parquet('{out}/manifest/**/*.parquet') GROUP "
        "BY run_id"
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


def manifest_rows(rows: list[tuple]) -> pa.Table:
    """(uri, etag, size, mtime, fingerprint, status) tuples → a table of incremental.HISTORY_COLUMNS."""
    columns = list(zip(*rows)) if rows else [[]] * 6
    types = [pa.string(), pa.string(), pa.int64(), pa.float64(), pa.string(), pa.string()]
    return pa.table([pa.array(c, t) for c, t in zip(columns, types)], names=incremental.HISTORY_COLUMNS)


def plan_rows(rows: list[tuple]) -> pa.Table:
    """(uri, etag, size, mtime) tuples → the key columns of a plan table."""
    uris, etags, sizes, mtimes = (list(c) for c in zip(*rows))
    return pa.table(
        {
            "input_uri": uris,
            "rel_path": uris,
            "size": pa.array(sizes, pa.int64()),
            "etag": pa.array(etags, pa.string()),
            "mtime": pa.array(mtimes, pa.float64()),
        }
    )


def test_classify_is_columnar_and_handles_unknown_versions():
    history = incremental.History.from_tables(
        [
            manifest_rows([("a", "e1", 1, 1.0, "f", "ok"), ("b", None, 5, 2.0, "f", "ok")]),
            manifest_rows([("list", None, None, None, "f", "ok"), ("c", "e3", 1, 1.0, "f", "error")]),
            manifest_rows([("d", "x", 1, 1.0, "other steps", "ok")]),  # another fingerprint: only "seen"
        ],
        "f",
    )
    plan = plan_rows(
        [
            ("a", "e1", 1, 1.0),
            ("b", None, 5, 2.0),
            ("c", "e3", 1, 1.0),
            ("d", "x", 1, 1.0),
            ("e", "y", 1, 1.0),
            ("list", None, None, None),
        ]
    )
    assert incremental.classify(plan, history).to_pylist() == [
        "unchanged",
        "unchanged",
        "failed",
        "changed",
        "new",
        "unchanged",
    ]
    assert incremental.classify(plan, incremental.History.empty()).to_pylist() == ["new"] * 6


def reference_categories(manifest: list[tuple], plan: list[tuple], fingerprint: str) -> list[str]:
    """The module docstring's rules, one Python object per row."""

    def key(uri, etag, size, mtime):
        if etag is None and (size is None or mtime is None):
            return None
        version = etag if etag is not None else f"{size}:{pa.scalar(mtime, pa.float64()).cast(pa.string()).as_py()}"
        return f"{uri}\0{version}"

    same = [r for r in manifest if r[4] == fingerprint]
    ok_keys = {key(*r[:4]) for r in same if r[5] == "ok"} - {None}
    error_keys = {key(*r[:4]) for r in same if r[5] != "ok"} - {None}
    ok_uris, error_uris = {r[0] for r in same if r[5] == "ok"}, {r[0] for r in same if r[5] != "ok"}
    out = []
    for row in plan:
        uri = storage.redact(row[0])  # as the manifest records it
        k = key(uri, *row[1:])
        if (k in ok_keys) if k is not None else (uri in ok_uris):
            out.append("unchanged")
        elif (k in error_keys) if k is not None else (uri in error_uris):
            out.append("failed")
        else:
            out.append("changed" if uri in {r[0] for r in manifest} else "new")
    return out


def test_classify_matches_the_rules_on_awkward_keys():
    # Empty, NUL-bearing, long and non-ASCII URIs and versions; keys that differ only past
    # the first 8 bytes; signed URLs (matched redacted); rows of another fingerprint.
    rng = random.Random(7)
    uris = [
        "",
        "a",
        "a\0b",
        "é" * 9,
        "x" * 63,
        "x" * 64,
        "x" * 300,
        "s3://b/p/1.jpg",
        "s3://b/p/2.jpg",
        "https://h/s.jpg",
    ]
    etags = [None, "", "e1", "e1\0", "b\0e1"]

    def row(uri_choices):
        return (rng.choice(uri_choices), rng.choice(etags), rng.choice([None, 1, 10]), rng.choice([None, 1.0, 2.5]))

    manifest = [(*row(uris), rng.choice(["f", "g"]), rng.choice(["ok", "error"])) for _ in range(400)]
    plan = [row(uris + ["https://h/s.jpg?X-Amz-Signature=1", "s3://b/new.jpg"]) for _ in range(3000)]
    parts = [manifest_rows(manifest[i : i + 150]) for i in range(0, len(manifest), 150)]
    got = incremental.classify(plan_rows(plan), incremental.History.from_tables(parts, "f")).to_pylist()
    assert got == reference_categories(manifest, plan, "f")
    assert set(got) == set(incremental.CATEGORIES)


def test_a_hash_collision_never_counts_as_a_match():
    # Four different strings filed under one hash (that of "q"): only "q" itself is found,
    # wherever it sits among them.
    strings = pa.array(["a", "b", "c", "q"], pa.large_string())
    same_hash = incremental.string_hashes(pa.array(["q"]))[0]
    for order in ([0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2]):
        lookup = incremental._Lookup(np.full(4, same_hash, np.uint64), np.array(order), strings.take)
        assert lookup.contains(pa.array(["q", "a", "zz", "c"])).tolist() == [True, False, False, False]
    without_q = incremental._Lookup(np.full(3, same_hash, np.uint64), np.array([0, 1, 2]), strings.take)
    assert not without_q.contains(pa.array(["q"])).any()


def test_string_hashes_depend_on_the_string_alone():
    strings = pa.array(["", "a", "a\0", "abcdefgh", "abcdefghi", "é" * 20, "x" * 100, "abcdefgh", None])
    hashes = incremental.string_hashes(strings)
    assert hashes.dtype == np.uint64 and hashes[3] == hashes[7] and len(set(hashes[:7].tolist())) == 7
    for start in range(len(strings)):  # slices, neighbours and offsets do not matter
        assert (incremental.string_hashes(strings.slice(start)) == hashes[start:]).all()
    assert (incremental.string_hashes(strings.cast(pa.large_string())) == hashes).all()
    assert (incremental.string_hashes(pa.chunked_array([strings.slice(0, 3), strings.slice(3)])) == hashes).all()
    lone = incremental.string_hashes(pa.array(["x" * 100] + ["ab"] * 20))[0]  # one long string among short ones
    assert lone == hashes[6]


def test_lease_refuses_a_concurrent_run(ray_local, corpus_dir, tmp_path):
    from pipeline.lease import Lease, LeaseHeld

    out = str(tmp_path / "out")
    with Lease(out, "someone-else"):
        with pytest.raises(LeaseHeld, match="in use by run someone-else"):
            api.run(job_for(str(corpus_dir), out))
    assert not (tmp_path / "out" / "manifest").exists()


def test_readme_query_gives_the_latest_row_per_input(ray_local, tmp_path):
    from pathlib import Path

    from PIL import Image

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    query = next(block for block in readme.split("```sql\n")[1:] if "QUALIFY" in block).split("```")[0]
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(src / f"{i}.png")
    api.run(job_for(str(src), str(out)))
    Image.new("RGB", (8, 6), (0, 200, 0)).save(src / "1.png")  # replaced: another size, another version
    replaced = api.run(job_for(str(src), str(out)))
    assert replaced.categories == {"unchanged": 2, "changed": 1}

    assert duckdb.sql(query.replace("out/demo", str(out))).fetchall() == [("ok", None, 3)]
    every_row = query.replace("QUALIFY", "-- QUALIFY").replace("out/demo", str(out))
    assert duckdb.sql(every_row).fetchall() == [("ok", None, 4)]  # the superseded row of 1.png
    with_latest = query.rsplit("SELECT", 1)[0].replace("out/demo", str(out))
    latest = duckdb.sql(with_latest + "SELECT height_out FROM latest WHERE input_uri LIKE '%1.png'").fetchall()
    assert latest == [(12,)]  # bicubic ×2 of the replacement's 6 rows
