"""Plain one-line explanations, with the fix, for failures users commonly hit, and their exit codes.

The CLI prints ``error: <line>`` instead of a traceback (``--debug`` shows it) and exits with
:func:`exit_code`: 2 for a configuration error (a job field naming a bucket, weights file or output
that does not exist or cannot be written: retrying cannot help), else 1.
"""

from __future__ import annotations

import os
import re

from models.registry import UnknownModelError
from models.weights import WeightsError
from pipeline.job import ResourcesError
from pipeline.planning import ListFileError
from pipeline.preflight import ConfigurationError
from pipeline.storage import redact_text

EXIT_CONFIGURATION = 2  # as a bad job file
EXIT_FAILED = 1


class ModelLoadError(RuntimeError):
    """A model actor failed to start; ``str()`` is the actor's own error (pipeline.driver.model_load_error)."""


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def explain(exc: BaseException, uris: dict[str, str] | None = None) -> str:
    """One line saying what went wrong and what to do about it; ``uris`` (e.g. the job's
    input.uri and output.uri) are named where the error itself does not say which."""
    where = ", ".join(f"{field} ({redact_text(uri)})" for field, uri in (uris or {}).items()) or "the URIs"
    for e in _chain(exc):
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


def _bucket(uri: str) -> str | None:
    match = re.match(r"^[a-z0-9]+://([^/]+)", uri)
    return match.group(1) if match else None


def exit_code(exc: BaseException) -> int:
    """2 when ``exc`` (or what caused it) is a configuration error, else 1."""
    for e in _chain(exc):
        text = f"{type(e).__name__}: {e}"
        if isinstance(e, ConfigurationError) or "NoSuchBucket" in text:
            return EXIT_CONFIGURATION
    return EXIT_FAILED
