"""All storage I/O goes through this module (fsspec: local paths, s3:// via s3fs, any protocol).

S3-compatible stores: besides boto's usual credential chain, ``AWS_ENDPOINT_URL`` (or
``AWS_ENDPOINT_URL_S3``) points s3fs at another endpoint, e.g. MinIO or a test server. That policy
(endpoint, retries of transient errors, redaction of logged URIs) is ``models/fetch.py``'s, shared
with the model loaders: this module imports it.

Transient errors (an outage, throttling, 5xx, resets, timeouts; see ``failure_kind``) are
retried: a few times by default, or for as long as a ``RetryBudget`` allows (a shard task's
per-input reads and writes). A read may be given a ``timeout``, after which its connection is
cut and ``StorageTimeout`` raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import posixpath
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
from fsspec.asyn import sync
from fsspec.utils import glob_translate

from models.fetch import QUERY, USERINFO, FinalError, filesystem, is_local, protocols, redact, retrying

# The storage failure vocabulary, re-exported for pipeline/ (errors.py, execute.py, outputs.py, generate.py):
from models.fetch import RetryBudget as RetryBudget
from models.fetch import TransientError as TransientError
from models.fetch import failure_kind as failure_kind
from models.fetch import redact_text as redact_text  # re-exported for pipeline/errors.py

T = TypeVar("T")
GLOB_CHARS = re.compile(r"[*?\[]")
STALE_TEMP_SECONDS = 600.0  # a temporary file of an unknown writer this old is debris, not a write in progress
# Temporary files name their writer: .<name>.dr-<host id>-<pid>-<nonce>.tmp (host id: 8 hex of the
# host name's SHA-256), so a sweep can tell a dead writer's debris from a live writer's file.
_HOST_ID = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
_TEMP_NAME = re.compile(r"\..*\.dr-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-f]{8}\.tmp", re.DOTALL)
_OLD_TEMP_NAME = re.compile(r"\..*\.[0-9a-f]{32}\.tmp", re.DOTALL)  # before writers were named: .<name>.<uuid>.tmp


@dataclass(frozen=True)
class FileEntry:
    """One listed object. ``rel`` is its path below the listed root; ``etag`` is None where
    the store has none (local files)."""

    uri: str
    rel: str
    size: int
    etag: str | None
    mtime: float | None


_SECRET_PARAM_WORDS = "sig|signature|token|credential|credentials|password|passwd|pwd|secret|key|apikey|policy|auth|sas"
# One regex for Python's re and Arrow's RE2: user:password@ (any userinfo), or an http(s) query or
# fragment parameter whose name holds a credential word (X-Amz-Signature, X-Amz-Security-Token,
# X-Amz-Credential, sig, access_token, Key-Pair-Id, …); ?v=2 or ?width=100 is no secret.
CREDENTIALS_IN_URI = (
    r"(?i)^[a-z][a-z0-9+.-]*://[^/@?#]*@"
    r"|^https?://[^?#]*[?#](.*[&;])?([^=&;#]*[-_.])?(" + _SECRET_PARAM_WORDS + r")([-_.][^=&;#]*)?(=|&|;|$)"
)


def has_credentials(uri: str) -> bool:
    """Whether ``uri`` carries a credential (user:password@, a signed URL's signature or token):
    such a URI must not be stored, so job files and list files holding one are refused."""
    return re.search(CREDENTIALS_IN_URI, uri) is not None


def redact_array(uris: pa.Array) -> pa.Array:
    """``redact`` over an Arrow string array, without a Python object per row."""
    # Only a URI with userinfo ("@") or a query or fragment ("?", "#") can change: most listings
    # have none, and one scan for them is far cheaper than the two regex passes.
    if not pc.any(pc.match_substring_regex(uris, "[@?#]")).as_py():
        return uris
    no_userinfo = pc.replace_substring_regex(uris, pattern=USERINFO, replacement=r"\1")
    return pc.replace_substring_regex(no_userinfo, pattern=QUERY, replacement=r"\1")


class StorageTimeout(FinalError):
    """A read (or decode) that took longer than its ``timeout``; its connection was cut.

    Not a TimeoutError: it is the caller's limit on one input, not a network timeout to retry."""


def within(seconds: float | None, fn: Callable[[], T], what: str) -> T:
    """``fn()`` in a daemon thread, or StorageTimeout after ``seconds`` (None: no limit).

    For work that cannot be cancelled (a local read, a decoder): on timeout the thread is
    left to finish or hang on its own; the caller goes on."""
    if seconds is None:
        return fn()
    box: dict = {}

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:  # handed to the caller
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True, name=f"within:{what[:40]}")
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise StorageTimeout(f"{what}: no result after {seconds:g} s")
    if "error" in box:
        raise box["error"]
    return box["result"]


