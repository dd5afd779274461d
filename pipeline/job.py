"""Job files: the YAML schema (pydantic), loading, overrides, and field-naming errors.

Validation happens here, at the edge: a job that loads is structurally sound, names only
registered models with valid params, and carries no inline secrets.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import string
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import Resolver
from yaml.scanner import Scanner

from models import Registry
from models.registry import UnknownModelError
from pipeline.storage import has_credentials

try:  # libyaml's event parser: the same events as PyYAML's Python parser, many times faster
    from yaml.cyaml import CParser as _CParser

    _EVENT_SOURCE: tuple = (_CParser,)
except ImportError:
    _CParser = None
    _EVENT_SOURCE = (Reader, Scanner, Parser)

MAX_JOB_FILE_BYTES = 64 * 1024  # a job file is a few KB; the cap bounds the parser's time and memory
MAX_YAML_VALUES = 10_000  # YAML values once aliases are expanded; a job has a few hundred
MAX_YAML_DEPTH = 32  # nesting levels (a mapping's key and value count as one)
GENERATION_TASK = "generation"  # registry task of models that make images instead of transforming them
CAPTIONING_TASK = "captioning"  # registry task of models whose result is text (the manifest's caption column)
SECRET_KEYS = {
    "key",
    "secret",
    "token",
    "password",
    "passwd",
    "aws_access_key_id",
    "aws_secret_access_key",
    "aws_session_token",
    "secret_access_key",
    "access_key",
    "account_key",
    "sas_token",
    "connection_string",
    "credential",
    "credentials",
    "client_secret",
    "private_key",
    "api_key",
}
GCS_TOKEN_METHODS = {"anon", "google_default", "cloud", "cache", "browser"}  # gcsfs `token:` values naming no secret
# Besides the names above: any name with one of these words, or ending in "key" (SSECustomerKey).
_SECRET_WORDS = {"secret", "secrets", "token", "password", "passwd", "credential", "credentials", "sas"}


def is_secret_key(name: str) -> bool:
    """Whether a storage_options key names a credential, at any depth and in any spelling:
    ``aws_secret_access_key``, ``sas-token``, ``SSECustomerKey``, ``client_secret``, s3fs's ``key``/``secret``."""
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower().replace("-", "_").split("_")
    return "_".join(words) in SECRET_KEYS or bool(_SECRET_WORDS.intersection(words)) or words[-1] == "key"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


CREDENTIALS_IN_JOB = "credentials do not belong in a job file; use the environment / a profile"


def secret_paths(value: Any, keys: bool = True) -> list[tuple]:
    """Paths (tuples of keys and indices) under ``value`` (nested dicts and lists) whose key names a
    credential (if ``keys``) or whose string holds one (a URL with user:password@ or a signed query)."""
    if isinstance(value, dict):
        found = []
        for k, v in value.items():
            if keys and is_secret_key(str(k)) and not (k == "token" and v in GCS_TOKEN_METHODS):
                found.append((k,))
            else:
                found += [(k, *p) for p in secret_paths(v, keys)]
        return found
    if isinstance(value, list):
        return [(i, *p) for i, v in enumerate(value) for p in secret_paths(v, keys)]
    return [()] if isinstance(value, str) and has_credentials(value) else []


def _no_inline_secrets(options: dict[str, Any]) -> dict[str, Any]:
    """Credentials anywhere in storage_options (``client_kwargs.aws_secret_access_key``) would be
    written into run records and printed by ``darkroom runs``: refused (parse_job names each path)."""
    found = secret_paths(options)
    if found:
        raise ValueError(f"{CREDENTIALS_IN_JOB} ({'.'.join(map(str, found[0]))})")
    return options


def _no_credentials_in_uri(uri: str) -> str:
    """A URI with user:password@ or a signed URL's signature or token would be recorded in run
    records: refused."""
    if has_credentials(uri):
        raise ValueError(
            "credentials do not belong in a URI (user:password@, a signed URL's signature or token); "
            "use the environment / a profile"
        )
    return uri


MASK_PLACEHOLDERS = ("stem", "name")
LIST_FILE_EXTENSIONS = (".parquet", ".csv", ".jsonl", ".ndjson")


