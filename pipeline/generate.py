"""Generation jobs on Ray: actors host a generative model, shard tasks turn sample indices into files.

A generation job's plan holds sample indices (pipeline.planning.GENERATION_PLAN_SCHEMA). A shard
task sends batches of indices to a ``GeneratorActor``, which draws sample ``i`` from
``models.diffusion.sample_generator(seed, i)`` alone, so an image is the same bytes whatever the
shard size, the batch size or the actor that made it (on one device type). The task encodes and
writes ``<output>/images/<index:08d>.<ext>`` (pipeline.outputs) and commits the shard's manifest part.
A text-to-image job's plan rows are (prompt, sample) pairs: the actor gets the rows themselves and
draws sample ``s`` of prompt ``p`` from ``models.diffusion.prompt_generator(seed, p, s)``.
Actor pools, the driver loop with backpressure, shard retries and actor-crash handling are
pipeline.driver's, shared with restoration jobs (pipeline.execute).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from functools import partial

import numpy as np
import ray

from models import Registry
from models.base import GenerativeModel, Prompt, TextToImageModel
from models.diffusion import prompt_generator, sample_generator
from models.weights import WeightsError
from pipeline import driver, runs, storage
from pipeline.cluster import check_resources, gpus_to_request, with_threads
from pipeline.driver import (
    Clock,
    Pool,
    ShardContext,
    ShardResult,
    commit_shard,
    raise_model_load_error,
    run_shards,
)
from pipeline.inference import Result, pick_device
from pipeline.job import Job, Resources
from pipeline.manifest import Stage, fail
from pipeline.outputs import write_output
from pipeline.threads import actor_threads


@dataclass
class GenerationContext(ShardContext):
    """ShardContext plus what the loaded model says about itself (for the manifest)."""

    sampler: str | None = None
    sampler_steps: int | None = None
    guidance_scale: float | None = None  # the model's default (text-to-image)


# Restarted without limit, like ModelActor: the shard task retries the samples of a batch whose
# actor died one by one (pipeline.driver.infer).
# ready() runs in its own concurrency group (thread), so it answers while a batch computes:
# pipeline.driver.infer asks it before timing a batch, so an actor's start is not counted.
@ray.remote(max_restarts=-1, max_task_retries=0, concurrency_groups={"probe": 1})
class GeneratorActor(Clock):
    """Holds one GenerativeModel; ``infer(indices)`` returns one Result per sample index."""

    def __init__(self, registry: Registry, steps: list[dict], resources: Resources, want_gpu: bool):
        self.threads = actor_threads(resources.threads_per_actor, resources.cpus_per_actor, want_gpu)
        [spec] = steps
        model = registry.build(spec["model"], spec["params"])
        if not isinstance(model, GenerativeModel | TextToImageModel):
            raise TypeError(f"{spec['model']} builds a {type(model).__name__}, not a GenerativeModel")
        planned = spec.get("weights_sha256")
        if planned and model.weights_sha256 and model.weights_sha256 != planned:
            raise WeightsError(
                f"{spec['model']}: weights changed since the run was planned (sha256 {planned}, now "
                f"{model.weights_sha256})"
            )
        label = spec.get("class_label")
        if label is not None and not getattr(model, "num_classes", 0):
            raise ValueError(f"{spec['model']} is unconditional: generate.class_label must not be set")
        if label is not None and label >= model.num_classes:
            raise ValueError(
                f"generate.class_label must be < {model.num_classes} ({spec['model']} has {model.num_classes} classes)"
            )
        self.device = pick_device(want_gpu)
        model.module.to(self.device).eval()
        self.model, self.seed, self.label = model, spec["seed"], label
        self.start_clock()

    @ray.method(concurrency_group="probe")
    def ready(self) -> str:
        return str(self.device)

    def describe(self) -> tuple[str, int, float | None]:
        """(sampler, network evaluations per sample, default guidance scale or None), as the manifest records them."""
        return self.model.sampler, self.model.steps, getattr(self.model, "guidance_scale", None)

    def infer(self, indices: list) -> list[Result]:
        """Sample indices → Results whose pixels are H×W×C uint8 (C = 1 or 3). A batch that fails
        is retried sample by sample, so one failing sample cannot fail its neighbours."""
        try:
            self.threads.start()
            t0 = time.perf_counter()
            with self.busy():
                pixels = self._sample(indices)
            seconds = time.perf_counter() - t0
            self.threads.done(seconds, len(indices))
            share = seconds / len(indices)
            return [Result(p, share) for p in pixels]
        except Exception as exc:
            if len(indices) == 1:
                return [Result(None, 0.0, f"{type(exc).__name__}: {exc}")]
            return [r for i in indices for r in self.infer([i])]

    def _sample(self, indices: list) -> list[np.ndarray]:
        """``indices``: sample indices, or for a TextToImageModel plan rows (dicts with the
        PROMPT_FIELDS of pipeline.planning and ``sample_index``)."""
        import torch

        with torch.inference_mode():
            if isinstance(self.model, TextToImageModel):
                generators = [prompt_generator(r["prompt_seed"], r["prompt_index"], r["sample_index"]) for r in indices]
                prompts = [
                    Prompt(r["prompt"], r["negative_prompt"], r["guidance_scale"], r["prompt_steps"]) for r in indices
                ]
                x = self.model.generate(generators, prompts, self.device)
            else:
                generators = [sample_generator(self.seed, i) for i in indices]
                labels = [self.label] * len(indices) if self.label is not None else None
                x = self.model.sample(generators, labels, self.device)
        if tuple(x.shape) != (len(indices), *self.model.shape):
            raise ValueError(
                f"{self.model.name} returned {tuple(x.shape)}, expected {(len(indices), *self.model.shape)}"
            )
        out = (x.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return list(out)


def _row(ctx: GenerationContext, item: dict, shard: int, attempt: int) -> dict:
    spec = ctx.job.generate
    return {
        "run_id": ctx.run_id,
        "shard": shard,
        "input_uri": item["input_uri"],
        "steps": ctx.steps_json,
        "models": ctx.models,
        "weights_sha256": ctx.weights_sha256,
        "model_details": ctx.model_details,
        "fingerprint": ctx.fingerprint,
        "seed": spec.seed,
        "sample_index": item["sample_index"],
        "sampler": ctx.sampler,
        "sampler_steps": ctx.sampler_steps,
        "class_label": spec.class_label,
        "attempt": attempt,
    } | (_prompt_columns(ctx, item) if spec.prompts is not None else {})


def _prompt_columns(ctx: GenerationContext, item: dict) -> dict:
    """A text-to-image sample's manifest columns: its prompt, and the seed, steps and guidance it ran with."""
    steps, guidance = item["prompt_steps"], item["guidance_scale"]
    return {
        "input_etag": item["etag"],  # the prompt row's digest: a changed prompt is run again (pipeline.incremental)
        "seed": item["prompt_seed"],
        "prompt_index": item["prompt_index"],
        "prompt": item["prompt"],
        "negative_prompt": item["negative_prompt"],
        "sampler_steps": ctx.sampler_steps if steps is None else steps,
        "guidance_scale": ctx.guidance_scale if guidance is None else guidance,
    }


