"""Restoration on Ray: the model actor that runs a job's steps, and the shard task that reads inputs and writes outputs.

- ``ModelActor`` (one per GPU when GPUs are requested) loads a step's model once and runs
  batches through it; Ray restarts a dead actor (pipeline.driver retries its calls).
- ``process_shard`` is a CPU task: for each batch of its shard it reads and decodes,
  sends pixels to its chain of actors (the least loaded when the driver submitted the shard),
  and while they work decodes the next batch; then it
  encodes and writes outputs and finally commits the shard's manifest part atomically.
  Transient storage errors are retried within ``limits.transient_retry_seconds`` (one
  budget per task); a read or decode is cut after ``limits.read_timeout_seconds`` and a
  batch after ``limits.model_timeout_seconds``, so one hung input cannot hang the run.
  Outputs larger than ``resources.encode_in_actor_above`` are encoded by the last actor
  instead (``Encoding``), which sends back the file rather than the pixels.
  Per-image failures become error rows; only infrastructure failures fail the task. A shard
  that failed SHARD_ATTEMPTS times runs each input as its own task (``_process_one``), so an
  input that keeps failing its shard (a model raising for it alone, a crash while encoding it)
  becomes an error row and the rest of the shard is committed.
- ``execute`` sizes one pool per step and hands the shards to pipeline.driver's loop
  (bounded in-flight work, shard retries).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial

import numpy as np
import ray
from ray.exceptions import OutOfMemoryError, RayTaskError, WorkerCrashedError

from models import Registry
from models.base import CaptionModel
from models.weights import WeightsError
from pipeline import driver, errors, images, runs, storage
from pipeline.cluster import check_resources, gpus_to_request, with_threads
from pipeline.driver import Clock, Pool, ShardContext, ShardResult, commit_shard, run_shards
from pipeline.inference import Captioner, Chain, Masked, Result, pick_device
from pipeline.job import CAPTIONING_TASK, Job, Limits, Resources
from pipeline.manifest import Stage, Status, fail, failed, failing_as
from pipeline.outputs import encode_output, take_result, write_caption, write_output
from pipeline.threads import actor_threads


@dataclass
class Encoding:
    """What the last step's actor needs to encode one output itself. An output whose pixels take
    more than ``above`` bytes comes back as its file (Result.encoded) instead of its pixels:
    Ray copies a returned array into the object store while the actor still holds it, so
    returning pixels costs the actor the output twice (2.64 × the output for a 6000×4000 photo
    through ×4; docs/benchmarks.md), and the file is a fraction of that.

    ``requested``: output.format; ``source_format``: the input's format (what `same` follows);
    ``alpha``: the input's H×W alpha plane (uint8/uint16) or None."""

    requested: str
    quality: int
    above: int
    source_format: str
    alpha: np.ndarray | None = None
    metadata: images.Metadata | None = None  # the input's EXIF/XMP, if output.metadata carries them


def _encode_here(result: Result, encoding: Encoding) -> None:
    """Replace ``result``'s pixels by their file, or by an encode error."""
    try:
        result.encoded = encode_output(
            result.pixels,
            encoding.alpha,
            encoding.requested,
            encoding.source_format,
            encoding.quality,
            encoding.metadata,
        )
    except Exception as exc:
        result.error, result.error_type, result.stage = str(exc) or repr(exc), type(exc).__name__, Stage.ENCODE
    result.pixels = None  # freed before Ray copies the result into the object store


