"""Hostile input: malformed files never crash a job, hostile keys never escape the output prefix,
credentials never reach the manifest."""

from __future__ import annotations

import io
import struct
import zlib

import boto3
import duckdb
import numpy as np
import pytest
from PIL import Image

from models import default_registry
from pipeline import api, manifest, storage
from pipeline.job import parse_job


def _save(im, fmt, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IEND", b"")
    )


def malformed_corpus() -> dict[str, bytes]:
    """≥ 50 broken or suspicious files, seeded."""
    rng = np.random.default_rng(7)
    photo = Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
    sources = {
        "jpg": _save(photo, "JPEG", quality=85),
        "png": _save(photo, "PNG"),
        "webp": _save(photo, "WEBP"),
        "tif": _save(photo, "TIFF"),
    }
    files: dict[str, bytes] = {}
    for ext, data in sources.items():
        for cut in np.linspace(1, len(data) - 1, 9).astype(int):  # truncations at many offsets
            files[f"truncated/{ext}-{cut:06d}.{ext}"] = data[:cut]
        for k in range(4):  # bit flips in the body
            flipped = bytearray(data)
            for pos in rng.integers(16, len(data), 8):
                flipped[pos] ^= 1 << int(rng.integers(0, 8))
            files[f"bitflip/{ext}-{k}.{ext}"] = bytes(flipped)
    files["wrong-ext/png-named.jpg"] = sources["png"]
    files["wrong-ext/jpeg-named.webp"] = sources["jpg"]
    files["wrong-header/jpeg-magic-then-junk.jpg"] = b"\xff\xd8\xff\xe0" + rng.bytes(500)
    files["wrong-header/png-magic-then-junk.png"] = b"\x89PNG\r\n\x1a\n" + rng.bytes(500)
    files["bomb/claims-100k-square.png"] = _png_claiming(100_000, 100_000)
    files["bomb/claims-zero-width.png"] = _png_claiming(0, 10)
    files["bomb/real-4mpx-of-zeros.png"] = _save(Image.new("L", (2000, 2000)), "PNG")
    files["empty/zero.png"] = b""
    files["empty/one-byte.jpg"] = b"\xff"
    files["random/noise.png"] = rng.bytes(2048)
    files["random/html.jpg"] = b"<html><body>404 Not Found</body></html>"
    return files


def job(input_uri: str, output_uri: str, **storage):
    return parse_job(
        {
            "name": "hostile",
            "input": {"uri": input_uri, **storage},
            "output": {"uri": output_uri},
            "steps": [{"model": "bicubic", "params": {"scale": 2}}],
            "resources": {"shard_size": 16, "batch_size": 4},
            "limits": {"max_pixels": 1_000_000, "max_bytes": 1_000_000},
        },
        default_registry(),
    )


@pytest.mark.timeout(240)
def test_malformed_corpus_one_row_each_no_crash(ray_local, tmp_path):
    files = malformed_corpus()
    assert len(files) >= 50
    root = tmp_path / "in"
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    out = tmp_path / "out"
    summary = api.run(job(str(root), str(out)))
    con = duckdb.connect()
    con.execute(f"CREATE VIEW m AS SELECT * FROM read_parquet('{out}/manifest/**/*.parquet')")
    assert con.execute("SELECT count(*), count(DISTINCT input_uri) FROM m").fetchone() == (len(files), len(files))
    errors = dict(
        con.execute(
            "SELECT regexp_extract(input_uri, '/in/(.*)$', 1), error_type FROM m WHERE status = 'error'"
        ).fetchall()
    )
    for name in (
        "empty/zero.png",
        "empty/one-byte.jpg",
        "random/noise.png",
        "random/html.jpg",
        "bomb/claims-100k-square.png",
        "bomb/claims-zero-width.png",
        "bomb/real-4mpx-of-zeros.png",
        "wrong-header/png-magic-then-junk.png",
    ):
        assert name in errors, name
    assert errors["bomb/claims-100k-square.png"] == "too_many_pixels"
    assert all(
        errors[n] == "corrupt" or errors[n] in ("not_an_image", "empty_file")
        for n in errors
        if n.startswith("truncated/")
    )
    # Files that are fine whatever their name decode under the mode policy.
    assert "wrong-ext/png-named.jpg" not in errors and "wrong-ext/jpeg-named.webp" not in errors
    assert summary.counts["error"] == len(errors)
    written = [p for p in out.rglob("*") if p.is_file()]
    assert all(str(p).startswith(str(out)) for p in written)


# (moto's server cannot store keys with a newline, so control characters are covered by a tab;
# names.output_name's own tests, tests/pipeline/test_names.py, cover the rest.)
HOSTILE_KEYS = [
    "../../escape.png",
    "a/../../../etc/passwd.png",
    "/leading-slash.png",
    "dir/./dot.png",
    "tab\there.png",
    "unicode/фото/日本語.png",
    "percent%2F..%2Fx.png",
    "question?mark.png",
    "hash#tag.png",
    "long/" + "x" * 900 + ".png",
]


@pytest.mark.timeout(240)
def test_hostile_keys_stay_under_the_output_prefix(ray_local, s3_bucket):
    s3 = boto3.client("s3")
    png = _save(Image.new("RGB", (4, 3), (10, 20, 30)), "PNG")
    for key in HOSTILE_KEYS:
        s3.put_object(Bucket=s3_bucket, Key=f"in/{key}", Body=png)
    out = f"s3://{s3_bucket}/out"
    summary = api.run(job(f"s3://{s3_bucket}/in/", out))
    assert summary.counts == {"ok": len(HOSTILE_KEYS)}
    table = manifest.read(out)
    assert table.num_rows == len(set(table.column("input_uri").to_pylist())) == len(HOSTILE_KEYS)
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket)
        for o in page.get("Contents", [])
    ]
    written = [k for k in keys if not k.startswith("in/")]
    assert written and all(k.startswith("out/") for k in written)
    images = [k for k in written if k.startswith("out/images/")]
    assert len(images) == len(HOSTILE_KEYS)
    assert not any("/../" in k or "\n" in k or "\t" in k for k in images)
    for uri in table.column("output_uri").to_pylist():
        assert uri.startswith(f"{out}/images/")
        assert Image.open(io.BytesIO(storage.read_bytes(uri))).size == (8, 6)


def test_signed_url_query_strings_never_reach_the_manifest(ray_local, tmp_path):
    # A list file of signed URLs whose server is unreachable: every row is an error, and no
    # signature or password appears anywhere in the manifest.
    listing = tmp_path / "signed.csv"
    uris = [
        f"https://user:hunter2@127.0.0.1:9/photos/{i}.jpg?X-Amz-Signature=SECRET{i}&X-Amz-Credential=AKIAEXAMPLE"
        for i in range(3)
    ]
    listing.write_text("uri,size\n" + "".join(f"{u},10\n" for u in uris))
    out = tmp_path / "out"
    summary = api.run(job(str(listing), str(out)))
    assert summary.counts == {"error": 3}
    blob = b"".join(p.read_bytes() for p in (out / "manifest").rglob("*.parquet"))
    text = str(manifest.read(str(out)).to_pylist())
    for secret in ("SECRET", "AKIAEXAMPLE", "hunter2", "X-Amz-Signature"):
        assert secret not in text and secret.encode() not in blob
    assert {r["input_uri"] for r in manifest.read(str(out)).to_pylist()} == {
        f"https://127.0.0.1:9/photos/{i}.jpg" for i in range(3)
    }
