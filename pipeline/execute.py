"""Execution on Ray: model actors, shard tasks, and the driver loop with bounded in-flight work.

- ``ModelActor`` (one per GPU when GPUs are requested) loads the job's models once and
  runs batches through them; Ray restarts a dead actor and retries its calls.
- ``process_shard`` is a CPU task: for each batch of its shard it reads and decodes,
  sends pixels to an actor, and while the actor works decodes the next batch; then it
  encodes and writes outputs and finally commits the shard's manifest part atomically.
  Outputs larger than ``resources.encode_in_actor_above`` are encoded by the last actor
  instead (``Encoding``), which sends back the file rather than the pixels.
  Per-image failures become error rows; only infrastructure failures fail the task.
- ``execute`` keeps at most ``max_inflight_shards`` shard tasks running (backpressure).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import ray
from ray.exceptions import (
    ActorUnavailableError,
    GetTimeoutError,
    OutOfMemoryError,
    RayActorError,
    RayTaskError,
    WorkerCrashedError,
)

from models import Registry
from models.weights import WeightsError
from pipeline import images, manifest, runs, storage
from pipeline.inference import Chain, Masked, Result, pick_device, resize_plane
from pipeline.job import Job, Resources, ResourcesError
from pipeline.names import output_rel_path
from pipeline.threads import actor_threads

log = logging.getLogger(__name__)
SHARD_ATTEMPTS = 3
CRASH_ATTEMPTS = 3  # actor deaths on one image before it is blamed


def connect(address: str | None = None) -> None:
    """Join the cluster at ``address`` / ``$RAY_ADDRESS``, or start Ray in this process."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    ray.init(address=address, logging_level=logging.WARNING, include_dashboard=False if not address else None)


def _autoscaling() -> bool:
    """Whether the cluster has an autoscaler that can add nodes (unknown counts as yes)."""
    try:  # Ray keeps the autoscaler's config in its GCS; no public API exposes it
        return ray._private.state.state.get_cluster_config() is not None
    except Exception:
        return True


def gpus_to_request(wanted: float) -> float:
    """``wanted``, or 0 when the cluster has no GPU at all and cannot grow one.

    An autoscaling cluster may add GPU nodes later, so the fallback to CPU only applies
    when no node of the cluster has a GPU and no autoscaler is configured.
    """
    if wanted <= 0 or ray.cluster_resources().get("GPU", 0) >= wanted or _autoscaling():
        return wanted
    log.warning("resources.gpus_per_actor=%s but the cluster has no GPU: running the models on CPU", wanted)
    return 0


def _field(job: Job, step: int, name: str) -> str:
    """The job-file field that sets ``name`` for a step: its own override, or the job's."""
    own = job.steps[step].resources if job.steps else None  # a generation job has the job's resources only
    return (
        f"steps[{step}].resources.{name}" if own is not None and getattr(own, name) is not None else f"resources.{name}"
    )


def check_resources(job: Job, steps: list[Resources]) -> None:
    """Refuse, with one line naming the field, resources that can never be placed: the first
    actors of every step and one shard task must fit the cluster, each actor on one node.
    ``steps``: each step's resources, GPUs as they will be requested. An autoscaling
    cluster may add what is missing, so it is not checked."""
    if _autoscaling():
        return
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    cpus, gpus = (sum(n.get(k, 0) for n in nodes) for k in ("CPU", "GPU"))
    for i, r in enumerate(steps):
        if not any(n.get("CPU", 0) >= r.cpus_per_actor and n.get("GPU", 0) >= r.gpus_per_actor for n in nodes):
            most = max(n.get("CPU", 0) for n in nodes) if nodes else 0
            raise ResourcesError(
                f"{_field(job, i, 'cpus_per_actor')}={r.cpus_per_actor:g} (with gpus_per_actor={r.gpus_per_actor:g}) "
                "fits on no "
                f"node of the cluster (the largest has {most:g} CPUs): lower it"
            )
    need_gpus = sum(r.actors.min * r.gpus_per_actor for r in steps)
    if need_gpus > gpus:
        i = max(range(len(steps)), key=lambda k: steps[k].actors.min * steps[k].gpus_per_actor)
        raise ResourcesError(
            f"{_field(job, i, 'gpus_per_actor')}={steps[i].gpus_per_actor:g}: the model actors need {need_gpus:g} "
            "GPUs, "
            f"the cluster has {gpus:g}; lower it or {_field(job, i, 'actors')}"
        )
    need_cpus = sum(r.actors.min * r.cpus_per_actor for r in steps) + job.resources.cpus_per_task
    if need_cpus > cpus:
        i = max(range(len(steps)), key=lambda k: steps[k].actors.min * steps[k].cpus_per_actor)
        raise ResourcesError(
            f"{_field(job, i, 'cpus_per_actor')}={steps[i].cpus_per_actor:g}: the model actors and one shard task "
            f"(resources.cpus_per_task={job.resources.cpus_per_task:g}) need {need_cpus:g} CPUs, the cluster has "
            f"{cpus:g}, "
            f"so no shard could ever start; lower it (torch threads are set apart: threads_per_actor)"
        )


