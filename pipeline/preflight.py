"""Up-front checks of the places a job names: buckets, weights files, the output directory; and of
the weights themselves (pins, formats, architectures, scheduler configs) with the models' own checks.

A run that would fail on a misnamed location fails here instead, before the lease, planning or any
Ray work, with a :class:`ConfigurationError`: one line naming the job field and what is missing.
The CLI exits 2 for it, like a bad job file (retrying cannot help).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from models import Registry
from models.weights import WeightsError
from pipeline import storage
from pipeline.job import Job


class ConfigurationError(ValueError):
    """A job field names a place that does not exist or cannot be used; ``str()`` is one line
    starting with the field (``output.uri: …``)."""


def check_bucket(field: str, uri: str, storage_options: dict | None = None) -> None:
    """On an object store, ``uri``'s bucket must exist (a missing one fails only later, and
    without saying which URI). Local paths pass; access errors propagate as they are."""
    fs, path = storage.filesystem(uri, storage_options)
    if storage.is_local(fs):
        return
    bucket = path.split("/", 1)[0]
    try:
        fs.info(bucket)
    except FileNotFoundError:
        raise ConfigurationError(
            f"{field}: bucket {bucket!r} does not exist ({storage.redact(uri)}): create it or fix {field}"
        ) from None


def check_weights(field: str, uri: str, storage_options: dict | None = None) -> None:
    """The weights a step's ``params.uri`` names must exist: a file, or a folder for models whose
    weights are one (``ddpm``: a diffusers folder; ``text-to-image``: a pipeline folder); whether
    they load is :func:`check_models`' question (``package://`` files are models.weights')."""
    if uri.startswith("package://"):
        return
    fs, path = storage.filesystem(uri, storage_options)
    try:
        found = fs.isfile(path) or fs.isdir(path)
    except FileNotFoundError:
        found = False
    if not found:
        raise ConfigurationError(f"{field}: weights file not found: {storage.redact(uri)}")


def check_output_writable(uri: str) -> None:
    """A local output directory must be creatable and writable (tried for real: permission bits
    say nothing for root, and /proc or a read-only mount refuse whatever the bits say)."""
    fs, path = storage.filesystem(uri)
    if not storage.is_local(fs):
        return
    target = Path(path)
    blocker = next((p for p in (target, *target.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise ConfigurationError(f"output.uri: {blocker} is a file, not a directory ({uri})")
    probe = target / f".darkroom-probe-{secrets.token_hex(4)}"
    try:
        target.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise ConfigurationError(f"output.uri: cannot write to {target} ({reason})") from None


def check(job: Job, writing: bool) -> None:
    """Every location check for ``job``; ``writing``: the run will write its output (not for plan)."""
    if job.input is not None:
        check_bucket("input.uri", job.input.uri, job.input.storage_options)
    check_bucket("output.uri", job.output.uri, job.output.storage_options)
    if job.generate is not None and isinstance(job.generate.prompts, str):  # a list file, read with output's options
        check_bucket("generate.prompts", job.generate.prompts, job.output.storage_options)
    specs = [("generate", job.generate)] if job.generate is not None else list(enumerate(job.steps or []))
    for index, spec in specs:
        uri, options = spec.params.get("uri"), spec.params.get("storage_options")
        if isinstance(uri, str):
            field = "generate.params.uri" if index == "generate" else f"steps[{index}].params.uri"
            check_weights(field, uri, options if isinstance(options, dict) else None)
    if writing:
        check_output_writable(job.output.uri)


def check_models(job: Job, registry: Registry) -> list[str | None]:
    """Whether every step's (or the generator's) weights will load, checked here on the driver with
    the registry entry's ``check`` (models.registry.ModelEntry.check), before Ray starts: a pin
    mismatch, pickled objects, a truncated file, an undetected architecture, a scheduler the samplers
    do not implement fail here as a ConfigurationError naming the step. Returns each step's
    description (e.g. ``ESRGAN×4``; None where the model has none), in step order."""
    specs = (
        [("generate", job.generate)]
        if job.generate is not None
        else [(f"steps[{i}]", s) for i, s in enumerate(job.steps or [])]
    )
    details = []
    for field, spec in specs:
        try:
            details.append(registry.get(spec.model).check(spec.params))
        except WeightsError as exc:
            raise ConfigurationError(f"{field} ({spec.model}): {storage.redact_text(str(exc))}") from None
    return details
