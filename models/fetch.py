"""All remote reads of models/ go through :func:`fetch`: one object streamed, retried, hashed, optionally saved
(or, for a header, :func:`read_range`).

The storage policy it applies is shared with ``pipeline/storage.py`` (which imports it from here):

* :func:`filesystem`: fsspec for any URI; on S3-compatible stores ``AWS_ENDPOINT_URL`` (or
  ``AWS_ENDPOINT_URL_S3``) points s3fs at another endpoint (MinIO, a test server) unless the
  ``storage_options`` name one.
* :func:`failure_kind` classifies a storage failure (``transient``: throttling, 5xx, resets,
  timeouts; ``tls``, ``not_found``, ``denied``, ``permanent``) from the exception and its causes.
* :func:`retrying`: transient errors are retried with capped exponential backoff and full jitter,
  a few times or for as long as a :class:`RetryBudget` allows; missing files, denials and TLS
  failures are not.
* :func:`digest`: the sha256 of a file, remembered once per process and file version (size plus
  ETag / mtime), since a run's planner asks for the same weights' digest several times.
* URIs are :func:`redact`-ed (no credentials, no signed-URL queries) wherever they are logged.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import re
import ssl
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import fsspec

log = logging.getLogger(__name__)
T = TypeVar("T")

TRANSIENT = re.compile(
    r"SlowDown|Throttl|ServiceUnavailable|Service Unavailable|InternalError|RequestTimeout|"
    r"\b50[0234]\b|reset by peer|timed out|Timeout|Connection refused|Server disconnected|"
    r"Connection aborted|IncompleteRead|RemoteDisconnected",
    re.IGNORECASE,
)
RETRY_ATTEMPTS = 6
RETRY_BASE_SECONDS = 0.2
RETRY_CAP_SECONDS = 5.0
CHUNK_BYTES = 1 << 20
VERSION_MARKS = ("ETag", "etag", "mtime", "LastModified", "generation", "version_id")  # fsspec info keys

USERINFO = r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/@?#]*@"
QUERY = r"^((?i:https?)://[^?#]*)[?#].*$"  # only web URLs: in S3 keys and file names ? and # are plain characters
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def redact(uri: str) -> str:
    """``uri`` without credentials: user:password@ and, for http(s) URLs, the query string
    (signed-URL signatures, tokens) are dropped. What manifests, logs and reports show of an input."""
    return re.sub(QUERY, r"\1", re.sub(USERINFO, r"\1", uri))


def redact_text(text: str) -> str:
    """Every URL inside free text (an error message) redacted."""
    return _URL_IN_TEXT.sub(lambda m: redact(m.group(0)), text)


class FinalError(Exception):
    """An error its raiser has judged final (a failed precondition, a limit reached): never
    retried, whatever caused it (:func:`failure_kind` says ``permanent``)."""


class TransientError(Exception):
    """A transient storage error that outlasted its retry budget (:class:`RetryBudget`)."""


# botocore / aiohttp exception classes (matched by name: both wrap and re-raise each other's)
# that mean the endpoint could not be reached or the connection broke: retrying may succeed.
_TRANSIENT_CLASSES = {
    "EndpointConnectionError",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ConnectionClosedError",
    "ServerDisconnectedError",
    "ClientPayloadError",
    "ClientConnectionError",
    "ServerTimeoutError",
}
_TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError"}
_TRANSIENT_CODES |= {"ServiceUnavailable", "RequestLimitExceeded", "TooManyRequests"}


def causes(exc: BaseException | None) -> Iterator[BaseException]:
    """``exc`` and what caused it (``__cause__``, else ``__context__``), outermost first."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _status(exc: BaseException) -> tuple[int | None, str | None]:
    """The HTTP status and S3 error code an exception carries (aiohttp: ``status``; botocore: ``response``)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return status, response.get("Error", {}).get("Code")
    status = getattr(exc, "status", None)
    return (status if isinstance(status, int) else None), None


def _kind_of(exc: BaseException) -> str | None:
    """What one exception (not its causes) says about a failure; None if it says nothing definite."""
    names = {c.__name__ for c in type(exc).__mro__}
    if isinstance(exc, (ssl.SSLError, ssl.CertificateError)) or any("SSL" in n or "Certificate" in n for n in names):
        return "tls"
    if isinstance(exc, (FinalError, IsADirectoryError)):
        return "permanent"
    status, code = _status(exc)
    if code in _TRANSIENT_CODES or (status is not None and (status >= 500 or status in (408, 429))):
        return "transient"
    if status in (404, 410) or code in ("NoSuchKey", "404"):
        return "not_found"
    if status in (401, 403) or code in ("AccessDenied", "403"):
        return "denied"
    if isinstance(exc, FileNotFoundError):
        return "not_found"
    if isinstance(exc, PermissionError):
        return "denied"
    if isinstance(exc, (ConnectionError, TimeoutError)) or names & _TRANSIENT_CLASSES:
        return "transient"
    if isinstance(exc, OSError) and TRANSIENT.search(f"{type(exc).__name__} {exc}"):
        return "transient"
    return None


def failure_kind(exc: BaseException) -> str | None:
    """What a storage failure is: ``transient`` (connection refused or reset, timeouts, 5xx,
    throttling: retrying may succeed), ``tls`` (a TLS handshake failed, e.g. https:// to an
    http-only endpoint), ``not_found``, ``denied``, ``permanent`` (a :class:`FinalError`), or
    None if unknown.

    The deepest definite cause decides: fsspec's HTTP filesystem reports any failure to stat
    a URL as FileNotFoundError, s3fs wraps botocore's errors, botocore wraps aiohttp's. A
    :class:`FinalError` decides, whatever caused it."""
    kind = None
    for e in causes(exc):
        if isinstance(e, FinalError):
            return "permanent"
        kind = _kind_of(e) or kind
    return kind


def is_transient(exc: BaseException) -> bool:
    """Errors worth retrying: throttling, 5xx, resets and timeouts — not missing files, denials or TLS failures."""
    return failure_kind(exc) == "transient"


class RetryBudget:
    """How long transient errors are retried: ``seconds`` from the first of a run of failures.

    One budget is shared by the calls of a shard task: its clock starts at a transient failure
    and stops at the next success, so an outage longer than ``seconds`` costs the task about
    ``seconds`` of waiting in all, not ``seconds`` per input it hits. Not thread-safe."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.failing_since: float | None = None  # monotonic time of the first failure of the current run

    def call(self, fn: Callable[[], T], what: str) -> T:
        """``fn()``, retried with capped exponential backoff and full jitter while transient
        errors last and the budget allows; then TransientError."""
        attempt = 0
        while True:
            try:
                result = fn()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                now = time.monotonic()
                self.failing_since = self.failing_since or now
                left = self.failing_since + self.seconds - now
                if left <= 0:
                    raise TransientError(
                        redact_text(
                            f"{what}: still failing after {now - self.failing_since:.0f} s of retries "
                            f"(limits.transient_retry_seconds={self.seconds:g}): {type(exc).__name__}: {exc}"
                        )
                    ) from exc
                attempt += 1
                delay = min(left, random.uniform(0, min(RETRY_CAP_SECONDS, RETRY_BASE_SECONDS * 2**attempt)))
                log.info(
                    "%s: transient error (%s), retry %d in %.2f s",
                    redact_text(what),
                    redact_text(str(exc)),
                    attempt,
                    delay,
                )
                time.sleep(delay)
                continue
            self.failing_since = None
            return result


