"""Plain one-line explanations, with the fix, for failures users commonly hit.

The CLI prints ``error: <line>`` and exits 1 instead of a traceback (``--debug`` shows it).
"""

from __future__ import annotations

import os

from models.registry import UnknownModelError
from models.weights import WeightsError
from pipeline.job import ResourcesError
from pipeline.storage import redact_text


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
        if "NoSuchBucket" in text or "bucket does not exist" in text:
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
        if isinstance(e, (UnknownModelError, WeightsError, ResourcesError)):
            return str(e)
        if isinstance(e, FileNotFoundError):
            return f"not found: {redact_text(str(e.filename or e))}"
    return redact_text(f"{type(exc).__name__}: {exc}").splitlines()[0]
