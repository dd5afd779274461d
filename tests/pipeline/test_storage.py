"""Storage writes: local atomic writes leave no debris (a failed write removes its temporary
file, a sweep removes the temporary files of dead writers and only those), and a conditional
write survives a lost reply."""

from __future__ import annotations

import hashlib
import os
import socket
import time

import pytest

from pipeline import storage
from tests.faults import OutageProxy, dead_writer_debris


def temp_name(target: str, host: str, pid: int) -> str:
    """A temporary file's name as storage's writers spell it: .<name>.dr-<host id>-<pid>-<nonce>.tmp."""
    host_id = hashlib.sha256(host.encode()).hexdigest()[:8]
    return f".{target}.dr-{host_id}-{pid}-0123abcd.tmp"


def test_a_failed_write_leaves_no_temporary_file(tmp_path):
    (tmp_path / "a.png" / "in-the-way").mkdir(parents=True)  # the rename onto a non-empty folder fails
    with pytest.raises(OSError):
        storage.write_atomic(str(tmp_path / "a.png"), b"data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_a_write_that_fails_while_writing_leaves_no_temporary_file(tmp_path):
    data = memoryview(b"data")
    data.release()  # the temporary file is created, then writing the bytes fails
    with pytest.raises(ValueError):
        storage.write_atomic(str(tmp_path / "a.png"), data)
    assert list(tmp_path.iterdir()) == []


def test_the_sweep_removes_dead_writers_debris_only(tmp_path):
    folder = tmp_path / "images" / "sub"
    folder.mkdir(parents=True)
    dead = dead_writer_debris(folder / "a.png")
    hour_ago = time.time() - 3600
    planted = {
        "own": temp_name("b.png", socket.gethostname(), os.getpid()),  # this process: a write in progress
        "far-young": temp_name("c.png", "another-host", 123),  # another host, just now: maybe in progress
        "far-old": temp_name("d.png", "another-host", 123),
        "old-style-old": ".e.png." + "ab" * 16 + ".tmp",  # names from before writers were named
        "old-style-young": ".f.png." + "cd" * 16 + ".tmp",
        "not-ours": ".notes.tmp",
        "also-not-ours": "g.png.tmp",
    }
    for kind, name in planted.items():
        (folder / name).write_bytes(b"x")
        if kind.endswith("-old") or kind.startswith("not-") or kind.startswith("also-"):
            os.utime(folder / name, (hour_ago, hour_ago))
    assert storage.sweep_temp_files(str(tmp_path)) == 3
    left = {p.name for p in folder.iterdir()}
    assert dead.name not in left
    assert left == {planted[k] for k in ("own", "far-young", "old-style-young", "not-ours", "also-not-ours")}


def test_the_sweep_of_an_object_store_or_a_missing_folder_does_nothing(tmp_path):
    assert storage.sweep_temp_files(str(tmp_path / "missing")) == 0
    assert storage.sweep_temp_files("memory://bucket/out") == 0


def test_a_conditional_write_whose_reply_was_lost_counts_as_done(s3_endpoint, s3_bucket):
    # The create lands, its reply is reset; the retry then fails the precondition against
    # its own write, which must be recognised by its bytes, not reported as someone else's.
    with OutageProxy(s3_endpoint, lose_reply=f"PUT /{s3_bucket}/lease.json".encode()) as proxy:
        opts = {"client_kwargs": {"endpoint_url": proxy.endpoint}}
        uri = f"s3://{s3_bucket}/lease.json"
        version = storage.put_if(uri, b"mine", None, opts)
        assert proxy.lost_replies == 1
        assert storage.read_versioned(uri, opts) == (b"mine", version)
        with pytest.raises(storage.PreconditionFailed):  # other bytes are another writer's
            storage.put_if(uri, b"theirs", None, opts)
        assert storage.put_if(uri, b"next", version, opts) != version
