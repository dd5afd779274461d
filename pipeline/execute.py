"""Execution on Ray: model actors, shard tasks, and the driver loop with bounded in-flight work.

- ``ModelActor`` (one per GPU when GPUs are requested) loads the job's models once and
  runs batches through them; Ray restarts a dead actor and retries its calls.
- ``process_shard`` is a CPU task: for each batch of its shard it reads and decodes,
  sends pixels to an actor, and while the actor works decodes the next batch; then it
  encodes and writes outputs and finally commits the shard's manifest part atomically.
  Per-image failures become error rows; only infrastructure failures fail the task.
- ``execute`` keeps at most ``max_inflight_shards`` shard tasks running (backpressure).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Iterable

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
from pipeline.inference import Chain, Result, pick_device, resize_plane
from pipeline.job import Job, Resources
from pipeline.planning import output_rel_path

log = logging.getLogger(__name__)
SHARD_ATTEMPTS = 3
CRASH_ATTEMPTS = 3  # actor deaths on one image before it is blamed


def connect(address: str | None = None) -> None:
    """Join the cluster at ``address`` / ``$RAY_ADDRESS``, or start Ray in this process."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    ray.init(address=address, logging_level=logging.WARNING, include_dashboard=False if not address else None)


def gpus_to_request(wanted: float) -> float:
    """``wanted``, or 0 when the cluster has no GPU at all and cannot grow one.

    An autoscaling cluster may add GPU nodes later, so the fallback to CPU only applies
    when no node of the cluster has a GPU and no autoscaler is configured.
    """
    if wanted <= 0 or ray.cluster_resources().get("GPU", 0) >= wanted:
        return wanted
    try:  # Ray keeps the autoscaler's config in its GCS; no public API exposes it
        autoscaling = ray._private.state.state.get_cluster_config() is not None
    except Exception:
        autoscaling = True  # unknown: keep asking for the GPU rather than silently using CPU
    if autoscaling:
        return wanted
    log.warning("resources.gpus_per_actor=%s but the cluster has no GPU: running the models on CPU", wanted)
    return 0


# Restarted without limit: a dead actor (OOM, segfault, a node lost) comes back with its
# models; the calls it was running fail and are retried by the shard task (see _infer).
@ray.remote(max_restarts=-1, max_task_retries=0)
class ModelActor:
    def __init__(self, registry: Registry, steps: list[dict], resources: Resources, want_gpu: bool):
        import torch

        torch.set_num_threads(max(1, int(resources.cpus_per_actor)))
        models = [registry.build(s["model"], s["params"]) for s in steps]
        for s, m in zip(steps, models):
            if s.get("weights_sha256") and m.weights_sha256 and m.weights_sha256 != s["weights_sha256"]:
                planned, now = s["weights_sha256"], m.weights_sha256
                raise WeightsError(f"{s['model']}: weights changed since the run was planned (sha256 {planned}, now {now})")
        device = pick_device(want_gpu)
        self.chain = Chain(models, device, resources.batch_size, resources.tile, resources.tile_pad)

    def ready(self) -> str:
        return str(self.chain.device)

    def infer(self, pixels: list):
        return self.chain(pixels)


@dataclass
class ShardContext:
    """What every shard task of a run needs, shipped once per task."""

    run_id: str
    job: Job
    fingerprint: str
    models: list[str]
    weights_sha256: list[str]
    steps_json: str


@dataclass
class _Work:
    row: dict
    rel_path: str
    decoded: images.Decoded | None = None


@dataclass
class ShardResult:
    shard: int
    counts: Counter = field(default_factory=Counter)  # status → rows
    errors_by_stage: Counter = field(default_factory=Counter)  # stage → error rows
    seconds: float = 0.0

    def as_event(self) -> dict:
        return {"shard": self.shard, "counts": dict(self.counts), "errors_by_stage": dict(self.errors_by_stage), "seconds": self.seconds}


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
        work.decoded = images.decode(data, ctx.job.limits.max_pixels)
        row.update(t_read=t1 - t0, t_decode=time.perf_counter() - t1)
        d = work.decoded
        row.update(width_in=d.width, height_in=d.height, mode_in=d.mode, format_in=d.format)
    except images.ImageError as exc:
        _fail(row, stage, exc.error_type, str(exc))
    except FileNotFoundError:
        _fail(row, stage, "not_found", "input disappeared after planning")
    except Exception as exc:
        _fail(row, stage, type(exc).__name__, str(exc) or repr(exc))
    return work