# Restarted without limit: a dead actor (OOM, segfault, a node lost) comes back with its
# models; the calls it was running fail and are retried by the shard task (see pipeline.driver.infer).
# ready() runs in its own concurrency group (thread), so it answers while a batch computes:
# pipeline.driver.infer asks it before timing a batch, so an actor's start is not counted.
@ray.remote(max_restarts=-1, max_task_retries=0, concurrency_groups={"probe": 1})
class ModelActor(Clock):
    def __init__(self, registry: Registry, steps: list[dict], resources: Resources, want_gpu: bool):
        self.threads = actor_threads(resources.threads_per_actor, resources.cpus_per_actor, want_gpu)
        models = [registry.build(s["model"], s["params"]) for s in steps]
        for s, m in zip(steps, models):
            if s.get("weights_sha256") and m.weights_sha256 and m.weights_sha256 != s["weights_sha256"]:
                planned, now = s["weights_sha256"], m.weights_sha256
                raise WeightsError(
                    f"{s['model']}: weights changed since the run was planned (sha256 {planned}, now {now})"
                )
        device = pick_device(want_gpu)
        outscale = [s.get("outscale") for s in steps]
        if len(models) == 1 and isinstance(models[0], CaptionModel):
            self.chain = Captioner(models[0], device, resources.batch_size)
        else:
            self.chain = Chain(
                models, device, resources.batch_size, resources.tile, resources.tile_pad, outscale, resources.precision
            )
        self.start_clock()

    @ray.method(concurrency_group="probe")
    def ready(self) -> str:
        return str(self.chain.device)

    def infer(self, items: list, encodings: list[Encoding | None] | None = None) -> list[Result]:
        """items: H×W×C arrays, Masked images, or the previous step's Results (errors pass
        through; a Result carries its image's mask on). ``encodings`` (last step only): one per
        item, or None; outputs larger than their ``above`` come back encoded."""
        prior = [it if isinstance(it, Result) else None for it in items]
        todo = [i for i, p in enumerate(prior) if p is None or p.error is None]
        pixels = [items[i] if isinstance(items[i], np.ndarray) else items[i].pixels for i in todo]
        self.threads.start()
        started = time.perf_counter()
        with self.busy():
            outs = self.chain(pixels, [getattr(items[i], "known", None) for i in todo])
        self.threads.done(time.perf_counter() - started, sum(p.shape[0] * p.shape[1] for p in pixels))
        results = list(prior)
        for i, out in zip(todo, outs):
            if prior[i] is not None:
                out.seconds += prior[i].seconds
                out.caption = prior[i].caption if out.caption is None else out.caption
            results[i] = out
        for result, encoding in zip(results, encodings or []):
            if encoding is not None and result.pixels is not None and result.pixels.nbytes > encoding.above:
                _encode_here(result, encoding)
        return results


@dataclass
class RestorationContext(ShardContext):
    """ShardContext plus what a restoration shard task needs to read its inputs."""

    needs_mask: bool = False  # a step takes a mask: read each input's mask with it
    scale: float | None = None  # the chain's output size / input size; None: known only once the models load
    captions: bool = False  # a step captions: rows get its caption (and a caption file, if output.caption_file)
    writes_images: bool = True  # False when every step captions: nothing is encoded, the row holds the result

    def output_check(self) -> images.OutputCheck:
        """What each input's header is checked against, so an output no encoder can write fails at decode."""
        return images.OutputCheck(self.job.output.format, self.scale)


@dataclass
class _Work:
    row: dict
    rel_path: str
    decoded: images.Decoded | None = None
    known: np.ndarray | None = None  # H×W bool, True = known pixel; only when a step takes a mask

    def model_input(self):
        """What the first actor gets for this input: its pixels, with their mask if any."""
        return self.decoded.pixels if self.known is None else Masked(self.decoded.pixels, self.known)

    def encoding(self, job: Job) -> Encoding | None:
        """How the last actor encodes this input's output if it is large (None: never)."""
        above = job.resources.encode_in_actor_above
        if above is None:
            return None
        return Encoding(
            job.output.format, job.output.quality, above, self.decoded.format, self.decoded.alpha, self.metadata(job)
        )

    def metadata(self, job: Job) -> images.Metadata | None:
        """The EXIF/XMP this input's output carries (None when output.metadata is off)."""
        return self.decoded.metadata if job.output.metadata else None


def _base_row(ctx: RestorationContext, item: dict, shard: int, attempt: int) -> dict:
    return {
        "run_id": ctx.run_id,
        "shard": shard,
        "input_uri": storage.redact(item["input_uri"]),
        "input_size": item["size"],
        "input_etag": item["etag"],
        "input_mtime": item["mtime"],
        "mask_uri": storage.redact(item["mask_uri"]) if ctx.needs_mask and item.get("mask_uri") else None,
        "steps": ctx.steps_json,
        "models": ctx.models,
        "weights_sha256": ctx.weights_sha256,
        "model_details": ctx.model_details,
        "fingerprint": ctx.fingerprint,
        "attempt": attempt,
    }


