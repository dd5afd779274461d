"""Inpainting masks from the job (input.mask pattern, a list file's mask_uri column) and
outscale: planning, validation, the inference chain, and whole runs on a local Ray."""

from __future__ import annotations

import io

import boto3
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from models import ImageModel, default_registry
from pipeline import api, planning, storage
from pipeline.inference import Chain
from pipeline.job import JobError, parse_job
from tests.pipeline.test_run import rows_of

HOLE = (255, 0, 255)  # what the damaged inputs hold in their holes


def job(input_uri: str, output_uri: str, steps: list[dict], mask: str | None = "{stem}_mask.png", **extra):
    spec = {"uri": input_uri} | ({"mask": mask} if mask else {})
    data = {
        "name": "m",
        "input": spec,
        "output": {"uri": output_uri, "format": "png"},
        "steps": steps,
        "resources": {"actors": 1, "batch_size": 2, "shard_size": 3, "tile": 32, "tile_pad": 8},
    } | extra
    return parse_job(data, default_registry())


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def damaged_pair(seed: int, h: int = 40, w: int = 56) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(damaged RGB image, mask file pixels: 255 = hole, holes bool)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    clean = np.stack([xx * 4, yy * 5, (xx + yy) * 2], axis=2).clip(0, 255).astype(np.uint8)
    clean = (clean.astype(int) + rng.integers(0, 8, clean.shape)).clip(0, 255).astype(np.uint8)
    holes = np.zeros((h, w), bool)
    holes[10:18, 12:30] = True
    holes[25:, 40:44] = True
    damaged = clean.copy()
    damaged[holes] = HOLE
    return damaged, (holes * 255).astype(np.uint8), holes


# ---- planning and validation -------------------------------------------------------------


def test_mask_files_are_not_inputs_and_each_image_gets_its_mask_uri(tmp_path):
    (tmp_path / "sub").mkdir()
    for rel in ("a.png", "a_mask.png", "b.jpg", "b_mask.png", "sub/c.png", "sub/c_mask.png", "orphan_mask.png"):
        (tmp_path / rel).write_bytes(b"x")
    summary = planning.PlanSummary()
    shards = list(planning.iter_shards(job(str(tmp_path), "/tmp/unused", [{"model": "darkroom-inpaint"}]), summary))
    rows = [r for s in shards for r in s.table.to_pylist()]
    assert [r["rel_path"] for r in rows] == ["a.png", "b.jpg", "sub/c.png"]
    assert [r["mask_uri"] for r in rows] == [
        str(tmp_path / "a_mask.png"),
        str(tmp_path / "b_mask.png"),
        str(tmp_path / "sub/c_mask.png"),
    ]
    assert summary.skipped_masks == 4 and summary.listed == 3


def test_a_mask_pattern_with_a_folder_and_name(tmp_path):
    (tmp_path / "masks").mkdir()
    for rel in ("a.jpg", "masks/a.jpg.png"):
        (tmp_path / rel).write_bytes(b"x")
    rows = [
        r
        for s in planning.iter_shards(
            job(str(tmp_path), "/tmp/o", [{"model": "darkroom-inpaint"}], mask="masks/{name}.png")
        )
        for r in s.table.to_pylist()
    ]
    assert [(r["rel_path"], r["mask_uri"]) for r in rows] == [("a.jpg", str(tmp_path / "masks/a.jpg.png"))]


def test_list_file_mask_uri_column_wins_and_the_pattern_fills_gaps(tmp_path):
    path = tmp_path / "list.parquet"
    pq.write_table(
        pa.table(
            {
                "uri": ["s3://b/x/1.png", "s3://b/x/2.png", "s3://b/x/2_mask.png"],
                "mask_uri": ["s3://m/1.png", None, None],
            }
        ),
        path,
    )
    rows = [
        r
        for s in planning.iter_shards(job(str(path), "/tmp/o", [{"model": "darkroom-inpaint"}]))
        for r in s.table.to_pylist()
    ]
    assert [(r["input_uri"], r["mask_uri"]) for r in rows] == [
        ("s3://b/x/1.png", "s3://m/1.png"),
        ("s3://b/x/2.png", "s3://b/x/2_mask.png"),
    ]
    rows = [
        r
        for s in planning.iter_shards(job(str(path), "/tmp/o", [{"model": "darkroom-inpaint"}], mask=None))
        for r in s.table.to_pylist()
    ]
    assert [r["mask_uri"] for r in rows] == ["s3://m/1.png", None, None]


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        ("mask.png", "needs {stem} or {name}"),
        ("{stem}.png", "would name the images themselves"),
        ("{base}_m.png", "unknown placeholder"),
        ("../{stem}.png", "relative to the image's folder"),
        ("s3://b/{stem}.png", "relative to the image's folder"),
    ],
)
def test_bad_mask_patterns_are_refused(mask, message):
    with pytest.raises(JobError, match="input.mask: .*" + message.replace("{", r"\{").replace("}", r"\}")):
        job("/in", "/out", [{"model": "darkroom-inpaint"}], mask=mask)