def is_list_file(uri: str) -> bool:
    """Whether ``input.uri`` names a list file (a table of inputs) rather than a prefix to list."""
    return uri.lower().endswith(LIST_FILE_EXTENSIONS)


def _mask_pattern(pattern: str | None) -> str | None:
    """A mask file pattern: relative to the image's folder, with {stem} and/or {name}."""
    if pattern is None:
        return None
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(pattern) if f is not None]
    except ValueError as exc:
        raise ValueError(f"not a valid pattern ({exc})") from None
    unknown = sorted({f for f in fields if f not in MASK_PLACEHOLDERS})
    if unknown:
        raise ValueError(
            f"unknown placeholder(s) {', '.join('{' + f + '}' for f in unknown)}; use {{stem}} or {{name}}"
        )
    if not fields:
        raise ValueError("needs {stem} or {name}, e.g. {stem}_mask.png: each image has its own mask")
    if re.fullmatch(r"\{(stem|name)\}(\.[^./{}]*)?", pattern):
        raise ValueError("would name the images themselves; add a suffix or a folder, e.g. {stem}_mask.png")
    parts = pattern.split("/")
    if "://" in pattern or pattern.startswith("/") or "\\" in pattern or any(p in ("", ".", "..") for p in parts):
        raise ValueError("must be a path relative to the image's folder, without . or .. segments")
    return pattern


class InputSpec(Strict):
    uri: str = Field(
        description="prefix, glob (s3://b/**/*.jpg) or list file (.parquet/.csv/.jsonl with a `uri` column, optional "
        "`mask_uri`)"
    )
    mask: str | None = Field(
        None,
        description="inpainting masks: a file next to each image, e.g. `{stem}_mask.png` ({stem}: the image's name "
        "without "
        "extension, {name}: with it; a subfolder such as `masks/{stem}.png` works too); nonzero pixel = hole. "
        "Files matching the pattern are never inputs. A list file's `mask_uri` column takes precedence",
    )
    storage_options: dict[str, Any] = Field(default_factory=dict, description="passed to fsspec")

    _check_secrets = field_validator("storage_options")(_no_inline_secrets)
    _check_uri = field_validator("uri")(_no_credentials_in_uri)
    _check_mask = field_validator("mask")(_mask_pattern)


class OutputSpec(Strict):
    uri: str = Field(description="prefix that receives images, manifest/ and _darkroom/")
    format: Literal["png", "jpeg", "webp", "same"] = Field(
        "png", description="written format; same = the input's (BMP → png)"
    )
    quality: int = Field(95, ge=1, le=100, description="JPEG/WebP quality")
    metadata: bool = Field(
        True,
        description="copy the input's EXIF and XMP (camera, date, GPS, …) to the output; the orientation tag is "
        "dropped, as outputs are upright",
    )
    caption_file: Literal["none", "txt", "json"] = Field(
        "none",
        description="with a captioning step: also write each caption beside the outputs, as images/<name>.txt "
        "(the text) or images/<name>.json (input, caption, model, weights); the manifest's caption column always "
        "has it",
    )
    storage_options: dict[str, Any] = Field(default_factory=dict, description="passed to fsspec")

    _check_secrets = field_validator("storage_options")(_no_inline_secrets)
    _check_uri = field_validator("uri")(_no_credentials_in_uri)


class ActorRange(Strict):
    min: int = Field(1, ge=1)
    max: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> ActorRange:
        if self.max < self.min:
            raise ValueError("max must be ≥ min")
        return self


def _actor_range(value: Any) -> Any:
    return {"min": value, "max": value} if isinstance(value, int) and not isinstance(value, bool) else value


# What a job file may write for `actors` (the JSON schema shows both forms): a number or {min, max}.
ActorsInput = Annotated[int, Field(ge=1)] | ActorRange


class StepResources(Strict):
    """Per-step overrides of the job's actor resources (each step has its own actor pool)."""

    actors: ActorRange | None = Field(None, description="actors for this step: a number, or {min, max}")
    gpus_per_actor: float | None = Field(None, ge=0, description="fractions share a GPU, e.g. 0.25 = 4 actors per GPU")
    cpus_per_actor: float | None = Field(None, gt=0)
    threads_per_actor: int | None = Field(None, ge=1)

    _range = field_validator("actors", mode="before", json_schema_input_type=ActorsInput | None)(_actor_range)