def _load(ctx: RestorationContext, item: dict, shard: int, attempt: int, budget: storage.RetryBudget) -> _Work:
    """Read and decode one planned input; failures are recorded on the row. ``budget``: how
    long transient storage errors are retried (the shard task's)."""
    opts = ctx.job.input.storage_options
    limits = ctx.job.limits
    uri = item["input_uri"]
    row = _base_row(ctx, item, shard, attempt)
    work = _Work(row=row, rel_path=item["rel_path"])
    http = uri.lower().startswith(("http://", "https://"))  # a list file's URL, never seen by the planner
    explain = _explainer(uri, None if http else "input disappeared after planning")
    with failing_as(row, Stage.READ, explain):
        if row["input_size"] is None:  # list files may not carry sizes
            entry = storage.stat(uri, opts, budget)
            row.update(input_size=entry.size, input_etag=entry.etag, input_mtime=entry.mtime)
        if row["input_size"] > limits.max_bytes:
            raise images.ImageError(
                "too_large", f"{row['input_size']} bytes exceeds limits.max_bytes={limits.max_bytes}"
            )
        t0 = time.perf_counter()
        data = storage.read_bytes(uri, opts, budget, limits.read_timeout_seconds)
        t1 = time.perf_counter()
    if not failed(row):
        with failing_as(row, Stage.DECODE, explain):
            work.decoded = d = storage.within(
                limits.read_timeout_seconds,
                lambda: images.decode(
                    data, limits.max_pixels, max_aspect_ratio=limits.max_aspect_ratio, output=ctx.output_check()
                ),
                f"decode {storage.redact(uri)}",
            )
            row.update(t_read=t1 - t0, t_decode=time.perf_counter() - t1)
            row.update(width_in=d.width, height_in=d.height, mode_in=d.mode, format_in=d.format)
    if ctx.needs_mask and not failed(row):
        mask_uri = item.get("mask_uri")
        explain_mask = _explainer(mask_uri or "", f"no mask at {storage.redact(mask_uri or '')}", "mask_not_found")
        with failing_as(row, Stage.MASK, explain_mask):
            work.known = _load_mask(mask_uri, work.decoded, opts, limits, budget)
    if failed(row):
        work.decoded = work.known = None  # nothing goes to the models
    return work


def _explainer(uri: str, missing: str | None, not_found: str = "not_found"):
    """How ``_load`` names an exception: an ImageError by its own type, a storage failure as
    pipeline.errors names it (a missing file as ``not_found``, with ``missing`` as its message
    if given), anything else by its class (None)."""

    def explain(exc: Exception) -> tuple[str, str] | None:
        if isinstance(exc, images.ImageError):
            return exc.error_type, str(exc)
        named = errors.storage_error(exc, uri, missing)
        if named and named[0] == "not_found":
            return not_found, named[1]
        return named

    return explain


def _load_mask(
    uri: str | None, image: images.Decoded, storage_options: dict, limits: Limits, budget: storage.RetryBudget
) -> np.ndarray:
    """An input's mask as H×W bool, True = known pixel (the model contract), from a file in
    which any nonzero pixel (in any colour channel; alpha is ignored) marks a hole."""
    if not uri:
        raise images.ImageError(
            "no_mask", "a step needs a mask and none was planned for this input (input.mask or a mask_uri column)"
        )
    data = storage.read_bytes(uri, storage_options, budget, limits.read_timeout_seconds)
    decoded = storage.within(  # EXIF rotation applied, as for the image
        limits.read_timeout_seconds, lambda: images.decode(data, limits.max_pixels), f"decode {storage.redact(uri)}"
    )
    if (decoded.height, decoded.width) != (image.height, image.width):
        raise images.ImageError(
            "mask_size_mismatch", f"mask is {decoded.width}×{decoded.height}, image is {image.width}×{image.height}"
        )
    return ~decoded.pixels.any(axis=2)


