"""End to end: real files on a real S3 API (moto server) and on local disk, real local Ray."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import boto3
import duckdb
import numpy as np
import pytest
from PIL import Image

from models import default_registry
from pipeline import api, cluster, errors, execute, manifest, runs, storage
from pipeline.job import Resources, ResourcesError, parse_job
from tests.corpus import DISPLAY_P3, MAX_BYTES, MAX_PIXELS, matrix_profile, p3_to_srgb_levels
from tests.faults import dead_writer_debris


def make_job(input_uri: str, output_uri: str, **overrides):
    data = {
        "name": "t",
        "input": {"uri": input_uri},
        "output": {"uri": output_uri, "format": "png"},
        "steps": [{"model": "bicubic", "params": {"scale": 2}}],
        "resources": {"actors": 1, "batch_size": 3, "shard_size": 5},
        "limits": {"max_pixels": MAX_PIXELS, "max_bytes": MAX_BYTES},
    }
    data.update(overrides)
    return parse_job(data, default_registry())


def rows_of(output_uri: str):
    """A DuckDB connection with view ``m`` = read_parquet('<output>/manifest/**/*.parquet')."""
    con = duckdb.connect()
    if output_uri.startswith("s3://"):
        fs, _ = storage.filesystem(output_uri)
        con.register_filesystem(fs)  # DuckDB reads S3 through s3fs, so the same endpoint and credentials
    con.execute(f"CREATE VIEW m AS SELECT * FROM read_parquet('{output_uri.rstrip('/')}/manifest/**/*.parquet')")
    return con


def check_manifest(con, corpus) -> None:
    expected = {name: status for name, (_, status) in corpus.items() if status != "skip"}
    got = con.execute(
        "SELECT input_uri, status, error_type, output_uri, width_in, height_in, width_out, height_out FROM m"
    ).fetchall()
    assert con.execute("SELECT count(*), count(DISTINCT input_uri) FROM m").fetchone() == (len(expected), len(expected))
    by_name = {}
    for uri, status, error_type, *rest in got:
        name = next(n for n in expected if uri.endswith("/" + n))
        by_name[name] = (status, error_type, *rest)
    for name, want in expected.items():
        status, error_type, output_uri, w_in, h_in, w_out, h_out = by_name[name]
        if want == "ok":
            assert status == "ok", (name, error_type)
            assert (w_out, h_out) == (2 * w_in, 2 * h_in)
            im = Image.open(io.BytesIO(storage.read_bytes(output_uri)))
            im.load()
            assert im.size == (w_out, h_out)
        else:
            assert (status, error_type) == ("error", want), name
            assert output_uri is None


def upload(bucket: str, prefix: str, corpus) -> None:
    s3 = boto3.client("s3")
    for name, (data, _) in corpus.items():
        s3.put_object(Bucket=bucket, Key=f"{prefix}/{name}", Body=data)


def test_s3_job_one_row_per_input(ray_local, s3_bucket, corpus):
    upload(s3_bucket, "photos", corpus)
    job = make_job(f"s3://{s3_bucket}/photos/", f"s3://{s3_bucket}/restored/")
    summary = api.run(job)
    expected_errors = sum(1 for _, s in corpus.values() if s not in ("ok", "skip"))
    assert summary.counts == {"ok": sum(1 for _, s in corpus.values() if s == "ok"), "error": expected_errors}
    assert summary.shards == -(-summary.inputs // 5)
    check_manifest(rows_of(f"s3://{s3_bucket}/restored"), corpus)
    [record] = runs.load_all(f"s3://{s3_bucket}/restored/")
    assert record.status == "committed" and record.counts == summary.counts
    # Outputs never land outside the output prefix.
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert all(k.startswith(("photos/", "restored/")) for k in keys)


def test_local_job_and_gray_alpha_sixteen_bit_outputs(ray_local, corpus_dir, tmp_path, corpus):
    out = tmp_path / "out"
    summary = api.run(make_job(str(corpus_dir), str(out)))
    assert summary.error_rows == sum(1 for _, s in corpus.values() if s not in ("ok", "skip"))
    con = rows_of(str(out))
    check_manifest(con, corpus)
    modes = dict(
        con.execute(
            "SELECT regexp_extract(input_uri, '[^/]+/[^/]+$'), output_uri FROM m WHERE status = 'ok'"
        ).fetchall()
    )
    assert Image.open(modes["png/gray16.png"]).mode == "I;16"
    assert Image.open(modes["jpeg/gray.jpg"]).mode == "L"
    assert Image.open(modes["png/la.png"]).mode == "LA"
    assert Image.open(modes["webp/rgba.webp"]).mode == "RGBA"
    assert modes["jpeg/rgb.jpg"].endswith("/images/jpeg/rgb.jpg.png")


def test_same_format_writes_each_kind_with_its_own_encoder(ray_local, corpus_dir, tmp_path, corpus):
    out = tmp_path / "out"
    job = make_job(str(corpus_dir), str(out), output={"uri": str(out), "format": "same", "quality": 90})
    api.run(job)
    con = rows_of(str(out))
    check_manifest(con, corpus)
    written = {
        name: (fmt, uri)
        for name, fmt, uri in con.execute(
            "SELECT regexp_extract(input_uri, '[^/]+/[^/]+$'), format_out, output_uri FROM m WHERE status = 'ok'"
        ).fetchall()
    }
    expect = {  # input → (format written, Pillow format and mode read back)
        "jpeg/rgb.jpg": ("jpeg", "JPEG", "RGB"),
        "jpeg/gray.jpg": ("jpeg", "JPEG", "L"),
        "jpeg/cmyk.jpg": ("jpeg", "JPEG", "RGB"),
        "png/rgba.png": ("png", "PNG", "RGBA"),
        "png/gray16.png": ("png", "PNG", "I;16"),
        "webp/rgba.webp": ("webp", "WEBP", "RGBA"),
        "tiff/gray16.tiff": ("tiff", "TIFF", "I;16"),
        "bmp/rgb.bmp": ("png", "PNG", "RGB"),
    }
    for name, (fmt, pil_format, mode) in expect.items():
        assert written[name][0] == fmt, name
        with Image.open(written[name][1]) as im:
            assert (im.format, im.mode) == (pil_format, mode), name


def test_outputs_encoded_by_the_actor_are_the_same_files(ray_local, corpus_dir, tmp_path, corpus):
    """encode_in_actor_above: 0 has the model actor encode every output (alpha re-attached, 16-bit
    kept, `same` followed) instead of the shard tasks: the same rows and byte-identical files."""
    Image.fromarray(np.zeros((1, 8200, 3), np.uint8)).save(
        corpus_dir / "wide.webp", lossless=True
    )  # ×2: over WebP's width limit
    seen = {}
    for above in (0, None):
        out = tmp_path / f"out-{above}"
        resources = {"actors": 1, "batch_size": 3, "shard_size": 5, "encode_in_actor_above": above}
        api.run(
            make_job(
                str(corpus_dir),
                str(out),
                output={"uri": str(out), "format": "same", "quality": 90},
                resources=resources,
            )
        )
        rows = (
            rows_of(str(out))
            .execute(
                "SELECT input_uri, status, stage, error_type, format_out, width_out, height_out, output_uri FROM m "
                "ORDER BY input_uri"
            )
            .fetchall()
        )
        seen[above] = [(*row[:-1], Path(row[-1]).read_bytes() if row[-1] else None) for row in rows]
    assert seen[0] == seen[None]
    assert sum(1 for row in seen[0] if row[1] == "ok") == sum(1 for _, status in corpus.values() if status == "ok")
    [wide] = [row for row in seen[0] if row[0].endswith("/wide.webp")]
    # 1×8200 is refused from its header now (a 8200:1 strip; ×2 it would also be over WebP's width
    # limit), before any model ran; the actor's encode errors are tested in test_execute.py.
    assert wide[1:4] == ("error", "decode", "extreme_aspect_ratio")


def test_outputs_no_encoder_can_write_fail_at_decode_before_the_model(ray_local, tmp_path):
    """Checked from the header against the encoder's limit and limits.max_aspect_ratio: one error
    row each at stage decode, no model time, and the rest of the run goes on."""
    root = tmp_path / "in"
    root.mkdir()
    Image.new("L", (1, 600_000), 128).save(root / "tall.png")  # 600,000:1, under max_pixels
    Image.new("RGB", (9000, 10), (1, 2, 3)).save(root / "wide.webp", lossless=True)  # ×2: 18,000 > WebP's 16,383
    Image.new("RGB", (32, 24), (4, 5, 6)).save(root / "ok.png")
    out = tmp_path / "out"
    summary = api.run(make_job(str(root), str(out), output={"uri": str(out), "format": "same"}))
    assert summary.counts == {"ok": 1, "error": 2}
    rows = {
        Path(uri).name: rest
        for uri, *rest in rows_of(str(out))
        .execute("SELECT input_uri, status, stage, error_type, error_message, t_model FROM m")
        .fetchall()
    }
    assert rows["ok.png"][:1] == ["ok"]
    status, stage, error_type, message, t_model = rows["tall.png"]
    assert (status, stage, error_type, t_model) == ("error", "decode", "extreme_aspect_ratio", None)
    assert "1×600000 is 600000:1" in message
    status, stage, error_type, message, t_model = rows["wide.webp"]
    assert (status, stage, error_type, t_model) == ("error", "decode", "output_too_large", None)
    assert "18000×20" in message and "webp holds at most 16383" in message


def test_colour_profiles_metadata_and_gif_through_a_run(ray_local, tmp_path):
    """A Display-P3 PNG comes out in sRGB, a camera JPEG keeps its EXIF (upright, no orientation
    tag), a GIF is read (first frame) instead of skipped; output.metadata: false drops the EXIF."""
    root = tmp_path / "in"
    root.mkdir()
    colour = (180, 120, 90)
    Image.new("RGB", (8, 6), colour).save(root / "p3.png", icc_profile=matrix_profile(DISPLAY_P3, 2.2, "P3"))
    exif = Image.Exif()
    exif[0x010F], exif[0x0112] = "Darkroom Camera Co.", 6
    Image.new("RGB", (8, 6), (9, 9, 9)).save(root / "camera.jpg", exif=exif, quality=95)
    Image.new("P", (8, 6), 5).save(root / "anim.gif", save_all=True, append_images=[Image.new("P", (8, 6), 9)])
    for keep in (True, False):
        out = tmp_path / f"out-{keep}"
        output = {"uri": str(out), "format": "same", "quality": 95, "metadata": keep}
        summary = api.run(make_job(str(root), str(out), output=output, steps=[{"model": "identity"}]))
        assert summary.counts == {"ok": 3}
        written = {Path(u).name: u for (u,) in rows_of(str(out)).execute("SELECT output_uri FROM m").fetchall()}
        with Image.open(written["camera.jpg"]) as im:
            assert im.size == (6, 8)  # upright
            assert im.getexif().get(0x010F) == ("Darkroom Camera Co." if keep else None)
            assert 0x0112 not in im.getexif()
    with Image.open(written["p3.png"]) as im:
        assert np.abs(np.asarray(im)[0, 0] - p3_to_srgb_levels(colour)).max() <= 1
    with Image.open(written["anim.gif.png"]) as im:
        assert im.size == (8, 6)


def test_learned_model_on_s3(ray_local, s3_bucket, corpus):
    small = {k: v for k, v in corpus.items() if k in ("jpeg/rgb.jpg", "png/la.png", "broken/zero-byte.png")}
    upload(s3_bucket, "in", small)
    job = make_job(f"s3://{s3_bucket}/in", f"s3://{s3_bucket}/out", steps=[{"model": "realesr-animevideov3"}])
    summary = api.run(job)
    assert summary.counts == {"ok": 2, "error": 1}
    con = rows_of(f"s3://{s3_bucket}/out")
    ok = con.execute("SELECT width_in, width_out, weights_sha256, models FROM m WHERE status = 'ok'").fetchall()
    sha = default_registry().get("realesr-animevideov3").weights.sha256
    assert [(w_out == 4 * w_in, weights, models) for w_in, w_out, weights, models in ok] == [
        (True, [sha], ["realesr-animevideov3"])
    ] * 2


def test_resume_redoes_only_uncommitted_shards(ray_local, corpus_dir, tmp_path):
    out = str(tmp_path / "out")
    job = make_job(str(corpus_dir), out)
    first = api.run(job)
    # Simulate a crash after two shards committed: drop the other parts, reopen the record.
    [record] = runs.load_all(out)
    for shard in range(2, record.shards):
        (tmp_path / "out" / "manifest" / record.run_id / f"part-{shard:05d}.parquet").unlink()
    kept = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out" / "manifest" / record.run_id).iterdir()}
    record.status = "running"
    runs.save(record)
    second = api.run(job)
    assert second.resumed and second.run_id == first.run_id
    assert second.shards_run == record.shards - 2
    assert second.counts == first.counts
    for name, mtime in kept.items():  # committed parts untouched
        assert (tmp_path / "out" / "manifest" / record.run_id / name).stat().st_mtime_ns == mtime
    con = rows_of(out)
    assert con.execute("SELECT count(*) = count(DISTINCT input_uri) FROM m").fetchone() == (True,)
    # A committed run is not resumed: the next run is a new one; naming it is refused.
    third = api.run(job)
    assert not third.resumed and third.run_id != first.run_id
    with pytest.raises(api.ResumeError, match="is committed"):
        api.run(job, resume_run_id=first.run_id)
    with pytest.raises(api.ResumeError, match="no run nope"):
        api.run(job, resume_run_id="nope")


def test_resume_a_named_run(ray_local, corpus_dir, tmp_path):
    out = str(tmp_path / "out")
    job = make_job(str(corpus_dir), out)
    first = api.run(job)
    [record] = runs.load_all(out)
    (tmp_path / "out" / "manifest" / record.run_id / "part-00000.parquet").unlink()
    record.status = "running"
    runs.save(record)
    resumed = api.run(job, resume=False, resume_run_id=first.run_id)
    assert resumed.resumed and resumed.run_id == first.run_id and resumed.shards_run == 1


def test_list_file_input(ray_local, corpus_dir, tmp_path):
    listing = tmp_path / "list.csv"
    listing.write_text(
        "uri\n" + "\n".join(str(corpus_dir / n) for n in ("jpeg/rgb.jpg", "png/rgb.png", "broken/bomb.png")) + "\n"
    )
    summary = api.run(make_job(str(listing), str(tmp_path / "out")))
    assert summary.counts == {"ok": 2, "error": 1}


def test_gpu_request_falls_back_to_cpu_without_gpus(ray_local, corpus_dir, tmp_path):
    job = make_job(str(corpus_dir / "png"), str(tmp_path / "out"), resources={"gpus_per_actor": 1, "shard_size": 4})
    summary = api.run(job)
    assert summary.counts.get("ok") and not summary.error_rows


def test_each_step_has_its_own_actor_pool(ray_local, corpus_dir, tmp_path):
    job = make_job(
        str(corpus_dir / "png"),
        str(tmp_path / "out"),
        steps=[
            {"model": "bicubic", "params": {"scale": 2}},
            {
                "model": "lanczos",
                "params": {"scale": 1.5},
                "resources": {"actors": {"min": 1, "max": 2}, "cpus_per_actor": 0.5},
            },
        ],
        resources={"shard_size": 2, "cpus_per_task": 0.5, "max_inflight_shards": 4},
    )
    summary = api.run(job)
    assert summary.counts == {"ok": summary.inputs}
    rows = manifest.read(str(tmp_path / "out")).to_pylist()
    assert all(r["width_out"] == round(r["width_in"] * 2 * 1.5) and r["models"] == ["bicubic", "lanczos"] for r in rows)
    assert all(r["t_model"] > 0 for r in rows)
    # Each actor of each step reports how busy it was; every batch (at most one per 2-input shard) passes both steps.
    by_step = {"0": [], "1": []}
    for actor in summary.actors:
        by_step[actor["id"].split("/")[0]].append(actor)
        assert 0 < actor["busy_fraction"] <= 1, summary.actors
    assert [a["id"] for a in by_step["0"]] == ["0/bicubic#0"]
    assert [a["id"] for a in by_step["1"]][0] == "1/lanczos#0"
    assert 0 < sum(a["batches"] for a in by_step["0"]) == sum(a["batches"] for a in by_step["1"]) <= summary.shards
    assert runs.load_all(str(tmp_path / "out"))[-1].actors == summary.actors  # kept for the report


def test_actors_that_leave_no_cpu_for_shards_are_refused_in_one_line(ray_local, corpus_dir, tmp_path):
    # On this 2-CPU cluster an actor holding both CPUs leaves none for the shard tasks: such a
    # run used to wait forever without a word.
    job = make_job(str(corpus_dir / "png"), str(tmp_path / "out"), resources={"cpus_per_actor": 2})
    with pytest.raises(ResourcesError) as caught:
        api.run(job)
    message = errors.explain(caught.value)
    assert message.startswith("resources.cpus_per_actor=2: ") and "need 2.5 CPUs, the cluster has 2" in message
    assert "\n" not in message
    # A step's own override is the field to change, and it is named as such.
    steps = [{"model": "bicubic", "params": {"scale": 2}, "resources": {"cpus_per_actor": 3}}]
    with pytest.raises(ResourcesError, match=r"^steps\[0\]\.resources\.cpus_per_actor=3 .* fits on no node"):
        api.run(make_job(str(corpus_dir / "png"), str(tmp_path / "out"), steps=steps))
    assert not (tmp_path / "out" / "images").exists()
    # What fits still runs: the actor's one CPU and a shard task's one.
    summary = api.run(
        make_job(str(corpus_dir / "png"), str(tmp_path / "out"), resources={"cpus_per_actor": 1, "shard_size": 4})
    )
    assert summary.counts.get("ok") and not summary.error_rows


def test_cpu_actors_share_the_node_threads(ray_local):
    import torch

    one = Resources()  # cpus_per_actor 1 on this one-node, 2-CPU cluster
    [alone] = cluster.with_threads([one])
    assert alone.threads_per_actor == 2  # its model gets both cores, not just the CPU it reserves
    assert [r.threads_per_actor for r in cluster.with_threads([one, one])] == [1, 1]
    growing = Resources(actors={"min": 1, "max": 2})
    assert [r.threads_per_actor for r in cluster.with_threads([growing])] == [1]
    assert [r.threads_per_actor for r in cluster.with_threads([Resources(threads_per_actor=3)])] == [3]
    gpu = Resources(gpus_per_actor=1, cpus_per_actor=1.5)  # feeds a GPU: threads follow its reservation
    assert [r.threads_per_actor for r in cluster.with_threads([gpu, one])] == [2, 2]
    # The actor really runs with them.
    actor = execute.ModelActor.options(num_cpus=1).remote(
        default_registry(), [{"model": "identity", "params": {}}], alone, False
    )
    try:
        assert ray_local.get(actor.__ray_call__.remote(lambda self: torch.get_num_threads())) == 2
    finally:
        ray_local.kill(actor)


def test_failed_writes_and_dead_writers_leave_no_debris(ray_local, corpus_dir, tmp_path):
    out = tmp_path / "out"
    blocked = out / "images" / "rgb.png"
    (blocked / "in-the-way").mkdir(parents=True)  # that output's rename fails: an error row, not a crash
    job = make_job(str(corpus_dir / "png"), str(out))
    first = api.run(job)
    assert first.counts["error"] == 1 and [e["stage"] for e in first.errors] == ["write"]
    assert not list(out.rglob("*.tmp"))
    # A run that died mid-write (its writers killed), and the debris of an older version's run.
    (blocked / "in-the-way").rmdir()
    blocked.rmdir()
    debris = [dead_writer_debris(out / "images" / "x.png"), dead_writer_debris(out / "manifest" / "p.parquet")]
    old = out / "images" / (".y.png." + "ab" * 16 + ".tmp")
    old.write_bytes(b"x")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    assert all(p.exists() for p in debris)
    second = api.run(job)
    assert second.counts == {"ok": 1}
    assert not list(out.rglob("*.tmp"))
    written = {str(p) for p in (out / "images").rglob("*") if p.is_file()}
    assert written == {r["output_uri"] for r in manifest.read(str(out)).to_pylist() if r["status"] == "ok"}


def _build_broken(_):
    from models.weights import WeightsError

    raise WeightsError("broken.safetensors: cannot be read in this actor")


def _registry_with_broken(works: bool):
    """The default registry plus `broken`: its driver check passes, its actors fail to start (or, once
    ``works``, build the identity)."""
    from models.catalog import NoParams
    from models.registry import ModelEntry

    reg = default_registry()
    build = (lambda _: default_registry().build("identity")) if works else _build_broken
    reg.register(ModelEntry(name="broken", task="any", description="test", params=NoParams, build=build))
    return reg


def test_an_actor_that_fails_to_start_fails_the_run_with_its_own_message(ray_local, corpus_dir, tmp_path):
    out = str(tmp_path / "out")
    data = {
        "name": "t",
        "input": {"uri": str(corpus_dir)},
        "output": {"uri": out, "format": "png"},
        "steps": [{"model": "broken"}],
        "resources": {"actors": 1, "shard_size": 4},
    }
    with pytest.raises(errors.ModelLoadError) as err:
        api.run(parse_job(data, _registry_with_broken(False)), _registry_with_broken(False))
    assert str(err.value) == "broken.safetensors: cannot be read in this actor"
    assert errors.explain(err.value) == str(err.value) and errors.exit_code(err.value) == 1
    [record] = runs.load_all(out)
    assert record.status == runs.RunStatus.FAILED and record.finished_at
    # A failed run resumes like a running one: same run, every input exactly once.
    fixed = _registry_with_broken(True)
    resumed = api.run(parse_job(data, fixed), fixed)
    assert resumed.resumed and resumed.run_id == record.run_id
    assert runs.load_all(out)[0].status == runs.RunStatus.COMMITTED
    con = rows_of(out)
    counts = con.execute("SELECT count(*) = count(DISTINCT input_uri), count(*) FROM m").fetchone()
    assert counts == (True, record.inputs)


def test_resuming_a_run_planned_with_another_fingerprint_is_refused(corpus_dir, tmp_path):
    """A stopped run whose job has changed since (another fingerprint: steps, params, weights or a
    model's configs) is not resumed under the new job: outputs of both would mix. No Ray needed."""
    out = str(tmp_path / "out")
    job = make_job(str(corpus_dir / "png"), out)
    record = runs.RunRecord(
        run_id=runs.new_run_id(),
        job_name="t",
        fingerprint="0" * 16,
        input_uri=job.source_uri,
        output_uri=out,
        status=runs.RunStatus.STOPPED,
        started_at=runs.now(),
        job={},
    )
    runs.save(record)
    with pytest.raises(api.ResumeError, match="other steps, params, weights or model configs"):
        api.run(job, resume_run_id=record.run_id)
    assert runs.load_all(out)[0].status == runs.RunStatus.STOPPED
