"""The `checkpoint` model: real checkpoints in the formats users bring, on local disk and on S3.

The checkpoints are Real-ESRGAN's own published weights (converted from the ncnn exports
the project ships), saved the way training code saves them: a `.pth` wrapped in
``params_ema``, a DataParallel `.pth` with ``module.`` prefixes, a Lightning-style
``state_dict`` `.ckpt`, a `.safetensors`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import boto3
import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import save_file

from models import default_registry, realesrgan, realesrgan_ncnn
from models.checkpoint import CheckpointParams, weights_digest
from models.weights import WeightsError


@pytest.fixture(scope="module")
def originals():
    """name → (the registry's own model, its state_dict in Real-ESRGAN's key layout): a genuine
    SRVGGNetCompact and a genuine RRDBNet, as Real-ESRGAN's training code saves them."""
    reg = default_registry()
    return {
        name: (reg.build(name), realesrgan.converted(spec, convert))
        for name, spec, convert in (
            ("realesr-animevideov3", realesrgan.ANIMEVIDEOV3, realesrgan_ncnn.srvgg_from_ncnn),
            ("realesrgan-x4plus-anime", realesrgan.X4PLUS_ANIME, realesrgan_ncnn.rrdbnet_from_ncnn),
        )
    }


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build(params: dict):
    return default_registry().build("checkpoint", params)


def assert_same_network(model, original, size=(16, 12), batch=2):
    x = torch.rand(batch, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        want = original.module(x).clamp(0, 1)
        got = model.module(x)
    assert got.shape == want.shape == (batch, 3, 4 * size[0], 4 * size[1])
    assert (got - want).abs().max() <= 1e-5


def put_s3(bucket: str, key: str, path: Path) -> str:
    boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=path.read_bytes())
    return f"s3://{bucket}/{key}"


def test_params_ema_pth_local_preferred_over_params(tmp_path, originals):
    original, sd = originals["realesr-animevideov3"]
    path = tmp_path / "realesr-animevideov3.pth"
    decoy = {k: torch.zeros_like(v) for k, v in sd.items()}  # `params` (non-EMA) must lose to `params_ema`
    torch.save({"params": decoy, "params_ema": sd, "iter": 400000}, path)
    model = build({"uri": str(path)})
    assert model.scale == 4 and model.channels == 3 and model.supports_half
    assert model.module.net.__class__.__name__ == "SRVGGNetCompact"  # spandrel's Compact network
    assert model.weights_sha256 == sha256_of(path)  # computed although not pinned
    assert_same_network(model, original)


def test_dataparallel_rrdbnet_pth_local(tmp_path, originals):
    original, sd = originals["realesrgan-x4plus-anime"]
    path = tmp_path / "RealESRGAN_x4plus_anime_6B.pth"
    torch.save({f"module.{k}": v for k, v in sd.items()}, path)
    model = build({"uri": str(path), "sha256": sha256_of(path).upper()})  # pins are case-insensitive
    assert model.scale == 4 and model.channels == 3
    assert model.module.net.__class__.__name__ == "RRDBNet"
    assert model.weights_sha256 == sha256_of(path)
    assert_same_network(model, original, size=(9, 7), batch=1)


def test_lightning_state_dict_ckpt(tmp_path, originals):
    original, sd = originals["realesr-animevideov3"]
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": sd, "epoch": 3, "global_step": 1200}, path)
    assert_same_network(build({"uri": str(path)}), original)


def test_safetensors_on_s3_pinned_and_unpinned(s3_bucket, tmp_path, originals):
    original, sd = originals["realesr-animevideov3"]
    path = tmp_path / "animevideov3.safetensors"
    save_file(sd, str(path))
    uri = put_s3(s3_bucket, "models/animevideov3.safetensors", path)
    digest = sha256_of(path)
    pinned = build({"uri": uri, "sha256": digest})
    assert pinned.weights_sha256 == digest and pinned.scale == 4
    assert_same_network(pinned, original)
    unpinned = build({"uri": uri})
    assert unpinned.weights_sha256 == digest
    entry = default_registry().get("checkpoint")
    assert entry.weights_sha256({"uri": uri}) == entry.weights_sha256({"uri": uri, "sha256": digest}) == digest


