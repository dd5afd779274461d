"""models/fetch.py: the one remote read of models/ (retried, hashed, atomic), its digest memo and S3 endpoint."""

from __future__ import annotations

import hashlib
import os

import boto3
import fsspec
import pytest
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem

from models import fetch as remote
from models.weights import fetch as fetch_weights


class FlakyMemory(MemoryFileSystem):
    """An in-memory store whose first ``fail`` reads break with ``error``, counting reads."""

    protocol = "flakymemory"
    cachable = False

    def __init__(self, fail: int = 0, error: type[Exception] = ConnectionResetError, **kwargs):
        super().__init__(**kwargs)
        self.fail, self.error, self.opens = fail, error, 0

    def _open(self, path, mode="rb", **kwargs):
        if "r" not in mode:
            return super()._open(path, mode, **kwargs)
        self.opens += 1
        if self.opens <= self.fail:
            raise self.error("Connection reset by peer")
        return super()._open(path, mode, **kwargs)


class CountingLocal(LocalFileSystem):
    """Local disk, counting the files opened."""

    cachable = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.opens = 0

    def _open(self, path, mode="rb", **kwargs):
        self.opens += 1
        return super()._open(path, mode, **kwargs)


@pytest.fixture
def fast_retries(monkeypatch):
    monkeypatch.setattr(remote, "RETRY_BASE_SECONDS", 0.001)


def test_fetch_writes_atomically_and_returns_the_digest(tmp_path):
    fs = fsspec.filesystem("memory")
    data = os.urandom(3 * remote.CHUNK_BYTES + 17)
    fs.pipe("/fetch/w.bin", data)
    dest = tmp_path / "cache" / "w.bin"
    assert remote.fetch(fs, "/fetch/w.bin", dest) == hashlib.sha256(data).hexdigest()
    assert dest.read_bytes() == data
    assert [p.name for p in dest.parent.iterdir()] == ["w.bin"]  # no temporary file left behind
    assert remote.fetch(fs, "/fetch/w.bin") == hashlib.sha256(data).hexdigest()  # digest only


def test_fetch_retries_transient_errors_not_missing_files(tmp_path, fast_retries):
    fs = FlakyMemory(fail=2)
    fs.pipe("/flaky/w.bin", b"weights")
    assert remote.fetch(fs, "/flaky/w.bin", tmp_path / "w.bin") == hashlib.sha256(b"weights").hexdigest()
    assert fs.opens == 3 and (tmp_path / "w.bin").read_bytes() == b"weights"
    assert [p.name for p in tmp_path.iterdir()] == ["w.bin"]  # the broken attempts' parts are gone

    denied = FlakyMemory(fail=1, error=PermissionError)
    denied.pipe("/flaky/w.bin", b"weights")
    with pytest.raises(PermissionError):
        remote.fetch(denied, "/flaky/w.bin")
    assert denied.opens == 1
    with pytest.raises(FileNotFoundError):
        remote.fetch(fs, "/flaky/missing.bin", tmp_path / "missing.bin")
    assert not (tmp_path / "missing.bin").exists()


def test_digest_remembered_per_file_version(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"one")
    fs, local = CountingLocal(), str(path)
    assert remote.digest(fs, local) == hashlib.sha256(b"one").hexdigest()
    assert remote.digest(fs, local) == hashlib.sha256(b"one").hexdigest()
    assert fs.opens == 1  # same size and mtime: not read again
    path.write_bytes(b"two")
    os.utime(path, ns=(path.stat().st_mtime_ns + 10**9,) * 2)
    assert remote.digest(fs, local) == hashlib.sha256(b"two").hexdigest()  # a new version is read
    assert fs.opens == 2
    with pytest.raises(FileNotFoundError):
        remote.digest(fs, str(tmp_path / "missing"))


def test_s3_endpoint_from_the_environment(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    assert remote.options("s3://b/k", None) == {"client_kwargs": {"endpoint_url": "http://127.0.0.1:1"}}
    own = {"client_kwargs": {"endpoint_url": "http://other"}}
    assert remote.options("s3://b/k", own) == own  # the job's own endpoint wins
    assert remote.options("/local/k", None) == {}


def test_weights_fetched_from_s3_through_the_endpoint(s3_bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("DARKROOM_CACHE", str(tmp_path / "cache"))
    boto3.client("s3").put_object(Bucket=s3_bucket, Key="w.safetensors", Body=b"weights")
    sha = hashlib.sha256(b"weights").hexdigest()
    path = fetch_weights(f"s3://{s3_bucket}/w.safetensors", sha)
    assert path == tmp_path / "cache" / "downloads" / f"{sha}.safetensors" and path.read_bytes() == b"weights"
    fs, key = remote.filesystem(f"s3://{s3_bucket}/w.safetensors")
    assert remote.digest(fs, key) == sha