@ray.remote
def generate_shard(ctx: GenerationContext, shard: int, attempt: int, chain: list) -> ShardResult:
    """chain: [one GeneratorActor handle]. While the actor samples a batch, the previous one is written."""
    started = time.perf_counter()
    out = ctx.job.output
    plan = runs.load_plan_shard(out.uri, ctx.run_id, shard, out.storage_options).to_pylist()
    if driver.isolating(attempt):  # the whole shard failed SHARD_ATTEMPTS times: sample by sample
        rows = driver.isolate(
            _generate_one, ctx, shard, attempt, chain, plan, partial(_failed_row, ctx, shard, attempt)
        )
        return commit_shard(ctx, shard, rows, started)
    batch_size = ctx.job.resources.batch_size
    rows: list[dict] = []
    budget = storage.RetryBudget(ctx.job.limits.transient_retry_seconds)

    def finish(items: list[dict], indices: list[int], ref) -> None:
        for item, result in zip(items, driver.infer(chain, indices, ref, timeout=ctx.job.limits.model_timeout_seconds)):
            row = _row(ctx, item, shard, attempt)
            write_output(ctx, row, item["rel_path"], result, "PNG", budget=budget)  # no input: png for `same`
            rows.append(row)

    pending = None
    for start in range(0, len(plan), batch_size):
        items = plan[start : start + batch_size]
        indices = items if ctx.job.generate.prompts is not None else [item["sample_index"] for item in items]
        ref = driver.submit(chain, indices)
        if pending is not None:
            finish(*pending)
        pending = (items, indices, ref)
    if pending is not None:
        finish(*pending)
    return commit_shard(ctx, shard, rows, started)


@ray.remote(max_retries=0)
def _generate_one(ctx: GenerationContext, shard: int, attempt: int, chain: list, item: dict) -> dict:
    """One sample of an isolating shard: its row (a failing sample is already an error Result)."""
    row = _row(ctx, item, shard, attempt)
    indices = [item["sample_index"]]
    [result] = driver.infer(chain, indices, driver.submit(chain, indices), timeout=ctx.job.limits.model_timeout_seconds)
    budget = storage.RetryBudget(ctx.job.limits.transient_retry_seconds)
    write_output(ctx, row, item["rel_path"], result, "PNG", budget=budget)
    return row


def _failed_row(ctx: GenerationContext, shard: int, attempt: int, item: dict, error_type: str, message: str) -> dict:
    """The row of a sample whose own task failed every time: that task only encoded and wrote."""
    row = _row(ctx, item, shard, attempt)
    fail(row, Stage.ENCODE, error_type, message)
    return row


def context_for(
    job: Job, registry: Registry, run_id: str, model_details: list[str | None] | None = None
) -> GenerationContext:
    """``model_details``: [what pipeline.preflight.check_models found for the generator (None: nothing)]."""
    spec = job.generate
    weights = registry.get(spec.model).weights_sha256(spec.params)
    return GenerationContext(
        run_id=run_id,
        job=job,
        fingerprint=job.fingerprint(registry),
        models=[spec.model],
        weights_sha256=[weights or ""],
        model_details=[(model_details or [None])[0] or ""],
        steps_json=json.dumps([{"model": spec.model, "params": spec.params}], sort_keys=True),
    )


def execute(ctx: GenerationContext, registry: Registry, shards, on_shard=None, check=None) -> list[dict]:
    """Run the given shards of a planned generation run to commit (see pipeline.execute.execute)."""
    res = ctx.job.resources
    actors = res.model_copy(update={"gpus_per_actor": gpus_to_request(res.gpus_per_actor)})
    check_resources(ctx.job, [actors])
    [actors] = with_threads([actors])
    pool = Pool(registry, ctx.job.generate, ctx.weights_sha256[0], actors, GeneratorActor)
    try:  # a model that cannot load fails the run here, once
        sampler, steps, guidance = ray.get(pool.actors[0].describe.remote())
    except BaseException as exc:
        for actor in pool.actors:
            ray.kill(actor)
        raise_model_load_error(exc)
        raise
    ctx = dataclasses.replace(ctx, sampler=sampler, sampler_steps=steps, guidance_scale=guidance)
    return run_shards(ctx, [pool], generate_shard.options(num_cpus=res.cpus_per_task), shards, on_shard, check)
