"""The driver (pipeline.driver) on a real local Ray, with small fake actors and shard tasks:
pools grow, shards go to the least-loaded actor, batches survive actor deaths, shards stay bounded
in flight and are retried (at last input by input), actors report how busy they were."""

from __future__ import annotations

import os
import time
from collections import Counter
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest
import ray
from ray.exceptions import RayActorError

from pipeline import driver, manifest
from pipeline.inference import Result
from pipeline.job import Resources, StepSpec
from pipeline.manifest import Stage, Status, fail


@ray.remote(max_restarts=-1, max_task_retries=0)  # restarted like the real model actors
class Add(driver.Clock):
    """A fake model actor, built like one (``registry, [spec], resources, want_gpu``): answers each
    item (an int, or the previous step's Result) with item + ``params.add``. It kills its own process
    on ``params.poison`` every time and on ``params.flaky`` the first time only; ``params.marks`` (a
    folder) keeps what must survive a restart: one line in ``starts`` per start of the actor.
    ``slow(seconds)`` makes each later batch of this actor take that long."""

    def __init__(self, registry, steps: list[dict], resources: Resources, want_gpu: bool):
        [self.spec] = steps
        self.params = self.spec["params"]
        if self.params.get("marks"):
            with open(Path(self.params["marks"]) / "starts", "a") as f:
                f.write("started\n")
        self.delay = 0.0
        self.start_clock()

    def slow(self, seconds: float) -> None:
        self.delay = seconds

    def ready(self) -> str:
        return "cpu"

    def step_spec(self) -> dict:
        return self.spec

    def infer(self, items: list, extra: list | None = None) -> list[Result]:
        values = [it.pixels if isinstance(it, Result) else it for it in items]
        for v in values:
            if v == self.params.get("poison"):
                os._exit(1)
            flaked = Path(self.params.get("marks") or ".") / "flaked"
            if v == self.params.get("flaky") and not flaked.exists():
                flaked.touch()
                os._exit(1)
        with self.busy():
            time.sleep(self.delay)
            out = [v + self.params.get("add", 0) for v in values]
        return [Result(o if extra is None else (o, e), 0.0) for o, e in zip(out, extra or [None] * len(out))]


def _pool(actors, max_inflight: int | None = None, **params) -> driver.Pool:
    resources = Resources(actors=actors, cpus_per_actor=0.1, cpus_per_task=0.1, max_inflight_shards=max_inflight)
    return driver.Pool(None, StepSpec(model="add", params=params), "d1g35t", resources, Add)