def _finish(ctx: RestorationContext, works: list[_Work], results: list, budget: storage.RetryBudget) -> None:
    """Encode and write each model output (and caption file); fill in the rows."""
    for work, result in zip(works, results):
        decoded, row = work.decoded, work.row
        assert decoded is not None
        if ctx.writes_images:
            write_output(ctx, row, work.rel_path, result, decoded.format, decoded.alpha, work.metadata(ctx.job), budget)
        elif take_result(row, result):
            row.update(status=Status.OK, output_uri=None)
        if ctx.captions and not failed(row):
            caption_uri = write_caption(ctx, row, work.rel_path, result.caption or "", budget)
            if not ctx.writes_images and not failed(row):
                row["output_uri"] = caption_uri  # the row's one output, when there is no image
        work.decoded = None  # free the pixels as soon as they are written (or failed)


@ray.remote(num_cpus=0.5, max_retries=0)
def _load_isolated(ctx: RestorationContext, item: dict, shard: int, attempt: int) -> _Work:
    return _load(ctx, item, shard, attempt, storage.RetryBudget(ctx.job.limits.transient_retry_seconds))


def _load_all(
    ctx: RestorationContext, items: list[dict], shard: int, attempt: int, budget: storage.RetryBudget
) -> list[_Work]:
    """Read and decode a batch. After a shard failed once, each input is decoded in its own
    task, so an input that crashes its process (a decoder segfault, memory blow-up) is
    isolated as an error row instead of failing the shard again."""
    if attempt == 1:
        return [_load(ctx, item, shard, attempt, budget) for item in items]
    works = []
    for item in items:
        try:
            works.append(ray.get(_load_isolated.remote(ctx, item, shard, attempt)))
        except (WorkerCrashedError, RayTaskError, OutOfMemoryError) as exc:
            work = _Work(row=_base_row(ctx, item, shard, attempt), rel_path=item["rel_path"])
            fail(
                work.row,
                Stage.DECODE,
                "worker_crashed",
                f"reading or decoding this input killed its worker: {type(exc).__name__}",
            )
            works.append(work)
    return works


@dataclass
class _Batch:
    """A batch of decoded inputs on its way through the actors."""

    works: list[_Work]
    inputs: list  # what the first actor was given, one per work
    encodings: list[Encoding | None]
    ref: object  # the last actor's call
    timeout: float | None  # limits.model_timeout_seconds

    @classmethod
    def submit(cls, chain: list, ctx: RestorationContext, works: list[_Work]) -> _Batch | None:
        """Send the decoded ones of ``works`` to the actors (None if none decoded)."""
        ready = [w for w in works if w.decoded is not None]
        if not ready:
            return None
        job = ctx.job
        inputs = [w.model_input() for w in ready]
        encodings = [w.encoding(job) if ctx.writes_images else None for w in ready]
        return cls(ready, inputs, encodings, driver.submit(chain, inputs, encodings), job.limits.model_timeout_seconds)

    def results(self, chain: list) -> list[Result]:
        """The chain's results, waited for at most ``limits.model_timeout_seconds``."""
        return driver.infer(chain, self.inputs, self.ref, self.encodings, self.timeout)

    def finish(self, ctx: RestorationContext, chain: list, budget: storage.RetryBudget) -> None:
        """Wait for the results; encode and write them."""
        _finish(ctx, self.works, self.results(chain), budget)


@ray.remote
def process_shard(ctx: RestorationContext, shard: int, attempt: int, chain: list) -> ShardResult:
    """chain: one ModelActor handle per step (the least loaded when the driver submitted it)."""
    started = time.perf_counter()
    out = ctx.job.output
    plan = runs.load_plan_shard(out.uri, ctx.run_id, shard, out.storage_options).to_pylist()
    if driver.isolating(attempt):
        rows = driver.isolate(_process_one, ctx, shard, attempt, chain, plan, partial(_failed_row, ctx, shard, attempt))
        return commit_shard(ctx, shard, sorted(rows, key=lambda r: r["input_uri"]), started)
    batch_size = ctx.job.resources.batch_size
    budget = storage.RetryBudget(ctx.job.limits.transient_retry_seconds)
    done: list[_Work] = []
    pending: _Batch | None = None
    for start in range(0, len(plan), batch_size):
        works = _load_all(ctx, plan[start : start + batch_size], shard, attempt, budget)
        batch = _Batch.submit(chain, ctx, works)
        if pending is not None:  # the previous batch finished on the actors while we decoded this one
            pending.finish(ctx, chain, budget)
        done.extend(works)
        pending = batch
    if pending is not None:
        pending.finish(ctx, chain, budget)

    return commit_shard(ctx, shard, sorted((w.row for w in done), key=lambda r: r["input_uri"]), started)


