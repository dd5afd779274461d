"""Cluster sizing: joining Ray, and fitting a job's requested resources to the cluster it runs on.

- ``connect`` joins the cluster (or starts Ray in this process).
- ``autoscaling`` tells whether the cluster can grow, which decides how strictly the rest checks.
- ``gpus_to_request`` falls back to CPU on a cluster that has no GPU and cannot grow one.
- ``check_resources`` refuses, naming the job-file field, resources that can never be placed.
- ``with_threads`` decides each step's ``threads_per_actor``.
"""

from __future__ import annotations

import logging
import math
import os

import ray

from pipeline.job import Job, Resources, ResourcesError

log = logging.getLogger(__name__)


def connect(address: str | None = None) -> None:
    """Join the cluster at ``address`` / ``$RAY_ADDRESS``, or start Ray in this process."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    ray.init(address=address, logging_level=logging.WARNING, include_dashboard=False if not address else None)


def autoscaling() -> bool:
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
    if wanted <= 0 or ray.cluster_resources().get("GPU", 0) >= wanted or autoscaling():
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
    if autoscaling():
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
    node_cpus = int(nodes[0]["CPU"]) if len(nodes) == 1 and not autoscaling() else 0
    cpu_actors = sum(r.actors.max for r in steps if not r.gpus_per_actor)
    out = []
    for r in steps:
        threads = r.threads_per_actor or max(1, math.ceil(r.cpus_per_actor))
        if r.threads_per_actor is None and not r.gpus_per_actor and node_cpus:
            threads = max(threads, node_cpus // cpu_actors)
        out.append(r.model_copy(update={"threads_per_actor": threads}))
    return out