def _finish(ctx: ShardContext, works: list[_Work], results: list) -> None:
    """Encode and write each model output; fill in the rows."""
    out = ctx.job.output
    for work, result in zip(works, results):
        row, decoded = work.row, work.decoded
        assert decoded is not None
        row["t_model"] = result.seconds
        if result.error:
            _fail(row, "model", result.error_type, result.error)
            continue
        stage = "encode"
        try:
            t0 = time.perf_counter()
            height, width = result.pixels.shape[:2]
            alpha = resize_plane(decoded.alpha, height, width) if decoded.alpha is not None else None
            fmt = images.choose_format(out.format, decoded.format, alpha is not None)
            data = images.encode(result.pixels, alpha, fmt, out.quality)
            t1 = time.perf_counter()
            stage = "write"
            output_uri = storage.join(out.uri, "images", output_rel_path(work.rel_path, fmt))
            storage.write_atomic(output_uri, data, out.storage_options)
            row.update(
                status="ok",
                output_uri=output_uri,
                width_out=width,
                height_out=height,
                format_out=fmt,
                t_encode=t1 - t0,
                t_write=time.perf_counter() - t1,
            )
        except Exception as exc:
            _fail(row, stage, type(exc).__name__, str(exc) or repr(exc))
        work.decoded = None  # free the pixels as soon as they are written


def _when_ready(actor, timeout: float = 300.0) -> None:
    """Wait until a (possibly restarting) actor answers again."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            ray.get(actor.ready.remote(), timeout=max(1.0, deadline - time.monotonic()))
            return
        except (ActorUnavailableError, GetTimeoutError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _infer(actor, works: list[_Work], ref) -> list[Result]:
    """The actor's results for ``works``, surviving actor deaths.

    Ray restarts a dead actor but does not retry the calls it was running. A batch whose
    actor died is retried image by image; an image on which the actor dies
    ``CRASH_ATTEMPTS`` times is the likely cause and becomes an error row. Each try first
    waits for the actor to be up, so a restart in progress is not counted against an image.
    """
    try:
        return ray.get(ref)
    except RayActorError:
        log.warning("model actor died during a batch of %d; retrying image by image", len(works))
    results = []
    for work in works:
        deaths = 0
        while deaths < CRASH_ATTEMPTS:
            _when_ready(actor)
            try:
                results.append(ray.get(actor.infer.remote([work.decoded.pixels]))[0])
                break
            except RayActorError:  # includes ActorUnavailableError: it was alive when we called
                deaths += 1
        else:
            results.append(Result(None, 0.0, f"the model worker died {CRASH_ATTEMPTS} times on this image", "worker_crashed"))
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
            _fail(work.row, "decode", "worker_crashed", f"reading or decoding this input killed its worker: {type(exc).__name__}")
            works.append(work)
    return works


@ray.remote(num_cpus=1)
def process_shard(ctx: ShardContext, shard: int, attempt: int, actor) -> ShardResult:
    started = time.perf_counter()
    out = ctx.job.output
    plan = runs.load_plan_shard(out.uri, ctx.run_id, shard, out.storage_options).to_pylist()
    batch_size = ctx.job.resources.batch_size
    done: list[_Work] = []
    pending: tuple[list[_Work], object] | None = None
    for start in range(0, len(plan), batch_size):
        works = _load_all(ctx, plan[start : start + batch_size], shard, attempt)
        ready = [w for w in works if w.decoded is not None]
        ref = actor.infer.remote([w.decoded.pixels for w in ready]) if ready else None
        if pending is not None:  # the previous batch finished on the actor while we decoded this one
            _finish(ctx, pending[0], _infer(actor, *pending))
        done.extend(works)
        pending = (ready, ref) if ready else None
    if pending is not None:
        _finish(ctx, pending[0], _infer(actor, *pending))

    committed_at = datetime.now(timezone.utc)
    rows = sorted((w.row | {"committed_at": committed_at} for w in done), key=lambda r: r["input_uri"])
    manifest.write_part(manifest.part_uri(out.uri, ctx.run_id, shard), manifest.to_table(rows), out.storage_options)
    result = ShardResult(shard, seconds=time.perf_counter() - started)
    for row in rows:
        result.counts[row["status"]] += 1
        if row["status"] == "error":
            result.errors_by_stage[row["stage"]] += 1
    return result


def context_for(job: Job, registry: Registry, run_id: str) -> ShardContext:
    weights = [registry.get(s.model).weights_sha256(s.params) for s in job.steps]
    return ShardContext(
        run_id=run_id,
        job=job,
        fingerprint=job.fingerprint(registry),
        models=[s.model for s in job.steps],
        weights_sha256=[w or "" for w in weights],
        steps_json=json.dumps([s.model_dump() for s in job.steps], sort_keys=True),
    )


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
    # Each step carries the weights digest the manifest records; actors refuse to run other weights.
    steps = [s.model_dump() | {"weights_sha256": w} for s, w in zip(ctx.job.steps, ctx.weights_sha256)]
    gpus = gpus_to_request(res.gpus_per_actor)
    actor_cls = ModelActor.options(num_cpus=res.cpus_per_actor, num_gpus=gpus)
    actors = [actor_cls.remote(registry, steps, res, gpus > 0) for _ in range(res.actors)]
    ray.get([a.ready.remote() for a in actors])  # a model that cannot load fails the run here, once
    max_inflight = res.max_inflight_shards or 2 * res.actors
    inflight: dict = {}  # ObjectRef → (shard, attempt)

    def submit(shard: int, attempt: int) -> None:
        ref = process_shard.remote(ctx, shard, attempt, actors[shard % len(actors)])
        inflight[ref] = (shard, attempt)

    def collect_one() -> None:
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
    finally:
        for actor in actors:
            ray.kill(actor)