def retrying(fn: Callable[[], T], what: str, budget: RetryBudget | None = None) -> T:
    """Call ``fn``, retrying transient storage errors with capped exponential backoff and full jitter:
    while ``budget`` allows, or without one ``RETRY_ATTEMPTS`` times.

    s3fs and botocore already retry some errors themselves; this is the bounded last line
    for what still comes through (e.g. a reset in the middle of a body, an endpoint down).
    """
    if budget is not None:
        return budget.call(fn, what)
    for attempt in range(1, RETRY_ATTEMPTS + 1):
        try:
            return fn()
        except Exception as exc:
            if attempt == RETRY_ATTEMPTS or not is_transient(exc):
                raise
            delay = random.uniform(0, min(RETRY_CAP_SECONDS, RETRY_BASE_SECONDS * 2**attempt))
            log.info(
                "%s: transient error (%s), retry %d in %.2f s", redact_text(what), redact_text(str(exc)), attempt, delay
            )
            time.sleep(delay)
    raise AssertionError("unreachable")


def options(uri: str, storage_options: dict | None) -> dict:
    """``storage_options`` plus, for ``s3://`` URIs, the endpoint from ``AWS_ENDPOINT_URL[_S3]``
    when the options name none."""
    opts = dict(storage_options or {})
    if uri.startswith(("s3://", "s3a://")):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        client_kwargs = dict(opts.get("client_kwargs") or {})
        if endpoint and "endpoint_url" not in client_kwargs and "endpoint_url" not in opts:
            client_kwargs["endpoint_url"] = endpoint
            opts["client_kwargs"] = client_kwargs
    return opts