@ray.remote(max_retries=0)
def _process_one(ctx: RestorationContext, shard: int, attempt: int, chain: list, item: dict) -> dict:
    """One input of an isolating shard, start to end: its row. Decoding runs in a task of its own
    (``_load_all``) and the model in the actors, so what can still kill this task is encoding or
    writing; an exception the actors raise for this input is a model error on its row."""
    budget = storage.RetryBudget(ctx.job.limits.transient_retry_seconds)
    [work] = _load_all(ctx, [item], shard, attempt, budget)
    batch = _Batch.submit(chain, ctx, [work])
    if batch is not None:
        with failing_as(work.row, Stage.MODEL, _raised_remotely):
            results = batch.results(chain)
        if not failed(work.row):
            _finish(ctx, [work], results, budget)
    return work.row


def _raised_remotely(exc: Exception) -> tuple[str, str] | None:
    """An exception raised in an actor, named by its own class rather than Ray's wrapper."""
    if isinstance(exc, RayTaskError) and exc.cause is not None:
        return type(exc.cause).__name__, str(exc.cause) or repr(exc.cause)
    return None


def _failed_row(ctx: RestorationContext, shard: int, attempt: int, item: dict, error_type: str, message: str) -> dict:
    """The row of an input whose own task failed every time (``driver.isolate``): that task only
    encoded and wrote (see ``_process_one``)."""
    row = _base_row(ctx, item, shard, attempt)
    fail(row, Stage.ENCODE, error_type, message)
    return row


def context_for(
    job: Job, registry: Registry, run_id: str, model_details: list[str | None] | None = None
) -> RestorationContext:
    """``model_details``: per step, what pipeline.preflight.check_models found (None: nothing)."""
    weights = [registry.get(s.model).weights_sha256(s.params) for s in job.steps]
    scales = [s.outscale or registry.get(s.model).output_scale(s.params) for s in job.steps]
    tasks = [registry.get(s.model).task for s in job.steps]
    return RestorationContext(
        run_id=run_id,
        job=job,
        fingerprint=job.fingerprint(registry),
        models=[s.model for s in job.steps],
        weights_sha256=[w or "" for w in weights],
        model_details=[d or "" for d in model_details or [None] * len(job.steps)],
        steps_json=json.dumps([s.model_dump() for s in job.steps], sort_keys=True),
        needs_mask=any(registry.get(s.model).needs_mask for s in job.steps),
        scale=None if None in scales else math.prod(scales),
        captions=CAPTIONING_TASK in tasks,
        writes_images=any(t != CAPTIONING_TASK for t in tasks),
    )


def execute(
    ctx: RestorationContext,
    registry: Registry,
    shards: Iterable[int],
    on_shard: Callable[[ShardResult], None] | None = None,
    check: Callable[[], None] | None = None,
) -> list[dict]:
    """Run the given shards of a planned run to commit; returns each actor's
    ``{id, busy_fraction, batches}`` (pipeline.driver.actor_stats).

    ``check`` is called between shards and may raise to stop the run (e.g. a lost lease).
    """
    res = ctx.job.resources
    steps = [
        r.model_copy(update={"gpus_per_actor": gpus_to_request(r.gpus_per_actor)})
        for r in map(res.for_step, ctx.job.steps)
    ]
    check_resources(ctx.job, steps)
    steps = with_threads(steps)
    pools = [
        Pool(registry, step, weights, r, ModelActor)
        for step, weights, r in zip(ctx.job.steps, ctx.weights_sha256, steps)
    ]
    return run_shards(ctx, pools, process_shard.options(num_cpus=res.cpus_per_task), shards, on_shard, check)