def with_threads(steps: list[Resources]) -> list[Resources]:
    """Each step's resources with ``threads_per_actor`` decided (``steps``: GPUs as requested).

    Reserving CPUs and running threads are separate: a shard task reserves CPUs it mostly
    spends waiting for the model, so on a node of N CPUs the actor reserving N − 1 would get
    N − 1 threads while its model could use N. By default, on a one-node cluster that cannot
    grow (a local run), a CPU actor gets the node's CPUs shared evenly among every step's
    CPU actors (``actors.max``), and at least ``cpus_per_actor``; the shard tasks' decoding
    and encoding then share the cores with the model's threads. Measured on 2 idle cores
    (docs/benchmarks.md): 2 threads next to the shard task instead of 1 beside it made the
    compute-bound run 18 % faster; on cores other processes keep busy, 1 thread can be faster
    (set ``threads_per_actor``). Elsewhere (actors may share nodes in ways the driver does not
    know) an actor runs ``cpus_per_actor`` threads, rounded up.
    """
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU")]
    node_cpus = int(nodes[0]["CPU"]) if len(nodes) == 1 and not _autoscaling() else 0
    cpu_actors = sum(r.actors.max for r in steps if not r.gpus_per_actor)
    out = []
    for r in steps:
        threads = r.threads_per_actor or max(1, math.ceil(r.cpus_per_actor))
        if r.threads_per_actor is None and not r.gpus_per_actor and node_cpus:
            threads = max(threads, node_cpus // cpu_actors)
        out.append(r.model_copy(update={"threads_per_actor": threads}))
    return out


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


def encode_output(
    pixels: np.ndarray,
    alpha: np.ndarray | None,
    requested: str,
    source_format: str,
    quality: int,
    metadata: images.Metadata | None = None,
) -> images.Encoded:
    """H×W×C uint8/uint16 model output (+ the input's alpha plane, resized here to H×W) as the
    file ``output.format`` asks for (``requested``; `same` follows ``source_format``), carrying
    ``metadata`` (the input's EXIF/XMP) if given."""
    t0 = time.perf_counter()
    height, width = pixels.shape[:2]
    alpha = resize_plane(alpha, height, width) if alpha is not None else None
    fmt = images.choose_format(requested, source_format, alpha is not None)
    data = images.encode(pixels, alpha, fmt, quality, metadata)
    return images.Encoded(data, fmt, width, height, time.perf_counter() - t0)


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
        result.error, result.error_type, result.stage = str(exc) or repr(exc), type(exc).__name__, "encode"
    result.pixels = None  # freed before Ray copies the result into the object store


# Restarted without limit: a dead actor (OOM, segfault, a node lost) comes back with its
# models; the calls it was running fail and are retried by the shard task (see _infer).
@ray.remote(max_restarts=-1, max_task_retries=0)
class ModelActor:
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
        self.chain = Chain(models, device, resources.batch_size, resources.tile, resources.tile_pad, outscale)

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
        outs = self.chain(pixels, [getattr(items[i], "known", None) for i in todo])
        self.threads.done(time.perf_counter() - started, sum(p.shape[0] * p.shape[1] for p in pixels))
        results = list(prior)
        for i, out in zip(todo, outs):
            out.seconds += prior[i].seconds if prior[i] else 0.0
            results[i] = out
        for result, encoding in zip(results, encodings or []):
            if encoding is not None and result.pixels is not None and result.pixels.nbytes > encoding.above:
                _encode_here(result, encoding)
        return results


@dataclass
class ShardContext:
    """What every shard task of a run needs, shipped once per task."""

    run_id: str
    job: Job
    fingerprint: str
    models: list[str]
    weights_sha256: list[str]
    steps_json: str
    needs_mask: bool = False  # a step takes a mask: read each input's mask with it
    scale: float | None = None  # the chain's output size / input size; None: known only once the models load

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


@dataclass
class ShardResult:
    shard: int
    counts: Counter = field(default_factory=Counter)  # status → rows
    errors_by_stage: Counter = field(default_factory=Counter)  # stage → error rows
    seconds: float = 0.0

    def as_event(self) -> dict:
        return {
            "shard": self.shard,
            "counts": dict(self.counts),
            "errors_by_stage": dict(self.errors_by_stage),
            "seconds": self.seconds,
        }


def _fail(row: dict, stage: str, error_type: str, message: str) -> None:
    row.update(status="error", stage=stage, error_type=error_type, error_message=storage.redact_text(message)[:2000])


def _base_row(ctx: ShardContext, item: dict, shard: int, attempt: int) -> dict:
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
        "fingerprint": ctx.fingerprint,
        "attempt": attempt,
    }


