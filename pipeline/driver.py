"""The driver shared by every kind of job: actor pools, shard tasks run with bounded in-flight work, retried, committed.

A job kind (restoration: pipeline.execute; generation: pipeline.generate) brings its actor
class and its shard task; this module runs them:

- ``Pool`` holds one step's actors and grows it while shards wait.
- ``run_shards`` submits ``task.remote(ctx, shard, attempt, chain)`` per shard, at most
  ``max_inflight_shards`` at a time (backpressure), and retries a failed shard up to
  ``SHARD_ATTEMPTS`` times.
- Inside a shard task, ``submit`` sends a batch through one actor per step and ``infer`` gets
  its results, surviving actor deaths (a dead actor's batch is retried item by item) and cutting
  a batch that outlasts its timeout (its actors are restarted, its items become timeout results).
- ``commit_shard`` writes a shard's manifest part, making all its rows visible at once.

An actor class used here is a Ray actor built as ``(registry, [step spec], resources, want_gpu)``
with ``ready() -> str`` and ``infer(items[, extra]) -> list[Result]``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import ray
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError

from models import Registry
from pipeline import manifest
from pipeline.cluster import autoscaling, gpus_to_request
from pipeline.errors import ModelLoadError
from pipeline.inference import Result
from pipeline.job import Job, Resources
from pipeline.manifest import Status

log = logging.getLogger(__name__)
SHARD_ATTEMPTS = 3
CRASH_ATTEMPTS = 3  # actor deaths on one image before it is blamed


@dataclass
class ShardContext:
    """What every shard task of a run needs, shipped once per task (a job kind may extend it)."""

    run_id: str
    job: Job
    fingerprint: str
    models: list[str]
    weights_sha256: list[str]
    steps_json: str
    model_details: list[str] = field(default_factory=list)  # per step, what ran (e.g. ESRGAN×4); "" if nothing to add


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
        if row["status"] == Status.ERROR:
            result.errors_by_stage[row["stage"]] += 1
    return result


def when_ready(actors: list, timeout: float = 300.0) -> None:
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


def submit(chain: list, items: list, extra: list | None = None):
    """Send items through one actor per step (``chain``); each step's result goes straight to
    the next actor (an ObjectRef argument), never back through this task. ``extra`` (one entry
    per item, e.g. pipeline.execute's Encodings) goes to the last actor's ``infer`` beside them.
    Returns the ObjectRef of the last actor's call."""
    ref = items
    for step, actor in enumerate(chain):
        last = step == len(chain) - 1
        ref = actor.infer.remote(ref, extra) if last and extra is not None else actor.infer.remote(ref)
    return ref


def restart(chain: list) -> None:
    """Kill the chain's actors so that Ray restarts them (they are created with unlimited
    restarts): a call stuck in a model stops computing. Other calls they were running fail
    with RayActorError, which their ``infer`` survives like any actor death."""
    for actor in chain:
        ray.kill(actor, no_restart=False)


def _timed_out(timeout: float) -> Result:
    return Result(None, timeout, f"the model did not answer within limits.model_timeout_seconds={timeout:g}", "timeout")


def infer(chain: list, items: list, ref, extra: list | None = None, timeout: float | None = None) -> list[Result]:
    """The last step's results for ``items`` (what ``ref``'s call was given, one entry per image
    or sample, with ``extra`` if it had it), surviving actor deaths.

    Ray restarts a dead actor but does not retry the calls it was running. A batch whose
    actor died is retried image by image; an image on which an actor dies
    ``CRASH_ATTEMPTS`` times is the likely cause and becomes an error result. Each try first
    waits for the actors to be up, so a restart in progress is not counted against an image.

    ``timeout`` (seconds, None: none): a batch (or a retried image) whose results take longer,
    counted from when the chain's actors are up (their ``ready()`` must answer while they
    compute: a concurrency group of its own), becomes ``timeout`` results, and the chain's
    actors are restarted.
    """
    try:
        if timeout is not None:
            when_ready(chain)  # an actor starting (loading its model) is not the batch's time
        return ray.get(ref, timeout=timeout)
    except GetTimeoutError:
        log.warning("a batch of %d took longer than %g s; restarting its model actors", len(items), timeout)
        restart(chain)
        return [_timed_out(timeout) for _ in items]
    except RayActorError:
        log.warning("a model actor died during a batch of %d; retrying image by image", len(items))
    results = []
    for i, item in enumerate(items):
        deaths = 0
        while deaths < CRASH_ATTEMPTS:
            when_ready(chain)
            try:
                results.append(ray.get(submit(chain, [item], extra and [extra[i]]), timeout=timeout)[0])
                break
            except GetTimeoutError:
                restart(chain)
                results.append(_timed_out(timeout))
                break
            except RayActorError:  # includes ActorUnavailableError: it was alive when we called
                deaths += 1
        else:
            results.append(
                Result(None, 0.0, f"the model worker died {CRASH_ATTEMPTS} times on this image", "worker_crashed")
            )
    return results


def model_load_error(exc: RayActorError) -> ModelLoadError | None:
    """The error an actor's ``__init__`` raised (a model that cannot load), out of Ray's
    ActorDiedError, whose text is Ray's wrapper around the actor's traceback; None when the actor
    died otherwise. Its message is the exception's own line: ``WeightsError``'s alone (it names
    the weights), other types' prefixed with the type's name."""
    if not getattr(exc, "actor_init_failed", False):
        return None
    lines = str(getattr(exc, "error_msg", "") or exc).splitlines()
    last_frame = max((i for i, line in enumerate(lines) if line.lstrip().startswith('File "')), default=-1)
    found = next((line for line in lines[last_frame + 1 :] if line and not line[0].isspace()), None)
    if found is None:
        return None
    name, sep, message = found.partition(": ")
    name = name.rsplit(".", 1)[-1]
    if not sep or not name.isidentifier():
        return ModelLoadError(found)
    return ModelLoadError(message if name == "WeightsError" else f"{name}: {message}")


def raise_model_load_error(exc: BaseException) -> None:
    """Raise ``exc``'s actor ``__init__`` error as a ModelLoadError (from None) if it is one."""
    if isinstance(exc, RayActorError):
        error = model_load_error(exc)
        if error is not None:
            raise error from None


class Pool:
    """One step's actors: starts with ``actors.min`` and adds one (up to ``actors.max``) whenever
    two shards per actor are in flight. On an autoscaling cluster a new actor that does not
    fit yet stays pending, which is what makes the autoscaler add a node.

    ``actor_class``: a Ray actor class built as ``(registry, [spec], resources, want_gpu)``,
    e.g. pipeline.execute's ``ModelActor`` or pipeline.generate's ``GeneratorActor``."""

    def __init__(self, registry: Registry, step, weights_sha256: str, resources: Resources, actor_class):
        gpus = gpus_to_request(resources.gpus_per_actor)
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

    def grow_if_behind(self, inflight: int, leaves_room: Callable[[Pool], bool] = lambda pool: True) -> None:
        """Shards routed to an actor that can never be placed would wait forever, so without
        an autoscaler the pool only grows into resources that are free now, and only where
        ``leaves_room(self)`` says the actors would still leave a shard task room to run."""
        behind = len(self.actors) < self.range.max and inflight >= 2 * len(self.actors)
        if behind and (autoscaling() or (self._fits_now() and leaves_room(self))):
            self.actors.append(self._new())
            log.info("added a model actor (%d of at most %d)", len(self.actors), self.range.max)

    def pick(self, shard: int):
        return self.actors[shard % len(self.actors)]


def run_shards(
    ctx,
    pools: list[Pool],
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

    def leaves_room(growing: Pool) -> bool:
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
            when_ready([a for pool in pools for a in pool.actors])
        except RayActorError as exc:
            raise_model_load_error(exc)
            raise

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