def test_a_mask_model_without_a_mask_source_is_refused():
    with pytest.raises(JobError, match=r"steps\.1\.model: darkroom-inpaint fills holes given a mask"):
        job("/in", "/out", [{"model": "identity"}, {"model": "darkroom-inpaint"}], mask=None)
    job("/in/list.csv", "/out", [{"model": "darkroom-inpaint"}], mask=None)  # the list file may carry mask_uri


def test_outscale_is_validated_and_fingerprinted():
    reg = default_registry()
    plain = job("/in", "/out", [{"model": "darkroom-sr-x4"}], mask=None)
    half = job("/in", "/out", [{"model": "darkroom-sr-x4", "outscale": 2}], mask=None)
    assert plain.fingerprint(reg) != half.fingerprint(reg)
    with pytest.raises(JobError, match=r"steps\.0\.outscale"):
        job("/in", "/out", [{"model": "darkroom-sr-x4", "outscale": 0}], mask=None)


# ---- the inference chain -----------------------------------------------------------------


def chain_of(name: str) -> Chain:
    return Chain([default_registry().build(name, {"scale": 2} if name == "bicubic" else {})], torch.device("cpu"), 1)


class SeesChannels(torch.nn.Module):
    """Fills holes with the mean of the mask channel it was given (so 1.0 proves it saw a mask);
    returns the image channels only."""

    def forward(self, x):
        image, known = x[:, :-1], x[:, -1:]
        return torch.where(known > 0, image, known.mean())


def test_only_mask_models_see_the_mask_and_tiles_slice_it():
    damaged, _, holes = damaged_pair(0)
    inpaint = ImageModel("probe", SeesChannels(), 1, 3, False, needs_mask=True)
    chain = Chain([default_registry().build("identity"), inpaint], torch.device("cpu"), 2, tile=16, tile_pad=4)
    [out] = chain([damaged], [~holes])
    assert out.error is None and np.array_equal(out.pixels[~holes], damaged[~holes])
    # Each tile's mask mean stands in for its holes: they differ per tile, so the mask was sliced.
    assert len(np.unique(out.pixels[holes])) > 1
    [no_mask] = chain([damaged])
    assert "needs a mask" in no_mask.error


def test_masks_follow_an_earlier_resize():
    damaged, _, holes = damaged_pair(1)
    inpaint = ImageModel("probe", SeesChannels(), 1, 3, False, needs_mask=True)
    [out] = Chain([default_registry().build("bicubic", {"scale": 2}), inpaint], torch.device("cpu"), 1)(
        [damaged], [~holes]
    )
    assert out.pixels.shape == (80, 112, 3)
    big_holes = np.kron(holes, np.ones((2, 2), bool))  # the mask, resized like the image
    assert (out.pixels[big_holes] == round(255 * (~holes).mean())).all()


def test_darkroom_inpaint_in_a_tiled_chain_keeps_known_pixels_exactly():
    damaged, _, holes = damaged_pair(2)
    chain = Chain([default_registry().build("darkroom-inpaint")], torch.device("cpu"), 2, tile=24, tile_pad=8)
    [out] = chain([damaged], [~holes])
    assert out.error is None
    assert np.array_equal(out.pixels[~holes], damaged[~holes])
    assert not (out.pixels[holes] == HOLE).all(axis=1).any()  # every hole pixel was filled


def test_colorize_turns_a_gray_image_into_colour():
    gray = np.repeat(np.linspace(0, 255, 48, dtype=np.uint8)[None, :, None], 32, axis=0)
    [out] = Chain([default_registry().build("darkroom-colorize")], torch.device("cpu"), 1)([gray])
    assert out.pixels.shape == (32, 48, 3) and out.pixels.dtype == np.uint8
    assert np.abs(out.pixels.astype(int) - out.pixels[..., [1, 2, 0]]).max() > 10  # the channels differ: colour
    [kept] = chain_of("bicubic")([gray])  # every other model gives a gray image back as gray
    assert kept.pixels.shape == (64, 96, 1)