class NoCredentialsFound(PermissionError):
    pass


def check_credentials(uri: str, storage_options: dict | None = None) -> None:
    """Refuse to start on S3 without credentials, rather than let s3fs fall back to anonymous
    requests that fail later as "access denied" or "no such bucket". Public buckets: set
    ``storage_options: {anon: true}``."""
    if not uri.startswith(("s3://", "s3a://")) or (storage_options or {}).get("anon"):
        return
    import botocore.session

    if botocore.session.get_session().get_credentials() is None:
        raise NoCredentialsFound(f"NoCredentialsError: no AWS credentials for {redact(uri)}")


def join(base: str, *parts: str) -> str:
    """Join URI parts with '/' whatever the protocol (``s3://b/x`` + ``y`` → ``s3://b/x/y``)."""
    out = base.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def unstrip(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A listed path back to a full URI (local paths stay plain paths)."""
    return path if is_local(fs) else fs.unstrip_protocol(path)


async def _cut_after(seconds: float, coro, what: str):
    """``await coro``, cancelled after ``seconds`` (which closes its connection) → StorageTimeout.

    Not asyncio.wait_for: fsspec's ``sync`` turns any TimeoutError into its own, and a
    network timeout inside the read (transient) must stay distinct from this limit."""
    task = asyncio.ensure_future(coro)
    done, _ = await asyncio.wait([task], timeout=seconds)
    if not done:
        task.cancel()
        await asyncio.wait([task])  # let the cancellation close the connection
        raise StorageTimeout(f"{what}: no answer after {seconds:g} s")
    return task.result()


def read_bytes(
    uri: str, storage_options: dict | None = None, budget: RetryBudget | None = None, timeout: float | None = None
) -> bytes:
    """The whole object. ``budget``: how long to retry transient errors (see ``retrying``);
    ``timeout``: seconds one try may take before StorageTimeout (not retried). On async
    filesystems (s3, http) the request is cancelled, which closes its connection, however
    stalled; on others the read is left behind in its thread."""
    fs, path = filesystem(uri, storage_options)
    if timeout is None:
        read = lambda: fs.cat_file(path)  # noqa: E731
    elif getattr(fs, "async_impl", False) and getattr(fs, "loop", None) is not None:

        def read() -> bytes:
            return sync(fs.loop, _cut_after, timeout, fs._cat_file(path), f"read {redact(uri)}")
    else:
        read = lambda: within(timeout, lambda: fs.cat_file(path), f"read {redact(uri)}")  # noqa: E731
    return retrying(read, f"read {uri}", budget)


def write_atomic(uri: str, data: bytes, storage_options: dict | None = None, budget: RetryBudget | None = None) -> None:
    """Write ``data`` so readers see either nothing or the whole file.

    Object stores make a single PUT atomic; on local disks we write a hidden temporary
    file beside the target and rename it.
    """
    fs, path = filesystem(uri, storage_options)
    if is_local(fs):
        os.makedirs(posixpath.dirname(path), exist_ok=True)
        tmp = _temp_path(path)
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except BaseException:  # a full disk, a failed rename, an interrupt: leave no debris behind
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    else:
        retrying(lambda: fs.pipe_file(path, data), f"write {uri}", budget)


def _temp_path(path: str) -> str:
    """A temporary file beside ``path``, named after this process (see _TEMP_NAME)."""
    directory, name = posixpath.split(path)
    name = name.encode()[:100].decode(errors="ignore")  # keeps the temporary name within 255 bytes
    return posixpath.join(directory, f".{name}.dr-{_HOST_ID}-{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _is_debris(name: str, path: str, now: float, stale_after: float) -> bool:
    """Whether the file ``name`` (at ``path``) is a temporary file no live writer will finish."""
    ours = _TEMP_NAME.fullmatch(name)
    if ours is None and not _OLD_TEMP_NAME.fullmatch(name):
        return False  # not a temporary file of darkroom's
    if ours is not None and ours["host"] == _HOST_ID:
        pid = int(ours["pid"])
        if pid == os.getpid():
            return False  # this process's own write in progress (the lease's heartbeat)
        if not _pid_alive(pid):
            return True
    # Another host's writer (or one whose pid was reused): only its age tells.
    try:
        return now - os.stat(path).st_mtime > stale_after
    except FileNotFoundError:
        return False


def sweep_temp_files(uri: str, storage_options: dict | None = None, stale_after: float = STALE_TEMP_SECONDS) -> int:
    """Remove the temporary files dead writers left anywhere under ``uri``; returns how many.

    A run calls this at its start, holding the output's lease, so no other run writes there:
    a temporary file is debris when its writer process (on this host) is gone, or when it is
    older than ``stale_after`` seconds (another host's writer, or a name from before writers
    were named). Only local disks have temporary files: object stores write in one PUT.
    """
    fs, path = filesystem(uri, storage_options)
    if not is_local(fs) or not os.path.isdir(path):
        return 0
    now, removed = time.time(), 0
    for directory, _, files in os.walk(path):
        for name in files:
            full = os.path.join(directory, name)
            if _is_debris(name, full, now, stale_after):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(full)
                    removed += 1
    return removed


def stat(uri: str, storage_options: dict | None = None, budget: RetryBudget | None = None) -> FileEntry:
    """Size, ETag and mtime of one object (FileNotFoundError if it is missing)."""
    fs, path = filesystem(uri, storage_options)
    info = retrying(lambda: fs.info(path), f"stat {uri}", budget)
    return _entry(fs, info, posixpath.dirname(path))


def list_dir(uri: str, storage_options: dict | None = None) -> list[dict]:
    """Entries (fsspec info dicts) directly under a small bookkeeping folder; [] if it is missing.

    Object-store listings are re-read every time: another process may have just written there.
    """
    fs, path = filesystem(uri, storage_options)
    try:
        if is_local(fs):
            return fs.ls(path, detail=True)
        return retrying(lambda: fs.ls(path, detail=True, refresh=True), f"list {uri}")
    except FileNotFoundError:
        return []


def list_names(uri: str, storage_options: dict | None = None) -> list[str]:
    """Names of the files directly under a small bookkeeping folder, sorted."""
    return sorted(
        posixpath.basename(e["name"].rstrip("/")) for e in list_dir(uri, storage_options) if e["type"] == "file"
    )


def split_glob(uri: str) -> tuple[str, str | None]:
    """``s3://b/photos/**/*.jpg`` → (``s3://b/photos``, ``**/*.jpg``); no glob → (uri, None)."""
    match = GLOB_CHARS.search(uri)
    if not match:
        return uri.rstrip("/"), None
    cut = uri.rfind("/", 0, match.start())
    return uri[:cut], uri[cut + 1 :]


def iter_files(root: str, storage_options: dict | None = None) -> Iterator[FileEntry]:
    """Every file under ``root``, streamed in a deterministic order.

    S3 is listed page by page (1,000 keys a page, key order) instead of through
    ``fs.find``, which builds the whole listing in memory first. Other filesystems are
    walked directory by directory, sorted. A ``root`` that is itself a file yields it.
    """
    fs, path = filesystem(root, storage_options)
    if "s3" in protocols(fs):
        yield from _iter_s3(fs, path)
        return
    if fs.isfile(path):
        yield _entry(fs, fs.info(path), posixpath.dirname(path))
        return
    for _, dirs, files in fs.walk(path, detail=True):
        ordered = sorted(dirs.items())  # walk recurses in the dict's order: make it sorted
        dirs.clear()
        dirs.update(ordered)
        for name in sorted(files):
            yield _entry(fs, files[name], path)


def _entry(fs, info: dict, root: str) -> FileEntry:
    mtime = info.get("mtime") or info.get("LastModified") or info.get("last_modified")
    if hasattr(mtime, "timestamp"):
        mtime = mtime.timestamp()
    etag = info.get("ETag") or info.get("etag")
    return FileEntry(
        uri=unstrip(fs, info["name"]),
        rel=posixpath.relpath(info["name"], root.rstrip("/") or "/") if root else info["name"],
        size=int(info.get("size") or 0),
        etag=etag.strip('"') if isinstance(etag, str) else None,
        mtime=float(mtime) if mtime is not None else None,
    )


def _iter_s3(fs, path: str) -> Iterator[FileEntry]:
    bucket, _, key = path.partition("/")
    prefix = key.rstrip("/") + "/" if key else ""
    kwargs = {"Bucket": bucket, "Prefix": prefix}
    found = False
    while True:
        page = retrying(lambda: sync(fs.loop, fs._call_s3, "list_objects_v2", **kwargs), f"list s3://{bucket}/{prefix}")
        for obj in page.get("Contents", []):
            if obj["Key"].endswith("/"):
                continue  # folder placeholder objects
            found = True
            yield FileEntry(
                uri=f"s3://{bucket}/{obj['Key']}",
                rel=obj["Key"][len(prefix) :],
                size=int(obj["Size"]),
                etag=obj.get("ETag", "").strip('"') or None,
                mtime=obj["LastModified"].timestamp() if obj.get("LastModified") else None,
            )
        if not page.get("IsTruncated"):
            break
        kwargs["ContinuationToken"] = page["NextContinuationToken"]
    if not found and key:
        # The URI may name a single object rather than a prefix.
        try:
            info = fs.info(path)
        except FileNotFoundError:
            return
        if info["type"] == "file":
            yield _entry(fs, info, posixpath.dirname(path))


def glob_matcher(pattern: str):
    """A predicate on paths relative to the glob root (``**`` spans folders)."""
    regex = re.compile(glob_translate(pattern))
    return lambda rel: bool(regex.match(rel))


class PreconditionFailed(FinalError):
    """A conditional write lost: the object exists (create) or changed (replace)."""


def read_versioned(
    uri: str, storage_options: dict | None = None, budget: RetryBudget | None = None
) -> tuple[bytes | None, str | None]:
    """(content, version) of a small object, or (None, None) if it does not exist.

    The version is the S3 ETag, or a digest of the content on local disks; pass it to
    ``put_if`` to replace exactly this content. ``budget``: see ``retrying``.
    """
    fs, path = filesystem(uri, storage_options)
    try:
        if is_local(fs):
            data = fs.cat_file(path)
            return data, hashlib.sha256(data).hexdigest()
        info = retrying(
            lambda: fs.info(path, refresh=True) if "s3" in protocols(fs) else fs.info(path), f"stat {uri}", budget
        )
        data = retrying(lambda: fs.cat_file(path), f"read {uri}", budget)
        return data, (info.get("ETag") or "").strip('"') or hashlib.sha256(data).hexdigest()
    except FileNotFoundError:
        return None, None


def put_if(
    uri: str, data: bytes, version: str | None, storage_options: dict | None = None, budget: RetryBudget | None = None
) -> str:
    """Compare-and-swap write of a small object; returns the new version.

    ``version=None``: create, failing if the object exists. Otherwise replace, failing if
    the object's current version differs. S3 uses conditional PUT (If-None-Match / If-Match);
    local disks use a hard link for create and an flock'd read-compare-rename for replace.
    Other filesystems fall back to an unconditional write after a version check.

    On S3, transient errors are retried like other writes (``budget``, see ``retrying``). A try
    whose reply was lost may have landed, so its retry (botocore's or ours) fails the
    precondition against its own write: a failed precondition then reads the object back, and
    if it holds exactly ``data`` the write counts as done. Callers make every write's bytes
    unique (the lease's records carry their owner and the time), so equal bytes mean this write.
    """
    fs, path = filesystem(uri, storage_options)
    if is_local(fs):
        return _put_if_local(path, data, version)
    if "s3" in protocols(fs):
        return _put_if_s3(fs, path, uri, data, version, storage_options, budget)
    _, current = read_versioned(uri, storage_options)
    if current != version:
        raise PreconditionFailed(uri)
    fs.pipe_file(path, data)
    return read_versioned(uri, storage_options)[1] or ""


def _put_if_s3(
    fs, path: str, uri: str, data: bytes, version: str | None, storage_options: dict | None, budget: RetryBudget | None
) -> str:
    def put() -> str:
        try:
            if version is None:
                out = fs.pipe_file(path, data, mode="create")
            else:
                out = fs.pipe_file(path, data, IfMatch=f'"{version}"')
        except FileExistsError:
            raise PreconditionFailed(uri) from None
        except OSError as exc:
            if "pre-condition" in str(exc) or "PreconditionFailed" in str(exc):
                raise PreconditionFailed(uri) from None
            raise
        return out["ETag"].strip('"')

    try:
        return retrying(put, f"write {uri}", budget)
    except PreconditionFailed:
        current, current_version = read_versioned(uri, storage_options, budget)
        if current == data and current_version:
            return current_version  # our own try landed; only its reply was lost
        raise


def _put_if_local(path: str, data: bytes, version: str | None) -> str:
    os.makedirs(posixpath.dirname(path), exist_ok=True)
    tmp = _temp_path(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        with open(path + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if version is None:
                try:
                    os.link(tmp, path)  # fails if the target exists: an atomic create
                except FileExistsError:
                    raise PreconditionFailed(path) from None
            else:
                try:
                    with open(path, "rb") as fh:
                        current = hashlib.sha256(fh.read()).hexdigest()
                except FileNotFoundError:
                    current = None
                if current != version:
                    raise PreconditionFailed(path)
                os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return hashlib.sha256(data).hexdigest()