def _load(ctx: ShardContext, item: dict, shard: int, attempt: int) -> _Work:
    """Read and decode one planned input; failures are recorded on the row."""
    opts = ctx.job.input.storage_options
    row = _base_row(ctx, item, shard, attempt)
    work = _Work(row=row, rel_path=item["rel_path"])
    stage = "read"
    try:
        if row["input_size"] is None:  # list files may not carry sizes
            entry = storage.stat(item["input_uri"], opts)
            row.update(input_size=entry.size, input_etag=entry.etag, input_mtime=entry.mtime)
        limit = ctx.job.limits.max_bytes
        if row["input_size"] > limit:
            raise images.ImageError("too_large", f"{row['input_size']} bytes exceeds limits.max_bytes={limit}")
        t0 = time.perf_counter()
        data = storage.read_bytes(item["input_uri"], opts)
        t1 = time.perf_counter()
        stage = "decode"
        limits = ctx.job.limits
        work.decoded = images.decode(
            data, limits.max_pixels, max_aspect_ratio=limits.max_aspect_ratio, output=ctx.output_check()
        )
        row.update(t_read=t1 - t0, t_decode=time.perf_counter() - t1)
        d = work.decoded
        row.update(width_in=d.width, height_in=d.height, mode_in=d.mode, format_in=d.format)
        if ctx.needs_mask:
            stage = "mask"
            work.known = _load_mask(item.get("mask_uri"), d, opts, ctx.job.limits.max_pixels)
    except images.ImageError as exc:
        _fail(row, stage, exc.error_type, str(exc))
    except FileNotFoundError:
        if stage == "mask":
            _fail(row, stage, "mask_not_found", f"no mask at {storage.redact(item['mask_uri'])}")
        else:
            _fail(row, stage, "not_found", "input disappeared after planning")
    except Exception as exc:
        _fail(row, stage, type(exc).__name__, str(exc) or repr(exc))
    if row.get("status") == "error":
        work.decoded = work.known = None  # nothing goes to the models
    return work


def _load_mask(uri: str | None, image: images.Decoded, storage_options: dict, max_pixels: int) -> np.ndarray:
    """An input's mask as H×W bool, True = known pixel (the model contract), from a file in
    which any nonzero pixel (in any colour channel; alpha is ignored) marks a hole."""
    if not uri:
        raise images.ImageError(
            "no_mask", "a step needs a mask and none was planned for this input (input.mask or a mask_uri column)"
        )
    decoded = images.decode(
        storage.read_bytes(uri, storage_options), max_pixels
    )  # EXIF rotation applied, as for the image
    if (decoded.height, decoded.width) != (image.height, image.width):
        raise images.ImageError(
            "mask_size_mismatch", f"mask is {decoded.width}×{decoded.height}, image is {image.width}×{image.height}"
        )
    return ~decoded.pixels.any(axis=2)