@pytest.mark.parametrize(("outscale", "size"), [(2, (20, 28)), (1.5, (15, 21)), (0.5, (5, 7))])
def test_outscale_resizes_after_the_model(outscale, size):
    img = np.random.default_rng(0).integers(0, 256, (10, 14, 3), dtype=np.uint8)
    model = default_registry().build("darkroom-sr-x4")
    [out] = Chain([model], torch.device("cpu"), 1, outscale=[outscale])([img])
    assert out.pixels.shape == (*size, 3)


# ---- whole runs on a local Ray -------------------------------------------------------------


def test_masked_job_end_to_end(ray_local, tmp_path):
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    pairs = {name: damaged_pair(i) for i, name in enumerate(("a", "sub/b", "c", "d"))}
    for name, (damaged, mask_px, _) in pairs.items():
        (root / f"{name}.png").write_bytes(png(damaged))
        if name == "c":
            continue  # c has no mask: one error row
        if name == "d":
            mask_px = mask_px[:20]  # d's mask has the wrong size: one error row
        (root / f"{name}_mask.png").write_bytes(
            png(np.repeat(mask_px[..., None], 3, axis=2) if name == "a" else mask_px)
        )
    out = tmp_path / "out"
    summary = api.run(job(str(root), str(out), [{"model": "darkroom-inpaint"}]))
    assert summary.counts == {"ok": 2, "error": 2}
    con = rows_of(str(out))
    rows = {
        uri.rsplit("/in/", 1)[1]: rest
        for uri, *rest in con.execute(
            "SELECT input_uri, status, stage, error_type, mask_uri, output_uri FROM m"
        ).fetchall()
    }
    assert sorted(rows) == ["a.png", "c.png", "d.png", "sub/b.png"]  # no *_mask.png among the inputs
    assert rows["c.png"][:3] == ["error", "mask", "mask_not_found"]
    assert rows["d.png"][:3] == ["error", "mask", "mask_size_mismatch"]
    for name in ("a", "sub/b"):
        status, _, _, mask_uri, output_uri = rows[f"{name}.png"]
        assert status == "ok" and mask_uri == str(root / f"{name}_mask.png")
        damaged, _, holes = pairs[name]
        filled = np.asarray(Image.open(output_uri))
        assert np.array_equal(filled[~holes], damaged[~holes])
        assert not (filled[holes] == HOLE).all(axis=1).any()


def test_list_file_with_mask_uri_column_on_s3_and_outscale(ray_local, s3_bucket):
    s3 = boto3.client("s3")
    damaged, mask_px, holes = damaged_pair(5)
    s3.put_object(Bucket=s3_bucket, Key="scans/x.png", Body=png(damaged))
    s3.put_object(Bucket=s3_bucket, Key="holes/x-holes.png", Body=png(mask_px))
    s3.put_object(
        Bucket=s3_bucket,
        Key="list.csv",
        Body=f"uri,mask_uri\ns3://{s3_bucket}/scans/x.png,s3://{s3_bucket}/holes/x-holes.png\n".encode(),
    )
    output = f"s3://{s3_bucket}/out"
    steps = [{"model": "darkroom-inpaint"}, {"model": "darkroom-sr-x4", "outscale": 1.5}]
    resources = {"actors": 1, "cpus_per_actor": 0.5, "cpus_per_task": 0.5, "shard_size": 3, "tile": 32, "tile_pad": 8}
    summary = api.run(job(f"s3://{s3_bucket}/list.csv", output, steps, mask=None, resources=resources))
    assert summary.counts == {"ok": 1}
    [(mask_uri, w_in, h_in, w_out, h_out, output_uri)] = (
        rows_of(output)
        .execute("SELECT mask_uri, width_in, height_in, width_out, height_out, output_uri FROM m")
        .fetchall()
    )
    assert mask_uri == f"s3://{s3_bucket}/holes/x-holes.png"
    assert (w_out, h_out) == (round(w_in * 1.5), round(h_in * 1.5)) == (84, 60)
    im = Image.open(io.BytesIO(storage.read_bytes(output_uri)))
    assert im.size == (84, 60)
