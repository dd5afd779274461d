"""Job files: the YAML schema (pydantic), loading, overrides, and field-naming errors.

Validation happens here, at the edge: a job that loads is structurally sound, names only
registered models with valid params, and carries no inline secrets.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from models import Registry
from models.registry import UnknownModelError

SECRET_KEYS = {"key", "secret", "token", "password", "aws_access_key_id", "aws_secret_access_key", "aws_session_token"}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _no_inline_secrets(options: dict[str, Any]) -> dict[str, Any]:
    found = sorted(k for k in options if k.lower() in SECRET_KEYS)
    if found:
        raise ValueError(
            f"credentials must not be written in job files ({', '.join(found)}); "
            "use the standard chain (AWS_* environment variables, ~/.aws, instance profile)"
        )
    return options


class InputSpec(Strict):
    uri: str = Field(description="prefix, glob (s3://b/**/*.jpg) or list file (.parquet/.csv/.jsonl with a `uri` column)")
    storage_options: dict[str, Any] = Field(default_factory=dict, description="passed to fsspec")

    _check_secrets = field_validator("storage_options")(_no_inline_secrets)


class OutputSpec(Strict):
    uri: str = Field(description="prefix that receives images, manifest/ and _darkroom/")
    format: Literal["png", "jpeg", "webp", "same"] = Field("png", description="written format; same = the input's (BMP → png)")
    quality: int = Field(95, ge=1, le=100, description="JPEG/WebP quality")
    storage_options: dict[str, Any] = Field(default_factory=dict, description="passed to fsspec")

    _check_secrets = field_validator("storage_options")(_no_inline_secrets)


class ActorRange(Strict):
    min: int = Field(1, ge=1)
    max: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> "ActorRange":
        if self.max < self.min:
            raise ValueError("max must be ≥ min")
        return self


def _actor_range(value: Any) -> Any:
    return {"min": value, "max": value} if isinstance(value, int) and not isinstance(value, bool) else value


class StepResources(Strict):
    """Per-step overrides of the job's actor resources (each step has its own actor pool)."""

    actors: ActorRange | None = Field(None, description="actors for this step: a number, or {min, max}")
    gpus_per_actor: float | None = Field(None, ge=0, description="fractions share a GPU, e.g. 0.25 = 4 actors per GPU")
    cpus_per_actor: float | None = Field(None, gt=0)

    _range = field_validator("actors", mode="before")(_actor_range)


class StepSpec(Strict):
    model: str = Field(description="a registry name (see `darkroom models`)")
    params: dict[str, Any] = Field(default_factory=dict, description="the model's params (see `darkroom models`), e.g. {scale: 2}")
    resources: StepResources | None = Field(None, description="this step's actor pool, if not the job's")


class Resources(Strict):
    actors: ActorRange = Field(
        default_factory=ActorRange,
        description="model actors per step: a number, or {min, max} to grow while shards wait (one per GPU when GPUs exist)",
    )
    gpus_per_actor: float = Field(0, ge=0, description="GPUs each actor reserves; 0 runs on CPU; fractions share a GPU")
    cpus_per_actor: float = Field(1, gt=0, description="CPUs each actor reserves (torch threads)")
    cpus_per_task: float = Field(1, gt=0, description="CPUs each shard task reserves (read, decode, encode, write)")
    batch_size: int = Field(4, ge=1, description="images per forward pass")
    tile: int = Field(512, ge=0, description="tile size in input pixels for the models; 0 = whole images")
    tile_pad: int = Field(16, ge=0, description="context pixels around each tile (seams are feathered)")
    shard_size: int = Field(64, ge=1, description="inputs per shard (the unit of commit)")
    max_inflight_shards: int | None = Field(None, ge=1, description="shards in flight at once; default 2 × max actors")

    _range = field_validator("actors", mode="before")(_actor_range)

    def for_step(self, step: "StepSpec") -> "Resources":
        """These resources with the step's own overrides applied."""
        own = step.resources.model_dump(exclude_none=True) if step.resources else {}
        return self.model_copy(update={k: (ActorRange(**v) if k == "actors" else v) for k, v in own.items()})


