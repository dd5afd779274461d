"""The driver shared by every kind of job: actor pools, shard tasks run with bounded in-flight work, retried, committed.

A job kind (restoration: pipeline.execute; generation: pipeline.generate) brings its actor
class and its shard task; this module runs them:

- ``Pool`` holds one step's actors and grows it while shards wait.
- ``run_shards`` submits ``task.remote(ctx, shard, attempt, chain)`` per shard, at most
  ``max_inflight_shards`` at a time (backpressure), and retries a failed shard up to
  ``SHARD_ATTEMPTS`` times; then the shard is ``isolating``: its task runs each input as its own
  one-input task (``isolate``), so one input that keeps failing its shard becomes an error row
  and the shard is still committed. Only a shard that fails that way too fails the run.
- Each shard goes to the least-loaded actor of each pool (fewest shards in flight, at most
  ``SHARDS_PER_ACTOR``): an actor that is slow or restarting holds its shards longer, so it
  gets fewer and the others take the rest. Inside a shard task, ``submit`` sends a batch through
  its chain (one actor per step) and ``infer`` survives actor deaths (a dead actor's batch is
  retried item by item) and cuts a batch that outlasts its timeout (its actors are restarted,
  its items become timeout results).
- ``commit_shard`` writes a shard's manifest part, making all its rows visible at once.
- ``Clock`` (a mixin for actor classes) times their forward passes, for each actor's busy fraction.

An actor class used here is a Ray actor built as ``(registry, [step spec], resources, want_gpu)``
with ``ready() -> str``, ``infer(items[, extra]) -> list[Result]`` and ``Clock.stats``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

import ray
from ray.exceptions import (
    ActorUnavailableError,
    GetTimeoutError,
    OutOfMemoryError,
    RayActorError,
    RayError,
    WorkerCrashedError,
)

from models import Registry
from pipeline import manifest
from pipeline.cluster import autoscaling, gpus_to_request
from pipeline.errors import ModelLoadError
from pipeline.inference import Result
from pipeline.job import Job, Resources
from pipeline.manifest import Status

log = logging.getLogger(__name__)
SHARD_ATTEMPTS = 3  # whole-shard attempts; as many again input by input (isolating)
# A shard task keeps two batches in flight, so two shards keep an actor busy while the next batch
# decodes; more would only queue behind a slow actor what another actor could take.
SHARDS_PER_ACTOR = 2
WAIT_SLICE_SECONDS = 0.5  # the longest the driver waits inside Ray without running Python's signal handlers
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


def isolating(attempt: int) -> bool:
    """Whether a shard task on its ``attempt`` runs its inputs one by one (its whole-shard attempts are spent)."""
    return attempt > SHARD_ATTEMPTS


def isolate(unit, ctx, shard: int, attempt: int, chain: list, items: list, failed_row: Callable) -> list[dict]:
    """Run each of ``items`` (plan rows) as its own one-input task ``unit.remote(ctx, shard, attempt,
    chain, item) -> row``, retried up to SHARD_ATTEMPTS times in all (also when its process dies).
    An input whose task fails every time becomes ``failed_row(item, error_type, message)``
    (error_type ``worker_crashed`` if its process died, else ``shard_failed``); the rows come
    back in the order of ``items``."""
    unit = unit.options(num_cpus=ctx.job.resources.cpus_per_task, max_retries=SHARD_ATTEMPTS - 1, retry_exceptions=True)
    refs = [unit.remote(ctx, shard, attempt, chain, item) for item in items]
    rows = []
    for item, ref in zip(items, refs):
        try:
            rows.append(ray.get(ref))
        except RayError as exc:
            crashed = isinstance(exc, (WorkerCrashedError, OutOfMemoryError))
            message = f"this input failed its own task {SHARD_ATTEMPTS} times: {exc}"
            rows.append(failed_row(item, "worker_crashed" if crashed else "shard_failed", message))
    return rows


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


class Clock:
    """Mixin for the actor classes: ``with self.busy():`` around each forward pass, so that
    ``stats()`` tells the driver how much of its life the actor spent computing. An actor
    calls ``start_clock()`` when it has loaded its model; a restarted actor starts counting anew."""

    _born: float | None = None
    _busy_seconds = 0.0
    _batches = 0

    def start_clock(self) -> None:
        self._born, self._busy_seconds, self._batches = time.monotonic(), 0.0, 0

    @contextmanager
    def busy(self) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self._busy_seconds += time.monotonic() - started
            self._batches += 1

    def stats(self) -> dict:
        """{busy_seconds, seconds (since the model was loaded), batches}."""
        seconds = time.monotonic() - self._born if self._born is not None else 0.0
        return {"busy_seconds": self._busy_seconds, "seconds": seconds, "batches": self._batches}


class Pool:
    """One step's actors and the shards each has in flight: starts with ``actors.min`` and adds
    one (up to ``actors.max``) whenever two shards per actor are in flight. On an autoscaling
    cluster a new actor that does not fit yet stays pending, which is what makes the autoscaler
    add a node.

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
        self.name = getattr(step, "model", "actor")
        self.actors = [self._new() for _ in range(self.range.min)]
        self.load = [0] * len(self.actors)  # shards in flight, per actor
        self.finished = [0] * len(self.actors)  # shards done (or failed), per actor

    def least_loaded(self) -> int | None:
        """The actor (its index) for a new shard: the one with the fewest shards in flight, ties
        going to the one that finished the most (the faster); None while each has SHARDS_PER_ACTOR."""
        i = min(range(len(self.actors)), key=lambda i: (self.load[i], -self.finished[i]))
        return i if self.load[i] < SHARDS_PER_ACTOR else None

    def _fits_now(self) -> bool:
        free = ray.available_resources()
        return all(free.get(name, 0) >= amount for name, amount in self.need.items() if amount)

    def grow_if_behind(self, inflight: int, leaves_room: Callable[[Pool], bool] = lambda pool: True):
        """Shards given to an actor that can never be placed would wait forever, so without
        an autoscaler the pool only grows into resources that are free now, and only where
        ``leaves_room(self)`` says the actors would still leave a shard task room to run.
        Returns the new actor, or None."""
        behind = len(self.actors) < self.range.max and inflight >= 2 * len(self.actors)
        if behind and (autoscaling() or (self._fits_now() and leaves_room(self))):
            self.actors.append(self._new())
            self.load.append(0)
            self.finished.append(0)
            log.info("added a model actor (%d of at most %d)", len(self.actors), self.range.max)
            return self.actors[-1]
        return None


