"""Captioning jobs end to end: a tiny random VisionEncoderDecoder folder on moto S3, real local Ray, real PNGs.

The captions a run records are checked against transformers itself: the same folder loaded by
its own classes, generating for the pixels of the file the step saw."""

from __future__ import annotations

import json
from pathlib import Path

import fsspec
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from models import default_registry
from models.training import digits
from pipeline import api, manifest, report
from pipeline.cli import main
from pipeline.job import JobError, parse_job
from tests.tiny_models import save_tiny_captioner

MAX_NEW_TOKENS = 6


@pytest.fixture(scope="module")
def captioner_folder(tmp_path_factory) -> Path:
    return save_tiny_captioner(tmp_path_factory.mktemp("captioner") / "tiny-captioner")


@pytest.fixture
def captioner_uri(s3_bucket, captioner_folder) -> str:
    fsspec.filesystem("s3").put(str(captioner_folder), f"{s3_bucket}/captioner", recursive=True)
    return f"s3://{s3_bucket}/captioner"


def transformers_caption(folder: Path, image: Image.Image) -> str:
    """What transformers' own classes say of ``image`` (greedy, MAX_NEW_TOKENS), without darkroom."""
    import torch
    from transformers import AutoTokenizer, VisionEncoderDecoderModel, ViTImageProcessor

    model = VisionEncoderDecoderModel.from_pretrained(folder).eval()
    pixels = ViTImageProcessor.from_pretrained(folder)(images=[np.asarray(image.convert("RGB"))], return_tensors="pt")
    with torch.no_grad():
        ids = model.generate(pixel_values=pixels.pixel_values, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
    return AutoTokenizer.from_pretrained(folder).batch_decode(ids, skip_special_tokens=True)[0].strip()


def make_inputs(folder: Path) -> dict[str, Path]:
    """Five distinct photos-like PNGs (one gray) and one broken file."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(5)
    files = {}
    for i in range(5):
        yy, xx = np.mgrid[:24, :30]
        pixels = np.stack([xx * (40 + 30 * i) % 256, yy * (25 + 50 * i) % 256, (xx + yy) * 9 * i % 256], axis=-1)
        pixels = np.clip(pixels + rng.normal(0, 20, pixels.shape), 0, 255).astype(np.uint8)
        im = Image.fromarray(pixels).convert("L") if i == 4 else Image.fromarray(pixels)
        files[f"p{i}.png"] = folder / f"p{i}.png"
        im.save(files[f"p{i}.png"])
    files["broken.png"] = folder / "broken.png"
    files["broken.png"].write_bytes(b"\x89PNG\r\n\x1a\n not a png at all")
    return files


def caption_job(inputs: Path, output: Path, steps: list[dict], caption_file: str = "none") -> dict:
    return {
        "name": "captions",
        "input": {"uri": str(inputs)},
        "output": {"uri": str(output), "caption_file": caption_file},
        "steps": steps,
        "resources": {"actors": 1, "cpus_per_actor": 0.5, "batch_size": 3, "shard_size": 4},
    }


def caption_step(uri: str) -> dict:
    return {"model": "image-to-text", "params": {"uri": uri, "max_new_tokens": MAX_NEW_TOKENS}}


@pytest.mark.timeout(600)
def test_a_caption_only_job_records_each_caption_and_writes_no_image(
    ray_local, captioner_uri, captioner_folder, tmp_path
):
    files = make_inputs(tmp_path / "in")
    out = tmp_path / "out"
    job = parse_job(caption_job(tmp_path / "in", out, [caption_step(captioner_uri)], "json"), default_registry())
    summary = api.run(job)
    assert summary.counts == {"ok": 5, "error": 1}
    rows = {Path(r["input_uri"]).name: r for r in manifest.read(str(out)).to_pylist()}
    assert rows["broken.png"]["status"] == "error" and rows["broken.png"]["caption"] is None
    assert not list(out.glob("images/*.png")), "a caption-only job writes no image"
    captions = set()
    for name in (f"p{i}.png" for i in range(5)):
        row = rows[name]
        want = transformers_caption(captioner_folder, Image.open(files[name]))
        assert row["status"] == "ok" and row["caption"] == want and want, (name, row["caption"], want)
        assert row["models"] == ["image-to-text"] and len(row["weights_sha256"][0]) == 64
        sidecar = json.loads(Path(row["output_uri"]).read_text())
        assert row["output_uri"] == str(out / "images" / f"{name}.json")
        assert sidecar["caption"] == want and sidecar["input_uri"] == row["input_uri"]
        captions.add(want)
    assert len(captions) >= 3  # the images get different captions: a mix-up would show
    page = report.render(str(out))
    assert all(f"“{c}”" in page for c in captions) and "no image (captions only)" in page

    again = api.run(job)  # only the error row is tried again; the captioned inputs are done
    assert again.counts == {"error": 1}


@pytest.mark.timeout(600)
def test_restore_then_caption_writes_images_and_text_files_of_the_restored_image(
    ray_local, captioner_uri, captioner_folder, tmp_path
):
    make_inputs(tmp_path / "in")
    (tmp_path / "in" / "broken.png").unlink()
    out = tmp_path / "out"
    steps = [{"model": "bicubic", "params": {"scale": 2}}, caption_step(captioner_uri)]
    summary = api.run(parse_job(caption_job(tmp_path / "in", out, steps, "txt"), default_registry()))
    assert summary.counts == {"ok": 5}
    for row in manifest.read(str(out)).to_pylist():
        name = Path(row["input_uri"]).name
        restored = Image.open(row["output_uri"])
        assert restored.size == (60, 48)
        # The caption is of the restored (×2) image: the PNG holds exactly the pixels the step saw.
        assert row["caption"] == transformers_caption(captioner_folder, restored)
        assert (out / "images" / f"{name}.txt").read_text() == row["caption"] + "\n"


def test_two_captioning_steps_are_refused_naming_the_second(tmp_path):
    step = caption_step("s3://bucket/captioner")
    with pytest.raises(JobError, match=r"steps\.1\.model.*at most one captioning step"):
        parse_job(caption_job(tmp_path, tmp_path / "out", [step, step]), default_registry())


@pytest.mark.timeout(600)
def test_the_shipped_digits_captioner_from_a_job_file(ray_local, tmp_path):
    _, held = digits.load(32)
    (tmp_path / "in").mkdir()
    truth = {}
    for i, colour in enumerate(["red", "green", "blue", "white"]):
        painted = digits.paint(held.images[i : i + 1], [colour])[0].permute(1, 2, 0).numpy()
        Image.fromarray((painted * 255).round().astype(np.uint8)).save(tmp_path / "in" / f"d{i}.png")
        truth[f"d{i}.png"] = digits.caption(int(held.labels[i]), colour)
    job = tmp_path / "job.yaml"
    job.write_text(
        f"name: digits\ninput: {{uri: {tmp_path / 'in'}}}\noutput: {{uri: {tmp_path / 'out'}, caption_file: txt}}\n"
        "steps:\n  - {model: darkroom-caption-digits}\nresources: {actors: 1}\n"
    )
    result = CliRunner().invoke(main, ["run", str(job), "--log-format", "plain"])
    assert result.exit_code == 0, result.output
    said = {p.name.removesuffix(".txt"): p.read_text().strip() for p in (tmp_path / "out" / "images").glob("*.txt")}
    assert said == truth