class StepSpec(Strict):
    model: str = Field(description="a registry name (see `darkroom models`)")
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="the model's params (`darkroom models NAME` lists them; docs/job-reference.md#model-params), "
        "e.g. {scale: 2}",
    )
    resources: StepResources | None = Field(None, description="this step's actor pool, if not the job's")
    outscale: float | None = Field(
        None,
        gt=0,
        le=16,
        description="resize this step's output to its input size × outscale (Lanczos-3), e.g. 2 after a ×4 model; "
        "null = the model's own scale",
    )


class PromptRow(Strict):
    """One inline prompt of a text-to-image job; unset fields take the model's params (seed: the job's)."""

    prompt: str = Field(min_length=1, description="the text of the images")
    negative_prompt: str | None = Field(None, description="what the images should not show (with guidance > 1)")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="this prompt's seed; null = generate.seed")
    guidance_scale: float | None = Field(None, ge=0, le=50, description="null = the model's params")
    steps: int | None = Field(None, ge=1, le=1000, description="null = the model's params")


class GenerateSpec(Strict):
    """A generation job: ``samples`` images from one generative model, sample ``i`` seeded by (seed, i)."""

    model: str = Field(description="a registry name of task `generation` (see `darkroom models`)")
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="the model's params (`darkroom models NAME` lists them), e.g. {sampler: ddim, steps: 50}",
    )
    samples: int | None = Field(
        None,
        ge=1,
        description="how many images: sample indices start … start + samples - 1 (unset with `prompts`: every "
        "prompt × samples_per_prompt)",
    )
    prompts: str | list[str | PromptRow] | None = Field(
        None,
        description="text-to-image: a list file (Parquet/CSV/JSONL, any fsspec URI) with a `prompt` column and "
        "optional negative_prompt, seed, guidance_scale, steps (read with output.storage_options); or the prompts "
        "inline (strings or such rows)",
    )
    samples_per_prompt: int = Field(1, ge=1, description="text-to-image: images per prompt, each with its own seed")
    seed: int = Field(
        ge=0,
        le=2**63 - 1,
        description="the job seed; sample i draws all its noise from a generator seeded by (seed, i)",
    )
    start: int = Field(0, ge=0, description="first sample index (a later job can extend a range without redoing it)")
    class_label: int | None = Field(
        None, ge=0, description="class of every sample, for class-conditional models (refused for unconditional ones)"
    )

    @field_validator("prompts")
    @classmethod
    def _prompts_uri(cls, prompts: str | list | None) -> str | list | None:
        """A prompts list file's URI is recorded in run records like input.uri: no credentials in it."""
        return _no_credentials_in_uri(prompts) if isinstance(prompts, str) else prompts

    @model_validator(mode="after")
    def _prompts_or_samples(self) -> GenerateSpec:
        if self.prompts is None:
            if self.samples is None:
                raise ValueError("`samples` is required (or `prompts`, for a text-to-image model)")
            if self.samples_per_prompt != 1:
                raise ValueError("`samples_per_prompt` goes with `prompts`")
        else:
            if self.samples is not None or self.start:
                raise ValueError(
                    "with `prompts`, the samples are prompts × samples_per_prompt: leave samples/start out"
                )
            if isinstance(self.prompts, list) and not self.prompts:
                raise ValueError("`prompts` is empty")
            if isinstance(self.prompts, str) and not is_list_file(self.prompts):
                raise ValueError(f"`prompts` must be a list or a list file ({', '.join(LIST_FILE_EXTENSIONS)})")
        return self

    @property
    def uri_prefix(self) -> str:
        """Sample ``i``'s input_uri is ``<uri_prefix><i>``."""
        return f"generate://{self.model}/{self.seed}/"