def actor_stats(pools: list[Pool], timeout: float = 30.0) -> list[dict]:
    """Each actor's ``{id, busy_fraction, batches}`` (``id``: ``<model>#<n>``, with the step's index
    before it when there are several; an actor that does not answer has None for both)."""
    out = []
    for step, pool in enumerate(pools):
        refs = [actor.stats.remote() for actor in pool.actors]
        for i, ref in enumerate(refs):
            try:
                stats = ray.get(ref, timeout=timeout)
            except (RayActorError, GetTimeoutError):
                stats = None
            name = f"{step}/{pool.name}#{i}" if len(pools) > 1 else f"{pool.name}#{i}"
            busy = round(stats["busy_seconds"] / stats["seconds"], 3) if stats and stats["seconds"] else None
            out.append({"id": name, "busy_fraction": busy, "batches": stats["batches"] if stats else None})
    return out


def run_shards(
    ctx,
    pools: list[Pool],
    task,
    shards: Iterable[int],
    on_shard: Callable[[ShardResult], None] | None = None,
    check: Callable[[], None] | None = None,
) -> list[dict]:
    """The driver loop shared by every kind of job: ``task.remote(ctx, shard, attempt, chain)``
    (chain: the least-loaded actor of each pool, ``Pool.least_loaded``) for each shard, at most
    ``max_inflight_shards`` in flight and SHARDS_PER_ACTOR per actor, failed shards retried
    (SHARD_ATTEMPTS whole, then as many isolating); the pools' actors are killed at the end.
    Returns each actor's ``actor_stats``."""
    res = ctx.job.resources
    max_inflight = res.max_inflight_shards or SHARDS_PER_ACTOR * max(pool.range.max for pool in pools)
    inflight: dict = {}  # ObjectRef → (shard, attempt, actor index per pool)

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

    def place() -> list[int] | None:
        """One actor per pool with room for another shard (None if a pool has none), growing
        the pools that are behind first."""
        if len(inflight) >= max_inflight:
            return None
        for pool in pools:
            pool.grow_if_behind(len(inflight), leaves_room)
        picks = [pool.least_loaded() for pool in pools]
        return None if None in picks else picks

    def submit(shard: int, attempt: int, picks: list[int]) -> None:
        for pool, i in zip(pools, picks):
            pool.load[i] += 1
        ref = task.remote(ctx, shard, attempt, [pool.actors[i] for pool, i in zip(pools, picks)])
        inflight[ref] = (shard, attempt, picks)

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
        ready: list = []
        while not ready:  # in short waits: a signal handler (SIGTERM from `darkroom stop`) runs between them,
            # within Ray's 3 s grace before its SIGKILL, instead of after the next shard finishes
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=WAIT_SLICE_SECONDS)
        [ref] = ready
        if check:
            check()
        shard, attempt, picks = inflight.pop(ref)
        for pool, i in zip(pools, picks):
            pool.load[i] -= 1
            pool.finished[i] += 1
        try:
            result = ray.get(ref)
        except Exception as exc:  # infrastructure failure: the shard's part was not written
            if attempt >= 2 * SHARD_ATTEMPTS:
                raise RuntimeError(
                    f"shard {shard} failed {attempt} times ({SHARD_ATTEMPTS} of them input by input); last error: {exc}"
                ) from exc
            then = "input by input" if isolating(attempt + 1) else "whole"
            log.warning("shard %d attempt %d failed (%s); retrying it %s", shard, attempt, exc, then)
            while (picks := place()) is None:  # its own slot is free again, unless max_inflight_shards is
                collect_one()
            submit(shard, attempt + 1, picks)
            return
        if on_shard:
            on_shard(result)

    try:
        for shard in shards:
            while (picks := place()) is None:
                collect_one()
            submit(shard, 1, picks)
        while inflight:
            collect_one()
        if starting:  # no shard to run: a model that cannot load still fails the run
            started()
        return actor_stats(pools)
    finally:
        for pool in pools:
            for actor in pool.actors:
                ray.kill(actor)
