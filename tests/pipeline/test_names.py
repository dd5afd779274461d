"""Output names: distinct inputs never share an output, locally and on S3; ordinary names stay as they are."""

from __future__ import annotations

import io
import os
import unicodedata
from pathlib import Path

import boto3
import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from models import default_registry
from pipeline import api, names, storage
from pipeline.images import FORMAT_EXTENSIONS
from pipeline.job import parse_job

FORMATS = list(FORMAT_EXTENSIONS)
NFC, NFD = unicodedata.normalize("NFC", "café.png"), unicodedata.normalize("NFD", "café.png")
LONG = ("L" * 200 + "/") * 4  # 804 bytes shared, then they differ (segments fit a local file system)
# Pairs of distinct relative keys that shared one output before names were made injective.
PAIRS = [
    ("x.jpg", "x.jpg.png"),
    ("./c.png", "c.png"),
    ("../x.png", "__/x.png"),
    ("a//b.png", "a/b.png"),
    ("bs\\q.png", "bs_q.png"),
    ("ctl\x01.png", "ctl_.png"),
    ("tab\t.png", "tab_.png"),
    (NFC, NFD),
    (LONG + "A" * 187 + ".png", LONG + "B" * 187 + ".png"),  # 995 bytes each
]


def hashed(name: str, key: str, ext: str) -> str:
    return f"{name}~{names.key_hash(key)}{ext}"


@pytest.mark.parametrize(
    ("key", "name"),
    [
        ("a/b.jpg", "a/b.jpg"),
        ("photos/2024/img_001.jpg", "photos/2024/img_001.jpg"),
        ("unicode/фото/日本語.png", "unicode/фото/日本語.png"),
        ("../../etc/passwd.jpg", hashed("__/__/etc/passwd", "../../etc/passwd.jpg", ".jpg")),
        ("/abs//x/./y.png", hashed("abs/x/y", "/abs//x/./y.png", ".png")),
        ("ctl\x00\x1b[31m.png", hashed("ctl__[31m", "ctl\x00\x1b[31m.png", ".png")),
        ("back\\slash.png", hashed("back_slash", "back\\slash.png", ".png")),
        ("x.jpg.png", hashed("x.jpg", "x.jpg.png", ".png")),
        ("n~0123456789abcdef.png", hashed("n~0123456789abcdef", "n~0123456789abcdef.png", ".png")),
        ("noext", hashed("noext", "noext", "")),
        ("", hashed("_", "", "")),
    ],
)
def test_output_name(key, name):
    assert names.output_name(key) == name
    assert names.output_names(pa.array([key])).to_pylist() == [name]


def test_ordinary_names_keep_todays_outputs():
    name = names.output_name("photos/2024/img_001.jpg")
    assert names.output_rel_path(name, "png") == "photos/2024/img_001.jpg.png"
    assert names.output_rel_path(names.output_name("a/b.png"), "png") == "a/b.png"


def test_long_names_are_cut_keeping_the_extension():
    out = names.output_name("d/" + "é" * 300 + ".png")
    assert out.endswith(".png") and len(out.split("/")[1].encode()) <= 200


def test_output_rel_path_never_collides_on_extension():
    assert names.output_rel_path("a.png", "png") == "a.png"
    assert names.output_rel_path("a.JPG", "jpeg") == "a.JPG"
    assert names.output_rel_path("a.jpg", "png") == "a.jpg.png"
    assert names.output_rel_path("a.webp", "png") != names.output_rel_path("a.png", "png")


@pytest.mark.parametrize(("a", "b"), [*PAIRS, ("s" * 300 + "1.png", "s" * 300 + "2.png")])
def test_pairs_that_used_to_collide_get_distinct_outputs(a, b):
    for fa in FORMATS:
        for fb in FORMATS:
            assert names.output_rel_path(names.output_name(a), fa) != names.output_rel_path(names.output_name(b), fb)


KEY_CHARS = st.sampled_from(["a", "b", "é", "e\u0301", "/", "/", ".", "..", "_", "\\", "\x00", "\t", "\x85", "~"])
HEX = st.text("0123456789abcdefABCDEF", min_size=16, max_size=16)
EXT = st.sampled_from(["", ".png", ".jpg", ".JPG", ".jpeg", ".tif", ".tiff", ".webp", ".bmp", ".txt", ".jpg.png"])


@st.composite
def keys(draw) -> str:
    """Relative keys: hostile characters, slashes and dots, marks, long runs, image extensions."""
    parts = draw(
        st.lists(
            st.one_of(
                KEY_CHARS,
                st.text(max_size=4),
                HEX.map(lambda h: "~" + h),
                st.integers(50, 700).map(lambda n: "x" * n),
            ),
            max_size=8,
        )
    )
    return "".join(parts) + draw(EXT)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(keys(), st.sampled_from(FORMATS)), unique_by=lambda kf: kf[0], max_size=12))