class Limits(Strict):
    max_pixels: int = Field(50_000_000, ge=1, description="refuse images with more pixels (checked from the header)")
    max_bytes: int = Field(200_000_000, ge=1, description="refuse files larger than this (checked from the listing)")


class Job(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="job name, recorded in run records")
    mode: Literal["incremental", "retry-errors", "overwrite"] = Field(
        "incremental",
        description="incremental: skip inputs already done by this pipeline; retry-errors: only inputs that failed; overwrite: all",
    )
    input: InputSpec = Field(description="what to read")
    output: OutputSpec = Field(description="where images, manifest/ and _darkroom/ go")
    steps: list[StepSpec] = Field(min_length=1, description="models applied in order to each image")
    resources: Resources = Field(default_factory=Resources, description="actors, GPUs, CPUs, batching, sharding")
    limits: Limits = Field(default_factory=Limits, description="per-input limits, checked before decoding")

    def fingerprint(self, registry: Registry) -> str:
        """Digest of everything that decides an output's pixels (steps, weights, format)."""
        steps = []
        for step in self.steps:
            weights = registry.get(step.model).weights_sha256(step.params)
            steps.append({"model": step.model, "params": step.params, "weights_sha256": weights})
        blob = json.dumps({"steps": steps, "format": self.output.format, "quality": self.output.quality}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


class JobError(ValueError):
    """A job file that cannot be used; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


def _line_of(node: yaml.Node | None, loc: tuple) -> int | None:
    """1-based line of the YAML node at ``loc`` (the deepest existing ancestor's line)."""
    line = node.start_mark.line + 1 if node is not None else None
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if k.value == key), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
        else:
            node = None
        if node is None:
            break
        line = node.start_mark.line + 1
    return line


def _where(source: str, root: yaml.Node | None, loc: tuple) -> str:
    line = _line_of(root, loc)
    field = ".".join(str(p) for p in loc) or "(top level)"
    return f"{source}:{line}: {field}" if line else f"{source}: {field}"


def _step_problems(steps: Any, registry: Registry, source: str, root: yaml.Node | None) -> list[str]:
    """Model names and params, checked against the registry (structure is pydantic's job)."""
    problems: list[str] = []
    for i, step in enumerate(steps if isinstance(steps, list) else []):
        if not isinstance(step, dict) or not isinstance(step.get("model"), str):
            continue
        try:
            entry = registry.get(step["model"])
        except UnknownModelError as exc:
            problems.append(f"{_where(source, root, ('steps', i, 'model'))}: {exc}")
            continue
        params = step.get("params") or {}
        if not isinstance(params, dict):
            continue
        try:
            entry.validate_params(params)
        except ValidationError as exc:
            for err in exc.errors():
                loc = ("steps", i, "params", *err["loc"])
                msg = "unknown param" if err["type"] == "extra_forbidden" else err["msg"]
                problems.append(f"{_where(source, root, loc)}: {msg}")
    return problems


def parse_job(data: Any, registry: Registry, source: str = "<job>", root: yaml.Node | None = None) -> Job:
    """Validate a job given as plain data. Raises JobError naming every bad field."""
    if not isinstance(data, dict):
        raise JobError([f"{source}: expected a mapping at the top level"])
    problems = []
    job = None
    try:
        job = Job.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if not str(p).startswith("function-"))
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            problems.append(f"{_where(source, root, loc)}: {msg}")
    problems += _step_problems(data.get("steps"), registry, source, root)
    if problems or job is None:
        raise JobError(problems)
    return job


def load_job(path: str | Path, registry: Registry, overrides: dict[str, str] | None = None) -> Job:
    """Read and validate a job file; ``overrides`` maps dotted fields (``input.uri``) to values."""
    source = str(path)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise JobError([f"{source}: cannot read job file ({exc.strerror})"]) from None
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise JobError([f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})"]) from None
    for dotted, value in (overrides or {}).items():
        if not isinstance(data, dict):
            break
        node = data
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return parse_job(data, registry, source, root)