class Resources(Strict):
    actors: ActorRange = Field(
        default_factory=ActorRange,
        description="model actors per step: a number, or {min, max} to grow while shards wait (one per GPU when GPUs "
        "exist)",
    )
    gpus_per_actor: float = Field(0, ge=0, description="GPUs each actor reserves; 0 runs on CPU; fractions share a GPU")
    cpus_per_actor: float = Field(1, gt=0, description="CPUs each actor reserves in Ray's accounting")
    threads_per_actor: int | None = Field(
        None,
        ge=1,
        description="torch threads of each actor; default: on a one-node cluster that cannot grow, the node's CPUs "
        "shared among the CPU actors (at least cpus_per_actor), else cpus_per_actor rounded up. On CPU, threads beyond "
        "cpus_per_actor are measured against cpus_per_actor as the run goes and kept only while faster",
    )
    cpus_per_task: float = Field(
        0.5,
        gt=0,
        description="CPUs each shard task reserves (read, decode, encode, write); a task waits for the model between "
        "its "
        "decoding and encoding, so two per core keep an actor fed (docs/benchmarks.md)",
    )
    batch_size: int = Field(4, ge=1, description="images per forward pass")
    precision: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        "auto",
        description="number format the models compute in: auto = fp16 on a CUDA GPU, fp32 on CPU; fp16 / bf16 run "
        "only the models that declare them safe (the others in fp32), on a GPU or the CPU; their outputs differ from "
        "fp32 by a few 8-bit levels (docs/architecture.md#the-gpu-path)",
    )
    tile: int = Field(512, ge=0, description="tile size in input pixels for the models; 0 = whole images")
    tile_pad: int | None = Field(
        None,
        ge=0,
        description="context pixels around each tile (seams are feathered); null = each model's own, derived from its "
        "receptive field so that tiled output equals untiled within one 8-bit level",
    )
    shard_size: int = Field(64, ge=1, description="inputs per shard (the unit of commit)")
    max_inflight_shards: int | None = Field(None, ge=1, description="shards in flight at once; default 2 × max actors")
    encode_in_actor_above: int | None = Field(
        256 * 2**20,
        ge=0,
        description="outputs whose pixels take more bytes than this are encoded by the last step's actor, which "
        "sends the "
        "file back instead of the pixels: one copy of a big image less in the actor's and the object store's memory, "
        "while "
        "the actor's device waits for the encoder; null = never",
    )

    _range = field_validator("actors", mode="before", json_schema_input_type=ActorsInput)(_actor_range)

    def for_step(self, step: StepSpec) -> Resources:
        """These resources with the step's own overrides applied."""
        own = step.resources.model_dump(exclude_none=True) if step.resources else {}
        return self.model_copy(update={k: (ActorRange(**v) if k == "actors" else v) for k, v in own.items()})


class Limits(Strict):
    max_pixels: int = Field(50_000_000, ge=1, description="refuse images with more pixels (checked from the header)")
    max_aspect_ratio: float = Field(
        1000,
        ge=1,
        description="refuse images whose longer side exceeds this many times the shorter (checked from the header): "
        "degenerate strips such as 1×1,000,000 would spend minutes in the model as thousands of mostly-context tiles",
    )
    max_bytes: int = Field(200_000_000, ge=1, description="refuse files larger than this (checked from the listing)")
    transient_retry_seconds: float = Field(
        60,
        ge=0,
        description="how long a shard task retries transient storage errors (connection refused or reset, timeouts, "
        "5xx, throttling) on its inputs and outputs, with exponential backoff and jitter, before recording them as "
        "`transient` rows (which --mode retry-errors runs again); one clock per shard task, so a long outage costs "
        "it about this much waiting in all",
    )
    read_timeout_seconds: float = Field(
        300,
        gt=0,
        description="the longest reading one input (each try), or decoding it, may take before it becomes a "
        "`timeout` row (stage read or decode) and the run goes on. 300 s reads a max_bytes (200 MB) file at under "
        "1 MB/s and decodes a max_pixels image on a slow, shared CPU, while a stalled connection is still cut",
    )
    model_timeout_seconds: float = Field(
        1800,
        gt=0,
        description="the longest a shard task waits for a batch's model results (including its wait behind the "
        "actor's queued batches) before its images become `timeout` rows (stage model) and the step's actors are "
        "restarted. 1800 s leaves room for a batch of max_pixels images through a ×4 model on CPU, tiled",
    )