def test_the_map_is_injective_deterministic_and_safe(items):
    outputs = [names.output_rel_path(names.output_name(k), f) for k, f in items]
    assert len(set(outputs)) == len(outputs)
    assert outputs == [names.output_rel_path(names.output_name(k), f) for k, f in items]
    vectorized = names.output_names(pa.array([k for k, _ in items], pa.string())).to_pylist()
    assert vectorized == [names.output_name(k) for k, _ in items]
    for out in outputs:
        segments = out.split("/")
        assert all(s not in ("", ".", "..") for s in segments), out
        assert all(len(s.encode()) <= 255 for s in segments) and len(out.encode()) <= 1000
        assert not any(c in out for c in "\\\x00\t\n")


@settings(max_examples=200, deadline=None)
@given(keys(), keys(), st.sampled_from(FORMATS), st.sampled_from(FORMATS))
def test_two_keys_never_share_an_output_whatever_the_formats(a, b, fa, fb):
    if a != b:
        assert names.output_rel_path(names.output_name(a), fa) != names.output_rel_path(names.output_name(b), fb)


# End to end: every pair, distinct pixels per input, through real runs.


def _job(input_uri: str, output_uri: str):
    return parse_job(
        {
            "name": "names",
            "input": {"uri": input_uri},
            "output": {"uri": output_uri, "format": "png"},
            "steps": [{"model": "identity"}],
            "resources": {"actors": 1, "batch_size": 4, "shard_size": 8},
        },
        default_registry(),
    )


def _image(i: int, key: str) -> bytes:
    """A solid colour and size of its own per input (index ``i``), encoded as ``key``'s extension says."""
    colour = ((i * 73) % 256, (i * 151 + 60) % 256, (i * 37 + 120) % 256)
    buf = io.BytesIO()
    Image.new("RGB", (8 + i, 5 + 2 * i), colour).save(buf, "JPEG" if key.endswith(".jpg") else "PNG", quality=95)
    return buf.getvalue()


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.int16)


def _check(output_uri: str, read_input, written: list[str]) -> None:
    """One distinct output per ok row, as many files under images/, each holding its own input's pixels."""
    con = duckdb.connect()
    if output_uri.startswith("s3://"):
        con.register_filesystem(storage.filesystem(output_uri)[0])
    con.execute(f"CREATE VIEW m AS SELECT * FROM read_parquet('{output_uri}/manifest/**/*.parquet')")
    rows = con.execute("SELECT input_uri, output_uri, status FROM m").fetchall()
    assert {status for _, _, status in rows} == {"ok"}
    assert con.execute("SELECT count(DISTINCT output_uri), count(*) FROM m").fetchone() == (len(rows), len(rows))
    assert len(written) == len(rows)
    for input_uri, out_uri, _ in rows:
        want, got = _pixels(read_input(input_uri)), _pixels(storage.read_bytes(out_uri))
        assert got.shape == want.shape, (input_uri, out_uri)
        assert np.abs(got - want).max() <= 3, (input_uri, out_uri)


@pytest.mark.timeout(240)
def test_local_inputs_that_used_to_collide_keep_their_own_outputs(ray_local, tmp_path):
    # A list file names the same directory in every spelling (./, //, ..) a directory listing
    # cannot: some pairs are two spellings of one file, the others two files.
    root = tmp_path / "in"
    uris = [f"{root}/{'sub/' + k if k.startswith(('../', '__/')) else k}" for pair in PAIRS for k in pair]
    for i, uri in enumerate(uris):
        path = Path(os.path.normpath(uri))
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(_image(i, uri))
    pq.write_table(pa.table({"uri": uris}), tmp_path / "list.parquet")
    out = tmp_path / "out"
    summary = api.run(_job(str(tmp_path / "list.parquet"), str(out)))
    assert summary.counts == {"ok": len(uris)}
    written = [str(p) for p in (out / "images").rglob("*") if p.is_file()]
    _check(str(out), lambda uri: Path(uri).read_bytes(), written)
    assert (out / "images" / str(root).lstrip("/") / "x.jpg.png").exists()  # ordinary names as before


@pytest.mark.timeout(240)
def test_s3_keys_that_used_to_collide_keep_their_own_outputs(ray_local, s3_bucket):
    s3 = boto3.client("s3")
    keys = [k for pair in PAIRS for k in pair if "\x01" not in k]  # moto cannot list most control characters (XML)
    for i, key in enumerate(keys):
        s3.put_object(Bucket=s3_bucket, Key=f"in/{key}", Body=_image(i, key))
    out = f"s3://{s3_bucket}/out"
    summary = api.run(_job(f"s3://{s3_bucket}/in/", out))
    assert summary.counts == {"ok": len(keys)}
    listed = s3.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket, Prefix="out/images/")
    written = [o["Key"] for page in listed for o in page.get("Contents", [])]
    _check(out, storage.read_bytes, written)
    assert "out/images/x.jpg.png" in written and "out/images/a/b.png" in written  # ordinary names as before