def write_output(
    ctx: ShardContext,
    row: dict,
    rel_path: str,
    result: Result,
    source_format: str,
    alpha: np.ndarray | None = None,
    metadata: images.Metadata | None = None,
) -> None:
    """Encode one model output and write it to ``<output>/images/<rel_path>.<ext>``; fill in ``row``.

    ``result.pixels``: H×W×C uint8 (or uint16), or ``result.encoded``: the file the actor made.
    ``alpha``: the input's H'×W' uint8/uint16 alpha plane (resized here to the output's H×W), or
    None. ``source_format``: the input's format, what ``output.format`` `same` resolves to.
    ``metadata``: the input's EXIF/XMP to carry, or None. A
    model error, or a failure to encode or write, is recorded on the row (stage model / encode /
    write) instead of raised.
    """
    out = ctx.job.output
    row["t_model"] = result.seconds
    if result.error:
        _fail(row, result.stage, result.error_type, result.error)
        return
    stage = "encode"
    try:
        encoded = result.encoded or encode_output(
            result.pixels, alpha, out.format, source_format, out.quality, metadata
        )
        t1 = time.perf_counter()
        stage = "write"
        output_uri = storage.join(out.uri, "images", output_rel_path(rel_path, encoded.format))
        storage.write_atomic(output_uri, encoded.data, out.storage_options)
        row.update(
            status="ok",
            output_uri=output_uri,
            width_out=encoded.width,
            height_out=encoded.height,
            format_out=encoded.format,
            t_encode=encoded.seconds,
            t_write=time.perf_counter() - t1,
        )
    except Exception as exc:
        _fail(row, stage, type(exc).__name__, str(exc) or repr(exc))


def _finish(ctx: ShardContext, works: list[_Work], results: list) -> None:
    """Encode and write each model output; fill in the rows."""
    for work, result in zip(works, results):
        decoded = work.decoded
        assert decoded is not None
        write_output(ctx, work.row, work.rel_path, result, decoded.format, decoded.alpha, work.metadata(ctx.job))
        work.decoded = None  # free the pixels as soon as they are written (or failed)


def _when_ready(actors: list, timeout: float = 300.0) -> None:
    """Wait until (possibly restarting) actors answer again."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            ray.get([a.ready.remote() for a in actors], timeout=max(1.0, deadline - time.monotonic()))
            return
        except (ActorUnavailableError, GetTimeoutError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _submit(chain: list, items: list, encodings: list[Encoding | None] | None = None):
    """Send items through one actor per step; each step's result goes straight to the next
    actor (an ObjectRef argument), never back through this task. ``encodings`` go to the last."""
    ref = items
    for step, actor in enumerate(chain):
        last = step == len(chain) - 1
        ref = actor.infer.remote(ref, encodings) if last and encodings is not None else actor.infer.remote(ref)
    return ref


def _infer(chain: list, items: list, ref, encodings: list[Encoding | None] | None = None) -> list[Result]:
    """The last step's results for ``items`` (what ``ref``'s call was given, one entry per image
    or sample, with ``encodings`` if it had them), surviving actor deaths.

    Ray restarts a dead actor but does not retry the calls it was running. A batch whose
    actor died is retried image by image; an image on which an actor dies
    ``CRASH_ATTEMPTS`` times is the likely cause and becomes an error row. Each try first
    waits for the actors to be up, so a restart in progress is not counted against an image.
    """
    try:
        return ray.get(ref)
    except RayActorError:
        log.warning("a model actor died during a batch of %d; retrying image by image", len(items))
    results = []
    for i, item in enumerate(items):
        deaths = 0
        while deaths < CRASH_ATTEMPTS:
            _when_ready(chain)
            try:
                results.append(ray.get(_submit(chain, [item], encodings and [encodings[i]]))[0])
                break
            except RayActorError:  # includes ActorUnavailableError: it was alive when we called
                deaths += 1
        else:
            results.append(
                Result(None, 0.0, f"the model worker died {CRASH_ATTEMPTS} times on this image", "worker_crashed")
            )
    return results


@ray.remote(num_cpus=0.5, max_retries=0)
def _load_isolated(ctx: ShardContext, item: dict, shard: int, attempt: int) -> _Work:
    return _load(ctx, item, shard, attempt)


def _load_all(ctx: ShardContext, items: list[dict], shard: int, attempt: int) -> list[_Work]:
    """Read and decode a batch. After a shard failed once, each input is decoded in its own
    task, so an input that crashes its process (a decoder segfault, memory blow-up) is
    isolated as an error row instead of failing the shard again."""
    if attempt == 1:
        return [_load(ctx, item, shard, attempt) for item in items]
    works = []
    for item in items:
        try:
            works.append(ray.get(_load_isolated.remote(ctx, item, shard, attempt)))
        except (WorkerCrashedError, RayTaskError, OutOfMemoryError) as exc:
            work = _Work(row=_base_row(ctx, item, shard, attempt), rel_path=item["rel_path"])
            _fail(
                work.row,
                "decode",
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

    @classmethod
    def submit(cls, chain: list, job: Job, works: list[_Work]) -> _Batch | None:
        """Send the decoded ones of ``works`` to the actors (None if none decoded)."""
        ready = [w for w in works if w.decoded is not None]
        if not ready:
            return None
        inputs, encodings = [w.model_input() for w in ready], [w.encoding(job) for w in ready]
        return cls(ready, inputs, encodings, _submit(chain, inputs, encodings))

    def finish(self, ctx: ShardContext, chain: list) -> None:
        """Wait for the results; encode and write them."""
        _finish(ctx, self.works, _infer(chain, self.inputs, self.ref, self.encodings))


@ray.remote
def process_shard(ctx: ShardContext, shard: int, attempt: int, chain: list) -> ShardResult:
    """chain: one ModelActor handle per step."""
    started = time.perf_counter()
    out = ctx.job.output
    plan = runs.load_plan_shard(out.uri, ctx.run_id, shard, out.storage_options).to_pylist()
    batch_size = ctx.job.resources.batch_size
    done: list[_Work] = []
    pending: _Batch | None = None
    for start in range(0, len(plan), batch_size):
        works = _load_all(ctx, plan[start : start + batch_size], shard, attempt)
        batch = _Batch.submit(chain, ctx.job, works)
        if pending is not None:  # the previous batch finished on the actors while we decoded this one
            pending.finish(ctx, chain)
        done.extend(works)
        pending = batch
    if pending is not None:
        pending.finish(ctx, chain)

    return commit_shard(ctx, shard, sorted((w.row for w in done), key=lambda r: r["input_uri"]), started)


def commit_shard(ctx: ShardContext, shard: int, rows: list[dict], started: float) -> ShardResult:
    """Write a shard's manifest part (all its rows become visible at once) and count its rows;
    ``started``: the task's ``time.perf_counter()`` at its start."""
    out = ctx.job.output
    committed_at = datetime.now(UTC)
    rows = [row | {"committed_at": committed_at} for row in rows]
    manifest.write_part(manifest.part_uri(out.uri, ctx.run_id, shard), manifest.to_table(rows), out.storage_options)
    result = ShardResult(shard, seconds=time.perf_counter() - started)
    for row in rows:
        result.counts[row["status"]] += 1
        if row["status"] == "error":
            result.errors_by_stage[row["stage"]] += 1
    return result