class Job(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="job name, recorded in run records")
    mode: Literal["incremental", "retry-errors", "overwrite"] = Field(
        "incremental",
        description="incremental: skip inputs already done by this pipeline; retry-errors: only inputs that failed; "
        "overwrite: all",
    )
    input: InputSpec | None = Field(None, description="what to read (restoration jobs, with `steps`)")
    output: OutputSpec = Field(description="where images, manifest/ and _darkroom/ go")
    steps: list[StepSpec] | None = Field(
        None, min_length=1, description="models applied in order to each image (restoration jobs)"
    )
    generate: GenerateSpec | None = Field(
        None, description="what to generate (generation jobs, instead of `input` + `steps`)"
    )
    resources: Resources = Field(default_factory=Resources, description="actors, GPUs, CPUs, batching, sharding")
    limits: Limits = Field(default_factory=Limits, description="per-input limits, checked before decoding")

    @model_validator(mode="after")
    def _one_kind(self) -> Job:
        """A job restores (``input`` + ``steps``) or generates (``generate``); parse_job reports
        these problems at the field concerned (see ``_kind_field``)."""
        if self.generate is not None:
            if self.input is not None or self.steps is not None:
                raise ValueError("a job has `generate` (generation) or `input` + `steps` (restoration), not both")
        elif self.input is None and self.steps is None:
            raise ValueError("a job needs `input` + `steps` (restoration) or `generate` (generation)")
        elif self.input is None:
            raise ValueError("required with `steps` (what to read); a generation job has `generate` instead")
        elif self.steps is None:
            raise ValueError("required with `input` (the models to apply); a generation job has `generate` instead")
        return self

    @property
    def source_uri(self) -> str:
        """What a run reads, as run records show it: ``input.uri``, or for a generation job
        ``generate://<model>/<seed>/<start>-<last index>``."""
        if self.generate is not None:
            g = self.generate
            if g.prompts is not None:
                return f"{g.uri_prefix}prompts"
            return f"{g.uri_prefix}{g.start}-{g.start + g.samples - 1}"
        return self.input.uri

    def fingerprint(self, registry: Registry) -> str:
        """Digest of everything that decides an output's pixels (steps or generator, weights, the
        model's config files such as a diffusers folder's scheduler config, seed, class label,
        format) and which files a run writes (a caption file). The sample range is not part of it:
        samples that another run of the same generator and seed committed count as done."""

        def configs(entry, params) -> dict:  # only where a model has such files: other fingerprints stay as they were
            digest = entry.configs_sha256(params)
            return {"configs_sha256": digest} if digest is not None else {}

        if self.generate is not None:
            g = self.generate
            entry = registry.get(g.model)
            what: dict = {
                "generate": {
                    "model": g.model,
                    "params": g.params,
                    "weights_sha256": entry.weights_sha256(g.params),
                    "seed": g.seed,
                    "class_label": g.class_label,
                }
                | configs(entry, g.params)
            }
        else:
            steps = []
            for step in self.steps:
                entry = registry.get(step.model)
                weights = entry.weights_sha256(step.params)
                outscale = {"outscale": step.outscale} if step.outscale is not None else {}
                steps.append(
                    {"model": step.model, "params": step.params, "weights_sha256": weights}
                    | outscale
                    | configs(entry, step.params)
                )
            what = {"steps": steps} | ({"mask": self.input.mask} if self.input.mask else {})
            if self.output.caption_file != "none":  # only then: other fingerprints stay as they were
                what["caption_file"] = self.output.caption_file
        blob = json.dumps(what | {"format": self.output.format, "quality": self.output.quality}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


class ResourcesError(ValueError):
    """The job's resources can never be placed on the cluster it runs on; the message is one
    line naming the field to change. (Without this check such a run waits forever.)"""


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


def models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models a field's annotation holds (``X``, ``X | None``, ``list[X]`` → ``[X]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in models_in(arg)]


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """The field names allowed where the last key of ``loc`` (a pydantic error location under
    ``model``) was written; empty where ``loc`` leads into something other than a model."""
    models = [model]
    for key in loc[:-1]:
        if isinstance(key, int):
            continue  # a list item: the list's models
        inner = [m for cur in models if key in cur.model_fields for m in models_in(cur.model_fields[key].annotation)]
        if inner:
            models = inner
        elif key in {m.__name__ for m in models}:
            models = [m for m in models if m.__name__ == key]  # pydantic names the union member it tried
        else:
            return []
    return sorted({name for m in models for name in m.model_fields})


def did_you_mean(key: Any, allowed: list[str]) -> str:
    """``"; did you mean 'scale'?"`` when ``allowed`` holds a name close to ``key``, else ``""``."""
    close = difflib.get_close_matches(str(key), allowed, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _unknown(kind: str, model: type[BaseModel], loc: tuple) -> str:
    """The message of an unknown key at ``loc`` (under ``model``), with the close name if there is one."""
    return f"unknown {kind}{did_you_mean(loc[-1], _allowed_keys(model, loc))}" if loc else f"unknown {kind}"


def _where(source: str, root: yaml.Node | None, loc: tuple) -> str:
    line = _line_of(root, loc)
    field = ".".join(str(p) for p in loc) or "(top level)"
    return f"{source}:{line}: {field}" if line else f"{source}: {field}"


def _step_problems(steps: Any, registry: Registry, source: str, root: yaml.Node | None) -> list[str]:
    """Model names and params, checked against the registry (structure is pydantic's job)."""
    problems: list[str] = []
    captioning: list[int] = []  # steps whose model captions
    for i, step in enumerate(steps if isinstance(steps, list) else []):
        if not isinstance(step, dict) or not isinstance(step.get("model"), str):
            continue
        try:
            entry = registry.get(step["model"])
        except UnknownModelError as exc:
            problems.append(f"{_where(source, root, ('steps', i, 'model'))}: {exc}")
            continue
        if entry.task == GENERATION_TASK:
            problems.append(
                f"{_where(source, root, ('steps', i, 'model'))}: {entry.name} generates images: use it under "
                "`generate:`, not in `steps`"
            )
            continue
        if entry.task == CAPTIONING_TASK:
            captioning.append(i)
        problems += _param_problems(entry, step.get("params"), ("steps", i, "params"), source, root)
    if len(captioning) > 1:
        problems.append(
            f"{_where(source, root, ('steps', captioning[1], 'model'))}: a job has at most one captioning step "
            f"(steps {', '.join(str(i) for i in captioning)} caption): a row has one caption column"
        )
    return problems


def _mask_problems(data: dict, registry: Registry, source: str, root: yaml.Node | None) -> list[str]:
    """A step whose model needs a mask needs a mask source: ``input.mask`` or a list file
    (whose ``mask_uri`` column is only seen when it is read)."""
    spec = data.get("input")
    if not isinstance(spec, dict) or spec.get("mask") or not isinstance(spec.get("uri"), str):
        return []
    if is_list_file(spec["uri"]):
        return []
    problems = []
    for i, step in enumerate(data.get("steps") if isinstance(data.get("steps"), list) else []):
        try:
            entry = (
                registry.get(step["model"]) if isinstance(step, dict) and isinstance(step.get("model"), str) else None
            )
        except UnknownModelError:
            continue
        if entry is not None and entry.needs_mask:
            problems.append(
                f"{_where(source, root, ('steps', i, 'model'))}: {entry.name} fills holes given a mask: set input.mask "
                '(e.g. "{stem}_mask.png") or use a list file with a mask_uri column'
            )
    return problems


def _param_problems(entry, params: Any, loc: tuple, source: str, root: yaml.Node | None) -> list[str]:
    if not isinstance(params or {}, dict):
        return []  # pydantic reports the type
    try:
        entry.validate_params(params or {})
    except ValidationError as exc:
        return [
            f"{_where(source, root, (*loc, *err['loc']))}: "
            f"{_unknown('param', entry.params, err['loc']) if err['type'] == 'extra_forbidden' else err['msg']}"
            for err in exc.errors()
        ]
    return []


def _generate_problems(data: dict, registry: Registry, source: str, root: yaml.Node | None) -> list[str]:
    """The generator's name, task, params and class label, checked against the registry."""
    spec = data.get("generate")
    if not isinstance(spec, dict) or not isinstance(spec.get("model"), str):
        return []
    where = lambda *loc: _where(source, root, ("generate", *loc))  # noqa: E731
    try:
        entry = registry.get(spec["model"])
    except UnknownModelError as exc:
        return [f"{where('model')}: {exc}"]
    if entry.task != GENERATION_TASK:
        known = ", ".join(e.name for e in registry.entries() if e.task == GENERATION_TASK) or "none registered"
        return [
            f"{where('model')}: {entry.name} is a {entry.task} model, not a generation model (generation models: "
            f"{known})"
        ]
    problems = _param_problems(entry, spec.get("params"), ("generate", "params"), source, root)
    if entry.prompted and spec.get("prompts") is None:
        problems.append(f"{where('model')}: {entry.name} is a text-to-image model: it needs `prompts`")
    elif not entry.prompted and spec.get("prompts") is not None:
        problems.append(f"{where('prompts')}: {entry.name} takes no prompts (text-to-image models do)")
    label = spec.get("class_label")
    if isinstance(label, int) and entry.num_classes == 0:
        problems.append(f"{where('class_label')}: {entry.name} is unconditional: it takes no class_label")
    elif isinstance(label, int) and entry.num_classes and label >= entry.num_classes:
        problems.append(
            f"{where('class_label')}: must be < {entry.num_classes} ({entry.name} has {entry.num_classes} classes)"
        )
    output = data.get("output")
    if isinstance(output, dict) and output.get("format") == "same":
        fmt_loc = _where(source, root, ("output", "format"))
        problems.append(
            f"{fmt_loc}: `same` follows an input's format; a generation job has none (use png, jpeg or webp)"
        )
    return problems


def _secret_problems(data: dict, source: str, root: yaml.Node | None) -> list[str]:
    """One line per credential in the job: a credential-named key at any depth of input's or
    output's storage_options, or a URL holding user:password@ or a signed query anywhere in
    storage_options or in a step's or the generator's params (e.g. a weights URI)."""
    places: list[tuple[tuple, Any, bool]] = [
        ((side, "storage_options"), (data.get(side) or {}).get("storage_options"), True)
        for side in ("input", "output")
        if isinstance(data.get(side), dict)
    ]
    steps = data.get("steps")
    for i, step in enumerate(steps if isinstance(steps, list) else []):
        if isinstance(step, dict):
            places.append((("steps", i, "params"), step.get("params"), False))
    if isinstance(data.get("generate"), dict):
        places.append((("generate", "params"), data["generate"].get("params"), False))
    return [
        f"{_where(source, root, (*loc, *path))}: {CREDENTIALS_IN_JOB}"
        for loc, value, keys in places
        if isinstance(value, dict)
        for path in secret_paths(value, keys)
    ]


def _kind_field(data: dict) -> tuple:
    """Where a problem found by Job._one_kind is reported: the field that is extra or missing."""
    if "generate" in data:
        return ("generate",)
    if "input" in data or "steps" in data:
        return ("steps",) if "input" in data else ("input",)
    return ()


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
                msg = _unknown("key", Job, loc)
            elif not loc and err["type"] == "value_error":  # Job._one_kind
                loc = _kind_field(data)
            elif msg.startswith(CREDENTIALS_IN_JOB):
                continue  # _secret_problems names each one at its own path and line
            problems.append(f"{_where(source, root, loc)}: {msg}")
    problems += _secret_problems(data, source, root)
    problems += _step_problems(data.get("steps"), registry, source, root)
    problems += _mask_problems(data, registry, source, root)
    problems += _generate_problems(data, registry, source, root)
    if problems or job is None:
        raise JobError(problems)
    return job


def load_job(path: str | Path, registry: Registry, overrides: dict[str, str] | None = None) -> Job:
    """Read and validate a job file; ``overrides`` maps dotted fields (``input.uri``) to values.

    A job file is hostile input too: it is read only up to MAX_JOB_FILE_BYTES, must be UTF-8,
    and its YAML may not repeat a key, nest deeper than MAX_YAML_DEPTH or expand (through
    aliases) to more than MAX_YAML_VALUES values; each is one JobError line."""
    source = str(path)
    data, root = _compose(_read_text(path, source), source)
    for dotted, value in (overrides or {}).items():
        if not isinstance(data, dict):
            break
        node = data
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return parse_job(data, registry, source, root)


def _read_text(path: str | Path, source: str) -> str:
    """The job file's text: refused past MAX_JOB_FILE_BYTES (read no further) or if not UTF-8."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_JOB_FILE_BYTES + 1)
    except OSError as exc:
        raise JobError([f"{source}: cannot read job file ({exc.strerror})"]) from None
    if len(raw) > MAX_JOB_FILE_BYTES:
        raise JobError([f"{source}: larger than {MAX_JOB_FILE_BYTES // 1024} KiB; a job file is a few KB"])
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JobError([f"{source}: not UTF-8 text (byte {exc.start}: {exc.reason})"]) from None


def _compose(text: str, source: str) -> tuple[Any, yaml.Node | None]:
    """(data, root node) of the one YAML document in ``text``, parsed once; the node graph is
    checked (``_check_nodes``) before any Python object is built from it."""
    loader = _JobLoader(text, source)
    try:
        root = loader.get_single_node()
        if root is None:
            return None, None
        _check_nodes(root, source)
        return loader.construct_document(root), root
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise JobError([f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})"]) from None
    finally:
        loader.dispose()


class _JobLoader(Composer, *_EVENT_SOURCE, SafeConstructor, Resolver):
    """PyYAML's safe loading, composed in Python over libyaml's events (where PyYAML has libyaml),
    stopping past MAX_YAML_VALUES nodes or MAX_YAML_DEPTH levels: parsing costs at most that many
    nodes whatever the file holds (libyaml's own composer builds the whole file first)."""

    def __init__(self, text: str, source: str):
        for base in _EVENT_SOURCE:
            base.__init__(self, *([text] if base in (_CParser, Reader) else []))
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)
        self.source, self.nodes, self.depth = source, 0, 0

    def compose_node(self, parent, index):
        self.nodes += 1
        if self.nodes > MAX_YAML_VALUES or self.depth >= MAX_YAML_DEPTH:
            line = self.peek_event().start_mark.line + 1
            what = f"more than {MAX_YAML_VALUES} values" if self.nodes > MAX_YAML_VALUES else "nested too deeply"
            raise JobError(
                [f"{self.source}:{line}: {what} (at most {MAX_YAML_VALUES} values, {MAX_YAML_DEPTH} levels)"]
            )
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _children(node: yaml.Node) -> list[tuple[Any, yaml.Node]]:
    """(path part, child node) of a collection node, in document order; a mapping's keys count."""
    if isinstance(node, yaml.SequenceNode):
        return list(enumerate(node.value))
    if isinstance(node, yaml.MappingNode):
        return [(k.value if isinstance(k, yaml.ScalarNode) else "?", n) for k, v in node.value for n in (k, v)]
    return []


def _check_nodes(root: yaml.Node, source: str) -> None:
    """Refuse duplicate mapping keys, nesting deeper than MAX_YAML_DEPTH, recursive aliases and
    more than MAX_YAML_VALUES values once aliases are expanded (a billion-laughs bomb is a few
    hundred bytes). An aliased node is one object in the graph, so the walk visits it once
    (sizes are memoised): linear in the file, without recursion."""

    def where(node: yaml.Node, path: tuple) -> str:
        return f"{source}:{node.start_mark.line + 1}: {'.'.join(map(str, path)) or '(top level)'}"

    values: dict[int, int] = {}  # id(node) → values it stands for once aliases are expanded
    open_nodes: set[int] = set()  # being walked: an alias to one of them is a cycle
    stack: list[tuple[yaml.Node, tuple, bool]] = [(root, (), False)]
    while stack:
        node, path, walked = stack.pop()
        if walked:
            open_nodes.discard(id(node))
            values[id(node)] = 1 + sum(values[id(child)] for _, child in _children(node))
            if values[id(node)] > MAX_YAML_VALUES:
                raise JobError(
                    [f"{where(node, path)}: more than {MAX_YAML_VALUES} values once aliases are expanded (refused)"]
                )
            continue
        if id(node) in values:
            continue
        if id(node) in open_nodes:
            raise JobError([f"{where(node, path)}: recursive alias (refused)"])
        if len(path) > MAX_YAML_DEPTH:
            raise JobError([f"{where(node, path)}: nested deeper than {MAX_YAML_DEPTH} levels"])
        if isinstance(node, yaml.MappingNode):
            first: dict[tuple, int] = {}
            for key, _ in node.value:
                if isinstance(key, yaml.ScalarNode):
                    line = first.setdefault((key.tag, key.value), key.start_mark.line + 1)
                    if line != key.start_mark.line + 1:
                        raise JobError([f"{where(key, (*path, key.value))}: duplicate key (first at line {line})"])
        open_nodes.add(id(node))
        stack.append((node, path, True))
        stack.extend((child, (*path, part), False) for part, child in reversed(_children(node)))