def _dies(actor, within: float = 30.0) -> bool:
    """Whether ``actor`` stops answering within ``within`` seconds (ray.kill takes effect
    asynchronously: a call made just after it may still be answered)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            ray.get(actor.ready.remote(), timeout=within)
        except RayActorError:
            return True
        time.sleep(0.2)
    return False


def _kill(*pools: driver.Pool) -> None:
    for pool in pools:
        for actor in pool.actors:
            ray.kill(actor)


def test_pool_starts_at_min_grows_by_one_per_two_shards_in_flight_up_to_max(ray_local):
    pool = _pool({"min": 1, "max": 3}, add=0)
    try:
        assert len(pool.actors) == 1
        # The actor gets the step as the job file had it, with the weights digest the manifest records.
        assert ray.get(pool.actors[0].step_spec.remote()) == {
            "model": "add",
            "params": {"add": 0},
            "resources": None,
            "outscale": None,
            "weights_sha256": "d1g35t",
        }
        sizes, added = [], []
        for inflight, room in [(1, True), (2, False), (2, True), (3, True), (4, True), (100, True)]:
            added.append(pool.grow_if_behind(inflight, lambda p, room=room: room))
            sizes.append(len(pool.actors))
        # Behind means 2 shards per actor in flight; no room for a shard task means no growth.
        assert sizes == [1, 1, 2, 2, 3, 3]
        assert [a for a in added if a is not None] == pool.actors[1:]
        # A new shard goes to the actor with the fewest in flight, ties to the one that finished the
        # most; none once each has SHARDS_PER_ACTOR.
        assert pool.least_loaded() == 0
        pool.load, pool.finished = [1, 0, 1], [0, 0, 5]
        assert pool.least_loaded() == 1
        pool.load = [1, 1, 1]
        assert pool.least_loaded() == 2
        pool.load = [driver.SHARDS_PER_ACTOR] * 3
        assert pool.least_loaded() is None
    finally:
        _kill(pool)


def test_submit_chains_the_steps_and_hands_extra_to_the_last(ray_local):
    first, second = _pool(1, add=1), _pool(1, add=10)
    chain = [first.actors[0], second.actors[0]]
    try:
        ref = driver.submit(chain, [1, 2], ["a", "b"])
        assert [r.pixels for r in driver.infer(chain, [1, 2], ref, ["a", "b"])] == [(12, "a"), (13, "b")]
        assert [r.pixels for r in driver.infer(chain, [5], driver.submit(chain, [5]))] == [16]
    finally:
        _kill(first, second)


def test_a_dead_actors_batch_is_retried_item_by_item_and_only_the_item_that_keeps_killing_it_is_blamed(
    ray_local, tmp_path
):
    pool = _pool(1, add=100, poison=3, flaky=5, marks=str(tmp_path))
    chain = pool.actors
    try:
        items = [1, 3, 5, 7]
        results = driver.infer(chain, items, driver.submit(chain, items))
    finally:
        _kill(pool)
    ok = [r.pixels for r in results if r.error is None]
    [blamed] = [(i, r) for i, r in zip(items, results) if r.error is not None]
    assert ok == [101, 105, 107]  # 5 killed the actor once only: retried, not blamed
    assert blamed[0] == 3 and blamed[1].pixels is None
    assert (blamed[1].error_type, blamed[1].stage) == ("worker_crashed", Stage.MODEL)
    assert f"died {driver.CRASH_ATTEMPTS} times" in blamed[1].error
    # The first start, then a restart after the batch, after each of 3's deaths, and after 5's one.
    assert (tmp_path / "starts").read_text().count("started") == 1 + 1 + driver.CRASH_ATTEMPTS + 1


@ray.remote(max_retries=0)
def _shard_task(ctx, shard: int, attempt: int, chain: list) -> driver.ShardResult:
    """Sends its shard number through its chain, ``ctx.batches`` times (default once), with two
    batches in flight like the real shard tasks; fails (an infrastructure failure) on the
    attempts ``ctx.fails`` lists for its shard. ``seconds``: the last result."""
    time.sleep(0.2)  # long enough that shards overlap
    if attempt in ctx.fails.get(shard, ()):
        raise RuntimeError(f"storage unavailable (shard {shard}, attempt {attempt})")
    pending, results = None, []
    for _ in range(getattr(ctx, "batches", 1)):
        ref = driver.submit(chain, [shard])
        if pending is not None:
            results += driver.infer(chain, [shard], pending)
        pending = ref
    results += driver.infer(chain, [shard], pending)
    return driver.ShardResult(shard, Counter({"ok": len(results)}), Counter(), float(results[-1].pixels))


class _Recorded:
    """Stands where the driver expects a Ray task (``.remote``) and records each submission with
    how many shards were then in flight (submitted, neither collected nor failed)."""

    def __init__(self, collected: list, task=_shard_task):
        self.submitted: list[tuple[int, int]] = []
        self.inflight: list[int] = []
        self.collected = collected
        self.task = task

    def remote(self, ctx, shard: int, attempt: int, chain: list):
        self.submitted.append((shard, attempt))
        retries = sum(1 for _, a in self.submitted if a > 1)  # each retry replaces a failed attempt
        self.inflight.append(len(self.submitted) - len(self.collected) - retries)
        return self.task.options(num_cpus=0.1).remote(ctx, shard, attempt, chain)


def test_run_shards_keeps_at_most_max_inflight_shards_and_retries_a_failed_shard(ray_local):
    pool = _pool(1, max_inflight=2, add=1000)
    collected: list[driver.ShardResult] = []
    task = _Recorded(collected)
    ctx = SimpleNamespace(job=SimpleNamespace(resources=Resources(max_inflight_shards=2)), fails={2: (1,)})
    driver.run_shards(ctx, [pool], task, range(6), collected.append)

    assert max(task.inflight) == 2  # backpressure: the bound is reached, never passed
    assert sorted(r.shard for r in collected) == list(range(6))
    assert sorted(r.seconds for r in collected) == [1000 + s for s in range(6)]  # went through the actor
    assert sorted(task.submitted) == [(0, 1), (1, 1), (2, 1), (2, 2), (3, 1), (4, 1), (5, 1)]
    assert _dies(pool.actors[0])  # the pools' actors are killed at the end


def test_a_shard_failing_every_whole_attempt_is_isolated_and_one_failing_that_too_fails_the_run(ray_local):
    whole = range(1, driver.SHARD_ATTEMPTS + 1)
    every = range(1, 2 * driver.SHARD_ATTEMPTS + 1)
    # Two runs, so that the order in which the two shards' attempts fail cannot matter: in one run
    # the failing shard ends it while the other may still be between attempts.
    pool = _pool(1, add=0)
    collected: list[driver.ShardResult] = []
    task = _Recorded(collected)
    ctx = SimpleNamespace(job=SimpleNamespace(resources=Resources()), fails={0: whole})
    driver.run_shards(ctx, [pool], task, range(1), collected.append)
    # After its whole-shard attempts a shard is retried isolating (its task runs inputs one by one).
    assert [a for s, a in task.submitted if s == 0] == [*whole, driver.SHARD_ATTEMPTS + 1]
    assert [r.shard for r in collected] == [0]
    assert not any(driver.isolating(a) for a in whole) and driver.isolating(driver.SHARD_ATTEMPTS + 1)
    assert _dies(pool.actors[0])

    pool = _pool(1, add=0)
    collected = []
    task = _Recorded(collected)
    ctx = SimpleNamespace(job=SimpleNamespace(resources=Resources()), fails={1: every})
    with pytest.raises(RuntimeError, match=f"shard 1 failed {2 * driver.SHARD_ATTEMPTS} times"):
        driver.run_shards(ctx, [pool], task, range(2), collected.append)
    assert [a for s, a in task.submitted if s == 1] == list(every)
    assert _dies(pool.actors[0])


@ray.remote
def _meet(folder: str, n: int) -> int:
    """Returns once ``n`` of these tasks run at once (so on ``n`` worker processes): its process id."""
    Path(folder, str(os.getpid())).touch()
    while len(os.listdir(folder)) < n:
        time.sleep(0.1)
    return os.getpid()


def test_a_slow_actor_does_not_hold_up_work_the_fast_one_takes_most_shards_and_both_report_busy(ray_local, tmp_path):
    pool = _pool(2, add=0)
    slow, fast = pool.actors
    # 3 s a batch against none: on a loaded machine a shard's own overhead (a second or two) must not
    # make the two look alike.
    ray.get([slow.slow.remote(3.0), fast.slow.remote(0.0)])
    # Two shards in flight, on two workers started beforehand (this 2-CPU Ray keeps two idle): a shard
    # waiting for a new worker process (seconds on a loaded machine) would otherwise decide more than
    # the actors' speed which shard finishes first.
    assert len(set(ray.get([_meet.options(num_cpus=0.1).remote(str(tmp_path), 2) for _ in range(2)]))) == 2
    collected: list[driver.ShardResult] = []
    ctx = SimpleNamespace(job=SimpleNamespace(resources=Resources(max_inflight_shards=2)), fails={}, batches=2)
    task = _Recorded(collected)
    stats = driver.run_shards(ctx, [pool], task, range(16), collected.append)

    assert sum(r.counts["ok"] for r in collected) == 32
    by_id = {s["id"]: s for s in stats}
    assert sorted(by_id) == ["add#0", "add#1"]
    assert by_id["add#0"]["batches"] + by_id["add#1"]["batches"] == 32
    # Bound to shards up front, each actor would take half; by load the slow one keeps only the shard it
    # holds and each shard the fast one finishes goes back to it.
    assert by_id["add#1"]["batches"] >= 0.7 * 32, stats
    # Each fraction is of the actor's own life (which began before the run): the slow one spent more of it computing.
    # the fast actor's forward passes take ~0 s: its fraction may round to 0.0
    assert 0 <= by_id["add#1"]["busy_fraction"] < by_id["add#0"]["busy_fraction"] <= 1, stats


def _row(ctx, shard: int, attempt: int, item: int) -> dict:
    return {
        "run_id": ctx.run_id,
        "shard": shard,
        "input_uri": f"in/{item}",
        "steps": "[]",
        "models": ["add"],
        "weights_sha256": [""],
        "fingerprint": "f",
        "attempt": attempt,
    }


def _input_row(ctx, shard: int, attempt: int, chain: list, item: int) -> dict:
    """One input through the actors, as its manifest row (``width_out``: the actor's answer); on
    ``ctx.poison`` it kills its own process after the actors answered (as a crash while encoding would)."""
    [result] = driver.infer(chain, [item], driver.submit(chain, [item]))
    if item == ctx.poison:
        os._exit(1)
    return _row(ctx, shard, attempt, item) | {"status": Status.OK, "width_out": result.pixels}


_one_input = ray.remote(max_retries=0)(_input_row)


def _failed_input(ctx, shard: int, attempt: int, item: int, error_type: str, message: str) -> dict:
    row = _row(ctx, shard, attempt, item)
    fail(row, Stage.ENCODE, error_type, message)
    return row


@ray.remote(max_retries=0)
def _shard_of_inputs(ctx, shard: int, attempt: int, chain: list) -> driver.ShardResult:
    """A shard task like the real ones: its inputs ``ctx.items[shard]`` go through the actors and
    become one manifest part; isolating, each input is its own ``_one_input`` task."""
    started = time.perf_counter()
    items = ctx.items[shard]
    if driver.isolating(attempt):
        rows = driver.isolate(
            _one_input, ctx, shard, attempt, chain, items, partial(_failed_input, ctx, shard, attempt)
        )
    else:
        rows = [_input_row(ctx, shard, attempt, chain, item) for item in items]
    return driver.commit_shard(ctx, shard, rows, started)


def test_an_input_that_kills_its_shard_task_every_time_becomes_one_error_row_and_the_run_goes_on(ray_local, tmp_path):
    pool = _pool(1, add=100)
    out = SimpleNamespace(uri=str(tmp_path / "out"), storage_options={})
    resources = Resources(cpus_per_task=0.1)
    items = {0: [1, 2, 3], 1: [4, 5, 6], 2: [7, 8]}
    ctx = SimpleNamespace(job=SimpleNamespace(resources=resources, output=out), run_id="r1", items=items, poison=5)
    task = _Recorded([], _shard_of_inputs)
    collected: list[driver.ShardResult] = []
    driver.run_shards(ctx, [pool], task, range(3), collected.append)

    # Shard 1 died on each whole attempt, then was committed from one task per input.
    assert [a for s, a in task.submitted if s == 1] == list(range(1, driver.SHARD_ATTEMPTS + 2))
    assert sorted(r.shard for r in collected) == [0, 1, 2]
    rows = {r["input_uri"]: r for r in manifest.read(out.uri).to_pylist()}
    assert sorted(rows) == [f"in/{i}" for i in range(1, 9)]  # each input exactly once
    bad = rows.pop("in/5")
    assert (bad["status"], bad["stage"], bad["error_type"]) == (Status.ERROR, Stage.ENCODE, "worker_crashed")
    assert {r["status"] for r in rows.values()} == {Status.OK}
    assert {u: r["width_out"] for u, r in rows.items()} == {f"in/{i}": 100 + i for i in (1, 2, 3, 4, 6, 7, 8)}
    assert rows["in/4"]["attempt"] == driver.SHARD_ATTEMPTS + 1 and rows["in/1"]["attempt"] == 1
