"""The output layout: the paths users and other tools rely on (README, docs/architecture.md)."""

from __future__ import annotations

from pipeline import layout


def test_every_path_under_the_output_prefix():
    out = "s3://bucket/out/"
    assert layout.images_uri(out, "a/b.jpg.png") == "s3://bucket/out/images/a/b.jpg.png"
    assert layout.images_prefix(out) == "s3://bucket/out/images/"
    assert layout.manifest_prefix(out) == "s3://bucket/out/manifest/"
    assert layout.manifest_part_uri(out, "r1", 12) == "s3://bucket/out/manifest/r1/part-00012.parquet"
    assert layout.is_manifest_part("part-00012.parquet") and not layout.is_manifest_part("part-00012.parquet.tmp")
    assert layout.shard_of_part("part-00012.parquet") == 12
    assert layout.run_record_uri(out, "r1") == "s3://bucket/out/_darkroom/runs/r1/run.json"
    assert layout.plan_shard_uri(out, "r1", 3) == "s3://bucket/out/_darkroom/runs/r1/plan/shard-00003.parquet"
    assert layout.lease_uri("/data/out") == "/data/out/_darkroom/lease.json"
