"""Plain one-line explanations, with the fix, of failures users commonly hit: a run's (and its exit code), one input's.

The CLI prints ``error: <line>`` instead of a traceback (``--debug`` shows it) and exits with
:func:`exit_code`: 2 for a configuration error (a job field naming a bucket, weights file or output
that does not exist or cannot be written: retrying cannot help), else 1.

:func:`storage_error` names the failure to read or write one input's files as its manifest row
records it (``error_type``, ``error_message``): ``transient`` (still failing when the retry
budget ran out: ``--mode retry-errors`` runs it again), ``timeout``, ``tls_error``, ``not_found``,
``access_denied``.
"""

from __future__ import annotations

import os
import re
from urllib.parse import urlsplit

from models.fetch import causes
from models.registry import UnknownModelError
from models.weights import WeightsError
from pipeline import storage
from pipeline.job import ResourcesError
from pipeline.planning import ListFileError
from pipeline.preflight import ConfigurationError
from pipeline.storage import redact, redact_text

EXIT_CONFIGURATION = 2  # as a bad job file
EXIT_FAILED = 1


class ModelLoadError(RuntimeError):
    """A model actor failed to start; ``str()`` is the actor's own error (pipeline.driver.model_load_error)."""


def explain(exc: BaseException, uris: dict[str, str] | None = None) -> str:
    """One line saying what went wrong and what to do about it; ``uris`` (e.g. the job's
    input.uri and output.uri) are named where the error itself does not say which."""
    where = ", ".join(f"{field} ({redact_text(uri)})" for field, uri in (uris or {}).items()) or "the URIs"
    for e in causes(exc):
        text = f"{type(e).__name__}: {e}"
        if "NoCredentialsError" in text or "Unable to locate credentials" in text:
            return (
                "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, "
                "or run where an instance profile / IAM role provides them (never in the job file)"
            )
        if isinstance(e, ConfigurationError):
            return str(e)
        if "NoSuchBucket" in text or "bucket does not exist" in text:
            named = [f for f, uri in (uris or {}).items() if _bucket(uri) and _bucket(uri) in text]
            if len(named) == 1:
                field = named[0]
                return f"{field}: bucket {_bucket(uris[field])!r} does not exist ({redact_text(uris[field])})"
            return f"a bucket does not exist: check {where}, or create the bucket"
        if any(
            s in text
            for s in (
                "EndpointConnectionError",
                "Could not connect to the endpoint",
                "Cannot connect to host",
                "ConnectionRefusedError",
                "Connection refused",
            )
        ):
            endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "the AWS default"
            return (
                f"cannot reach the storage endpoint ({endpoint}): check the network, "
                "or AWS_ENDPOINT_URL for S3-compatible stores"
            )
        if (
            "AccessDenied" in text
            or "InvalidAccessKeyId" in text
            or "SignatureDoesNotMatch" in text
            or isinstance(e, PermissionError)
        ):
            return f"access denied by the storage: the credentials in use may not read or write {where}"
        if isinstance(e, (UnknownModelError, WeightsError, ResourcesError, ListFileError, ModelLoadError)):
            return str(e)
        if isinstance(e, FileNotFoundError):
            return f"not found: {redact_text(str(e.filename or e))}"
    return redact_text(f"{type(exc).__name__}: {exc}").splitlines()[0]


def storage_error(exc: BaseException, uri: str, missing: str | None = None) -> tuple[str, str] | None:
    """(error_type, message) for a failure to read or write ``uri``, or None when it is none
    of the kinds named here. ``missing``: the message for a file that is not there (default:
    ``not found: <the URL as requested>``)."""
    shown = redact(uri)
    if isinstance(exc, storage.TransientError):
        return "transient", str(exc)
    if isinstance(exc, storage.StorageTimeout):
        return "timeout", str(exc)
    kind = storage.failure_kind(exc)
    root = list(causes(exc))[-1]
    scheme = urlsplit(uri).scheme.lower()
    fragment = ""
    if scheme in ("http", "https") and "#" in uri:
        shown = redact(uri.split("#", 1)[0])
        fragment = (
            " (the URL as requested: what follows '#' is a fragment, never sent to the server; a '#' in a file name "
            "is written %23)"
        )
    if kind == "tls":
        hint = " (an http-only endpoint? then write http://)" if scheme == "https" else ""
        return "tls_error", f"TLS handshake failed for {shown}{hint}: {type(root).__name__}: {root}"
    if kind == "transient":  # only without a retry budget
        return "transient", f"{type(exc).__name__}: {exc}"
    if kind == "not_found":
        return "not_found", (missing if missing and not fragment else f"not found: {shown}") + fragment
    if kind == "denied":
        return "access_denied", f"access denied: {shown}{fragment} ({type(root).__name__}: {root})"
    return None


def _bucket(uri: str) -> str | None:
    match = re.match(r"^[a-z0-9]+://([^/]+)", uri)
    return match.group(1) if match else None


def exit_code(exc: BaseException) -> int:
    """2 when ``exc`` (or what caused it) is a configuration error, else 1."""
    for e in causes(exc):
        text = f"{type(e).__name__}: {e}"
        if isinstance(e, ConfigurationError) or "NoSuchBucket" in text:
            return EXIT_CONFIGURATION
    return EXIT_FAILED
