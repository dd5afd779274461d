import json

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from models import default_registry
from pipeline import planning
from pipeline.job import parse_job


def job_for(uri: str, shard_size: int = 4):
    return parse_job(
        {
            "name": "p",
            "input": {"uri": uri},
            "output": {"uri": "/tmp/unused"},
            "steps": [{"model": "identity"}],
            "resources": {"shard_size": shard_size},
        },
        default_registry(),
    )


def all_rows(job):
    return [row for shard in planning.iter_shards(job) for row in shard.table.to_pylist()]


def test_shards_are_contiguous_deterministic_and_filtered(corpus_dir, corpus):
    summary = planning.PlanSummary()
    shards = list(planning.iter_shards(job_for(str(corpus_dir), 4), summary))
    n = sum(1 for _, s in corpus.values() if s != "skip")
    assert summary.inputs == n and summary.shards == len(shards) == -(-n // 4)
    assert summary.skipped_not_image == 1
    assert [len(s.table) for s in shards[:-1]] == [4] * (len(shards) - 1)
    again = [s.table for s in planning.iter_shards(job_for(str(corpus_dir), 4))]
    assert all(a.equals(s.table) for a, s in zip(again, shards))
    rels = [r["rel_path"] for s in shards for r in s.table.to_pylist()]
    assert "jpeg/rgb.jpg" in rels and "unicode/café-ü.png" in rels
    assert all(s.table.schema == planning.PLAN_SCHEMA for s in shards)


def test_listing_streams_one_shard_at_a_time(corpus_dir):
    it = planning.iter_shards(job_for(str(corpus_dir), 2))
    first = next(it)  # the generator yields before the listing is exhausted
    assert len(first.table) == 2


def test_glob(corpus_dir):
    rows = all_rows(job_for(f"{corpus_dir}/**/*.png"))
    assert rows and all(r["input_uri"].endswith(".png") for r in rows)
    assert {r["rel_path"].split("/")[0] for r in rows} >= {"png", "broken", "unicode"}


@pytest.mark.parametrize("kind", ["csv", "jsonl", "parquet"])
def test_list_files(tmp_path, corpus_dir, kind):
    uris = [str(corpus_dir / "jpeg/rgb.jpg"), str(corpus_dir / "png/rgb.png"), str(corpus_dir / "notes/readme.txt")]
    path = tmp_path / f"list.{kind}"
    if kind == "csv":
        path.write_text("uri,extra\n" + "".join(f"{u},1\n" for u in uris))
    elif kind == "jsonl":
        path.write_text("".join(json.dumps({"uri": u}) + "\n" for u in uris))
    else:
        pq.write_table(pa.table({"uri": uris, "size": [1, 2, 3]}), path)
    rows = all_rows(job_for(str(path)))
    assert [r["input_uri"] for r in rows] == uris[:2]
    assert rows[0]["rel_path"].endswith("jpeg/rgb.jpg")
    assert rows[0]["size"] == (1 if kind == "parquet" else None)


def test_list_file_without_uri_column(tmp_path):
    path = tmp_path / "l.csv"
    path.write_text("path\n/a.jpg\n")
    with pytest.raises(ValueError, match="no `uri` column"):
        all_rows(job_for(str(path)))


def test_s3_listing_pages_past_1000_keys(s3_bucket):
    s3 = boto3.client("s3")
    keys = [f"many/{i:05d}.jpg" for i in range(1010)] + ["many/folder/", "many/x.txt"]
    for key in keys:
        s3.put_object(Bucket=s3_bucket, Key=key, Body=b"x")
    rows = all_rows(job_for(f"s3://{s3_bucket}/many", 500))
    assert [r["rel_path"] for r in rows] == [k.split("/", 1)[1] for k in keys[:1010]]
    assert rows[0]["etag"] and rows[0]["size"] == 1 and rows[0]["mtime"] > 0


def test_list_file_image_test_is_the_extension_after_the_last_dot(tmp_path):
    # The list-file path matches image extensions at the end of the (redacted) URI: the same
    # test as "the extension from the last dot, if no slash follows", because no image
    # extension holds another dot or a slash.
    from pipeline.images import IMAGE_EXTENSIONS

    assert all(e.startswith(".") and "." not in e[1:] and "/" not in e for e in IMAGE_EXTENSIONS)
    uris = {
        "s3://b/A.JPG": True,
        "s3://b/x.tİf": True,
        "https://h/x.png?v=a.txt": True,  # (a credential such as ?sig= is refused: test_hostile)
        "s3://b/.jpeg": True,
        "s3://b/x.jpg/": False,
        "s3://b/x.jpg.txt": False,
        "s3://b/dir.png/file": False,
        "s3://b/xjpg": False,
        "s3://b/x.jpgs": False,
        "s3://b/x": False,
    }
    path = tmp_path / "l.parquet"
    pq.write_table(pa.table({"uri": list(uris)}), path)
    assert [r["input_uri"] for r in all_rows(job_for(str(path)))] == [u for u, image in uris.items() if image]
