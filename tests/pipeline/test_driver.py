"""The driver (pipeline.driver) on a real local Ray, with small fake actors and shard tasks:
pools grow and pick, batches survive actor deaths, shards stay bounded in flight and are retried."""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import ray
from ray.exceptions import RayActorError

from pipeline import driver
from pipeline.inference import Result
from pipeline.job import Resources, StepSpec
from pipeline.manifest import Stage


@ray.remote(max_restarts=-1, max_task_retries=0)  # restarted like the real model actors
class Add:
    """A fake model actor, built like one (``registry, [spec], resources, want_gpu``): answers each
    item (an int, or the previous step's Result) with item + ``params.add``. It kills its own process
    on ``params.poison`` every time and on ``params.flaky`` the first time only; ``params.marks`` (a
    folder) keeps what must survive a restart: one line in ``starts`` per start of the actor."""

    def __init__(self, registry, steps: list[dict], resources: Resources, want_gpu: bool):
        [self.spec] = steps
        self.params = self.spec["params"]
        if self.params.get("marks"):
            with open(Path(self.params["marks"]) / "starts", "a") as f:
                f.write("started\n")

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


def test_pool_starts_at_min_grows_by_one_per_two_shards_in_flight_up_to_max_and_picks_round_robin(ray_local):
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
        sizes = []
        for inflight, room in [(1, True), (2, False), (2, True), (3, True), (4, True), (100, True)]:
            pool.grow_if_behind(inflight, lambda p, room=room: room)
            sizes.append(len(pool.actors))
        # Behind means 2 shards per actor in flight; no room for a shard task means no growth.
        assert sizes == [1, 1, 2, 2, 3, 3]
        assert [pool.pick(shard) for shard in range(6)] == pool.actors * 2
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
    """Sends its shard number through the actors; fails (an infrastructure failure) on the
    attempts ``ctx.fails`` lists for its shard."""
    time.sleep(0.2)  # long enough that shards overlap
    if attempt in ctx.fails.get(shard, ()):
        raise RuntimeError(f"storage unavailable (shard {shard}, attempt {attempt})")
    [result] = driver.infer(chain, [shard], driver.submit(chain, [shard]))
    return driver.ShardResult(shard, Counter({"ok": 1}), Counter(), float(result.pixels))


class _Recorded:
    """Stands where the driver expects a Ray task (``.remote``) and records each submission with
    how many shards were then in flight (submitted, neither collected nor failed)."""

    def __init__(self, collected: list):
        self.submitted: list[tuple[int, int]] = []
        self.inflight: list[int] = []
        self.collected = collected

    def remote(self, ctx, shard: int, attempt: int, chain: list):
        self.submitted.append((shard, attempt))
        retries = sum(1 for _, a in self.submitted if a > 1)  # each retry replaces a failed attempt
        self.inflight.append(len(self.submitted) - len(self.collected) - retries)
        return _shard_task.options(num_cpus=0.1).remote(ctx, shard, attempt, chain)


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


def test_a_shard_failing_every_attempt_fails_the_run_and_its_actors_are_killed(ray_local):
    pool = _pool(1, add=0)
    collected: list[driver.ShardResult] = []
    task = _Recorded(collected)
    ctx = SimpleNamespace(job=SimpleNamespace(resources=Resources()), fails={1: (1, 2, 3)})
    with pytest.raises(RuntimeError, match=f"shard 1 failed {driver.SHARD_ATTEMPTS} times"):
        driver.run_shards(ctx, [pool], task, range(2), collected.append)
    assert [a for s, a in task.submitted if s == 1] == list(range(1, driver.SHARD_ATTEMPTS + 1))
    assert _dies(pool.actors[0])
