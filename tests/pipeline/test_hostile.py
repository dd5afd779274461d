"""Hostile input: malformed files never crash a job, hostile keys never escape the output prefix,
credentials never reach the manifest."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import struct
import zlib
from pathlib import Path

import boto3
import duckdb
import numpy as np
import pytest
from PIL import Image

from models import default_registry
from pipeline import api, manifest, storage
from pipeline.job import parse_job
from pipeline.planning import ListFileError


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
            # an unreachable server (connection refused) is retried for 1 s, not the default minute
            "limits": {"max_pixels": 1_000_000, "max_bytes": 1_000_000, "transient_retry_seconds": 1},
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
    before = snapshot(tmp_path)  # the input folder: it must come out unchanged
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
    assert written_outside(tmp_path, out, before) == {}


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (followed to any depth, links not followed) → sha256 of its bytes."""
    found = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder, name)
            found[str(path)] = "link" if path.is_symlink() else hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def written_outside(root: Path, out: Path, before: dict[str, str]) -> dict[str, str]:
    """Files under ``root`` but not under ``out`` that are new or changed since ``before`` (and
    files of ``before`` that are gone): empty when a run wrote only under its output prefix."""
    after = {p: h for p, h in snapshot(root).items() if not Path(p).is_relative_to(out)}
    return {p: h for p, h in after.items() if before.get(p) != h} | {p: "gone" for p in before if p not in after}


@pytest.mark.timeout(240)
def test_dot_dot_in_list_file_uris_stays_under_the_output_prefix(ray_local, tmp_path):
    # Each URI climbs far above the filesystem root before naming a real input: joined to the
    # output prefix as written, the relative path would land in the input folder.
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    png = _save(Image.new("RGB", (4, 3), (10, 20, 30)), "PNG")
    for name in ("a.png", "b.png"):
        (root / name).write_bytes(png)
    climb = "/".join([".."] * 64)
    listing = tmp_path / "list.csv"
    listing.write_text(
        "uri\n" + "".join(f"{root}/sub/{climb}{root}/{n}\n" for n in ("a.png", "b.png")) + f"{root}/./sub/../a.png\n"
    )
    out = tmp_path / "out"
    before = snapshot(tmp_path)
    summary = api.run(job(str(listing), str(out)))
    assert summary.counts == {"ok": 3}
    assert written_outside(tmp_path, out, before) == {}
    assert len(list((out / "images").rglob("*.png"))) == 3


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


def test_signed_urls_in_a_list_file_refused_before_anything_secret_is_stored(ray_local, tmp_path):
    # A list file of signed URLs (and a password): they would be stored in the run's plan, and a
    # signed URL expires before a resume, so planning refuses them naming the row; no signature
    # or password appears in any file under the output prefix, or in the error.
    listing = tmp_path / "signed.csv"
    uris = [
        f"https://user:hunter2@127.0.0.1:9/photos/{i}.jpg?X-Amz-Signature=SECRET{i}&X-Amz-Credential=AKIAEXAMPLE"
        for i in range(3)
    ]
    listing.write_text("uri,size\n" + "".join(f"{u},10\n" for u in uris))
    out = tmp_path / "out"
    with pytest.raises(ListFileError, match=r"signed\.csv row 1: `uri` holds credentials") as refused:
        api.run(job(str(listing), str(out)))
    blob = b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file())
    for secret in ("SECRET", "AKIAEXAMPLE", "hunter2", "X-Amz-Signature"):
        assert secret not in str(refused.value) and secret.encode() not in blob


# Each secret is planted once below; none may appear in any byte under the output prefix, in the
# report, in the CLI's output or in the logs.
SECRETS = {
    "client_kwargs": "SECRET-client-kwargs-aws-secret",
    "secret_access_key": "SECRET-secret-access-key",
    "account_key": "SECRET-azure-account-key",
    "sas_token": "SECRET-azure-sas-token",
    "connection_string": "SECRET-azure-connection-string",
    "token": "SECRET-gcs-token",
    "password": "SECRET-password",
    "key": "SECRET-s3fs-key",
    "secret": "SECRET-s3fs-secret",
    "SSECustomerKey": "SECRET-sse-customer-key",
    "signature": "SECRET-x-amz-signature",
    "security_token": "SECRET-x-amz-security-token",
    "userinfo": "SECRET-userinfo-password",
}
_HOSTILE_JOB = """\
name: secrets
input:
  uri: {input}
  storage_options: {input_options}
output:
  uri: {output}
  storage_options: {output_options}
steps: [{{model: bicubic, params: {{scale: 2}}}}]
resources: {{shard_size: 2}}
"""
# (input storage_options, output storage_options, the paths named)
_OPTION_CASES = [
    (
        f"{{client_kwargs: {{region_name: us-east-1, aws_secret_access_key: {SECRETS['client_kwargs']}}}}}",
        "{}",
        ["input.storage_options.client_kwargs.aws_secret_access_key"],
    ),
    (
        "{}",
        f"{{config: {{nested: [{{secret_access_key: {SECRETS['secret_access_key']}}}]}}}}",
        ["output.storage_options.config.nested.0.secret_access_key"],
    ),
    (
        f"{{account_name: a, account_key: {SECRETS['account_key']}, sas_token: {SECRETS['sas_token']}}}",
        f"{{connection_string: {SECRETS['connection_string']}}}",
        [
            "input.storage_options.account_key",
            "input.storage_options.sas_token",
            "output.storage_options.connection_string",
        ],
    ),
    (
        f"{{token: {SECRETS['token']}, password: {SECRETS['password']}}}",
        f"{{key: {SECRETS['key']}, secret: {SECRETS['secret']}, "
        f"s3_additional_kwargs: {{SSECustomerKey: {SECRETS['SSECustomerKey']}}}}}",
        [
            "input.storage_options.token",
            "input.storage_options.password",
            "output.storage_options.key",
            "output.storage_options.secret",
            "output.storage_options.s3_additional_kwargs.SSECustomerKey",
        ],
    ),
]