def test_restoration_architecture_with_its_own_call_convention(tmp_path):
    """A DRUNet denoiser (spandrel's own network class, freshly initialised): scale 1, a generated
    noise-level channel, inputs padded to multiples of 8 — at odd sizes, in batches and in tiles."""
    from spandrel.architectures.DRUNet import DRUNet

    from models.tiling import tiled_forward

    path = tmp_path / "drunet_color.pth"
    torch.save(DRUNet(in_nc=4, out_nc=3, nc=[8, 16, 32, 64], nb=2).state_dict(), path)
    model = build({"uri": str(path)})
    assert (model.scale, model.channels, model.supports_half) == (1, 3, False)
    assert model.module.net.__class__.__name__ == "DRUNet"
    x = torch.rand(2, 3, 13, 11, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        batch = model.module(x)
        one = model.module(x[1:])
        tiled = tiled_forward(model.module, x, 1, 12, 4, torch.device("cpu"))
    assert batch.shape == tiled.shape == (2, 3, 13, 11)
    assert torch.equal(batch[1:], one) and 0 <= batch.min() and batch.max() <= 1


def test_pin_mismatch_refused_on_s3(s3_bucket, tmp_path, originals):
    _, sd = originals["realesr-animevideov3"]
    path = tmp_path / "w.safetensors"
    save_file(sd, str(path))
    uri = put_s3(s3_bucket, "models/w.safetensors", path)
    wrong = "0" * 64
    with pytest.raises(
        WeightsError, match=f"sha256 mismatch \\(pinned {wrong}, file has {sha256_of(path)}\\); refusing"
    ):
        build({"uri": uri, "sha256": wrong})


class TrainingConfig:  # what careless training scripts pickle next to the weights
    def __init__(self):
        self.lr = 1e-4


class Payload:  # what a malicious checkpoint pickles: a call made at load time
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


@pytest.mark.parametrize("kind", ["config", "payload"])
def test_pickled_objects_refused(tmp_path, originals, kind):
    _, sd = originals["realesr-animevideov3"]
    marker = tmp_path / "pwned"
    extra = TrainingConfig() if kind == "config" else Payload(marker)
    path = tmp_path / "bad.pth"
    torch.save({"params_ema": sd, "opt": extra}, path)
    with pytest.raises(WeightsError) as err:
        build({"uri": str(path)})
    message = str(err.value)
    assert message.startswith(f"{path}: cannot be loaded safely (weights_only=True): ")
    assert "holds a pickled Python object" in message and "never unpickles" in message
    assert ("TrainingConfig" if kind == "config" else "mkdir") in message
    assert "\n" not in message and "weights_only` set to `False`" not in message  # no advice to unpickle
    assert not marker.exists()


def test_partial_state_dict_lists_missing_and_unexpected_keys(tmp_path, originals):
    _, sd = originals["realesr-animevideov3"]
    partial = {k: v for k, v in sd.items() if k not in ("body.4.bias", "body.6.bias")}
    partial["head.weight"] = torch.zeros(3)
    path = tmp_path / "partial.safetensors"
    save_file(partial, str(path))
    with pytest.raises(WeightsError) as err:
        build({"uri": str(path)})
    message = str(err.value)
    assert "detected as RealESRGAN Compact" in message
    assert "missing keys (2): body.4.bias, body.6.bias" in message
    assert "unexpected keys (1): head.weight" in message


def test_many_missing_keys_are_cut_short(tmp_path, originals):
    _, sd = originals["realesrgan-x4plus-anime"]
    path = tmp_path / "partial.pth"
    torch.save({k: v for k, v in sd.items() if not k.startswith("body.2.")}, path)  # one of six RRDBs gone
    with pytest.raises(WeightsError, match=r"detected as ESRGAN.*missing keys \(30\): .*RDB1.*… \(20 more\)"):
        build({"uri": str(path)})


def test_shape_mismatch_reported(tmp_path, originals):
    _, sd = originals["realesr-animevideov3"]
    path = tmp_path / "odd.safetensors"
    save_file(sd | {"body.2.weight": torch.zeros(32, 64, 3, 3)}, str(path))
    with pytest.raises(
        WeightsError,
        match=r"shape mismatches \(1; checkpoint vs network\): body.2.weight \[32, 64, 3, 3\] vs \[64, 64, 3, 3\]",
    ):
        build({"uri": str(path)})


def test_unrelated_state_dict_not_detected(tmp_path):
    path = tmp_path / "classifier.pth"
    torch.save(
        {"model": {"fc1.weight": torch.zeros(8, 4), "fc1.bias": torch.zeros(8), "fc2.weight": torch.zeros(2, 8)}}, path
    )
    with pytest.raises(
        WeightsError,
        match=r"architecture not detected: spandrel .* \(3 tensors; keys: fc1.weight, fc1.bias, fc2.weight\)",
    ):
        build({"uri": str(path)})


def test_unreadable_files(tmp_path, originals):
    _, sd = originals["realesr-animevideov3"]
    path = tmp_path / "cut.safetensors"
    save_file(sd, str(path))
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(WeightsError, match=r"cut.safetensors: cannot be read as .safetensors"):
        build({"uri": str(path)})
    with pytest.raises(WeightsError, match="weights file not found"):
        build({"uri": str(tmp_path / "absent.pth")})
    tensorless = tmp_path / "meta.pth"
    torch.save({"epoch": 3, "params_ema": {}}, tensorless)
    with pytest.raises(WeightsError, match=r"no tensors found; top-level keys: epoch, params_ema"):
        build({"uri": str(tensorless)})


def test_params_validated():
    entry = default_registry().get("checkpoint")
    entry.validate_params({"uri": "s3://m/x.PTH", "sha256": "A" * 64})
    for bad, msg in (
        ({}, "Field required"),
        ({"uri": "s3://m/x.onnx"}, "must end in one of .safetensors, .pth, .pt, .ckpt"),
        ({"uri": "x.pth", "sha256": "abc"}, "should match pattern"),
        ({"uri": "x.pth", "strict": False}, "Extra inputs are not permitted"),
    ):
        with pytest.raises(ValidationError, match=msg):
            entry.validate_params(bad)


def test_fingerprint_follows_the_file_content(tmp_path, originals):
    """Unpinned: the fingerprint hashes the file's digest, so replacing the file redoes the outputs."""
    from pipeline.job import parse_job

    _, sd = originals["realesr-animevideov3"]
    path = tmp_path / "w.safetensors"
    save_file(sd, str(path))
    reg = default_registry()

    def job(params):
        steps = [{"model": "checkpoint", "params": params}]
        return parse_job(
            {"name": "t", "input": {"uri": str(tmp_path)}, "output": {"uri": str(tmp_path / "o")}, "steps": steps}, reg
        )

    first = job({"uri": str(path)}).fingerprint(reg)
    assert job({"uri": str(path)}).fingerprint(reg) == first
    save_file({k: v * 0.5 for k, v in sd.items()}, str(path))
    os.utime(path, ns=(1, 1))  # a different version even where mtime resolution is coarse
    assert weights_digest(CheckpointParams(uri=str(path))) == sha256_of(path)
    assert job({"uri": str(path)}).fingerprint(reg) != first
    pinned = job({"uri": str(path), "sha256": sha256_of(path)})
    assert pinned.fingerprint(reg) == pinned.fingerprint(reg) != first


def _job(input_uri: str, output_uri: str, model: str, params: dict):
    from pipeline.job import parse_job

    data = {
        "name": "ckpt",
        "input": {"uri": input_uri},
        "output": {"uri": output_uri, "format": "png"},
        "steps": [{"model": model, "params": params}],
        "resources": {"actors": 1, "batch_size": 2, "shard_size": 2},
    }
    return parse_job(data, default_registry())


def test_pipeline_run_records_the_checkpoint_digest(ray_local, s3_bucket, tmp_path, corpus, originals):
    """End to end: weights on S3 (unpinned), images on disk; the manifest records the file's digest
    and the fingerprint hashes it; an actor refuses to start when the file changed after planning."""
    import duckdb
    from PIL import Image

    from pipeline import api, execute

    _, sd = originals["realesr-animevideov3"]
    path = tmp_path / "animevideov3.safetensors"
    save_file(sd, str(path))
    uri = put_s3(s3_bucket, "models/animevideov3.safetensors", path)
    for name in ("jpeg/rgb.jpg", "png/la.png"):
        (tmp_path / "in" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / name).write_bytes(corpus[name][0])

    job = _job(str(tmp_path / "in"), str(tmp_path / "out"), "checkpoint", {"uri": uri})
    summary = api.run(job)
    assert summary.counts == {"ok": 2}
    rows = duckdb.sql(
        "SELECT input_uri, output_uri, weights_sha256, models, fingerprint FROM "
        f"'{tmp_path}/out/manifest/**/*.parquet' ORDER BY 1"
    ).fetchall()
    assert [(r[2], r[3], r[4]) for r in rows] == [
        ([sha256_of(path)], ["checkpoint"], job.fingerprint(default_registry()))
    ] * 2

    for _, output_uri, *_ in rows:
        assert Image.open(output_uri).size == (4 * 32, 4 * 24)
    # what ran, as spandrel detected it on the driver: the architecture and its scale
    details = duckdb.sql(f"SELECT DISTINCT model_details FROM '{tmp_path}/out/manifest/**/*.parquet'").fetchall()
    assert details == [(["RealESRGAN Compact×4"],)] or (len(details) == 1 and details[0][0][0].endswith("×4")), details

    # Planned with one file, executed with another: the actor refuses, nothing is attributed wrongly.
    ctx = execute.context_for(job, default_registry(), "planned-then-replaced")
    save_file({k: v * 0.5 for k, v in sd.items()}, str(path))
    put_s3(s3_bucket, "models/animevideov3.safetensors", path)
    with pytest.raises(Exception, match="weights changed since the run was planned"):
        execute.execute(ctx, default_registry(), [])
