"""Text-to-image jobs end to end: a tiny random Stable Diffusion pipeline on moto S3, prompts from a CSV on S3,
real local Ray."""

from __future__ import annotations

import io
from pathlib import Path

import duckdb
import fsspec
import pytest
from PIL import Image

from models import default_registry
from pipeline import api, report, runs
from pipeline.job import JobError, parse_job
from tests.tiny_models import save_tiny_sd

SEED = 11
PROMPTS_CSV = (
    "prompt,negative_prompt,seed,guidance_scale,steps\n"
    "a red cat,,,,\n"
    '"a blue dog, smiling",blurry,5,3.5,2\n'
    "green hills,,,1.0,\n"
)


@pytest.fixture
def sd_uris(s3_bucket, tmp_path) -> tuple[str, str]:
    """(pipeline folder URI, prompts CSV URI), both on moto S3."""
    local = save_tiny_sd(tmp_path / "tiny-sd")
    fs = fsspec.filesystem("s3")
    fs.put(str(local), f"{s3_bucket}/tiny-sd", recursive=True)
    fs.pipe(f"{s3_bucket}/prompts.csv", PROMPTS_CSV.encode())
    return f"s3://{s3_bucket}/tiny-sd", f"s3://{s3_bucket}/prompts.csv"


def t2i_job(output: Path, uri: str, prompts, shard_size: int, batch_size: int, samples_per_prompt: int = 2):
    data = {
        "name": "t2i",
        "output": {"uri": str(output)},
        "generate": {
            "model": "text-to-image",
            "params": {"uri": uri, "steps": 3, "guidance_scale": 4.0},
            "prompts": prompts,
            "samples_per_prompt": samples_per_prompt,
            "seed": SEED,
        },
        # One torch thread: CPU float reductions depend on the thread count, which the actor's tuner
        # may change mid-run; bytes are the same whatever the sharding and batching at a fixed count.
        "resources": {"actors": 1, "batch_size": batch_size, "shard_size": shard_size, "threads_per_actor": 1},
    }
    return parse_job(data, default_registry())


def images_of(output: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((output / "images").glob("*.png"))}


def rows(output: Path) -> list[tuple]:
    con = duckdb.connect()
    return con.execute(
        f"SELECT prompt_index, sample_index, prompt, negative_prompt, seed, guidance_scale, sampler, sampler_steps, "
        f"status FROM read_parquet('{output}/manifest/**/*.parquet') ORDER BY prompt_index, sample_index"
    ).fetchall()


@pytest.mark.timeout(1200)  # four runs and two plans on real Ray: minutes on a shared 2-core machine
def test_prompts_job_rows_bytes_and_resume(ray_local, sd_uris, tmp_path):
    uri, prompts = sd_uris
    registry = default_registry()
    a, b = tmp_path / "a", tmp_path / "b"
    assert api.run(t2i_job(a, uri, prompts, shard_size=1, batch_size=1), registry).counts == {"ok": 6}
    assert api.run(t2i_job(b, uri, prompts, shard_size=4, batch_size=3), registry).counts == {"ok": 6}

    expected = [
        (0, 0, "a red cat", None, SEED, 4.0, "ddim", 3, "ok"),
        (0, 1, "a red cat", None, SEED, 4.0, "ddim", 3, "ok"),
        (1, 0, "a blue dog, smiling", "blurry", 5, 3.5, "ddim", 2, "ok"),
        (1, 1, "a blue dog, smiling", "blurry", 5, 3.5, "ddim", 2, "ok"),
        (2, 0, "green hills", None, SEED, 1.0, "ddim", 3, "ok"),
        (2, 1, "green hills", None, SEED, 1.0, "ddim", 3, "ok"),
    ]
    assert rows(a) == expected and rows(b) == expected
    got = images_of(a)
    assert sorted(got) == [f"{p:08d}-{s:04d}.png" for p in range(3) for s in range(2)]
    assert got == images_of(b)  # byte-identical whatever the sharding and the batch size
    assert len(set(got.values())) == 6  # every (prompt, sample) its own image
    for data in got.values():
        assert Image.open(io.BytesIO(data)).size == (32, 32)

    # The report shows each prompt beside its image.
    page = report.render(str(a))
    assert "a blue dog, smiling" in page and "not: blurry" in page

    # Resume after a crash: shards 1 and 3 lose their parts and images, then the run goes on.
    c = tmp_path / "c"
    job = t2i_job(c, uri, prompts, shard_size=2, batch_size=2)
    first = api.run(job, registry)
    [record] = runs.load_all(str(c))
    for shard, prompt in ((1, 1),):
        (c / "manifest" / record.run_id / f"part-{shard:05d}.parquet").unlink()
        for sample in (0, 1):
            (c / "images" / f"{prompt:08d}-{sample:04d}.png").unlink()
    record.status = "running"
    runs.save(record)
    second = api.run(job, registry)
    assert second.resumed and second.run_id == first.run_id and second.shards_run == 1
    assert rows(c) == expected  # exactly one row per sample
    assert images_of(c) == got

    # A changed prompt is a new input for its samples only; more samples per prompt add only the new ones.
    plan = api.plan(t2i_job(c, uri, ["a red cat", "something else", "green hills"], 2, 2), registry)
    assert plan.categories == {"unchanged": 2, "changed": 4}  # prompt 2 lost its guidance 1.0: changed too
    plan = api.plan(t2i_job(c, uri, prompts, 2, 2, samples_per_prompt=3), registry)
    assert plan.categories == {"unchanged": 6, "new": 3}


def test_text_to_image_needs_prompts_and_others_refuse_them(tmp_path):
    registry = default_registry()
    data = {
        "name": "t2i",
        "output": {"uri": str(tmp_path)},
        "generate": {"model": "text-to-image", "params": {"uri": "s3://b/sd"}, "samples": 4, "seed": 0},
    }
    with pytest.raises(JobError, match="needs `prompts`"):
        parse_job(data, registry)
    data["generate"] = {"model": "darkroom-ddpm-digits", "prompts": ["a cat"], "seed": 0}
    with pytest.raises(JobError, match="takes no prompts"):
        parse_job(data, registry)
    data["generate"] = {"model": "text-to-image", "params": {"uri": "s3://b/sd"}, "prompts": [], "seed": 0}
    with pytest.raises(JobError, match="empty"):
        parse_job(data, registry)
    # A prompts list file's URI is recorded in the run like input.uri: credentials in it are refused.
    data["generate"] = {
        "model": "text-to-image",
        "params": {"uri": "s3://b/sd"},
        "prompts": "https://example.com/prompts.csv?X-Amz-Signature=abc",
        "seed": 0,
    }
    with pytest.raises(JobError, match="generate.prompts.*credentials do not belong in a URI"):
        parse_job(data, registry)