def filesystem(uri: str, storage_options: dict | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path without protocol) for ``uri``."""
    return fsspec.core.url_to_fs(uri, **options(uri, storage_options))


def protocols(fs: fsspec.AbstractFileSystem) -> tuple:
    """The protocol names of ``fs`` (fsspec gives a string or a tuple)."""
    return fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return "file" in protocols(fs) or "local" in protocols(fs)


def fetch(fs: fsspec.AbstractFileSystem, path: str, dest: Path | None = None) -> str:
    """Read the file ``path`` of ``fs`` whole; returns its sha256 (64 hex chars).

    With ``dest`` the bytes are also written there, atomically: into a temporary file beside
    ``dest`` that is renamed over it once complete, so concurrent readers never see half a
    file. A transient error restarts the read (:func:`retrying`) from the first byte.
    """

    def attempt() -> str:
        digest = hashlib.sha256()
        if dest is None:
            with fs.open(path, "rb") as src:
                for chunk in iter(lambda: src.read(CHUNK_BYTES), b""):
                    digest.update(chunk)
            return digest.hexdigest()
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out, fs.open(path, "rb") as src:
                for chunk in iter(lambda: src.read(CHUNK_BYTES), b""):
                    digest.update(chunk)
                    out.write(chunk)
            os.replace(tmp, dest)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return digest.hexdigest()

    return retrying(attempt, f"read {fs.unstrip_protocol(path)}")


def read_range(fs: fsspec.AbstractFileSystem, path: str, start: int, end: int) -> bytes:
    """Bytes ``[start, end)`` of the file ``path`` of ``fs`` (fewer at its end), retried like
    :func:`fetch`: for a small part of a large file, such as a safetensors header."""
    return retrying(lambda: fs.cat_file(path, start=start, end=end), f"read {fs.unstrip_protocol(path)}")


_digests: dict[tuple, str] = {}  # (protocol, path, size, version marks…) → sha256


def digest(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """sha256 of the file ``path`` of ``fs`` as it is now (FileNotFoundError if missing).

    Computed once per process and file version: the key is the file's size plus whatever
    version marks the store gives (ETag, mtime, generation, …); a file without marks is read
    every time, since nothing would tell a replaced file from the remembered one.
    """
    fs.invalidate_cache(path)
    info = retrying(lambda: fs.info(path), f"stat {fs.unstrip_protocol(path)}")
    marks = tuple(str(info[k]) for k in VERSION_MARKS if info.get(k))
    key = (str(fs.protocol), path, info.get("size"), *marks)
    if not marks:
        return fetch(fs, path)
    if key not in _digests:
        _digests[key] = fetch(fs, path)
    return _digests[key]