def context_for(job: Job, registry: Registry, run_id: str) -> ShardContext:
    weights = [registry.get(s.model).weights_sha256(s.params) for s in job.steps]
    scales = [s.outscale or registry.get(s.model).output_scale(s.params) for s in job.steps]
    return ShardContext(
        run_id=run_id,
        job=job,
        fingerprint=job.fingerprint(registry),
        models=[s.model for s in job.steps],
        weights_sha256=[w or "" for w in weights],
        steps_json=json.dumps([s.model_dump() for s in job.steps], sort_keys=True),
        needs_mask=any(registry.get(s.model).needs_mask for s in job.steps),
        scale=None if None in scales else math.prod(scales),
    )


class _Pool:
    """One step's actors: starts with ``actors.min`` and adds one (up to ``actors.max``) whenever
    two shards per actor are in flight. On an autoscaling cluster a new actor that does not
    fit yet stays pending, which is what makes the autoscaler add a node.

    ``actor_class`` is ``ModelActor``, or another actor class built the same way
    (``registry, [spec], resources, want_gpu``), e.g. pipeline.generate's ``GeneratorActor``."""

    def __init__(self, registry: Registry, step, weights_sha256: str, resources: Resources, actor_class=None):
        gpus = gpus_to_request(resources.gpus_per_actor)
        actor_class = actor_class or ModelActor
        # The step carries the weights digest the manifest records; the actor refuses other weights.
        spec = step.model_dump() | {"weights_sha256": weights_sha256}
        self._new = lambda: actor_class.options(num_cpus=resources.cpus_per_actor, num_gpus=gpus).remote(
            registry, [spec], resources, gpus > 0
        )
        self.need = {"CPU": resources.cpus_per_actor, "GPU": gpus}
        self.range = resources.actors
        self.actors = [self._new() for _ in range(self.range.min)]

    def _fits_now(self) -> bool:
        free = ray.available_resources()
        return all(free.get(name, 0) >= amount for name, amount in self.need.items() if amount)

    def grow_if_behind(self, inflight: int, leaves_room: Callable[[_Pool], bool] = lambda pool: True) -> None:
        """Shards routed to an actor that can never be placed would wait forever, so without
        an autoscaler the pool only grows into resources that are free now, and only where
        ``leaves_room(self)`` says the actors would still leave a shard task room to run."""
        behind = len(self.actors) < self.range.max and inflight >= 2 * len(self.actors)
        if behind and (_autoscaling() or (self._fits_now() and leaves_room(self))):
            self.actors.append(self._new())
            log.info("added a model actor (%d of at most %d)", len(self.actors), self.range.max)

    def pick(self, shard: int):
        return self.actors[shard % len(self.actors)]