def _no_secret_in(blob: bytes | str, where: str) -> None:
    data = blob.encode() if isinstance(blob, str) else blob
    for name, secret in SECRETS.items():
        assert secret.encode() not in data, f"{name} found in {where}"


@pytest.mark.timeout(300)
def test_credentials_never_stored_printed_or_logged(ray_local, tmp_path, caplog):
    from click.testing import CliRunner

    from pipeline.cli import main

    caplog.set_level(logging.DEBUG)
    root = tmp_path / "in"
    root.mkdir()
    png = _save(Image.new("RGB", (4, 3), (10, 20, 30)), "PNG")
    for name in ("a.png", "b.png", "c.png"):
        (root / name).write_bytes(png)
    out = tmp_path / "out"
    printed: list[str] = []

    def darkroom(*args: str):
        result = CliRunner().invoke(main, list(args))
        printed.append(result.output)
        return result

    def job_file(name: str, **fields: str) -> str:
        path = tmp_path / f"{name}.yaml"
        values = {"input": str(root), "output": str(out), "input_options": "{}", "output_options": "{}"} | fields
        path.write_text(_HOSTILE_JOB.format(**values))
        return str(path)

    # Credentials in storage_options, at any depth: refused, one line per path, exit 2.
    for i, (input_options, output_options, paths) in enumerate(_OPTION_CASES):
        path = job_file(f"options{i}", input_options=input_options, output_options=output_options)
        for command in ("validate", "plan", "run"):
            result = darkroom(command, path)
            assert result.exit_code == 2, result.output
            lines = result.stderr.splitlines()
            assert [ln.split(": ")[1] for ln in lines] == paths, lines
            assert all(
                ln.endswith("credentials do not belong in a job file; use the environment / a profile") for ln in lines
            )

    # Credentials in the job's URIs (or given on the command line): refused, exit 2.
    signed = f"https://127.0.0.1:9/in/list.csv?X-Amz-Signature={SECRETS['signature']}"
    with_userinfo = f"s3://user:{SECRETS['userinfo']}@bucket/out/"
    for path, extra, field in [
        (job_file("signed-input", input=signed), [], "input.uri"),
        (job_file("userinfo-output", output=with_userinfo), [], "output.uri"),
        (job_file("plain"), ["--output", with_userinfo], "output.uri"),
    ]:
        for command in ("plan", "run"):
            result = darkroom(command, path, *extra)
            assert result.exit_code == 2, result.output
            [line] = result.stderr.splitlines()
            assert f": {field}: credentials do not belong in a URI" in line

    # Signed URLs and user:password@ in a list file: refused at plan time, naming the row.
    listing = tmp_path / "list.csv"
    rows = [
        str(root / "a.png"),
        str(root / "b.png"),
        f"https://127.0.0.1:9/c.png?X-Amz-Signature={SECRETS['signature']}&X-Amz-Security-Token={SECRETS['security_token']}",
        f"https://user:{SECRETS['userinfo']}@127.0.0.1:9/d.png",
    ]
    listing.write_text("uri\n" + "".join(f"{r}\n" for r in rows))
    for command in ("plan", "run"):
        result = darkroom(command, job_file("listed", input=str(listing)))
        assert result.exit_code == 1, result.output
        [line] = result.stderr.splitlines()
        assert line.startswith(f"error: {listing} row 3: `uri` holds credentials"), line
    listing.write_text("uri,mask_uri\n" + f"{rows[0]},https://user:{SECRETS['userinfo']}@127.0.0.1:9/m.png\n")
    result = darkroom("run", job_file("masked", input=str(listing)))
    assert result.exit_code == 1 and "row 1: `mask_uri` holds credentials" in result.stderr, result.output

    # A clean run on the same output, its history and report: the run works, nothing secret anywhere.
    assert darkroom("run", job_file("clean"), "--log-format", "plain").exit_code == 0, printed[-1]
    assert darkroom("runs", str(out), "--json").exit_code == 0
    assert darkroom("report", str(out)).exit_code == 0
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.name == "run.json" for p in files) and any(p.suffix == ".html" for p in files)
    assert any("/plan/" in str(p) for p in files) and any("/manifest/" in str(p) for p in files)
    for path in files:
        _no_secret_in(path.read_bytes(), str(path))
    _no_secret_in("\n".join(printed), "the CLI's output")
    _no_secret_in(caplog.text, "the logs")
