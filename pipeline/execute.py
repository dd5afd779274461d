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

    def infer(self, items: list) -> list[Result]:
        """items: H×W×C arrays, or the previous step's Results (errors pass through)."""
        prior = [it if isinstance(it, Result) else None for it in items]
        todo = [i for i, p in enumerate(prior) if p is None or p.error is None]
        outs = self.chain([items[i].pixels if prior[i] else items[i] for i in todo])
        results = list(prior)
        for i, out in zip(todo, outs):
            out.seconds += prior[i].seconds if prior[i] else 0.0
            results[i] = out
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


def _submit(chain: list, pixels: list):
    """Send pixels through one actor per step; each step's result goes straight to the next
    actor (an ObjectRef argument), never back through this task."""
    ref = chain[0].infer.remote(pixels)
    for actor in chain[1:]:
        ref = actor.infer.remote(ref)
    return ref


def _infer(chain: list, works: list[_Work], ref) -> list[Result]:
    """The last step's results for ``works``, surviving actor deaths.

    Ray restarts a dead actor but does not retry the calls it was running. A batch whose
    actor died is retried image by image; an image on which an actor dies
    ``CRASH_ATTEMPTS`` times is the likely cause and becomes an error row. Each try first
    waits for the actors to be up, so a restart in progress is not counted against an image.
    """
    try:
        return ray.get(ref)
    except RayActorError:
        log.warning("a model actor died during a batch of %d; retrying image by image", len(works))
    results = []
    for work in works:
        deaths = 0
        while deaths < CRASH_ATTEMPTS:
            _when_ready(chain)
            try:
                results.append(ray.get(_submit(chain, [work.decoded.pixels]))[0])
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


@ray.remote
def process_shard(ctx: ShardContext, shard: int, attempt: int, chain: list) -> ShardResult:
    """chain: one ModelActor handle per step."""
    started = time.perf_counter()
    out = ctx.job.output
    plan = runs.load_plan_shard(out.uri, ctx.run_id, shard, out.storage_options).to_pylist()
    batch_size = ctx.job.resources.batch_size
    done: list[_Work] = []
    pending: tuple[list[_Work], object] | None = None
    for start in range(0, len(plan), batch_size):
        works = _load_all(ctx, plan[start : start + batch_size], shard, attempt)
        ready = [w for w in works if w.decoded is not None]
        ref = _submit(chain, [w.decoded.pixels for w in ready]) if ready else None
        if pending is not None:  # the previous batch finished on the actors while we decoded this one
            _finish(ctx, pending[0], _infer(chain, *pending))
        done.extend(works)
        pending = (ready, ref) if ready else None
    if pending is not None:
        _finish(ctx, pending[0], _infer(chain, *pending))

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


class _Pool:
    """One step's actors: starts with ``actors.min`` and adds one (up to ``actors.max``) whenever
    two shards per actor are in flight. On an autoscaling cluster a new actor that does not
    fit yet stays pending, which is what makes the autoscaler add a node."""

    def __init__(self, registry: Registry, step, weights_sha256: str, resources: Resources):
        gpus = gpus_to_request(resources.gpus_per_actor)
        # The step carries the weights digest the manifest records; the actor refuses other weights.
        spec = step.model_dump() | {"weights_sha256": weights_sha256}
        self._new = lambda: ModelActor.options(num_cpus=resources.cpus_per_actor, num_gpus=gpus).remote(
            registry, [spec], resources, gpus > 0
        )
        self.need = {"CPU": resources.cpus_per_actor, "GPU": gpus}
        self.range = resources.actors
        self.actors = [self._new() for _ in range(self.range.min)]

    def _fits_now(self) -> bool:
        free = ray.available_resources()
        return all(free.get(name, 0) >= amount for name, amount in self.need.items() if amount)

    def grow_if_behind(self, inflight: int) -> None:
        """Shards routed to an actor that can never be placed would wait forever, so without
        an autoscaler the pool only grows into resources that are free now."""
        if len(self.actors) < self.range.max and inflight >= 2 * len(self.actors) and (self._fits_now() or _autoscaling()):
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
    pools = [_Pool(registry, step, weights, res.for_step(step)) for step, weights in zip(ctx.job.steps, ctx.weights_sha256)]
    ray.get([a.ready.remote() for pool in pools for a in pool.actors])  # a model that cannot load fails the run here, once
    max_inflight = res.max_inflight_shards or 2 * max(pool.range.max for pool in pools)
    inflight: dict = {}  # ObjectRef → (shard, attempt)
    task = process_shard.options(num_cpus=res.cpus_per_task)

    def submit(shard: int, attempt: int) -> None:
        for pool in pools:
            pool.grow_if_behind(len(inflight))
        ref = task.remote(ctx, shard, attempt, [pool.pick(shard) for pool in pools])
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
        for pool in pools:
            for actor in pool.actors:
                ray.kill(actor)