def execute(
    ctx: ShardContext,
    registry: Registry,
    shards: Iterable[int],
    on_shard: Callable[[ShardResult], None] | None = None,
    check: Callable[[], None] | None = None,
) -> None:
    """Run the given shards of a planned run to commit.

    ``check`` is called between shards and may raise to stop the run (e.g. a lost lease).
    """
    res = ctx.job.resources
    steps = [
        r.model_copy(update={"gpus_per_actor": gpus_to_request(r.gpus_per_actor)})
        for r in map(res.for_step, ctx.job.steps)
    ]
    check_resources(ctx.job, steps)
    steps = with_threads(steps)
    pools = [_Pool(registry, step, weights, r) for step, weights, r in zip(ctx.job.steps, ctx.weights_sha256, steps)]
    run_shards(ctx, pools, process_shard.options(num_cpus=res.cpus_per_task), shards, on_shard, check)


def run_shards(
    ctx,
    pools: list[_Pool],
    task,
    shards: Iterable[int],
    on_shard: Callable[[ShardResult], None] | None = None,
    check: Callable[[], None] | None = None,
) -> None:
    """The driver loop shared by every kind of job: ``task.remote(ctx, shard, attempt, chain)``
    (chain: one actor per pool) for each shard, at most ``max_inflight_shards`` in flight,
    failed shards retried up to SHARD_ATTEMPTS times; the pools' actors are killed at the end."""
    res = ctx.job.resources
    max_inflight = res.max_inflight_shards or 2 * max(pool.range.max for pool in pools)
    inflight: dict = {}  # ObjectRef → (shard, attempt)

    def leaves_room(growing: _Pool) -> bool:
        # Counted from the actors the pools hold, not from what Ray shows free: actors still
        # starting are not placed yet, and actors taking every CPU would starve the shard tasks.
        total = ray.cluster_resources()
        held = Counter()
        for pool in pools:
            for name, amount in pool.need.items():
                held[name] += amount * len(pool.actors)
        return held["CPU"] + growing.need["CPU"] + res.cpus_per_task <= total.get("CPU", 0) and (
            held["GPU"] + growing.need["GPU"] <= total.get("GPU", 0)
        )

    def submit(shard: int, attempt: int) -> None:
        for pool in pools:
            pool.grow_if_behind(len(inflight), leaves_room)
        ref = task.remote(ctx, shard, attempt, [pool.pick(shard) for pool in pools])
        inflight[ref] = (shard, attempt)

    # The first shards are submitted while the actors start, so that the shard workers start
    # (and import) at the same time; their first batches wait on the actors.
    starting = [a.ready.remote() for pool in pools for a in pool.actors]

    def started() -> None:
        """A model that cannot load fails the run here, once. An actor a shard's batch already
        killed (a poison input) is only restarting: wait for it, the shard task retries."""
        try:
            ray.get(starting)
        except ActorUnavailableError:
            _when_ready([a for pool in pools for a in pool.actors])

    def collect_one() -> None:
        nonlocal starting
        if starting:
            started()
            starting = []
        [ref], _ = ray.wait(list(inflight), num_returns=1)
        if check:
            check()
        shard, attempt = inflight.pop(ref)
        try:
            result = ray.get(ref)
        except Exception as exc:  # infrastructure failure: the shard's part was not written
            if attempt >= SHARD_ATTEMPTS:
                raise RuntimeError(f"shard {shard} failed {attempt} times; last error: {exc}") from exc
            log.warning("shard %d attempt %d failed (%s); retrying", shard, attempt, exc)
            submit(shard, attempt + 1)
            return
        if on_shard:
            on_shard(result)

    try:
        for shard in shards:
            while len(inflight) >= max_inflight:
                collect_one()
            submit(shard, 1)
        while inflight:
            collect_one()
        if starting:  # no shard to run: a model that cannot load still fails the run
            started()
    finally:
        for pool in pools:
            for actor in pool.actors:
                ray.kill(actor)
